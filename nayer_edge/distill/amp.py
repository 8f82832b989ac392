"""Mixed precision for the distillation loop: which autocast dtype a run computes in, and optimizer steps that
are skipped on the device, without waiting for it, when a loss or a gradient is not finite.

Forwards run under ``torch.autocast``; losses are taken in float32 from float32 logits (BatchNorm statistics
are recorded in float32 by :mod:`nayer_edge.synthesis.bn_probe`). bf16 needs no loss scaling; fp16 gets a
``GradScaler``. Example::

    amp = Amp.for_device("auto", device)          # bf16 where the hardware has it natively, else fp32
    with amp.autocast():
        logits = model(images)
    loss = F.cross_entropy(logits.float(), labels)
    backward_and_step(optimizer, loss, torch.isfinite(loss), amp.new_scaler())
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import torch

from ..core.errors import UserError

AMP_CHOICES = ("auto", "fp32", "bf16", "fp16")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 in hardware (AVX512-BF16 or AMX). Without it bf16 autocast is emulated and
    slower than fp32. The probes are private torch functions: their absence reads as "no"."""
    probes = (getattr(torch.cpu, "_is_avx512_bf16_supported", None), getattr(torch.cpu, "_is_amx_tile_supported", None))
    return any(probe is not None and bool(probe()) for probe in probes)


def resolve_amp(name: str, device: torch.device) -> str:
    """``fp32``, ``bf16`` or ``fp16`` for a run on ``device``. ``auto`` is bf16 on a CUDA GPU with bf16 support
    (Ampere and later) and on a CPU with native bf16 (:func:`cpu_has_native_bf16`), fp32 elsewhere. On the CPU
    that choice is measured: at equal wall time bf16 distilled students as accurate or better on real-photo
    teachers (BENCHMARKS.md §9), because its steps are about 1.8x shorter."""
    if name not in AMP_CHOICES:
        raise UserError(f"amp must be one of {', '.join(AMP_CHOICES)}, got {name!r}")
    if name == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
        return "bf16" if device.type == "cpu" and cpu_has_native_bf16() else "fp32"
    if name == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise UserError("--amp bf16: this GPU has no bfloat16 support; use --amp fp16 or fp32")
    return name


@dataclass(frozen=True)
class Amp:
    """The autocast settings of one run (``precision`` is ``fp32``, ``bf16`` or ``fp16``)."""

    precision: str
    device_type: str

    @classmethod
    def for_device(cls, name: str, device: torch.device) -> "Amp":
        return cls(resolve_amp(name, device), device.type)

    @property
    def dtype(self) -> torch.dtype | None:
        return _DTYPES.get(self.precision)

    def autocast(self) -> Any:
        """Autocast to the run's dtype; nothing at all for fp32 (so that path stays bitwise what it was)."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def new_scaler(self) -> "torch.amp.GradScaler | None":
        """A loss scaler for fp16 (its gradients underflow without one); None otherwise."""
        return torch.amp.GradScaler(self.device_type) if self.precision == "fp16" else None


def backward_and_step(optimizer: torch.optim.Optimizer, loss: torch.Tensor, ok: torch.Tensor | None = None,
                      scaler: "torch.amp.GradScaler | None" = None) -> torch.Tensor:
    """``loss.backward()`` then ``optimizer.step()``, the step skipped when ``ok`` (a bool tensor on the loss's
    device; ``None``: every gradient is finite, checked after the backward) is False. Decided on the device:
    the host never waits for the GPU here. Returns ``ok`` (with a scaler and ``ok=None``, True: the scaler's
    skips of overflowing fp16 steps are its calibration, not faults).

    Fused optimizers (``fused=True``) take a ``found_inf`` tensor (GradScaler's protocol) and leave parameters
    and state untouched when it is 1; others fall back to reading ``ok`` on the host."""
    optimizer.zero_grad(set_to_none=True)
    _prepare_momentum_buffers(optimizer)
    if scaler is not None:
        if ok is not None:
            # A NaN factor makes every gradient NaN when ``ok`` is False, so the scaler's own check skips the step.
            loss = loss * torch.where(ok, 1.0, float("nan"))
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        return ok if ok is not None else torch.ones((), dtype=torch.bool, device=loss.device)
    loss.backward()
    if ok is None:
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        ok = (torch.stack([g.isfinite().all() for g in grads]).all() if grads
              else torch.ones((), dtype=torch.bool, device=loss.device))
    if not getattr(optimizer, "_step_supports_amp_scaling", False) or not all(
            g.get("fused") for g in optimizer.param_groups):
        if bool(ok):
            optimizer.step()
        return ok
    optimizer.grad_scale = None  # type: ignore[attr-defined]
    optimizer.found_inf = (~ok).to(torch.float32)  # type: ignore[attr-defined]
    try:
        optimizer.step()
    finally:
        del optimizer.grad_scale, optimizer.found_inf  # type: ignore[attr-defined]
    return ok


def _prepare_momentum_buffers(optimizer: torch.optim.Optimizer) -> None:
    # Fused SGD allocates its momentum buffers uninitialised on the first step and fills them from the gradient;
    # were that step skipped, garbage would stay. Zeros give the same first step (0·momentum + grad = grad).
    # Fused kernels also walk parameter and buffer as flat memory: a buffer loaded in another memory format (a
    # checkpoint of a run without channels_last) is laid out like its parameter first.
    if not isinstance(optimizer, torch.optim.SGD):
        return
    for group in optimizer.param_groups:
        if group["momentum"] == 0:
            continue
        for p in group["params"]:
            state = optimizer.state[p]
            buffer = state.get("momentum_buffer")
            if buffer is None:
                state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            elif buffer.stride() != p.stride():
                state["momentum_buffer"] = torch.empty_like(p, memory_format=torch.preserve_format).copy_(buffer)
