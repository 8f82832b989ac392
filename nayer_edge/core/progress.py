"""What a command reports while it runs, as events: stages (start, done, failed), distillation epochs,
synthesis rounds (verbose), the steps of a long stage, and the final result. One :class:`Progress` hands each
event to its sinks (:mod:`nayer_edge.core.progress_sinks`): rich live bars on a terminal, one plain line per
event in a log, JSON lines in a file.

The library takes a :class:`Progress` (or ``True``/``False``, see :func:`as_progress`) and calls it; the CLI
decides which sinks to build::

    progress = Progress([PlainLines(Console(stderr=True)), JsonLines("events.jsonl")], verbose=True)
    with progress:
        with progress.stage("export"):
            ...
        progress.result("compress", metrics)
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Any, Iterator, Protocol, Sequence

from .errors import first_line
from .interrupt import Interrupted

# A long stage's steps (QAT's) go to the logs each time another 1/STEP_LOG_PARTS of them is done.
STEP_LOG_PARTS = 10


class Sink(Protocol):
    """Where events go. ``live`` sinks (bars) also get the transient step events that logs skip."""

    live: bool

    def handle(self, event: dict[str, Any]) -> None: ...

    def show(self, renderable: Any, event: dict[str, Any]) -> None: ...

    def close(self, failed: bool) -> None: ...


class Progress:
    """The events of one command, handed to ``sinks``; no sinks: silent. ``verbose`` adds the synthesis rounds.
    ``started`` is the ``time.perf_counter()`` that ``elapsed_s`` counts from (default: now)."""

    def __init__(self, sinks: Sequence[Sink] = (), *, verbose: bool = False, started: float | None = None):
        self.sinks = list(sinks)
        self.verbose = verbose
        self.started = time.perf_counter() if started is None else started
        self._logged_steps: dict[str, int] = {}

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, kind: Any, error: Any, trace: Any) -> None:
        self.close(failed=error is not None)

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def emit(self, event: str, **fields: Any) -> None:
        """One event to every sink: ``{"event": event, **fields, "elapsed_s": ..., "time": ...}``."""
        record = self._record(event, fields)
        for sink in self.sinks:
            sink.handle(record)

    def show(self, renderable: Any, event: str, **fields: Any) -> None:
        """Something to read (a table) on a console, and its ``event`` in a log file."""
        record = self._record(event, fields)
        for sink in self.sinks:
            sink.show(renderable, record)

    @contextmanager
    def stage(self, name: str, **fields: Any) -> Iterator[None]:
        """A stage: a start event, then done (with its ``seconds``) or failed (with the error's first line)."""
        self.emit("stage", stage=name, status="start", **fields)
        began = time.perf_counter()
        try:
            yield
        except BaseException as err:
            reason = "interrupted" if isinstance(err, Interrupted) else "error"
            self.emit("stage", stage=name, status="failed", seconds=round(time.perf_counter() - began, 3),
                      reason=reason, error=_error_text(err))
            raise
        self.emit("stage", stage=name, status="done", seconds=round(time.perf_counter() - began, 3))

    def steps(self, stage: str, done: int, total: int | None, *, logged: bool = False) -> None:
        """Steps of ``stage`` done: the bars move; with ``logged``, the logs get a step event at every tenth of
        ``total`` (and the last step)."""
        record = self._record("steps", {"stage": stage, "done": done, "total": total})
        log = False
        if logged and total:
            share = done * STEP_LOG_PARTS // total
            log = done == total or share > self._logged_steps.get(stage, 0)
            if log:
                self._logged_steps[stage] = share
        for sink in self.sinks:
            if log or sink.live:
                sink.handle(record)

    def result(self, command: str, metrics: dict[str, Any]) -> None:
        """The final event: the command's result (``metrics`` without the per-epoch history) and its exit code
        (1 when a gate failed)."""
        body = {k: v for k, v in metrics.items() if k not in ("history", "event", "elapsed_s", "time")}
        self.emit("result", command=command, exit_code=0 if metrics.get("passed", True) else 1, **body)

    def failed(self, command: str, exit_code: int, message: str) -> None:
        """The final event of a command that ended with an error (or a signal)."""
        self.emit("error", command=command, exit_code=exit_code, message=message)

    def close(self, failed: bool = False) -> None:
        for sink in self.sinks:
            sink.close(failed)

    def _record(self, event: str, fields: dict[str, Any]) -> dict[str, Any]:
        now = datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        return {"event": event, **fields, "elapsed_s": round(self.elapsed, 3), "time": now}


def _error_text(err: BaseException) -> str:
    if isinstance(err, Interrupted):
        return f"stopped by {err.signal_name}"
    return first_line(err)


def as_progress(show: "bool | Progress") -> Progress:
    """What a library function's ``show_progress`` means: a :class:`Progress` as it is; ``True``: progress on
    stderr (live bars on a terminal, plain lines elsewhere); ``False``: none."""
    if isinstance(show, Progress):
        return show
    return console_progress() if show else Progress()


def console_progress(*, verbose: bool = False, started: float | None = None,
                     extra: Sequence[Sink] = ()) -> Progress:
    """Progress on stderr: rich live bars when stderr is a terminal, else one flushed line per event; plus
    ``extra`` sinks (a JSON-lines file)."""
    from rich.console import Console

    from .progress_sinks import LiveBars, PlainLines

    console = Console(stderr=True)
    shown: Sink = LiveBars(console) if console.is_terminal else PlainLines(console)
    return Progress([shown, *extra], verbose=verbose, started=started)
