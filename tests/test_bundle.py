"""The deploy bundle (nayer_edge.deploy.bundle_build, bundle_verify) and TensorRT's Q/DQ rules (nayer_edge.quantize.trt_rules), on real small ONNX
models: a cnn_tiny exported with normalisation folded, its TensorRT-style INT8 graph and onnxruntime's U8S8."""

from __future__ import annotations

import json
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from nayer_edge.core.errors import UserError
from nayer_edge.deploy.bundle_build import make_bundle
from nayer_edge.deploy.bundle_docs import deepstream_config
from nayer_edge.deploy.bundle_inputs import default_parity
from nayer_edge.deploy.bundle_verify import BundleIntegrityError, verify_bundle
from nayer_edge.deploy.device_scripts import DEVICE_SCRIPTS, device_scripts_dir
from nayer_edge.deploy.targets import load_target
from nayer_edge.quantize.trt_rules import tensorrt_qdq_violations

REPO = Path(__file__).resolve().parent.parent
CLASSES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
SHAPE = (1, 16, 16)


def _build_trt_style(fp32: Path, out: Path, calibration: np.ndarray) -> Path:
    from nayer_edge.quantize.qdq_tensorrt import quantize_tensorrt

    return quantize_tensorrt(fp32, out, calibration)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """FP32 (folded normalisation, dynamic batch), TensorRT-style INT8, ORT U8S8 INT8, and an opset-12 graph."""
    from nayer_edge.onnx_model.exporter import export_onnx
    from nayer_edge.quantize.ort import quantize_static_ort
    from nayer_edge.zoo import create_model

    folder = tmp_path_factory.mktemp("bundle_models")
    torch.manual_seed(0)
    model = create_model("cnn_tiny", num_classes=10, in_channels=1, input_size=16).eval()
    fp32 = export_onnx(model, folder / "student.onnx", input_shape=SHAPE, mean=[0.5], std=[0.5],
                       fold_normalization=True, classes=CLASSES)
    calibration = np.random.default_rng(0).random((64, *SHAPE)).astype(np.float32)
    trt = _build_trt_style(fp32, folder / "student.trt.onnx", calibration)
    ort = quantize_static_ort(fp32, folder / "student.ort.onnx", calibration)

    import onnx

    old = onnx.load(str(trt))
    for opset in old.opset_import:
        if opset.domain in ("", "ai.onnx"):
            opset.version = 12
    opset12 = folder / "student.trt.opset12.onnx"
    onnx.save(old, str(opset12))
    return {"fp32": fp32, "trt": trt, "ort": ort, "opset12": opset12, "calibration": calibration}


def _eval_data(n: int = 80):
    rng = np.random.default_rng(5)
    return rng.random((n, *SHAPE)).astype(np.float32), rng.integers(0, 10, n)


def _bundle(models, out: Path, which: str = "fp32", **kw):
    target = kw.pop("target", "cpu-x86" if which == "fp32" else "jetson-orin-nx")
    args = dict(target=load_target(target), classes=CLASSES, input_shape=SHAPE, mean=[0.5], std=[0.5],
                input_convention="images01", precision="fp32" if which == "fp32" else "int8",
                reference_images=models["calibration"][:24], eval_data=_eval_data(), expected_accuracy=0.1)
    args.update(kw)
    return make_bundle(models[which], out, **args)


@pytest.fixture(scope="module")
def int8_bundle(models, tmp_path_factory):
    return _bundle(models, tmp_path_factory.mktemp("b") / "jetson-bundle", "trt")


# --------------------------------------------------------------------------------------- Q/DQ rules


def test_trt_rules_accept_the_tensorrt_style_graph(models):
    assert tensorrt_qdq_violations(models["trt"]) == []


def test_trt_rules_reject_ort_u8_graph(models):
    problems = tensorrt_qdq_violations(models["ort"])
    assert problems
    text = "\n".join(problems)
    assert "zero point is uint8" in text or "zero point is not 0" in text


