"""The device-side scripts (export/) as they run on a Jetson: standalone, from inside a built bundle, in a new
process, without torch or nayer_edge. TensorRT's own tests run only where tensorrt imports."""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

REPO = Path(__file__).resolve().parent.parent
EXPORT = REPO / "export"
SCRIPTS = ["build_engine.py", "check.py", "bundle_io.py", "trt_runner.py"]
CLASSES = [str(i) for i in range(10)]
SHAPE = (1, 16, 16)


def _load(name: str):
    sys.path.insert(0, str(EXPORT))
    try:
        spec = importlib.util.spec_from_file_location(f"_device_test_{name}", EXPORT / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses look their module up there
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(EXPORT))


build_engine = _load("build_engine")
HAS_TENSORRT = importlib.util.find_spec("tensorrt") is not None


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    """An FP32 bundle of a cnn_tiny taking images in [0, 1], with a labelled subset."""
    import torch

    from nayer_edge.deploy.bundle_build import make_bundle
    from nayer_edge.deploy.targets import load_target
    from nayer_edge.onnx_model.exporter import export_onnx
    from nayer_edge.zoo import create_model

    folder = tmp_path_factory.mktemp("device")
    torch.manual_seed(0)
    model = create_model("cnn_tiny", num_classes=10, in_channels=1, input_size=16).eval()
    onnx_path = export_onnx(model, folder / "student.onnx", input_shape=SHAPE, mean=[0.5], std=[0.5],
                            fold_normalization=True, classes=CLASSES)
    rng = np.random.default_rng(0)
    info = make_bundle(onnx_path, folder / "bundle", target=load_target("cpu-x86"), classes=CLASSES,
                       input_shape=SHAPE, mean=[0.5], std=[0.5], input_convention="images01", precision="fp32",
                       reference_images=rng.random((16, *SHAPE)).astype(np.float32),
                       eval_data=(rng.random((40, *SHAPE)).astype(np.float32), rng.integers(0, 10, 40)))
    return Path(info["bundle_dir"])


def _run_script(bundle: Path, script: str, *args: str, python: str = sys.executable) -> subprocess.CompletedProcess:
    # From inside the bundle, with an environment that cannot see the repository: what the device has.
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return subprocess.run([python, f"scripts/{script}", *args], cwd=bundle, env=env, capture_output=True,
                          text=True, timeout=300)


def _one_line_error(done: subprocess.CompletedProcess) -> str:
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    assert "Traceback" not in done.stderr
    return lines[0]


# --------------------------------------------------------------------------------------- standalone


@pytest.mark.parametrize("script", SCRIPTS)
def test_scripts_are_python38_and_import_neither_torch_nor_nayer_edge(script):
    source = (EXPORT / script).read_text()
    tree = ast.parse(source, feature_version=(3, 8))  # no match, no X | Y at runtime, no 3.9+ grammar
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert not imported & {"torch", "nayer_edge", "onnx", "torchvision"}, imported
    for forbidden in (".removeprefix(", ".removesuffix(", "functools.cache(", "zip(strict"):
        assert forbidden not in source, forbidden


def test_check_onnxruntime_from_inside_the_bundle(bundle):
    done = _run_script(bundle, "check.py", "--backend", "onnxruntime", "--json", "--duration-s", "0.05")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["passed"] and result["backend"] == "onnxruntime"
    assert result["parity"]["top1_agreement"] == 1.0
    assert result["parity"]["max_abs_error"] < 1e-4 and result["parity"]["min_cosine"] > 0.99999
    assert result["accuracy_samples"] == 40 and result["schema_version"] == 1
    latency = result["latency"]
    assert latency["p50_ms"] <= latency["p90_ms"] <= latency["p95_ms"] <= latency["p99_ms"] <= latency["max_ms"]
    assert latency["throughput"] > 0 and latency["iterations"] >= 20
    assert "PASS integrity" in done.stderr  # the summary goes to stderr in --json mode
    assert not (bundle / "scripts" / "__pycache__").exists()


