"""``distill``: from a teacher file alone to a trained student and its artefacts (the library entry point
behind ``nayer-edge distill``)."""

from __future__ import annotations

import itertools
import json
import logging
import math
import os
import random
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from dataclasses import replace as dc_replace
from pathlib import Path
from typing import Any, Collection

import numpy as np
import torch

from ..core.atomic import (
    atomic_torch_save,
    atomic_write_bytes,
    atomic_write_text,
    prepare_output_dir,
    remove_temporaries,
)
from ..core.errors import UserError, first_line
from ..core.evaluate import accuracy
from ..core.interrupt import Interrupted, StopRequest, graceful_stop, names_checkpoint
from ..core.normalize import NormalizedModel
from ..core.plots import save_sample_grid, save_training_curves
from ..inputs.evaldata import load_eval_data
from ..inputs.teacher import load_teacher
from ..inputs.teacher_formats import _error_line
from ..synthesis.embeddings import class_separation, encode_class_names, onehot_embeddings
from ..synthesis.memory import SampleMemory
from ..zoo import build_student, describe_student
from . import distributed
from . import run_folder as rf
from .checkpoint import (
    changed_on_resume,
    has_memories,
    planned_config,
    read_checkpoint,
    restore_memory,
    write_checkpoint,
)
from .config import DistillConfig
from .distributed import SINGLE, quiet_other_ranks, rank_seed, read_bytes_on_main
from .engine import Distiller
from .performance import resolve_device
from .planner import (
    SCHEDULE_KEYS,
    WRITE_BYTES_PER_SECOND,
    Plan,
    measure_step_costs,
    needs_plan,
    plan_schedule,
    plan_table,
    planned_ngf,
    ram_bytes,
    smallest_budget,
    user_set_keys,
)
from .progress import RichProgress
from .run_folder import CHECKPOINT, HOLDOUT, MEMORY, recorded_teacher_sha256

# Seconds within which a repeated signal counts as the same one under torchrun (see StopRequest).
TORCHRUN_REPEAT_WINDOW = 2.0
# Under torchrun, the stop request is all-reduced at every this-many-th safe point (see stop_now).
STOP_POLL_EVERY = 8
# What a budgeted run keeps back for its end (final evaluation, sample memories, TorchScript, plots, JSON), besides
# the time to write its memories (see _final_reserve).
FINAL_FIXED_SECONDS = 3.0


def _make_folders(out_dir: Path) -> list[Path]:
    """``out_dir`` and its missing parents made; returns those this call made, outermost first."""
    missing = [folder for folder in [*reversed(out_dir.parents), out_dir] if not folder.exists()]
    out_dir.mkdir(parents=True, exist_ok=True)
    return missing


def _undo_output(out_dir: Path, made: list[Path], memory_path: Path) -> None:
    """After a run failed before its first checkpoint: remove the folders it made (everything in them is its
    own), or, in a folder that was there before, what it added (its sample-memory file, temporary files)."""
    import shutil

    if made:
        shutil.rmtree(made[0], ignore_errors=True)
        return
    memory_path.unlink(missing_ok=True)
    remove_temporaries(out_dir)


class GuardedTeacher(NormalizedModel):
    """The teacher as the run calls it: a :class:`~nayer_edge.core.normalize.NormalizedModel` (the same modules and
    buffers) that turns whatever the teacher itself raises into one :class:`UserError` line. It passed the
    load-time probe (a batch of 2); this catches one that fails on a run's batches.

    ``compiled``: the run will ``torch.compile`` it. The call to the teacher then stays outside dynamo (the
    teacher's own forward is still compiled), which would otherwise report a failing forward as its own error
    while tracing, past the ``except``."""

    def __init__(self, model: torch.nn.Module, mean: Any, std: Any, compiled: bool = False):
        super().__init__(model, mean, std)
        self._call = torch.compiler.disable(_call_teacher, recursive=False) if compiled else _call_teacher
        self._compiled = compiled

    def forward(self, images01: torch.Tensor) -> torch.Tensor:
        return self._call(self.model, (images01 - self.mean) / self.std, self._compiled)


