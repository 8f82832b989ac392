"""Latency statistics and ``verify``: real onnxruntime sessions on a small exported student."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
import torch

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from test_onnx_export import MEAN, SHAPE, STD, tiny_student

from nayer_edge.core.errors import UserError
from nayer_edge.core.normalize import NormalizedModel
from nayer_edge.deploy.latency import LatencyStats, measure_latency, nearest_rank, onnx_latency
from nayer_edge.deploy.verify import verify
from nayer_edge.inputs.evaldata import save_npz
from nayer_edge.onnx_model.exporter import export_onnx

FAST = {"latency_seconds": 0.05, "warmup_seconds": 0.01}


@pytest.fixture(scope="module")
def deployed(tmp_path_factory):
    """A student folder as ``distill`` writes it, two ONNX exports of it, and eval data it labels itself."""
    root = tmp_path_factory.mktemp("deployed")
    student = tiny_student()
    folder = root / "run"
    folder.mkdir()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit.* deprecation notices
        torch.jit.save(torch.jit.trace(student, torch.zeros(1, *SHAPE)), folder / "student.ts")
    (folder / "student.json").write_text(json.dumps({
        "architecture": {"spec": "cnn_tiny", "num_classes": 10, "in_channels": 1, "input_size": 16},
        "input_shape": list(SHAPE), "mean": MEAN, "std": STD, "classes": [str(i) for i in range(10)],
    }))
    folded = export_onnx(student, root / "folded.onnx", input_shape=SHAPE, mean=MEAN, std=STD,
                         fold_normalization=True, classes=[str(i) for i in range(10)])
    plain = export_onnx(student, root / "plain.onnx", input_shape=SHAPE, mean=MEAN, std=STD, batch=8)
    # labels = the student's own predictions on the uint8-rounded images, so its accuracy is 100 %
    x = (torch.rand(40, *SHAPE, generator=torch.Generator().manual_seed(3)) * 255).round() / 255
    with torch.no_grad():
        y = NormalizedModel(student, MEAN, STD)(x).argmax(1)
    save_npz(root / "eval.npz", x, y)
    return {"student": student, "folder": folder, "folded": folded, "plain": plain, "eval": root / "eval.npz",
            "root": root, "labels": y}


# --------------------------------------------------------------------------------------- latency


def test_latency_stats_nearest_rank():
    stats = LatencyStats.from_seconds([i / 1000 for i in range(100, 0, -1)], batch=4)  # 1..100 ms, unsorted
    assert (stats.p50_ms, stats.p90_ms, stats.p95_ms, stats.p99_ms) == pytest.approx((50, 90, 95, 99))
    assert (stats.min_ms, stats.max_ms, stats.mean_ms) == pytest.approx((1, 100, 50.5))
    assert stats.throughput == pytest.approx(4 * 100 / 5.05)
    assert stats.cv == pytest.approx(np.std(np.arange(1, 101)) / 50.5)
    assert nearest_rank([7.0], 99) == 7.0
    assert nearest_rank([1.0, 2.0, 3.0, 4.0], 50) == 2.0 and nearest_rank([1.0, 2.0, 3.0, 4.0], 51) == 3.0


def test_measure_latency_counts_and_orders():
    import time

    calls = []
    started = time.perf_counter()
    stats = measure_latency(lambda: calls.append(sum(range(2000))), batch=8, warmup_seconds=0.01,
                            min_iterations=25, min_seconds=0.02)
    elapsed = time.perf_counter() - started
    assert stats.iterations >= 25 and len(calls) > stats.iterations  # the warm-up ran untimed
    assert stats.min_ms <= stats.p50_ms <= stats.p90_ms <= stats.p95_ms <= stats.p99_ms <= stats.max_ms
    # Warm-up, then timed calls for at least min_seconds of wall time (the sum of the per-call times is less:
    # the loop's own overhead between calls is not part of any call).
    assert elapsed >= 0.01 + 0.02
    assert stats.iterations * stats.mean_ms <= (elapsed - 0.01) * 1e3
    assert stats.throughput == pytest.approx(8 / (stats.mean_ms / 1e3), rel=1e-9)
    assert stats.cv >= 0
    with pytest.raises(UserError):
        measure_latency(lambda: None, batch=0)


def test_onnx_latency_on_exported_model(deployed):
    stats = onnx_latency(deployed["folded"], 3, min_seconds=0.05, warmup_seconds=0.01, threads=1)
    assert stats.batch == 3 and stats.iterations >= 20
    assert 0 < stats.p50_ms <= stats.p90_ms <= stats.p99_ms
    assert math.isclose(stats.throughput, 3 / (stats.mean_ms / 1e3), rel_tol=1e-9)
    with pytest.raises(UserError, match="fixed batch size 8"):
        onnx_latency(deployed["plain"], 3, min_seconds=0.01)


# --------------------------------------------------------------------------------------- verify


def test_verify_against_student_folder_gates_pass(deployed):
    result = verify(deployed["folded"], eval_data=deployed["eval"], reference=deployed["folder"], batch=4,
                    max_accuracy_drop=0.5, max_latency_ms=10_000, threads=1, **FAST)
    assert result.accuracy == 1.0 and result.reference_accuracy == 1.0 and result.accuracy_drop == 0.0
    assert result.parity is not None and result.parity.samples == 40
    assert result.parity.max_abs_error <= 1e-4 and result.parity.cosine_similarity >= 0.9999
    assert result.latency.batch == 4 and result.input == "images01" and result.input_shape == list(SHAPE)
    assert [g.name for g in result.gates] == ["accuracy_drop", "latency_p50_ms"]
    assert all(g.passed for g in result.gates) and result.passed
    assert result.gates[1].value == result.latency.p50_ms
    json.dumps(result.to_dict())  # serialisable for a report file


def test_verify_gates_fail(deployed):
    result = verify(deployed["folded"], eval_data=deployed["eval"], reference=deployed["folder"], batch=2,
                    max_accuracy_drop=-1, max_latency_ms=0.0001, threads=1, **FAST)
    gates = {g.name: g for g in result.gates}
    assert not gates["accuracy_drop"].passed and gates["accuracy_drop"].limit == -1
    assert not gates["latency_p50_ms"].passed
    assert not result.passed


def test_verify_normalised_onnx_against_folded_onnx(deployed):
    """Different input conventions on both sides: eval images are normalised only for the plain export."""
    result = verify(deployed["plain"], eval_data=deployed["eval"], reference=deployed["folded"], batch=32,
                    max_accuracy_drop=0.0, threads=1, **FAST)
    assert result.input == "normalised" and result.accuracy == 1.0
    assert result.parity.max_abs_error <= 1e-4 and result.passed
    assert result.latency.batch == 8 and any("fixed batch size 8" in n for n in result.notes)


def test_verify_detects_accuracy_drop(deployed, tmp_path):
    """A worse model (other weights) loses accuracy against the student's own labels: the gate fails."""
    other = export_onnx(tiny_student(seed=5), tmp_path / "other.onnx", input_shape=SHAPE, mean=MEAN, std=STD,
                        fold_normalization=True)
    result = verify(other, eval_data=deployed["eval"], reference=deployed["folder"], max_accuracy_drop=5.0,
                    threads=1, **FAST)
    assert result.accuracy < 0.7 and result.accuracy_drop > 30
    assert result.parity.top1_agreement == pytest.approx(result.accuracy)
    assert not result.passed