def test_check_labelled_folder(bundle, tmp_path):
    from PIL import Image

    rng = np.random.default_rng(1)
    for label in ("3", "7"):
        (tmp_path / label).mkdir()
        for i in range(3):
            Image.fromarray(rng.integers(0, 255, (20, 20), dtype=np.uint8)).save(tmp_path / label / f"{i}.png")
    done = _run_script(bundle, "check.py", "--backend", "onnxruntime", "--json", "--no-latency",
                       "--labelled", str(tmp_path))
    assert done.returncode in (0, 1), done.stderr
    result = json.loads(done.stdout)
    assert result["labelled_folder"]["samples"] == 6
    assert any(g["name"] == "accuracy_labelled_folder" for g in result["gates"])
    (tmp_path / "cat").mkdir()
    done = _run_script(bundle, "check.py", "--backend", "onnxruntime", "--no-latency", "--labelled", str(tmp_path))
    assert done.returncode == 2 and "'cat' is not a class" in _one_line_error(done)


def test_check_gate_failure_exits_1_naming_the_gate(bundle):
    done = _run_script(bundle, "check.py", "--backend", "onnxruntime", "--max-latency-ms", "0.000001",
                       "--duration-s", "0.05")
    assert done.returncode == 1
    assert "FAIL latency_p50_ms" in done.stdout
    assert "PASS parity_min_cosine" in done.stdout


@pytest.mark.parametrize("args, message", [
    (["--backend", "onnxruntime", "--bundle", "/nonexistent/bundle"], "no such bundle folder"),
    (["--backend", "gpu"], "invalid choice"),
    (["--backend", "onnxruntime", "--max-latency-ms", "-1"], "--max-latency-ms must be > 0"),
    (["--backend", "onnxruntime", "--labelled", "/nonexistent/images"], "no such folder"),
])
def test_check_bad_input_exits_2_with_one_line(bundle, args, message):
    done = _run_script(bundle, "check.py", *args)
    assert done.returncode == 2
    assert message in _one_line_error(done)


@pytest.mark.skipif(HAS_TENSORRT, reason="tensorrt is installed here: the TensorRT backend runs for real")
def test_check_tensorrt_backend_without_tensorrt_exits_2(bundle):
    done = _run_script(bundle, "check.py", "--backend", "tensorrt")
    assert done.returncode == 2
    assert "TensorRT is needed" in _one_line_error(done)
    done = _run_script(bundle, "build_engine.py")
    assert done.returncode == 2
    assert "TensorRT is needed" in _one_line_error(done)


def test_check_refuses_a_tampered_bundle_before_running(bundle, tmp_path):
    import shutil

    copy = tmp_path / "bundle"
    shutil.copytree(bundle, copy)
    (copy / "reference.npz").write_bytes(b"not the reference")
    done = _run_script(copy, "check.py", "--backend", "onnxruntime", "--json")
    assert done.returncode == 1
    assert _one_line_error(done) == ("FAIL integrity gate failed: reference.npz sha256 mismatch (the file was "
                                     "changed after the bundle was made)")
    assert json.loads(done.stdout)["integrity"]["failed_file"] == "reference.npz"


# --------------------------------------------------------------------------------------- build_engine logic


