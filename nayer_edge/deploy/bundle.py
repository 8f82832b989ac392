"""The deploy bundle: everything a person at a Jetson needs to build the engine and prove it, in one folder.

``make_bundle`` writes, atomically (a temporary folder beside ``out_dir``, renamed into place):

    model.onnx                the deployed ONNX (INT8 with explicit symmetric Q/DQ, FP16 or FP32)
    manifest.json             sha256 of every other file, I/O names/shapes/dtypes, normalisation, classes,
                              precision, opset, versions, teacher hash, target, expected accuracy, thresholds
    labels.txt                one class name per line; labels_deepstream.txt: the same, ';'-separated
    reference.npz             reference inputs and the outputs onnxruntime gave for them on this ONNX
    labelled.npz              a labelled subset of the eval data (uint8 images), when eval data was given
    deepstream_nvinfer.txt    a Gst-nvinfer [property] config for the model as a classifier
    scripts/                  build_engine.py, check.py, bundle_io.py, trt_runner.py (device side, no torch)
    README.md                 the exact commands at the device, trtexec equivalents included

and ``<out_dir>.tar.gz`` beside it (sorted entries, fixed timestamps: the same bundle gives the same bytes).
``verify_bundle`` checks the hashes and that the bundle's device scripts are this version's, then runs this
installation's ``check.py`` on the bundle with the onnxruntime backend in a subprocess (never code the bundle
carries: its hashes are no signature).

Example::

    info = make_bundle("runs/x/student.int8.onnx", "runs/x/bundle", target=load_target("jetson"),
                       classes=classes, input_shape=(1, 16, 16), mean=[0.5], std=[0.5],
                       input_convention="images01", precision="int8", reference_images=samples[:64],
                       eval_data=(x_test, y_test), teacher_path="teacher.pt", expected_accuracy=0.986)
    result = verify_bundle("runs/x/bundle")        # BundleIntegrityError if a file was changed
    assert result["passed"]
"""

from __future__ import annotations

import gzip
import importlib.util
import io
import json
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from .. import __version__
from ..core.atomic import atomic_write, fsync_dir, sha256_file
from ..core.errors import UserError, first_line
from ..core.interrupt import signals_deferred
from ..core.optional import require
from ..distill.run_folder import recorded_teacher_sha256
from ..inputs.evaldata import load_eval_data
from ..quantize.trt_rules import tensorrt_qdq_violations
from .bundle_docs import deepstream_config, render_readme
from .targets import Target, load_target

__all__ = [
    "make_bundle",
    "verify_bundle",
    "device_scripts_dir",
    "default_parity",
    "deepstream_config",
    "BundleIntegrityError",
    "DEVICE_SCRIPTS",
]

DEVICE_SCRIPTS = ("build_engine.py", "check.py", "bundle_io.py", "trt_runner.py")
MODEL_FILE = "model.onnx"
ENGINE_FILE = "model.engine"
CONVENTIONS = ("images01", "normalised")
PRECISIONS = ("fp32", "fp16", "int8")


class BundleIntegrityError(UserError):
    """A bundle file does not match its manifest (changed, missing or unlisted); ``file`` names it."""

    def __init__(self, file: str, message: str):
        super().__init__(message)
        self.file = file


# --------------------------------------------------------------------------------------- device scripts


def device_scripts_dir() -> Path:
    """Where the device-side scripts are: ``export/`` in a source checkout (editable install), else
    ``<prefix>/share/nayer-edge/export`` where a wheel's data-files put them."""
    candidates = [Path(__file__).resolve().parents[2] / "export",
                  Path(sys.prefix) / "share" / "nayer-edge" / "export"]
    for folder in candidates:
        if all((folder / name).is_file() for name in DEVICE_SCRIPTS):
            return folder
    raise UserError(f"the device scripts ({', '.join(DEVICE_SCRIPTS)}) are not installed: looked in "
                    f"{' and '.join(str(c) for c in candidates)}; reinstall nayer-edge")


