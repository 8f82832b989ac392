"""The resumable state of a distillation run: one file, written atomically, so that a kill at any moment
leaves either the previous checkpoint or the new one, never a mix of two.

It holds the :meth:`~nayer_edge.engine.Distiller.state_dict` (student, optimizer, generator, random streams,
position in the schedule, down to the synthesis round or KD step), the resolved config, and both sample
memories slot for slot. ``samples.npz`` / ``holdout.npz`` are artefacts written when the run ends.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from .atomic import atomic_torch_save
from .config import DistillConfig
from .errors import UserError
from .memory import SampleMemory

CHECKPOINT = "checkpoint.pt"
MEMORY = "samples.npz"
HOLDOUT = "holdout.npz"
# Keys that may change between an interrupted run and its --resume (how the device is used included: a run
# may continue on another device, where ``amp: auto`` means something else anyway).
RESUMABLE_CHANGES = {"epochs", "time_budget", "device", "threads", "amp", "channels_last", "compile",
                     "memory_device_budget"}
_CHUNK = 4096  # samples converted at a time, so a large memory is never copied whole as float32


def write_checkpoint(path: Path, state: dict[str, Any], config: DistillConfig, memory: SampleMemory,
                     holdout: SampleMemory) -> None:
    atomic_torch_save(path, {**state, "config": config.to_dict(), "memory_ring": memory_state(memory),
                             "holdout_ring": memory_state(holdout)})


def read_checkpoint(out_dir: Path, config: DistillConfig) -> dict[str, Any] | None:
    """The checkpoint in ``out_dir`` (None if there is none), refused when it was made with other settings."""
    path = out_dir / CHECKPOINT
    if not path.is_file():
        return None
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001
        raise UserError(f"{path}: unreadable checkpoint ({type(err).__name__}); remove it or run without --resume") from None
    saved = checkpoint.get("config", {})
    changed = sorted(k for k, v in config.to_dict().items() if k not in RESUMABLE_CHANGES and saved.get(k) != v)
    if changed:
        raise UserError(f"--resume: the run in {path.parent} used different settings ({', '.join(changed)}); "
                        "use the same options or another --out")
    return checkpoint


def has_memories(checkpoint: dict[str, Any]) -> bool:
    """Whether the memories are inside the checkpoint (else: a checkpoint of an older nayer-edge, beside
    ``samples.npz`` / ``holdout.npz``)."""
    return "memory_ring" in checkpoint and "holdout_ring" in checkpoint


def memory_state(memory: SampleMemory) -> dict[str, Any]:
    """The ring buffer exactly as it is: slots in place and the next write position. (``samples.npz`` is
    stored oldest first; once the ring has wrapped, reloading it moves samples to other slots, and a resumed
    run would draw other KD batches than an uninterrupted one.)"""
    pixels = torch.empty((memory.size, *memory.image_shape), dtype=torch.uint8)
    labels = torch.empty(memory.size, dtype=torch.int64)
    for start in range(0, memory.size, _CHUNK):
        stop = min(memory.size, start + _CHUNK)
        images, targets = memory.get(np.arange(start, stop))
        pixels[start:stop] = (images * 255).round().to(torch.uint8).cpu()
        labels[start:stop] = targets.cpu()
    return {"pixels": pixels, "labels": labels, "capacity": memory.capacity, "next_index": memory.next_index,
            "total_added": memory.total_added}


def restore_memory(state: dict[str, Any]) -> SampleMemory:
    """The memory :func:`memory_state` saw, slot for slot, rebuilt through :meth:`SampleMemory.add`."""
    pixels, labels = state["pixels"], state["labels"]
    capacity, size, next_index = int(state["capacity"]), len(pixels), int(state["next_index"])
    memory = SampleMemory(capacity, tuple(pixels.shape[1:]))
    if size == capacity and next_index:
        # Writing starts at slot 0: fill slots [0, k) once so that the ring's tail lands in [k, capacity),
        # then its head in [0, k) again, which leaves the next write at k.
        parts = [slice(0, next_index), slice(next_index, size), slice(0, next_index)]
    else:
        parts = [slice(0, size)]
    for part in parts:
        for start in range(part.start, part.stop, _CHUNK):
            stop = min(part.stop, start + _CHUNK)
            memory.add(pixels[start:stop].float().div_(255), labels[start:stop])
    memory.total_added = int(state["total_added"])
    return memory
