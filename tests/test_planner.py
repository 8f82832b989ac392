"""The schedule planner: its arithmetic on given step costs, and planned runs end to end (budget kept, plan
recorded, too-small budgets refused, a resumed run keeps its plan)."""

from __future__ import annotations

import json
import math
import os
import random
import signal
import subprocess
import sys
import time

import pytest

from nayer_edge.core.errors import UserError
from nayer_edge.distill.config import DistillConfig, load_config
from nayer_edge.distill.generator_width import MIN_SAMPLES_PER_CLASS, narrower_ngf
from nayer_edge.distill.planner import (
    FIRST_STEP_SHARE,
    SCHEDULE_KEYS,
    SYNTHESIS_SHARE,
    LinearCost,
    Plan,
    StepCosts,
    needs_plan,
    plan_schedule,
    user_set_keys,
)
from tests.conftest import REPO, run_cli
from tests.test_cli import assert_user_error


def costs(gen: float = 0.004, fixed: float = 0.01, kd: float = 0.0004, warm: float = 0.8) -> StepCosts:
    """Step costs: ``gen`` seconds per image of a generator step (``warm`` × that in warm-up), ``kd`` per image
    of a KD step."""
    return StepCosts(generator_warmup=LinearCost(fixed, gen * warm), generator=LinearCost(fixed, gen),
                     kd=LinearCost(fixed / 2, kd), forward=LinearCost(0.001, kd / 4), sample_bytes=3 * 32 * 32)


def check_fits(plan: Plan, budget: float) -> None:
    values = {**plan.kept, **plan.values}
    # The schedule fills the budget: all but its last epoch fit, and the last may be cut by the clock (for a
    # budget shorter than the shortest schedule, one warm-up and one normal epoch, the clock cuts that).
    shortest = values["epochs"] == values["warmup_epochs"] + 1
    assert shortest or plan.total_seconds - plan.epoch_seconds <= budget * 1.001, (plan.total_seconds, budget)
    assert plan.total_seconds >= min(budget * 0.8, plan.total_seconds), plan
    assert values["epochs"] > values["warmup_epochs"] >= 1
    assert values["synthesis_batch"] >= 1 and values["kd_batch"] >= 1 and values["kd_steps"] >= 1
    assert values["memory_capacity"] >= min(plan.expected_samples, 1000)


@pytest.mark.parametrize("seed", range(40))
def test_a_plan_fits_any_step_costs_and_budget(seed):
    rng = random.Random(seed)
    c = costs(gen=10 ** rng.uniform(-5, -1.5), fixed=10 ** rng.uniform(-4, -1), kd=10 ** rng.uniform(-6, -2.5),
              warm=rng.uniform(0.4, 1.0))
    k = rng.choice([2, 10, 100, 1000])
    budget = 10 ** rng.uniform(1.5, 4.5)
    try:
        plan = plan_schedule(c, DistillConfig(time_budget=budget), user_set=set(), num_classes=k, loop_budget=budget)
    except UserError as err:  # only when one round and one KD step do not fit
        assert "too small" in str(err)
        assert 10 * c.generator_warmup(k) + c.kd(32) > budget * 0.05
        return
    check_fits(plan, budget)
    values = plan.values
    assert values["synthesis_batch"] % k == 0  # whole one-sample-per-class blocks
    # The student's first step comes early: within FIRST_STEP_SHARE of the budget, or after one round when even
    # one round is longer than that.
    one_round = values["g_steps"] * c.generator_warmup(values["synthesis_batch"])
    assert plan.first_kd_step_seconds <= max(FIRST_STEP_SHARE * budget, one_round) * 1.001
    # Synthesis takes its planned share of a normal epoch (up to the rounding of the KD step count).
    synthesis = values["rounds_per_epoch"] * values["g_steps"] * c.generator(values["synthesis_batch"])
    kd = values["kd_steps"] * c.kd(values["kd_batch"])
    if values["kd_steps"] > 2:
        assert synthesis / (synthesis + kd) == pytest.approx(SYNTHESIS_SHARE, abs=0.08)


