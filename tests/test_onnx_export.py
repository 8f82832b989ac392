"""ONNX export and parity: real exports of a small zoo student, run in onnxruntime."""

from __future__ import annotations

import copy
import json
import sys

import numpy as np
import pytest
import torch

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from nayer_edge import __version__  # noqa: E402 - after the importorskip of the extras
from nayer_edge.core.errors import UserError  # noqa: E402 - after the importorskip of the extras
from nayer_edge.core.normalize import NormalizedModel  # noqa: E402 - after the importorskip of the extras
from nayer_edge.onnx_model.exporter import (  # noqa: E402 - after the importorskip of the extras
    ParityError,
    check_parity,
    compare_logits,
    export_onnx,
    onnx_session,
    read_metadata,
    run_session,
)

SHAPE = (1, 16, 16)
MEAN, STD = [0.4], [0.3]


def tiny_student(seed: int = 0) -> torch.nn.Module:
    """cnn_tiny with random BatchNorm statistics and affine terms, so folding BN into Conv is exercised."""
    from nayer_edge.zoo import create_model

    torch.manual_seed(seed)
    model = create_model("cnn_tiny", num_classes=10, in_channels=1, input_size=16)
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.5)
            m.running_var.copy_(torch.rand(n, generator=g) * 2 + 0.2)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(n, generator=g) * 0.2)
    return model.eval()


@pytest.fixture(scope="module")
def student() -> torch.nn.Module:
    return tiny_student()


def images(n: int, seed: int = 1) -> torch.Tensor:
    return torch.rand(n, *SHAPE, generator=torch.Generator().manual_seed(seed))


