"""A run killed with SIGKILL (no chance to clean up) and restarted with --resume ends with a student bitwise
identical to an uninterrupted run of the same seed on CPU: RNG states, optimizer, schedule, generator and the
synthetic memory all come back from the last checkpoint, which is always whole (atomic writes)."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import REPO, TEST_RECIPE, run_cli

ARGS = ["--recipe", TEST_RECIPE, "--epochs", "6", "--synthesis-batch", "60", "--kd-batch", "64", "--kd-steps", "20",
        "--g-steps", "6", "--device", "cpu", "--embedding", "onehot", "--json"]


def _sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def uninterrupted(digits_teacher, tmp_path_factory):
    out = tmp_path_factory.mktemp("uninterrupted") / "run"
    result = run_cli("distill", str(digits_teacher.path), "--out", str(out), *ARGS)
    assert result.returncode == 0, result.stderr[-2000:]
    return out


@pytest.mark.parametrize("delay", [0.0, 1.0, 2.5], ids=["at-first-checkpoint", "mid-run", "later"])
def test_sigkill_then_resume_is_bitwise_identical(uninterrupted, digits_teacher, tmp_path, delay):
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    process = subprocess.Popen([sys.executable, "-m", "nayer_edge", "distill", str(digits_teacher.path), "--out",
                                str(out), *ARGS], cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not (out / "checkpoint.pt").exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(delay)
    if process.poll() is not None:
        pytest.skip("the run finished before it could be killed (a very fast machine)")
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not list(out.glob("*.tmp")) and not list(out.glob(".*.tmp"))  # nothing half-written left behind
    resumed = run_cli("distill", str(digits_teacher.path), "--out", str(out), *ARGS, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert _sha256(out / "student.pt") == _sha256(uninterrupted / "student.pt")
