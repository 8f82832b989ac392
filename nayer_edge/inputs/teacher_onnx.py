"""ONNX teachers: read and check the file, convert the graph to torch (:mod:`.onnx_graph`), and prove the
conversion against onnxruntime on random inputs before the teacher is used.

What the graph itself says is read from it: the input shape (its static C, H, W), and class names and
normalisation from the model's metadata properties where the exporter wrote them (keys ``classes`` or
``id2label``, ``mean`` / ``image_mean``, ``std`` / ``image_std``, JSON values).

Example::

    module, dims, notes, meta = load_onnx(Path("teacher.onnx"), "cpu")
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..core.errors import UserError
from ..core.optional import require
from .teacher_formats import BatchChunks, error_line
from .teacher_spec import id2label_names

__all__ = ["load_onnx", "PARITY_TOLERANCE"]

# max |torch - onnxruntime| allowed, relative to the largest |logit| (at least 1): float32 ops in another order
PARITY_TOLERANCE = 1e-3
_PARITY_BATCH = 4


def _read(path: Path) -> Any:
    onnx = require("onnx")
    try:
        model = onnx.load(str(path))
    except Exception as err:  # noqa: BLE001 - a bad file is the user's; one line says so
        raise UserError(f"{path}: cannot read the ONNX file (truncated or corrupt: {error_line(err)})") from None
    if not model.graph.node:
        raise UserError(f"{path}: the ONNX file holds no graph (truncated or corrupt)")
    try:
        onnx.checker.check_model(model)
    except Exception as err:  # noqa: BLE001 - as above
        raise UserError(f"{path}: not a valid ONNX model ({error_line(err)})") from None
    return model


def _graph_dims(path: Path, model: Any) -> list[int | None]:
    graph = model.graph
    initializers = {t.name for t in graph.initializer}
    inputs = [i for i in graph.input if i.name not in initializers]
    if len(inputs) != 1:
        names = ", ".join(i.name for i in inputs)
        raise UserError(f"{path}: the ONNX graph takes {len(inputs)} inputs ({names}); expected one image tensor")
    if len(graph.output) != 1:
        names = ", ".join(o.name for o in graph.output)
        raise UserError(f"{path}: the ONNX graph has {len(graph.output)} outputs ({names}); expected one logits "
                        "tensor (export the classifier alone)")
    dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
            for d in inputs[0].type.tensor_type.shape.dim]
    return dims


def _metadata(path: Path, model: Any) -> dict[str, Any]:
    """classes / mean / std from the model's metadata properties, where present."""
    props = {p.key: p.value for p in model.metadata_props}
    out: dict[str, Any] = {}
    for key, target in (("classes", "classes"), ("id2label", "classes"), ("mean", "mean"), ("image_mean", "mean"),
                        ("std", "std"), ("image_std", "std")):
        if key not in props or target in out:
            continue
        try:
            value = json.loads(props[key])
        except json.JSONDecodeError:
            value = [v.strip() for v in props[key].split(",")] if key in ("classes", "id2label") else None
        if isinstance(value, dict):  # id2label: {"0": "cat", ...}
            value = id2label_names(value)
        if target == "classes" and isinstance(value, list) and all(isinstance(v, str) and v for v in value):
            out[target] = value
        elif target in ("mean", "std") and isinstance(value, list) and all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
            out[target] = [float(v) for v in value]
        else:
            raise UserError(f"{path}: the metadata property '{key}' is not a list of "
                            f"{'class names' if target == 'classes' else 'numbers'}")
    return out


def _parity(path: Path, model: Any, module: nn.Module, dims: list[int | None], notes: list[str]) -> None:
    """The converted module against onnxruntime on random inputs; UserError naming the largest difference."""
    ort = require("onnxruntime")
    if any(d is None for d in dims[1:]):
        return  # the size is not fixed in the graph: checked later at the teacher's input shape
    batch = dims[0] or _PARITY_BATCH
    shape = [batch, *dims[1:]]
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape).astype(np.float32)
    try:
        session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        reference = session.run(None, {session.get_inputs()[0].name: x})[0]
    except Exception as err:  # noqa: BLE001 - onnxruntime rejects the user's graph: one line
        raise UserError(f"{path}: onnxruntime cannot run the ONNX graph ({error_line(err)})") from None
    try:
        with torch.no_grad():
            ours = module(torch.from_numpy(x)).float().numpy()
    except Exception as err:  # noqa: BLE001 - a graph our ops cannot run: one line
        raise UserError(f"{path}: the torch conversion of the ONNX graph cannot run ({error_line(err)})") from None
    if ours.shape != reference.shape:
        raise UserError(f"{path}: the converted graph gives shape {ours.shape}, onnxruntime {reference.shape}")
    diff = np.abs(ours.astype(np.float64) - reference.astype(np.float64))
    worst = np.unravel_index(int(np.argmax(diff)), diff.shape)
    tolerance = PARITY_TOLERANCE * max(1.0, float(np.abs(reference).max()))
    if not np.isfinite(diff).all() or diff[worst] > tolerance:
        raise UserError(
            f"{path}: the torch conversion of the ONNX graph differs from onnxruntime by {diff[worst]:.3g} at "
            f"output {list(map(int, worst))} (onnxruntime {reference[worst]:.6g}, torch {ours[worst]:.6g}; "
            f"tolerance {tolerance:.3g}); report the model's operators")
    notes.append(f"ONNX graph converted to torch; max |difference| from onnxruntime {float(diff.max()):.2e} "
                 f"on {batch} random inputs")


def load_onnx(path: Path, device: str | torch.device) -> tuple[nn.Module, list[int | None], list[str], dict[str, Any]]:
    """The ONNX file as a torch module, the graph input's dims (None where not fixed), notes, and its metadata."""
    from .onnx_graph import OnnxGraphModule, unsupported_node

    model = _read(path)
    dims = _graph_dims(path, model)
    node = unsupported_node(model.graph)
    if node is not None:
        domain = f" of domain '{node.domain}'" if node.domain not in ("", "ai.onnx") else ""
        raise UserError(f"{path}: the ONNX operator '{node.op_type}'{domain} (node '{node.name or node.output[0]}') "
                        "is not supported; export the classifier without it")
    try:
        module: nn.Module = OnnxGraphModule(model.graph)
    except NotImplementedError as err:
        raise UserError(f"{path}: cannot convert the ONNX graph: {err} is not supported") from None
    notes: list[str] = []
    _parity(path, model, module, dims, notes)
    if dims and dims[0] is not None:
        notes.append(f"ONNX graph has a fixed batch size {dims[0]}; batches are run in chunks of {dims[0]}")
        module = BatchChunks(module, dims[0])
    bn_count = sum(1 for n in model.graph.node if n.op_type == "BatchNormalization")
    if bn_count == 0 and any(n.op_type == "Conv" for n in model.graph.node):
        notes.append("the ONNX graph has no BatchNormalization node; if the model had BatchNorm, the export folded "
                     "it into the convolutions: export with do_constant_folding=False and "
                     "training=TrainingMode.PRESERVE to keep the statistics the BN loss matches")
    return module.to(device), dims, notes, _metadata(path, model)
