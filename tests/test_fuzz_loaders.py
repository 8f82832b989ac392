"""Property-based fuzzing (hypothesis) of the loaders that read what a user or a device hands over: teachers and
their metadata, evaluation data, strict configs and recipes, deploy bundles.

The property is the same everywhere: a loader either succeeds or raises the error a user can act on
(UserError, or the bundle scripts' BundleError / IntegrityError) — never another exception type, never a hang.
Examples are few and deadlines are off, so all of this runs in well under a minute on two cores.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from nayer_edge.core.errors import UserError

FUZZ = settings(max_examples=50, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                       HealthCheck.data_too_large])
FEW = settings(FUZZ, max_examples=25)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


def fresh(workdir: Path) -> Path:
    folder = workdir / uuid.uuid4().hex[:12]
    folder.mkdir()
    return folder


# --------------------------------------------------------------------------------------- teachers


@pytest.fixture(scope="module")
def teacher_files(workdir) -> dict[str, bytes]:
    """A small BatchNorm CNN as TorchScript, torch.export (.pt2) and state dict."""
    from nayer_edge.zoo import create_model

    torch.manual_seed(0)
    model = create_model("cnn_tiny", num_classes=4, in_channels=1, input_size=8).eval()
    example_input = torch.rand(2, 1, 8, 8)
    folder = fresh(workdir)
    torch.jit.save(torch.jit.trace(model, example_input), folder / "t.pt")
    torch.export.save(torch.export.export(model, (example_input,)), folder / "t.pt2")
    torch.save(model.state_dict(), folder / "sd.pt")
    return {name: (folder / name).read_bytes() for name in ("t.pt", "t.pt2", "sd.pt")}


def load_or_user_error(path: Path, **kw) -> None:
    from nayer_edge.inputs.teacher import load_teacher

    try:
        teacher = load_teacher(path, input_shape=(1, 8, 8), **kw)
    except UserError as err:
        assert "\n" not in str(err).strip(), str(err)
        return
    assert teacher.num_classes >= 1


@FUZZ
@given(data=st.binary(max_size=4096))
@example(data=b"PK\x03\x04")
@example(data=b"\x80\x04K\x01.")  # a pickle of the int 1
@example(data=b"\x80\x02}q\x00.")  # a pickle of an empty dict
def test_teacher_random_bytes(workdir, data):
    path = fresh(workdir) / "teacher.pt"
    path.write_bytes(data)
    load_or_user_error(path, arch="cnn_tiny")


@FUZZ
@given(name=st.sampled_from(["t.pt", "t.pt2", "sd.pt"]), cut=st.floats(0, 1, exclude_max=True))
def test_teacher_truncated(workdir, teacher_files, name, cut):
    data = teacher_files[name]
    path = fresh(workdir) / name
    path.write_bytes(data[: int(len(data) * cut)])
    load_or_user_error(path, arch="cnn_tiny")


@FUZZ
@given(name=st.sampled_from(["t.pt", "t.pt2", "sd.pt"]),
       flips=st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(1, 255)), min_size=1, max_size=4))
def test_teacher_corrupted_bytes(workdir, teacher_files, name, flips):
    data = bytearray(teacher_files[name])
    for where, mask in flips:
        data[int(len(data) * where)] ^= mask
    path = fresh(workdir) / name
    path.write_bytes(bytes(data))
    load_or_user_error(path, arch="cnn_tiny")


meta_dicts = st.dictionaries(
    st.sampled_from(["classes", "input_shape", "mean", "std", "arch"]) | st.text(max_size=8),
    json_values | st.lists(st.text(max_size=5), max_size=6) | st.lists(st.integers(-2, 40), max_size=4),
    max_size=5,
)


@FUZZ
@given(meta=meta_dicts | json_values, raw=st.none() | st.binary(max_size=64), meta_name=st.sampled_from(
    ["t.pt.json", "t.json"]))
@example(meta={"classes": ["a", "b", "c", "d"], "input_shape": [1, 8, 8], "mean": 0.5, "std": [0.5]}, raw=None,
         meta_name="t.pt.json")
def test_teacher_metadata(workdir, teacher_files, meta, raw, meta_name):
    folder = fresh(workdir)
    (folder / "t.pt").write_bytes(teacher_files["t.pt"])
    (folder / meta_name).write_bytes(raw if raw is not None else json.dumps(meta).encode())
    from nayer_edge.inputs.teacher import load_teacher

    try:
        load_teacher(folder / "t.pt")
    except UserError as err:
        assert "\n" not in str(err).strip(), str(err)


# --------------------------------------------------------------------------------------- eval data

DTYPES = ["uint8", "int8", "int32", "int64", "uint64", "float16", "float32", "float64", "bool", "complex64", "<U2",
          "S3"]


@st.composite
def arrays(draw, ndim_max=5):
    ndim = draw(st.integers(0, ndim_max))
    shape = tuple(draw(st.lists(st.integers(0, 6), min_size=ndim, max_size=ndim)))
    dtype = np.dtype(draw(st.sampled_from(DTYPES)))
    size = int(np.prod(shape)) if shape else 1
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    if dtype.kind in "US":
        flat = np.array([str(v) for v in rng.integers(-3, 12, size)], dtype=dtype)
    elif dtype.kind == "b":
        flat = rng.integers(0, 2, size).astype(bool)
    elif dtype.kind in "fc":
        flat = rng.choice(np.array([0.0, 0.5, 1.0, -1.0, 2.0, np.nan, np.inf]), size).astype(dtype)
    else:
        info = np.iinfo(dtype)
        flat = rng.integers(max(info.min, -3), min(info.max, 300), size, endpoint=True).astype(dtype)
    return flat.reshape(shape)


@FUZZ
@given(x=arrays(), y=arrays(ndim_max=2), keys=st.sampled_from([("x", "y"), ("x",), ("y",), ("images", "y")]),
       shape=st.sampled_from([(1, 8, 8), (3, 4, 6), (2, 5, 5)]), with_classes=st.booleans())
@example(x=np.zeros((2, 0, 4, 1), np.uint8), y=np.zeros(2, np.int64), keys=("x", "y"), shape=(1, 8, 8),
         with_classes=False)
@example(x=np.zeros((2, 1, 0, 4), np.float32), y=np.zeros(2, np.int64), keys=("x", "y"), shape=(1, 8, 8),
         with_classes=False)
def test_eval_npz(workdir, x, y, keys, shape, with_classes):
    from nayer_edge.inputs.evaldata import load_eval_data

    path = fresh(workdir) / "eval.npz"
    arrays_ = dict(zip(keys, (x, y) if keys != ("y",) else (y,)))
    np.savez(path, **arrays_)
    classes = [f"c{i}" for i in range(4)] if with_classes else None
    try:
        images, labels = load_eval_data(path, input_shape=shape, classes=classes)
    except UserError as err:
        assert "\n" not in str(err).strip(), str(err)
        return
    assert images.dtype == torch.float32 and tuple(images.shape[1:]) == shape
    assert labels.dtype == torch.int64 and len(labels) == len(images) > 0
    assert torch.isfinite(images).all() and images.min() >= 0 and images.max() <= 1


@FEW
@given(data=st.binary(max_size=2048), as_image=st.booleans())
def test_eval_random_files(workdir, data, as_image):
    """Random bytes as an .npz, or as an image in a class folder."""
    from nayer_edge.inputs.evaldata import load_eval_data

    folder = fresh(workdir)
    if as_image:
        (folder / "cat").mkdir()
        (folder / "cat" / "img.png").write_bytes(data)
        path = folder
    else:
        path = folder / "eval.npz"
        path.write_bytes(data)
    try:
        load_eval_data(path, input_shape=(3, 8, 8), classes=["cat", "dog"])
    except UserError as err:
        assert "\n" not in str(err).strip(), str(err)


# --------------------------------------------------------------------------------------- configs

def config_keys() -> list[str]:
    import dataclasses

    from nayer_edge.distill.config import DistillConfig

    return [f.name for f in dataclasses.fields(DistillConfig)]


config_values = (st.none() | st.booleans() | st.integers(-5, 10**6) | st.floats(allow_nan=True, allow_infinity=True)
                 | st.text(max_size=10) | st.lists(st.integers(0, 3), max_size=3)
                 | st.sampled_from(["nayer", "noise", "text", "onehot", "ram", "mmap", "cpu", "auto", "4e-3"]))


def config_dicts() -> st.SearchStrategy:
    keys = st.deferred(lambda: st.sampled_from(config_keys())) | st.text(max_size=10)
    return st.dictionaries(keys, config_values, max_size=6) | json_values


@FUZZ
@given(raw=config_dicts())
@example(raw={"temperature": float("nan")})
@example(raw={"bn_weight": float("inf"), "lr_g": float("nan")})
@example(raw={"time_budget": float("nan")})
@example(raw={"epochs": 10**30, "lr": "4e-3"})
def test_strict_config_from_dict(raw):
    from nayer_edge.core.strict import from_dict
    from nayer_edge.distill.config import DistillConfig

    try:
        config = from_dict(DistillConfig, raw)
    except UserError as err:
        assert "\n" not in str(err).strip(), str(err)
        return
    for name, value in config.to_dict().items():
        if isinstance(value, float):
            assert np.isfinite(value), f"{name} accepted a non-finite value {value}"


@FUZZ
@given(text=st.text(max_size=200) | st.binary(max_size=200).map(lambda b: b.decode("latin-1")),
       raw=st.none() | st.binary(max_size=100))
@example(text="epochs: .nan\n", raw=None)
@example(text="temperature: .inf\n", raw=None)
@example(text="lr: .nan\n", raw=None)
@example(text="", raw=b"\xff\xfe\x00bad utf-8")
@example(text="[" * 2000, raw=None)
@example(text="a: &x [*x]\n", raw=None)
@example(text="1: 2\n", raw=None)
@example(text="\"ep\\nochs\": 3\n", raw=None)
def test_recipe_yaml(workdir, text, raw):
    from nayer_edge.distill.config import load_config

    path = fresh(workdir) / "recipe.yaml"
    if raw is not None:
        path.write_bytes(raw)
    else:
        path.write_text(text, encoding="utf-8")
    try:
        load_config(path)
    except UserError as err:
        assert "\n" not in str(err).strip(), str(err)


@FUZZ
@given(doc=st.dictionaries(st.sampled_from(["runtime", "device", "precision", "quantization", "batch",
                                            "dynamic_batch", "layout", "opset", "max_latency_ms", "description",
                                            "max_accuracy_drop"]) | st.text(max_size=6), config_values, max_size=8))
@example(doc={"\n": None})  # a key with a line break must not break the one-line message
@example(doc={1: "x", "runtime": "onnxruntime"})
def test_target_yaml(workdir, doc):
    import yaml

    from nayer_edge.deploy.targets import load_target

    path = fresh(workdir) / "target.yaml"
    path.write_text(yaml.safe_dump(doc))
    try:
        load_target(path)
    except UserError as err:
        assert "\n" not in str(err).strip(), str(err)


# --------------------------------------------------------------------------------------- bundles


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from nayer_edge.deploy.bundle_build import make_bundle
    from nayer_edge.deploy.targets import load_target
    from nayer_edge.onnx_model.exporter import export_onnx
    from nayer_edge.zoo import create_model

    folder = tmp_path_factory.mktemp("fuzz_bundle")
    torch.manual_seed(0)
    model = create_model("cnn_tiny", num_classes=3, in_channels=1, input_size=8).eval()
    onnx = export_onnx(model, folder / "student.onnx", input_shape=(1, 8, 8), mean=[0.5], std=[0.5],
                       fold_normalization=True, classes=["a", "b", "c"])
    rng = np.random.default_rng(0)
    info = make_bundle(onnx, folder / "bundle", target=load_target("cpu-x86"), classes=["a", "b", "c"],
                       input_shape=(1, 8, 8), mean=[0.5], std=[0.5], input_convention="images01",
                       precision="fp32", reference_images=rng.random((8, 1, 8, 8)).astype(np.float32),
                       eval_data=(rng.random((12, 1, 8, 8)).astype(np.float32), rng.integers(0, 3, 12)),
                       expected_accuracy=0.1)
    return Path(info["bundle_dir"])


@pytest.fixture(scope="module")
def bundle_io():
    from nayer_edge.deploy.device_scripts import device_module

    return device_module("bundle_io")


def copy_bundle(bundle: Path) -> Path:
    dst = Path(tempfile.mkdtemp(prefix="fuzz-bundle-")) / "bundle"
    shutil.copytree(bundle, dst)
    return dst


def replace_at(doc, path: list, value):
    """``doc`` with the item at ``path`` (keys/indices, clipped to what exists) replaced by ``value``."""
    if not path or not isinstance(doc, (dict, list)) or not doc:
        return value
    keys = sorted(doc) if isinstance(doc, dict) else list(range(len(doc)))
    key = keys[path[0] % len(keys)]
    doc = dict(doc) if isinstance(doc, dict) else list(doc)
    doc[key] = replace_at(doc[key], path[1:], value)
    return doc


@FUZZ
@given(path=st.lists(st.integers(0, 50), min_size=1, max_size=4), value=json_values, reseal=st.booleans())
def test_bundle_manifest_fields(bundle, bundle_io, path, value, reseal):
    """One field of a real manifest replaced by any JSON value, with the self-hash recomputed or not:
    load_manifest + verify_integrity give the manifest, BundleError or IntegrityError."""
    folder = copy_bundle(bundle)
    try:
        manifest = json.loads((folder / "manifest.json").read_text())
        edited = replace_at(manifest, path, value)
        if reseal and isinstance(edited, dict):
            edited = bundle_io.seal_manifest(edited)
        (folder / "manifest.json").write_text(json.dumps(edited))
        try:
            loaded = bundle_io.load_manifest(str(folder))
            bundle_io.verify_integrity(str(folder), loaded)
        except (bundle_io.BundleError, bundle_io.IntegrityError) as err:
            assert "\n" not in str(err).strip()
    finally:
        shutil.rmtree(folder.parent)


@FEW
@given(content=json_values.map(lambda v: json.dumps(v).encode()) | st.text(max_size=300).map(str.encode)
       | st.binary(max_size=300))
def test_verify_bundle_random_manifest(bundle, content):
    """A random manifest.json through the library's verify_bundle: a UserError (BundleIntegrityError is one)."""
    from nayer_edge.deploy.bundle_verify import verify_bundle

    folder = copy_bundle(bundle)
    try:
        (folder / "manifest.json").write_bytes(content)
        with pytest.raises(UserError):
            verify_bundle(folder, latency_seconds=0.01, timeout=60)
    finally:
        shutil.rmtree(folder.parent)


