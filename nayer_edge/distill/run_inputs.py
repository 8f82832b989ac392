"""What a distillation run works from (:class:`RunInputs`) and builds for its loop (:class:`RunParts`), with the
checks and the class codes made before anything is written."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..core.errors import UserError, first_line
from ..synthesis.embeddings import encode_class_names, onehot_embeddings
from .config import DistillConfig


@dataclass(frozen=True)
class RunInputs:
    """What one distillation run works from, checked and loaded by :func:`distill` before anything is written:
    handed down whole instead of as keyword relays. ``config`` is the planned one once a plan is made."""

    config: DistillConfig
    out_dir: Path
    device: torch.device
    loaded: Any  # the LoadedTeacher
    class_names: list[str]
    eval_set: Any  # (images, labels) on rank 0 with --eval-data, else None
    embeddings: torch.Tensor | None
    resume: bool
    progress: Any  # the Progress events go to (silent on ranks other than 0)
    arch: str | None
    started: float  # perf_counter() the budget counts from
    user_set: set[str]  # the settings the user chose: the planner keeps them
    reserve_after: float  # seconds the caller needs after distill returns (compress: the deployment)

    @property
    def eval_samples(self) -> int:
        return int(len(self.eval_set[1])) if self.eval_set is not None else 0


@dataclass
class RunParts:
    """What :func:`_distill_run` builds for the loop: the models, the checkpoint being resumed, the plan, and
    where the sample memory lives; ``written`` lists the checkpoints this run wrote (none: a failure undoes
    the run's output)."""

    teacher_module: Any
    student: torch.nn.Module
    student_module: Any
    checkpoint: dict[str, Any] | None
    plan: Any
    memory_path: Path
    written: list[Path] = field(default_factory=list)


def label_embeddings(config: DistillConfig, class_names: list[str], cache_dir: Path | None) -> torch.Tensor | None:
    if config.generator == "noise":
        return None
    if config.embedding == "onehot":
        return onehot_embeddings(len(class_names))
    return encode_class_names(class_names, encoder=config.text_encoder, template=config.prompt_template,
                              allow_download=config.allow_download, cache_dir=cache_dir)


def check_student(student: torch.nn.Module, input_shape: tuple[int, int, int], num_classes: int, spec: str) -> None:
    try:
        with torch.no_grad():
            out = student.eval()(torch.zeros(2, *input_shape))
    except Exception as err:  # noqa: BLE001 - any failure of the user's model is reported as one line
        raise UserError(f"student '{spec}' rejects input shape {','.join(map(str, input_shape))}: "
                        f"{first_line(err)}") from None
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (2, num_classes):
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise UserError(f"student '{spec}' must return N×{num_classes} logits, got {shape}")
    student.train()