def _device_module(name: str) -> ModuleType:
    """Import a device script by file (they import their siblings by plain name) without leaving the
    scripts folder on ``sys.path``."""
    key = f"nayer_edge._device_{name}"
    if key in sys.modules:
        return sys.modules[key]
    folder = str(device_scripts_dir())
    saved = list(sys.path)
    sys.path.insert(0, folder)
    try:
        spec = importlib.util.spec_from_file_location(key, os.path.join(folder, f"{name}.py"))
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[key] = module
        spec.loader.exec_module(module)
    finally:
        sys.path[:] = saved
    return module


# --------------------------------------------------------------------------------------- thresholds


def default_parity(precision: str) -> dict[str, dict[str, float | None]]:
    """Parity thresholds per backend against the reference outputs (onnxruntime on the bundle's ONNX).

    onnxruntime runs the very graph that made the references, so it must match closely (only thread
    count and CPU kernels differ; INT8 rounding may flip a tie). TensorRT picks its own kernels: TF32 or
    FP16 accumulation, fused INT8 layers; its limits are looser and on cosine/top-1, not absolute error.
    """
    if precision not in PRECISIONS:
        raise UserError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "fp32":
        return {"onnxruntime": {"min_cosine": 0.99999, "max_abs_error": 1e-3, "min_top1_agreement": 1.0},
                "tensorrt": {"min_cosine": 0.999, "max_abs_error": None, "min_top1_agreement": 0.98}}
    if precision == "fp16":
        return {"onnxruntime": {"min_cosine": 0.9999, "max_abs_error": None, "min_top1_agreement": 0.98},
                "tensorrt": {"min_cosine": 0.995, "max_abs_error": None, "min_top1_agreement": 0.95}}
    return {"onnxruntime": {"min_cosine": 0.999, "max_abs_error": None, "min_top1_agreement": 0.98},
            "tensorrt": {"min_cosine": 0.98, "max_abs_error": None, "min_top1_agreement": 0.9}}


# --------------------------------------------------------------------------------------- make_bundle

# Keyword-only: everything a bundle records, named; its callers (compress, tests) pass what they have.

