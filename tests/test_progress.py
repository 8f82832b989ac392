"""Progress a CI log can read: one line per epoch and stage on a stderr that is no terminal, written as it
happens; --log-json's JSON lines; --quiet and --verbose; live bars on a terminal."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import time

import pytest
from conftest import REPO, TEST_RECIPE, run_cli

from nayer_edge.core.progress import Progress
from nayer_edge.core.progress_sinks import JsonLines, LiveBars, PlainLines, duration

TINY = ["--recipe", TEST_RECIPE, "--student", "cnn_tiny", "--synthesis-batch", "60", "--kd-batch", "64",
        "--kd-steps", "20", "--g-steps", "4", "--embedding", "onehot", "--device", "cpu"]
EPOCH_LINE = re.compile(r"^epoch (\d+)/(\d+) · elapsed (\d+\.\d+s|\d+m\d\ds) · eta ")


def _console(terminal: bool = False):
    from rich.console import Console

    return Console(file=io.StringIO(), force_terminal=terminal, width=120)


def test_distill_prints_a_line_per_epoch_into_a_pipe_as_it_goes(digits_teacher, tmp_path):
    """stdout and stderr piped (no terminal): each epoch's line, with its number and elapsed time, is in the
    output before the result, and the first one arrives while the run is still going; -v adds the rounds;
    --log-json gets the same events as JSON lines, ending with the result."""
    log = tmp_path / "events.jsonl"
    command = [sys.executable, "-m", "nayer_edge", "distill", str(digits_teacher.path), "--out", str(tmp_path / "run"),
               "--eval-data", str(digits_teacher.eval_path), "--epochs", "2", "--log-json", str(log), "-v", *TINY]
    process = subprocess.Popen(command, cwd=REPO, env={**os.environ, "PYTHONWARNINGS": "ignore"},
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines, running = [], []
    assert process.stdout is not None
    for line in process.stdout:
        lines.append(line.rstrip("\n"))
        running.append(process.poll() is None)
    assert process.wait(timeout=300) == 0, "\n".join(lines[-40:])
    output = "\n".join(lines)
    result_at = next(i for i, line in enumerate(lines) if "artefacts in" in line)
    epochs = {int(m.group(1)): i for i, line in enumerate(lines) if (m := EPOCH_LINE.match(line))}
    assert sorted(epochs) == [1, 2], output
    assert all(i < result_at for i in epochs.values()), output
    assert running[epochs[1]], "the first epoch's line came only when the process had ended"
    first = lines[epochs[1]]
    assert "kd " in first and "agreement " in first and "accuracy " in first, first
    assert any(re.match(r"^round 1/\d+ of epoch 1 · kept loss [-\d.]", line) for line in lines), output
    assert any(line.startswith("stage distill done in ") for line in lines[:result_at]), output

    events = [json.loads(line) for line in log.read_text().splitlines()]
    assert events[0]["event"] == "start" and events[0]["command"] == "distill"
    assert events[-1]["event"] == "result" and events[-1]["exit_code"] == 0
    assert events[-1]["epochs"] == 2 and 0 <= events[-1]["student_accuracy"] <= 1
    epoch_events = [e for e in events if e["event"] == "epoch"]
    assert [e["epoch"] for e in epoch_events] == [1, 2]
    for e in epoch_events:
        assert e["epochs"] == 2 and e["elapsed_s"] > 0 and e["eta_s"] >= 0 and e["loss_kd"] > 0
        assert 0 <= e["agreement"] <= 1 and 0 <= e["accuracy"] <= 1
    assert epoch_events[1]["eta_s"] == pytest.approx(0, abs=1e-6)  # the last epoch: nothing left
    assert epoch_events[0]["elapsed_s"] < epoch_events[1]["elapsed_s"] < events[-1]["elapsed_s"]
    stages = [(e["stage"], e["status"]) for e in events if e["event"] == "stage"]
    assert ("distill", "start") in stages and ("distill", "done") in stages and ("artefacts", "done") in stages
    rounds = [e for e in events if e["event"] == "round"]
    assert rounds and all(e["seconds"] > 0 and "loss_g" in e for e in rounds)


def test_quiet_prints_no_progress_and_a_bad_log_path_is_one_line(digits_teacher, tmp_path):
    quiet = run_cli("distill", str(digits_teacher.path), "--out", str(tmp_path / "run"), "--epochs", "1", "-q", *TINY)
    assert quiet.returncode == 0, quiet.stderr[-3000:]
    assert "artefacts in" in quiet.stdout
    shown = [line for line in (quiet.stderr + quiet.stdout).splitlines()
             if line.startswith(("epoch ", "stage ", "round ", "plan"))]
    assert not shown, shown

    missing = tmp_path / "no_such_folder" / "events.jsonl"
    bad = run_cli("distill", str(digits_teacher.path), "--out", str(tmp_path / "other"), "--log-json", str(missing),
                  *TINY)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr, bad.stderr[-3000:]
    lines = [line for line in bad.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "--log-json" in lines[0] and "does not exist" in lines[0], bad.stderr
    assert not (tmp_path / "other").exists() and not missing.parent.exists()


def test_plain_lines_and_json_lines_carry_the_same_events(tmp_path):
    console = _console()
    progress = Progress([PlainLines(console), JsonLines(tmp_path / "log.jsonl")], started=time.perf_counter() - 5)
    with progress:
        with progress.stage("qat", layout="ort"):
            for done in range(1, 21):
                progress.steps("qat", done, 20, logged=True)
        progress.emit("epoch", epoch=1, epochs=4, eta_s=30.0, loss_kd=0.5, loss_g=2.0, loss_bn=float("nan"),
                      agreement=0.5, accuracy=None)
        progress.result("quantize", {"passed": False, "history": [1, 2], "int8_onnx": "x.onnx"})
    text = console.file.getvalue().splitlines()
    # A step line at every tenth of the steps, the stage's line when it is done, then the epoch.
    assert [line.split(" · ")[0] for line in text[:10]] == [f"qat step {n}/20" for n in range(2, 21, 2)]
    assert len(text) == 12
    assert text[10].startswith("stage qat done in ") and text[10].endswith("elapsed 5.0s")
    assert text[11] == "epoch 1/4 · elapsed 5.0s · eta 30.0s · kd 0.5 · bn nan · agreement 50.0%"
    events = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [e["event"] for e in events] == ["stage"] + ["steps"] * 10 + ["stage", "epoch", "result"]
    assert events[0]["layout"] == "ort" and events[11]["status"] == "done" and events[11]["seconds"] >= 0
    assert events[12]["loss_bn"] is None and events[12]["loss_g"] == 2.0  # NaN is not JSON: null
    assert events[-1] == {**events[-1], "command": "quantize", "exit_code": 1, "int8_onnx": "x.onnx"}
    assert "history" not in events[-1] and events[-1]["time"].endswith("Z")
    assert [duration(s) for s in (3.25, 65, 7260)] == ["3.2s", "1m05s", "2h01m"]


def test_a_failed_stage_says_nothing_on_the_console_and_is_logged(tmp_path):
    from nayer_edge.core.errors import UserError

    console = _console()
    progress = Progress([PlainLines(console), JsonLines(tmp_path / "log.jsonl")])
    with pytest.raises(UserError), progress, progress.stage("plan"):
        raise UserError("the budget is too small")
    assert console.file.getvalue() == ""  # the command's error line alone says what happened
    failed = json.loads((tmp_path / "log.jsonl").read_text().splitlines()[-1])
    assert (failed["stage"], failed["status"], failed["reason"]) == ("plan", "failed", "error")
    assert failed["error"] == "the budget is too small"


def test_live_bars_on_a_terminal(tmp_path):
    console = _console(terminal=True)
    bars = LiveBars(console)
    progress = Progress([bars])
    with progress:
        with progress.stage("distill", epochs=3, start_epoch=0):
            for epoch in (1, 2, 3):
                progress.steps("synthesis", 1, 1)
                progress.steps("kd", 10, 20)
                progress.emit("epoch", epoch=epoch, epochs=3, eta_s=1.0, loss_kd=0.25, agreement=0.75)
            shown = {task.description: task for task in bars.bars.tasks}
            assert (shown["epochs"].completed, shown["epochs"].total) == (3, 3)
            assert shown["epochs"].fields["info"] == "kd 0.25 · agreement 75.0%"
            assert (shown["kd"].completed, shown["kd"].total) == (10, 20)
            bars.bars.refresh()
        assert not bars.running and not bars.bars.tasks  # no stage open: no live display
        with progress.stage("quantize"), progress.stage("qat"):
            progress.steps("qat", 5, 10, logged=True)
            assert [(t.description, t.completed) for t in bars.bars.tasks] == [("quantize", 0), ("qat", 5)]
    text = console.file.getvalue()
    assert "kd 0.25 · agreement 75.0%" in text
    assert "stage distill done in" in text and "stage qat done in" in text and "stage quantize done in" in text
    assert not bars.running
