"""Interrupted runs lose no work: killed (SIGKILL, no chance to clean up) during synthesis, during KD, in the
middle of writing a checkpoint or just before its rename, or stopped by SIGINT/SIGTERM, a run restarted with
--resume ends with a student bitwise identical to an uninterrupted run of the same seed on CPU.

Each fault lands at an exact point: tests/interrupt_harness.py runs the real CLI in its process with one
function wrapped (Distiller.synthesize, Distiller.kd_step, torch.save, os.replace). The memory capacity is
small so that the sample ring wraps, and a resumed run must put every sample back in its slot."""

from __future__ import annotations

import hashlib
import os
import shlex
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import REPO, TEST_RECIPE, run_cli

ARGS = ["--recipe", TEST_RECIPE, "--epochs", "4", "--synthesis-batch", "40", "--kd-batch", "32", "--kd-steps", "10",
        "--g-steps", "4", "--memory-capacity", "100", "--device", "cpu", "--embedding", "onehot", "--json"]
HARNESS = str(REPO / "tests" / "interrupt_harness.py")
ENV = {**os.environ, "PYTHONWARNINGS": "ignore"}


def _sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _harness(fault: str, nth: int, out, teacher, *extra: str) -> subprocess.CompletedProcess:
    record = out.parent / "record.txt"
    return subprocess.run([sys.executable, HARNESS, fault, str(nth), str(record), "distill", str(teacher), "--out",
                           str(out), *ARGS, *extra], cwd=REPO, env=ENV, capture_output=True, text=True, timeout=600)


def _position(out) -> tuple[int, int, int]:
    run = torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=True)["run"]
    return run["epoch"], run["round"], run["step"]


def _temporaries(out) -> list:
    return sorted(out.glob(".*.tmp"))


def _one_line(result: subprocess.CompletedProcess) -> str:
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr[-3000:]
    assert result.stdout == ""
    return lines[0]


def _resume_command(line: str) -> list[str]:
    """The command the line tells the user to run, as this test can run it."""
    command = shlex.split(line.split("resume with: ", 1)[1])
    assert command[0] == "nayer-edge" and command[-1] == "--resume"
    return [sys.executable, "-m", "nayer_edge", *command[1:]]


@pytest.fixture(scope="module")
def uninterrupted(digits_teacher, tmp_path_factory):
    out = tmp_path_factory.mktemp("uninterrupted") / "run"
    result = run_cli("distill", str(digits_teacher.path), "--out", str(out), *ARGS)
    assert result.returncode == 0, result.stderr[-2000:]
    return out


