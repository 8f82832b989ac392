"""SIGINT/SIGTERM handling: the first signal only asks for a stop, a second aborts, the handlers come back."""

from __future__ import annotations

import os
import signal
import time

import pytest

from nayer_edge.cli.errors import interrupted_line
from nayer_edge.core.interrupt import Interrupted, graceful_stop


def _deliver(signum: int) -> None:
    os.kill(os.getpid(), signum)
    time.sleep(0.01)  # Python runs the handler at the next bytecode, in this thread


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_first_signal_asks_second_aborts(signum):
    before = signal.getsignal(signum)
    with pytest.raises(Interrupted) as raised:
        with graceful_stop() as stop:
            _deliver(signum)
            assert stop.signum == signum  # asked, nothing raised
            _deliver(signal.SIGINT)
    assert not raised.value.graceful and raised.value.exit_code == 128 + signal.SIGINT
    assert signal.getsignal(signum) is before


def test_a_repeat_inside_the_window_is_the_same_interruption():
    with graceful_stop(repeat_window=60) as stop:
        _deliver(signal.SIGINT)
        _deliver(signal.SIGTERM)  # torchrun forwarding the terminal's Ctrl-C: not a second signal
    assert stop.signum == signal.SIGINT


def test_interrupted_lines():
    argv = ["distill", "teacher.pt", "--out", "runs/my run"]
    graceful = Interrupted(signal.SIGTERM, graceful=True, checkpoint="runs/my run/checkpoint.pt",
                           where="in epoch 2/4 after KD step 5/10")
    assert interrupted_line(graceful, argv) == (
        "stopped by SIGTERM in epoch 2/4 after KD step 5/10: checkpoint runs/my run/checkpoint.pt; resume with: "
        "nayer-edge distill teacher.pt --out 'runs/my run' --resume")
    assert graceful.exit_code == 143
    early = Interrupted(signal.SIGINT, graceful=False)
    assert interrupted_line(early, argv).startswith("aborted by SIGINT before any checkpoint was written; start "
                                                     "again with: nayer-edge distill teacher.pt")
    assert interrupted_line(early, ["export", "runs/x"]) == "aborted by SIGINT"


def test_signals_in_a_deferred_block_arrive_after_it():
    from nayer_edge.core.interrupt import abort_on_signals, signals_deferred

    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    abort_on_signals()
    try:
        done = []
        with pytest.raises(Interrupted) as raised:
            with signals_deferred():
                _deliver(signal.SIGTERM)
                done.append("first rename")  # not interrupted in between
                done.append("second rename")
            done.append("after the block")  # the pending signal is delivered as the block ends
        assert done == ["first rename", "second rename"] and raised.value.signal_name == "SIGTERM"
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def test_an_abort_names_the_checkpoint_on_disk(tmp_path):
    from nayer_edge.core.interrupt import names_checkpoint

    with pytest.raises(Interrupted) as raised, names_checkpoint(tmp_path / "checkpoint.pt"):
        raise Interrupted(signal.SIGINT, graceful=False)
    assert raised.value.checkpoint is None  # none on disk: "before any checkpoint was written"
    (tmp_path / "checkpoint.pt").write_bytes(b"x")
    with pytest.raises(Interrupted) as raised, names_checkpoint(tmp_path / "checkpoint.pt"):
        raise Interrupted(signal.SIGINT, graceful=False)
    assert raised.value.checkpoint == tmp_path / "checkpoint.pt"
    assert interrupted_line(raised.value, ["compress", "t.pt", "--out", "r"]).endswith(
        "nayer-edge compress t.pt --out r --resume")


def test_remove_temporaries_clears_staging_folders_and_keeps_the_rest(tmp_path):
    from nayer_edge.core.atomic import remove_temporaries

    for name in (".checkpoint.pt.abc.tmp", "samples.npz.tmp"):
        (tmp_path / name).write_bytes(b"partial")
    for name in (".student.onnx.k2j.tmp", ".bundle.x1.tmp", ".bundle.q9.old"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "model.onnx").write_bytes(b"partial")
    for name in ("checkpoint.pt", "samples.npz", "student.onnx", "bundle", "notes.tmp.txt"):
        (tmp_path / name).write_bytes(b"kept")
    remove_temporaries(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle", "checkpoint.pt", "notes.tmp.txt", "samples.npz",
                                                          "student.onnx"]
