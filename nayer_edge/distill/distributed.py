"""Multi-process distillation on torch.distributed, started by ``torchrun``.

``distill()`` detects torchrun from the environment (``WORLD_SIZE`` > 1, ``RANK``, ``LOCAL_RANK``,
``MASTER_ADDR``/``MASTER_PORT``) and joins the process group itself, so the command line is the same::

    torchrun --standalone --nproc-per-node 2 -m nayer_edge distill teacher.pt --out runs/x ...

Division of work (see :class:`~nayer_edge.distill.engine.Distiller`): every rank synthesises its own contiguous
share of each round's batch with its own generator and noisy layers (rank-dependent seeds); the shares
are all-gathered, so every rank's sample memory holds every sample, in the same order; the student
trains under DistributedDataParallel, each rank on a disjoint share of every KD batch. Rank 0 alone
evaluates, writes artefacts and checkpoints and shows progress. Backend: gloo on CPU, NCCL on CUDA
(one GPU per process, ``cuda:LOCAL_RANK``).

Nothing in this module imports ``torch.distributed`` at import time of ``nayer_edge``.
"""

from __future__ import annotations

import io
import os
import sys
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Callable, TypeVar

import torch

from ..core.errors import UserError
from .performance import resolve_device

T = TypeVar("T")

# Collectives (and the rendezvous) give up after this many seconds instead of hanging when a peer died;
# rank 0 evaluating or checkpointing while the others wait must fit inside it.
TIMEOUT_ENV = "NAYER_EDGE_DIST_TIMEOUT"
DEFAULT_TIMEOUT_S = 1800.0


@dataclass(frozen=True)
class LaunchEnv:
    """What torchrun put in the environment (all zeros / ones for a plain process)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def launch_env(environ: dict[str, str] | None = None) -> LaunchEnv:
    """Read torchrun's variables; malformed values are a :class:`UserError` (raised on every rank alike)."""
    env = os.environ if environ is None else environ
    try:
        world_size = int(env.get("WORLD_SIZE", "1"))
        rank = int(env.get("RANK", "0"))
        local_rank = int(env.get("LOCAL_RANK", "0"))
        local_world_size = int(env.get("LOCAL_WORLD_SIZE", str(world_size)))
    except ValueError:
        raise UserError("WORLD_SIZE, RANK, LOCAL_RANK and LOCAL_WORLD_SIZE must be integers "
                        "(start distributed runs with torchrun)") from None
    if world_size < 1 or not 0 <= rank < world_size or not 0 <= local_rank < max(1, local_world_size):
        raise UserError(f"inconsistent torchrun environment: RANK={rank}, WORLD_SIZE={world_size}, "
                        f"LOCAL_RANK={local_rank}")
    if world_size > 1 and not env.get("MASTER_ADDR"):
        raise UserError("WORLD_SIZE > 1 but MASTER_ADDR is not set: start distributed runs with torchrun")
    return LaunchEnv(rank, world_size, local_rank, local_world_size)


