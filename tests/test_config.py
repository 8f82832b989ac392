"""DistillConfig: paper defaults, strict keys and types, value checks, recipes, round trips."""

from __future__ import annotations

import dataclasses

import pytest

from nayer_edge.core.errors import UserError
from nayer_edge.core.strict import closest_name, from_dict, replace
from nayer_edge.distill.config import DistillConfig, list_recipes, load_config


def test_defaults_are_the_papers_cifar10_settings():
    cfg = DistillConfig()
    assert cfg.bn_weight == 10.0
    assert cfg.oh_weight == 0.5
    assert cfg.adv_weight == 1.33
    assert cfg.lr_g == pytest.approx(4e-3)
    assert cfg.temperature == 20.0
    assert cfg.g_life == 10
    assert cfg.synthesis_batch == 400
    assert cfg.kd_batch == 512
    assert cfg.lr == 0.2
    assert cfg.generator == "nayer" and cfg.embedding == "text"
    assert cfg.bn_momentum == 0.9


def test_config_is_frozen():
    cfg = DistillConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.epochs = 3  # type: ignore[misc]


@pytest.mark.parametrize("key,closest", [
    ("temprature", "temperature"), ("lr_gg", "lr_g"), ("synthesis_bach", "synthesis_batch"),
    ("adv_weigth", "adv_weight"),
])
def test_unknown_key_names_the_closest(key, closest):
    with pytest.raises(UserError) as info:
        from_dict(DistillConfig, {key: 1})
    message = str(info.value)
    assert f"unknown key '{key}'" in message
    assert f"did you mean '{closest}'" in message


def test_unknown_key_with_nothing_close_has_no_hint():
    with pytest.raises(UserError) as info:
        load_config(overrides={"zzzzqqq": 1})
    assert "zzzzqqq" in str(info.value) and "did you mean" not in str(info.value)
    assert closest_name("zzzzqqq", ["epochs", "lr"]) == ""


@pytest.mark.parametrize("key,value", [
    ("epochs", "10"),  # string for int
    ("epochs", True),  # bool for int
    ("epochs", 10.5),  # float for int
    ("lr", "fast"),  # string for float
    ("lr", False),  # bool for float
    ("augment_flip", 1),  # int for bool
    ("student", 18),  # int for str
    ("generator", "gan"),  # not one of the Literal choices
    ("memory_backing", "disk"),
    ("time_budget", "1h"),  # string for float | None
])
def test_wrong_type_raises_user_error(key, value):
    with pytest.raises(UserError, match=key):
        load_config(overrides={key: value})


def test_ints_are_accepted_for_floats_and_become_floats():
    cfg = load_config(overrides={"lr": 1, "time_budget": 30})
    assert cfg.lr == 1.0 and isinstance(cfg.lr, float)
    assert cfg.time_budget == 30.0 and isinstance(cfg.time_budget, float)


@pytest.mark.parametrize("changes", [
    {"epochs": -1}, {"epochs": 0}, {"synthesis_batch": 0}, {"kd_batch": -4}, {"memory_capacity": 0},
    {"warmup_epochs": -1}, {"bn_weight": -0.1}, {"adv_weight": -1.0},
    {"bn_momentum": 1.0}, {"bn_momentum": -0.1}, {"holdout_fraction": 1.0},
    {"temperature": 0.0}, {"lr": -0.1}, {"lr_g": 0.0}, {"time_budget": 0.0}, {"device": "tpu"},
    {"seed": -1}, {"seed": 2**32}, {"seed": 5_000_000_000}, {"threads": -1}, {"threads": 1025},
    {"threads": 100_000_000_000}, {"qat_epochs": 1001.0}, {"qat_epochs": 1e12},
    {"batches_per_round": 0}, {"batches_per_round": -2},
])
def test_invalid_values_raise_user_error(changes):
    (key,) = changes
    with pytest.raises(UserError, match=key):
        load_config(overrides=changes)
    with pytest.raises(UserError):  # the dataclass itself checks, not only the loader
        DistillConfig(**changes)


@pytest.mark.parametrize("changes", [
    {"bn_momentum": 0.0}, {"holdout_fraction": 0.0}, {"warmup_epochs": 0}, {"kd_steps": 0},
    {"device": "cuda:1"}, {"time_budget": None}, {"seed": 0}, {"seed": 2**32 - 1}, {"threads": 0},
    {"threads": 1024}, {"qat_epochs": 1000.0}, {"batches_per_round": 1},
    {"batches_per_round": 100},
])
def test_boundary_values_are_accepted(changes):
    cfg = load_config(overrides=changes)
    (key, value), = changes.items()
    assert getattr(cfg, key) == value


