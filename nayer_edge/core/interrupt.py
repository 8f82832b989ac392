"""SIGINT/SIGTERM: the first asks the distillation loop to stop at its next safe point, after writing a
checkpoint; a second aborts at once (the last checkpoint, written atomically, stays valid).

    with graceful_stop() as stop:
        distiller.run(..., stop=lambda: bool(stop.signum), checkpoint=save)

Outside :func:`graceful_stop`, :func:`abort_on_signals` (installed by the CLI) turns either signal into
:class:`Interrupted` at once, so every command ends with one line and exit code 128 + the signal's number.
"""

from __future__ import annotations

import signal
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(BaseException):
    """A run stopped by a signal. A ``BaseException``, like ``KeyboardInterrupt``, so that no
    ``except Exception`` swallows it (and not a ``KeyboardInterrupt``, which Typer turns into a bare exit).

    ``graceful``: the run stopped at a safe point after writing ``checkpoint``; otherwise it was aborted and
    ``checkpoint``, when set, is the last one written before. ``where`` says how far the run had got."""

    def __init__(self, signum: int, *, graceful: bool, checkpoint: Path | None = None, where: str | None = None):
        super().__init__(signum)
        self.signum = signum
        self.graceful = graceful
        self.checkpoint = checkpoint
        self.where = where

    @property
    def signal_name(self) -> str:
        try:
            return signal.Signals(self.signum).name
        except ValueError:
            return f"signal {self.signum}"

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class StopRequest:
    """The first signal received inside :func:`graceful_stop` (``signum`` 0 until then)."""

    def __init__(self, repeat_window: float = 0.0):
        self.signum = 0
        self.agreed = 0  # distributed: the signal every rank agreed on at the last safe point
        self.repeat_window = repeat_window
        self._first_at = 0.0

    def handle(self, signum: int, frame: Any) -> None:
        if not self.signum:
            self.signum, self._first_at = signum, time.monotonic()
            return
        if time.monotonic() - self._first_at < self.repeat_window:
            return  # the same interruption delivered twice: a terminal's Ctrl-C, then torchrun forwarding it
        raise Interrupted(signum, graceful=False)


@contextmanager
def graceful_stop(repeat_window: float = 0.0) -> Iterator[StopRequest]:
    """Within the block, the first SIGINT/SIGTERM only sets ``signum`` of the request yielded; a second one
    (more than ``repeat_window`` seconds later) raises :class:`Interrupted` wherever the code is. The previous
    handlers come back on exit. Outside the main thread, where Python delivers no signals, the request is
    never set."""
    request = StopRequest(repeat_window)
    if threading.current_thread() is not threading.main_thread():
        yield request
        return
    previous = {sig: signal.signal(sig, request.handle) for sig in SIGNALS}
    try:
        yield request
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@contextmanager
def signals_deferred() -> Iterator[None]:
    """SIGINT/SIGTERM arriving in the block are held and raised again when it ends, to whatever handler was in
    place: for a few renames that must happen together. (Blocking them with pthread_sigmask would not do:
    another thread, torch's among them, would take the signal and Python would still run the handler here.)
    Outside the main thread, where Python delivers no signals, a no-op."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[int] = []
    previous = {sig: signal.signal(sig, lambda signum, frame: held.append(signum)) for sig in SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for signum in held:
            signal.raise_signal(signum)


@contextmanager
def names_checkpoint(path: Path) -> Iterator[None]:
    """An :class:`Interrupted` raised in the block that names no checkpoint names ``path`` when it exists: a run
    aborted before its own first checkpoint (or after the last, while deploying) can still be resumed from it."""
    try:
        yield
    except Interrupted as interrupted:
        if interrupted.checkpoint is None and Path(path).is_file():
            interrupted.checkpoint = Path(path)
        raise


def _abort(signum: int, frame: Any) -> None:
    raise Interrupted(signum, graceful=False)


def abort_on_signals() -> None:
    """SIGINT and SIGTERM raise :class:`Interrupted` (process-wide; for the CLI's entry point)."""
    for sig in SIGNALS:
        signal.signal(sig, _abort)
