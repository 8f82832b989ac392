"""INT8 for TensorRT: explicit, symmetric Q/DQ inserted into an FP32 ONNX classifier.

TensorRT 10 builds INT8 from explicit Q/DQ only when the network is strongly typed, and TensorRT 11 has
no implicit INT8 at all. What its Q/DQ fusion expects (TensorRT developer guide, "Explicit quantization"):

- QuantizeLinear/DequantizeLinear with zero point 0 (int8): symmetric quantization only.
- weights: an int8 initializer behind a DequantizeLinear, per output channel (axis 0), narrow range
  [-127, 127], so that -x never overflows;
- activations: per-tensor scales, a Q/DQ pair on the *input* of each Conv/Gemm (TensorRT propagates
  the scale forward through Relu/pooling and fuses the output side itself);
- residual Adds: both inputs quantized, so TensorRT can fuse the Add into the preceding conv's epilogue
  in INT8 instead of falling back to a float Add;
- opset >= 13 (per-channel DequantizeLinear needs the ``axis`` attribute).

Activation scales are max-abs calibrated (amax / 127) on the images given, in the model's own input
convention. onnxruntime CPU runs this layout no faster than FP32 (see ``quantize_ort``); it is for
TensorRT, and onnxruntime is only the host-side check that the graph computes the right thing.

    quantize_tensorrt("student.onnx", "student.trt-int8.onnx", samples)   # samples: N×C×H×W float32
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from ..core.atomic import atomic_write_bytes
from ..core.errors import UserError
from ..core.optional import require
from ..onnx_model.exporter import onnx_session
from ..onnx_model.graph import load_fp32_onnx, set_metadata, topological_order

WEIGHT_OPS = ("Conv", "Gemm")
MIN_OPSET = 13


def quantize_tensorrt(fp32_onnx: str | os.PathLike[str], out: str | os.PathLike[str], calibration_images: Any, *,
                      max_calibration: int = 512, batch: int = 32) -> Path:
    """Write an explicit symmetric Q/DQ INT8 copy of ``fp32_onnx`` to ``out`` (atomically) and return its path."""
    onnx = require("onnx")

    src = Path(fp32_onnx)
    model = load_fp32_onnx(src)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < MIN_OPSET:
        raise UserError(f"{src}: opset {opset}; per-channel Q/DQ needs opset >= {MIN_OPSET}: re-export with --opset 17")
    images = np.ascontiguousarray(np.asarray(
        calibration_images.detach().cpu().numpy() if hasattr(calibration_images, "detach") else calibration_images,
        dtype=np.float32))[:max_calibration]
    if len(images) == 0:
        raise UserError("no calibration images")

    graph = model.graph
    initializers = {t.name: t for t in graph.initializer}
    activations = _activation_inputs(graph, initializers)
    amax = _calibrate_amax(src, activations, images, batch)
    new_nodes, new_initializers, dequantized = _activation_qdq(activations, amax)
    weight_nodes, weight_initializers = _weight_qdq(graph, initializers)
    new_nodes += weight_nodes
    new_initializers += weight_initializers
    for node in graph.node:
        if node.op_type in WEIGHT_OPS + ("Add",):
            for k, name in enumerate(node.input):
                if name in dequantized:
                    node.input[k] = dequantized[name]

    _splice(graph, initializers, new_nodes, new_initializers)
    set_metadata(model, "nayer_edge.quantization", "int8-qdq-tensorrt-symmetric")
    onnx.checker.check_model(model)
    dest = Path(out)
    atomic_write_bytes(dest, model.SerializeToString())
    return dest


def _activation_qdq(names: list[str], amax: dict[str, float]) -> tuple[list[Any], list[Any], dict[str, str]]:
    """A per-tensor symmetric Q/DQ pair for each activation: the nodes, their scale and zero-point initializers,
    and the dequantized name that replaces each activation where it is quantized."""
    helper, numpy_helper = require("onnx.helper"), require("onnx.numpy_helper")
    nodes: list[Any] = []
    initializers: list[Any] = []
    dequantized: dict[str, str] = {}
    for name in names:
        scale, zero = f"{name}_trt_scale", f"{name}_trt_zero_point"
        initializers += [numpy_helper.from_array(np.array(max(amax[name], 1e-8) / 127.0, np.float32), scale),
                         numpy_helper.from_array(np.array(0, np.int8), zero)]
        nodes += [helper.make_node("QuantizeLinear", [name, scale, zero], [f"{name}_q"], name=f"{name}_Q"),
                  helper.make_node("DequantizeLinear", [f"{name}_q", scale, zero], [f"{name}_dq"],
                                   name=f"{name}_DQ")]
        dequantized[name] = f"{name}_dq"
    return nodes, initializers, dequantized


def _weight_qdq(graph: Any, initializers: dict[str, Any]) -> tuple[list[Any], list[Any]]:
    """Per-output-channel narrow-range int8 weights behind a DequantizeLinear, which each Conv/Gemm is rewired
    to read: the new nodes and initializers."""
    helper, numpy_helper = require("onnx.helper"), require("onnx.numpy_helper")
    nodes: list[Any] = []
    new_initializers: list[Any] = []
    for node in graph.node:
        weight = _quantizable_weight(node, initializers)
        if weight is None:
            continue
        w = numpy_helper.to_array(initializers[weight]).astype(np.float32)
        scale = np.maximum(np.abs(w.reshape(w.shape[0], -1)).max(axis=1), 1e-12) / 127.0
        q = np.clip(np.round(w / scale.reshape(-1, *[1] * (w.ndim - 1))), -127, 127).astype(np.int8)
        new_initializers += [numpy_helper.from_array(q, f"{weight}_int8"),
                             numpy_helper.from_array(scale.astype(np.float32), f"{weight}_scale"),
                             numpy_helper.from_array(np.zeros(w.shape[0], np.int8), f"{weight}_zero_point")]
        nodes.append(helper.make_node("DequantizeLinear", [f"{weight}_int8", f"{weight}_scale",
                                                           f"{weight}_zero_point"],
                                      [f"{weight}_dq"], name=f"{weight}_DQ", axis=0))
        node.input[1] = f"{weight}_dq"
    return nodes, new_initializers


def _splice(graph: Any, initializers: dict[str, Any], new_nodes: list[Any], new_initializers: list[Any]) -> None:
    """Put the new nodes into the graph in topological order, and the new initializers in place of the float
    ones no node reads any more."""
    available = {i.name for i in graph.input} | set(initializers) | {t.name for t in new_initializers}
    ordered = topological_order(list(graph.node) + new_nodes, available)
    del graph.node[:]
    graph.node.extend(ordered)
    used = {name for node in graph.node for name in node.input}
    kept = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept + new_initializers)


def _activation_inputs(graph: Any, initializers: dict[str, Any]) -> list[str]:
    """Tensors that get a Q/DQ pair: data input of Conv/Gemm, both inputs of a residual Add."""
    names: list[str] = []
    for node in graph.node:
        if node.op_type in WEIGHT_OPS:
            wanted = list(node.input[:1]) if _quantizable_weight(node, initializers) else []
        elif node.op_type == "Add" and not any(n in initializers for n in node.input[:2]):
            wanted = list(node.input[:2])
        else:
            wanted = []
        names += [n for n in wanted if n and n not in initializers and n not in names]
    return names


def _quantizable_weight(node: Any, initializers: dict[str, Any]) -> str | None:
    """The weight initializer of a Conv, or of a Gemm whose weight is stored output-major (transB=1)."""
    if node.op_type not in WEIGHT_OPS or len(node.input) < 2 or node.input[1] not in initializers:
        return None
    if node.op_type == "Gemm" and not next((a.i for a in node.attribute if a.name == "transB"), 0):
        return None  # axis 0 would be the input channels: TensorRT wants per-output-channel scales
    return node.input[1]


def _calibrate_amax(src: Path, names: list[str], images: np.ndarray, batch: int) -> dict[str, float]:
    """max |x| of every named tensor over the images, by running a copy of the graph that outputs them."""
    onnx = require("onnx")
    TensorProto, helper = onnx.TensorProto, require("onnx.helper")

    probe = onnx.load(str(src))
    outputs = {o.name for o in probe.graph.output}
    for name in names:
        if name not in outputs:
            probe.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
    amax = dict.fromkeys(names, 0.0)
    with tempfile.TemporaryDirectory(prefix="nayer-trt-calib-") as tmp:
        path = Path(tmp) / "probe.onnx"
        onnx.save(probe, str(path))
        session = onnx_session(path)
        inp = session.get_inputs()[0]
        fixed = inp.shape[0] if isinstance(inp.shape[0], int) and inp.shape[0] > 0 else None
        step = fixed or batch
        if fixed and len(images) < fixed:
            raise UserError(f"{src} has a fixed batch {fixed}; give at least {fixed} calibration images")
        for i in range(0, len(images) - (fixed or 1) + 1, step):
            chunk = images[i:i + step]
            for name, value in zip(names, session.run(names, {inp.name: chunk})):
                amax[name] = max(amax[name], float(np.abs(value).max()))
    return amax
