"""Building the deploy bundle: everything a person at a Jetson needs to build the engine and prove it, in one folder.

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
Its inputs are checked first (:mod:`.bundle_inputs`); :func:`~nayer_edge.deploy.bundle_verify.verify_bundle`
checks a bundle.

Example::

    info = make_bundle("runs/x/student.int8.onnx", "runs/x/bundle", target=load_target("jetson"),
                       classes=classes, input_shape=(1, 16, 16), mean=[0.5], std=[0.5],
                       input_convention="images01", precision="int8", reference_images=samples[:64],
                       eval_data=(x_test, y_test), teacher_path="teacher.pt", expected_accuracy=0.986)
    result = verify_bundle("runs/x/bundle")        # BundleIntegrityError if a file was changed
    assert result["passed"]
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import tempfile
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from .. import __version__
from ..core.atomic import sha256_path
from ..core.errors import UserError, first_line
from ..core.optional import require
from ..distill.run_folder import recorded_teacher_sha256
from .bundle_docs import deepstream_config, render_readme
from .bundle_inputs import BundleInputs, BundleRequest, read_inputs
from .bundle_publish import fsync_tree, replace_dir, tree, umask, write_archive
from .device_scripts import DEVICE_SCRIPTS, device_module
from .targets import Target, load_target

__all__ = ["make_bundle"]

MODEL_FILE = "model.onnx"
ENGINE_FILE = "model.engine"


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
    req = BundleRequest(
        src=Path(onnx_path), out=Path(out_dir), target=tgt, precision=precision or tgt.precision, classes=classes,
        input_shape=input_shape, mean=mean, std=std, convention=input_convention, reference_images=reference_images,
        eval_data=eval_data, reference_limit=reference_limit, labelled_limit=labelled_limit,
        expected_accuracy=expected_accuracy, max_accuracy_drop=max_accuracy_drop, max_latency_ms=max_latency_ms,
        parity=parity, teacher_path=teacher_path, run_dir=run_dir, check_qdq=check_qdq, release=release)
    return _build(req, read_inputs(req, onnx), ort, onnx)


def _build(req: BundleRequest, inputs: BundleInputs, ort: Any, onnx: Any) -> dict[str, Any]:
    """The bundle staged beside ``req.out``, renamed into place, then archived; make_bundle's result."""
    out = req.out
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    try:
        manifest = _write_stage(stage, req, inputs, ort, onnx)
        fsync_tree(stage)
        archive = out.with_name(out.name + ".tar.gz")
        archive.unlink(missing_ok=True)  # never an archive of the old bundle beside the new folder
        replace_dir(stage, out)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    write_archive(out, archive)
    return {"bundle_dir": str(out), "archive": str(archive), "manifest": manifest}


def _write_stage(stage: Path, req: BundleRequest, inputs: BundleInputs, ort: Any, onnx: Any) -> dict[str, Any]:
    """Every file of the bundle into ``stage``, the sealed manifest last; returns the manifest."""
    os.chmod(stage, 0o777 & ~umask())  # mkdtemp makes it private; the bundle is meant to be shared
    shutil.copyfile(req.src, stage / MODEL_FILE)
    labelled_info = _write_reference_data(stage, inputs, ort)
    classes = inputs.spec["classes"]
    (stage / "labels.txt").write_text("".join(f"{c}\n" for c in classes), encoding="utf-8")
    (stage / "labels_deepstream.txt").write_text(";".join(classes) + "\n", encoding="utf-8")
    (stage / "scripts").mkdir()
    for name in DEVICE_SCRIPTS:
        shutil.copyfile(inputs.scripts / name, stage / "scripts" / name)
    manifest = _manifest(req, inputs, labelled_info, ort, onnx)
    return _seal(stage, manifest, inputs.bundle_io, req.out.name)


