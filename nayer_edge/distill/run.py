"""``distill``: from a teacher file alone to a trained student and its artefacts (the library entry point
behind ``nayer-edge distill``)."""

from __future__ import annotations

import itertools
import os
import random
import tempfile
import time
import warnings
from dataclasses import replace as dc_replace
from pathlib import Path
from typing import Any, Collection

import numpy as np
import torch

from ..core.atomic import prepare_output_dir, remove_temporaries
from ..core.errors import UserError, first_line
from ..core.evaluate import accuracy
from ..core.interrupt import Interrupted, StopRequest, graceful_stop, names_checkpoint
from ..core.normalize import NormalizedModel
from ..core.progress import Progress, as_progress
from ..inputs.evaldata import load_eval_data
from ..inputs.teacher import load_teacher
from ..synthesis.memory import SampleMemory
from ..zoo import build_student
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
from .distributed import quiet_other_ranks, rank_seed, read_bytes_on_main
from .engine import Distiller
from .guarded_teacher import GuardedTeacher
from .planner import Plan, needs_plan, user_set_keys
from .progress import LoopProgress
from .run_folder import CHECKPOINT, HOLDOUT, MEMORY, recorded_teacher_sha256
from .run_inputs import RunInputs, RunParts, check_student, label_embeddings
from .run_plan import final_reserve, make_plan, show_plan
from .run_results import run_metrics, write_artefacts

# Seconds within which a repeated signal counts as the same one under torchrun (see StopRequest).
TORCHRUN_REPEAT_WINDOW = 2.0
# Under torchrun, the stop request is all-reduced at every this-many-th safe point (see stop_now).
STOP_POLL_EVERY = 8


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


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# Keyword-only options, one per command-line option of the command it backs: the library's public API. Of its
# 88 lines, 28 are its documentation; the body is the validation, then the run.
def distill(teacher: str | Path, *, out_dir: str | Path, config: DistillConfig | None = None,
            arch: str | None = None, classes: list[str] | None = None,
            input_shape: tuple[int, int, int] | None = None, mean: tuple[float, ...] | None = None,
            std: tuple[float, ...] | None = None, trust_pickle: bool = False,
            eval_data: str | Path | None = None, resume: bool = False, show_progress: bool | Progress = True,
            cache_dir: Path | None = None, user_set: Collection[str] | None = None, clock_start: float | None = None,
            reserve_after: float = 0.0) -> dict[str, Any]:
    """Distil ``teacher`` into ``config.student`` without training data; returns the metrics.

    With ``config.schedule == "auto"`` (the default) the schedule settings not in ``user_set`` (the settings the
    caller chose; ``None``: those that differ from the defaults) are planned for this device, these models and
    ``config.time_budget`` (:mod:`nayer_edge.distill.planner`). The budget bounds the whole call, counted from
    ``clock_start`` (a ``time.perf_counter()`` value; default: the call), less ``reserve_after`` seconds the caller
    needs after it returns.

    ``show_progress``: a :class:`~nayer_edge.core.progress.Progress` gets the run's events (stages, epochs, rounds
    with ``verbose``); ``True``: on stderr, live bars on a terminal and one line per event elsewhere; ``False``: none.

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
        check_student(student, spec.input_shape, loaded.num_classes, config.student)
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
                            eval_set=eval_set, embeddings=embeddings, resume=resume,
                            progress=as_progress(show_progress) if main_rank else Progress(),
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

def _checkpoint_does_not_fit(out_dir: Path, err: Exception) -> UserError:
    detail = first_line(err, "", 200)
    return UserError(f"{out_dir / CHECKPOINT}: damaged or not this run's ({type(err).__name__}: {detail}); remove it or "
                     "run without --resume")


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
        with run.progress.stage("plan"):
            plan = Plan.from_dict(dist.on_main(lambda: make_plan(
                dc_replace(run, config=config), teacher_module, student_module, dist, run.eval_samples).to_dict()))
        config = plan.apply(config)
        show_plan(run.progress, plan)
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
    with run.progress.stage("artefacts"):
        metrics = run_metrics(dist, run, parts, distiller, state, notes, teacher_accuracy, resolved["plan"])
        write_artefacts(run, parts, distiller, state, resolved, metrics)
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
        left = config.time_budget - spent - run.reserve_after - final_reserve(config, parts.plan)
        if left <= 0 and distiller.state.epoch == 0 and not distiller.state.kd_step:
            raise UserError(f"the time budget ({config.time_budget:g} s) is spent before the first synthesis round "
                            f"({spent:.0f} s of setup, {run.reserve_after:.0f} s kept for what "
                            f"follows); use a larger --time-budget")
        distiller.loop_budget = distiller.state.elapsed + left
    loop = LoopProgress(run.progress, start_epoch=distiller.state.epoch, time_budget=config.time_budget,
                        clock_start=run.started)
    with run.progress.stage("distill", epochs=config.epochs, start_epoch=distiller.state.epoch):
        state = distiller.run(run.eval_set, on_epoch=loop.on_epoch, on_step=loop.on_step, on_round=loop.on_round,
                              checkpoint=save_checkpoint, stop=stop_now)
        if state.stopped_by == "interrupted":
            dist.barrier()  # no rank exits (and has torchrun stop the others) before rank 0 has written the checkpoint
            if dist.is_main:
                parts.memory_path.unlink(missing_ok=True)
            raise Interrupted(stop.agreed, graceful=True, checkpoint=out_dir / CHECKPOINT,
                              where=_position(state, config))
    return state


def _position(state: Any, config: DistillConfig) -> str:
    if state.step:
        return f"in epoch {state.epoch + 1}/{config.epochs} after KD step {state.step}/{config.kd_steps}"
    if state.round:
        return f"in epoch {state.epoch + 1}/{config.epochs} after synthesis round {state.round}"
    return f"after epoch {state.epoch}/{config.epochs}"


