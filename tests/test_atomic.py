"""Every writer makes its file durable before it is visible and the rename durable after: the bytes are
fsynced before ``os.replace`` and the folder holding the new name after it. Without the second, a power cut
after the rename can bring back the old entry (or, for a new file, no entry at all)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn


@pytest.fixture
def durability_log(monkeypatch):
    """('fsync-file' | 'fsync-dir', path) and ('replace', destination) in the order they happened."""
    events: list[tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        path = os.readlink(f"/proc/self/fd/{fd}")
        kind = "fsync-dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "fsync-file"
        events.append((kind, path))
        return real_fsync(fd)

    def replace(src, dst, **kwargs):
        real_replace(src, dst, **kwargs)
        events.append(("replace", str(Path(dst).resolve())))

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    return events


def assert_durable(events: list[tuple[str, str]], path: Path) -> None:
    path = path.resolve()
    renames = [i for i, (kind, dst) in enumerate(events) if kind == "replace" and dst == str(path)]
    assert renames, f"{path.name} was not renamed into place: {events}"
    last = renames[-1]
    synced_files = [i for i, (kind, _) in enumerate(events[:last]) if kind == "fsync-file"]
    assert synced_files, f"no file was fsynced before {path.name} was renamed into place: {events}"
    after = events[last + 1:]
    assert ("fsync-dir", str(path.parent)) in after, f"{path.parent} not fsynced after the rename: {events}"


def test_atomic_write(tmp_path, durability_log):
    from nayer_edge.core.atomic import atomic_write_text

    target = tmp_path / "metrics.json"
    atomic_write_text(target, "{}\n")
    assert target.read_text() == "{}\n"
    assert_durable(durability_log, target)


def test_sample_memory_save(tmp_path, durability_log):
    from nayer_edge.synthesis.memory import SampleMemory

    memory = SampleMemory(8, (1, 4, 4))
    memory.add(torch.rand(5, 1, 4, 4), torch.arange(5))
    target = tmp_path / "samples.npz"
    memory.save(target)
    assert np.load(target)["images"].shape == (5, 1, 4, 4)
    assert_durable(durability_log, target)


def test_eval_data_npz(tmp_path, durability_log):
    from nayer_edge.inputs.evaldata import save_npz

    target = tmp_path / "eval.npz"
    save_npz(target, torch.rand(3, 1, 8, 8), torch.tensor([0, 1, 2]))
    with np.load(target) as data:
        assert data["x"].shape == (3, 8, 8, 1) and data["y"].tolist() == [0, 1, 2]
    assert not list(tmp_path.glob(".*.tmp")), "a temporary file was left behind"
    assert_durable(durability_log, target)


def test_sample_grid(tmp_path, durability_log):
    from nayer_edge.core.plots import save_sample_grid

    target = tmp_path / "samples.png"
    save_sample_grid(torch.rand(4, 1, 8, 8), torch.tensor([0, 1, 0, 1]), ["zero", "one"], target, per_class=2)
    assert target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert_durable(durability_log, target)


def test_onnx_export(tmp_path, durability_log):
    from nayer_edge.onnx_model.exporter import export_onnx

    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(2 * 6 * 6, 3))
    target = tmp_path / "student.onnx"
    export_onnx(net, target, input_shape=(1, 8, 8))
    assert_durable(durability_log, target)


def test_bundle_folder_swap(tmp_path, durability_log):
    from nayer_edge.deploy.bundle_publish import replace_dir

    out = tmp_path / "bundle"
    for generation in ("old", "new"):
        stage = tmp_path / f".bundle.{generation}.tmp"
        stage.mkdir()
        (stage / "manifest.json").write_text(generation)
        replace_dir(stage, out)
        assert (out / "manifest.json").read_text() == generation
        assert ("fsync-dir", str(tmp_path.resolve())) in durability_log[-2:], durability_log
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]


def test_embedding_cache(tmp_path, durability_log):
    from nayer_edge.synthesis.embeddings import _save_cached

    target = tmp_path / "cache" / "lte.pt"
    _save_cached(target, torch.ones(3, 4))
    assert torch.equal(torch.load(target, weights_only=True), torch.ones(3, 4))
    assert_durable(durability_log, target)


def test_a_folder_that_cannot_be_opened_is_not_an_error(tmp_path):
    from nayer_edge.core.atomic import fsync_dir

    fsync_dir(tmp_path / "missing")  # e.g. Windows, where folders cannot be opened for fsync


def test_device_engine_and_stamp(tmp_path, durability_log):
    """The bundle's own build_engine.py (standalone on the Jetson) writes the engine and its stamp the same way."""
    from test_device_scripts import build_engine

    engine = tmp_path / "model.engine"
    build_engine._write_engine_and_stamp(str(engine), b"engine bytes", {"tensorrt": "10.3.0"})
    assert engine.read_bytes() == b"engine bytes"
    assert_durable(durability_log, engine)
    assert_durable(durability_log, Path(build_engine.stamp_path(str(engine))))


def test_sample_memory_on_a_full_disk_is_one_line_and_keeps_the_earlier_file(tmp_path, monkeypatch):
    """ENOSPC can come as late as fsync (delayed allocation, network filesystems): the memory's writer turns
    it into the one-line error like every other writer, leaves no temporary file, and the earlier samples.npz
    stays as it was."""
    import errno

    from nayer_edge.core.errors import UserError
    from nayer_edge.synthesis.memory import SampleMemory

    memory = SampleMemory(8, (1, 4, 4))
    memory.add(torch.rand(5, 1, 4, 4), torch.arange(5))
    target = tmp_path / "samples.npz"
    memory.save(target)
    before = target.read_bytes()

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    memory.add(torch.rand(2, 1, 4, 4), torch.arange(2))
    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(UserError, match="no space left on the device writing .*samples.npz") as err:
        memory.save(target)
    assert "\n" not in str(err.value)
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["samples.npz"]
