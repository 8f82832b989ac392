"""Small edits of ONNX graphs shared by the quantizers and converters."""

from __future__ import annotations

from typing import Any

from .errors import UserError


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
