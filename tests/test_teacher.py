"""Teacher loading: every file format, metadata, validation errors and inspection."""

from __future__ import annotations

import io
import json
import pickle
import zipfile

import pytest
import torch
from torch import nn

from nayer_edge.core.errors import UserError
from nayer_edge.inputs.teacher import LoadedTeacher, inspect_teacher, load_teacher
from nayer_edge.inputs.teacher_spec import parse_classes, parse_floats, parse_shape

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")


class TinyNet(nn.Module):
    """Conv + BatchNorm + linear head; module-level so a full pickle can be loaded back."""

    def __init__(self, in_channels: int = 3, num_classes: int = 5):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, num_classes)

    def forward(self, x):
        return self.fc(torch.relu(self.bn(self.conv(x))).mean((2, 3)))


class TupleNet(TinyNet):
    def forward(self, x):
        return (super().forward(x), x.mean())


class DictNet(TinyNet):
    def forward(self, x):
        return {"features": x.mean((2, 3)), "logits": super().forward(x)}


class NanNet(TinyNet):
    def forward(self, x):
        return super().forward(x) * float("nan")


class OneLogitNet(TinyNet):
    def forward(self, x):
        return super().forward(x)[:, :1]


class FeatureNet(TinyNet):
    def forward(self, x):
        return self.conv(x)


