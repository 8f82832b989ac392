"""Small edits of ONNX graphs shared by the quantizers and converters."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..core.errors import UserError, first_line
from ..core.optional import require


def load_fp32_onnx(path: str | os.PathLike[str]) -> Any:
    """The ``ModelProto`` of an FP32 ONNX file that a converter will rewrite; UserError when it is missing,
    unloadable, or already quantized."""
    onnx = require("onnx")
    src = Path(path)
    if not src.is_file():
        raise UserError(f"{src}: no such ONNX file; export one with `nayer-edge export`")
    try:
        model = onnx.load(str(src))
    except Exception as err:  # noqa: BLE001 - onnx raises several types for bad files
        raise UserError(f"{src}: not a loadable ONNX model ({first_line(err)})") from None
    if any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in model.graph.node):
        raise UserError(f"{src} is already quantized; give the FP32 model")
    return model


def topological_order(nodes: list[Any], available: set[str]) -> list[Any]:
    """``nodes`` reordered so every node comes after the producers of its inputs (``available``: graph
    inputs and initializers); the ONNX checker requires it after graph edits."""
    ready, ordered, pending = set(available), [], list(nodes)
    while pending:
        waiting = []
        for node in pending:
            if all(not n or n in ready for n in node.input):
                ordered.append(node)
                ready.update(node.output)
            else:
                waiting.append(node)
        if len(waiting) == len(pending):
            raise UserError("the ONNX graph has a cycle or an undefined input; re-export it")
        pending = waiting
    return ordered


def set_metadata(model: Any, key: str, value: str) -> None:
    """Set (or replace) one ``metadata_props`` entry."""
    for prop in model.metadata_props:
        if prop.key == key:
            prop.value = value
            return
    entry = model.metadata_props.add()
    entry.key, entry.value = key, value