def _write_reference_data(stage: Path, inputs: BundleInputs, ort: Any) -> dict[str, Any] | None:
    """reference.npz (the reference inputs and onnxruntime's outputs on the staged model) and, with eval data,
    labelled.npz; returns the manifest's ``labelled`` section (None without eval data)."""
    session = _session(ort, stage / MODEL_FILE)
    logits = _run(session, inputs.reference)
    _save_npz(stage / "reference.npz", inputs=inputs.reference.astype(np.float32), logits=logits)
    if inputs.labelled is None:
        return None
    images, labels = inputs.labelled
    model_input = inputs.bundle_io.images_to_input(images, {"input": inputs.spec["input_section"]})
    subset_top1 = float((_run(session, model_input).argmax(1) == labels).mean())
    _save_npz(stage / "labelled.npz", images=images, labels=labels)
    return {"file": "labelled.npz", "samples": int(len(labels)), "top1": subset_top1,
            "top1_by": "onnxruntime on model.onnx when the bundle was made"}


def _manifest(req: BundleRequest, inputs: BundleInputs, labelled_info: dict[str, Any] | None, ort: Any,
              onnx: Any) -> dict[str, Any]:
    """The manifest before its file hashes and seal."""
    tgt, precision, io_spec = req.target, req.precision, inputs.io_spec
    engine_batch = _engine_batch(tgt, io_spec)
    return {
        "format": inputs.bundle_io.FORMAT,
        "format_version": inputs.bundle_io.FORMAT_VERSION,
        "created_utc": datetime.now(timezone.utc).replace(microsecond=0).isoformat(),
        "model": {"file": MODEL_FILE, "precision": precision, "quantization": tgt.quantization
                  if precision == "int8" else "none", "opset": io_spec["opset"], "inputs": io_spec["inputs"],
                  "outputs": io_spec["outputs"], "source": req.src.name},
        "input": inputs.spec["input_section"],
        "classes": inputs.spec["classes"],
        "target": {k: getattr(tgt, k) for k in ("name", "runtime", "device", "jetpack", "tensorrt", "gpu_arch",
                                               "dla_cores", "memory_gb", "batch", "dynamic_batch")},
        "engine": {"file": ENGINE_FILE, **engine_batch},
        "reference": {"file": "reference.npz", "samples": int(len(inputs.reference)),
                      "runtime": f"onnxruntime {ort.__version__} (CPUExecutionProvider)",
                      "model": MODEL_FILE},
        "labelled": labelled_info,
        "accuracy": {"expected": req.expected_accuracy, "max_drop_points": inputs.max_drop},
        "parity": inputs.parity,
        "latency": {"batch": int(engine_batch["opt_batch"]), "max_ms": req.max_latency_ms if req.max_latency_ms
                    is not None else tgt.max_latency_ms},
        "teacher_sha256": _teacher_sha256(req.teacher_path, req.run_dir),
        "release": req.release,
        "versions": _versions(ort, onnx),
    }


def _seal(stage: Path, manifest: dict[str, Any], bundle_io: ModuleType, bundle_name: str) -> dict[str, Any]:
    """The files made from the manifest (DeepStream config, README), then manifest.json with every file's sha256,
    sealed; returns the sealed manifest."""
    build_engine = device_module("build_engine")
    (stage / "deepstream_nvinfer.txt").write_text(deepstream_config(manifest), encoding="utf-8")
    (stage / "README.md").write_text(render_readme(manifest, build_engine, bundle_name), encoding="utf-8")
    manifest["files"] = {rel: bundle_io.sha256_file(str(stage / rel)) for rel in tree(stage)}
    manifest = bundle_io.seal_manifest(manifest)
    (stage / bundle_io.MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n",
                                            encoding="utf-8")
    return manifest


def _engine_batch(tgt: Target, io_spec: dict[str, Any]) -> dict[str, int]:
    first = io_spec["inputs"][0]["shape"][0]
    if isinstance(first, int) and first > 0:
        return {"min_batch": first, "opt_batch": first, "max_batch": first}
    return {"min_batch": 1, "opt_batch": tgt.batch, "max_batch": tgt.batch}


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
        if not p.exists():
            raise UserError(f"{p}: no such teacher file")
        return sha256_path(p)
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