def make_bundle(
    onnx_path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    target: Target | str,
    classes: Sequence[str],
    input_shape: Sequence[int],
    mean: Sequence[float] | None,
    std: Sequence[float] | None,
    input_convention: str,
    reference_images: Any,
    precision: str | None = None,
    run_dir: str | os.PathLike[str] | None = None,
    eval_data: Any = None,
    teacher_path: str | os.PathLike[str] | None = None,
    expected_accuracy: float | None = None,
    max_accuracy_drop: float | None = None,
    max_latency_ms: float | None = None,
    parity: dict[str, dict[str, float | None]] | None = None,
    reference_limit: int = 64,
    labelled_limit: int = 256,
    check_qdq: bool = True,
    release: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write the deploy bundle for ``onnx_path`` to ``out_dir`` and ``<out_dir>.tar.gz``; return
    ``{"bundle_dir", "archive", "manifest"}``.

    ``reference_images`` (N×C×H×W float, Tensor or array) are in the model's input convention
    (``images01``: [0, 1]; ``normalised``: already ``(x − mean) / std``); at most ``reference_limit`` are
    kept, with the outputs onnxruntime gives for them on the bundle's ONNX (for an INT8 model, the INT8
    model's own outputs). ``eval_data`` is ``(x, y)`` (x N×C×H×W in [0, 1]) or a path ``load_eval_data``
    reads; up to ``labelled_limit`` samples (seeded shuffle) are stored as uint8, with the top-1 onnxruntime
    gets on them. ``expected_accuracy`` (fraction, e.g. the FP32 student's on the full eval set) and
    ``max_accuracy_drop`` (points; default the target's) gate accuracy on the device. ``teacher_path`` or
    ``run_dir/config.json`` gives the teacher's sha256. ``precision`` defaults to the target's. An INT8
    bundle for a TensorRT target must pass ``tensorrt_qdq_violations`` (``check_qdq``). ``release`` (from
    :func:`nayer_edge.deploy.gates.release_summary`: the teacher's top-1, the retention and agreement limits, whether the
    student trained) lets ``check.py`` judge the student against the teacher on the device too.
    Bad input raises UserError before anything is written; an existing ``out_dir`` is replaced only if it
    is a bundle.
    """
    ort = require("onnxruntime")
    onnx = require("onnx")
    tgt = load_target(target) if isinstance(target, str) else target
    precision = precision or tgt.precision
    src = Path(onnx_path)
    out = Path(out_dir)
    spec = _validate(src, out, tgt, classes, input_shape, mean, std, input_convention, precision,
                     reference_limit, labelled_limit, expected_accuracy)
    if check_qdq and precision == "int8" and tgt.runtime == "tensorrt":
        problems = tensorrt_qdq_violations(src)
        if problems:
            raise UserError(f"{src} breaks TensorRT's Q/DQ rules ({len(problems)} problem(s)), first: "
                            f"{problems[0]}; quantize it for TensorRT (quantization qdq-trt)")
    io_spec = _onnx_io(onnx, src, spec["channels"])
    reference = _as_images(reference_images, "reference_images", spec["shape"])[:reference_limit]
    if len(reference) == 0:
        raise UserError("reference_images is empty; pass the synthetic samples (N×C×H×W) to check parity with")
    labelled = _labelled_subset(eval_data, spec, labelled_limit) if eval_data is not None else None
    drop = float(max_accuracy_drop if max_accuracy_drop is not None else (tgt.max_accuracy_drop or 0.0))
    parity = parity or default_parity(precision)
    scripts = device_scripts_dir()
    bundle_io = _device_module("bundle_io")

    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    try:
        os.chmod(stage, 0o777 & ~_umask())  # mkdtemp makes it private; the bundle is meant to be shared
        shutil.copyfile(src, stage / MODEL_FILE)
        session = _session(ort, stage / MODEL_FILE)
        logits = _run(session, reference)
        _save_npz(stage / "reference.npz", inputs=reference.astype(np.float32), logits=logits)
        labelled_info = None
        if labelled is not None:
            images, labels = labelled
            model_input = bundle_io.images_to_input(images, {"input": spec["input_section"]})
            subset_top1 = float((_run(session, model_input).argmax(1) == labels).mean())
            _save_npz(stage / "labelled.npz", images=images, labels=labels)
            labelled_info = {"file": "labelled.npz", "samples": int(len(labels)), "top1": subset_top1,
                             "top1_by": "onnxruntime on model.onnx when the bundle was made"}
        del session
        (stage / "labels.txt").write_text("".join(f"{c}\n" for c in spec["classes"]), encoding="utf-8")
        (stage / "labels_deepstream.txt").write_text(";".join(spec["classes"]) + "\n", encoding="utf-8")
        (stage / "scripts").mkdir()
        for name in DEVICE_SCRIPTS:
            shutil.copyfile(scripts / name, stage / "scripts" / name)

        engine_batch = _engine_batch(tgt, io_spec)
        manifest: dict[str, Any] = {
            "format": bundle_io.FORMAT,
            "format_version": bundle_io.FORMAT_VERSION,
            "created_utc": datetime.now(timezone.utc).replace(microsecond=0).isoformat(),
            "model": {"file": MODEL_FILE, "precision": precision, "quantization": tgt.quantization
                      if precision == "int8" else "none", "opset": io_spec["opset"], "inputs": io_spec["inputs"],
                      "outputs": io_spec["outputs"], "source": src.name},
            "input": spec["input_section"],
            "classes": spec["classes"],
            "target": {k: getattr(tgt, k) for k in ("name", "runtime", "device", "jetpack", "tensorrt", "gpu_arch",
                                                   "dla_cores", "memory_gb", "batch", "dynamic_batch")},
            "engine": {"file": ENGINE_FILE, **engine_batch},
            "reference": {"file": "reference.npz", "samples": int(len(reference)),
                          "runtime": f"onnxruntime {ort.__version__} (CPUExecutionProvider)",
                          "model": MODEL_FILE},
            "labelled": labelled_info,
            "accuracy": {"expected": expected_accuracy, "max_drop_points": drop},
            "parity": parity,
            "latency": {"batch": int(engine_batch["opt_batch"]), "max_ms": max_latency_ms if max_latency_ms
                        is not None else tgt.max_latency_ms},
            "teacher_sha256": _teacher_sha256(teacher_path, run_dir),
            "release": release,
            "versions": _versions(ort, onnx),
        }
        build_engine = _device_module("build_engine")
        (stage / "deepstream_nvinfer.txt").write_text(deepstream_config(manifest), encoding="utf-8")
        (stage / "README.md").write_text(render_readme(manifest, build_engine, out.name), encoding="utf-8")
        manifest["files"] = {rel: bundle_io.sha256_file(str(stage / rel)) for rel in _tree(stage)}
        manifest = bundle_io.seal_manifest(manifest)
        (stage / bundle_io.MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n",
                                                encoding="utf-8")
        _fsync_tree(stage)
        archive = out.with_name(out.name + ".tar.gz")
        archive.unlink(missing_ok=True)  # never an archive of the old bundle beside the new folder
        _replace_dir(stage, out)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    _write_archive(out, archive)
    return {"bundle_dir": str(out), "archive": str(archive), "manifest": manifest}




def _validate(src: Path, out: Path, tgt: Target, classes: Sequence[str], input_shape: Sequence[int],
              mean: Sequence[float] | None, std: Sequence[float] | None, convention: str, precision: str,
              reference_limit: int, labelled_limit: int, expected_accuracy: float | None) -> dict[str, Any]:
    if not src.is_file():
        raise UserError(f"{src}: no such ONNX file; export the student first")
    if convention not in CONVENTIONS:
        raise UserError(f"input_convention must be one of {', '.join(CONVENTIONS)}, got {convention!r}")
    if precision not in PRECISIONS:
        raise UserError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    dims = [int(d) for d in input_shape]
    if len(dims) != 3 or min(dims) < 1:
        raise UserError(f"input_shape must be C, H, W, got {list(input_shape)}")
    names = [str(c) for c in classes]
    if not names or len(set(names)) != len(names) or any(not n.strip() or ";" in n or "\n" in n for n in names):
        raise UserError("classes must be distinct, non-empty names without ';' or line breaks")
    channels = dims[0]

    def per_channel(name: str, values: Sequence[float] | None) -> list[float] | None:
        if values is None:
            return None
        vals = [float(v) for v in np.asarray(values, dtype=np.float64).ravel()]
        vals = vals * channels if len(vals) == 1 else vals
        if len(vals) != channels:
            raise UserError(f"{name} needs 1 or {channels} values, got {len(vals)}")
        return vals

    mean_v, std_v = per_channel("mean", mean), per_channel("std", std)
    if convention == "normalised" and (mean_v is None or std_v is None):
        raise UserError("input_convention 'normalised' needs mean and std (the device scripts normalise images)")
    if std_v is not None and min(std_v) <= 0:
        raise UserError(f"std must be positive, got {std_v}")
    if reference_limit < 1 or labelled_limit < 1:
        raise UserError("reference_limit and labelled_limit must be at least 1")
    if expected_accuracy is not None and not 0.0 <= float(expected_accuracy) <= 1.0:
        raise UserError(f"expected_accuracy is a fraction in [0, 1], got {expected_accuracy}")
    if out.exists() and not (out / "manifest.json").is_file() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"{out} exists and is not a bundle; choose an empty or new folder")
    if precision != tgt.precision:
        pass  # allowed: e.g. an fp32 bundle for an int8 target, for comparison
    color = {1: "gray", 3: "rgb"}.get(channels, f"{channels}-channel")
    return {"shape": tuple(dims), "channels": channels, "classes": names,
            "input_section": {"shape": dims, "convention": convention, "mean": mean_v, "std": std_v,
                              "layout": "NCHW", "color": color, "range": "images in [0, 1] before normalisation"}}


def _onnx_io(onnx: Any, path: Path, channels: int) -> dict[str, Any]:
    proto = onnx.load(str(path), load_external_data=False)
    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in proto.graph.initializer):
        raise UserError(f"{path} keeps its weights in an external .data file; bundles take single-file ONNX "
                        "models (under 2 GB)")
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    initializers = {t.name for t in proto.graph.initializer}

    def describe(value: Any) -> dict[str, Any]:
        tensor = value.type.tensor_type
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type).name if tensor.elem_type else "unknown"
        shape = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in tensor.shape.dim]
        return {"name": value.name, "dtype": dtype, "shape": shape}

    inputs = [describe(v) for v in proto.graph.input if v.name not in initializers]
    outputs = [describe(v) for v in proto.graph.output]
    if len(inputs) != 1:
        raise UserError(f"{path} has {len(inputs)} inputs; a bundle takes a classifier with one image input")
    shape = inputs[0]["shape"]
    if len(shape) != 4 or shape[1] != channels:
        raise UserError(f"{path}: input {inputs[0]['name']} has shape {shape}; expected N×{channels}×H×W")
    return {"opset": opset, "inputs": inputs, "outputs": outputs}


def _engine_batch(tgt: Target, io_spec: dict[str, Any]) -> dict[str, int]:
    first = io_spec["inputs"][0]["shape"][0]
    if isinstance(first, int) and first > 0:
        return {"min_batch": first, "opt_batch": first, "max_batch": first}
    return {"min_batch": 1, "opt_batch": tgt.batch, "max_batch": tgt.batch}


def _as_images(x: Any, name: str, shape: tuple[int, ...]) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    arr = np.asarray(x, dtype=np.float32)
    if arr.ndim != 4 or tuple(arr.shape[1:]) != tuple(shape):
        raise UserError(f"{name} must be N×{'×'.join(map(str, shape))}, got shape {tuple(arr.shape)}")
    if not np.isfinite(arr).all():
        raise UserError(f"{name} contains NaN or inf")
    return np.ascontiguousarray(arr)


def _labelled_subset(eval_data: Any, spec: dict[str, Any], limit: int) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(eval_data, (str, os.PathLike)):
        x, y = load_eval_data(eval_data, input_shape=spec["shape"], classes=spec["classes"])
    else:
        try:
            x, y = eval_data
        except (TypeError, ValueError):
            raise UserError("eval_data must be (x, y) or a path to an .npz file or image folder") from None
    images = _as_images(x, "eval_data x", spec["shape"])
    labels = np.asarray(y.detach().cpu().numpy() if hasattr(y, "detach") else y).astype(np.int64).ravel()
    if len(labels) != len(images):
        raise UserError(f"eval_data has {len(images)} images but {len(labels)} labels")
    if images.min() < 0 or images.max() > 1:
        raise UserError("eval_data x must be images in [0, 1] (N×C×H×W)")
    if labels.min() < 0 or labels.max() >= len(spec["classes"]):
        raise UserError(f"eval_data labels must lie in [0, {len(spec['classes'])})")
    order = np.random.default_rng(0).permutation(len(labels))[:limit]
    order.sort()
    return np.round(images[order] * 255.0).astype(np.uint8), labels[order]


def _session(ort: Any, path: Path) -> Any:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as err:  # noqa: BLE001 - ORT raises several types for bad models
        raise UserError(f"onnxruntime cannot load the model: {first_line(err)}") from None


def _run(session: Any, x: np.ndarray, step: int = 64) -> np.ndarray:
    inp = session.get_inputs()[0]
    fixed = inp.shape[0] if isinstance(inp.shape[0], int) and inp.shape[0] > 0 else None
    step = fixed or step
    dtype = np.float16 if inp.type == "tensor(float16)" else np.float32
    outs = []
    for i in range(0, len(x), step):
        chunk = x[i:i + step].astype(dtype)
        n = len(chunk)
        if fixed and n < fixed:
            chunk = np.concatenate([chunk, np.zeros((fixed - n, *chunk.shape[1:]), dtype)])
        outs.append(np.asarray(session.run(None, {inp.name: chunk})[0])[:n].astype(np.float32))
    return np.concatenate(outs)


def _save_npz(path: Path, **arrays: np.ndarray) -> None:
    with open(path, "wb") as handle:
        np.savez_compressed(handle, **arrays)


def _teacher_sha256(teacher_path: str | os.PathLike[str] | None, run_dir: str | os.PathLike[str] | None
                    ) -> str | None:
    if teacher_path is not None:
        p = Path(teacher_path)
        if not p.is_file():
            raise UserError(f"{p}: no such teacher file")
        return sha256_file(p)
    if run_dir is not None:
        return recorded_teacher_sha256(Path(run_dir))
    return None


def _versions(ort: Any, onnx: Any) -> dict[str, str | None]:
    try:
        import torch

        torch_version: str | None = torch.__version__
    except ImportError:
        torch_version = None
    return {"nayer_edge": __version__, "torch": torch_version, "onnx": onnx.__version__,
            "onnxruntime": ort.__version__, "numpy": np.__version__, "python": platform.python_version()}


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _tree(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def _fsync_tree(folder: Path) -> None:
    for rel in _tree(folder):
        with open(folder / rel, "rb+") as handle:
            os.fsync(handle.fileno())


def _replace_dir(stage: Path, out: Path) -> None:
    fsync_dir(stage)
    if not out.exists():
        os.replace(stage, out)
        fsync_dir(out.parent)
        return
    # Two renames: a kill in between leaves the old bundle under a hidden name and no half-written one.
    old = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".old"))
    os.rmdir(old)
    with signals_deferred():  # a Ctrl-C between the renames would leave no bundle at all
        os.replace(out, old)
        os.replace(stage, out)
        fsync_dir(out.parent)
    shutil.rmtree(old, ignore_errors=True)


def _write_archive(folder: Path, archive: Path) -> None:
    """``folder`` as a .tar.gz with sorted entries, zero timestamps and owners: reproducible bytes."""
    buffer = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buffer, mtime=0) as gz:
        with tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
            entries = [folder] + sorted((p for p in folder.rglob("*") if "__pycache__" not in p.parts),
                                        key=lambda p: p.relative_to(folder).as_posix())
            for path in entries:
                rel = folder.name if path == folder else f"{folder.name}/{path.relative_to(folder).as_posix()}"
                if path.is_file() and path.name.endswith((".engine", ".cache")) or (
                        path.name.endswith(".engine.json")):
                    continue  # built on a device: not part of what was shipped
                info = tar.gettarinfo(str(path), arcname=rel)
                info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
                info.mode = 0o755 if path.is_dir() or path.suffix == ".py" else 0o644
                if path.is_file():
                    with open(path, "rb") as handle:
                        tar.addfile(info, handle)
                else:
                    tar.addfile(info)
    atomic_write(archive, lambda h: h.write(buffer.getvalue()))


# --------------------------------------------------------------------------------------- verify_bundle


def verify_bundle(
    bundle_dir: str | os.PathLike[str],
    *,
    labelled: str | os.PathLike[str] | None = None,
    max_latency_ms: float | None = None,
    min_teacher_retention: float | None = None,
    json: bool = False,  # shadows the module name on purpose: it mirrors the CLI flag
    latency_seconds: float = 1.0,
    measure_latency: bool = True,
    timeout: float = 600,
) -> dict[str, Any]:
    """Check a bundle on this machine: hashes first, the bundle's scripts against this installation's, then
    this installation's ``check.py`` with the onnxruntime backend in a new Python process. Returns check.py's JSON result (``passed``, ``gates``,
    ``parity``, ``latency``, ...) plus ``exit_code``; gates failing is a result, not an exception.

    Raises BundleIntegrityError (a UserError) naming the first changed, missing or unlisted file, and
    UserError for anything else check.py calls bad input. ``json=True`` also prints check.py's summary
    lines to stderr as they come (the CLI's ``--json`` mode prints the result itself).

    Example: ``verify_bundle("runs/x/bundle", max_latency_ms=5.0)["passed"]``
    """
    bundle_io = _device_module("bundle_io")
    folder = Path(bundle_dir)
    try:
        manifest = bundle_io.load_manifest(str(folder))
        bundle_io.verify_integrity(str(folder), manifest)
    except bundle_io.IntegrityError as err:
        raise BundleIntegrityError(err.file, f"{folder}: {err}") from None
    except bundle_io.BundleError as err:
        raise UserError(str(err)) from None
    script_notes = _compare_scripts(folder, manifest)
    # This installation's check.py, not the bundle's: the manifest's hashes are no signature (anyone who edits
    # a file can re-seal them), so running the bundle's copy would run whatever a bundle carries.
    command = [sys.executable, str(device_scripts_dir() / "check.py"), "--bundle", str(folder),
               "--backend", "onnxruntime", "--json", "--duration-s", str(latency_seconds)]
    if labelled is not None:
        command += ["--labelled", str(labelled)]
    if max_latency_ms is not None:
        command += ["--max-latency-ms", str(max_latency_ms)]
    if min_teacher_retention is not None:
        command += ["--min-teacher-retention", str(min_teacher_retention)]
    if not measure_latency:  # e.g. on a build host, where a device's latency budget means nothing
        command += ["--no-latency"]
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}  # no __pycache__ inside the bundle
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)
    if json and done.stderr:
        sys.stderr.write(done.stderr)
    if done.returncode == 2:
        message = next((line for line in done.stderr.splitlines() if line.startswith("error:")),
                       done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "check.py failed")
        raise UserError(f"{folder}: {message.removeprefix('error: ')}")
    try:
        result = _json_loads(done.stdout)
    except ValueError:
        raise UserError(f"{folder}: check.py printed no result (exit {done.returncode}): "
                        f"{done.stderr.strip().splitlines()[-1] if done.stderr.strip() else 'no output'}") from None
    if done.returncode == 1 and result.get("failed_file"):
        raise BundleIntegrityError(result["failed_file"], f"{folder}: {result['gates'][0]['text']}")
    result["exit_code"] = done.returncode
    result["summary"] = [line for line in done.stderr.splitlines() if line.strip()] + script_notes
    result["script_notes"] = script_notes
    return result


def _compare_scripts(folder: Path, manifest: dict[str, Any]) -> list[str]:
    """The bundle's device scripts against this installation's. Made by this version, they must be the same
    bytes (a difference is an edit with the manifest re-sealed); made by another, they may differ, and the
    note says that the device will run scripts this check did not."""
    ours = device_scripts_dir()
    for name in DEVICE_SCRIPTS:
        if not (folder / "scripts" / name).is_file():
            raise BundleIntegrityError(f"scripts/{name}", f"{folder}: scripts/{name} is missing from the bundle; "
                                                          "rebuild it with nayer-edge export")
    differing = [name for name in DEVICE_SCRIPTS
                 if (folder / "scripts" / name).read_bytes() != (ours / name).read_bytes()]
    if not differing:
        return []
    made_by = (manifest.get("versions") or {}).get("nayer_edge")
    first = f"scripts/{differing[0]}"
    if made_by == __version__:
        raise BundleIntegrityError(first, f"{folder}: {first} is not the file nayer-edge {__version__} puts in "
                                          "its bundles, though the manifest says this version made the bundle: "
                                          "it was edited and the manifest re-sealed; rebuild the bundle with "
                                          "nayer-edge export")
    listed = ", ".join(f"scripts/{name}" for name in differing)
    return [f"note: {listed} differ from nayer-edge {__version__}'s (the bundle was made by nayer-edge "
            f"{made_by}); this check ran {__version__}'s check.py, the device runs the bundle's: verify with "
            f"nayer-edge {made_by} to check those"]


def _json_loads(text: str) -> dict[str, Any]:
    import json as json_module

    data = json_module.loads(text)
    if not isinstance(data, dict):
        raise ValueError("not an object")
    return data
