"""A module that takes images in [0, 1] and feeds (x − mean) / std to the model it wraps."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn


class NormalizedModel(nn.Module):
    def __init__(self, model: nn.Module, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, images01: torch.Tensor) -> torch.Tensor:
        return self.model((images01 - self.mean) / self.std)