def test_trt_rules_reject_opset_12(models):
    problems = tensorrt_qdq_violations(models["opset12"])
    assert any("opset 12" in p for p in problems)


def test_trt_rules_reject_unquantized_and_wide_weights(models, tmp_path):
    import onnx
    from onnx import numpy_helper

    assert any("not an explicitly quantized" in p for p in tensorrt_qdq_violations(models["fp32"]))
    proto = onnx.load(str(models["trt"]))
    for i, init in enumerate(proto.graph.initializer):
        arr = numpy_helper.to_array(init)
        if arr.dtype == np.int8 and arr.ndim == 4:
            arr = arr.copy()
            arr.flat[0] = -128
            proto.graph.initializer[i].CopyFrom(numpy_helper.from_array(arr, init.name))
            break
    wide = tmp_path / "wide.onnx"
    onnx.save(proto, str(wide))
    assert any("[-127, 127]" in p for p in tensorrt_qdq_violations(wide))


# --------------------------------------------------------------------------------------- make_bundle


def test_bundle_contents_and_manifest(int8_bundle, models):
    folder = Path(int8_bundle["bundle_dir"])
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest == int8_bundle["manifest"]
    expected = {"model.onnx", "labels.txt", "labels_deepstream.txt", "reference.npz", "labelled.npz",
                "deepstream_nvinfer.txt", "README.md", *(f"scripts/{s}" for s in DEVICE_SCRIPTS)}
    assert set(manifest["files"]) == expected
    import hashlib

    for rel, digest in manifest["files"].items():
        assert hashlib.sha256((folder / rel).read_bytes()).hexdigest() == digest, rel
    assert (folder / "model.onnx").read_bytes() == Path(models["trt"]).read_bytes()
    assert manifest["model"]["precision"] == "int8" and manifest["model"]["opset"] == 17
    assert manifest["model"]["inputs"] == [{"name": "images", "dtype": "float32", "shape": ["batch", 1, 16, 16]}]
    assert manifest["model"]["outputs"][0]["name"] == "logits"
    assert manifest["input"]["convention"] == "images01" and manifest["input"]["mean"] == [0.5]
    assert manifest["classes"] == CLASSES
    assert (folder / "labels.txt").read_text().splitlines() == CLASSES
    assert (folder / "labels_deepstream.txt").read_text().strip() == ";".join(CLASSES)
    target = manifest["target"]
    assert (target["name"], target["tensorrt"], target["gpu_arch"], target["dla_cores"]) == (
        "jetson-orin-nx", "10.3", "sm_87", 2)
    assert manifest["parity"] == default_parity("int8")
    assert manifest["accuracy"] == {"expected": 0.1, "max_drop_points": 1.0}
    assert manifest["reference"]["runtime"].startswith("onnxruntime ")
    assert set(manifest["versions"]) >= {"nayer_edge", "torch", "onnx", "onnxruntime"}

    ref = np.load(folder / "reference.npz")
    assert ref["inputs"].shape == (24, *SHAPE) and ref["logits"].shape == (24, 10)
    # The references are the INT8 model's own onnxruntime outputs, not the FP32 model's.
    from nayer_edge.onnx_model.exporter import onnx_session, run_session

    int8_logits = run_session(onnx_session(models["trt"]), ref["inputs"])
    np.testing.assert_allclose(ref["logits"], int8_logits, atol=1e-5)
    labelled = np.load(folder / "labelled.npz")
    assert labelled["images"].dtype == np.uint8 and labelled["images"].shape == (80, *SHAPE)
    assert manifest["labelled"]["samples"] == 80 and 0 <= manifest["labelled"]["top1"] <= 1