def torch_logits(model: torch.nn.Module, x: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return model(x).numpy()


def test_static_batch_export_matches_torch(student, tmp_path):
    path = export_onnx(student, tmp_path / "static.onnx", input_shape=SHAPE, batch=4)
    proto = onnx.load(str(path))
    dims = [d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    assert dims == [4, *SHAPE]
    assert proto.graph.input[0].name == "images" and proto.graph.output[0].name == "logits"
    assert proto.opset_import[0].version == 17
    assert "BatchNormalization" not in {n.op_type for n in proto.graph.node}  # folded into Conv
    # 10 samples over a fixed batch of 4: the last chunk is padded and trimmed
    report = check_parity(path, student, (images(10) - 0.4) / 0.3, batch_size=4)
    assert report.samples == 10
    assert report.max_abs_error <= 1e-4 and report.cosine_similarity >= 0.9999
    assert report.top1_agreement == 1.0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["static.onnx"]  # no temp files left


def test_dynamic_batch_runs_at_batch_1_and_7(student, tmp_path):
    path = export_onnx(student, tmp_path / "dyn.onnx", input_shape=SHAPE, mean=MEAN, std=STD)
    session = onnx_session(path)
    assert session.get_inputs()[0].shape[0] == "batch"
    for n in (1, 7):
        x = (images(n, seed=n) - 0.4) / 0.3
        out = session.run(None, {"images": x.numpy()})[0]
        assert out.shape == (n, 10)
        report = compare_logits(torch_logits(student, x), out)
        assert report.max_abs_error <= 1e-4 and report.cosine_similarity >= 0.9999
    meta = read_metadata(session)
    assert meta["input"] == "normalised" and meta["mean"] == MEAN and meta["std"] == STD


def test_folded_normalisation_takes_images01_and_records_metadata(student, tmp_path):
    classes = [f"digit {i}" for i in range(10)]
    path = export_onnx(student, tmp_path / "folded.onnx", input_shape=SHAPE, mean=MEAN, std=STD,
                       fold_normalization=True, classes=classes)
    assert not student.training  # the export leaves the model in the mode it found it
    props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert props["nayer_edge.input"] == "images01"
    assert json.loads(props["nayer_edge.mean"]) == MEAN and json.loads(props["nayer_edge.std"]) == STD
    assert json.loads(props["nayer_edge.classes"]) == classes
    assert json.loads(props["nayer_edge.input_shape"]) == list(SHAPE)
    assert props["nayer_edge.version"] == __version__
    x01 = images(33)
    report = check_parity(path, NormalizedModel(student, MEAN, STD), x01, batch_size=16)
    assert report.max_abs_error <= 1e-4 and report.cosine_similarity >= 0.9999
    # the same images fed to the unwrapped student (no normalisation) give different logits
    with pytest.raises(ParityError):
        check_parity(path, student, x01)


def test_external_data_with_small_threshold(student, tmp_path):
    path = export_onnx(student, tmp_path / "ext.onnx", input_shape=SHAPE, mean=MEAN, std=STD,
                       fold_normalization=True, external_data_threshold=1)
    data = tmp_path / "ext.onnx.data"
    assert data.is_file() and data.stat().st_size > 10_000  # cnn_tiny's weights
    assert path.stat().st_size < data.stat().st_size
    onnx.checker.check_model(str(path))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ext.onnx", "ext.onnx.data"]
    report = check_parity(path, NormalizedModel(student, MEAN, STD), images(8))
    assert report.max_abs_error <= 1e-4
    # re-exporting the same path without external data removes the stale weights file
    export_onnx(student, path, input_shape=SHAPE)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ext.onnx"]


def test_parity_error_names_worst_sample(student, tmp_path):
    path = export_onnx(student, tmp_path / "m.onnx", input_shape=SHAPE)
    perturbed = copy.deepcopy(student)
    x = images(12)
    with torch.no_grad():
        perturbed.classifier.bias[3] += 0.5  # every sample's logit 3 moves by 0.5
        perturbed.classifier.weight[5] += 0.01 * torch.randn_like(perturbed.classifier.weight[5])
    with pytest.raises(ParityError) as info:
        check_parity(path, perturbed, x)
    report = info.value.report
    assert report.max_abs_error > 0.4 and report.samples == 12
    assert report.worst_logit in (3, 5)
    message = str(info.value)
    assert f"at sample {report.worst_index}," in message
    assert f"reference {report.reference_value:.6g} vs onnx {report.onnx_value:.6g}" in message
    assert abs(report.reference_value - report.onnx_value - report.max_abs_error) < 1e-5 or \
        abs(report.onnx_value - report.reference_value - report.max_abs_error) < 1e-5


def test_compare_logits_locates_difference():
    ref = np.array([[1.0, 2.0, 3.0], [0.5, 0.0, -1.0]])
    out = ref.copy()
    out[1, 2] = 1.0  # flips sample 1's top-1 and is the largest difference
    report = compare_logits(ref, out)
    assert (report.worst_index, report.worst_logit) == (1, 2)
    assert report.max_abs_error == pytest.approx(2.0)
    assert report.top1_agreement == 0.5
    assert report.reference_value == -1.0 and report.onnx_value == 1.0
    assert report.cosine_similarity < 0.9


def test_export_rejects_bad_arguments(student, tmp_path):
    with pytest.raises(UserError, match="fold_normalization needs mean and std"):
        export_onnx(student, tmp_path / "a.onnx", input_shape=SHAPE, fold_normalization=True)
    with pytest.raises(UserError, match="mean needs 1 or 1"):
        export_onnx(student, tmp_path / "a.onnx", input_shape=SHAPE, mean=[0.1, 0.2], std=[0.3, 0.3])
    with pytest.raises(UserError, match="input_shape"):
        export_onnx(student, tmp_path / "a.onnx", input_shape=(16, 16))
    with pytest.raises(UserError, match="3 class names given but the model outputs 10 logits"):
        export_onnx(student, tmp_path / "a.onnx", input_shape=SHAPE, classes=["a", "b", "c"])
    with pytest.raises(UserError, match="cannot export"):
        export_onnx(student, tmp_path / "a.onnx", input_shape=(3, 16, 16))  # wrong channel count
    assert not list(tmp_path.iterdir())


def test_session_errors_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="no such ONNX file"):
        onnx_session(tmp_path / "missing.onnx")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not an onnx model at all")
    with pytest.raises(UserError, match="not a loadable ONNX model"):
        onnx_session(bad)


def test_run_session_chunks_match_one_batch(student, tmp_path):
    path = export_onnx(student, tmp_path / "d.onnx", input_shape=SHAPE)
    session = onnx_session(path)
    x = images(9)
    np.testing.assert_allclose(run_session(session, x, batch_size=2), run_session(session, x, batch_size=64),
                               atol=1e-5)


def test_export_uses_eval_mode_and_restores_train_mode(tmp_path):
    model = tiny_student(seed=2).train()
    path = export_onnx(model, tmp_path / "t.onnx", input_shape=SHAPE, mean=MEAN, std=STD, fold_normalization=True)
    assert model.training and all(m.training for m in model.modules())
    reference = NormalizedModel(copy.deepcopy(model), MEAN, STD).eval()  # running BN statistics
    report = check_parity(path, reference, images(6))
    assert report.max_abs_error <= 1e-4
    assert model.training  # check_parity also puts the mode back


def test_missing_onnx_names_the_package(student, tmp_path, monkeypatch):
    from nayer_edge.core.errors import MissingDependencyError

    monkeypatch.setitem(sys.modules, "onnx", None)  # makes `import onnx` raise ImportError
    with pytest.raises(MissingDependencyError, match=r"pip install onnx "):
        export_onnx(student, tmp_path / "a.onnx", input_shape=SHAPE)