def test_a_cpu_plan_for_the_photo_teacher_is_sized_for_the_cpu():
    """Costs like those measured on the 3×32×32 photo teacher here: the paper's batches would spend minutes a round."""
    c = costs(gen=0.012, fixed=0.02, kd=0.0008)
    plan = plan_schedule(c, DistillConfig(time_budget=600), user_set=set(), num_classes=10, loop_budget=580)
    check_fits(plan, 580)
    one_round = plan.values["g_steps"] * c.generator_warmup(plan.values["synthesis_batch"])
    assert plan.values["synthesis_batch"] < 400 and plan.first_kd_step_seconds <= max(0.03 * 580, one_round)
    assert plan.first_kd_step_seconds <= 0.05 * 580
    assert plan.values["epochs"] >= 5


@pytest.mark.parametrize("chosen", [{"synthesis_batch": 200}, {"g_steps": 12, "kd_steps": 7},
                                    {"epochs": 3, "warmup_epochs": 1}, {"kd_batch": 96, "memory_capacity": 1234},
                                    {"rounds_per_epoch": 5, "warmup_rounds": 2}])
def test_user_set_values_survive(chosen):
    config = load_config(None, {**chosen, "time_budget": 300})
    keys = set(chosen) | {"time_budget"}
    plan = plan_schedule(costs(), config, user_set=keys, num_classes=10, loop_budget=290)
    planned = plan.apply(config)
    for key, value in chosen.items():
        assert getattr(planned, key) == value and key not in plan.values and plan.kept[key] == value
    assert set(plan.values) == set(SCHEDULE_KEYS) - set(chosen)


def test_the_generator_is_narrowed_for_larger_images_only_with_a_budget():
    from nayer_edge.distill.generator_width import planned_ngf

    budgeted = DistillConfig(time_budget=600)
    assert [planned_ngf(budgeted, set(), (3, s, s)) for s in (16, 28, 32, 48, 64, 224)] == [64, 64, 64, 32, 16, 16]
    assert planned_ngf(budgeted, {"ngf"}, (3, 64, 64)) == 64  # the user's width is kept
    assert planned_ngf(DistillConfig(time_budget=600, ngf=24), set(), (3, 32, 32)) == 24  # never wider than asked
    assert planned_ngf(DistillConfig(), set(), (3, 64, 64)) == 64  # no budget: the paper's
    assert planned_ngf(DistillConfig(time_budget=600, schedule="fixed"), set(), (3, 64, 64)) == 64


def test_user_set_keys_default_to_what_differs_from_the_defaults():
    config = DistillConfig(g_steps=7, lr=0.1)
    assert user_set_keys(config, None) == {"g_steps", "lr"}
    assert user_set_keys(config, {"g_steps", "kd_steps"}) == {"g_steps", "kd_steps"}
    assert not needs_plan(load_config(None, {"schedule": "fixed", "time_budget": 9}), set())
    every = set(SCHEDULE_KEYS)
    assert not needs_plan(DistillConfig(time_budget=9), every)
    # Without a budget only the batches are planned: nothing to measure when both were chosen.
    assert not needs_plan(DistillConfig(), {"synthesis_batch", "kd_batch"})
    assert needs_plan(DistillConfig(), {"synthesis_batch"})


def test_a_budget_too_small_for_one_step_is_refused():
    slow = costs(gen=0.05, fixed=0.5)
    with pytest.raises(UserError, match="too small"):
        plan_schedule(slow, DistillConfig(time_budget=5), user_set=set(), num_classes=10, loop_budget=3)
    with pytest.raises(UserError, match="too small"):
        plan_schedule(slow, DistillConfig(time_budget=5), user_set=set(), num_classes=10, loop_budget=-2)


