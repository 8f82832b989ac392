"""Wide ResNets WRN-d-k (Zagoruyko & Komodakis) for small images: pre-activation blocks, no dropout."""

from __future__ import annotations

import torch
from torch import nn

from .registry import register_model


class PreActBlock(nn.Module):
    """BN-ReLU-conv3x3 twice; a 1x1 conv shortcut on the pre-activated input when the shape changes."""

    def __init__(self, in_planes: int, planes: int, stride: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.projection: nn.Module | None = None
        if stride != 1 or in_planes != planes:
            self.projection = nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = torch.relu(self.bn1(x))
        out = self.conv2(torch.relu(self.bn2(self.conv1(pre))))
        shortcut = x if self.projection is None else self.projection(pre)
        return out + shortcut


class WideResNet(nn.Module):
    """WRN-depth-width: 16-channel stem, three stages of width 16k/32k/64k (strides 1, 2, 2)."""

    def __init__(self, depth: int, width: int, num_classes: int, in_channels: int):
        super().__init__()
        if (depth - 4) % 6 != 0:
            raise ValueError(f"WRN depth must be 6n+4, got {depth}")
        blocks_per_stage = (depth - 4) // 6
        widths = (16 * width, 32 * width, 64 * width)
        self.conv1 = nn.Conv2d(in_channels, 16, 3, stride=1, padding=1, bias=False)
        in_planes = 16
        stages = []
        for planes, stride in zip(widths, (1, 2, 2)):
            blocks = []
            for block_stride in [stride] + [1] * (blocks_per_stage - 1):
                blocks.append(PreActBlock(in_planes, planes, block_stride))
                in_planes = planes
            stages.append(nn.Sequential(*blocks))
        self.block1, self.block2, self.block3 = stages
        self.bn = nn.BatchNorm2d(in_planes)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_planes, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.Linear):
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block3(self.block2(self.block1(self.conv1(x))))
        out = torch.relu(self.bn(out))
        return self.fc(torch.flatten(self.pool(out), 1))


@register_model
def wrn16_1(num_classes: int = 10, in_channels: int = 3, input_size: int = 32) -> nn.Module:
    """WRN-16-1 (~0.18M parameters at 3 channels, 10 classes)."""
    return WideResNet(16, 1, num_classes, in_channels)


@register_model
def wrn16_2(num_classes: int = 10, in_channels: int = 3, input_size: int = 32) -> nn.Module:
    """WRN-16-2 (~0.70M parameters at 3 channels, 10 classes)."""
    return WideResNet(16, 2, num_classes, in_channels)


@register_model
def wrn40_1(num_classes: int = 10, in_channels: int = 3, input_size: int = 32) -> nn.Module:
    """WRN-40-1 (~0.57M parameters at 3 channels, 10 classes)."""
    return WideResNet(40, 1, num_classes, in_channels)


@register_model
def wrn40_2(num_classes: int = 10, in_channels: int = 3, input_size: int = 32) -> nn.Module:
    """WRN-40-2 (~2.2M parameters at 3 channels, 10 classes)."""
    return WideResNet(40, 2, num_classes, in_channels)
