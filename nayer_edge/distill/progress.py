"""Live progress of a distillation run with rich: epochs with ETA, the current stage, latest losses."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from .run_state import EpochReport


class RichProgress:
    """Context manager giving ``on_epoch`` / ``on_step`` callbacks for :meth:`Distiller.run`."""

    def __init__(self, total_epochs: int, start_epoch: int = 0, console: Console | None = None,
                 time_budget: float | None = None):
        self.console = console or Console(stderr=True)
        self.time_budget = time_budget
        self.progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(), TextColumn("{task.fields[info]}"),
            console=self.console, transient=False,
        )
        self.epochs = self.progress.add_task("epochs", total=total_epochs, completed=start_epoch, info="")
        self.stage = self.progress.add_task("synthesis", total=1, info="", visible=True)

    def __enter__(self) -> "RichProgress":
        self.progress.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.progress.stop()

    def on_step(self, stage: str, done: int, total: int) -> None:
        self.progress.update(self.stage, description=stage, completed=done, total=total)

    def on_epoch(self, report: EpochReport) -> None:
        parts = [f"{k.removeprefix('loss_')} {v:.3g}" for k, v in report.losses.items() if k != "loss_g"]
        if report.agreement is not None:
            parts.append(f"agree {report.agreement:.1%}")
        if report.student_accuracy is not None:
            parts.append(f"acc {report.student_accuracy:.1%}")
        if self.time_budget:
            parts.append(f"{report.wall_seconds:.0f}/{self.time_budget:.0f}s")
        total = report.scheduled_epochs or self.progress.tasks[self.epochs].total
        self.progress.update(self.epochs, completed=report.epoch, total=total, info=" · ".join(parts))
