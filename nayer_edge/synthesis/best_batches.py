"""What a synthesis round keeps: the lowest-loss batch of its generator steps (the paper), or of each of several
equal segments of them. Tracked on the device and read once, at the end of the round: the host never waits
for the GPU between steps."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


def kept_per_round(steps: int, segments: int) -> int:
    """How many batches a round of ``steps`` generator steps keeps when asked for ``segments``: one a step at most."""
    return max(1, min(segments, steps))


@dataclass(frozen=True)
class KeptBatches:
    """A round's kept batches (``images``: ``count`` batches one after the other, or None when every step of the
    round was NaN/Inf), the lowest loss and its terms, and the count of non-finite steps."""

    images: torch.Tensor | None
    lowest_loss: float
    parts: dict[str, float]
    skipped: int
    count: int


class BestBatches:
    """The lowest-loss batch of each of ``segments`` equal runs of a round's ``steps`` generator steps (one step
    a segment at the most).

    Example::

        best = BestBatches(steps=30, segments=1, device=device)
        for step in range(30):
            ...
            best.offer(step, loss, (loss_bn, loss_oh, loss_adv), images)
        batches = best.read()  # finite batches only; batches.lowest_loss, batches.parts
    """

    def __init__(self, steps: int, segments: int, device: torch.device):
        self.device = device
        segments = kept_per_round(steps, segments)
        self._ends = {round((i + 1) * steps / segments) for i in range(segments)}
        self._losses: list[torch.Tensor] = []
        self._parts: list[torch.Tensor] = []
        self._images: list[torch.Tensor] = []
        self._skipped = torch.zeros((), dtype=torch.int64, device=device)
        self._open = False

    def offer(self, step: int, loss: torch.Tensor, parts: tuple[torch.Tensor, ...], images: torch.Tensor
              ) -> torch.Tensor:
        """Step ``step``'s batch and its loss (a non-finite loss is counted and never kept); returns whether the
        loss is finite (a 0-dim bool tensor on the device)."""
        loss = loss.detach()
        finite = torch.isfinite(loss)
        self._skipped += ~finite
        kept = images.detach().float()
        stacked = torch.stack([p.to(self.device) for p in parts]).detach()
        if not self._open:
            self._losses.append(torch.where(finite, loss, torch.full((), math.inf, device=self.device)))
            self._parts.append(stacked)
            self._images.append(kept)
            self._open = True
        else:
            better = finite & (loss < self._losses[-1])
            self._losses[-1] = torch.where(better, loss, self._losses[-1])
            self._parts[-1] = torch.where(better, stacked, self._parts[-1])
            self._images[-1] = torch.where(better, kept, self._images[-1])
        if step + 1 in self._ends:
            self._open = False
        return finite

    def read(self) -> KeptBatches:
        """The kept batches whose loss is finite, in step order, with the lowest loss of the round and its terms
        (one read from the device)."""
        n = len(self._losses)
        values = torch.cat([torch.stack(self._losses), torch.stack(self._parts).flatten(), self._skipped[None]]).tolist()
        losses, parts = values[:n], values[n:-1]
        finite = [i for i, v in enumerate(losses) if math.isfinite(v)]
        if not finite:
            return KeptBatches(None, losses[0], {}, int(values[-1]), 0)
        lowest = min(finite, key=losses.__getitem__)
        bn, oh, adv = parts[3 * lowest:3 * lowest + 3]
        images = self._images[finite[0]] if len(finite) == 1 else torch.cat([self._images[i] for i in finite])
        return KeptBatches(images, losses[lowest], {"loss_bn": bn, "loss_oh": oh, "loss_adv": adv},
                           int(values[-1]), len(finite))