@pytest.mark.parametrize("version, precision, dla, network, builder", [
    ("8.6.2", "int8", None, ("EXPLICIT_BATCH",), ("INT8",)),
    ("8.6.2", "fp16", None, ("EXPLICIT_BATCH",), ("FP16",)),
    ("8.6.2", "fp32", None, ("EXPLICIT_BATCH",), ()),
    ("8.5.2", "int8", 1, ("EXPLICIT_BATCH",), ("INT8", "FP16", "GPU_FALLBACK")),
    ("10.3.0", "int8", None, ("STRONGLY_TYPED",), ()),
    ("10.3.0", "fp16", None, (), ("FP16",)),
    ("10.3.0", "fp32", None, (), ()),
    ("10.3.0", "int8", 0, (), ("INT8", "FP16", "GPU_FALLBACK")),
    ("10.3.0", "fp16", 0, (), ("FP16", "GPU_FALLBACK")),
    ("11.0.0", "int8", None, ("STRONGLY_TYPED",), ()),
    ("11.0.0", "fp16", None, ("STRONGLY_TYPED",), ()),
    ("11.0.0", "fp32", None, ("STRONGLY_TYPED",), ()),
    ("11.0.0", "int8", 0, ("STRONGLY_TYPED",), ("GPU_FALLBACK",)),
])
def test_plan_build_flags(version, precision, dla, network, builder):
    plan = build_engine.plan_build(version, precision, dla)
    assert plan.network_flags == network
    assert plan.builder_flags == builder
    assert plan.needs_fp16_onnx == (version.startswith("11") and precision == "fp16")
    # TensorRT 11 has no precision flags at all.
    if version.startswith("11"):
        assert not {"INT8", "FP16"} & set(plan.builder_flags)


@pytest.mark.parametrize("version, precision, dla, message", [
    ("10.3.0", "fp32", 0, "DLA runs only fp16 or int8"),
    ("10.3.0", "bf16", None, "precision must be one of"),
    ("8.2.1", "int8", None, "too old"),
    ("ten", "int8", None, "cannot read TensorRT version"),
    ("10.3.0", "int8", -1, "--dla-core must be 0 or more"),
])
def test_plan_build_refusals(version, precision, dla, message):
    with pytest.raises(build_engine.BadInput, match=message):
        build_engine.plan_build(version, precision, dla)


def test_trtexec_lines_per_version():
    profile = build_engine.BatchProfile(1, 8, 32)
    line = build_engine.trtexec_command("10.3.0", "int8", chw=(3, 32, 32), profile=profile)
    assert "--stronglyTyped" in line and "--int8" not in line
    assert "--minShapes=images:1x3x32x32 --optShapes=images:8x3x32x32 --maxShapes=images:32x3x32x32" in line
    assert "--memPoolSize=workspace:1024" in line and "--timingCacheFile=timing.cache" in line
    assert "--int8" in build_engine.trtexec_command("8.6.2", "int8")
    assert "--fp16" in build_engine.trtexec_command("10.3", "fp16")
    eleven = build_engine.trtexec_command("11.0.0", "int8")
    assert "--int8" not in eleven and "--fp16" not in eleven
    dla = build_engine.trtexec_command("10.3", "fp16", dla_core=1)
    assert "--useDLACore=1 --allowGPUFallback" in dla
    with pytest.raises(build_engine.BadInput):
        build_engine.BatchProfile(4, 2, 8)


def _stamp(**gpu):
    plan = build_engine.plan_build("10.3.0", "int8")
    gpu = {"name": "Orin", "compute_capability": "8.7", "source": "cuda", **gpu}
    return build_engine.make_stamp(tensorrt_version="10.3.0.30", gpu=gpu, onnx_sha256="a" * 64, plan=plan,
                                   profile=None, engine_sha256="e" * 64)


def test_stamp_fields():
    stamp = _stamp()
    assert stamp["tensorrt"] == "10.3.0.30" and stamp["compute_capability"] == "8.7"
    assert stamp["gpu_name"] == "Orin" and stamp["onnx_sha256"] == "a" * 64
    assert stamp["precision"] == "int8" and stamp["dla_core"] is None
    assert stamp["network_flags"] == ["STRONGLY_TYPED"]
    json.dumps(stamp)