def test_verify_without_eval_data_uses_random_parity(deployed):
    result = verify(deployed["folded"], reference=deployed["folder"] / "student.ts", max_latency_ms=10_000,
                    threads=1, **FAST)
    assert result.accuracy is None and result.accuracy_drop is None
    assert result.parity.samples == 64 and result.parity.max_abs_error <= 1e-4
    assert result.passed


def test_verify_bad_input(deployed, tmp_path):
    with pytest.raises(UserError, match="no such ONNX file"):
        verify(tmp_path / "missing.onnx", **FAST)
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(deployed["folded"].read_bytes()[:200])
    with pytest.raises(UserError, match="not a loadable ONNX model"):
        verify(corrupt, **FAST)
    two_channel = tmp_path / "two_channel.npz"
    np.savez(two_channel, x=np.zeros((4, 2, 16, 16), dtype=np.float32), y=np.zeros(4, dtype=np.int64))
    with pytest.raises(UserError, match="channels"):
        verify(deployed["folded"], eval_data=two_channel, **FAST)
    out_of_range = tmp_path / "labels.npz"
    save_npz(out_of_range, torch.zeros(3, *SHAPE), torch.tensor([0, 1, 10]))
    with pytest.raises(UserError, match="labels"):
        verify(deployed["folded"], eval_data=out_of_range, **FAST)
    with pytest.raises(UserError, match="needs both eval data and a reference"):
        verify(deployed["folded"], eval_data=deployed["eval"], max_accuracy_drop=1.0, **FAST)
    with pytest.raises(UserError, match="no such file or folder"):
        verify(deployed["folded"], reference=tmp_path / "nowhere", **FAST)
