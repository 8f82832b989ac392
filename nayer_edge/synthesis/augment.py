"""Differentiable image augmentation on batches: random crop with zero padding and horizontal flip."""

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