def test_stamp_match_and_mismatch_messages():
    stamp = _stamp()
    here = {"name": "Orin", "compute_capability": "8.7", "source": "cuda"}
    assert build_engine.stamp_mismatch(stamp, tensorrt_version="10.3.0.30", gpu=here, onnx_sha256="a" * 64) is None
    # A different source names the same GPU differently: not a mismatch on its own.
    assert build_engine.stamp_mismatch(stamp, tensorrt_version="10.3.0.30",
                                       gpu={"name": "NVIDIA Jetson Orin NX", "compute_capability": "8.7",
                                            "source": "device-tree"}) is None
    cases = [
        (dict(tensorrt_version="10.4.0.26", gpu=here), "engine built with TensorRT 10.3.0.30 but this is TensorRT 10.4.0.26"),
        (dict(tensorrt_version="10.3.0.30", gpu={"name": "Xavier", "compute_capability": "7.2", "source": "cuda"}),
         "engine built for compute capability 8.7 (Orin) but this GPU is 7.2 (Xavier)"),
        (dict(tensorrt_version="10.3.0.30", gpu={"name": "Other", "compute_capability": "8.7", "source": "cuda"}),
         "engine built on Orin but this GPU is Other"),
        (dict(tensorrt_version="10.3.0.30", gpu=here, onnx_sha256="b" * 64), "built from a different ONNX"),
        (dict(tensorrt_version="10.3.0.30", gpu=here, engine_sha256="f" * 64), "does not match its stamp"),
    ]
    for kwargs, expected in cases:
        message = build_engine.stamp_mismatch(stamp, **kwargs)
        assert message is not None and expected in message
        assert "\n" not in message and "build_engine.py --force" in message
    assert "no valid stamp" in build_engine.stamp_mismatch({}, tensorrt_version="10.3.0.30", gpu=here)


def test_engine_mismatch_names_the_engine_what_it_was_built_for_and_this_machine(tmp_path):
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"engine bytes")
    stamp = _stamp()
    stamp["engine_sha256"] = None  # the bytes above are not a real engine
    (tmp_path / "model.engine.json").write_text(json.dumps(stamp))
    orin = {"name": "Orin", "compute_capability": "8.7", "source": "cuda"}
    assert build_engine.engine_mismatch(str(engine), {"tensorrt": "10.3.0.30", "gpu": orin}, "a" * 64) is None
    built = "built for TensorRT 10.3.0.30 on Orin (compute capability 8.7)"
    cases = [
        ({"tensorrt": None, "gpu": {"name": None}}, "this machine has no TensorRT and no GPU, so it can run no engine"),
        ({"tensorrt": "10.3.0.30", "gpu": {"name": None}}, "this machine has no GPU"),
        ({"tensorrt": None, "gpu": orin}, "this machine has no TensorRT,"),
        ({"tensorrt": "10.3.0.30", "gpu": {"name": "Xavier", "compute_capability": "7.2", "source": "cuda"}},
         "this machine has TensorRT 10.3.0.30 on Xavier (compute capability 7.2) (engine built for compute "
         "capability 8.7"),
        ({"tensorrt": "8.6.2", "gpu": orin}, "(engine built with TensorRT 10.3.0.30 but this is TensorRT 8.6.2)"),
    ]
    for here, expected in cases:
        message = build_engine.engine_mismatch(str(engine), here, "a" * 64, shown="model.engine")
        assert message.startswith("engine model.engine was " + built) and expected in message, message
        assert "\n" not in message and "python3 scripts/build_engine.py --force" in message
    (tmp_path / "model.engine.json").unlink()
    message = build_engine.engine_mismatch(str(engine), {"tensorrt": "10.3.0.30", "gpu": orin})
    assert "an unknown TensorRT and GPU (no valid stamp model.engine.json)" in message


def test_detect_gpu_never_raises():
    gpu = build_engine.detect_gpu()
    assert set(gpu) >= {"name", "compute_capability", "source"}


