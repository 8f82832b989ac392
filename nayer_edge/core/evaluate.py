"""Top-1 accuracy and teacher–student agreement, in batches, without gradients."""

from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def predict(model: nn.Module, images: torch.Tensor, batch_size: int = 256, device: torch.device | str = "cpu"
            ) -> torch.Tensor:
    was_training = model.training
    model.eval()
    preds = [model(images[i:i + batch_size].to(device)).argmax(1).cpu() for i in range(0, len(images), batch_size)]
    model.train(was_training)
    return torch.cat(preds) if preds else torch.zeros(0, dtype=torch.long)


def accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 256,
             device: torch.device | str = "cpu") -> float:
    """Top-1 accuracy as a fraction in [0, 1]."""
    if len(labels) == 0:
        raise ValueError("no samples to evaluate")
    return (predict(model, images, batch_size, device) == labels.cpu()).float().mean().item()


def agreement(student: nn.Module, teacher: nn.Module, images: torch.Tensor, batch_size: int = 256,
              device: torch.device | str = "cpu") -> float:
    """Fraction of samples on which student and teacher predict the same class."""
    return (predict(student, images, batch_size, device) == predict(teacher, images, batch_size, device)
            ).float().mean().item()
