"""TensorRT's rules for explicitly quantized (Q/DQ) ONNX graphs, checked by reading the graph.

TensorRT takes INT8 only from QuantizeLinear/DequantizeLinear pairs (11.x has no other way), and only
symmetric ones: every zero point 0 in int8; weights int8 per output channel; activations per tensor.
ONNX Runtime's default U8S8 graph (``quantize_static_ort``) breaks them (uint8 activations with non-zero
zero points) and is rejected here; the ``qdq-trt`` producer's graph passes.

Example::

    >>> problems = tensorrt_qdq_violations("student.int8.onnx")
    >>> problems[:1]   # [] when TensorRT can build it as INT8
    []
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from ..core.errors import UserError, first_line
from ..core.optional import require

__all__ = ["tensorrt_qdq_violations", "MIN_OPSET"]

MIN_OPSET = 13  # the first opset with per-channel (axis) Q/DQ
_QDQ = ("QuantizeLinear", "DequantizeLinear")
# Which weight axis holds the output channels, per op (Gemm depends on transB, see _weight_axis).
_WEIGHT_OPS = ("Conv", "ConvTranspose", "Gemm")
_MAX_REPORTED = 20


def tensorrt_qdq_violations(onnx_path: str | os.PathLike[str]) -> list[str]:
    """Every way the ONNX at ``onnx_path`` breaks TensorRT's explicit-quantization rules; empty when none.

    Rules: default-domain opset >= 13; at least one Q/DQ node; every Q/DQ zero point present (a missing
    one means uint8), int8, and 0; scales constant and positive; activation scales scalar (per tensor);
    the weight of every Conv, ConvTranspose and Gemm an int8 initializer behind a DequantizeLinear, with one
    scale per output channel on the output-channel axis (0 for Conv and Gemm with transB=1; 1 for
    ConvTranspose and Gemm with transB=0) and values within [-127, 127] (narrow range).
    """
    onnx = require("onnx")
    numpy_helper = require("onnx.numpy_helper")
    path = os.fspath(onnx_path)
    if not os.path.isfile(path):
        raise UserError(f"{path}: no such ONNX file")
    try:
        model = onnx.load(path)
    except Exception as err:  # noqa: BLE001 - protobuf decode errors have several types
        raise UserError(f"{path}: not a readable ONNX model ({first_line(err)})") from None

    problems: list[str] = []
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset is None or opset < MIN_OPSET:
        problems.append(f"opset {opset} is below {MIN_OPSET}: per-channel Q/DQ needs opset >= {MIN_OPSET}")

    graph = model.graph
    constants: dict[str, np.ndarray] = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.output:
            value = next((a.t for a in node.attribute if a.name == "value"), None)
            if value is not None:
                constants[node.output[0]] = numpy_helper.to_array(value)
    producer = {out: node for node in graph.node for out in node.output}

    qdq_nodes = [n for n in graph.node if n.op_type in _QDQ]
    if not qdq_nodes:
        problems.append("no QuantizeLinear/DequantizeLinear nodes: not an explicitly quantized (INT8) graph")
    for node in qdq_nodes:
        problems += _qdq_node_problems(node, constants)
    for node in graph.node:
        if node.op_type in _WEIGHT_OPS and len(node.input) > 1:
            problems += _weight_problems(node, constants, producer)
    if len(problems) > _MAX_REPORTED:
        problems = problems[:_MAX_REPORTED] + [f"... and {len(problems) - _MAX_REPORTED} more"]
    return problems


def _label(node: Any) -> str:
    return f"{node.op_type} '{node.name or node.output[0]}'"


def _qdq_node_problems(node: Any, constants: dict[str, np.ndarray]) -> list[str]:
    problems = []
    label = _label(node)
    scale = constants.get(node.input[1]) if len(node.input) > 1 else None
    if scale is None:
        problems.append(f"{label}: scale is not a constant")
    elif not np.all(np.asarray(scale, dtype=np.float64) > 0):
        problems.append(f"{label}: scale has values <= 0")
    zero_point_name = node.input[2] if len(node.input) > 2 and node.input[2] else None
    if zero_point_name is None:
        if node.op_type == "QuantizeLinear":
            problems.append(f"{label}: no zero point, so it quantizes to uint8; TensorRT needs an int8 zero point 0")
    else:
        zp = constants.get(zero_point_name)
        if zp is None:
            problems.append(f"{label}: zero point is not a constant")
        else:
            if zp.dtype != np.int8:
                problems.append(f"{label}: zero point is {zp.dtype}, TensorRT needs int8")
            if np.any(zp != 0):
                problems.append(f"{label}: zero point is not 0 (asymmetric quantization; TensorRT is symmetric only)")
    is_weight = node.op_type == "DequantizeLinear" and node.input[0] in constants
    if not is_weight and scale is not None and np.asarray(scale).size != 1:
        problems.append(f"{label}: activation scale has {np.asarray(scale).size} values; TensorRT needs one "
                        "per tensor")
    return problems


def _weight_axis(node: Any) -> int:
    if node.op_type == "ConvTranspose":
        return 1
    if node.op_type == "Gemm":
        trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
        return 0 if trans_b else 1
    return 0


def _weight_problems(node: Any, constants: dict[str, np.ndarray], producer: dict[str, Any]) -> list[str]:
    label = _label(node)
    dq = producer.get(node.input[1])
    if dq is None or dq.op_type != "DequantizeLinear":
        return [f"{label}: weight '{node.input[1]}' is not behind a DequantizeLinear (not quantized)"]
    weight = constants.get(dq.input[0])
    if weight is None:
        return [f"{label}: quantized weight '{dq.input[0]}' is not an initializer"]
    problems = []
    if weight.dtype != np.int8:
        problems.append(f"{label}: weight is {weight.dtype}, TensorRT needs int8")
    elif weight.min(initial=0) < -127 or weight.max(initial=0) > 127:
        problems.append(f"{label}: weight values span [{int(weight.min())}, {int(weight.max())}]; TensorRT "
                        "needs narrow range [-127, 127]")
    axis = _weight_axis(node)
    channels = weight.shape[axis] if weight.ndim > axis else 1
    dq_axis = next((a.i for a in dq.attribute if a.name == "axis"), 1)
    dq_axis = dq_axis + weight.ndim if dq_axis < 0 else dq_axis
    scale = constants.get(dq.input[1]) if len(dq.input) > 1 else None
    scale_count = np.asarray(scale).size if scale is not None else 0
    if scale is not None and (scale_count != channels or (np.asarray(scale).ndim > 0 and dq_axis != axis)):
        if scale_count == 1 and channels != 1:
            problems.append(f"{label}: weight is quantized per tensor; TensorRT needs per-channel scales "
                            f"({channels}) on axis {axis}")
        else:
            problems.append(f"{label}: weight scales ({scale_count}) on axis {dq_axis}; TensorRT needs "
                            f"{channels} on axis {axis}")
    return problems
