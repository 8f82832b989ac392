"""The user's description of a teacher: class names, per-channel numbers and input shapes as typed on the
command line, the ``<file>.json`` metadata sidecar next to the teacher file, and mean/std spread over channels.

Example::

    parse_classes("cat,dog,bird")          # ["cat", "dog", "bird"]
    parse_shape("3,32,32")                 # (3, 32, 32)
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..core.errors import UserError, first_line
from ..core.strict import closest_name

__all__ = ["parse_classes", "parse_floats", "parse_shape"]

DEFAULT_INPUT_SHAPE = (3, 32, 32)
_META_KEYS = ("classes", "input_shape", "mean", "std", "arch")
# timm's (pretrained_cfg) and Hugging Face's (config.json, preprocessor_config.json) names for the same things
_META_ALIASES = {"label_names": "classes", "id2label": "classes", "input_size": "input_shape",
                 "image_mean": "mean", "image_std": "std", "architecture": "arch"}


def parse_classes(value: str) -> list[str]:
    """Class names from a file (one per line, blank lines ignored) or a comma-separated list.

    Example: ``parse_classes("cat,dog,bird")`` -> ``["cat", "dog", "bird"]``.
    """
    text = str(value)
    p = Path(text)
    if text and p.is_file():
        try:
            names = [line.strip() for line in p.read_text(encoding="utf-8").splitlines()]
        except (OSError, UnicodeDecodeError) as err:
            raise UserError(f"{p}: cannot read class names ({err})") from None
        names = [n for n in names if n]
        where = str(p)
    else:
        if "," not in text and (os.sep in text or "/" in text or p.suffix.lower() in {".txt", ".names", ".csv"}):
            raise UserError(
                f"{text}: no such file; pass a file with one class name per line or a comma-separated list"
            )
        names = [n.strip() for n in text.split(",")]
        if any(not n for n in names) and any(names):
            raise UserError(f"empty class name in '{text}'; separate names with single commas")
        names = [n for n in names if n]
        where = f"'{text}'"
    if not names:
        raise UserError(f"no class names in {where}; give a file with one per line or a comma-separated list")
    seen: set[str] = set()
    for n in names:
        if n in seen:
            raise UserError(f"duplicate class name '{n}' in {where}; class names must be unique")
        seen.add(n)
    return names


def parse_floats(value: str, n: int | None = None) -> tuple[float, ...]:
    """Comma-separated numbers, e.g. ``"0.485,0.456,0.406"``; ``n`` is the required count."""
    parts = [s.strip() for s in str(value).split(",")]
    try:
        numbers = tuple(float(s) for s in parts)
    except ValueError:
        raise UserError(f"'{value}' is not a comma-separated list of numbers (e.g. 0.5,0.5,0.5)") from None
    if not all(math.isfinite(v) for v in numbers):
        raise UserError(f"'{value}' contains a non-finite number; give finite values")
    if n is not None and len(numbers) != n:
        raise UserError(f"'{value}' has {len(numbers)} numbers; expected {n}")
    return numbers


def parse_shape(value: str) -> tuple[int, int, int]:
    """An input shape ``"C,H,W"``, e.g. ``"3,32,32"``."""
    parts = [s.strip() for s in str(value).replace("x", ",").split(",")]
    try:
        dims = tuple(int(s) for s in parts)
    except ValueError:
        raise UserError(f"input shape '{value}' is not C,H,W (e.g. 3,32,32)") from None
    if len(dims) != 3 or any(d <= 0 for d in dims):
        raise UserError(f"input shape '{value}' is not C,H,W with three positive integers (e.g. 3,32,32)")
    return dims  # type: ignore[return-value]


# --------------------------------------------------------------------------------------- metadata


def _metadata_path(path: Path) -> Path | None:
    for cand in (path.with_name(path.name + ".json"), path.with_suffix(".json")):
        if cand != path and cand.is_file():
            return cand
    return None


def read_json_object(path: Path, expected: str = "a JSON object") -> dict[str, Any]:
    """A JSON file holding an object; UserError in one line for anything else."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UserError(f"{path}: not valid JSON ({first_line(err)})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected {expected}")
    return data


def id2label_names(id2label: dict[Any, Any]) -> list[Any] | None:
    """The values of an ``id2label`` mapping ({"0": "cat", …}, Hugging Face's and timm's) in index order; None when
    its keys are not integers."""
    try:
        return [id2label[k] for k in sorted(id2label, key=int)]
    except (TypeError, ValueError):
        return None


def read_metadata(path: Path) -> tuple[dict[str, Any], Path | None]:
    meta_path = _metadata_path(path)
    if meta_path is None:
        return {}, None
    data = read_json_object(meta_path, f"a JSON object with keys {', '.join(_META_KEYS)}")
    out: dict[str, Any] = {}
    allowed = (*_META_KEYS, *_META_ALIASES)
    for given_key, value in data.items():
        if given_key not in allowed:
            raise UserError(
                f"{meta_path}: unknown key {given_key!r}{closest_name(given_key, allowed)}; "
                f"allowed keys: {', '.join(_META_KEYS)} (or timm's and Hugging Face's "
                f"{', '.join(_META_ALIASES)})"
            )
        key = _META_ALIASES.get(given_key, given_key)
        if key in out:
            raise UserError(f"{meta_path}: '{given_key}' gives {key} a second time; keep one of them")
        where = f"{meta_path}: '{given_key}'"
        if given_key == "id2label" and isinstance(value, dict):
            value = id2label_names(value)
            if value is None:
                raise UserError(f"{where} must map class indices 0…N-1 to names")
        if key == "classes":
            if not isinstance(value, list) or not value or not all(isinstance(c, str) and c for c in value):
                raise UserError(f"{where} must be a non-empty list of class-name strings")
            if len(set(value)) != len(value):
                dup = next(c for c in value if value.count(c) > 1)
                raise UserError(f"{where} has the duplicate class name '{dup}'")
            out[key] = list(value)
        elif key == "input_shape":
            if (
                not isinstance(value, list)
                or len(value) != 3
                or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in value)
            ):
                raise UserError(f"{where} must be [C, H, W] with three positive integers, got {value!r}")
            out[key] = tuple(value)
        elif key in ("mean", "std"):
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                value = [value]
            if (
                not isinstance(value, list)
                or not value
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
            ):
                raise UserError(f"{where} must be a list of numbers, got {value!r}")
            out[key] = tuple(float(v) for v in value)
        elif key == "arch":
            if not isinstance(value, str) or not value:
                raise UserError(f"{where} must be a model name string")
            out[key] = value
    return out, meta_path


def channels_values(name: str, values: Sequence[float], channels: int) -> tuple[float, ...]:
    values = tuple(float(v) for v in values)
    if len(values) == 1:
        values = values * channels
    if len(values) != channels:
        raise UserError(
            f"{name} has {len(values)} values but the teacher takes {channels} channels; "
            f"give 1 or {channels} values"
        )
    if not all(math.isfinite(v) for v in values):
        raise UserError(f"{name} contains a non-finite value; give finite numbers")
    if name == "std" and any(v <= 0 for v in values):
        raise UserError("std values must be positive")
    return values

