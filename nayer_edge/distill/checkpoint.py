"""The resumable state of a distillation run: one file, written atomically, so that a kill at any moment
leaves either the previous checkpoint or the new one, never a mix of two.

It holds the :meth:`~nayer_edge.distill.engine.Distiller.state_dict` (student, optimizer, generator, random streams,
position in the schedule, down to the synthesis round or KD step), the resolved config, and both sample
memories slot for slot. ``samples.npz`` / ``holdout.npz`` are artefacts written when the run ends.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..core.atomic import atomic_torch_save
from ..core.errors import UserError
from ..core.strict import replace
from ..synthesis.memory import SampleMemory
from .config import DistillConfig
from .run_folder import CHECKPOINT

# Keys that may change between an interrupted run and its --resume (how the device is used included: a run
# may continue on another device, where ``amp: auto`` means something else anyway).
RESUMABLE_CHANGES = {"epochs", "time_budget", "device", "threads", "amp", "channels_last", "compile",
                     "memory_device_budget"}


def write_checkpoint(path: Path, state: dict[str, Any], config: DistillConfig, memory: SampleMemory,
                     holdout: SampleMemory) -> None:
    atomic_torch_save(path, {**state, "config": config.to_dict(), "memory_ring": memory_state(memory),
                             "holdout_ring": memory_state(holdout)})


def planned_config(checkpoint: dict[str, Any], config: DistillConfig, user_set: set[str] | None) -> DistillConfig:
    """``config`` with the schedule the checkpoint's run planned (a resumed run keeps its plan; it is not made
    again): every planned setting the user did not set in this command."""
    plan = checkpoint.get("plan")
    if not isinstance(plan, dict) or not isinstance(plan.get("values"), dict):
        return config
    values = {k: v for k, v in plan["values"].items() if user_set is None or k not in user_set}
    return replace(config, **values) if values else config


def read_checkpoint(out_dir: Path, config: DistillConfig, user_set: set[str] | None = None) -> dict[str, Any] | None:
    """The checkpoint in ``out_dir`` (None if there is none), refused when it was made with other settings (the
    settings its run planned count as its own: see :func:`planned_config`)."""
    path = out_dir / CHECKPOINT
    if not path.is_file():
        return None
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any failure to read the checkpoint becomes one line
        raise UserError(f"{path}: unreadable checkpoint ({type(err).__name__}); remove it or run without --resume") from None
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("config"), dict):
        raise UserError(f"{path}: not a nayer-edge checkpoint (no run state and settings in it); remove it or run "
                        "without --resume")
    saved = checkpoint["config"]
    try:
        config = planned_config(checkpoint, config, user_set)
    except UserError:
        raise UserError(f"{path}: its schedule plan is damaged; remove it or run without --resume") from None
    # A setting newer than the checkpoint was its default then.
    defaults = DistillConfig().to_dict()
    changed = sorted(k for k, v in config.to_dict().items()
                     if k not in RESUMABLE_CHANGES and saved.get(k, defaults[k]) != v)
    if changed:
        raise UserError(f"--resume: the run in {path.parent} used different settings ({', '.join(changed)}); "
                        "use the same options or another --out")
    return checkpoint


def changed_on_resume(checkpoint: dict[str, Any], config: DistillConfig) -> list[str]:
    """The allowed changes this resume makes ("amp: fp32 → bf16"): a run continued with any of them is no longer
    bitwise the uninterrupted one (other kernels, thread count or schedule)."""
    saved = checkpoint.get("config", {})
    return [f"{k}: {saved[k]} → {v}" for k, v in config.to_dict().items()
            if k in RESUMABLE_CHANGES - {"memory_device_budget"} and k in saved and saved[k] != v]


def has_memories(checkpoint: dict[str, Any]) -> bool:
    """Whether the memories are inside the checkpoint (else: a checkpoint of an older nayer-edge, beside
    ``samples.npz`` / ``holdout.npz``)."""
    return "memory_ring" in checkpoint and "holdout_ring" in checkpoint


def memory_state(memory: SampleMemory) -> dict[str, Any]:
    """The ring buffer exactly as it is: slots in place and the next write position. (``samples.npz`` is
    stored oldest first; once the ring has wrapped, reloading it moves samples to other slots, and a resumed
    run would draw other KD batches than an uninterrupted one.)"""
    pixels, labels = memory.slots()
    return {"pixels": pixels, "labels": labels, "capacity": memory.capacity, "next_index": memory.next_index,
            "total_added": memory.total_added}


def restore_memory(state: dict[str, Any], into: SampleMemory | None = None) -> SampleMemory:
    """The memory :func:`memory_state` saw, slot for slot: put back into ``into`` (the run's own memory, in RAM,
    a memory-mapped file or on the GPU) when its capacity matches, else into a new one in RAM."""
    pixels, labels, capacity = state["pixels"], state["labels"], int(state["capacity"])
    memory = into if into is not None and into.capacity == capacity else SampleMemory(capacity, tuple(pixels.shape[1:]))
    memory.restore_slots(pixels, labels, int(state["next_index"]), int(state["total_added"]))
    return memory
