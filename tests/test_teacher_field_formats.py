"""Teachers as the field has them (issue 17): ONNX files (converted to torch, checked against onnxruntime),
safetensors state dicts, Hugging Face image-classification folders, and the timm / Hugging Face key names in
the metadata sidecar."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch
from conftest import run_cli
from torch import nn

from nayer_edge.core.errors import UserError
from nayer_edge.inputs.teacher import inspect_teacher, load_teacher
from nayer_edge.synthesis.bn_probe import BNProbe

CLASSES = [f"c{i}" for i in range(5)]


class Mixed(nn.Module):
    """ResNet-, MobileNet- and GroupNorm-style pieces: residual add, depthwise conv, hardswish, max/avg pools."""

    def __init__(self, group_norm: bool = False):
        super().__init__()
        norm = (lambda c: nn.GroupNorm(4, c)) if group_norm else nn.BatchNorm2d
        self.c1, self.n1 = nn.Conv2d(3, 16, 3, padding=1), norm(16)
        self.c2, self.n2 = nn.Conv2d(16, 16, 3, padding=1, bias=False), norm(16)
        self.dw = nn.Conv2d(16, 16, 3, stride=2, padding=1, groups=16)
        self.pw, self.n3 = nn.Conv2d(16, 32, 1), norm(32)
        self.fc = nn.Linear(32, len(CLASSES))
        torch.manual_seed(0)
        for m in self.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.data.uniform_(0.5, 1.5)
                m.bias.data.uniform_(-0.2, 0.2)

    def forward(self, x):
        h = torch.relu(self.n1(self.c1(x)))
        h = h + torch.clamp(self.n2(self.c2(h)), 0, 6)
        h = nn.functional.hardswish(self.n3(self.pw(self.dw(nn.functional.max_pool2d(h, 2)))))
        h = nn.functional.avg_pool2d(h, 2)
        h = nn.functional.adaptive_avg_pool2d(h, 1)
        return self.fc(h.view(h.size(0), -1))


def export(model: nn.Module, path: Path, keep_bn: bool, batch: int | None = None, meta: dict | None = None) -> Path:
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(model.eval(), (torch.zeros(batch or 2, 3, 16, 16),), str(path), dynamo=False,
                          input_names=["x"], output_names=["y"], opset_version=17,
                          dynamic_axes=None if batch else {"x": {0: "n"}, "y": {0: "n"}},
                          do_constant_folding=not keep_bn,
                          training=torch.onnx.TrainingMode.PRESERVE if keep_bn else torch.onnx.TrainingMode.EVAL)
    if meta:
        import onnx

        proto = onnx.load(str(path))
        for key, value in meta.items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, json.dumps(value)
        onnx.save(proto, str(path))
    return path


@pytest.mark.parametrize("keep_bn, group_norm, batch", [(True, False, None), (False, False, None),
                                                        (False, True, None), (False, False, 1)],
                         ids=["bn-kept", "bn-folded", "groupnorm", "fixed-batch-1"])
def test_onnx_teacher_matches_the_torch_model_and_passes_gradients(tmp_path, keep_bn, group_norm, batch):
    model = Mixed(group_norm).eval()
    teacher = load_teacher(export(model, tmp_path / "t.onnx", keep_bn, batch), classes=CLASSES)
    assert teacher.format == "onnx" and teacher.spec.input_shape == (3, 16, 16) and teacher.num_classes == 5
    x = torch.rand(7, 3, 16, 16, requires_grad=True)  # 7: not the graph's batch size when it is fixed
    out = teacher(x)
    torch.testing.assert_close(out, model(x), atol=1e-5, rtol=1e-5)
    out.logsumexp(1).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert any("from onnxruntime" in n for n in teacher.notes)
    bn = inspect_teacher(teacher)["batchnorm_layers"]
    if keep_bn:
        assert [layer["num_features"] for layer in bn] == [16, 16, 32]
    else:
        assert bn == [] and any("no BatchNormalization node" in n for n in teacher.notes)


def test_onnx_batchnorm_statistics_reach_the_bn_loss(tmp_path):
    model = Mixed().eval()
    teacher = load_teacher(export(model, tmp_path / "t.onnx", keep_bn=True), classes=CLASSES)
    probe = BNProbe(teacher.model)
    x = torch.randn(6, 3, 16, 16, requires_grad=True)
    logits, stats = probe(x)
    probe.close()
    assert len(stats) == 3
    torch.testing.assert_close(stats[0].running_mean, model.n1.running_mean)
    torch.testing.assert_close(stats[2].running_var, model.n3.running_var)
    sum(s.batch_mean.square().sum() for s in stats).backward()  # the BN loss's gradient reaches the image
    assert x.grad.abs().sum() > 0


def test_onnx_metadata_gives_classes_and_normalisation(tmp_path):
    path = export(Mixed(), tmp_path / "t.onnx", keep_bn=False,
                  meta={"id2label": {str(i): c for i, c in enumerate(CLASSES)}, "mean": [0.4, 0.5, 0.6],
                        "std": [0.2, 0.25, 0.3]})
    teacher = load_teacher(path)
    assert teacher.spec.classes == tuple(CLASSES)
    assert teacher.spec.mean == (0.4, 0.5, 0.6) and teacher.spec.std == (0.2, 0.25, 0.3)
    assert load_teacher(path, classes=list("abcde"), mean=[0.5]).spec.classes == tuple("abcde")  # the user wins


def test_onnx_conversion_that_differs_from_onnxruntime_is_refused(tmp_path, monkeypatch):
    from nayer_edge.inputs import onnx_graph

    path = export(Mixed(), tmp_path / "t.onnx", keep_bn=False)
    monkeypatch.setitem(onnx_graph.SUPPORTED_OPS, "Relu", lambda m, node, a, x: torch.relu(x[0]) + 0.5)
    with pytest.raises(UserError, match=r"differs from onnxruntime by [0-9.e-]+ at output \[\d+, \d+\] \(onnxruntime") as err:
        load_teacher(path, classes=CLASSES)
    assert "\n" not in str(err.value)


def test_safetensors_state_dict_loads_with_a_zoo_arch(tmp_path):
    from safetensors.torch import save_file

    from nayer_edge.zoo import create_model

    model = create_model("cnn_small", num_classes=10, in_channels=1, input_size=16).eval()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp_path / "model.safetensors")
    teacher = load_teacher(tmp_path / "model.safetensors", arch="cnn_small", input_shape=(1, 16, 16))
    x = torch.rand(3, 1, 16, 16)
    assert teacher.format == "state_dict"
    torch.testing.assert_close(teacher(x), model(x))


def test_sidecar_accepts_timm_and_hugging_face_key_names(tmp_path):
    path = export(Mixed(), tmp_path / "t.onnx", keep_bn=False)
    (tmp_path / "t.onnx.json").write_text(json.dumps({
        "id2label": {str(i): c for i, c in enumerate(CLASSES)}, "image_mean": [0.5, 0.5, 0.5], "std": [0.25]}))
    teacher = load_teacher(path)
    assert teacher.spec.classes == tuple(CLASSES) and teacher.spec.mean == (0.5,) * 3
    (tmp_path / "t.onnx.json").write_text(json.dumps({"label_names": CLASSES, "classes": CLASSES}))
    with pytest.raises(UserError, match="'classes' gives classes a second time"):
        load_teacher(path)


def _hf_resnet(folder: Path, labels: list[str] | None, processor: dict | None) -> nn.Module:
    from transformers import ResNetConfig, ResNetForImageClassification

    torch.manual_seed(0)
    kwargs = {"id2label": dict(enumerate(labels)), "label2id": {c: i for i, c in enumerate(labels)}} if labels else {}
    config = ResNetConfig(num_channels=3, embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic",
                          num_labels=5, **kwargs)
    model = ResNetForImageClassification(config).eval()
    model.save_pretrained(str(folder), safe_serialization=True)
    if processor is not None:
        (folder / "preprocessor_config.json").write_text(json.dumps(processor))
    return model


def test_hugging_face_folder_gives_classes_normalisation_size_and_logits(tmp_path):
    processor = {"do_normalize": True, "image_mean": [0.4, 0.45, 0.5], "image_std": [0.2, 0.22, 0.24],
                 "size": {"height": 24, "width": 24}}
    model = _hf_resnet(tmp_path / "hf", CLASSES, processor)
    teacher = load_teacher(tmp_path / "hf")
    info = inspect_teacher(teacher)
    assert info["format"] == "huggingface" and info["classes"] == CLASSES and info["input_shape"] == [3, 24, 24]
    assert info["mean"] == pytest.approx([0.4, 0.45, 0.5]) and info["std"] == pytest.approx([0.2, 0.22, 0.24])
    assert len(info["batchnorm_layers"]) >= 5
    x = torch.rand(2, 3, 24, 24)
    torch.testing.assert_close(teacher(x), model(pixel_values=teacher.normalize(x)).logits)


def test_hugging_face_folder_without_names_or_processor_says_so(tmp_path):
    _hf_resnet(tmp_path / "hf", None, None)
    teacher = load_teacher(tmp_path / "hf", input_shape=(3, 16, 16))
    assert teacher.spec.classes == tuple(str(i) for i in range(5))  # not transformers' LABEL_0 … LABEL_4
    assert any("pass --mean and --std" in n for n in teacher.notes)


def test_hugging_face_teacher_digest_follows_its_files(tmp_path):
    _hf_resnet(tmp_path / "hf", CLASSES, None)
    first = load_teacher(tmp_path / "hf", input_shape=(3, 16, 16)).sha256
    (tmp_path / "hf" / "preprocessor_config.json").write_text(json.dumps({"image_mean": [0.5], "image_std": [0.5]}))
    assert load_teacher(tmp_path / "hf", input_shape=(3, 16, 16)).sha256 != first


def test_cli_inspect_shows_each_format(tmp_path):
    path = export(Mixed(), tmp_path / "t.onnx", keep_bn=True, meta={"classes": CLASSES})
    result = run_cli("inspect", str(path), "--json")
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["format"] == "onnx" and info["classes"] == CLASSES and len(info["batchnorm_layers"]) == 3
    _hf_resnet(tmp_path / "hf", CLASSES, {"image_mean": [0.5] * 3, "image_std": [0.5] * 3, "size": 16})
    result = run_cli("inspect", str(tmp_path / "hf"), "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["input_shape"] == [3, 16, 16]


@pytest.mark.slow
def test_distill_an_onnx_teacher_end_to_end_writes_student_safetensors(tmp_path, digits_teacher):
    """The digits teacher (real images) as ONNX with its BatchNorm kept: a short distill run from the file alone
    learns far above chance and writes the student's weights as safetensors too."""
    from safetensors.torch import load_file

    loaded = load_teacher(digits_teacher.path)
    onnx_path = tmp_path / "digits.onnx"
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(loaded.model, (torch.zeros(2, *loaded.spec.input_shape),), str(onnx_path), dynamo=False,
                          input_names=["x"], output_names=["y"], opset_version=17,
                          dynamic_axes={"x": {0: "n"}, "y": {0: "n"}}, do_constant_folding=False,
                          training=torch.onnx.TrainingMode.PRESERVE)
    import onnx

    proto = onnx.load(str(onnx_path))
    for key, value in (("classes", list(loaded.spec.classes)), ("mean", list(loaded.spec.mean)),
                       ("std", list(loaded.spec.std))):
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, json.dumps(value)
    onnx.save(proto, str(onnx_path))
    result = run_cli("distill", str(onnx_path), "--out", str(tmp_path / "run"), "--eval-data",
                     str(digits_teacher.eval_path), "--time-budget", "60", "--student", "cnn_tiny", "--json")
    assert result.returncode == 0, result.stderr
    metrics = json.loads(result.stdout)
    assert metrics["student_accuracy"] > 0.5, metrics["student_accuracy"]
    weights = load_file(str(tmp_path / "run" / "student.safetensors"))
    saved = torch.load(tmp_path / "run" / "student.pt", weights_only=True)
    assert weights.keys() == saved.keys() and all(torch.equal(weights[k], saved[k]) for k in saved)
    assert abs(metrics["teacher_accuracy"] - digits_teacher.accuracy) < 0.02  # the ONNX teacher is the same model
