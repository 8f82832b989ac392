"""What a fresh install's user meets first: `--version`, shell completion, and the demo teacher as files
(`demo --teacher-only`, what .ci/wheel_smoke.sh compresses)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import tomllib
from conftest import REPO, run_cli

VERSION = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]


def test_version_prints_the_installed_version_without_importing_torch():
    code = ("import sys; sys.argv = ['nayer-edge', '--version']; from nayer_edge.cli import main\n"
            "try:\n    main()\nfinally:\n    print('torch' in sys.modules, file=sys.stderr)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"nayer-edge {VERSION}\n"
    assert result.stderr.strip() == "False"  # torch was not imported
    from nayer_edge import __version__

    assert __version__ == VERSION  # the fallback of a bare checkout says the same


def test_completion_is_offered_and_the_bare_command_still_shows_help():
    help_text = run_cli("--help", env={"COLUMNS": "200"})
    assert help_text.returncode == 0
    for option in ("--version", "--install-completion", "--show-completion"):
        assert option in help_text.stdout, option
    # Typer's switch that makes the shell an argument instead of detected from the parent processes.
    shown = run_cli("--show-completion", "bash", env={"_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION": "1"})
    assert shown.returncode == 0, shown.stderr
    assert "_NAYER_EDGE_COMPLETE" in shown.stdout and "complete" in shown.stdout
    # The completion protocol itself: what bash asks for when the user types `nayer-edge dem<TAB>`.
    asked = run_cli(env={"_NAYER_EDGE_COMPLETE": "complete_bash", "COMP_WORDS": "nayer-edge dem", "COMP_CWORD": "1"})
    assert asked.returncode == 0, asked.stderr
    assert "demo" in asked.stdout
    bare = run_cli()
    assert bare.returncode == 2 and "Usage" in bare.stdout + bare.stderr and "Traceback" not in bare.stderr


def _cached_demo_teacher(cache: Path, teacher) -> None:
    """A demo-teacher cache as ensure_digits_teacher leaves it, from the suite's digits teacher (no training)."""
    folder = cache / "demo"
    folder.mkdir(parents=True)
    (folder / "digits_teacher.pt").write_bytes(teacher.path.read_bytes())
    (folder / "digits_teacher.pt.json").write_bytes(teacher.path.with_suffix(".pt.json").read_bytes())
    (folder / "digits_heldout.npz").write_bytes(teacher.eval_path.read_bytes())
    (folder / "info.json").write_text(json.dumps({"accuracy": teacher.accuracy, "arch": "cnn_small"}))


def test_demo_teacher_only_writes_the_teacher_files(digits_teacher, tmp_path):
    cache, out = tmp_path / "cache", tmp_path / "teacher"
    _cached_demo_teacher(cache, digits_teacher)
    result = run_cli("demo", "--teacher-only", str(out), "--json", env={"NAYER_EDGE_CACHE": str(cache)})
    assert result.returncode == 0, result.stderr
    written = json.loads(result.stdout)
    assert written == {"teacher": str(out / "digits_teacher.pt"), "metadata": str(out / "digits_teacher.pt.json"),
                       "eval_data": str(out / "digits_heldout.npz"), "teacher_accuracy": digits_teacher.accuracy}
    for name in ("digits_teacher.pt", "digits_teacher.pt.json", "digits_heldout.npz"):
        assert (out / name).read_bytes() == (cache / "demo" / name).read_bytes(), name
    assert sorted(p.name for p in out.iterdir()) == ["digits_heldout.npz", "digits_teacher.pt",
                                                     "digits_teacher.pt.json"]
    # The files are a teacher compress takes as it is: its metadata sidecar is found and read.
    inspected = run_cli("inspect", written["teacher"], "--json")
    assert inspected.returncode == 0, inspected.stderr
    assert json.loads(inspected.stdout)["input_shape"] == [1, 16, 16]
    said = run_cli("demo", "--teacher-only", str(tmp_path / "again"), env={"NAYER_EDGE_CACHE": str(cache)})
    assert said.returncode == 0 and f"nayer-edge compress {tmp_path / 'again' / 'digits_teacher.pt'}" in said.stdout


def test_demo_teacher_only_refuses_the_job_options(tmp_path):
    out = tmp_path / "teacher"
    result = run_cli("demo", "--teacher-only", str(out), "--epochs", "3", "--resume",
                     env={"NAYER_EDGE_CACHE": str(tmp_path / "cache")})
    assert result.returncode == 2 and "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "--teacher-only writes the teacher and stops; --epochs, --resume" in lines[0], lines
    assert not out.exists() and not (tmp_path / "cache").exists()
