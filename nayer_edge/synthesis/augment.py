"""Differentiable image augmentation on batches: random crop with zero padding, horizontal flip, random zoom."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def random_crop_flip(images: torch.Tensor, pad: int, flip: bool, generator: torch.Generator | None = None
                     ) -> torch.Tensor:
    """Per-sample random translation by up to ``pad`` pixels (zero fill) and optional h-flip.

    Gradients flow to ``images`` (the generator is trained through this).
    """
    n, _, height, width = images.shape
    out = images
    if pad > 0:
        padded = F.pad(images, (pad, pad, pad, pad))
        # Drawn on the CPU (one stream whatever the device); non_blocking: a GPU run never waits for the copy.
        shifts = torch.randint(0, 2 * pad + 1, (n, 2), generator=generator, device="cpu").to(images.device,
                                                                                             non_blocking=True)
        rows = (torch.arange(height, device=images.device)[None, :] + shifts[:, :1])  # n × H
        cols = (torch.arange(width, device=images.device)[None, :] + shifts[:, 1:])  # n × W
        index_rows = rows[:, None, :, None].expand(n, images.shape[1], height, padded.shape[-1])
        out = padded.gather(2, index_rows)
        index_cols = cols[:, None, None, :].expand(n, images.shape[1], height, width)
        out = out.gather(3, index_cols)
    if flip:
        mask = torch.rand(n, generator=generator, device="cpu").to(images.device, non_blocking=True) < 0.5
        out = torch.where(mask[:, None, None, None], out.flip(3), out)
    return out


def random_zoom(images: torch.Tensor, max_zoom: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Per-sample random zoom-in by a factor in [1, ``max_zoom``] around a random centre that keeps the view inside
    the image (bilinear): the crop-and-resize of a smaller region, as a real photo patch seen closer."""
    if max_zoom <= 1.0:
        return images
    n = images.shape[0]
    draws = torch.rand(n, 3, generator=generator, device="cpu")
    scale = 1.0 / (1.0 + (max_zoom - 1.0) * draws[:, 0])  # the view's side, as a share of the image's
    shift = (1.0 - scale)[:, None] * (2 * draws[:, 1:] - 1)  # centre within [-(1 - s), 1 - s]
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 1, 1] = scale, scale
    theta[:, :, 2] = shift
    theta = theta.to(images.device, images.dtype, non_blocking=True)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)