def test_tar_gz_holds_the_bundle_and_is_reproducible(models, tmp_path):
    first = _bundle(models, tmp_path / "a" / "bundle")
    with tarfile.open(first["archive"]) as tar:
        names = tar.getnames()
        assert names == sorted(names, key=lambda n: (n != "bundle", n))
        assert {f"bundle/{rel}" for rel in first["manifest"]["files"]} | {"bundle/manifest.json"} <= set(names)
        member = tar.extractfile("bundle/model.onnx")
        assert member is not None and member.read() == (Path(first["bundle_dir"]) / "model.onnx").read_bytes()
        assert all(m.mtime == 0 for m in tar.getmembers())
    # Same content, same archive bytes, once the manifest's creation time is the same.
    second = _bundle(models, tmp_path / "b" / "bundle")
    a = json.loads((Path(first["bundle_dir"]) / "manifest.json").read_text())
    b = json.loads((Path(second["bundle_dir"]) / "manifest.json").read_text())
    a.pop("created_utc"), b.pop("created_utc"), a.pop("manifest_sha256"), b.pop("manifest_sha256")
    assert a == b


def test_deepstream_config_values(int8_bundle, models, tmp_path):
    text = (Path(int8_bundle["bundle_dir"]) / "deepstream_nvinfer.txt").read_text()
    props = dict(line.split("=", 1) for line in text.splitlines() if "=" in line and not line.startswith("#"))
    assert props["onnx-file"] == "model.onnx" and props["model-engine-file"] == "model.engine"
    assert props["labelfile-path"] == "labels_deepstream.txt"
    assert props["network-mode"] == "1" and props["network-type"] == "1"
    assert props["num-detected-classes"] == "10" and props["batch-size"] == "1"
    assert props["model-color-format"] == "2"  # gray
    assert float(props["net-scale-factor"]) == pytest.approx(1 / 255) and props["offsets"] == "0"

    # A model taking normalised input: y = (x/255 - mean)/std = 1/(255 std) * (x - 255 mean).
    manifest = dict(int8_bundle["manifest"])
    manifest["input"] = {**manifest["input"], "convention": "normalised", "shape": [3, 32, 32],
                         "mean": [0.5, 0.4, 0.3], "std": [0.25, 0.25, 0.25]}
    manifest["model"] = {**manifest["model"], "precision": "fp16"}
    props = dict(line.split("=", 1) for line in deepstream_config(manifest).splitlines()
                 if "=" in line and not line.startswith("#"))
    assert float(props["net-scale-factor"]) == pytest.approx(1 / (255 * 0.25))
    assert [float(o) for o in props["offsets"].split(";")] == pytest.approx([127.5, 102.0, 76.5])
    assert props["network-mode"] == "2" and props["model-color-format"] == "0"


def test_readme_has_the_device_commands(int8_bundle):
    text = (Path(int8_bundle["bundle_dir"]) / "README.md").read_text()
    assert "The TensorRT check runs on the device" in text
    assert "onnxruntime" in text and "what ran on the host" in text.lower()
    for command in ("python3 scripts/build_engine.py", "python3 scripts/check.py --backend tensorrt",
                    "sudo nvpmodel -q", "sudo jetson_clocks", "tar xzf jetson-bundle.tar.gz"):
        assert command in text, command
    # TensorRT 10.3: INT8 from Q/DQ, strongly typed; DLA (the Orin NX has 2 cores) with GPU fallback.
    assert "trtexec --onnx=model.onnx --saveEngine=model.engine --stronglyTyped" in text
    assert "--useDLACore=0 --allowGPUFallback" in text


def test_xavier_bundle_gets_tensorrt_8_commands(models, tmp_path):
    info = _bundle(models, tmp_path / "xavier", "trt", target="jetson-xavier-nx")
    text = (Path(info["bundle_dir"]) / "README.md").read_text()
    line = next(line for line in text.splitlines() if "--saveEngine=model.engine" in line)
    assert "--int8" in line and "--stronglyTyped" not in line


def test_make_bundle_refuses_ort_graph_for_tensorrt_and_bad_input(models, tmp_path):
    with pytest.raises(UserError, match="Q/DQ rules"):
        _bundle(models, tmp_path / "x", "ort")
    assert not (tmp_path / "x").exists()
    with pytest.raises(UserError, match="reference_images"):
        _bundle(models, tmp_path / "y", reference_images=np.zeros((4, 3, 16, 16), np.float32))
    with pytest.raises(UserError, match="input_convention"):
        _bundle(models, tmp_path / "y", input_convention="raw")
    (tmp_path / "occupied").mkdir()
    (tmp_path / "occupied" / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="not a bundle"):
        _bundle(models, tmp_path / "occupied")
    assert (tmp_path / "occupied" / "notes.txt").read_text() == "mine"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging folder left behind


