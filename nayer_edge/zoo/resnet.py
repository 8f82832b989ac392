"""CIFAR ResNets (BasicBlock, widths 64-128-256-512) as used throughout the data-free KD literature."""

from __future__ import annotations

import torch
from torch import nn

from .registry import register_model


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with an identity (or 1x1 conv-BN projection) shortcut."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """3x3 stride-1 stem, no max-pool, four stages (strides 1, 2, 2, 2), global average pool, linear head."""

    def __init__(self, blocks_per_stage: list[int], num_classes: int, in_channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        in_planes = 64
        stages = []
        for planes, num_blocks, stride in zip((64, 128, 256, 512), blocks_per_stage, (1, 2, 2, 2)):
            blocks = []
            for block_stride in [stride] + [1] * (num_blocks - 1):
                blocks.append(BasicBlock(in_planes, planes, block_stride))
                in_planes = planes
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return self.fc(torch.flatten(self.pool(out), 1))


@register_model
def resnet18(num_classes: int = 10, in_channels: int = 3, input_size: int = 32) -> nn.Module:
    """CIFAR ResNet-18 (~11.2M parameters at 3 channels, 10 classes)."""
    return CifarResNet([2, 2, 2, 2], num_classes, in_channels)


@register_model
def resnet34(num_classes: int = 10, in_channels: int = 3, input_size: int = 32) -> nn.Module:
    """CIFAR ResNet-34 (~21.3M parameters at 3 channels, 10 classes)."""
    return CifarResNet([3, 4, 6, 3], num_classes, in_channels)
