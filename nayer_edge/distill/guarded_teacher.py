"""The teacher as a distillation run calls it: one clear line instead of the teacher's own traceback when it
fails on a run's batches."""

from __future__ import annotations

import logging
from typing import Any

import torch

from ..core.errors import UserError
from ..core.normalize import NormalizedModel
from ..inputs.teacher_formats import error_line


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

        raise UserError(f"the teacher failed on a batch of {_batch(x)}: {error_line(_root_cause(err)).rstrip('.')}; check that it "
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
