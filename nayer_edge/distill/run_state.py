"""Where a distillation run stands (:class:`RunState`, saved in every checkpoint), what each epoch reports
(:class:`EpochReport`, a row of metrics.json's history) and what each synthesis round reports (:class:`RoundReport`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch


@dataclass
class EpochReport:
    epoch: int
    wall_seconds: float
    losses: dict[str, float]
    agreement: float | None = None
    student_accuracy: float | None = None
    lr: float = 0.0
    memory_size: int = 0
    scheduled_epochs: int = 0  # the schedule's epoch count now (it follows the clock, see fit_epochs_to_clock)

    def as_row(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "wall_seconds": round(self.wall_seconds, 3), **self.losses,
                "agreement": self.agreement, "student_accuracy": self.student_accuracy, "lr": self.lr,
                "memory_size": self.memory_size}


@dataclass(frozen=True)
class RoundReport:
    """One synthesis round: its place (epoch counted from 1), the losses of the batch it kept and its seconds."""

    epoch: int
    round: int
    rounds: int
    losses: dict[str, float]
    seconds: float


@dataclass
class RunState:
    epoch: int = 0  # epochs completed
    kd_step: int = 0
    elapsed: float = 0.0
    history: list[dict[str, Any]] = field(default_factory=list)
    stopped_by: str | None = None
    # Inside the current epoch: synthesis rounds and KD steps done, and their losses so far.
    round: int = 0
    step: int = 0
    losses: dict[str, list[Any]] = field(default_factory=dict)


def epoch_mean(values: list[float | torch.Tensor]) -> float:
    """Mean of an epoch's per-step losses, some of them 0-dim tensors still on the device (one wait for all)."""
    tensors = [v for v in values if isinstance(v, torch.Tensor)]
    if tensors:
        read = iter(torch.stack([t.to(torch.float64) for t in tensors]).tolist())
        values = [next(read) if isinstance(v, torch.Tensor) else v for v in values]
    return float(np.mean(values))


def map_tensors(tree: Any, fn: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    if isinstance(tree, torch.Tensor):
        return fn(tree)
    if isinstance(tree, dict):
        return {k: map_tensors(v, fn) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(map_tensors(v, fn) for v in tree)
    return tree