def test_no_budget_keeps_the_paper_epochs_and_says_how_long():
    config = DistillConfig()
    slow_cpu = plan_schedule(costs(gen=0.015), config, user_set=set(), num_classes=10, loop_budget=None)
    assert "epochs" not in slow_cpu.values and slow_cpu.apply(config).epochs == config.epochs
    assert slow_cpu.values["synthesis_batch"] < config.synthesis_batch  # a step of about a second at most
    assert ("hours" in slow_cpu.notes[0] or "days" in slow_cpu.notes[0]) and "--time-budget" in slow_cpu.notes[0]
    gpu = plan_schedule(costs(gen=2e-6, fixed=2e-3, kd=1e-6), config, user_set=set(), num_classes=10,
                        loop_budget=None)
    assert gpu.apply(config).synthesis_batch == 400 and gpu.apply(config).kd_batch == 512
    assert "--time-budget" not in gpu.notes[0]


def test_plan_round_trips_through_json():
    plan = plan_schedule(costs(), DistillConfig(time_budget=100), user_set={"g_steps"}, num_classes=10,
                         loop_budget=90)
    again = Plan.from_dict(json.loads(json.dumps(plan.to_dict())))
    assert again.values == plan.values and again.kept == plan.kept
    assert again.costs.generator(100) == pytest.approx(plan.costs.generator(100))


def test_planned_epochs_follow_the_clock():
    """After the warm-up the epoch count is refitted to the time left at the pace measured so far, both ways,
    and the learning rate's schedule with it."""
    import torch

    from nayer_edge.distill.engine import Distiller
    from nayer_edge.synthesis.embeddings import onehot_embeddings
    from nayer_edge.zoo import create_model

    config = load_config(None, {"student": "cnn_tiny", "epochs": 8, "warmup_epochs": 1, "kd_steps": 5,
                                "memory_capacity": 100, "device": "cpu"})
    model = lambda: create_model("cnn_tiny", num_classes=10, in_channels=1, input_size=16)
    distiller = Distiller(model(), model(), onehot_embeddings(10), config, (1, 16, 16), 10, torch.device("cpu"))
    distiller.state.epoch = 3
    distiller.state.history = [{"epoch": e + 1, "wall_seconds": 10.0 * (e + 1)} for e in range(3)]
    # Warm-up ended at 10 s, two epochs since took 20 s: 10 s each; 100 s left hold 10 more.
    assert distiller._fit_epochs(100.0, 30.0).epochs == 13 and distiller.cfg.epochs == 13
    assert distiller.total_kd_steps == (13 if config.kd_during_warmup else 12) * 5
    assert distiller._fit_epochs(24.0, 30.0).epochs == 5  # 2.4 epochs left: 2 (the budget cuts the rest)
    assert distiller._fit_epochs(-5.0, 30.0).epochs == 3  # over time: none more, never fewer than done
    distiller.state.epoch = 1  # still in the warm-up: nothing measured yet, the count stays
    assert distiller._fit_epochs(100.0, 10.0).epochs == 3


# ------------------------------------------------------------------------------------------ end to end

BUDGET = 40.0


def test_planned_run_keeps_its_budget(digits_teacher, tmp_path):
    """No recipe, only a budget: the command (process start to exit) ends within 3 % of it or 10 s, the student
    learns, and the plan and the costs it was made from are in config.json and metrics.json."""
    out = tmp_path / "run"
    started = time.perf_counter()
    result = run_cli("distill", str(digits_teacher.path), "--out", str(out), "--student", "cnn_tiny",
                     "--eval-data", str(digits_teacher.eval_path), "--time-budget", str(BUDGET), "--json",
                     "--device", "cpu")
    wall = time.perf_counter() - started
    assert result.returncode == 0, result.stderr[-3000:]
    assert wall <= BUDGET + max(0.03 * BUDGET, 10.0), wall
    assert wall >= 0.85 * BUDGET, wall  # the planned epochs follow the clock: the budget is used, not left over
    metrics = json.loads(result.stdout)
    assert metrics["stopped_by"] in ("time_budget", "epochs") and metrics["epochs"] >= 1
    assert metrics["student_accuracy"] > 0.5  # chance is 0.1
    plan = metrics["plan"]
    assert set(plan["values"]) == set(SCHEDULE_KEYS) and plan["costs"]["measured_seconds"] > 0
    config = json.loads((out / "config.json").read_text())
    assert config["plan"] == plan
    for key, value in plan["values"].items():
        assert config["config"][key] == value