class Evil:
    """Unpickling this creates a file: proof that code ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def tiny(seed: int = 0, cls=TinyNet, **kw) -> nn.Module:
    torch.manual_seed(seed)
    model = cls(**kw)
    with torch.no_grad():  # non-trivial running statistics, so BN matters in eval mode
        model.bn.running_mean.uniform_(-0.5, 0.5)
        model.bn.running_var.uniform_(0.5, 2.0)
    return model.eval()


def one_line_error(excinfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message and message
    return message


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("teachers")
    model = tiny()
    x = torch.zeros(4, 3, 32, 32)
    torch.jit.script(model).save(str(d / "scripted.pt"))
    torch.jit.trace(model, x).save(str(d / "traced.ts"))
    torch.export.save(torch.export.export(model, (torch.rand(4, 3, 32, 32),)), str(d / "static.pt2"))
    torch.export.save(
        torch.export.export(model, (torch.rand(4, 3, 16, 16),)), str(d / "static16.pt2")
    )
    dyn = torch.export.export(
        model, (torch.rand(4, 3, 32, 32),), dynamic_shapes={"x": {0: torch.export.Dim("batch", min=2)}}
    )
    torch.export.save(dyn, str(d / "dynamic.pt2"))
    torch.save(model, d / "full.pt")
    return d, model


# ------------------------------------------------------------------------------- formats


@pytest.mark.parametrize("name", ["scripted.pt", "traced.ts"])
def test_torchscript_loads_and_matches_eager(files, name):
    d, model = files
    t = load_teacher(d / name, mean=[0.5], std=[0.25, 0.5, 2.0])
    assert isinstance(t, LoadedTeacher) and t.format == "torchscript"
    assert t.num_classes == 5 and t.spec.classes == ("0", "1", "2", "3", "4")
    assert t.spec.mean == (0.5, 0.5, 0.5) and t.spec.std == (0.25, 0.5, 2.0)
    assert t.param_count == sum(p.numel() for p in model.parameters())
    assert all(not p.requires_grad for p in t.model.parameters())
    x = torch.rand(3, 3, 32, 32)
    expected = model((x - 0.5) / torch.tensor([0.25, 0.5, 2.0]).view(1, 3, 1, 1))
    torch.testing.assert_close(t(x), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(t.model(t.normalize(x)), expected, rtol=1e-5, atol=1e-5)
    info = inspect_teacher(t)
    assert info["batchnorm_layers"] == [{"name": "bn", "type": "BatchNorm2d", "num_features": 4}]
    assert info["format"] == "torchscript" and len(info["sha256"]) == 64


def test_export_static_batch_is_chunked_and_differentiable(files):
    d, model = files
    t = load_teacher(d / "static.pt2")
    assert t.format == "export" and t.num_classes == 5
    assert any("batch size 4" in n for n in t.notes)
    x = torch.rand(7, 3, 32, 32, requires_grad=True)
    out = t(x)
    assert out.shape == (7, 5)
    torch.testing.assert_close(out, model(x), rtol=1e-5, atol=1e-5)
    out.logsumexp(1).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert x.grad[6].abs().sum() > 0  # the sample in the padded last chunk gets its gradient
    assert all(p.grad is None for p in t.model.parameters())
    t.model.eval()  # must not raise, although .eval() on an exported module does
    assert inspect_teacher(t)["batchnorm_layers"] == [
        {"name": "batch_norm", "type": "BatchNorm2d", "num_features": 4}
    ]


def test_export_input_shape_read_from_graph(files):
    d, _ = files
    t = load_teacher(d / "static16.pt2")
    assert t.spec.input_shape == (3, 16, 16)
    assert t(torch.rand(2, 3, 16, 16)).shape == (2, 5)


def test_export_dynamic_batch(files):
    d, model = files
    t = load_teacher(d / "dynamic.pt2")
    x = torch.rand(7, 3, 32, 32)
    torch.testing.assert_close(t(x), model(x), rtol=1e-5, atol=1e-5)
    assert not any("batch size" in n for n in t.notes)


def test_export_with_other_extension_loads_by_content(files, tmp_path):
    d, _ = files
    other = tmp_path / "teacher.bin"
    other.write_bytes((d / "static.pt2").read_bytes())
    assert load_teacher(other).format == "export"


def _zoo_model(in_channels=3, num_classes=7):
    from nayer_edge.zoo import create_model

    torch.manual_seed(1)
    return create_model("cnn_small", num_classes=num_classes, in_channels=in_channels).eval()


@pytest.mark.parametrize("wrap", [None, "state_dict", "model", "model_state_dict", "module."])
def test_state_dict_with_arch(tmp_path, wrap):
    model = _zoo_model()
    sd = model.state_dict()
    if wrap == "module.":
        obj = {"module." + k: v for k, v in sd.items()}
    elif wrap:
        obj = {wrap: sd, "epoch": 3}
    else:
        obj = sd
    torch.save(obj, tmp_path / "ckpt.pth")
    t = load_teacher(tmp_path / "ckpt.pth", arch="cnn_small")
    assert t.format == "state_dict" and t.num_classes == 7
    x = torch.rand(3, 3, 32, 32)
    torch.testing.assert_close(t(x), model(x))
    bns = inspect_teacher(t)["batchnorm_layers"]
    expected = [n for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)]
    assert [b["name"] for b in bns] == expected and bns[0]["num_features"] > 0


def test_state_dict_infers_in_channels(tmp_path):
    torch.save(_zoo_model(in_channels=1, num_classes=4).state_dict(), tmp_path / "gray.pt")
    t = load_teacher(tmp_path / "gray.pt", arch="cnn_small")
    assert t.spec.input_shape == (1, 32, 32) and t.num_classes == 4


def test_state_dict_needs_arch(tmp_path):
    torch.save(_zoo_model().state_dict(), tmp_path / "ckpt.pt")
    with pytest.raises(UserError, match="--arch NAME") as e:
        load_teacher(tmp_path / "ckpt.pt")
    one_line_error(e)
    with pytest.raises(UserError, match="did you mean 'cnn_small'") as e:
        load_teacher(tmp_path / "ckpt.pt", arch="cnn_smal")
    one_line_error(e)


def test_state_dict_wrong_arch_names_first_key(tmp_path):
    torch.save(_zoo_model().state_dict(), tmp_path / "ckpt.pt")
    with pytest.raises(UserError, match=r"does not match --arch resnet18: missing key '[^']+'") as e:
        load_teacher(tmp_path / "ckpt.pt", arch="resnet18")
    one_line_error(e)
    assert "unexpected key 'features.0.weight'" in str(e.value)


def test_arch_from_metadata(tmp_path):
    torch.save(_zoo_model().state_dict(), tmp_path / "ckpt.pt")
    (tmp_path / "ckpt.json").write_text(json.dumps({"arch": "cnn_small"}))
    assert load_teacher(tmp_path / "ckpt.pt").format == "state_dict"


def test_full_pickle_refused_then_trusted(files):
    d, model = files
    with pytest.raises(UserError, match="pickled code; re-run with --trust-pickle") as e:
        load_teacher(d / "full.pt")
    one_line_error(e)
    t = load_teacher(d / "full.pt", trust_pickle=True)
    assert t.format == "pickle" and t.num_classes == 5
    x = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(t(x), model(x))
    assert inspect_teacher(t)["batchnorm_layers"] == [{"name": "bn", "type": "BatchNorm2d", "num_features": 4}]


@pytest.mark.parametrize("how", ["torch_save", "in_checkpoint", "plain_pickle"])
def test_malicious_pickle_runs_no_code(tmp_path, how):
    marker = tmp_path / "PWNED"
    path = tmp_path / "evil.pt"
    if how == "torch_save":
        torch.save(Evil(marker), path)
    elif how == "in_checkpoint":
        torch.save({"state_dict": _zoo_model().state_dict(), "extra": Evil(marker)}, path)
    else:
        path.write_bytes(pickle.dumps(Evil(marker)))
    with pytest.raises(UserError, match="pickled code") as e:
        load_teacher(path, arch="cnn_small")
    one_line_error(e)
    assert not marker.exists()


def _rewrite_archive(src, dst, edit) -> None:
    """Copy a zip entry by entry; ``edit(name, data)`` returns the new bytes, or None to drop the entry."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", compression=zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            data = edit(info.filename, zin.read(info.filename))
            if data is not None:
                zout.writestr(info, data)


