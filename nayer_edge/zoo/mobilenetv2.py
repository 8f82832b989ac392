"""MobileNetV2 (width 1.0), CIFAR variant: stride-1 stem and stride-1 second stage, so it downsamples 3 times."""

from __future__ import annotations

import torch
from torch import nn

from .registry import register_model

# (expansion, out_channels, blocks, first_stride); the 24-channel stage uses stride 1 for small images.
_MOBILENETV2_STAGES = [
    (1, 16, 1, 1),
    (6, 24, 2, 1),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
]


def _conv_bn_relu6(in_channels: int, out_channels: int, kernel: int, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel, stride=stride, padding=kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU6(inplace=True),
    )


class InvertedResidual(nn.Module):
    """1x1 expand, 3x3 depthwise, 1x1 linear project; residual when stride is 1 and the width is unchanged."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, expansion: int):
        super().__init__()
        hidden = in_channels * expansion
        layers: list[nn.Module] = []
        if expansion != 1:
            layers.append(_conv_bn_relu6(in_channels, hidden, 1))
        layers += [
            _conv_bn_relu6(hidden, hidden, 3, stride=stride, groups=hidden),
            nn.Conv2d(hidden, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
        ]
        self.block = nn.Sequential(*layers)
        self.use_residual = stride == 1 and in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        return x + out if self.use_residual else out


class CifarMobileNetV2(nn.Module):
    """32-channel 3x3 stride-1 stem, inverted-residual stages, 1280-channel 1x1 conv, pool, linear head."""

    def __init__(self, num_classes: int, in_channels: int):
        super().__init__()
        layers: list[nn.Module] = [_conv_bn_relu6(in_channels, 32, 3)]
        channels = 32
        for expansion, out_channels, num_blocks, stride in _MOBILENETV2_STAGES:
            for block_stride in [stride] + [1] * (num_blocks - 1):
                layers.append(InvertedResidual(channels, out_channels, block_stride, expansion))
                channels = out_channels
        layers.append(_conv_bn_relu6(channels, 1280, 1))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(1280, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


@register_model
def mobilenetv2(num_classes: int = 10, in_channels: int = 3, input_size: int = 32) -> nn.Module:
    """MobileNetV2 1.0 for small images (~2.2M parameters at 3 channels, 10 classes)."""
    return CifarMobileNetV2(num_classes, in_channels)