def test_make_bundle_replaces_an_existing_bundle(models, tmp_path):
    _bundle(models, tmp_path / "bundle")
    (tmp_path / "bundle" / "stale.txt").write_text("old")
    _bundle(models, tmp_path / "bundle")
    assert not (tmp_path / "bundle" / "stale.txt").exists()
    assert {p.name for p in tmp_path.iterdir()} == {"bundle", "bundle.tar.gz"}  # no staged or old copies


def test_teacher_hash_from_run_dir(models, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"teacher": {"sha256": "ab" * 32}}))
    info = _bundle(models, tmp_path / "bundle", run_dir=run)
    assert info["manifest"]["teacher_sha256"] == "ab" * 32


def test_device_scripts_are_found():
    assert device_scripts_dir() == REPO / "export"


# --------------------------------------------------------------------------------------- verify_bundle


def test_verify_bundle_passes_through_onnxruntime(int8_bundle):
    result = verify_bundle(int8_bundle["bundle_dir"], latency_seconds=0.05)
    assert result["passed"] and result["exit_code"] == 0
    assert result["backend"] == "onnxruntime"
    names = [g["name"] for g in result["gates"]]
    assert names[0] == "integrity" and "parity_min_cosine" in names and "accuracy_labelled_subset" in names
    assert result["parity"]["top1_agreement"] == 1.0
    assert result["latency"]["p50_ms"] > 0


def test_verify_bundle_latency_gate_fails_by_name(int8_bundle):
    result = verify_bundle(int8_bundle["bundle_dir"], max_latency_ms=1e-6, latency_seconds=0.05)
    assert not result["passed"] and result["exit_code"] == 1
    failed = [g["name"] for g in result["gates"] if not g["passed"]]
    assert failed == ["latency_p50_ms"]


@pytest.mark.parametrize("rel", ["model.onnx", "labels.txt", "reference.npz", "labelled.npz", "README.md",
                                 "deepstream_nvinfer.txt", "scripts/check.py", "scripts/bundle_io.py"])
def test_tampering_with_a_file_is_refused_naming_it(models, tmp_path, rel):
    info = _bundle(models, tmp_path / "bundle")
    path = Path(info["bundle_dir"]) / rel
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(BundleIntegrityError, match="sha256 mismatch") as err:
        verify_bundle(info["bundle_dir"])
    assert err.value.file == rel and rel in str(err.value)


def test_editing_the_manifest_is_refused(models, tmp_path):
    info = _bundle(models, tmp_path / "bundle")
    path = Path(info["bundle_dir"]) / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["parity"]["onnxruntime"]["min_cosine"] = 0.0  # loosen a gate by hand
    path.write_text(json.dumps(manifest, indent=2))
    with pytest.raises(BundleIntegrityError, match="manifest.json was edited") as err:
        verify_bundle(info["bundle_dir"])
    assert err.value.file == "manifest.json"
    path.write_text("{not json")
    with pytest.raises(BundleIntegrityError, match="manifest.json"):
        verify_bundle(info["bundle_dir"])