def _export_with_pickled_weight(files, path, payload: bytes) -> None:
    """A real torch.export archive whose first weight is marked ``use_pickle`` and replaced by ``payload``:
    torch.export.load unpickles such weights with weights_only=False."""
    d, _ = files
    with zipfile.ZipFile(d / "static.pt2") as z:
        config_name = next(n for n in z.namelist() if n.endswith("model_weights_config.json"))
        config = json.loads(z.read(config_name))
    first = next(iter(config["config"]))
    config["config"][first]["use_pickle"] = True
    weight_name = config_name.rsplit("/", 1)[0] + "/" + config["config"][first]["path_name"]
    _rewrite_archive(d / "static.pt2", path, lambda name, data: json.dumps(config).encode() if name == config_name
                     else payload if name == weight_name else data)


def test_export_archive_with_a_pickled_payload_runs_no_code(files, tmp_path):
    marker = tmp_path / "PWNED"
    evil = tmp_path / "evil.pt2"
    buffer = io.BytesIO()
    torch.save(Evil(marker), buffer)
    _export_with_pickled_weight(files, evil, buffer.getvalue())
    with pytest.raises(UserError, match="pickled code.*--trust-pickle") as e:
        load_teacher(evil)
    one_line_error(e)
    assert not marker.exists()
    with pytest.raises(UserError):  # the payload is live: trusted, it runs (and is no weight)
        load_teacher(evil, trust_pickle=True)
    assert marker.exists()
    assert torch.load is torch.serialization.load and pickle.loads is _real_pickle_loads  # nothing left patched


_real_pickle_loads = pickle.loads


def test_export_archive_with_a_pickled_tensor_loads_without_trust(files, tmp_path):
    """A payload that is only a tensor needs no code: loaded weights-only, with the weight it holds."""
    d, model = files
    path = tmp_path / "pickled_tensor.pt2"
    buffer = io.BytesIO()
    torch.save(model.conv.weight.detach().clone(), buffer)
    _export_with_pickled_weight(files, path, buffer.getvalue())
    with pytest.raises(UserError, match="not an instance of torch.nn.Parameter"):
        load_teacher(path)  # torch wants a Parameter here: the file was read, weights-only, and then refused


@pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")
def test_export_guard_refuses_every_unpickler():
    from nayer_edge.inputs.teacher_formats import _no_code_from_pickles, _PickledCode

    evil = pickle.dumps(Evil("/nonexistent/PWNED"))
    tensor_bytes = io.BytesIO()
    torch.save(torch.arange(3), tensor_bytes)
    with _no_code_from_pickles():
        assert torch.load(io.BytesIO(tensor_bytes.getvalue()), weights_only=False).tolist() == [0, 1, 2]
        for unpickle in (lambda: pickle.loads(evil), lambda: torch._C._pickle_load_obj(evil),
                         lambda: torch.load(io.BytesIO(evil), weights_only=False)):
            with pytest.raises(_PickledCode):
                unpickle()
    assert pickle.loads(pickle.dumps([1, 2])) == [1, 2]