@pytest.mark.parametrize("value", [1.0, -0.5])
def test_sgd_momentum_out_of_range_raises_user_error(value):
    with pytest.raises(UserError, match="momentum"):
        load_config(overrides={"momentum": value})


def test_load_demo_recipe_and_overrides():
    assert "demo-digits" in list_recipes()
    cfg = load_config("demo-digits")
    assert cfg.student == "cnn_tiny"
    assert cfg.augment_flip is False and cfg.ngf == 32 and cfg.schedule == "auto"  # the schedule is planned
    assert cfg.time_budget == 170.0 and isinstance(cfg.time_budget, float)
    assert cfg.bn_weight == 10.0  # not in the recipe: the default

    cfg = load_config("demo-digits", overrides={"epochs": 3, "lr": 0.05, "seed": None})
    assert cfg.epochs == 3 and cfg.lr == 0.05
    assert cfg.seed == 0  # a None override means "not given"
    assert cfg.student == "cnn_tiny"


def test_overrides_without_a_recipe_apply_onto_the_defaults():
    cfg = load_config(overrides={"epochs": 7})
    assert cfg == dataclasses.replace(DistillConfig(), epochs=7)
    assert load_config() == DistillConfig()


def test_unknown_recipe_lists_the_available_ones():
    with pytest.raises(UserError) as info:
        load_config("demo-digit")
    message = str(info.value)
    assert "unknown recipe 'demo-digit'" in message
    assert "did you mean 'demo-digits'" in message
    assert "available:" in message and "demo-digits" in message.split("available:")[1]


def test_recipe_path_with_unknown_key(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("epochs: 5\nkd_bach: 64\n")
    with pytest.raises(UserError) as info:
        load_config(path)
    message = str(info.value)
    assert "kd_bach" in message and "did you mean 'kd_batch'" in message
    assert "mine.yaml" in message  # says which file


def test_recipe_path_loads_and_overrides_win(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("epochs: 5\nkd_batch: 64\nmemory_backing: mmap\n")
    cfg = load_config(str(path), overrides={"kd_batch": 32})
    assert cfg.epochs == 5 and cfg.kd_batch == 32 and cfg.memory_backing == "mmap"


@pytest.mark.parametrize("text,fragment", [
    ("- a\n- b\n", "mapping"), ("epochs: [1\n", "YAML"), ("epochs: -3\n", "epochs"),
])
def test_bad_recipe_files_raise_user_error(tmp_path, text, fragment):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(UserError, match=fragment):
        load_config(path)


def test_missing_recipe_path_raises_user_error(tmp_path):
    with pytest.raises(UserError, match="no such file"):
        load_config(tmp_path / "absent.yaml")


def test_empty_recipe_file_gives_the_defaults(tmp_path):
    path = tmp_path / "empty.yaml"
    path.write_text("# nothing\n")
    assert load_config(path) == DistillConfig()


def test_recipe_with_exponent_float_without_dot(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text("lr_g: 4e-3\nlr_min: 2e-4\n")
    cfg = load_config(path)
    assert cfg.lr_g == pytest.approx(4e-3) and cfg.lr_min == pytest.approx(2e-4)


@pytest.mark.parametrize("cfg", [
    DistillConfig(),
    load_config("demo-digits"),
    DistillConfig(generator="noise", embedding="onehot", time_budget=12.5, memory_backing="mmap", device="cpu"),
])
def test_to_dict_round_trips_through_from_dict(cfg):
    data = cfg.to_dict()
    assert set(data) == {f.name for f in dataclasses.fields(DistillConfig)}
    assert all(isinstance(v, (str, int, float, bool, type(None))) for v in data.values())
    assert from_dict(DistillConfig, data) == cfg


def test_to_dict_round_trips_through_yaml(tmp_path):
    import yaml

    cfg = load_config("demo-digits", overrides={"lr_g": 1e-3, "lr_min": 2e-5})
    path = tmp_path / "resolved.yaml"
    path.write_text(yaml.safe_dump(cfg.to_dict()))
    assert load_config(path) == cfg


def test_strict_replace_checks_like_from_dict():
    cfg = replace(DistillConfig(), epochs=3)
    assert cfg.epochs == 3 and cfg.lr == 0.2
    with pytest.raises(UserError, match="epochs"):
        replace(DistillConfig(), epochs="3")
    with pytest.raises(UserError, match="unknown key"):
        replace(DistillConfig(), epoch=3)
