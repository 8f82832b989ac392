"""JSON Schema (draft-07, what editors' YAML language servers read) of a frozen dataclass config, generated from
its type hints so that the schema cannot drift from what :func:`~nayer_edge.core.strict.from_dict` accepts.

A field's ``metadata`` may carry ``help`` (the schema's ``description``) and ``keys_of`` (a dict field whose keys
are another dataclass's fields, e.g. a recipe's overrides of ``DistillConfig``).

Example::

    schema = dataclass_schema(DistillConfig)   # {"type": "object", "properties": {...}, "additionalProperties": False}
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any

from .strict import to_dict

DRAFT = "http://json-schema.org/draft-07/schema#"
_SCALARS = {str: "string", int: "integer", float: "number", bool: "boolean", type(None): "null"}


def type_schema(hint: Any) -> dict[str, Any]:
    """The schema of one type hint (scalars, None, Literal, unions, lists, tuples, nested dataclasses)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return {}
    if hint in _SCALARS:
        return {"type": _SCALARS[hint]}
    if origin is typing.Literal:
        return {"enum": list(args)}
    if origin in (typing.Union, types.UnionType):
        options = [type_schema(arg) for arg in args]
        if all(set(o) == {"type"} for o in options):  # float | None → {"type": ["number", "null"]}
            return {"type": [o["type"] for o in options]}
        if type(None) in args and all(set(o) <= {"enum", "type"} for o in options):
            enums = [o for o in options if "enum" in o]
            if len(enums) == 1 and len(options) == 2:  # Literal[...] | None
                return {"enum": [*enums[0]["enum"], None]}
        return {"anyOf": options}
    if origin in (list, tuple):
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(set(args)) != 1:
                raise TypeError(f"no schema for a tuple of mixed types: {hint}")
            return {"type": "array", "items": type_schema(args[0]), "minItems": len(args), "maxItems": len(args)}
        return {"type": "array", "items": type_schema(args[0]) if args else {}}
    if origin is dict:
        return {"type": "object"}
    if dataclasses.is_dataclass(hint):
        return dataclass_schema(hint)
    raise TypeError(f"no schema for {hint!r}")


def dataclass_schema(cls: type, *, all_optional: bool = False) -> dict[str, Any]:
    """An object schema of ``cls``'s fields: unknown keys are errors; fields without a default are required
    (none when ``all_optional``, for a mapping of overrides)."""
    hints = typing.get_type_hints(cls)
    properties: dict[str, Any] = {}
    required = []
    for field in dataclasses.fields(cls):
        keys_of = field.metadata.get("keys_of")
        prop = dataclass_schema(keys_of, all_optional=True) if keys_of else type_schema(hints[field.name])
        if "help" in field.metadata:
            prop = {"description": field.metadata["help"], **{k: v for k, v in prop.items() if k != "description"}}
        if field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            if not all_optional:
                required.append(field.name)
        elif (default := _default(field)) is not dataclasses.MISSING:
            prop["default"] = default
        properties[field.name] = prop
    schema: dict[str, Any] = {"type": "object", "properties": properties, "additionalProperties": False}
    if cls.__doc__:
        schema = {"description": " ".join(cls.__doc__.split()), **schema}
    if required:
        schema["required"] = required
    return schema


def _default(field: dataclasses.Field) -> Any:
    """A field's default as JSON (tuples as lists); MISSING for a nested config, whose defaults are on its own
    properties."""
    value = field.default if field.default is not dataclasses.MISSING else field.default_factory()
    return dataclasses.MISSING if dataclasses.is_dataclass(value) else to_dict(value)
