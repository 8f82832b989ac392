"""The schedule planner: fits a NAYER run to the device, the teacher, the student and the time budget.

The paper's settings (synthesis batch 400, 30 generator steps, 10 rounds in each of 20 warm-up epochs, KD batch
512 × 400 steps) are sized for a GPU: on a CPU one synthesis round of them can take minutes, and a budgeted run
ends before the student has taken a step. Before the first round the run measures what one generator step (with
and without the adversarial term) and one KD step cost at two batch sizes on the real device, with the real
teacher, student and input shape (:func:`measure_step_costs`), and :func:`plan_schedule` chooses every schedule
setting the user left unset so that

- the whole schedule fits the budget (what the run spends before and after the loop is taken off first),
- the student's first KD step comes within the first few percent of it (:data:`FIRST_STEP_SHARE`),
- synthesis gets :data:`SYNTHESIS_SHARE` of each epoch's time and KD the rest,
- the memory holds every sample the schedule makes.

Without a budget the planner only sizes the batches to the device and keeps the paper's epochs, and the plan
says how long the whole schedule will take. :func:`plan_schedule` is plain arithmetic on measured costs, so it
can be tested with any costs. Example::

    costs = measure_step_costs(make_distiller, num_classes=10)
    plan = plan_schedule(costs, config, user_set={"student"}, num_classes=10, loop_budget=540.0)
    config = plan.apply(config)
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Collection

from ..core.errors import UserError
from ..core.strict import replace
from ..synthesis.best_batches import kept_per_round
from .config import DistillConfig

# The settings the planner may choose; any of them the user set (command line or recipe) is kept.
SCHEDULE_KEYS = ("synthesis_batch", "g_steps", "rounds_per_epoch", "warmup_epochs", "warmup_rounds", "kd_batch",
                 "kd_steps", "epochs", "memory_capacity", "ngf")
# The default share of a normal epoch's time that goes to synthesis (config.synthesis_share; the rest: KD):
# BENCHMARKS.md, the planner section.
SYNTHESIS_SHARE = DistillConfig.synthesis_share
# The first synthesis epoch (its warm-up rounds) may take this share of the budget before the student's first step.
FIRST_STEP_SHARE = 0.03
# The warm-up epochs (generator without the adversarial term, more rounds per epoch) take about this share.
WARMUP_SHARE = 0.15
# About this many epochs fill a budget (the hand-written CPU recipe that did best ran 30 in 1000 s): epochs short
# enough that synthesis and KD interleave finely and the student never trains long on a stale memory. The rounds
# are sized from it (between the bounds below), with the batch first and then fewer generator steps.
TARGET_EPOCHS = 28
MIN_ROUND_SECONDS, MAX_ROUND_SECONDS = 1.0, 60.0
# Largest batches the planner picks (the paper's), and the smallest synthesis batch (BatchNorm statistics of
# fewer images are too noisy for the BN-statistics loss to mean much).
MAX_SYNTHESIS_BATCH, MAX_KD_BATCH, MIN_SYNTHESIS_BATCH = 400, 512, 64
MIN_G_STEPS = 10
# Without a budget the batches are cut down until one generator step takes at most this long.
NO_BUDGET_STEP_SECONDS = 1.0
# The sample memory may take at most this share of the machine's memory.
MEMORY_RAM_SHARE = 0.25
# Writing a checkpoint (its sample memories included) and the artefacts: bytes per second assumed.
WRITE_BYTES_PER_SECOND = 150e6


@dataclass(frozen=True)
class LinearCost:
    """Seconds of one step at batch ``b``: ``fixed + per_sample · b`` (fitted on two measured batch sizes)."""

    fixed: float
    per_sample: float

    def __call__(self, batch: int) -> float:
        return self.fixed + self.per_sample * batch

    @classmethod
    def fit(cls, points: list[tuple[int, float]]) -> "LinearCost":
        (b1, t1), (b2, t2) = points[0], points[-1]
        per_sample = max((t2 - t1) / (b2 - b1), t2 / b2 * 0.05) if b2 != b1 else t2 / b2
        return cls(fixed=max(0.0, t2 - per_sample * b2), per_sample=per_sample)


@dataclass(frozen=True)
class StepCosts:
    """What one step costs on this device, with this teacher and student (measured, or given in tests)."""

    generator_warmup: LinearCost  # a generator step without the adversarial term (warm-up)
    generator: LinearCost  # a generator step with it (the student's forward and backward too)
    kd: LinearCost  # a student step on a batch of the memory (teacher forward included)
    forward: LinearCost  # one teacher and student forward, for the per-epoch evaluations
    sample_bytes: int  # one synthetic image in the memory (uint8)
    measured_seconds: float = 0.0
    points: dict[str, list[tuple[int, float]]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"generator_warmup": asdict(self.generator_warmup), "generator": asdict(self.generator),
                "kd": asdict(self.kd), "forward": asdict(self.forward), "sample_bytes": self.sample_bytes,
                "measured_seconds": round(self.measured_seconds, 3),
                "points": {k: [[b, round(t, 5)] for b, t in v] for k, v in self.points.items()}}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "StepCosts":
        return cls(LinearCost(**data["generator_warmup"]), LinearCost(**data["generator"]), LinearCost(**data["kd"]),
                   LinearCost(**data["forward"]), int(data["sample_bytes"]), float(data.get("measured_seconds", 0.0)),
                   {k: [(int(b), float(t)) for b, t in v] for k, v in data.get("points", {}).items()})


@dataclass(frozen=True)
class Plan:
    """The schedule chosen and what it was chosen from; ``values`` are the settings the planner set."""

    values: dict[str, int]
    kept: dict[str, Any]  # the schedule settings the user set, as they were
    costs: StepCosts | None
    loop_budget: float | None  # seconds for the loop (the budget less what the run spends outside it)
    time_budget: float | None
    warmup_epoch_seconds: float
    epoch_seconds: float
    first_kd_step_seconds: float
    total_seconds: float  # the whole schedule's loop time, as estimated
    synthesis_share: float
    expected_samples: int
    notes: tuple[str, ...] = ()

    def apply(self, config: DistillConfig) -> DistillConfig:
        return replace(config, **self.values)

    def to_dict(self) -> dict[str, Any]:
        return {"values": dict(self.values), "kept": dict(self.kept),
                "costs": self.costs.to_dict() if self.costs else None,
                "loop_budget": None if self.loop_budget is None else round(self.loop_budget, 2),
                "time_budget": self.time_budget,
                "warmup_epoch_seconds": round(self.warmup_epoch_seconds, 3),
                "epoch_seconds": round(self.epoch_seconds, 3),
                "first_kd_step_seconds": round(self.first_kd_step_seconds, 3),
                "total_seconds": round(self.total_seconds, 2), "synthesis_share": self.synthesis_share,
                "expected_samples": self.expected_samples, "notes": list(self.notes)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Plan":
        return cls(values={k: int(v) for k, v in data["values"].items()}, kept=dict(data.get("kept", {})),
                   costs=StepCosts.from_dict(data["costs"]) if data.get("costs") else None,
                   loop_budget=data.get("loop_budget"), time_budget=data.get("time_budget"),
                   warmup_epoch_seconds=data["warmup_epoch_seconds"], epoch_seconds=data["epoch_seconds"],
                   first_kd_step_seconds=data["first_kd_step_seconds"], total_seconds=data["total_seconds"],
                   synthesis_share=data["synthesis_share"], expected_samples=int(data["expected_samples"]),
                   notes=tuple(data.get("notes", ())))


def user_set_keys(config: DistillConfig, user_set: Collection[str] | None) -> set[str]:
    """The settings the user chose: ``user_set`` when the caller knows it (the CLI does: the recipe's keys and the
    options given), else every setting that differs from the default."""
    if user_set is not None:
        return set(user_set)
    defaults = DistillConfig().to_dict()
    return {k for k, v in config.to_dict().items() if defaults.get(k) != v}


def needs_plan(config: DistillConfig, user_set: set[str]) -> bool:
    """Whether anything is left to plan (nothing is measured when every schedule setting was chosen)."""
    if config.schedule == "fixed":
        return False
    free = set(SCHEDULE_KEYS) - user_set
    if config.time_budget is None:
        free &= {"synthesis_batch", "kd_batch"}
    return bool(free)


# ------------------------------------------------------------------------------------------ arithmetic


def _round_to_classes(batch: float, num_classes: int) -> int:
    """A synthesis batch: a whole number of one-sample-per-class blocks (the noisy layer's K-to-1 blocks)."""
    return max(num_classes, int(round(batch / num_classes)) * num_classes)


def _min_synthesis_batch(num_classes: int) -> int:
    return _round_to_classes(max(MIN_SYNTHESIS_BATCH, num_classes), num_classes)


def _pow2(value: float, low: int, high: int) -> int:
    """A power of two near ``value`` (up from 0.7 of the way between two: 90 → 128, 80 → 64)."""
    return int(min(high, max(low, 2 ** math.ceil(math.log2(max(1.0, value)) - 0.3))))


@dataclass(frozen=True)
class _ProcessCosts:
    """Seconds of one step for one process: under torchrun each process synthesises and trains on its share of
    every batch. ``normal`` is a generator step after the warm-up (adversarial when the loss has that term)."""

    costs: StepCosts
    share: float
    adversarial: bool

    def warm(self, batch: float) -> float:
        return self.costs.generator_warmup(batch * self.share)

    def normal(self, batch: float) -> float:
        return (self.costs.generator if self.adversarial else self.costs.generator_warmup)(batch * self.share)

    def kd(self, batch: float) -> float:
        return self.costs.kd(batch * self.share)


class _Choices:
    """The user's schedule settings, kept, and the planner's own choices for the rest."""

    def __init__(self, config: DistillConfig, user_set: Collection[str]):
        self.fixed = {k: getattr(config, k) for k in SCHEDULE_KEYS if k in user_set}
        self.chosen: dict[str, int] = {}

    def value(self, key: str, choose: Callable[[], int]) -> int:
        if key in self.fixed:
            return int(self.fixed[key])
        self.chosen[key] = int(choose())
        return self.chosen[key]


def _batch_range(num_classes: int) -> tuple[int, int]:
    min_batch = _min_synthesis_batch(num_classes)
    return min_batch, max(min_batch, _round_to_classes(MAX_SYNTHESIS_BATCH, num_classes))


def plan_schedule(costs: StepCosts, config: DistillConfig, *, user_set: Collection[str], num_classes: int,
                  loop_budget: float | None, eval_samples: int = 0, world_size: int = 1,
                  ram_bytes: int | None = None) -> Plan:
    """Choose every schedule setting not in ``user_set`` so that the schedule fits ``loop_budget`` seconds (the
    time budget less what the run spends outside the loop; ``None``: no budget). Raises :class:`UserError` when
    the budget is too small for one synthesis round and one KD step. ``config.ngf`` is the generator width the
    costs were measured with (:mod:`~nayer_edge.distill.generator_width`); with a budget it is recorded among the
    planned values."""
    choices = _Choices(config, user_set)
    step = _ProcessCosts(costs, 1.0 / max(1, world_size), config.adv_weight > 0)
    if loop_budget is None:
        return _plan_without_budget(step, config, choices, num_classes)
    return _plan_for_budget(step, config, choices, float(loop_budget), num_classes, eval_samples, ram_bytes)


def _plan_without_budget(step: _ProcessCosts, config: DistillConfig, choices: _Choices, num_classes: int) -> Plan:
    """The paper's schedule, with batches cut to what this device does in about a second a step."""
    costs, value = step.costs, choices.value
    min_batch, max_batch = _batch_range(num_classes)

    def device_batch() -> int:
        per_step = costs.generator(max_batch)
        if per_step <= NO_BUDGET_STEP_SECONDS:
            return config.synthesis_batch
        fits = (NO_BUDGET_STEP_SECONDS - costs.generator.fixed) / max(costs.generator.per_sample, 1e-12)
        return min(max_batch, max(min_batch, _round_to_classes(fits, num_classes)))
    synthesis_batch = value("synthesis_batch", device_batch)
    kd_batch = value("kd_batch", lambda: config.kd_batch if synthesis_batch >= config.synthesis_batch
                     else _pow2(1.28 * synthesis_batch, 32, MAX_KD_BATCH))
    g_steps, rounds = config.g_steps, config.rounds_per_epoch
    warmup_epochs, warmup_rounds = config.warmup_epochs, config.warmup_rounds
    kd_epoch = config.kd_steps * step.kd(kd_batch)
    warm_s = warmup_rounds * g_steps * step.warm(synthesis_batch) + kd_epoch
    epoch_s = rounds * g_steps * step.normal(synthesis_batch) + kd_epoch
    total = warmup_epochs * warm_s + (config.epochs - warmup_epochs) * epoch_s
    expected = kept_per_round(g_steps, config.batches_per_round) * _expected_samples(
        synthesis_batch, warmup_epochs, warmup_rounds, config.epochs, rounds)
    first = warmup_rounds * g_steps * step.warm(synthesis_batch)
    return Plan(choices.chosen, choices.fixed, costs, None, None, warm_s, epoch_s, first, total, SYNTHESIS_SHARE,
                expected, (_eta_note(total),))


def _round_settings(step: _ProcessCosts, config: DistillConfig, choices: _Choices, budget: float,
                    num_classes: int) -> tuple[int, int, int, int]:
    """Rounds sized so that about TARGET_EPOCHS epochs fill the budget: the batch, then (if the smallest batch is
    still too slow) fewer generator steps. Returns (g_steps, synthesis_batch, kd_batch, rounds_per_epoch)."""
    costs, value, fixed = step.costs, choices.value, choices.fixed
    min_batch, max_batch = _batch_range(num_classes)
    planned_rounds = int(fixed.get("rounds_per_epoch", config.rounds_per_epoch))
    round_target = min(MAX_ROUND_SECONDS, max(MIN_ROUND_SECONDS, config.synthesis_share * budget
                                              / (TARGET_EPOCHS * planned_rounds)))
    g_steps = value("g_steps", lambda: config.g_steps if "synthesis_batch" in fixed else
                    max(MIN_G_STEPS, min(config.g_steps, int(round_target / costs.generator(min_batch * step.share)))))

    def synthesis_batch_for_budget() -> int:
        fits = (round_target / g_steps - costs.generator.fixed) / max(costs.generator.per_sample * step.share, 1e-12)
        return min(max_batch, max(min_batch, _round_to_classes(fits, num_classes)))
    synthesis_batch = value("synthesis_batch", synthesis_batch_for_budget)
    kd_batch = value("kd_batch", lambda: _pow2(1.28 * synthesis_batch, 32, MAX_KD_BATCH))
    rounds = value("rounds_per_epoch", lambda: config.rounds_per_epoch)
    return g_steps, synthesis_batch, kd_batch, rounds


def _plan_for_budget(step: _ProcessCosts, config: DistillConfig, choices: _Choices, budget: float, num_classes: int,
                     eval_samples: int, ram_bytes: int | None) -> Plan:
    value, fixed, notes = choices.value, choices.fixed, []
    value("ngf", lambda: config.ngf)
    # 1. The rounds.
    g_steps, synthesis_batch, kd_batch, rounds = _round_settings(step, config, choices, budget, num_classes)
    warm_round = g_steps * step.warm(synthesis_batch)
    normal_round = g_steps * step.normal(synthesis_batch)
    one_step = step.kd(kd_batch)
    smallest = min(warm_round, normal_round) + one_step
    if budget < smallest:
        raise UserError(f"budget too small: one synthesis round ({g_steps} steps of {synthesis_batch} images) and one "
                        f"student step take about {smallest:.1f} s here, and only {max(0.0, budget):.1f} s of the time "
                        f"budget are left for them")
    # 2. KD time per epoch from the synthesis share of a normal epoch.
    share_s = config.synthesis_share
    kd_steps = value("kd_steps", lambda: max(1, round(rounds * normal_round * (1 - share_s) / share_s / one_step)))
    kd_epoch = kd_steps * one_step
    # 3. The first warm-up epoch's rounds end within FIRST_STEP_SHARE of the budget; the warm-up takes about
    #    WARMUP_SHARE of it (never more than the paper's 20 epochs).
    warmup_rounds = value("warmup_rounds", lambda: max(1, min(config.warmup_rounds,
                                                              int(FIRST_STEP_SHARE * budget / warm_round))))
    warm_epoch = warmup_rounds * warm_round + (kd_epoch if config.kd_during_warmup else 0.0)
    warmup_epochs = value("warmup_epochs", lambda: max(1, min(config.warmup_epochs,
                                                              round(WARMUP_SHARE * budget / warm_epoch))))
    epoch = rounds * normal_round + kd_epoch
    per_epoch_overhead = _epoch_overhead(step.costs, eval_samples, synthesis_batch, config)
    # 4. As many epochs as fit; the last may be cut by the budget (the learning rate follows the clock as well).
    epochs = value("epochs", lambda: warmup_epochs + max(1, math.ceil(
        (budget - warmup_epochs * (warm_epoch + per_epoch_overhead)) / (epoch + per_epoch_overhead))))
    n_warm = min(warmup_epochs, epochs)
    total = n_warm * (warm_epoch + per_epoch_overhead) + (epochs - n_warm) * (epoch + per_epoch_overhead)
    expected = kept_per_round(g_steps, config.batches_per_round) * _expected_samples(
        synthesis_batch, warmup_epochs, warmup_rounds, epochs, rounds)
    memory_capacity = value("memory_capacity", lambda: _memory_capacity(expected, step.costs.sample_bytes, ram_bytes))
    if memory_capacity < expected:
        notes.append(f"the memory keeps the newest {memory_capacity:,} of about {expected:,} samples")
    if total > budget * 1.05 and any(k in fixed for k in ("epochs", "kd_steps", "g_steps", "synthesis_batch")):
        notes.append(f"the settings you chose take about {total:.0f} s, more than the {budget:.0f} s left: "
                     "the budget will stop the run first")
    first = warmup_rounds * warm_round
    return Plan(choices.chosen, fixed, step.costs, budget, config.time_budget, warm_epoch + per_epoch_overhead,
                epoch + per_epoch_overhead, first, total, share_s, expected, tuple(notes))


def _expected_samples(synthesis_batch: int, warmup_epochs: int, warmup_rounds: int, epochs: int, rounds: int) -> int:
    n_warm = min(warmup_epochs, epochs)
    return synthesis_batch * (n_warm * warmup_rounds + (epochs - n_warm) * rounds)


def _epoch_overhead(costs: StepCosts, eval_samples: int, synthesis_batch: int, config: DistillConfig) -> float:
    """What each epoch's end costs: the agreement on the held-out samples, the accuracy on the eval data, and the
    checkpoint (with both memories, which grow; this counts a mid-run memory)."""
    holdout = synthesis_batch * config.holdout_fraction * 20
    evaluations = costs.forward(holdout) + (costs.forward(eval_samples) * 0.5 if eval_samples else 0.0)
    return 0.05 + evaluations + 10 * synthesis_batch * costs.sample_bytes / WRITE_BYTES_PER_SECOND


def _memory_capacity(expected: int, sample_bytes: int, ram_bytes: int | None) -> int:
    # Room for more than planned: the epochs follow the clock (engine.Distiller.fit_epochs_to_clock).
    wanted = max(1000, int(expected * 1.5))
    if ram_bytes:
        wanted = min(wanted, max(1000, int(MEMORY_RAM_SHARE * ram_bytes / max(1, sample_bytes))))
    return wanted


def _eta_note(total_seconds: float) -> str:
    hours = total_seconds / 3600
    when = f"{hours / 24:.1f} days" if hours >= 48 else f"{hours:.1f} hours" if hours >= 1 else f"{total_seconds / 60:.0f} min"
    advice = ": pass --time-budget SECONDS to fit the schedule to the time you have" if hours >= 2 else ""
    return f"the paper's schedule takes about {when} on this device{advice}"


def smallest_budget(costs: StepCosts, config: DistillConfig, *, num_classes: int, outside_loop: float) -> float:
    """The smallest whole-command budget that allows one synthesis round and one KD step (rounded up)."""
    batch = (config.synthesis_batch if config.synthesis_batch < MAX_SYNTHESIS_BATCH
             else _min_synthesis_batch(num_classes))
    need = MIN_G_STEPS * costs.generator_warmup(batch) + costs.kd(_pow2(1.28 * batch, 32, MAX_KD_BATCH))
    return math.ceil((outside_loop + need) * 1.2 + 1)


# ------------------------------------------------------------------------------------------ measurement


# ``after_small`` is called with the costs of the smaller batch alone (scaled in proportion, the warm-up step taken
# as dear as a full one: estimates on the high side), so that a budget too small to train is refused before the
# larger batch is measured.
def measure_step_costs(make_distiller: Callable[[DistillConfig], Any], config: DistillConfig, *, num_classes: int,
                       batches: tuple[int, int] | None = None, steps: int = 2,
                       after_small: Callable[[StepCosts], None] | None = None) -> StepCosts:
    """Time generator and KD steps on the real device with the real models: ``make_distiller(config)`` builds a
    :class:`~nayer_edge.distill.engine.Distiller` over copies of the run's models. Global random state, the student's
    weights and the teacher are left as they were. Takes a few seconds (each measurement is one untimed step,
    then ``steps`` timed ones)."""
    import torch

    started = time.perf_counter()
    small, large = batches or (_round_to_classes(max(16, num_classes), num_classes),
                               _round_to_classes(max(64, 4 * num_classes), num_classes))
    points: dict[str, list[tuple[int, float]]] = {"generator_warmup": [], "generator": [], "kd": [], "forward": []}
    sample_bytes = 0

    def fitted(warmup: str) -> StepCosts:
        return StepCosts(LinearCost.fit(points[warmup]), LinearCost.fit(points["generator"]),
                         LinearCost.fit(points["kd"]), LinearCost.fit(points["forward"]), sample_bytes,
                         time.perf_counter() - started, points)

    with torch.random.fork_rng(devices=[]):
        for batch in (small, large):
            # A round of ``steps`` generator steps is timed as a whole (its per-round work is shared by its steps
            # as in a real round), after one untimed round and KD step (allocations, caches). The warm-up step
            # (no adversarial term) is timed at the larger batch only and scaled.
            trial = replace(config, synthesis_batch=batch, kd_batch=batch, g_steps=steps, memory_capacity=8 * batch,
                            compile=False, holdout_fraction=0.0, time_budget=None, memory_backing="ram")
            sample_bytes = _time_one_batch(make_distiller(trial), batch, steps, batch == large, points)
            if batch == small and after_small is not None:
                after_small(fitted("generator"))
    return fitted("generator_warmup")


def _time_one_batch(distiller: Any, batch: int, steps: int, with_warmup: bool,
                    points: dict[str, list[tuple[int, float]]]) -> int:
    """Append the step costs at ``batch`` to ``points``; the bytes one sample takes in the memory."""
    import torch

    try:
        sample_bytes = distiller.memory.bytes_needed(1, distiller.input_shape)
        distiller.generator = distiller.build_generator()
        distiller.synthesize(True)
        distiller.kd_step()
        points["generator"].append((batch, _timed(lambda: distiller.synthesize(True), 1, distiller) / steps))
        if with_warmup:
            warm = _timed(lambda: distiller.synthesize(False), 1, distiller) / steps
            ratio = min(1.0, warm / max(points["generator"][-1][1], 1e-9))
            points["generator_warmup"] = [(b, t * ratio) for b, t in points["generator"]]
        # The median of single steps: one slow first call at a new batch size (bf16 kernels on a CPU) must not
        # stand for all of them.
        points["kd"].append((batch, statistics.median(_timed(distiller.kd_step, 1, distiller)
                                                      for _ in range(steps + 1))))
        images = distiller.memory.all()[0][:batch].to(distiller.device)

        def forwards() -> None:
            with torch.no_grad():
                distiller.student.eval()
                distiller.student(images)
                distiller.teacher(images)
        points["forward"].append((batch, _timed(forwards, 1, distiller)))
    finally:
        distiller.probe.close()
    return sample_bytes


def _timed(fn: Callable[[], Any], repeats: int, distiller: Any) -> float:
    import torch

    sync = torch.cuda.synchronize if distiller.device.type == "cuda" else (lambda: None)
    sync()
    t0 = time.perf_counter()
    for _ in range(repeats):
        out = fn()
        if isinstance(out, torch.Tensor):
            out.item()
    sync()
    return (time.perf_counter() - t0) / repeats


# ------------------------------------------------------------------------------------------ display


def plan_table(plan: Plan) -> Any:
    """The plan as a rich table: each setting, its value, and whether the planner chose it or the user did."""
    from rich.table import Table

    title = "schedule plan" + (f" for a {plan.time_budget:g} s budget" if plan.time_budget else " (no time budget)")
    table = Table(title=title)
    table.add_column("setting")
    table.add_column("value", justify="right")
    table.add_column("from")
    for key in SCHEDULE_KEYS:
        if key in plan.values:
            table.add_row(key, f"{plan.values[key]:,}", "planned")
        elif key in plan.kept:
            table.add_row(key, f"{plan.kept[key]:,}", "yours")
    if plan.costs:
        c = plan.costs
        batch = plan.values.get("synthesis_batch", plan.kept.get("synthesis_batch"))
        kd_batch = plan.values.get("kd_batch", plan.kept.get("kd_batch"))
        if batch:
            table.add_row("generator step", f"{c.generator(batch) * 1000:,.0f} ms", f"measured, batch {batch}")
            table.add_row("warm-up generator step", f"{c.generator_warmup(batch) * 1000:,.0f} ms", f"measured, batch {batch}")
        if kd_batch:
            table.add_row("KD step", f"{c.kd(kd_batch) * 1000:,.0f} ms", f"measured, batch {kd_batch}")
        table.add_row("measuring took", f"{c.measured_seconds:.1f} s", "charged to the budget")
    table.add_row("first student step at", f"{plan.first_kd_step_seconds:.0f} s", "estimated")
    table.add_row("warm-up / normal epoch", f"{plan.warmup_epoch_seconds:.1f} / {plan.epoch_seconds:.1f} s", "estimated")
    table.add_row("whole schedule", f"{plan.total_seconds:,.0f} s", f"loop budget {plan.loop_budget:.0f} s"
                  if plan.loop_budget else "estimated")
    table.add_row("synthetic samples", f"{plan.expected_samples:,}", "estimated")
    return table