@dataclass
class DistContext:
    """The process group as the distillation loop sees it. ``DistContext()`` is a single process, whose
    collectives are no-ops, so the loop is written once."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    backend: str | None = None
    comm_device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def share(self, total: int) -> tuple[int, int]:
        """This rank's contiguous slice ``[start, stop)`` of ``total`` items (sizes differ by at most one)."""
        return share_bounds(total, self.rank, self.world_size)

    # -- collectives (no-ops for one process) ---------------------------------------------------------
    def barrier(self) -> None:
        if self.enabled:
            import torch.distributed as dist

            dist.barrier()

    def broadcast_float(self, value: float) -> float:
        """Rank 0's ``value`` on every rank (used for the clock, so time-budget decisions agree)."""
        if not self.enabled:
            return value
        import torch.distributed as dist

        tensor = torch.tensor([value], dtype=torch.float64, device=self.comm_device)
        dist.broadcast(tensor, src=0)
        return float(tensor.item())

    def all_max(self, value: int) -> int:
        """The largest ``value`` of all ranks, on every rank."""
        if not self.enabled:
            return value
        import torch.distributed as dist

        tensor = torch.tensor([value], dtype=torch.int64, device=self.comm_device)
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
        return int(tensor.item())

    def broadcast_object(self, obj: T) -> T:
        if not self.enabled:
            return obj
        import torch.distributed as dist

        box = [obj if self.is_main else None]
        dist.broadcast_object_list(box, src=0, device=self.comm_device)
        return box[0]

    def gather_objects(self, obj: Any) -> list[Any] | None:
        """Every rank's ``obj`` on rank 0 (in rank order), ``None`` elsewhere."""
        if not self.enabled:
            return [obj]
        import torch.distributed as dist

        out: list[Any] | None = [None] * self.world_size if self.is_main else None
        dist.gather_object(obj, out, dst=0)
        return out

    def all_gather_samples(self, images01: torch.Tensor | None, labels: torch.Tensor | None, max_count: int,
                           image_shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        """Concatenate every rank's batch of images in [0, 1] (``None``: this rank has none this round), in
        rank order, on every rank. Sent as uint8 (what the memory stores anyway), padded to ``max_count``."""
        device = self.comm_device
        pixels = torch.zeros(max_count, *image_shape, dtype=torch.uint8, device=device)
        targets = torch.full((max_count,), -1, dtype=torch.int64, device=device)
        if images01 is not None and labels is not None and len(images01):
            n = len(images01)
            pixels[:n] = (images01.detach().clamp(0, 1) * 255).round().to(torch.uint8).to(device)
            targets[:n] = labels.to(device)
        if self.enabled:
            import torch.distributed as dist

            all_pixels = [torch.empty_like(pixels) for _ in range(self.world_size)]
            all_targets = [torch.empty_like(targets) for _ in range(self.world_size)]
            dist.all_gather(all_pixels, pixels)
            dist.all_gather(all_targets, targets)
            pixels, targets = torch.cat(all_pixels), torch.cat(all_targets)
        valid = targets >= 0
        return pixels[valid].float().div_(255), targets[valid]

    def on_main(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on rank 0 and hand its result, or its :class:`UserError`, to every rank: a bad file that
        only rank 0 reads fails every rank with the same message instead of leaving the others waiting."""
        if not self.enabled:
            return fn()
        result: tuple[str, Any] = ("ok", None)
        if self.is_main:
            try:
                result = ("ok", fn())
            except UserError as err:
                result = ("error", str(err))
        status, value = self.broadcast_object(result)
        if status == "error":
            raise UserError(value)
        return value


SINGLE = DistContext()


def share_bounds(total: int, rank: int, world_size: int) -> tuple[int, int]:
    base, extra = divmod(total, world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


def timeout_seconds() -> float:
    raw = os.environ.get(TIMEOUT_ENV)
    if raw is None:
        return DEFAULT_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        raise UserError(f"{TIMEOUT_ENV} must be seconds, got {raw!r}") from None
    if value <= 0:
        raise UserError(f"{TIMEOUT_ENV} must be positive, got {raw!r}")
    return value


def resolve_rank_device(device_name: str, env: LaunchEnv) -> torch.device:
    """One device per process: ``cuda:LOCAL_RANK`` for CUDA (``auto`` with a GPU, ``cuda``), else the CPU."""
    device = resolve_device(device_name)
    if device.type != "cuda" or not env.distributed:
        return device
    if env.local_rank >= torch.cuda.device_count():
        raise UserError(f"LOCAL_RANK {env.local_rank} but only {torch.cuda.device_count()} CUDA GPUs on this node; "
                        "use --nproc-per-node ≤ the GPU count (or --device cpu)")
    return torch.device("cuda", env.local_rank)


def init(env: LaunchEnv, device: torch.device) -> DistContext:
    """Join torchrun's process group (gloo for CPU, NCCL for CUDA); a no-op context for one process."""
    if not env.distributed:
        return SINGLE
    import torch.distributed as dist

    if device.type == "cuda":
        torch.cuda.set_device(device)
        backend, comm_device = "nccl", device
    else:
        backend, comm_device = "gloo", torch.device("cpu")
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, timeout=timedelta(seconds=timeout_seconds()))
    if dist.get_world_size() != env.world_size or dist.get_rank() != env.rank:
        raise RuntimeError("the process group does not match WORLD_SIZE / RANK")
    return DistContext(env.rank, env.world_size, env.local_rank, env.local_world_size, backend, comm_device)


def shutdown(ctx: DistContext, *, clean: bool = True) -> None:
    """Leave the process group: after a barrier when every rank got here normally (``clean``), so no rank
    tears down its connections while another still talks on them. Objects that hold the group (a DDP
    reducer kept alive by a reference cycle) are collected first: a gloo group destroyed during interpreter
    shutdown aborts the process ("terminate called without an active exception")."""
    if not ctx.enabled:
        return
    import gc

    import torch.distributed as dist

    if not dist.is_initialized():
        return
    if clean:
        dist.barrier()
    gc.collect()
    dist.destroy_process_group()


def quiet_other_ranks(ctx: DistContext) -> None:
    """Ranks other than 0 print nothing on stdout (the CLI prints the result once, from rank 0) and no
    warnings (rank 0 shows the same ones); errors still reach stderr. Process-wide: only under torchrun."""
    if ctx.enabled and not ctx.is_main and not os.environ.get("NAYER_EDGE_DIST_VERBOSE"):
        import warnings

        warnings.simplefilter("ignore")
        sys.stdout = open(os.devnull, "w")  # lives as long as the process


def read_bytes_on_main(ctx: DistContext, paths: list[os.PathLike]) -> list[io.BytesIO]:
    """Rank 0 reads the files, every rank gets their bytes (a resumed run needs no shared file system)."""
    from pathlib import Path

    payload = [Path(p).read_bytes() for p in paths] if ctx.is_main else None
    return [io.BytesIO(b) for b in ctx.broadcast_object(payload)]


def rank_seed(seed: int, rank: int) -> int:
    """Seed of a rank's own random streams (synthesis, noisy layers, augmentation); rank 0 differs from
    ``seed`` too, so the shared stream (seeded with ``seed``) is never replayed by a rank's own."""
    return (seed * 1_000_003 + 7919 * (rank + 1)) % 2**32  # numpy seeds are 32-bit