@FEW
@given(data=st.data())
def test_verify_bundle_changed_file(bundle, data):
    """Any listed file truncated, extended or with flipped bytes: refused naming that file."""
    from nayer_edge.deploy.bundle_verify import BundleIntegrityError, verify_bundle

    manifest = json.loads((bundle / "manifest.json").read_text())
    name = data.draw(st.sampled_from(sorted(manifest["files"])))
    folder = copy_bundle(bundle)
    try:
        path = folder / name
        original = path.read_bytes()
        how = data.draw(st.sampled_from(["truncate", "append", "flip", "empty"]))
        if how == "truncate":
            changed = original[: data.draw(st.integers(0, max(0, len(original) - 1)))]
        elif how == "append":
            changed = original + data.draw(st.binary(min_size=1, max_size=16))
        elif how == "flip":
            at = data.draw(st.integers(0, len(original) - 1))
            changed = original[:at] + bytes([original[at] ^ data.draw(st.integers(1, 255))]) + original[at + 1:]
        else:
            changed = b""
        assume(changed != original)
        path.write_bytes(changed)
        with pytest.raises(BundleIntegrityError) as err:
            verify_bundle(folder, latency_seconds=0.01, timeout=60)
        assert err.value.file == name and name in str(err.value)
    finally:
        shutil.rmtree(folder.parent)


def test_bundle_manifest_model_not_an_object(bundle, bundle_io):
    """Found by the field fuzzer above when it picks 'model': a resealed manifest whose 'model' is a list."""
    folder = copy_bundle(bundle)
    try:
        manifest = json.loads((folder / "manifest.json").read_text())
        manifest["model"] = [1]
        (folder / "manifest.json").write_text(json.dumps(bundle_io.seal_manifest(manifest)))
        with pytest.raises((bundle_io.BundleError, bundle_io.IntegrityError)):
            bundle_io.verify_integrity(str(folder), bundle_io.load_manifest(str(folder)))
    finally:
        shutil.rmtree(folder.parent)
