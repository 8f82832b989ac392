"""Distillation losses: temperature KD, NAYER's masked adversarial term."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def kd_divergence(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0,
                  reduction: str = "batchmean") -> torch.Tensor:
    """KL(softmax(t/T) ‖ softmax(s/T)) · T². ``reduction='none'`` gives one value per sample."""
    log_p_student = F.log_softmax(student_logits / temperature, dim=1)
    p_teacher = F.softmax(teacher_logits / temperature, dim=1)
    per_class = F.kl_div(log_p_student, p_teacher, reduction="none") * temperature**2
    if reduction == "none":
        return per_class.sum(1)
    if reduction == "batchmean":
        return per_class.sum() / student_logits.shape[0]
    raise ValueError(f"unknown reduction {reduction!r}")


def adversarial_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """−KL(t ‖ s) on the samples where student and teacher agree: pushes the generator towards
    samples the student still gets wrong (NAYER / CMI), ignoring those it already disagrees on."""
    agree = (student_logits.argmax(1) == teacher_logits.argmax(1)).float()
    return -(kd_divergence(student_logits, teacher_logits, reduction="none") * agree).mean()