def _call_teacher(model: torch.nn.Module, x: torch.Tensor, compiled: bool = False) -> torch.Tensor:
    # Compiled, dynamo logs a failing op's traceback at ERROR while tracing, before raising: the line says it.
    fake_tensor_log = logging.getLogger("torch._subclasses.fake_tensor")
    was_disabled = fake_tensor_log.disabled
    fake_tensor_log.disabled = was_disabled or compiled
    try:
        out = model(x)
    except UserError:
        raise
    except Exception as err:  # noqa: BLE001 - only the teacher's own forward is in here

        raise UserError(f"the teacher failed on a batch of {_batch(x)}: {_error_line(_root_cause(err)).rstrip('.')}; check that it "
                        "accepts any batch size (or lower the recipe's batch sizes)") from None
    finally:
        fake_tensor_log.disabled = was_disabled
    if isinstance(out, torch.Tensor) and (out.ndim != 2 or out.shape[0] != x.shape[0]):
        raise UserError(f"the teacher returned shape {tuple(out.shape)} for a batch of {_batch(x)}; expected "
                        f"{x.shape[0]}×classes logits; check that it accepts any batch size (or lower the "
                        "recipe's batch sizes)")
    return out


def _root_cause(err: BaseException) -> BaseException:
    """A compiled teacher's failure comes wrapped by dynamo ("RuntimeError when making fake tensor call"); the
    teacher's own error is down its chain of causes and contexts."""
    while type(err).__module__.startswith(("torch._dynamo", "torch._subclasses")):
        inner = err.__cause__ or err.__context__
        if inner is None:
            break
        err = inner
    return err


def _batch(x: torch.Tensor) -> str:
    return f"{x.shape[0]} images of {'×'.join(map(str, x.shape[1:]))}"


def label_embeddings(config: DistillConfig, class_names: list[str], cache_dir: Path | None) -> torch.Tensor | None:
    if config.generator == "noise":
        return None
    if config.embedding == "onehot":
        return onehot_embeddings(len(class_names))
    return encode_class_names(class_names, encoder=config.text_encoder, template=config.prompt_template,
                              allow_download=config.allow_download, cache_dir=cache_dir)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _check_student(student: torch.nn.Module, input_shape: tuple[int, int, int], num_classes: int, spec: str) -> None:
    try:
        with torch.no_grad():
            out = student.eval()(torch.zeros(2, *input_shape))
    except Exception as err:  # noqa: BLE001 - any failure of the user's model is reported as one line
        raise UserError(f"student '{spec}' rejects input shape {','.join(map(str, input_shape))}: "
                        f"{first_line(err)}") from None
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (2, num_classes):
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise UserError(f"student '{spec}' must return N×{num_classes} logits, got {shape}")
    student.train()

# Keyword-only options, one per command-line option of the command it backs: the library's public API.

