"""Dependencies imported on demand (heavy, or only some users need them): every import of one goes through
:func:`require`, which fails in one line that names what to install (the extra that brings it,
``pip install 'nayer-edge[bench]'``, or the base dependency a partial install lacks), not with a traceback.

Example::

    onnx = require("onnx")
    numpy_helper = require("onnx.numpy_helper")
"""

from __future__ import annotations

import importlib
from types import ModuleType

from .errors import MissingDependencyError

# Top-level module -> (the name a user installs, the extra of pyproject.toml that installs it, None for a base
# dependency imported late only to keep `import nayer_edge` fast). A test checks both against pyproject.toml.
EXTRAS: dict[str, tuple[str, str | None]] = {
    "onnx": ("onnx", None),
    "onnxruntime": ("onnxruntime", None),
    "transformers": ("transformers", None),
    "safetensors": ("safetensors", None),
    "sklearn": ("scikit-learn", None),
    "skimage": ("scikit-image", "bench"),
    "timm": ("timm", "timm"),  # --arch timm:NAME; it needs torchvision, so it is not in [all]
}


def require(module: str) -> ModuleType:
    """``importlib.import_module(module)``; MissingDependencyError naming the extra when it is not installed."""
    top = module.split(".", 1)[0]
    if top not in EXTRAS:
        raise KeyError(f"{top} is not an optional dependency of nayer-edge (optional.EXTRAS)")
    try:
        return importlib.import_module(module)
    except ImportError:
        package, extra = EXTRAS[top]
        raise MissingDependencyError(package, extra) from None