def test_too_small_budget_is_refused_in_one_line(digits_teacher, tmp_path):
    out = tmp_path / "run"
    result = run_cli("distill", str(digits_teacher.path), "--out", str(out), "--student", "cnn_tiny",
                     "--time-budget", "1", "--device", "cpu")
    assert_user_error(result, "--time-budget", "use at least --time-budget")
    # Refused after the smaller batch was measured, not after the whole measurement (with a slow teacher to load,
    # that was the whole budget).
    assert "spent loading and measuring" in result.stderr
    least = float(result.stderr.strip().rsplit(" ", 1)[-1])
    assert 1 < least < 600
    assert not out.exists()
    # The budget it names is enough to plan a run.
    enough = run_cli("plan", str(digits_teacher.path), "--student", "cnn_tiny", "--time-budget", f"{least:g}",
                     "--device", "cpu", "--json", cwd=tmp_path)
    assert enough.returncode == 0, enough.stderr[-2000:]
    assert json.loads(enough.stdout)["values"]["kd_steps"] >= 1


def test_plan_command_prints_the_plan_without_training(digits_teacher, tmp_path):
    result = run_cli("plan", str(digits_teacher.path), "--student", "cnn_tiny", "--time-budget", "300", "--json",
                     "--g-steps", "12", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    plan = json.loads(result.stdout)
    assert plan["kept"] == {"g_steps": 12} and "g_steps" not in plan["values"]
    assert plan["time_budget"] == 300 and 0 < plan["total_seconds"]
    assert not any(tmp_path.iterdir())  # nothing written
    table = run_cli("plan", str(digits_teacher.path), "--student", "cnn_tiny", cwd=tmp_path)
    assert table.returncode == 0 and "schedule plan" in table.stdout and "no time budget" in table.stdout


def test_resumed_planned_run_restores_its_plan(digits_teacher, tmp_path):
    """Stopped by SIGINT after its first checkpoint, a planned run resumed with the same command continues
    with the plan in its checkpoint: not measured again (the same costs, to the digit)."""
    out = tmp_path / "run"
    args = ["distill", str(digits_teacher.path), "--out", str(out), "--student", "cnn_tiny", "--time-budget", "35",
            "--device", "cpu", "--json"]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.Popen([sys.executable, "-m", "nayer_edge", *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (out / "checkpoint.pt").is_file() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGINT, err[-2000:]
    import torch

    first_plan = torch.load(out / "checkpoint.pt", weights_only=True)["plan"]
    resumed = run_cli(*args, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    metrics = json.loads(resumed.stdout)
    assert metrics["plan"] == first_plan
    assert math.isfinite(metrics["agreement"])


def test_a_budgeted_plan_with_too_few_samples_tries_a_narrower_generator():
    from dataclasses import replace
    from types import SimpleNamespace

    config = DistillConfig(time_budget=150.0)
    few, enough = SimpleNamespace(expected_samples=378), SimpleNamespace(expected_samples=MIN_SAMPLES_PER_CLASS * 10)
    assert config.ngf == 64 and narrower_ngf(few, config, set(), 10) == 32
    assert narrower_ngf(few, replace(config, ngf=32), set(), 10) == 16
    assert narrower_ngf(few, replace(config, ngf=16), set(), 10) is None  # the narrowest
    assert narrower_ngf(enough, config, set(), 10) is None
    assert narrower_ngf(few, config, {"ngf"}, 10) is None  # the user's width is kept
    assert narrower_ngf(few, replace(config, time_budget=None), set(), 10) is None
    assert narrower_ngf(few, replace(config, schedule="fixed"), set(), 10) is None