def test_sigkill_in_each_phase_then_resume_is_bitwise_identical(uninterrupted, digits_teacher, tmp_path):
    """One run, killed four times in a row at four kinds of points, each time resumed from what the kill left."""
    out, record, teacher = tmp_path / "run", tmp_path / "record.txt", digits_teacher.path

    # During synthesis: the 3rd round is the first of epoch 2; epoch 1's checkpoint is what remains.
    killed = _harness("kill-synthesis", 3, out, teacher)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert _position(out) == (1, 0, 0)

    # During KD: step 15 is in the middle of epoch 3 (epochs 2 and 3 resumed, 10 steps each).
    killed = _harness("kill-kd", 15, out, teacher, "--resume")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert _position(out) == (2, 0, 0)

    # In the middle of writing a checkpoint (the end of epoch 3): the temporary file is truncated, the
    # checkpoint of epoch 2 is byte for byte what it was.
    killed = _harness("kill-mid-write", 1, out, teacher, "--resume")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    (partial,) = _temporaries(out)
    assert 0 < partial.stat().st_size < (out / "checkpoint.pt").stat().st_size
    assert _sha256(out / "checkpoint.pt") == record.read_text()
    assert _position(out) == (2, 0, 0)

    # Between the temporary file (whole, fsynced) and its rename, at the end of epoch 4: epoch 3's remains.
    killed = _harness("kill-before-rename", 2, out, teacher, "--resume")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert _sha256(out / "checkpoint.pt") == record.read_text()
    assert _position(out) == (3, 0, 0)

    resumed = run_cli("distill", str(teacher), "--out", str(out), *ARGS, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert _temporaries(out) == []  # what the killed writers left is cleared
    assert _sha256(out / "student.pt") == _sha256(uninterrupted / "student.pt")


def test_sigint_and_sigterm_stop_gracefully_and_resume_is_bitwise_identical(uninterrupted, digits_teacher, tmp_path):
    """SIGINT, then SIGTERM from another process, then two SIGINTs: each ends with one line and 128 + the
    signal's number; the graceful stops checkpoint the exact step, the double one keeps the last checkpoint."""
    out, record, teacher = tmp_path / "run", tmp_path / "record.txt", digits_teacher.path

    # SIGINT after KD step 15 (epoch 2, step 5): the run checkpoints that very step and says how to go on.
    stopped = _harness("sigint-kd", 15, out, teacher)
    assert stopped.returncode == 130, stopped.stderr[-2000:]
    line = _one_line(stopped)
    assert line.startswith("stopped by SIGINT in epoch 2/4 after KD step 5/10: checkpoint ")
    assert str(out / "checkpoint.pt") in line
    assert _position(out) == (1, 2, 5)
    assert _temporaries(out) == [] and not (out / "student.pt").exists()

    # SIGTERM from outside, as a scheduler sends it, once the resumed run has written its next checkpoint.
    before = (out / "checkpoint.pt").stat().st_mtime_ns
    process = subprocess.Popen(_resume_command(line), cwd=REPO, env=ENV, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while (out / "checkpoint.pt").stat().st_mtime_ns == before and process.poll() is None:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=300)
    if process.returncode == 0:
        pytest.skip("the run finished before SIGTERM reached it (a very fast machine)")
    terminated = subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
    assert terminated.returncode == 143, stderr[-2000:]
    assert _one_line(terminated).startswith("stopped by SIGTERM ")
    assert _position(out) > (1, 2, 5)

    # A second SIGINT while the stop's checkpoint is written aborts at once; the previous checkpoint stays.
    aborted = _harness("double-sigint", 3, out, teacher, "--resume")
    assert aborted.returncode == 130, aborted.stderr[-2000:]
    line = _one_line(aborted)
    assert line.startswith("aborted by SIGINT; the last checkpoint, ") and line.endswith("--resume")
    assert _sha256(out / "checkpoint.pt") == record.read_text()
    assert _temporaries(out) == []

    resumed = subprocess.run(_resume_command(line), cwd=REPO, env=ENV, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert _sha256(out / "student.pt") == _sha256(uninterrupted / "student.pt")


def test_compress_stops_gracefully_and_resumes(uninterrupted, digits_teacher, tmp_path):
    """compress distils first: SIGINT there stops it the same way, and `compress --resume` (the line's command)
    finishes the job with the student an uninterrupted distillation gives."""
    out = tmp_path / "run"
    record = tmp_path / "record.txt"
    stopped = subprocess.run([sys.executable, HARNESS, "sigint-kd", "15", str(record), "compress",
                              str(digits_teacher.path), "--out", str(out), *ARGS], cwd=REPO, env=ENV,
                             capture_output=True, text=True, timeout=600)
    assert stopped.returncode == 130, stopped.stderr[-2000:]
    line = _one_line(stopped)
    assert line.startswith("stopped by SIGINT in epoch 2/4 after KD step 5/10")
    assert " compress " in line and not (out / "report.md").exists()
    resumed = subprocess.run(_resume_command(line), cwd=REPO, env=ENV, capture_output=True, text=True, timeout=600)
    assert resumed.returncode in (0, 1), resumed.stderr[-2000:]  # 1: a gate failed, the job is still done
    assert (out / "report.md").is_file()
    assert _sha256(out / "student.pt") == _sha256(uninterrupted / "student.pt")


def test_compress_killed_then_aborted_while_deploying_resumes(uninterrupted, digits_teacher, tmp_path):
    """After the distillation, in the ONNX export: SIGKILL leaves the exporter's staging folder, SIGINT (not a
    graceful stop there: nothing to checkpoint) names the distillation's checkpoint and `--resume`; that command
    clears what the kill left and finishes with the uninterrupted distillation's student."""
    out, record = tmp_path / "run", tmp_path / "record.txt"

    def harness(fault: str, *extra: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, HARNESS, fault, "1", str(record), "compress", str(digits_teacher.path),
                               "--out", str(out), *ARGS, *extra], cwd=REPO, env=ENV, capture_output=True, text=True,
                              timeout=600)

    killed = harness("kill-export")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert [p.is_dir() for p in _temporaries(out)] == [True]  # .student.onnx.*.tmp/
    assert _position(out)[0] == 4 and not (out / "report.md").exists()

    aborted = harness("sigint-export", "--resume")
    assert aborted.returncode == 130, aborted.stderr[-2000:]
    line = _one_line(aborted)
    assert line.startswith(f"aborted by SIGINT; the last checkpoint, {out / 'checkpoint.pt'}, is intact; resume with: "
                           "nayer-edge compress ") and line.endswith(" --resume"), line
    assert _temporaries(out) == []

    resumed = subprocess.run(_resume_command(line), cwd=REPO, env=ENV, capture_output=True, text=True, timeout=600)
    assert resumed.returncode in (0, 1), resumed.stderr[-2000:]  # 1: a gate failed, the job is still done
    assert (out / "report.md").is_file() and _temporaries(out) == []
    assert _sha256(out / "student.pt") == _sha256(uninterrupted / "student.pt")
