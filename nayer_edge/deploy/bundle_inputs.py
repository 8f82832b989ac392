"""What ``make_bundle`` is given, checked and read before anything is written: the model's input (shape, classes,
normalisation, convention), the ONNX's I/O and TensorRT's Q/DQ rules, the reference images, the labelled subset of
the eval data, and the defaults of the limits a bundle records (``default_parity``)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from ..core.errors import UserError
from ..inputs.evaldata import load_eval_data
from ..quantize.trt_rules import tensorrt_qdq_violations
from .device_scripts import device_module, device_scripts_dir
from .targets import Target

__all__ = ["BundleRequest", "BundleInputs", "read_inputs", "default_parity", "CONVENTIONS", "PRECISIONS"]

CONVENTIONS = ("images01", "normalised")
PRECISIONS = ("fp32", "fp16", "int8")


@dataclass(frozen=True)
class BundleRequest:
    """What :func:`~nayer_edge.deploy.bundle_build.make_bundle` was asked for, the target loaded and the precision
    resolved: handed to its steps whole instead of as keyword relays (the fields are its parameters)."""

    src: Path
    out: Path
    target: Target
    precision: str
    classes: Sequence[str]
    input_shape: Sequence[int]
    mean: Sequence[float] | None
    std: Sequence[float] | None
    convention: str
    reference_images: Any
    eval_data: Any
    reference_limit: int
    labelled_limit: int
    expected_accuracy: float | None
    max_accuracy_drop: float | None
    max_latency_ms: float | None
    parity: dict[str, dict[str, float | None]] | None
    teacher_path: str | os.PathLike[str] | None
    run_dir: str | os.PathLike[str] | None
    check_qdq: bool
    release: dict[str, Any] | None


@dataclass(frozen=True)
class BundleInputs:
    """A request's inputs once checked: ``spec`` (the input's shape, channels, classes and manifest section),
    the ONNX's I/O, the reference images, the labelled subset (uint8 images, labels) or None, the accuracy drop
    and parity limits with their defaults filled in, and the device scripts (their folder and ``bundle_io``)."""

    spec: dict[str, Any]
    io_spec: dict[str, Any]
    reference: np.ndarray
    labelled: tuple[np.ndarray, np.ndarray] | None
    max_drop: float
    parity: dict[str, dict[str, float | None]]
    scripts: Path
    bundle_io: ModuleType


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


def read_inputs(req: BundleRequest, onnx: Any) -> BundleInputs:
    """Check and read everything ``req`` names, in the order its mistakes are reported (UserError)."""
    spec = _validate(req)
    if req.check_qdq and req.precision == "int8" and req.target.runtime == "tensorrt":
        problems = tensorrt_qdq_violations(req.src)
        if problems:
            raise UserError(f"{req.src} breaks TensorRT's Q/DQ rules ({len(problems)} problem(s)), first: "
                            f"{problems[0]}; quantize it for TensorRT (quantization qdq-trt)")
    io_spec = _onnx_io(onnx, req.src, spec["channels"])
    reference = _as_images(req.reference_images, "reference_images", spec["shape"])[:req.reference_limit]
    if len(reference) == 0:
        raise UserError("reference_images is empty; pass the synthetic samples (N×C×H×W) to check parity with")
    labelled = _labelled_subset(req.eval_data, spec, req.labelled_limit) if req.eval_data is not None else None
    drop = float(req.max_accuracy_drop if req.max_accuracy_drop is not None
                 else (req.target.max_accuracy_drop or 0.0))
    return BundleInputs(spec=spec, io_spec=io_spec, reference=reference, labelled=labelled, max_drop=drop,
                        parity=req.parity or default_parity(req.precision), scripts=device_scripts_dir(),
                        bundle_io=device_module("bundle_io"))


def _validate(req: BundleRequest) -> dict[str, Any]:
    src, out, convention, precision = req.src, req.out, req.convention, req.precision
    if not src.is_file():
        raise UserError(f"{src}: no such ONNX file; export the student first")
    if convention not in CONVENTIONS:
        raise UserError(f"input_convention must be one of {', '.join(CONVENTIONS)}, got {convention!r}")
    if precision not in PRECISIONS:
        raise UserError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    dims = [int(d) for d in req.input_shape]
    if len(dims) != 3 or min(dims) < 1:
        raise UserError(f"input_shape must be C, H, W, got {list(req.input_shape)}")
    names = [str(c) for c in req.classes]
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

    mean_v, std_v = per_channel("mean", req.mean), per_channel("std", req.std)
    if convention == "normalised" and (mean_v is None or std_v is None):
        raise UserError("input_convention 'normalised' needs mean and std (the device scripts normalise images)")
    if std_v is not None and min(std_v) <= 0:
        raise UserError(f"std must be positive, got {std_v}")
    if req.reference_limit < 1 or req.labelled_limit < 1:
        raise UserError("reference_limit and labelled_limit must be at least 1")
    if req.expected_accuracy is not None and not 0.0 <= float(req.expected_accuracy) <= 1.0:
        raise UserError(f"expected_accuracy is a fraction in [0, 1], got {req.expected_accuracy}")
    if out.exists() and not (out / "manifest.json").is_file() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"{out} exists and is not a bundle; choose an empty or new folder")
    if precision != req.target.precision:
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