def test_build_engine_arguments_from_the_manifest(bundle):
    args = build_engine.parse_args(["--bundle", str(bundle), "--dla-core", "0", "--precision", "fp16"])
    request = build_engine.resolve_request(args, "10.3.0")
    assert request.onnx == os.path.join(str(bundle), "model.onnx")
    assert request.engine == os.path.join(str(bundle), "model.engine")
    assert request.timing_cache == os.path.join(str(bundle), "timing.cache")
    assert request.plan.builder_flags == ("FP16", "GPU_FALLBACK") and request.plan.dla_core == 0
    assert (request.batch.min, request.batch.opt, request.batch.max) == (1, 32, 32)  # cpu-x86: batch 32
    default = build_engine.resolve_request(build_engine.parse_args(["--bundle", str(bundle)]), "11.0.0")
    assert default.plan.precision == "fp32" and default.plan.network_flags == ("STRONGLY_TYPED",)
    with pytest.raises(build_engine.BadInput, match="--workspace-mb"):
        build_engine.parse_args(["--workspace-mb", "0"])
    with pytest.raises(build_engine.BadInput):
        build_engine.parse_args(["--precision", "int4"])


# --------------------------------------------------------------------------------------- real TensorRT


@pytest.fixture(scope="module")
def built_engine(bundle, tmp_path_factory):
    pytest.importorskip("tensorrt", reason="TensorRT is not installed here; its tests run on a device with it")
    if importlib.util.find_spec("cuda") is None and importlib.util.find_spec("pycuda") is None:
        pytest.skip("neither cuda-python nor pycuda is installed: the TensorRT check needs one for device memory")
    import shutil

    copy = tmp_path_factory.mktemp("trt") / "bundle"
    shutil.copytree(bundle, copy)
    done = _run_script(copy, "build_engine.py")
    assert done.returncode == 0, done.stderr
    return copy


def test_tensorrt_engine_builds_with_a_stamp(built_engine):
    stamp = json.loads((built_engine / "model.engine.json").read_text())
    import tensorrt

    assert stamp["tensorrt"] == tensorrt.__version__ and stamp["precision"] == "fp32"
    assert (built_engine / "timing.cache").is_file()
    done = _run_script(built_engine, "build_engine.py")
    assert done.returncode == 2 and "--force" in _one_line_error(done)


def test_tensorrt_check_passes_and_refuses_a_foreign_stamp(built_engine):
    done = _run_script(built_engine, "check.py", "--backend", "tensorrt", "--json", "--duration-s", "0.2")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["parity"]["top1_agreement"] >= 0.98 and result["latency"]["p50_ms"] > 0
    stamp_file = built_engine / "model.engine.json"
    stamp = json.loads(stamp_file.read_text())
    stamp["tensorrt"] = "0.0.0"
    stamp_file.write_text(json.dumps(stamp))
    done = _run_script(built_engine, "check.py", "--backend", "tensorrt")
    assert done.returncode == 2 and "engine built with TensorRT 0.0.0" in _one_line_error(done)


# --------------------------------------------------------------------------------------- one schema, exit codes


def _key_sets(result: dict) -> dict:
    """The keys of a check result and of its nested records (parity, latency, each gate)."""
    return {"result": set(result), "parity": set(result["parity"]), "latency": set(result["latency"]),
            "gates": {frozenset(g) for g in result["gates"]}}


