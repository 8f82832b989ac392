"""Where progress events go (:class:`~nayer_edge.core.progress.Progress`): :class:`LiveBars` on a terminal,
:class:`PlainLines` in a log a CI job keeps (one flushed line per epoch, round, logged step and finished stage),
:class:`JsonLines` in a file a dashboard tails (every event, appended and flushed as it happens)."""

from __future__ import annotations

import json
import math
import os
import warnings
from pathlib import Path
from typing import Any

from .errors import UserError

# The losses a line shows, shortened; loss_g (their weighted sum) is left to the JSON log.
HIDDEN_LOSSES = ("loss_g",)


def finite_or_none(value: Any) -> Any:
    """``value`` with every non-finite float (NaN, ±inf: not JSON) replaced by None, through dicts and lists."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_none(v) for v in value]
    return value


def duration(seconds: float) -> str:
    """``12.3s``, ``4m05s``, ``2h07m``."""
    if seconds < 60:
        return f"{seconds:.1f}s"
    if seconds < 3600:
        return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"
    return f"{int(seconds // 3600)}h{int(seconds % 3600 // 60):02d}m"


def _losses(event: dict[str, Any]) -> list[str]:
    """The losses, the student's (kd) first."""
    shown = [(k, v) for k, v in event.items()
             if k.startswith("loss_") and k not in HIDDEN_LOSSES and isinstance(v, (int, float))]
    return [f"{k.removeprefix('loss_')} {v:.4g}" for k, v in sorted(shown, key=lambda kv: kv[0] != "loss_kd")]


def _share(value: float | None) -> str:
    return "—" if value is None else f"{value:.1%}"


def epoch_details(event: dict[str, Any]) -> list[str]:
    """An epoch's losses, agreement and (with eval data) accuracy, as the line and the bar show them."""
    parts = _losses(event)
    if event.get("agreement") is not None:
        parts.append(f"agreement {_share(event['agreement'])}")
    if event.get("accuracy") is not None:
        parts.append(f"accuracy {_share(event['accuracy'])}")
    return parts


def epoch_line(event: dict[str, Any]) -> str:
    """``epoch 2/30 · elapsed 41.2s · eta 9m37s · kd 1.234 · bn 0.4567 · oh 0.01234 · adv -0.5 · agreement 61.0%
    · accuracy 58.3%``."""
    parts = [f"epoch {event['epoch']}/{event['epochs']}", f"elapsed {duration(event['elapsed_s'])}"]
    if event.get("eta_s") is not None:
        parts.append(f"eta {duration(event['eta_s'])}")
    return " · ".join(parts + epoch_details(event))


def event_line(event: dict[str, Any]) -> str | None:
    """The plain line of an event, or None for events a console does not repeat (a stage's start or failure, the
    result and the error, which the command prints itself)."""
    kind = event["event"]
    if kind == "epoch":
        return epoch_line(event)
    if kind == "round":
        kept = f"kept loss {event['loss_g']:.4g}" if isinstance(event.get("loss_g"), (int, float)) else "kept nothing"
        return " · ".join([f"round {event['round']}/{event['rounds']} of epoch {event['epoch']}", kept,
                           *_losses(event), duration(event["seconds"])])
    if kind == "steps":
        return f"{event['stage']} step {event['done']}/{event['total']} · elapsed {duration(event['elapsed_s'])}"
    if kind == "stage" and event["status"] == "done":
        return f"stage {event['stage']} done in {duration(event['seconds'])} · elapsed {duration(event['elapsed_s'])}"
    return None


class PlainLines:
    """One line per event on a console that is not a terminal (a CI log), written and flushed at once."""

    live = False

    def __init__(self, console: Any):
        self.console = console

    def handle(self, event: dict[str, Any]) -> None:
        line = event_line(event)
        if line is not None:
            self.console.print(line, markup=False, highlight=False, soft_wrap=True)
            self.console.file.flush()

    def show(self, renderable: Any, event: dict[str, Any]) -> None:
        self.console.print(renderable)
        self.console.file.flush()

    def close(self, failed: bool) -> None:
        pass


