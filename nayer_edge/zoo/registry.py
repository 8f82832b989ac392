"""Registry of student architectures: ``@register_model`` factories looked up by name (timm-style).

A student is named either by a registered model (``"resnet18"``) or by a user factory
``"package.module:factory"`` (or ``"path/to/file.py:factory"``) that returns an ``nn.Module``.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from pathlib import Path
from typing import Any, Callable

from torch import nn

from ..core.errors import UserError
from ..core.strict import closest_name

ModelFactory = Callable[..., nn.Module]

_MODEL_FACTORIES: dict[str, ModelFactory] = {}


def register_model(fn: ModelFactory) -> ModelFactory:
    """Register ``fn`` as a model factory under its function name; returns ``fn`` unchanged.

    Example::

        @register_model
        def my_net(num_classes: int = 10, in_channels: int = 3, input_size: int = 32) -> nn.Module:
            ...
    """
    name = fn.__name__
    if name in _MODEL_FACTORIES and _MODEL_FACTORIES[name] is not fn:
        raise ValueError(f"model '{name}' is already registered")
    _MODEL_FACTORIES[name] = fn
    return fn


def list_models() -> list[str]:
    """Names of all registered models, sorted.

    Example: ``list_models()`` -> ``['cnn_small', 'cnn_tiny', 'mobilenetv2', ...]``
    """
    return sorted(_MODEL_FACTORIES)


def _check_shape_args(num_classes: int, in_channels: int, input_size: int) -> None:
    for what, value in (("num_classes", num_classes), ("in_channels", in_channels), ("input_size", input_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise UserError(f"{what} must be a positive integer, got {value!r}")


def create_model(name: str, *, num_classes: int, in_channels: int = 3, input_size: int = 32) -> nn.Module:
    """Build the registered model ``name``; an unknown name raises UserError with a suggestion.

    Example: ``create_model("resnet18", num_classes=10)``
    """
    _check_shape_args(num_classes, in_channels, input_size)
    factory = _MODEL_FACTORIES.get(name)
    if factory is None:
        raise UserError(
            f"unknown model '{name}'{closest_name(name, _MODEL_FACTORIES)}; "
            f"available: {', '.join(list_models())}"
        )
    return factory(num_classes=num_classes, in_channels=in_channels, input_size=input_size)


def _import_module_of(module_ref: str, spec: str) -> Any:
    if module_ref.endswith(".py"):
        path = Path(module_ref).expanduser().resolve()
        if not path.is_file():
            raise UserError(f"student factory '{spec}': file {module_ref} not found")
        import_spec = importlib.util.spec_from_file_location(path.stem, path)
        if import_spec is None or import_spec.loader is None:
            raise UserError(f"student factory '{spec}': cannot import {module_ref}")
        module = importlib.util.module_from_spec(import_spec)
        try:
            import_spec.loader.exec_module(module)
        except Exception as err:
            raise UserError(f"student factory '{spec}': importing {module_ref} failed: {err}") from err
        return module

    # A user's own module file in the working directory should import like an installed one.
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    importlib.invalidate_caches()
    try:
        return importlib.import_module(module_ref)
    except ModuleNotFoundError as err:
        missing = err.name or module_ref
        if module_ref == missing or module_ref.startswith(missing + "."):
            raise UserError(
                f"student factory '{spec}': module '{module_ref}' not found "
                f"(looked in the current directory and installed packages)"
            ) from err
        raise UserError(f"student factory '{spec}': importing '{module_ref}' failed: {err}") from err
    except Exception as err:
        raise UserError(f"student factory '{spec}': importing '{module_ref}' failed: {err}") from err


def load_factory(spec: str) -> Callable[..., Any]:
    """Import ``"package.module:factory"`` (or ``"file.py:factory"``) and return the callable.

    The current working directory is put on ``sys.path`` so a local ``my_students.py`` works.
    Every failure raises UserError with one line.

    Example: ``load_factory("my_students:tiny_net")(num_classes=10, in_channels=1)``
    """
    module_ref, sep, attr = spec.rpartition(":")
    if not sep or not module_ref or not attr:
        raise UserError(f"student factory '{spec}' must look like 'package.module:factory'")
    module = _import_module_of(module_ref, spec)
    try:
        factory = getattr(module, attr)
    except AttributeError:
        public = [n for n in dir(module) if not n.startswith("_")]
        raise UserError(
            f"student factory '{spec}': module '{module_ref}' has no attribute '{attr}'"
            f"{closest_name(attr, public)}"
        ) from None
    if not callable(factory):
        raise UserError(f"student factory '{spec}': '{attr}' is a {type(factory).__name__}, not a callable")
    return factory


def build_student(spec: str, *, num_classes: int, in_channels: int, input_size: int) -> nn.Module:
    """Build a student from a registered name or a ``"module:factory"`` spec.

    A user factory is called as ``factory(num_classes=..., in_channels=...)`` and must return an
    ``nn.Module``.

    Example: ``build_student("wrn16_2", num_classes=10, in_channels=3, input_size=32)``
    """
    if ":" not in spec:
        return create_model(spec, num_classes=num_classes, in_channels=in_channels, input_size=input_size)
    _check_shape_args(num_classes, in_channels, input_size)
    factory = load_factory(spec)
    try:
        model = factory(num_classes=num_classes, in_channels=in_channels)
    except TypeError as err:
        raise UserError(
            f"student factory '{spec}' must accept factory(num_classes=..., in_channels=...): {err}"
        ) from err
    if not isinstance(model, nn.Module):
        raise UserError(f"student factory '{spec}' returned a {type(model).__name__}, not a torch nn.Module")
    return model


def describe_student(spec: str, num_classes: int, in_channels: int, input_size: int) -> dict[str, Any]:
    """The architecture spec that rebuilds this student: ``build_student(**describe_student(...))``.

    Stored next to a student's state dict so the weights can be loaded into the same architecture.
    """
    return {"spec": spec, "num_classes": num_classes, "in_channels": in_channels, "input_size": input_size}
