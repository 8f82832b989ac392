"""What a synthesis round keeps: the lowest-loss batch of its steps, or of each equal segment of them."""

from __future__ import annotations

import math

import pytest
import torch

from nayer_edge.synthesis.best_batches import BestBatches

CPU = torch.device("cpu")


def _offer_all(best: BestBatches, losses: list[float]) -> None:
    """Step i's batch is a 2×1×2×2 image batch filled with i, so a kept batch says which step it came from."""
    for step, loss in enumerate(losses):
        parts = (torch.tensor(loss / 10), torch.tensor(float(step)), torch.tensor(0.0))
        best.offer(step, torch.tensor(loss), parts, torch.full((2, 1, 2, 2), float(step)))


def _steps_of(images: torch.Tensor) -> list[int]:
    return [int(v) for v in images.reshape(-1, 2, 1, 2, 2)[:, 0, 0, 0, 0]]


def test_one_segment_keeps_the_lowest_loss_batch_of_the_round():
    best = BestBatches(steps=6, segments=1, device=CPU)
    _offer_all(best, [5.0, 3.0, 4.0, 1.5, 2.0, 1.7])
    kept = best.read()
    assert kept.count == 1 and _steps_of(kept.images) == [3]
    assert kept.lowest_loss == pytest.approx(1.5)
    assert kept.parts == pytest.approx({"loss_bn": 0.15, "loss_oh": 3.0, "loss_adv": 0.0})


def test_segments_keep_each_ones_best_and_report_the_lowest():
    best = BestBatches(steps=6, segments=3, device=CPU)
    _offer_all(best, [5.0, 3.0, 4.0, 4.5, 2.0, 2.5])
    kept = best.read()
    assert kept.count == 3 and _steps_of(kept.images) == [1, 2, 4]
    assert kept.lowest_loss == pytest.approx(2.0) and kept.parts["loss_oh"] == 4.0


def test_non_finite_steps_are_counted_and_never_kept():
    best = BestBatches(steps=4, segments=2, device=CPU)
    _offer_all(best, [math.nan, math.inf, 7.0, math.nan])
    kept = best.read()
    assert kept.skipped == 3 and kept.count == 1 and _steps_of(kept.images) == [2]


def test_a_round_of_only_non_finite_steps_keeps_nothing():
    best = BestBatches(steps=3, segments=1, device=CPU)
    _offer_all(best, [math.nan, math.nan, math.inf])
    kept = best.read()
    assert kept.images is None and kept.count == 0 and kept.skipped == 3 and not math.isfinite(kept.lowest_loss)


def test_a_round_cut_short_keeps_the_segments_it_reached():
    best = BestBatches(steps=6, segments=2, device=CPU)
    _offer_all(best, [3.0, 2.0, 4.0, 1.0])  # out of time after step 3: the second segment has one step
    kept = best.read()
    assert _steps_of(kept.images) == [1, 3]


def test_more_segments_than_steps_keep_every_finite_step():
    best = BestBatches(steps=3, segments=10, device=CPU)
    _offer_all(best, [3.0, math.nan, 1.0])
    assert _steps_of(best.read().images) == [0, 2]
