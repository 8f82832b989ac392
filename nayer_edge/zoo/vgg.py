"""VGG-11 with BatchNorm, CIFAR variant: five conv stages, global average pool, one linear layer."""

from __future__ import annotations

import torch
from torch import nn

from .registry import register_model

_VGG11_STAGES: list[list[int]] = [[64], [128], [256, 256], [512, 512], [512, 512]]


class CifarVGG(nn.Module):
    """Conv3x3-BN-ReLU stages separated by 2x2 max-pools, then adaptive average pool and a linear head."""

    def __init__(self, stages: list[list[int]], num_classes: int, in_channels: int):
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for index, stage in enumerate(stages):
            if index > 0:
                # ceil_mode keeps a 1x1 map at 1x1, so 8x8 inputs survive all four pools.
                layers.append(nn.MaxPool2d(2, ceil_mode=True))
            for width in stage:
                layers += [nn.Conv2d(channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
                channels = width
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


@register_model
def vgg11(num_classes: int = 10, in_channels: int = 3, input_size: int = 32) -> nn.Module:
    """VGG-11-BN for small images (~9.2M parameters at 3 channels, 10 classes)."""
    return CifarVGG(_VGG11_STAGES, num_classes, in_channels)
