"""What a finished run reports and leaves: ``metrics.json`` and the artefacts of the run folder (written by
rank 0), and the line that says a student never trained."""

from __future__ import annotations

import io
import json
import math
import time
from pathlib import Path
from typing import Any

import torch

from ..core.atomic import atomic_torch_save, atomic_write_bytes, atomic_write_text
from ..core.evaluate import accuracy
from ..core.optional import require
from ..core.plots import save_sample_grid, save_training_curves
from ..synthesis.best_batches import kept_per_round
from ..synthesis.embeddings import class_separation
from ..zoo import describe_student
from . import run_folder as rf
from .config import DistillConfig
from .run_folder import CHECKPOINT, HOLDOUT, MEMORY
from .run_inputs import RunInputs, RunParts


def run_metrics(dist: Any, run: RunInputs, parts: RunParts, distiller: Any, state: Any, notes: list[str],
             teacher_accuracy: float | None, plan_record: dict[str, Any] | None) -> dict[str, Any]:
    """``metrics.json`` of a finished run (rank 0)."""
    config, loaded, eval_set = run.config, run.loaded, run.eval_set
    if any(distiller.nonfinite.values()):
        skipped = distiller.nonfinite
        notes.append(f"NaN/Inf losses: {skipped['generator_steps']} generator steps and {skipped['kd_steps']} student "
                     f"steps skipped, {skipped['generator_resets']} generators rebuilt (see metrics.json 'nonfinite')")
    rounds = ((distiller.memory.total_added + distiller.holdout.total_added)
              // max(1, config.synthesis_batch * kept_per_round(config.g_steps, config.batches_per_round)))
    untrained = untrained_reason(config, kd_steps=state.kd_step, rounds=rounds, distill_seconds=state.elapsed,
                                 setup_seconds=time.perf_counter() - run.started - state.elapsed
                                 + run.reserve_after)
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


def write_artefacts(run: RunInputs, parts: RunParts, distiller: Any, state: Any, resolved: dict[str, Any],
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
    weights = student.state_dict()
    atomic_torch_save(out_dir / rf.STUDENT_WEIGHTS, weights)
    safetensors_torch = require("safetensors.torch")
    unshared = {k: v.detach().clone().contiguous() for k, v in weights.items()}  # safetensors refuses shared storage
    atomic_write_bytes(out_dir / rf.STUDENT_SAFETENSORS, safetensors_torch.save(unshared))
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
                            (rf.STUDENT_TS, rf.STUDENT_WEIGHTS, rf.STUDENT_SAFETENSORS, rf.STUDENT_SPEC, rf.CONFIG, rf.SAMPLE_GRID, rf.CURVES,
                             MEMORY, CHECKPOINT)}
    atomic_write_text(out_dir / rf.METRICS, json.dumps(metrics, indent=2))
    (out_dir / rf.MEMORY_MMAP).unlink(missing_ok=True)


def untrained_reason(config: DistillConfig, *, kd_steps: int, rounds: int, distill_seconds: float,
                     setup_seconds: float) -> str | None:
    """One line saying that the student never took a KD step and about what budget would have let it, or None
    when it trained. The estimate counts the synthesis rounds the schedule runs before its first KD step at the
    pace this run measured, ``setup_seconds`` the command's time outside the loop (setup, and what a caller keeps
    back after it: compress's deployment). A student stopped before it finished its first epoch of KD steps has not trained
    either: a few steps of a cosine schedule at its peak rate teach it nothing a release can rely on."""
    if kd_steps >= config.kd_steps:
        return None
    if kd_steps > 0:
        need = math.ceil(1.2 * (setup_seconds + distill_seconds * config.kd_steps / kd_steps) + 10)
        return (f"the student never finished its first epoch: {kd_steps} of its {config.kd_steps} KD steps in "
                f"{distill_seconds:.0f} s of distillation; a --time-budget of about {need} s would let it, "
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


def _separation(embeddings: torch.Tensor | None) -> dict[str, Any] | None:
    """Pairwise cosine of the class embeddings, raw and as BatchNorm1d sees them (standardised)."""
    if embeddings is None or len(embeddings) < 2:
        return None
    return class_separation(embeddings)


def _atomic_jit_save(module: torch.jit.ScriptModule, path: Path) -> None:
    buffer = io.BytesIO()
    torch.jit.save(module, buffer)
    atomic_write_bytes(path, buffer.getvalue())