def distill(teacher: str | Path, *, out_dir: str | Path, config: DistillConfig | None = None,
            arch: str | None = None, classes: list[str] | None = None,
            input_shape: tuple[int, int, int] | None = None, mean: tuple[float, ...] | None = None,
            std: tuple[float, ...] | None = None, trust_pickle: bool = False,
            eval_data: str | Path | None = None, resume: bool = False, show_progress: bool = True,
            cache_dir: Path | None = None, user_set: Collection[str] | None = None, clock_start: float | None = None,
            reserve_after: float = 0.0) -> dict[str, Any]:
    """Distil ``teacher`` into ``config.student`` without training data; returns the metrics.

    With ``config.schedule == "auto"`` (the default) the schedule settings not in ``user_set`` (the settings the
    caller chose; ``None``: those that differ from the defaults) are planned for this device, these models and
    ``config.time_budget`` (:mod:`nayer_edge.distill.planner`). The budget bounds the whole call, counted from
    ``clock_start`` (a ``time.perf_counter()`` value; default: the call), less ``reserve_after`` seconds the caller
    needs after it returns.

    Everything is validated before the output folder is touched. Example::

        metrics = distill("teacher.pt", out_dir="runs/x", config=load_config("demo-digits"),
                          eval_data="heldout.npz")
        print(metrics["teacher_accuracy"], metrics["student_accuracy"])

    Started by ``torchrun`` (``WORLD_SIZE`` > 1 in the environment), every process calls this function and
    they run one distillation together (:mod:`nayer_edge.distill.distributed`): rank 0 alone reads ``--eval-data``
    and the checkpoint being resumed, evaluates, writes the artefacts and shows progress; every rank returns
    rank 0's metrics.

    In the main thread, the first SIGINT/SIGTERM during the run stops it at the next safe point (after the
    current synthesis round or KD step) with a checkpoint of exactly that point, and raises
    :class:`~nayer_edge.core.interrupt.Interrupted`; ``resume=True`` then continues bitwise identically on the CPU.
    Distributed, every rank stops at the same step. A second signal aborts at once.
    """
    config = config or DistillConfig()
    out_dir = Path(out_dir)
    started = time.perf_counter() if clock_start is None else clock_start
    keys = user_set_keys(config, user_set)

    # 1. Validate every input before writing anything, and before joining the other processes: every rank
    # checks the same inputs, except the output folder and the evaluation data, which only rank 0 uses.
    # Aborted (a second signal, or one before the run started) while an earlier checkpoint exists: say so.
    with names_checkpoint(out_dir / CHECKPOINT):
        launch = distributed.launch_env()
        main_rank = launch.rank == 0
        if main_rank:
            prepare_output_dir(out_dir)
        if launch.distributed and min(config.synthesis_batch, config.kd_batch) < launch.world_size:
            raise UserError(f"synthesis_batch ({config.synthesis_batch}) and kd_batch ({config.kd_batch}) must be at least "
                            f"the number of processes ({launch.world_size}): each process takes a share of both")
        device = distributed.resolve_rank_device(config.device, launch)
        loaded = load_teacher(teacher, arch=arch, classes=classes, input_shape=input_shape, mean=mean, std=std,
                              trust_pickle=trust_pickle)
        spec = loaded.spec
        class_names = list(spec.classes) if spec.classes else [str(i) for i in range(loaded.num_classes)]
        channels, height, width = spec.input_shape
        student = build_student(config.student, num_classes=loaded.num_classes, in_channels=channels, input_size=height)
        _check_student(student, spec.input_shape, loaded.num_classes, config.student)
        eval_set = (load_eval_data(eval_data, input_shape=spec.input_shape, classes=class_names)
                    if eval_data and main_rank else None)
        if eval_set is not None and int(eval_set[1].max()) >= loaded.num_classes:
            raise UserError(f"{eval_data}: labels go up to {int(eval_set[1].max())} but the teacher has "
                            f"{loaded.num_classes} classes")
        embeddings = label_embeddings(config, class_names, cache_dir)

    dist = distributed.init(launch, device)
    try:
        with graceful_stop(TORCHRUN_REPEAT_WINDOW if dist.enabled else 0.0) as stop:
            run = RunInputs(config=config, out_dir=out_dir, device=device, loaded=loaded, class_names=class_names,
                            eval_set=eval_set, embeddings=embeddings, resume=resume, show_progress=show_progress,
                            arch=arch, started=started, user_set=keys, reserve_after=reserve_after)
            metrics = _distill_run(dist, run, stop)
            signalled = dist.all_max(stop.signum)
        if signalled:
            # A signal while the artefacts were written: they are whole, but what was asked for was a stop.
            raise Interrupted(signalled, graceful=True, checkpoint=out_dir / CHECKPOINT,
                              where="after the last epoch, with the artefacts written")
    except Interrupted as interrupted:
        distributed.shutdown(dist, clean=False)
        if interrupted.checkpoint is None and (out_dir / CHECKPOINT).is_file():
            interrupted.checkpoint = out_dir / CHECKPOINT
        raise
    except BaseException:
        distributed.shutdown(dist, clean=False)
        raise
    distributed.shutdown(dist)
    return metrics

# Keyword-only options, one per command-line option of the command it backs: the library's public API.

