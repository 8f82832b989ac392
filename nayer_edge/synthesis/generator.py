"""NAYER's generator (label-text embedding → BatchNorm1d → K-to-1 noisy layer → DCGAN decoder)
and the noise-input generator (z ~ N(0, I) → decoder) it is measured against."""

from __future__ import annotations

import math

import torch
from torch import nn


class Decoder(nn.Module):
    """DCGAN-style decoder: Linear → (C0, H/2ⁿ, W/2ⁿ) → n ×2 upsamplings (n = ``upsamplings``, the paper's 2)
    → sigmoid image.

    The paper keeps 2·ngf channels until the last stage (ngf). ``taper`` halves the channels at every stage
    instead, as DCGAN does, ending at ngf at full resolution: the low resolutions get 2ⁿ·ngf channels for about
    the cost of one more full-resolution convolution, since a stage's cost is channels² × pixels."""

    def __init__(self, in_dim: int, out_shape: tuple[int, int, int], ngf: int = 64, upsamplings: int = 2,
                 taper: bool = False):
        super().__init__()
        if upsamplings < 1:
            raise ValueError(f"a decoder needs at least one upsampling, got {upsamplings}")
        channels, height, width = out_shape
        self.out_shape = out_shape
        scale = 2**upsamplings
        self.init_h, self.init_w = math.ceil(height / scale), math.ceil(width / scale)
        # Channels entering each of the n stages, then ngf at full resolution.
        widths = [ngf * 2 ** (upsamplings - i) for i in range(upsamplings)] if taper else [2 * ngf] * upsamplings
        widths.append(ngf)
        self.project = nn.Linear(in_dim, widths[0] * self.init_h * self.init_w)
        layers: list[nn.Module] = [nn.BatchNorm2d(widths[0])]
        for stage in range(upsamplings):
            layers += [nn.Upsample(scale_factor=2), nn.Conv2d(widths[stage], widths[stage + 1], 3, padding=1, bias=False),
                       nn.BatchNorm2d(widths[stage + 1]), nn.LeakyReLU(0.2, inplace=True)]
        layers.append(nn.Conv2d(ngf, channels, 3, padding=1))
        self.blocks = nn.Sequential(*layers)

    def forward(self, code: torch.Tensor) -> torch.Tensor:
        x = self.project(code).view(code.shape[0], -1, self.init_h, self.init_w)
        x = self.blocks(x)
        _, height, width = self.out_shape
        if x.shape[-2:] != (height, width):  # sizes not divisible by 2ⁿ
            x = x[..., :height, :width]
        return torch.sigmoid(x)


class NoisyLayer(nn.Module):
    """K-to-1 noisy layer: one Linear per block of K consecutive samples (one sample per class).

    The weights are re-drawn from N(0, 1) (bias 0) by :meth:`reinitialize` every synthesis round,
    which is what makes the same label embedding produce diverse images without a z input.
    """

    def __init__(self, in_dim: int, out_dim: int, num_blocks: int, block_size: int):
        super().__init__()
        self.block_size = block_size
        self.linears = nn.ModuleList(nn.Linear(in_dim, out_dim) for _ in range(num_blocks))
        self.reinitialize()

    @torch.no_grad()
    def reinitialize(self) -> None:
        for linear in self.linears:
            nn.init.normal_(linear.weight, mean=0.0, std=1.0)
            nn.init.zeros_(linear.bias)

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        blocks = embeddings.split(self.block_size)
        if len(blocks) > len(self.linears):
            raise ValueError(f"batch of {embeddings.shape[0]} needs more than {len(self.linears)} noisy blocks")
        return torch.cat([linear(block) for linear, block in zip(self.linears, blocks)])


class NayerGenerator(nn.Module):
    """Generates images for given class targets from fixed label-text embeddings (no random z)."""

    def __init__(self, label_embeddings: torch.Tensor, out_shape: tuple[int, int, int], batch_size: int,
                 noisy_dim: int = 1000, ngf: int = 64, upsamplings: int = 2, taper: bool = False):
        super().__init__()
        num_classes, embed_dim = label_embeddings.shape
        self.register_buffer("label_embeddings", label_embeddings.detach().float().clone())
        self.embedding_norm = nn.BatchNorm1d(embed_dim)
        self.noisy = NoisyLayer(embed_dim, noisy_dim, math.ceil(batch_size / num_classes), num_classes)
        self.decoder = Decoder(noisy_dim, out_shape, ngf, upsamplings, taper)

    def new_round(self) -> None:
        self.noisy.reinitialize()

    def forward(self, targets: torch.Tensor) -> torch.Tensor:
        embeddings = self.embedding_norm(self.label_embeddings[targets])
        return self.decoder(self.noisy(embeddings))


class NoiseGenerator(nn.Module):
    """The noise-input baseline (DeepInversion / Fast-DFKD style): images from z ~ N(0, I).

    A fresh z is drawn every round and optimised together with the decoder.
    """

    def __init__(self, out_shape: tuple[int, int, int], batch_size: int, z_dim: int = 256, ngf: int = 64,
                 upsamplings: int = 2, taper: bool = False):
        super().__init__()
        self.z = nn.Parameter(torch.randn(batch_size, z_dim))
        self.decoder = Decoder(z_dim, out_shape, ngf, upsamplings, taper)

    @torch.no_grad()
    def new_round(self) -> None:
        self.z.normal_()

    def forward(self, targets: torch.Tensor) -> torch.Tensor:
        if targets.shape[0] > self.z.shape[0]:
            raise ValueError(f"batch of {targets.shape[0]} exceeds the generator's {self.z.shape[0]} codes")
        return self.decoder(self.z[: targets.shape[0]])


def round_targets(num_classes: int, batch_size: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Targets 0..K-1 repeated: each block of K samples holds one sample per class."""
    return torch.arange(batch_size, device=device) % num_classes