def test_corrupt_export_archive_is_one_line_without_torch_logs(files, tmp_path):
    """torch.export.load logs the failure with its traceback before raising; the CLI shows only its line."""
    from conftest import run_cli

    d, _ = files
    path = tmp_path / "no_version.pt2"
    _rewrite_archive(d / "static.pt2", path, lambda name, data: None if name.endswith((
        "/archive_version", "/.data/version")) else data)
    result = run_cli("inspect", str(path))
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "cannot load torch.export program" in lines[0], \
        result.stderr[-2000:]


# ------------------------------------------------------------------------------- metadata


@pytest.mark.parametrize("meta_name", ["scripted.pt.json", "scripted.json"])
def test_metadata_file(files, tmp_path, meta_name):
    d, _ = files
    path = tmp_path / "scripted.pt"
    path.write_bytes((d / "scripted.pt").read_bytes())
    meta = {"classes": list("abcde"), "mean": [0.1, 0.2, 0.3], "std": [0.5], "input_shape": [3, 32, 32]}
    (tmp_path / meta_name).write_text(json.dumps(meta))
    t = load_teacher(path)
    assert t.spec.classes == tuple("abcde")
    assert t.spec.mean == (0.1, 0.2, 0.3) and t.spec.std == (0.5, 0.5, 0.5)
    # explicit arguments win over the metadata
    t2 = load_teacher(path, classes=list("vwxyz"), mean=[0.0])
    assert t2.spec.classes == tuple("vwxyz") and t2.spec.mean == (0.0, 0.0, 0.0)


def test_metadata_with_teacher_name_json_comes_first(files, tmp_path):
    d, _ = files
    path = tmp_path / "scripted.pt"
    path.write_bytes((d / "scripted.pt").read_bytes())
    (tmp_path / "scripted.pt.json").write_text(json.dumps({"classes": list("abcde")}))
    (tmp_path / "scripted.json").write_text(json.dumps({"classes": list("vwxyz")}))
    assert load_teacher(path).spec.classes == tuple("abcde")


@pytest.mark.parametrize(
    "meta, pattern",
    [
        ({"clases": ["a"]}, "unknown key 'clases' \\(did you mean 'classes'\\?\\)"),
        ({"input_shape": [3, 32]}, "input_shape"),
        ({"mean": "zero"}, "mean"),
        ({"classes": ["a", "a", "b", "c", "d"]}, "duplicate"),
    ],
)
def test_metadata_errors(files, tmp_path, meta, pattern):
    d, _ = files
    path = tmp_path / "scripted.pt"
    path.write_bytes((d / "scripted.pt").read_bytes())
    (tmp_path / "scripted.json").write_text(json.dumps(meta))
    with pytest.raises(UserError, match=pattern) as e:
        load_teacher(path)
    one_line_error(e)


def test_bad_json_metadata(files, tmp_path):
    d, _ = files
    path = tmp_path / "scripted.pt"
    path.write_bytes((d / "scripted.pt").read_bytes())
    (tmp_path / "scripted.json").write_text("{not json")
    with pytest.raises(UserError, match="not valid JSON") as e:
        load_teacher(path)
    one_line_error(e)


def test_mean_wrong_length(files):
    d, _ = files
    with pytest.raises(UserError, match="mean has 2 values but the teacher takes 3 channels") as e:
        load_teacher(d / "scripted.pt", mean=[0.1, 0.2])
    one_line_error(e)
    with pytest.raises(UserError, match="std values must be positive"):
        load_teacher(d / "scripted.pt", std=[0.0])


# ------------------------------------------------------------------------------- validation


def test_class_count_mismatch(files):
    d, _ = files
    with pytest.raises(UserError, match="3 class names given but the teacher outputs 5 logits") as e:
        load_teacher(d / "scripted.pt", classes=["a", "b", "c"])
    one_line_error(e)


@pytest.mark.parametrize("name", ["scripted.pt", "traced.ts", "full.pt"])
def test_input_shape_rejected(files, name):
    d, _ = files
    with pytest.raises(UserError, match=r"teacher rejects input shape 1,32,32: .+; pass --input-shape C,H,W") as e:
        load_teacher(d / name, input_shape=(1, 32, 32), trust_pickle=True)
    message = one_line_error(e)
    assert "TorchScript interpreter" not in message


def test_export_input_shape_conflict_names_the_fixed_shape(files):
    d, _ = files
    with pytest.raises(UserError, match="exported program takes 3,32,32; pass --input-shape 3,32,32") as e:
        load_teacher(d / "static.pt2", input_shape=(1, 32, 32))
    one_line_error(e)