def plan(teacher: str | Path, *, config: DistillConfig | None = None, user_set: Collection[str] | None = None,
         arch: str | None = None, classes: list[str] | None = None, input_shape: tuple[int, int, int] | None = None,
         mean: tuple[float, ...] | None = None, std: tuple[float, ...] | None = None, trust_pickle: bool = False,
         eval_samples: int = 0, cache_dir: Path | None = None) -> Any:
    """The schedule :func:`distill` would plan for ``teacher`` on this device (measured here), without training::

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
    _check_student(student, spec.input_shape, loaded.num_classes, config.student)
    if config.threads:
        torch.set_num_threads(config.threads)
    if not needs_plan(config, keys):
        return Plan({}, {k: getattr(config, k) for k in SCHEDULE_KEYS if k in keys}, None, None, config.time_budget,
                    0.0, 0.0, 0.0, 0.0, 0.0, 0, ("every schedule setting is set: nothing to plan",))
    embeddings = label_embeddings(config, class_names, cache_dir)
    run = RunInputs(config=config, out_dir=Path(), device=device, loaded=loaded, class_names=class_names,
                    eval_set=None, embeddings=embeddings, resume=False, show_progress=False, arch=arch,
                    started=started, user_set=keys, reserve_after=0.0)
    return _make_plan(run, GuardedTeacher(loaded.model, spec.mean, spec.std),
                      NormalizedModel(student, spec.mean, spec.std), SINGLE, eval_samples)


def _checkpoint_does_not_fit(out_dir: Path, err: Exception) -> UserError:
    detail = first_line(err, "", 200)
    return UserError(f"{out_dir / CHECKPOINT}: damaged or not this run's ({type(err).__name__}: {detail}); remove it or "
                     "run without --resume")


@dataclass(frozen=True)
class RunInputs:
    """What one distillation run works from, checked and loaded by :func:`distill` before anything is written:
    handed down whole instead of as keyword relays. ``config`` is the planned one once a plan is made."""

    config: DistillConfig
    out_dir: Path
    device: torch.device
    loaded: Any  # the LoadedTeacher
    class_names: list[str]
    eval_set: Any  # (images, labels) on rank 0 with --eval-data, else None
    embeddings: torch.Tensor | None
    resume: bool
    show_progress: bool
    arch: str | None
    started: float  # perf_counter() the budget counts from
    user_set: set[str]  # the settings the user chose: the planner keeps them
    reserve_after: float  # seconds the caller needs after distill returns (compress: the deployment)

    @property
    def eval_samples(self) -> int:
        return int(len(self.eval_set[1])) if self.eval_set is not None else 0


@dataclass
class RunParts:
    """What :func:`_distill_run` builds for the loop: the models, the checkpoint being resumed, the plan, and
    where the sample memory lives; ``written`` lists the checkpoints this run wrote (none: a failure undoes
    the run's output)."""

    teacher_module: Any
    student: torch.nn.Module
    student_module: Any
    checkpoint: dict[str, Any] | None
    plan: Any
    memory_path: Path
    written: list[Path] = field(default_factory=list)


def _distill_run(dist: Any, run: RunInputs, stop: StopRequest) -> dict[str, Any]:
    quiet_other_ranks(dist)
    config, out_dir, loaded = run.config, run.out_dir, run.loaded
    spec = loaded.spec
    channels, height, width = spec.input_shape
    checkpoint, plan = _resumed_checkpoint(dist, run)
    if checkpoint is not None and plan is not None:
        config = planned_config(checkpoint, config, run.user_set)  # the run's own plan, not a new one

    # 2. Build the run.
    if config.threads:
        # Distributed, the configured threads are shared by this node's processes.
        torch.set_num_threads(max(1, config.threads // dist.local_world_size) if dist.enabled else config.threads)
    _seed_everything(config.seed)
    teacher_module = GuardedTeacher(loaded.model, spec.mean, spec.std, compiled=config.compile)
    # Built again after seeding, so that the student's initial weights depend on the seed alone.
    student = build_student(config.student, num_classes=loaded.num_classes, in_channels=channels, input_size=height)
    student_module = NormalizedModel(student, spec.mean, spec.std)
    if plan is None and checkpoint is None and needs_plan(config, run.user_set):
        # Made once, on rank 0, and shared: every rank runs the same schedule.
        plan = Plan.from_dict(dist.on_main(lambda: _make_plan(
            dc_replace(run, config=config), teacher_module, student_module, dist, run.eval_samples).to_dict()))
        config = plan.apply(config)
        if run.show_progress and dist.is_main:
            _print_plan(plan)
    run = dc_replace(run, config=config)
    if dist.enabled:
        # The same student on every rank; from here on each rank draws its own generators and noisy layers.
        _seed_everything(rank_seed(config.seed, dist.rank))
    made: list[Path] = []  # the folders this run creates, outermost first
    if dist.is_main:
        made = _make_folders(out_dir)
        memory_path = out_dir / rf.MEMORY_MMAP
    else:
        memory_path = Path(tempfile.gettempdir()) / f"nayer-edge-{os.getpid()}-rank{dist.rank}.mmap.npy"
    # Until its first checkpoint, a failed run leaves no trace: the folders it made are removed, a folder that
    # was there stays as it was (an earlier run's checkpoint and samples are only replaced by this run's first
    # checkpoint, so that run can still be resumed).
    parts = RunParts(teacher_module, student, student_module, checkpoint, plan, memory_path)
    try:
        return _build_and_run(dist, run, parts, stop)
    except BaseException:
        if dist.is_main and not parts.written:
            _undo_output(out_dir, made, memory_path)
        raise


def _resumed_checkpoint(dist: Any, run: RunInputs) -> tuple[dict[str, Any] | None, Any]:
    """With ``--resume``: the checkpoint (read by rank 0 and handed to every rank) and the plan it records,
    refused when it belongs to another teacher or another number of processes."""
    out_dir = run.out_dir
    checkpoint = dist.on_main(lambda: read_checkpoint(out_dir, run.config, run.user_set)) if run.resume else None
    if run.resume and checkpoint is None and dist.is_main:
        warnings.warn(f"--resume: no checkpoint in {out_dir}; starting a new run", stacklevel=3)
    if checkpoint is None:
        return None, None
    plan = Plan.from_dict(checkpoint["plan"]) if isinstance(checkpoint.get("plan"), dict) else None
    # Checkpoints of earlier versions lack the teacher's sha256: the finished run's config.json has it.
    saved_teacher = checkpoint.get("teacher_sha256") or recorded_teacher_sha256(out_dir)
    if saved_teacher is not None and saved_teacher != run.loaded.sha256:
        raise UserError(f"--resume: the run in {out_dir} was distilled from another teacher (sha256 {saved_teacher[:12]}…, "
                        f"this one {run.loaded.sha256[:12]}…); resume with the same teacher or use another --out")
    if checkpoint.get("world_size", 1) != dist.world_size:
        raise UserError(f"--resume: the run in {out_dir} used {checkpoint.get('world_size', 1)} process(es); resume it "
                        f"with as many (torchrun --nnodes × --nproc-per-node), not {dist.world_size}")
    return checkpoint, plan


def _build_and_run(dist: Any, run: RunInputs, parts: RunParts, stop: StopRequest) -> dict[str, Any]:
    config, loaded = run.config, run.loaded
    distiller = Distiller(parts.teacher_module, parts.student_module, run.embeddings, config, loaded.spec.input_shape,
                          loaded.num_classes, run.device, memory_path=parts.memory_path, dist=dist)
    distiller.fit_epochs_to_clock = (parts.plan is not None and "epochs" in parts.plan.values
                                     and config.time_budget is not None)
    notes = list(loaded.notes)
    if distiller.probe.num_layers == 0:
        message = ("teacher has no BatchNorm layers: running without the BN-statistics loss "
                   "(samples rely on the class and adversarial terms)")
        warnings.warn(message, stacklevel=2)
        notes.append(message)
    if parts.checkpoint is not None:
        notes += _restore(dist, run, parts.checkpoint, distiller)
    if dist.is_main:
        remove_temporaries(run.out_dir)
    teacher_accuracy = (accuracy(parts.teacher_module, *run.eval_set, device=run.device)
                        if run.eval_set is not None else None)
    resolved = _resolved_record(run, parts.plan)
    state = _train(dist, run, parts, distiller, stop, resolved["plan"])

    # 4. Artefacts, by rank 0; the others wait for its metrics and return them.
    distiller.release()
    if not dist.is_main:
        parts.memory_path.unlink(missing_ok=True)
        return dist.broadcast_object(None)
    if not parts.written and not run.resume:
        (run.out_dir / CHECKPOINT).unlink(missing_ok=True)  # an earlier run's: stopped before its first epoch ended
    metrics = _metrics(dist, run, parts, distiller, state, notes, teacher_accuracy, resolved["plan"])
    _write_artefacts(run, parts, distiller, state, resolved, metrics)
    return dist.broadcast_object(metrics)


def _restore(dist: Any, run: RunInputs, checkpoint: dict[str, Any], distiller: Any) -> list[str]:
    """Load a checkpoint and its sample memories into ``distiller``; returns the notes it calls for."""
    out_dir, config, notes = run.out_dir, run.config, []
    changed = changed_on_resume(checkpoint, config)
    if changed:
        message = (f"resumed with other settings ({', '.join(changed)}): the result can differ from an "
                   "uninterrupted run's")
        warnings.warn(message, stacklevel=3)
        notes.append(message)
    if has_memories(checkpoint):
        memories = None  # restored inside the try below: a damaged ring is a damaged checkpoint
    else:
        def check_memory_files() -> None:
            if not (out_dir / MEMORY).is_file() or not (out_dir / HOLDOUT).is_file():
                raise UserError(f"--resume: {out_dir} has a checkpoint but not its {MEMORY} / {HOLDOUT}; "
                                "run without --resume to start again")

        dist.on_main(check_memory_files)
        sources: list[Any] = [out_dir / MEMORY, out_dir / HOLDOUT]
        if dist.enabled:
            sources = read_bytes_on_main(dist, sources)
        memories = (SampleMemory.load(sources[0], config.memory_capacity), SampleMemory.load(sources[1]))
    try:
        if memories is None:
            memories = (restore_memory(checkpoint["memory_ring"], into=distiller.memory),
                        restore_memory(checkpoint["holdout_ring"], into=distiller.holdout))
        distiller.load_state_dict(checkpoint, *memories)
    except (KeyError, IndexError, TypeError, ValueError, AttributeError, RuntimeError) as err:
        raise _checkpoint_does_not_fit(out_dir, err) from None
    return notes


def _resolved_record(run: RunInputs, plan: Any) -> dict[str, Any]:
    """``config.json``: the resolved config, the teacher (its path absolute, so that export --target and quantize
    --qat find it from any working directory), the versions, and the plan."""
    loaded, spec = run.loaded, run.loaded.spec
    return {"config": run.config.to_dict(),
            "teacher": {"path": str(Path(loaded.path).resolve()), "format": loaded.format, "sha256": loaded.sha256,
                        "input_shape": list(spec.input_shape), "mean": list(spec.mean), "std": list(spec.std),
                        "classes": run.class_names, "arch": run.arch},
            "versions": {"nayer_edge": __import__("nayer_edge").__version__, "torch": torch.__version__},
            "plan": plan.to_dict() if plan is not None else None}


def _train(dist: Any, run: RunInputs, parts: RunParts, distiller: Any, stop: StopRequest,
           plan_record: dict[str, Any] | None) -> Any:
    """The loop, with checkpoints, the collective stop and the time budget; returns its final state."""
    config, out_dir = run.config, run.out_dir

    def save_checkpoint(d: Any) -> None:
        state = d.state_dict()  # on every rank: distributed, it gathers each rank's own state
        # Only rank 0 writes. The other ranks do not wait for it here: they go on synthesising the next
        # round and meet rank 0 at its all-gather (within the process group's timeout).
        if dist.is_main:
            write_checkpoint(out_dir / CHECKPOINT, {**state, "teacher_sha256": run.loaded.sha256,
                                                    "plan": plan_record}, config, d.memory, d.holdout)
            if not parts.written and not run.resume:
                # This run's first checkpoint has replaced an earlier run's: that run's samples go with it.
                for stale in (MEMORY, HOLDOUT):
                    (out_dir / stale).unlink(missing_ok=True)
            parts.written.append(out_dir / CHECKPOINT)

    polls = itertools.count()

    def stop_now() -> bool:
        # Collective: every rank learns that some rank got a signal, at the same step. The all-reduce ends in a
        # host read, so under torchrun only every STOP_POLL_EVERY-th safe point asks (every rank polls at the same
        # points, so they still agree); a stop then lands at most that many KD steps later.
        if dist.enabled and next(polls) % STOP_POLL_EVERY:
            return False
        stop.agreed = dist.all_max(stop.signum)
        return bool(stop.agreed)

    # 3. Run, within what the budget leaves after the work so far and before the work after the loop.
    if config.time_budget is not None:
        # Rank 0's clock for every rank: the loop compares rank 0's elapsed time with this budget, and ranks
        # with budgets of their own (each process started its clock at its own moment) could stop at
        # different steps and leave one waiting in a collective.
        spent = dist.broadcast_float(time.perf_counter() - run.started)
        left = config.time_budget - spent - run.reserve_after - _final_reserve(config, parts.plan)
        if left <= 0 and distiller.state.epoch == 0 and not distiller.state.kd_step:
            raise UserError(f"the time budget ({config.time_budget:g} s) is spent before the first synthesis round "
                            f"({spent:.0f} s of setup, {run.reserve_after:.0f} s kept for what "
                            f"follows); use a larger --time-budget")
        distiller.loop_budget = distiller.state.elapsed + left
    if run.show_progress and dist.is_main:
        with RichProgress(config.epochs, distiller.state.epoch, time_budget=config.time_budget) as bar:
            try:
                state = distiller.run(run.eval_set, on_epoch=bar.on_epoch, on_step=bar.on_step,
                                      checkpoint=save_checkpoint, stop=stop_now)
            except UserError:
                bar.progress.live.transient = True  # the bar goes: the error line alone says what happened
                raise
    else:
        state = distiller.run(run.eval_set, checkpoint=save_checkpoint, stop=stop_now)
    if state.stopped_by == "interrupted":
        dist.barrier()  # no rank exits (and has torchrun stop the others) before rank 0 has written the checkpoint
        if dist.is_main:
            parts.memory_path.unlink(missing_ok=True)
        raise Interrupted(stop.agreed, graceful=True, checkpoint=out_dir / CHECKPOINT, where=_position(state, config))
    return state


def _metrics(dist: Any, run: RunInputs, parts: RunParts, distiller: Any, state: Any, notes: list[str],
             teacher_accuracy: float | None, plan_record: dict[str, Any] | None) -> dict[str, Any]:
    """``metrics.json`` of a finished run (rank 0)."""
    config, loaded, eval_set = run.config, run.loaded, run.eval_set
    if any(distiller.nonfinite.values()):
        skipped = distiller.nonfinite
        notes.append(f"NaN/Inf losses: {skipped['generator_steps']} generator steps and {skipped['kd_steps']} student "
                     f"steps skipped, {skipped['generator_resets']} generators rebuilt (see metrics.json 'nonfinite')")
    rounds = (distiller.memory.total_added + distiller.holdout.total_added) // max(1, config.synthesis_batch)
    untrained = untrained_reason(config, kd_steps=state.kd_step, rounds=rounds, distill_seconds=state.elapsed,
                                 setup_seconds=time.perf_counter() - run.started - state.elapsed)
    if untrained:
        notes.append(untrained)
    student_params = sum(p.numel() for p in parts.student.parameters())
    return {
        "plan": plan_record,
        "teacher_accuracy": teacher_accuracy,
        "student_accuracy": (accuracy(parts.student_module, *eval_set, device=run.device)
                             if eval_set is not None else None),
        "agreement": distiller.holdout_agreement(),
        "epochs": state.epoch,
        "kd_steps": state.kd_step,
        "kd_steps_per_epoch": config.kd_steps,
        "synthesis_rounds": int(rounds),
        "untrained": untrained,
        "wall_seconds": round(time.perf_counter() - run.started, 2),
        "distill_seconds": round(state.elapsed, 2),
        "stopped_by": state.stopped_by or "epochs",
        "student": config.student,
        "student_params": student_params,
        "teacher_params": loaded.param_count,
        "compression": round(loaded.param_count / max(1, student_params), 2),
        "teacher_bn_layers": distiller.probe.num_layers,
        "nonfinite": dict(distiller.nonfinite),
        "synthetic_samples": distiller.memory.total_added,
        "memory_samples": len(distiller.memory),
        "memory_bytes": distiller.memory.nbytes,
        "memory_device": str(distiller.memory.device),
        "amp": distiller.amp.precision,
        "channels_last": distiller.channels_last,
        "generator": config.generator,
        "embedding": config.embedding if config.generator == "nayer" else None,
        "eval_samples": run.eval_samples,
        "embedding_separation": _separation(run.embeddings),
        "notes": notes,
        "world_size": dist.world_size,
        "history": state.history,
    }


def _write_artefacts(run: RunInputs, parts: RunParts, distiller: Any, state: Any, resolved: dict[str, Any],
                     metrics: dict[str, Any]) -> None:
    """The finished run folder (rank 0); ``metrics.json`` last, so that a run folder with one is whole."""
    out_dir, config, loaded, student = run.out_dir, run.config, run.loaded, parts.student
    spec = loaded.spec
    channels, height, _ = spec.input_shape
    student.eval().to("cpu", memory_format=torch.contiguous_format)  # artefacts in the usual layout
    distiller.memory.save(out_dir / MEMORY)
    distiller.holdout.save(out_dir / HOLDOUT)
    scripted = torch.jit.trace(student, torch.zeros(1, *spec.input_shape))
    _atomic_jit_save(scripted, out_dir / rf.STUDENT_TS)
    atomic_torch_save(out_dir / rf.STUDENT_WEIGHTS, student.state_dict())
    atomic_write_text(out_dir / rf.STUDENT_SPEC, json.dumps({
        "architecture": describe_student(config.student, loaded.num_classes, channels, height),
        "input_shape": list(spec.input_shape), "mean": list(spec.mean), "std": list(spec.std),
        "classes": run.class_names, "input": "normalised: (x - mean) / std of images in [0, 1]",
    }, indent=2))
    atomic_write_text(out_dir / rf.CONFIG, json.dumps(resolved, indent=2))
    images, labels = distiller.memory.all()
    newest = slice(-min(len(images), 8 * 20 * len(run.class_names)), None)  # enough for 8 per class of 20 rows
    save_sample_grid(images[newest], labels[newest], run.class_names, out_dir / rf.SAMPLE_GRID)
    save_training_curves(state.history, out_dir / rf.CURVES)
    metrics["artifacts"] = {name: str(out_dir / name) for name in
                            (rf.STUDENT_TS, rf.STUDENT_WEIGHTS, rf.STUDENT_SPEC, rf.CONFIG, rf.SAMPLE_GRID, rf.CURVES,
                             MEMORY, CHECKPOINT)}
    atomic_write_text(out_dir / rf.METRICS, json.dumps(metrics, indent=2))
    (out_dir / rf.MEMORY_MMAP).unlink(missing_ok=True)


def untrained_reason(config: DistillConfig, *, kd_steps: int, rounds: int, distill_seconds: float,
                     setup_seconds: float) -> str | None:
    """One line saying that the student never took a KD step and about what budget would have let it, or None
    when it trained. The estimate counts the synthesis rounds the schedule runs before its first KD step at the
    pace this run measured. A student stopped before it finished its first epoch of KD steps has not trained
    either: a few steps of a cosine schedule at its peak rate teach it nothing a release can rely on."""
    if kd_steps >= config.kd_steps:
        return None
    if kd_steps > 0:
        need = math.ceil(1.2 * (setup_seconds + distill_seconds * config.kd_steps / kd_steps) + 10)
        return (f"the student never finished its first epoch: {kd_steps} of its {config.kd_steps} KD steps in "
                f"{distill_seconds:.0f} s of distillation; a --time-budget of at most about {need} s would let it, "
                "or leave the schedule to the planner (--schedule auto, no fixed recipe)")
    warm = config.warmup_epochs > 0
    before_kd = (config.warmup_rounds if warm else config.rounds_per_epoch) if config.kd_during_warmup else \
        config.warmup_epochs * config.warmup_rounds + config.rounds_per_epoch
    per_round = distill_seconds / rounds if rounds else None
    line = (f"the student never trained: 0 KD steps in {distill_seconds:.0f} s of distillation, which went to "
            f"{rounds} synthesis round(s) of the {before_kd} the schedule runs before its first KD step")
    if per_round is None:
        return line + "; give a larger --time-budget, or leave the schedule to the planner (--schedule auto)"
    need = math.ceil(1.2 * (setup_seconds + before_kd * per_round) + 10)
    return (line + f" (about {per_round:.0f} s each); a --time-budget of about {need} s would have let it train, "
            "or leave the schedule to the planner (--schedule auto, no fixed recipe)")


def _final_reserve(config: DistillConfig, plan: Any) -> float:
    """Seconds a budgeted run keeps for its end: a fixed part, and writing the sample memories it will hold."""
    samples = plan.expected_samples if plan is not None else config.memory_capacity
    held = min(samples, config.memory_capacity)
    sample_bytes = plan.costs.sample_bytes if plan is not None and plan.costs else 3 * 32 * 32

    return FINAL_FIXED_SECONDS + 2 * held * sample_bytes / WRITE_BYTES_PER_SECOND


def _make_plan(run: RunInputs, teacher_module: Any, student_module: Any, dist: Any, eval_samples: int) -> Any:
    """Measure the step costs here and plan the schedule (see :mod:`nayer_edge.distill.planner`) for the run's own
    inputs and ``eval_samples`` held-out images to evaluate each epoch; the models are copied before any step is
    taken."""
    import copy

    config, user_set, loaded, started = run.config, run.user_set, run.loaded, run.started
    config = dc_replace(config, ngf=planned_ngf(config, user_set, loaded.spec.input_shape))  # measured as it will run

    def make(trial: DistillConfig) -> Distiller:
        return Distiller(teacher_module, copy.deepcopy(student_module), run.embeddings, trial, loaded.spec.input_shape,
                         loaded.num_classes, run.device)

    costs = measure_step_costs(make, config, num_classes=loaded.num_classes)

    def attempt(final_reserve: float) -> Any:
        loop_budget = None
        if config.time_budget is not None:
            outside = ((time.perf_counter() - started) + run.reserve_after + final_reserve
                       + costs.forward(eval_samples) * 0.5)
            loop_budget = config.time_budget - outside
        return plan_schedule(costs, config, user_set=user_set, num_classes=loaded.num_classes, loop_budget=loop_budget,
                             eval_samples=eval_samples, world_size=dist.world_size, ram_bytes=ram_bytes())

    try:
        first = attempt(FINAL_FIXED_SECONDS)
        return attempt(_final_reserve(first.apply(config), first))
    except UserError as err:
        outside = (time.perf_counter() - started) + run.reserve_after + FINAL_FIXED_SECONDS
        least = smallest_budget(costs, config, num_classes=loaded.num_classes, outside_loop=outside)
        raise UserError(f"--time-budget {config.time_budget:g} s is too small to train the student at all ({err}); "
                        f"use at least --time-budget {least:g}") from None


def _print_plan(plan: Any) -> None:
    from rich.console import Console

    console = Console(stderr=True)
    console.print(plan_table(plan))
    for note in plan.notes:
        console.print(f"[yellow]plan:[/] {note}")


def _position(state: Any, config: DistillConfig) -> str:
    if state.step:
        return f"in epoch {state.epoch + 1}/{config.epochs} after KD step {state.step}/{config.kd_steps}"
    if state.round:
        return f"in epoch {state.epoch + 1}/{config.epochs} after synthesis round {state.round}"
    return f"after epoch {state.epoch}/{config.epochs}"


def _separation(embeddings: torch.Tensor | None) -> dict[str, Any] | None:
    """Pairwise cosine of the class embeddings, raw and as BatchNorm1d sees them (standardised)."""
    if embeddings is None or len(embeddings) < 2:
        return None
    return class_separation(embeddings)


def _atomic_jit_save(module: torch.jit.ScriptModule, path: Path) -> None:
    import io

    buffer = io.BytesIO()
    torch.jit.save(module, buffer)
    atomic_write_bytes(path, buffer.getvalue())
