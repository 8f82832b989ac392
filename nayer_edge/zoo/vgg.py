"""VGG-11 with BatchNorm, CIFAR variant: five conv stages, global average pool, one linear layer."""

from __future__ import annotations

from torch import nn

from .plain import PooledCNN, conv_bn_relu
from .registry import register_model

_VGG11_STAGES: list[list[int]] = [[64], [128], [256, 256], [512, 512], [512, 512]]


class CifarVGG(PooledCNN):
    """Conv3x3-BN-ReLU stages separated by 2x2 max-pools, then adaptive average pool and a linear head."""

    def __init__(self, stages: list[list[int]], num_classes: int, in_channels: int):
        layers: list[nn.Module] = []
        channels = in_channels
        for index, stage in enumerate(stages):
            if index > 0:
                # ceil_mode keeps a 1x1 map at 1x1, so 8x8 inputs survive all four pools.
                layers.append(nn.MaxPool2d(2, ceil_mode=True))
            for width in stage:
                layers += conv_bn_relu(channels, width)
                channels = width
        super().__init__(layers, channels, num_classes)


@register_model
def vgg11(num_classes: int = 10, in_channels: int = 3, input_size: int = 32) -> nn.Module:
    """VGG-11-BN for small images (~9.2M parameters at 3 channels, 10 classes)."""
    return CifarVGG(_VGG11_STAGES, num_classes, in_channels)
