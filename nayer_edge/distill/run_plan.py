"""The schedule a run would follow: measured here and planned (:mod:`nayer_edge.distill.planner`) for the run's
own teacher, student and budget; :func:`plan` is the library entry point behind ``nayer-edge plan``."""

from __future__ import annotations

import copy
import time
from dataclasses import replace as dc_replace
from pathlib import Path
from typing import Any, Collection, NoReturn

import torch

from ..core.errors import UserError
from ..core.normalize import NormalizedModel
from ..core.progress import Progress
from ..inputs.teacher import load_teacher
from ..zoo import build_student
from .config import DistillConfig
from .distributed import SINGLE
from .engine import Distiller
from .generator_width import NARROWING_GAIN, NARROWING_MEASURE_SHARE, narrower_ngf, planned_ngf
from .guarded_teacher import GuardedTeacher
from .performance import resolve_device
from .planner import (
    SCHEDULE_KEYS,
    WRITE_BYTES_PER_SECOND,
    Plan,
    measure_step_costs,
    needs_plan,
    plan_schedule,
    plan_table,
    smallest_budget,
    user_set_keys,
)
from .run_inputs import RunInputs, check_student, label_embeddings

# What a budgeted run keeps back for its end (final evaluation, sample memories, TorchScript, plots, JSON), besides
# the time to write its memories (see final_reserve).
FINAL_FIXED_SECONDS = 3.0


# Keyword-only options, one per command-line option of the command it backs: the library's public API.
def plan(teacher: str | Path, *, config: DistillConfig | None = None, user_set: Collection[str] | None = None,
         arch: str | None = None, classes: list[str] | None = None, input_shape: tuple[int, int, int] | None = None,
         mean: tuple[float, ...] | None = None, std: tuple[float, ...] | None = None, trust_pickle: bool = False,
         eval_samples: int = 0, cache_dir: Path | None = None) -> Any:
    """The schedule :func:`~nayer_edge.distill.run.distill` would plan for ``teacher`` on this device (measured here), without training::

        print(plan("teacher.pt", config=load_config(None, {"time_budget": 600})).to_dict()["values"])
    """
    started = time.perf_counter()
    config = config or DistillConfig()
    keys = user_set_keys(config, user_set)
    device = resolve_device(config.device)
    loaded = load_teacher(teacher, arch=arch, classes=classes, input_shape=input_shape, mean=mean, std=std,
                          trust_pickle=trust_pickle)
    spec = loaded.spec
    class_names = list(spec.classes) if spec.classes else [str(i) for i in range(loaded.num_classes)]
    student = build_student(config.student, num_classes=loaded.num_classes, in_channels=spec.input_shape[0],
                            input_size=spec.input_shape[1])
    check_student(student, spec.input_shape, loaded.num_classes, config.student)
    if config.threads:
        torch.set_num_threads(config.threads)
    if not needs_plan(config, keys):
        return Plan({}, {k: getattr(config, k) for k in SCHEDULE_KEYS if k in keys}, None, None, config.time_budget,
                    0.0, 0.0, 0.0, 0.0, 0.0, 0, ("every schedule setting is set: nothing to plan",))
    embeddings = label_embeddings(config, class_names, cache_dir)
    run = RunInputs(config=config, out_dir=Path(), device=device, loaded=loaded, class_names=class_names,
                    eval_set=None, embeddings=embeddings, resume=False, progress=Progress(), arch=arch,
                    started=started, user_set=keys, reserve_after=0.0)
    return make_plan(run, GuardedTeacher(loaded.model, spec.mean, spec.std),
                      NormalizedModel(student, spec.mean, spec.std), SINGLE, eval_samples)


