"""The device-side scripts (``export/``: build_engine.py, check.py, bundle_io.py, trt_runner.py): where this
installation keeps them, and each importable here (the bundle's format, hashes and checks are bundle_io's)."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType

from ..core.data_dirs import data_dir

__all__ = ["DEVICE_SCRIPTS", "device_scripts_dir", "device_module"]

DEVICE_SCRIPTS = ("build_engine.py", "check.py", "bundle_io.py", "trt_runner.py")


def device_scripts_dir() -> Path:
    """Where the device-side scripts are: ``export/`` in a source checkout (editable install), else
    ``<prefix>/share/nayer-edge/export`` where a wheel's data-files put them."""
    return data_dir("export", DEVICE_SCRIPTS)


def device_module(name: str) -> ModuleType:
    """Import a device script by file (they import their siblings by plain name) without leaving the
    scripts folder on ``sys.path``."""
    key = f"nayer_edge._device_{name}"
    if key in sys.modules:
        return sys.modules[key]
    folder = str(device_scripts_dir())
    saved = list(sys.path)
    sys.path.insert(0, folder)
    try:
        spec = importlib.util.spec_from_file_location(key, os.path.join(folder, f"{name}.py"))
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[key] = module
        spec.loader.exec_module(module)
    finally:
        sys.path[:] = saved
    return module
