"""Optional dependencies: every import of one goes through :func:`require`, which fails in one line that names
the install extra that brings it (``pip install 'nayer-edge[onnx]'``), not with a traceback.

Example::

    onnx = require("onnx")
    numpy_helper = require("onnx.numpy_helper")
"""

from __future__ import annotations

import importlib
from types import ModuleType

from .errors import MissingDependencyError

# Top-level module -> (the name a user installs, the extra of pyproject.toml that installs it). A test checks
# that every extra named here exists there.
EXTRAS = {
    "onnx": ("onnx", "onnx"),
    "onnxruntime": ("onnxruntime", "onnx"),
    "transformers": ("transformers", "text"),
    "safetensors": ("safetensors", "text"),
    "sklearn": ("scikit-learn", "demo"),
    "skimage": ("scikit-image", "all"),
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
