"""SIGINT/SIGTERM handling: the first signal only asks for a stop, a second aborts, the handlers come back."""

from __future__ import annotations

import os
import signal
import time

import pytest

from nayer_edge.cli import _interrupted_line
from nayer_edge.interrupt import Interrupted, graceful_stop


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
    assert _interrupted_line(graceful, argv) == (
        "stopped by SIGTERM in epoch 2/4 after KD step 5/10: checkpoint runs/my run/checkpoint.pt; resume with: "
        "nayer-edge distill teacher.pt --out 'runs/my run' --resume")
    assert graceful.exit_code == 143
    early = Interrupted(signal.SIGINT, graceful=False)
    assert _interrupted_line(early, argv).startswith("aborted by SIGINT before any checkpoint was written; start "
                                                     "again with: nayer-edge distill teacher.pt")
    assert _interrupted_line(early, ["export", "runs/x"]) == "aborted by SIGINT"
