"""Distillation losses: the temperature KD divergence and NAYER's masked adversarial term."""

from __future__ import annotations

import pytest
import torch
from torch.distributions import Categorical, kl_divergence

from nayer_edge.distill.losses import adversarial_loss, kd_divergence


def logits(n: int = 8, k: int = 10, seed: int = 0, scale: float = 3.0) -> torch.Tensor:
    return scale * torch.randn(n, k, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def reference_kd(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """Per-sample KL(softmax(t/T) ‖ softmax(s/T)) · T², from torch.distributions."""
    p_teacher = Categorical(logits=teacher / temperature)
    p_student = Categorical(logits=student / temperature)
    return kl_divergence(p_teacher, p_student) * temperature**2


def explicit_kd(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """The same from the definition Σ_c p_c (log p_c − log q_c), written out by hand."""
    log_p = teacher / temperature - torch.logsumexp(teacher / temperature, dim=1, keepdim=True)
    log_q = student / temperature - torch.logsumexp(student / temperature, dim=1, keepdim=True)
    return (log_p.exp() * (log_p - log_q)).sum(1) * temperature**2


# --- kd_divergence ------------------------------------------------------------------------------------


@pytest.mark.parametrize("temperature", [1.0, 4.0, 20.0])
def test_kd_is_zero_for_identical_logits(temperature):
    t = logits()
    assert kd_divergence(t, t.clone(), temperature).item() == pytest.approx(0.0, abs=1e-12)
    # invariant to a per-sample shift of the logits (same softmax)
    shifted = t + torch.arange(8, dtype=t.dtype)[:, None]
    assert kd_divergence(shifted, t, temperature).item() == pytest.approx(0.0, abs=1e-10)


@pytest.mark.parametrize("temperature", [1.0, 4.0, 20.0])
def test_kd_matches_torch_distributions_and_the_explicit_formula(temperature):
    s, t = logits(seed=1), logits(seed=2)
    per_sample = kd_divergence(s, t, temperature, reduction="none")
    assert per_sample.shape == (8,)
    assert (per_sample > 0).all()
    torch.testing.assert_close(per_sample, reference_kd(s, t, temperature), rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(per_sample, explicit_kd(s, t, temperature), rtol=1e-9, atol=1e-12)
    # batchmean is the mean over samples of the per-sample sums
    batch = kd_divergence(s, t, temperature)
    assert batch.dim() == 0
    assert batch.item() == pytest.approx(per_sample.mean().item(), rel=1e-12)


def test_kd_direction_is_teacher_to_student():
    s, t = logits(seed=3), logits(seed=4)
    forward = kd_divergence(s, t, 2.0, reduction="none")
    reverse = reference_kd(t, s, 2.0)  # KL(s ‖ t): a different quantity
    assert not torch.allclose(forward, reverse, rtol=1e-3)
    torch.testing.assert_close(forward, reference_kd(s, t, 2.0))


@pytest.mark.parametrize("temperature", [0.5, 3.0, 20.0])
def test_kd_scales_as_temperature_squared(temperature):
    # kd(s, t, T) is exactly T² · kd(s/T, t/T, 1)
    s, t = logits(seed=5), logits(seed=6)
    scaled = kd_divergence(s, t, temperature)
    unscaled = kd_divergence(s / temperature, t / temperature, 1.0)
    assert scaled.item() == pytest.approx(temperature**2 * unscaled.item(), rel=1e-10)


def test_kd_t_squared_factor_keeps_the_high_temperature_limit_finite():
    # For large T, KL ≈ Var_c(t − s) / (2T²), so T²·KL → ½ · Var_c(t − s) (variance over classes, uniform).
    s, t = logits(seed=7), logits(seed=8)
    limit = 0.5 * (t - s).var(dim=1, unbiased=False)
    per_sample = kd_divergence(s, t, 1000.0, reduction="none")
    torch.testing.assert_close(per_sample, limit, rtol=5e-3, atol=0)


def test_kd_gradient_is_softmax_difference_over_t():
    # ∂/∂s of T²·KL(p_t ‖ p_s) = T·(p_s − p_t) per sample; batchmean divides by N
    s, t = logits(seed=9).requires_grad_(), logits(seed=10)
    temperature = 4.0
    kd_divergence(s, t, temperature).backward()
    expected = temperature * ((s / temperature).softmax(1) - (t / temperature).softmax(1)) / s.shape[0]
    torch.testing.assert_close(s.grad, expected.detach())


def test_kd_unknown_reduction_raises():
    with pytest.raises(ValueError, match="reduction"):
        kd_divergence(logits(), logits(seed=1), reduction="sum")


# --- adversarial_loss ---------------------------------------------------------------------------------


def agreeing_pair() -> tuple[torch.Tensor, torch.Tensor]:
    """Student and teacher logits with the same argmax on every sample but different distributions."""
    t = logits(seed=11)
    s = 0.5 * t + 0.1 * logits(seed=12, scale=1.0)
    s.scatter_(1, t.argmax(1, keepdim=True), 50.0)  # force the same winner
    assert torch.equal(s.argmax(1), t.argmax(1))
    return s, t


def test_adversarial_is_zero_when_all_argmaxes_disagree():
    t = logits(seed=13)
    s = logits(seed=14)
    s.scatter_(1, t.argmax(1, keepdim=True), -100.0)  # the teacher's class is never the student's
    assert (s.argmax(1) != t.argmax(1)).all()
    assert kd_divergence(s, t).item() > 1.0  # the distributions are far apart...
    assert adversarial_loss(s, t).item() == 0.0  # ...but no sample counts


def test_adversarial_is_negative_kd_mean_when_all_agree():
    s, t = agreeing_pair()
    loss = adversarial_loss(s, t)
    assert loss.item() < 0
    assert loss.item() == pytest.approx(-kd_divergence(s, t).item(), rel=1e-12)
    assert adversarial_loss(t, t.clone()).item() == pytest.approx(0.0, abs=1e-12)


def test_adversarial_masks_disagreeing_samples_and_averages_over_all():
    s, t = agreeing_pair()
    disagree = torch.tensor([1, 4, 6])
    # make the student pick another class on those samples
    s[disagree] = t[disagree].clone()
    other = (t[disagree].argmax(1) + 1) % t.shape[1]
    s[disagree, other] = 200.0
    agree = torch.ones(8, dtype=torch.bool)
    agree[disagree] = False
    assert torch.equal(s.argmax(1) == t.argmax(1), agree)

    per_sample = reference_kd(s, t, 1.0)
    expected = -(per_sample * agree).sum() / 8  # mean over the whole batch, not over the agreeing ones
    assert adversarial_loss(s, t).item() == pytest.approx(expected.item(), rel=1e-10)


def test_adversarial_gradient_is_zero_on_disagreeing_samples():
    s, t = agreeing_pair()
    disagree = torch.tensor([0, 3])
    other = (t[disagree].argmax(1) + 1) % t.shape[1]
    s[disagree, other] = 200.0
    s.requires_grad_()
    t_leaf = t.clone().requires_grad_()

    adversarial_loss(s, t_leaf).backward()

    assert torch.count_nonzero(s.grad[disagree]) == 0
    assert torch.count_nonzero(t_leaf.grad[disagree]) == 0
    agree = torch.tensor([i for i in range(8) if i not in (0, 3)])
    assert (s.grad[agree].abs().sum(1) > 0).all()
    # the sign pushes the student away from the teacher: −(p_s − p_t)/N per agreeing sample
    expected = -(s.detach()[agree].softmax(1) - t[agree].softmax(1)) / 8
    torch.testing.assert_close(s.grad[agree], expected)
