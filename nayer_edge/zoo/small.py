"""Small plain CNN students that train quickly on a CPU (the grayscale-digits demo uses these)."""

from __future__ import annotations

from torch import nn

from .plain import PooledCNN, conv_bn_relu
from .registry import register_model


class SmallCNN(PooledCNN):
    """Three conv3x3-BN-ReLU layers (strides 1, 2, 2), global average pool, linear head."""

    def __init__(self, widths: tuple[int, int, int], num_classes: int, in_channels: int):
        layers: list[nn.Module] = []
        channels = in_channels
        for width, stride in zip(widths, (1, 2, 2)):
            layers += conv_bn_relu(channels, width, stride)
            channels = width
        super().__init__(layers, channels, num_classes)


@register_model
def cnn_small(num_classes: int = 10, in_channels: int = 3, input_size: int = 32) -> nn.Module:
    """Conv 32-64-128 student (~95k parameters at 3 channels, 10 classes)."""
    return SmallCNN((32, 64, 128), num_classes, in_channels)


@register_model
def cnn_tiny(num_classes: int = 10, in_channels: int = 3, input_size: int = 32) -> nn.Module:
    """Conv 16-32-48 student (~20k parameters at 3 channels, 10 classes)."""
    return SmallCNN((16, 32, 48), num_classes, in_channels)