def test_check_and_verify_emit_the_same_json_keys(bundle):
    from conftest import run_cli

    bundle_io = _load("bundle_io")
    check = _run_script(bundle, "check.py", "--backend", "onnxruntime", "--json", "--duration-s", "0.05",
                        "--max-latency-ms", "1000")
    assert check.returncode == 0, check.stderr
    model = str(bundle / "model.onnx")
    host = run_cli("verify", model, "--reference", model, "--max-latency-ms", "1000", "--json")
    assert host.returncode == 0, host.stderr[-2000:]
    host_bundle = run_cli("verify", str(bundle), "--json")
    assert host_bundle.returncode == 0, host_bundle.stderr[-2000:]
    device, onnx_model, bundle_on_host = (json.loads(done.stdout) for done in (check, host, host_bundle))
    assert _key_sets(device) == _key_sets(onnx_model) == _key_sets(bundle_on_host)
    assert _key_sets(device) == {"result": set(bundle_io.RESULT_KEYS), "parity": set(bundle_io.PARITY_KEYS),
                                 "latency": set(bundle_io.LATENCY_KEYS), "gates": {frozenset(bundle_io.GATE_KEYS)}}
    for result in (device, onnx_model, bundle_on_host):
        assert result["schema_version"] == 1 and result["passed"] and result["backend"] == "onnxruntime"
        assert result["input_shape"] == list(SHAPE) and result["parity"]["min_cosine"] > 0.99999
    # The same figure under the same name: the host's latency gate is the device's.
    assert [g["name"] for g in onnx_model["gates"]] == ["latency_p50_ms"]
    assert device["gates"][-1]["name"] == "latency_p50_ms" and device["gates"][-1]["limit"] == 1000
    assert device["accuracy_samples"] == 40 and device["integrity"]["failed_file"] is None
    assert onnx_model["bundle"] is None and onnx_model["integrity"] is None and bundle_on_host["bundle"] == str(bundle)


def _broken_model(path: Path) -> None:
    """An ONNX model that loads and fails when run: a Gather with an index past its input's end."""
    import onnx
    from onnx import TensorProto, helper

    indices = helper.make_tensor("indices", TensorProto.INT64, [10], [0, 1, 2, 3, 4, 5, 6, 7, 8, 1000])
    graph = helper.make_graph(
        [helper.make_node("Flatten", ["images"], ["flat"], axis=1),
         helper.make_node("Gather", ["flat", "indices"], ["logits"], axis=1)], "broken",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["N", *SHAPE])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])], [indices])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))


@pytest.fixture(scope="module")
def broken_bundle(bundle, tmp_path_factory) -> Path:
    """The bundle with its model replaced by one onnxruntime fails to run, re-sealed (the hashes match)."""
    import shutil

    bundle_io = _load("bundle_io")
    folder = tmp_path_factory.mktemp("broken") / "bundle"
    shutil.copytree(bundle, folder)
    _broken_model(folder / "model.onnx")
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["files"]["model.onnx"] = bundle_io.sha256_file(str(folder / "model.onnx"))
    (folder / "manifest.json").write_text(json.dumps(bundle_io.seal_manifest(manifest), indent=2))
    return folder


def test_a_runtime_failure_exits_3_with_one_line_for_check_and_verify(broken_bundle):
    from conftest import run_cli

    done = _run_script(broken_bundle, "check.py", "--backend", "onnxruntime", "--json")
    assert done.returncode == 3 and done.stdout == ""
    line = _one_line_error(done)
    assert line.startswith("error: the runtime failed: ") and "Gather" in line, line
    for target in (broken_bundle, broken_bundle / "model.onnx"):  # the bundle's check on the host; the ONNX alone
        done = run_cli("verify", str(target))
        assert done.returncode == 3, done.stderr[-2000:]
        assert "Gather" in _one_line_error(done)


def test_check_interrupted_exits_3(bundle):
    import signal
    import time

    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    # A shell's background job inherits SIGINT ignored, and Python then keeps it ignored: restore Ctrl-C's default
    # in the child, as a terminal gives it, so that the test does not depend on how the suite was started.
    process = subprocess.Popen([sys.executable, "scripts/check.py", "--backend", "onnxruntime", "--duration-s", "60"],
                               cwd=bundle, env={**env, "PYTHONDONTWRITEBYTECODE": "1"}, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    time.sleep(4)  # inside the latency measurement (an interrupt during the imports exits 3 too)
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 3 and stdout == "", stderr
    assert stderr.strip() == "error: interrupted (Ctrl-C): the check did not finish"
