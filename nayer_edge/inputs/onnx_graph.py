"""An ONNX classifier graph as a differentiable torch module: each node runs as the torch op of the same meaning.

Data-free distillation needs gradients of the teacher's output with respect to its input, which onnxruntime
cannot give, so an ONNX teacher is re-expressed in torch. The maintained converter, onnx2torch, imports
torchvision at import time (its NMS and RoIAlign converters), and no torchvision build imports beside this
project's CPU torch; the classifier operator set is small, so it is covered here. BatchNormalization nodes
become real ``_BatchNorm`` modules holding the graph's running statistics, so the BN-statistics loss finds them
exactly as in an eager teacher. Initializers are buffers (frozen); integer tensors (shapes, indices) flow
through as int64 tensors, as in the graph.

Example::

    model = OnnxGraphModule(onnx.load("teacher.onnx").graph)
    logits = model(torch.randn(2, 3, 32, 32, requires_grad=True))
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

__all__ = ["OnnxGraphModule", "OnnxBatchNorm", "SUPPORTED_OPS", "unsupported_node"]


class OnnxBatchNorm(_BatchNorm):
    """A BatchNormalization node: eval-mode batch norm over dimension 1 of an input of any rank ≥ 2."""

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected an input of rank 2 or more, got {input.dim()}")


def parse_attrs(node: Any) -> dict[str, Any]:
    from ..core.optional import require

    helper = require("onnx.helper")
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _ints(values: Any) -> list[int]:
    return [int(v) for v in (values.tolist() if isinstance(values, Tensor) else values)]


def _axes(node_attrs: dict[str, Any], inputs: list[Tensor | None], position: int) -> list[int] | None:
    """Axes from the attribute (older opsets) or the optional input at ``position`` (newer ones)."""
    if "axes" in node_attrs:
        return _ints(node_attrs["axes"])
    if len(inputs) > position and inputs[position] is not None:
        return _ints(inputs[position])
    return None


def _spatial_padding(pads: list[int], rank: int) -> tuple[list[int], list[int] | None]:
    """ONNX pads [b1, b2, …, e1, e2, …] as symmetric torch padding, or the F.pad list when they differ."""
    n = rank - 2
    begin, end = pads[:n], pads[n:]
    if begin == end:
        return begin, None
    pad_list: list[int] = []
    for b, e in zip(reversed(begin), reversed(end)):
        pad_list += [b, e]
    return [0] * n, pad_list


def _check_auto_pad(a: dict[str, Any], node: Any) -> None:
    auto_pad = a.get("auto_pad", b"NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else str(auto_pad)
    if auto_pad not in ("NOTSET", "VALID"):
        raise NotImplementedError(f"auto_pad={auto_pad} of {node.op_type} node '{node.name}'")


def _conv(m: OnnxGraphModule, node: Any, a: dict[str, Any], x: list[Tensor | None]) -> Tensor:
    _check_auto_pad(a, node)
    inp, weight, bias = x[0], x[1], x[2] if len(x) > 2 else None
    rank = inp.dim()
    n = rank - 2
    padding, pad_list = _spatial_padding(_ints(a.get("pads", [0] * 2 * n)), rank)
    if pad_list is not None:
        inp = F.pad(inp, pad_list)
    conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[n]
    return conv(inp, weight, bias, _ints(a.get("strides", [1] * n)), padding, _ints(a.get("dilations", [1] * n)),
                int(a.get("group", 1)))


def _pool(m: OnnxGraphModule, node: Any, a: dict[str, Any], x: list[Tensor | None]) -> Tensor:
    _check_auto_pad(a, node)
    inp = x[0]
    n = inp.dim() - 2
    kernel = _ints(a["kernel_shape"])
    strides = _ints(a.get("strides", [1] * n))
    padding, pad_list = _spatial_padding(_ints(a.get("pads", [0] * 2 * n)), inp.dim())
    ceil = bool(a.get("ceil_mode", 0))
    if node.op_type == "MaxPool":
        if pad_list is not None:
            inp = F.pad(inp, pad_list, value=-math.inf)
        pool = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}[n]
        return pool(inp, kernel, strides, padding, _ints(a.get("dilations", [1] * n)), ceil_mode=ceil)
    if pad_list is not None:
        raise NotImplementedError(f"asymmetric pads of AveragePool node '{node.name}'")
    pool = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}[n]
    return pool(inp, kernel, strides, padding, ceil_mode=ceil, count_include_pad=bool(a.get("count_include_pad", 0)))


def _gemm(m: OnnxGraphModule, node: Any, a: dict[str, Any], x: list[Tensor | None]) -> Tensor:
    left = x[0].transpose(0, 1) if a.get("transA", 0) else x[0]
    right = x[1].transpose(0, 1) if a.get("transB", 0) else x[1]
    out = float(a.get("alpha", 1.0)) * (left @ right)
    if len(x) > 2 and x[2] is not None:
        out = out + float(a.get("beta", 1.0)) * x[2]
    return out


def _reshape(m: OnnxGraphModule, node: Any, a: dict[str, Any], x: list[Tensor | None]) -> Tensor:
    shape = _ints(x[1])
    if not a.get("allowzero", 0):
        shape = [x[0].shape[i] if d == 0 else d for i, d in enumerate(shape)]
    return x[0].reshape(shape)


def _flatten(m: OnnxGraphModule, node: Any, a: dict[str, Any], x: list[Tensor | None]) -> Tensor:
    axis = int(a.get("axis", 1))
    axis = axis % x[0].dim() if x[0].dim() else 0
    outer = math.prod(x[0].shape[:axis])
    return x[0].reshape(outer, -1)


def _clip(m: OnnxGraphModule, node: Any, a: dict[str, Any], x: list[Tensor | None]) -> Tensor:
    low = x[1] if len(x) > 1 and x[1] is not None else a.get("min")
    high = x[2] if len(x) > 2 and x[2] is not None else a.get("max")
    low = float(low) if low is not None else None
    high = float(high) if high is not None else None
    return torch.clamp(x[0], low, high)


def _reduce_mean(m: OnnxGraphModule, node: Any, a: dict[str, Any], x: list[Tensor | None]) -> Tensor:
    axes = _axes(a, x, 1)
    keep = bool(a.get("keepdims", 1))
    if axes is None:
        return x[0].mean() if not keep else x[0].mean(dim=tuple(range(x[0].dim())), keepdim=True)
    return x[0].mean(dim=tuple(axes), keepdim=keep)


def _unsqueeze(m: OnnxGraphModule, node: Any, a: dict[str, Any], x: list[Tensor | None]) -> Tensor:
    out = x[0]
    axes = _axes(a, x, 1) or []
    rank = out.dim() + len(axes)
    for axis in sorted(a % rank for a in axes):
        out = out.unsqueeze(axis)
    return out


def _squeeze(m: OnnxGraphModule, node: Any, a: dict[str, Any], x: list[Tensor | None]) -> Tensor:
    axes = _axes(a, x, 1)
    if axes is None:
        return x[0].squeeze()
    return x[0].squeeze(tuple(a % x[0].dim() for a in axes))


def _slice(m: OnnxGraphModule, node: Any, a: dict[str, Any], x: list[Tensor | None]) -> Tensor:
    if "starts" in a:  # opset < 10: attributes
        starts, ends, axes, steps = _ints(a["starts"]), _ints(a["ends"]), a.get("axes"), None
    else:
        starts, ends = _ints(x[1]), _ints(x[2])
        axes = x[3] if len(x) > 3 and x[3] is not None else None
        steps = _ints(x[4]) if len(x) > 4 and x[4] is not None else None
    out = x[0]
    axes_list = _ints(axes) if axes is not None else list(range(len(starts)))
    index: list[slice] = [slice(None)] * out.dim()
    for i, axis in enumerate(axes_list):
        size = out.shape[axis]
        step = steps[i] if steps else 1
        if step <= 0:
            raise NotImplementedError(f"a negative step of Slice node '{node.name}'")
        start = max(0, min(size, starts[i] + size if starts[i] < 0 else starts[i]))
        end = max(0, min(size, ends[i] + size if ends[i] < 0 else ends[i]))
        index[axis % out.dim()] = slice(start, end, step)
    return out[tuple(index)]


def _gather(m: OnnxGraphModule, node: Any, a: dict[str, Any], x: list[Tensor | None]) -> Tensor:
    axis = int(a.get("axis", 0))
    indices = x[1].long()
    indices = torch.where(indices < 0, indices + x[0].shape[axis], indices)
    axis %= x[0].dim()
    picked = torch.index_select(x[0], axis, indices.reshape(-1))
    return picked.reshape((*x[0].shape[:axis], *indices.shape, *x[0].shape[axis + 1:]))


def _cast(m: OnnxGraphModule, node: Any, a: dict[str, Any], x: list[Tensor | None]) -> Tensor:
    from ..core.optional import require

    helper = require("onnx.helper")
    dtype = torch.from_numpy(np.zeros(1, dtype=helper.tensor_dtype_to_np_dtype(int(a["to"])))).dtype
    return x[0].to(dtype)


def _pad(m: OnnxGraphModule, node: Any, a: dict[str, Any], x: list[Tensor | None]) -> Tensor:
    mode = a.get("mode", b"constant")
    mode = mode.decode() if isinstance(mode, bytes) else str(mode)
    pads = _ints(a["pads"]) if "pads" in a else _ints(x[1])
    value = float(x[2]) if len(x) > 2 and x[2] is not None and x[2].numel() else float(a.get("value", 0.0))
    rank = x[0].dim()
    begin, end = pads[:rank], pads[rank:]
    pad_list: list[int] = []
    for b, e in zip(reversed(begin), reversed(end)):
        pad_list += [b, e]
    return F.pad(x[0], pad_list, mode=mode, value=value) if mode == "constant" else F.pad(x[0], pad_list, mode=mode)


def _instance_norm(m: OnnxGraphModule, node: Any, a: dict[str, Any], x: list[Tensor | None]) -> Tensor:
    eps = float(a.get("epsilon", 1e-5))
    return F.instance_norm(x[0], weight=x[1], bias=x[2], eps=eps)


def _group_norm(m: OnnxGraphModule, node: Any, a: dict[str, Any], x: list[Tensor | None]) -> Tensor:
    groups, eps = int(a["num_groups"]), float(a.get("epsilon", 1e-5))
    channels = x[0].shape[1]
    scale, bias = x[1], x[2]
    if scale.numel() == groups and groups != channels:  # opset 18: one scale per group
        scale, bias = scale.repeat_interleave(channels // groups), bias.repeat_interleave(channels // groups)
    return F.group_norm(x[0], groups, scale, bias, eps)


def _layer_norm(m: OnnxGraphModule, node: Any, a: dict[str, Any], x: list[Tensor | None]) -> Tensor:
    axis = int(a.get("axis", -1)) % x[0].dim()
    shape = x[0].shape[axis:]
    bias = x[2] if len(x) > 2 else None
    return F.layer_norm(x[0], shape, x[1], bias, float(a.get("epsilon", 1e-5)))


def _softmax(m: OnnxGraphModule, node: Any, a: dict[str, Any], x: list[Tensor | None]) -> Tensor:
    return torch.softmax(x[0], dim=int(a.get("axis", -1)))


def _concat(m: OnnxGraphModule, node: Any, a: dict[str, Any], x: list[Tensor | None]) -> Tensor:
    return torch.cat([t for t in x if t is not None], dim=int(a["axis"]))


def _transpose(m: OnnxGraphModule, node: Any, a: dict[str, Any], x: list[Tensor | None]) -> Tensor:
    perm = a.get("perm")
    return x[0].permute(*(_ints(perm) if perm is not None else reversed(range(x[0].dim()))))


def _elementwise(fn: Callable[..., Tensor]) -> Callable[[OnnxGraphModule, Any, dict[str, Any], list[Tensor | None]], Tensor]:
    return lambda m, node, a, x: fn(*x)


def _with_attr(fn: Callable[..., Tensor], name: str, default: float) -> Callable[..., Tensor]:
    return lambda m, node, a, x: fn(x[0], float(a.get(name, default)))


def _batch_norm(m: OnnxGraphModule, node: Any, a: dict[str, Any], x: list[Tensor | None]) -> Tensor:
    return m.batch_norms[m.bn_key[node.output[0]]](x[0])


def _constant(m: OnnxGraphModule, node: Any, a: dict[str, Any], x: list[Tensor | None]) -> Tensor:
    return getattr(m, m.constant_key[node.output[0]])


SUPPORTED_OPS: dict[str, Callable[[OnnxGraphModule, Any, dict[str, Any], list[Tensor | None]], Tensor]] = {
    "Conv": _conv, "MaxPool": _pool, "AveragePool": _pool, "Gemm": _gemm, "Reshape": _reshape,
    "Flatten": _flatten, "Clip": _clip, "ReduceMean": _reduce_mean, "Unsqueeze": _unsqueeze, "Squeeze": _squeeze,
    "Slice": _slice, "Gather": _gather, "Cast": _cast, "Pad": _pad, "InstanceNormalization": _instance_norm,
    "GroupNormalization": _group_norm, "LayerNormalization": _layer_norm, "Softmax": _softmax, "Concat": _concat,
    "Transpose": _transpose, "BatchNormalization": _batch_norm, "Constant": _constant,
    "Add": _elementwise(torch.add), "Sub": _elementwise(torch.sub), "Mul": _elementwise(torch.mul),
    "Div": _elementwise(torch.div), "Pow": _elementwise(torch.pow), "MatMul": _elementwise(torch.matmul),
    "Relu": _elementwise(torch.relu), "Sigmoid": _elementwise(torch.sigmoid), "Tanh": _elementwise(torch.tanh),
    "Erf": _elementwise(torch.erf), "Sqrt": _elementwise(torch.sqrt), "Exp": _elementwise(torch.exp),
    "Neg": _elementwise(torch.neg), "Abs": _elementwise(torch.abs), "Reciprocal": _elementwise(torch.reciprocal),
    "Identity": _elementwise(lambda t: t), "Dropout": lambda m, node, a, x: x[0],
    "HardSwish": _elementwise(F.hardswish), "Softplus": _elementwise(F.softplus),
    "LeakyRelu": _with_attr(F.leaky_relu, "alpha", 0.01), "Elu": _with_attr(F.elu, "alpha", 1.0),
    "HardSigmoid": lambda m, node, a, x: torch.clamp(
        float(a.get("alpha", 0.2)) * x[0] + float(a.get("beta", 0.5)), 0.0, 1.0),
    "Shape": lambda m, node, a, x: torch.tensor(list(x[0].shape), dtype=torch.int64, device=x[0].device),
    "GlobalAveragePool": lambda m, node, a, x: x[0].mean(dim=tuple(range(2, x[0].dim())), keepdim=True),
    "GlobalMaxPool": lambda m, node, a, x: x[0].amax(dim=tuple(range(2, x[0].dim())), keepdim=True),
}


def unsupported_node(graph: Any) -> Any | None:
    """The first node whose operator this module cannot run (another domain, or not in SUPPORTED_OPS)."""
    for node in graph.node:
        if node.domain not in ("", "ai.onnx") or node.op_type not in SUPPORTED_OPS:
            return node
    return None


def _buffer_name(name: str, used: set[str]) -> str:
    base = "c_" + re.sub(r"\W", "_", name)
    out, i = base, 1
    while out in used:
        out, i = f"{base}_{i}", i + 1
    used.add(out)
    return out


class OnnxGraphModule(nn.Module):
    """Runs an ONNX graph's nodes in order with torch ops; one input, its first output returned."""

    def __init__(self, graph: Any):
        super().__init__()
        from ..core.optional import require

        numpy_helper = require("onnx.numpy_helper")
        self.graph_nodes = list(graph.node)
        self.node_attrs = [parse_attrs(node) for node in self.graph_nodes]
        initializers = {t.name: t for t in graph.initializer}
        self.input_name = next(i.name for i in graph.input if i.name not in initializers)
        self.output_name = graph.output[0].name
        used: set[str] = set()
        self.tensor_key: dict[str, str] = {}
        # what only BatchNormalization nodes read lives in their modules; float weights are (frozen) parameters,
        # so that the teacher's parameter count is its size; integer tensors (shapes, indices) are buffers
        bn_only = {n for node in self.graph_nodes if node.op_type == "BatchNormalization" for n in node.input[1:5]}
        bn_only -= {n for node in self.graph_nodes if node.op_type != "BatchNormalization" for n in node.input}
        constants = {name: torch.from_numpy(numpy_helper.to_array(t).copy()) for name, t in initializers.items()}
        for name, value in constants.items():
            if name in bn_only:
                continue
            key = _buffer_name(name, used)
            if value.is_floating_point():
                self.register_parameter(key, nn.Parameter(value, requires_grad=False))
            else:
                self.register_buffer(key, value)
            self.tensor_key[name] = key
        self.constant_key: dict[str, str] = {}
        self.bn_key: dict[str, str] = {}
        self.batch_norms = nn.ModuleDict()
        for node in self.graph_nodes:
            if node.op_type == "Constant":
                key = _buffer_name(node.output[0], used)
                self.register_buffer(key, self._constant_value(node, numpy_helper))
                self.constant_key[node.output[0]] = key
        for node in self.graph_nodes:  # exporters alias equal initializers through Identity nodes
            if node.op_type == "Identity" and node.input[0] in constants:
                constants[node.output[0]] = constants[node.input[0]]
            elif node.op_type == "Constant":
                constants[node.output[0]] = getattr(self, self.constant_key[node.output[0]])
            elif node.op_type == "BatchNormalization":
                self._add_batch_norm(node, constants)

    @staticmethod
    def _constant_value(node: Any, numpy_helper: Any) -> Tensor:
        for attr in node.attribute:
            if attr.name == "value":
                return torch.from_numpy(numpy_helper.to_array(attr.t).copy())
            if attr.name in ("value_float", "value_int"):
                value = attr.f if attr.name == "value_float" else attr.i
                return torch.tensor(value, dtype=torch.float32 if attr.name == "value_float" else torch.int64)
            if attr.name in ("value_floats", "value_ints"):
                values = list(attr.floats) if attr.name == "value_floats" else list(attr.ints)
                return torch.tensor(values, dtype=torch.float32 if attr.name == "value_floats" else torch.int64)
        raise NotImplementedError(f"Constant node '{node.name}' without a tensor value")

    def _add_batch_norm(self, node: Any, constants: dict[str, Tensor]) -> None:
        names = list(node.input[1:5])
        if not all(n in constants for n in names):
            raise NotImplementedError(f"BatchNormalization node '{node.name}' whose statistics are not constants")
        scale, bias, mean, var = (constants[n] for n in names)
        eps = float(parse_attrs(node).get("epsilon", 1e-5))
        bn = OnnxBatchNorm(int(scale.numel()), eps=eps)
        with torch.no_grad():
            bn.weight.copy_(scale)
            bn.bias.copy_(bias)
            bn.running_mean.copy_(mean)
            bn.running_var.copy_(var)
        key = f"bn{len(self.batch_norms)}_" + re.sub(r"\W", "_", node.name or node.output[0])
        self.batch_norms[key] = bn.eval()
        self.bn_key[node.output[0]] = key

    def train(self, mode: bool = True) -> OnnxGraphModule:
        # the graph is an inference graph: its batch norms always use their running statistics
        self.training = mode
        for bn in self.batch_norms.values():
            bn.train(False)
        return self

    def forward(self, x: Tensor) -> Tensor:
        values: dict[str, Tensor | None] = {self.input_name: x, "": None}
        for name, key in self.tensor_key.items():
            values[name] = getattr(self, key)
        for node, attrs in zip(self.graph_nodes, self.node_attrs):
            inputs = [values.get(name) for name in node.input]
            values[node.output[0]] = SUPPORTED_OPS[node.op_type](self, node, attrs, inputs)
        return values[self.output_name]  # type: ignore[return-value]
