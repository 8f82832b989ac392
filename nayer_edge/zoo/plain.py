"""What the plain conv students share: conv3x3-BN-ReLU layers, then global average pool and one linear head."""

from __future__ import annotations

import torch
from torch import nn


def conv_bn_relu(in_channels: int, out_channels: int, stride: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
            nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True)]


class PooledCNN(nn.Module):
    """``features`` (a plain stack of layers ending in ``channels`` maps), global average pool, linear head."""

    def __init__(self, layers: list[nn.Module], channels: int, num_classes: int):
        super().__init__()
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))
