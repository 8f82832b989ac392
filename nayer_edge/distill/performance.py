"""Using one device well: the channels_last memory format, optional ``torch.compile``, and where the sample
memory lives (on the GPU when it fits a budget of its free memory, else in host RAM, pinned for transfers)."""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from ..core.errors import UserError


def use_channels_last(option: bool | None, device: torch.device) -> bool:
    """``None`` (the default): on for CUDA, where convolutions run faster NHWC, off on the CPU."""
    return device.type == "cuda" if option is None else option


def to_channels_last(module: nn.Module) -> nn.Module:
    """Convert the module's 4-D parameters and buffers in place (TorchScript modules too)."""
    return module.to(memory_format=torch.channels_last)


def channels_last_input(images: torch.Tensor, enabled: bool) -> torch.Tensor:
    return images.contiguous(memory_format=torch.channels_last) if enabled and images.dim() == 4 else images


def maybe_compile(module: nn.Module, enabled: bool) -> Callable[..., torch.Tensor]:
    """``torch.compile(module)`` (sharing its parameters; the module itself is unchanged) or the module.

    TorchScript modules are left as they are: dynamo does not trace them."""
    if not enabled or isinstance(module, torch.jit.ScriptModule) or _holds_script(module):
        return module
    return torch.compile(module)


def _holds_script(module: nn.Module) -> bool:
    return any(isinstance(m, torch.jit.ScriptModule) for m in module.modules())


def memory_device(device: torch.device, needed_bytes: int, budget: float) -> torch.device:
    """Where a sample memory of ``needed_bytes`` lives: on ``device`` when it is a GPU and the memory takes at
    most ``budget`` (a fraction) of the GPU's free memory now, else on the host."""
    if device.type != "cuda" or budget <= 0:
        return torch.device("cpu")
    free, _ = torch.cuda.mem_get_info(device)
    return device if needed_bytes <= budget * free else torch.device("cpu")


def resolve_device(name: str) -> torch.device:
    """The device a config names (``auto``: CUDA when there is a GPU, else the CPU)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError("--device cuda asked for, but no CUDA GPU is available; use --device cpu or auto")
    return torch.device(name)