def ram_bytes() -> int | None:
    """The machine's memory in bytes (None where the system does not say)."""
    import os

    try:
        return int(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


def final_reserve(config: DistillConfig, plan: Any) -> float:
    """Seconds a budgeted run keeps for its end: a fixed part, and writing the sample memories it will hold."""
    samples = plan.expected_samples if plan is not None else config.memory_capacity
    held = min(samples, config.memory_capacity)
    sample_bytes = plan.costs.sample_bytes if plan is not None and plan.costs else 3 * 32 * 32

    return FINAL_FIXED_SECONDS + 2 * held * sample_bytes / WRITE_BYTES_PER_SECOND


def make_plan(run: RunInputs, teacher_module: Any, student_module: Any, dist: Any, eval_samples: int) -> Any:
    """Measure the step costs here and plan the schedule (see :mod:`nayer_edge.distill.planner`) for the run's own
    inputs and ``eval_samples`` held-out images to evaluate each epoch; the models are copied before any step is
    taken."""
    config, user_set, loaded, started = run.config, run.user_set, run.loaded, run.started
    config = dc_replace(config, ngf=planned_ngf(config, user_set, loaded.spec.input_shape))  # measured as it will run

    def make(trial: DistillConfig) -> Distiller:
        return Distiller(teacher_module, copy.deepcopy(student_module), run.embeddings, trial, loaded.spec.input_shape,
                         loaded.num_classes, run.device)

    def refuse(costs: Any, err: Any) -> NoReturn:
        outside = (time.perf_counter() - started) + run.reserve_after + FINAL_FIXED_SECONDS
        least = smallest_budget(costs, config, num_classes=loaded.num_classes, outside_loop=outside)
        raise UserError(f"--time-budget {config.time_budget:g} s is too small to train the student at all ({err}); "
                        f"use at least --time-budget {least:g}") from None

    def refuse_early(costs: Any) -> None:
        outside = (time.perf_counter() - started) + run.reserve_after + FINAL_FIXED_SECONDS
        least = smallest_budget(costs, config, num_classes=loaded.num_classes, outside_loop=outside)
        if config.time_budget is not None and least > config.time_budget * 1.2:
            refuse(costs, f"{time.perf_counter() - started:.0f} s are spent loading and measuring, and one synthesis "
                          "round and one student step need more than the rest")

    def plan_at(config: DistillConfig, costs: Any = None) -> Any:
        costs = costs or measure_step_costs(make, config, num_classes=loaded.num_classes, after_small=refuse_early)

        def attempt(final_reserve: float) -> Any:
            loop_budget = None
            if config.time_budget is not None:
                outside = ((time.perf_counter() - started) + run.reserve_after + final_reserve
                           + costs.forward(eval_samples) * 0.5)
                loop_budget = config.time_budget - outside
            return plan_schedule(costs, config, user_set=user_set, num_classes=loaded.num_classes,
                                 loop_budget=loop_budget, eval_samples=eval_samples, world_size=dist.world_size,
                                 ram_bytes=ram_bytes())

        try:
            first = attempt(FINAL_FIXED_SECONDS)
            return attempt(final_reserve(first.apply(config), first))
        except UserError as err:
            refuse(costs, err)

    plan = plan_at(config)
    # Too few samples for the budget at this width: a narrower generator, measured again (charged to the budget like
    # the first measurement, so only where that is a small share of it), is kept when it makes clearly more; else
    # the wider plan is made again for the time now left (its costs are known).
    while (narrower := narrower_ngf(plan, config, user_set, loaded.num_classes)) is not None and \
            plan.costs.measured_seconds < NARROWING_MEASURE_SHARE * config.time_budget:
        try:
            narrow_plan = plan_at(dc_replace(config, ngf=narrower))
        except UserError:  # the second measurement took what the budget had left
            narrow_plan = None
        if narrow_plan is None or narrow_plan.expected_samples < NARROWING_GAIN * plan.expected_samples:
            try:
                return plan_at(config, plan.costs)
            except UserError:
                return plan  # the engine fits its epochs to the clock as it goes
        config, plan = dc_replace(config, ngf=narrower), narrow_plan
    return plan


def show_plan(progress: Progress, plan: Any) -> None:
    """The plan as a table (and its notes) on the console, as a ``plan`` event in a log."""
    from rich.console import Group

    notes = [f"[yellow]plan:[/] {note}" for note in plan.notes]
    progress.show(Group(plan_table(plan), *notes), "plan", **plan.to_dict())