def test_missing_and_smuggled_files_are_refused(models, tmp_path):
    info = _bundle(models, tmp_path / "bundle")
    folder = Path(info["bundle_dir"])
    (folder / "labels.txt").unlink()
    with pytest.raises(BundleIntegrityError, match="labels.txt is missing"):
        verify_bundle(folder)
    shutil.copyfile(tmp_path / "bundle.tar.gz", tmp_path / "copy.tar.gz")
    with tarfile.open(tmp_path / "copy.tar.gz") as tar:
        tar.extractall(tmp_path / "restored", filter="data")
    restored = tmp_path / "restored" / "bundle"
    assert verify_bundle(restored, latency_seconds=0.05)["passed"]
    (restored / "scripts" / "numpy.py").write_text("raise SystemExit('shadowed')\n")
    with pytest.raises(BundleIntegrityError, match="scripts/numpy.py is not listed"):
        verify_bundle(restored)
    (restored / "scripts" / "numpy.py").unlink()
    (restored / "check.json").write_text("{}")  # results written on the device are allowed
    assert verify_bundle(restored, latency_seconds=0.05)["passed"]
    # An engine is not a file the integrity check refuses, but one that cannot run here (no TensorRT and GPU
    # on this machine, no stamp) is: it names the engine and the fix.
    (restored / "model.engine").write_bytes(b"built on the device")
    with pytest.raises(UserError, match="engine model.engine was built for an unknown TensorRT and GPU .*"
                                        "build_engine.py --force"):
        verify_bundle(restored, latency_seconds=0.05)


def _edit_and_reseal(folder: Path, rel: str, text: str, made_by: str | None = None) -> None:
    """What someone who wants their code run does: edit a script, recompute its hash and the manifest's."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("_reseal_bundle_io", folder / "scripts" / "bundle_io.py")
    bundle_io = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bundle_io)
    (folder / rel).write_text(text)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["files"][rel] = bundle_io.sha256_file(str(folder / rel))
    if made_by is not None:
        manifest["versions"]["nayer_edge"] = made_by
    (folder / "manifest.json").write_text(json.dumps(bundle_io.seal_manifest(manifest), indent=2))


def test_verify_never_runs_the_bundles_own_scripts(models, tmp_path):
    """The hashes are no signature: a check.py edited and re-sealed passes the integrity check. verify runs
    this installation's check.py, and refuses a bundle that claims this version but carries other scripts."""
    info = _bundle(models, tmp_path / "bundle")
    folder = Path(info["bundle_dir"])
    marker = tmp_path / "PWNED"
    payload = f"open({str(marker)!r}, 'w').close()\n" + (folder / "scripts" / "check.py").read_text()
    _edit_and_reseal(folder, "scripts/check.py", payload)
    with pytest.raises(BundleIntegrityError, match="scripts/check.py is not the file nayer-edge .* re-sealed") as err:
        verify_bundle(folder, latency_seconds=0.05)
    assert err.value.file == "scripts/check.py" and "\n" not in str(err.value)
    assert not marker.exists()


def test_a_bundle_from_another_version_is_checked_with_this_versions_script(models, tmp_path):
    info = _bundle(models, tmp_path / "bundle")
    folder = Path(info["bundle_dir"])
    marker = tmp_path / "PWNED"
    payload = f"open({str(marker)!r}, 'w').close()\n" + (folder / "scripts" / "check.py").read_text()
    _edit_and_reseal(folder, "scripts/check.py", payload, made_by="0.0.1")
    result = verify_bundle(folder, latency_seconds=0.05)
    assert result["passed"] and not marker.exists()
    assert result["script_notes"] == [next(line for line in result["summary"] if line.startswith("note:"))]
    assert "scripts/check.py differ" in result["script_notes"][0] and "nayer-edge 0.0.1" in result["script_notes"][0]


