"""The teacher as a run calls it: whatever the teacher's own forward raises on a run's batch becomes one
UserError line naming the batch and the teacher's error, compiled or not; the student's and our own errors
pass through untouched."""

from __future__ import annotations

import logging
import re

import pytest
import torch
from torch import nn

from nayer_edge.core.errors import UserError
from nayer_edge.distill.guarded_teacher import GuardedTeacher


class FixedBatchMatmul(nn.Module):
    """Works for a batch of 2 only: the reshape folds other batches into a width the weight does not fit."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.rand(32, 3))

    def forward(self, x):
        return x.reshape(2, -1) @ self.weight


class RefusesLargeBatches(nn.Module):
    def forward(self, x):
        if x.shape[0] > 2:
            raise ValueError("batches larger than 2 are not supported")
        return x.flatten(1)[:, :3]


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
@pytest.mark.parametrize("teacher, expected", [
    (FixedBatchMatmul, "cannot be multiplied|must have same reduction dim"),  # eager's words | fake tensors'
    (RefusesLargeBatches, "batches larger than 2 are not supported"),
])
def test_a_teacher_failing_on_the_runs_batch_is_one_line(teacher, expected, compiled, caplog):
    guarded = GuardedTeacher(teacher(), [0.5], [0.5], compiled=compiled)
    # The run compiles the guarded teacher with inductor; the eager backend traces the same way without a C
    # compiler, and the failure happens while tracing.
    call = torch.compile(guarded, backend="eager") if compiled else guarded
    assert call(torch.rand(2, 2, 4, 4)).shape == (2, 3)
    with caplog.at_level(logging.ERROR), pytest.raises(UserError) as err:
        call(torch.rand(4, 2, 4, 4))
    message = str(err.value)
    assert message.startswith("the teacher failed on a batch of 4 images of 2×4×4: ")
    assert re.search(expected, message), message
    assert "fake tensor" not in message and "\n" not in message and ".;" not in message
    assert "accepts any batch size" in message
    logged = [r for r in caplog.records if r.name.startswith("torch") and r.levelno >= logging.WARNING]
    assert not logged, f"torch logged the failure: {logged[0].getMessage()[:300]}"


def test_a_wrong_output_shape_is_one_line():
    class DropsARow(nn.Module):
        def forward(self, x):
            return x.flatten(1)[1:, :3]

    with pytest.raises(UserError, match=r"returned shape \(3, 3\) for a batch of 4 images"):
        GuardedTeacher(DropsARow(), [0.5], [0.5])(torch.rand(4, 1, 4, 4))


def test_interrupts_pass_through():
    class Interrupted(nn.Module):
        def forward(self, x):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        GuardedTeacher(Interrupted(), [0.5], [0.5])(torch.rand(2, 1, 4, 4))
