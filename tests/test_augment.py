"""random_crop_flip: per-sample zero-padded translation and horizontal flip, differentiable."""

from __future__ import annotations

import pytest
import torch

from nayer_edge.synthesis.augment import random_crop_flip


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def images(n: int = 6, c: int = 3, h: int = 12, w: int = 10, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, c, h, w, generator=seeded(seed))


@pytest.mark.parametrize("pad,flip", [(0, False), (0, True), (2, False), (4, True)])
@pytest.mark.parametrize("shape", [(5, 3, 12, 10), (1, 1, 16, 16), (7, 2, 5, 9)])
def test_shape_and_dtype_preserved(pad, flip, shape):
    x = torch.rand(*shape, generator=seeded(1))
    out = random_crop_flip(x, pad, flip, generator=seeded(2))
    assert out.shape == x.shape and out.dtype == x.dtype


def test_no_pad_no_flip_is_identity():
    x = images()
    out = random_crop_flip(x, 0, False, generator=seeded(0))
    assert torch.equal(out, x)


def test_a_bright_pixel_moves_by_at_most_pad_and_keeps_its_mass():
    pad, size, n = 3, 16, 400
    x = torch.zeros(n, 1, size, size)
    x[:, 0, 8, 7] = 1.0
    out = random_crop_flip(x, pad, False, generator=seeded(0))

    assert out.sum(dim=(1, 2, 3)).tolist() == [1.0] * n  # 8±3, 7±3 always stay inside
    flat = out.view(n, -1).argmax(1)
    d_row = flat // size - 8
    d_col = flat % size - 7
    assert d_row.abs().max().item() <= pad and d_col.abs().max().item() <= pad
    # every translation in [−pad, pad] is used, in both directions
    assert set(d_row.tolist()) == set(range(-pad, pad + 1))
    assert set(d_col.tolist()) == set(range(-pad, pad + 1))
    # rows and columns shift independently
    assert len({(r, c) for r, c in zip(d_row.tolist(), d_col.tolist())}) > 30


def test_translation_is_per_sample_and_fills_with_zeros():
    pad = 2
    x = torch.ones(64, 1, 8, 8)
    out = random_crop_flip(x, pad, False, generator=seeded(3))
    assert set(out.unique().tolist()) <= {0.0, 1.0}
    zeros = (out == 0).sum(dim=(1, 2, 3))
    assert zeros.max().item() <= 8 * 8 - 6 * 6  # at most `pad` rows and columns are emptied
    assert zeros.min().item() == 0 and zeros.max().item() > 0  # some samples unshifted, some shifted
    # each output is the input shifted: the surviving block is a contiguous rectangle of ones
    for sample in out[:, 0]:
        rows = sample.any(1).nonzero().flatten()
        cols = sample.any(0).nonzero().flatten()
        block = sample[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
        assert bool((block == 1).all())


def test_a_pixel_near_the_edge_can_leave_the_image():
    pad = 2
    x = torch.zeros(200, 1, 8, 8)
    x[:, 0, 0, 0] = 1.0
    out = random_crop_flip(x, pad, False, generator=seeded(4))
    mass = out.sum(dim=(1, 2, 3))
    assert set(mass.tolist()) == {0.0, 1.0}  # either kept whole or shifted out, never split
    assert 0 < mass.sum().item() < 200


def test_flip_mirrors_about_half_the_samples_exactly():
    n = 400
    x = images(n=n, c=2, h=5, w=7, seed=5)  # random pixels: no image equals its mirror
    out = random_crop_flip(x, 0, True, generator=seeded(6))
    same = (out == x).flatten(1).all(1)
    mirrored = (out == x.flip(3)).flatten(1).all(1)
    assert bool((same ^ mirrored).all())  # every sample is exactly one of the two
    # Binomial(400, 0.5): mean 200, sd 10; 150..250 is five standard deviations
    assert 150 <= int(mirrored.sum()) <= 250


def test_flip_and_translation_compose():
    x = torch.zeros(300, 1, 9, 9)
    x[:, 0, 4, 1] = 1.0  # left of centre: a flip moves it to column 7
    out = random_crop_flip(x, 1, True, generator=seeded(7))
    flat = out.view(300, -1).argmax(1)
    rows, cols = flat // 9, flat % 9
    assert torch.equal(out.sum(dim=(1, 2, 3)), torch.ones(300))
    assert set(rows.tolist()) == {3, 4, 5}
    assert set(cols.tolist()) == {0, 1, 2, 6, 7, 8}


def test_gradients_flow_to_the_input():
    x = torch.ones(16, 2, 8, 8, requires_grad=True)
    out = random_crop_flip(x, 2, True, generator=seeded(8))
    out.sum().backward()
    assert x.grad is not None
    # each input pixel lands in the output at most once: the gradient is its 0/1 indicator
    assert set(x.grad.unique().tolist()) <= {0.0, 1.0}
    assert x.grad.sum().item() == pytest.approx(out.sum().item())
    assert x.grad.sum().item() > 0.5 * x.numel()


def test_gradient_routes_back_through_the_shift():
    x = torch.zeros(1, 1, 6, 6, requires_grad=True)
    weights = torch.arange(1.0, 37.0).view(1, 1, 6, 6)  # all nonzero
    out = random_crop_flip(x, 1, False, generator=seeded(9))
    (out * weights).sum().backward()
    # the gradient is the weight map moved back by the inverse shift: nonzeros form a shifted copy
    nonzero = x.grad[0, 0] != 0
    assert 25 <= int(nonzero.sum()) <= 36
    values = sorted(x.grad[x.grad != 0].tolist())
    assert len(values) == len(set(values))  # one weight per pixel, no sums of several


def test_deterministic_given_a_generator_seed():
    x = images(n=32)
    a = random_crop_flip(x, 3, True, generator=seeded(10))
    b = random_crop_flip(x, 3, True, generator=seeded(10))
    c = random_crop_flip(x, 3, True, generator=seeded(11))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_uses_the_global_rng_without_a_generator():
    x = images(n=32)
    torch.manual_seed(12)
    a = random_crop_flip(x, 2, True)
    torch.manual_seed(12)
    b = random_crop_flip(x, 2, True)
    assert torch.equal(a, b)


def test_random_zoom_magnifies_by_a_factor_within_its_range_and_stays_inside_the_image():
    from nayer_edge.synthesis.augment import random_zoom

    ramp = torch.linspace(0, 1, 64).expand(8, 1, 64, 64).contiguous()  # value = horizontal position
    assert torch.equal(random_zoom(ramp, 1.0), ramp)  # 1: off, and no random draw
    zoomed = random_zoom(ramp, 3.0, torch.Generator().manual_seed(0))
    # Magnified s times, the ramp climbs 1/s as fast across the same pixels: s in [1, 3].
    slope = (zoomed[:, 0, 32, 40] - zoomed[:, 0, 32, 20]) / (ramp[0, 0, 32, 40] - ramp[0, 0, 32, 20])
    assert bool((slope > 1 / 3 - 0.01).all() and (slope < 1.01).all()), slope
    assert float(slope.max() / slope.min()) > 1.3  # the factor is drawn per sample
    assert zoomed.min() >= ramp.min() - 1e-6 and zoomed.max() <= ramp.max() + 1e-6