def test_tuple_and_dict_outputs_use_logits(tmp_path):
    for cls in (TupleNet, DictNet):
        model = tiny(cls=cls)
        torch.jit.trace(model, torch.rand(2, 3, 32, 32), strict=False).save(str(tmp_path / "m.pt"))
        t = load_teacher(tmp_path / "m.pt")
        assert t.num_classes == 5 and t.notes
        x = torch.rand(3, 3, 32, 32)
        expected = model(x)
        expected = expected[0] if isinstance(expected, tuple) else expected["logits"]
        torch.testing.assert_close(t(x), expected)
        assert inspect_teacher(t)["batchnorm_layers"][0]["name"] == "bn"


@pytest.mark.parametrize("cls, pattern", [(NanNet, "NaN or inf"), (FeatureNet, r"shape \(2, 4, 32, 32\)"),
                                          (OneLogitNet, "1 logit per image.*at least 2 classes")])
def test_bad_outputs(tmp_path, cls, pattern):
    torch.jit.trace(tiny(cls=cls), torch.rand(2, 3, 32, 32)).save(str(tmp_path / "m.pt"))
    with pytest.raises(UserError, match=pattern) as e:
        load_teacher(tmp_path / "m.pt")
    one_line_error(e)


# ------------------------------------------------------------------------------- bad files


def _bad_files(tmp_path, files):
    d, _ = files
    (tmp_path / "empty.pt").write_bytes(b"")
    rng = torch.Generator().manual_seed(0)
    (tmp_path / "random.pt").write_bytes(bytes([7]) + bytes(torch.randint(0, 256, (4096,), generator=rng).tolist()))
    for name in ("scripted.pt", "static.pt2", "full.pt"):
        data = (d / name).read_bytes()
        (tmp_path / f"truncated_{name}").write_bytes(data[: len(data) // 2])
    with zipfile.ZipFile(tmp_path / "other.zip", "w") as zf:
        zf.writestr("hello.txt", "hi")
    return ["missing.pt", "empty.pt", "random.pt", "truncated_scripted.pt", "truncated_static.pt2",
            "truncated_full.pt", "other.zip"]


def test_unreadable_files_give_one_line_errors(tmp_path, files):
    for name in _bad_files(tmp_path, files):
        with pytest.raises(UserError, match="not a TorchScript, torch.export, ONNX, safetensors or state-dict file") as e:
            load_teacher(tmp_path / name, arch="cnn_small", trust_pickle=True)
        assert str(e.value).startswith(str(tmp_path / name))
        one_line_error(e)


# ------------------------------------------------------------------------------- inspect / parse


def test_inspect_keys(files):
    d, model = files
    info = inspect_teacher(load_teacher(d / "scripted.pt", classes=list("abcde")))
    assert info["params"] == sum(p.numel() for p in model.parameters())
    assert info["num_classes"] == 5 and info["classes"] == list("abcde")
    assert info["input_shape"] == [3, 32, 32] and info["mean"] == [0.0] * 3 and info["std"] == [1.0] * 3
    json.dumps(info)


def test_parse_classes(tmp_path):
    assert parse_classes("cat, dog,bird") == ["cat", "dog", "bird"]
    f = tmp_path / "classes.txt"
    f.write_text("cat\n\ndog\n  bird  \n")
    assert parse_classes(str(f)) == ["cat", "dog", "bird"]
    for bad, pattern in [("", "no class names"), ("a,,b", "empty class name"), ("a,b,a", "duplicate"),
                         (str(tmp_path / "nope.txt"), "no such file")]:
        with pytest.raises(UserError, match=pattern):
            parse_classes(bad)
    f.write_text("a\nb\na\n")
    with pytest.raises(UserError, match="duplicate class name 'a'"):
        parse_classes(str(f))


def test_parse_floats_and_shape():
    assert parse_floats("0.5, 0.25,1") == (0.5, 0.25, 1.0)
    assert parse_floats("0.5", n=1) == (0.5,)
    assert parse_shape("3,32,32") == (3, 32, 32)
    for bad in ("a,b", "1,nan"):
        with pytest.raises(UserError):
            parse_floats(bad)
    with pytest.raises(UserError, match="expected 3"):
        parse_floats("1,2", n=3)
    for bad in ("3,32", "3,32,x", "0,32,32", "3,32,32,1"):
        with pytest.raises(UserError, match="C,H,W"):
            parse_shape(bad)