class JsonLines:
    """Every event as one JSON object per line, appended to ``path`` and flushed as it happens (the file is
    made with the first event). Checked when made: UserError for a path that cannot be written."""

    live = False

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.broken = False
        if self.path.is_dir():
            raise UserError(f"--log-json {self.path}: is a folder; give a file path")
        if not self.path.parent.is_dir():
            raise UserError(f"--log-json {self.path}: the folder {self.path.parent} does not exist; create it or "
                            "give another path")
        if not os.access(self.path if self.path.exists() else self.path.parent, os.W_OK):
            raise UserError(f"--log-json {self.path}: not writable; give a path you can write")

    def handle(self, event: dict[str, Any]) -> None:
        if self.broken:
            return
        line = json.dumps(finite_or_none(event), default=str)
        try:
            with open(self.path, "a", encoding="utf-8") as log:
                log.write(line + "\n")
                log.flush()
        except OSError as err:
            # A log that cannot be written any more (a full disk) does not stop the run; it says so once.
            self.broken = True
            warnings.warn(f"--log-json {self.path}: {err.strerror or err}; no more events are written to it",
                          stacklevel=2)

    def show(self, renderable: Any, event: dict[str, Any]) -> None:
        self.handle(event)

    def close(self, failed: bool) -> None:
        pass


class LiveBars:
    """rich live bars on a terminal while a stage runs: one per open stage (the distillation's shows its epochs,
    ETA and latest losses), one for the steps inside it; a finished stage leaves one line."""

    live = True

    def __init__(self, console: Any):
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.console = console
        self.bars = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                             TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
                             TextColumn("{task.fields[info]}"), console=console, transient=False)
        self.open: dict[str, Any] = {}  # stage name → its bar
        self.step_bar: Any = None
        self.running = False

    def handle(self, event: dict[str, Any]) -> None:
        kind = event["event"]
        if kind == "stage":
            self._stage(event)
        elif kind == "epoch":
            self._start()
            if "distill" not in self.open:
                self.open["distill"] = self._bar("epochs", None, 0)
            bar = self.open["distill"]
            self.bars.update(bar, completed=event["epoch"], total=event["epochs"],
                             info=" · ".join(epoch_details(event)))
        elif kind == "steps":
            self._start()
            if event["stage"] in self.open:
                self.bars.update(self.open[event["stage"]], completed=event["done"], total=event["total"])
            else:
                if self.step_bar is None:
                    self.step_bar = self._bar(event["stage"], event["total"], 0)
                self.bars.update(self.step_bar, description=event["stage"], completed=event["done"],
                                 total=event["total"])
        elif kind == "round":
            self.console.print(event_line(event), markup=False, highlight=False)

    def _stage(self, event: dict[str, Any]) -> None:
        name, status = event["stage"], event["status"]
        if status == "start":
            self._start()
            self.open[name] = self._bar("epochs" if name == "distill" else name, event.get("epochs"),
                                        event.get("start_epoch", 0))
            return
        bar = self.open.pop(name, None)
        if bar is not None:
            self.bars.remove_task(bar)
        if self.step_bar is not None and name == "distill":
            self.bars.remove_task(self.step_bar)
            self.step_bar = None
        if status == "done":
            self.console.print(f"[green]✓[/] {event_line(event)}", highlight=False)
        if not self.open:
            self._stop(transient=status == "failed" and event.get("reason") != "interrupted")

    def _bar(self, description: str, total: int | None, completed: int) -> Any:
        return self.bars.add_task(description, total=total, completed=completed, info="")

    def _start(self) -> None:
        if not self.running:
            self.bars.start()
            self.running = True

    def _stop(self, transient: bool) -> None:
        if self.running:
            self.bars.live.transient = transient  # a failure's bars go: the error line alone says what happened
            self.bars.stop()
            self.running = False

    def show(self, renderable: Any, event: dict[str, Any]) -> None:
        self.console.print(renderable)

    def close(self, failed: bool) -> None:
        self._stop(transient=failed)
