"""The distillation loop's reports as progress events (:mod:`nayer_edge.core.progress`): each epoch (elapsed,
ETA, losses, agreement, accuracy with eval data), each synthesis round (with ``verbose``), the steps inside an
epoch (for the bars)."""

from __future__ import annotations

import time

from ..core.progress import Progress
from .run_state import EpochReport, RoundReport


class LoopProgress:
    """The ``on_epoch`` / ``on_round`` / ``on_step`` callbacks of :meth:`Distiller.run`, reporting to ``progress``.
    The ETA is the pace of this process's epochs so far (``start_epoch`` were done before it, by a resumed run),
    capped by what is left of ``time_budget`` counted from ``clock_start`` (a ``time.perf_counter()`` value)."""

    def __init__(self, progress: Progress, *, start_epoch: int, time_budget: float | None, clock_start: float):
        self.progress = progress
        self.start_epoch = start_epoch
        self.time_budget = time_budget
        self.clock_start = clock_start
        self.began = time.perf_counter()

    def eta(self, epoch: int, epochs: int) -> float | None:
        now = time.perf_counter()
        done = epoch - self.start_epoch
        eta = (now - self.began) / done * max(0, epochs - epoch) if done > 0 else None
        if self.time_budget is not None:
            left = max(0.0, self.time_budget - (now - self.clock_start))
            eta = left if eta is None else min(eta, left)
        return None if eta is None else round(eta, 3)

    def on_epoch(self, report: EpochReport) -> None:
        epochs = report.scheduled_epochs or report.epoch
        self.progress.emit("epoch", epoch=report.epoch, epochs=epochs, eta_s=self.eta(report.epoch, epochs),
                           **report.losses, agreement=report.agreement, accuracy=report.student_accuracy,
                           lr=report.lr, memory_size=report.memory_size, train_s=round(report.wall_seconds, 3))

    def on_round(self, report: RoundReport) -> None:
        if self.progress.verbose:
            self.progress.emit("round", epoch=report.epoch, round=report.round, rounds=report.rounds,
                               **report.losses, seconds=round(report.seconds, 3))

    def on_step(self, stage: str, done: int, total: int) -> None:
        self.progress.steps(stage, done, total)