def test_verify_bundle_bad_input(tmp_path):
    with pytest.raises(UserError, match="no such bundle folder"):
        verify_bundle(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no manifest.json"):
        verify_bundle(tmp_path / "empty")


def _reseal_manifest(folder: Path, edit) -> None:
    """Change manifest fields and re-seal it: the hashes then pass, so only the field checks stand in the way."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("_reseal_bundle_io2", folder / "scripts" / "bundle_io.py")
    bundle_io = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bundle_io)
    manifest = json.loads((folder / "manifest.json").read_text())
    edit(manifest)
    (folder / "manifest.json").write_text(json.dumps(bundle_io.seal_manifest(manifest), indent=2))


@pytest.mark.parametrize("edit, words", [
    (lambda m: m.update(classes=5), "classes must be a list of at least 2 class names"),
    (lambda m: m.update(classes=["a"]), "classes must be a list of at least 2 class names"),
    (lambda m: m.pop("input"), "input must be an object"),
    (lambda m: m["input"].update(shape="abc"), "input shape must be [C, H, W]"),
    (lambda m: m["input"].update(shape=[1, 100000, 100000]), "input shape must be [C, H, W]"),
    (lambda m: m["input"].update(mean=[float("nan")]), "input mean must be 1 or"),
    (lambda m: m["input"].update(std=[0.0]), "input std must be positive"),
    (lambda m: m["input"].update(convention="bgr"), "input convention must be"),
    (lambda m: m.update(accuracy="high"), "accuracy must be an object"),
    (lambda m: m["accuracy"].update(max_drop_points="x"), "max_drop_points must be a number"),
    (lambda m: m.update(labelled="labelled.npz"), "labelled must be an object"),
    (lambda m: m["latency"].update(batch=0), "latency batch must be a positive integer"),
    (lambda m: m["latency"].update(batch="x"), "latency batch must be a positive integer"),
    (lambda m: m.update(engine="x"), "engine must be an object"),
])
def test_a_resealed_manifest_with_unusable_fields_is_refused(models, tmp_path, edit, words):
    """The hashes are no signature: a re-sealed manifest passes them, and its fields are checked for what the
    device scripts need (they were read as they came: tracebacks, or a pass on nonsense)."""
    info = _bundle(models, tmp_path / "bundle")
    folder = Path(info["bundle_dir"])
    _reseal_manifest(folder, edit)
    with pytest.raises(UserError) as caught:
        verify_bundle(folder)
    assert "manifest.json: " in str(caught.value) and words in str(caught.value), caught.value
    assert "rebuild the bundle" in str(caught.value)


@pytest.mark.parametrize("samples, words", [(0, "holds no samples"), (3, "holds NaN or inf")])
def test_an_empty_or_nan_reference_is_refused(models, tmp_path, samples, words):
    info = _bundle(models, tmp_path / "bundle")
    folder = Path(info["bundle_dir"])
    np.savez(folder / "reference.npz", inputs=np.zeros((samples, 1, 16, 16), np.float32),
             logits=np.full((samples, 10), np.nan, np.float32))
    _reseal_manifest(folder, lambda m: m["files"].update({"reference.npz": _sha256(folder / "reference.npz")}))
    with pytest.raises(UserError, match=f"reference.npz: {words}"):
        verify_bundle(folder)


def _sha256(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


# The device scripts as each release ships them. verify refuses a bundle whose scripts differ from this
# version's although the manifest names this version (an edit, re-sealed), so the scripts may only change
# with the version: bump __version__ and pyproject's version, and record the new digest here.
DEVICE_SCRIPTS_DIGEST = {"0.2.0": "60daafcc5f50805bc47cdb763970be65f6d9258af2647d48c319da96682c9faa",
                         "0.3.0": "bf2263af2e0d57c704a2c8cd3d1fa66693b69e3e533587a82c0ccc9d67135590",
                         # exit code 3 for a runtime failure (Ctrl-C during the imports too); check.py --json in the shared result schema
                         "0.4.0": "a3dd907b5b150c8a1df9e30a934ae397d95b87c8a8e0fd74f421801d5a1684bc"}


def test_the_device_scripts_change_only_with_the_version():
    import hashlib

    import nayer_edge
    from nayer_edge.deploy.device_scripts import DEVICE_SCRIPTS, device_scripts_dir

    digest = hashlib.sha256()
    for name in sorted(DEVICE_SCRIPTS):
        digest.update(name.encode())
        digest.update((device_scripts_dir() / name).read_bytes())
    assert DEVICE_SCRIPTS_DIGEST.get(nayer_edge.__version__) == digest.hexdigest(), (
        f"export/*.py changed without a new version (now {nayer_edge.__version__}): bundles made by this version "
        f"before the change would be refused as edited; bump the version and record {digest.hexdigest()}")
