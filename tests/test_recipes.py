"""Every recipe in recipes/ loads strictly, names a zoo student, and the paper recipes carry the paper's
settings (the NAYER paper's appendix and released code)."""

from __future__ import annotations

import pytest

from nayer_edge.distill.config import list_recipes, load_config, recipes_dir
from nayer_edge.zoo import list_models

PAPER = {  # name: (student, g_steps, rounds per epoch, warm-up rounds, synthesis batch, KD batch, KD steps, lr)
    "cifar10-resnet34-resnet18": ("resnet18", 30, 2, 10, 400, 512, 400, 0.2),
    "cifar10-wrn40_2-wrn16_2": ("wrn16_2", 30, 2, 10, 400, 512, 400, 0.2),
    "cifar100-resnet34-resnet18": ("resnet18", 40, 2, 10, 400, 512, 400, 0.2),
    "cifar100-wrn40_2-wrn16_2": ("wrn16_2", 40, 2, 10, 400, 512, 400, 0.2),
    "tinyimagenet-resnet34-resnet18": ("resnet18", 60, 4, 20, 200, 256, 1000, 0.1),
}


def test_recipes_dir_holds_the_paper_recipes():
    assert set(PAPER) <= set(list_recipes())
    assert list_recipes() == sorted(p.stem for p in recipes_dir().glob("*.yaml"))


@pytest.mark.parametrize("name", list_recipes())
def test_every_recipe_loads(name):
    config = load_config(name)
    assert config.student in list_models()
    # by path as well as by name
    assert load_config(str(recipes_dir() / f"{name}.yaml")) == config


@pytest.mark.parametrize("name", sorted(PAPER))
def test_paper_recipes_carry_the_paper_settings(name):
    c = load_config(name)
    student, g_steps, rounds, warmup_rounds, synthesis_batch, kd_batch, kd_steps, lr = PAPER[name]
    assert (c.student, c.g_steps, c.rounds_per_epoch, c.warmup_rounds) == (student, g_steps, rounds, warmup_rounds)
    assert (c.synthesis_batch, c.kd_batch, c.kd_steps, c.lr) == (synthesis_batch, kd_batch, kd_steps, lr)
    assert (c.epochs, c.warmup_epochs, c.g_life) == (300, 20, 10)
    assert (c.bn_weight, c.oh_weight, c.adv_weight, c.bn_momentum) == (10.0, 0.5, 1.33, 0.9)
    assert (c.lr_g, c.noisy_dim, c.ngf, c.temperature) == (4e-3, 1000, 64, 20.0)
    assert (c.momentum, c.weight_decay, c.lr_min) == (0.9, 1e-4, 2e-4)
    assert (c.augment_pad, c.augment_flip, c.kd_during_warmup) == (4, True, False)
    assert c.time_budget is None and c.generator == "nayer" and c.embedding == "text"
    # The memory keeps every sample of the run, like the reference's folder of PNGs.
    total = c.warmup_epochs * c.warmup_rounds * c.synthesis_batch + \
        (c.epochs - c.warmup_epochs) * c.rounds_per_epoch * c.synthesis_batch
    assert c.memory_capacity >= total
