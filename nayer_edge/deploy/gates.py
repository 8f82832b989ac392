"""Release gates that judge the deployed student against its teacher, not only against the stage before it.

- ``student_trained``: the run took at least one epoch of KD steps (a run that never trained is never a PASS).
- ``teacher_retention``: with labelled eval data, deployed top-1 ≥ ``min_teacher_retention`` × teacher top-1.
- ``teacher_agreement_synthetic``: without eval data, the proxy: top-1 agreement of the deployed model with the
  teacher on the run's held-out synthetic samples ≥ ``min_teacher_agreement``.

The limits are target keys (``recipes/targets/*.yaml``) with command-line overrides. ``release_summary`` is what
the bundle's manifest carries, so that the device's ``check.py`` applies the same gate to its labelled subset.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..onnx_model.exporter import onnx_session, run_session
from .verify import Gate

PROXY_NOTE = ("no eval data: judged by top-1 agreement with the teacher on held-out synthetic samples, a proxy for "
              "the share of the teacher's accuracy the student keeps")


def teacher_predictions(teacher: Any, images01: Any, batch: int = 256) -> np.ndarray:
    """The teacher's top-1 classes for images in [0, 1] (a :class:`~nayer_edge.inputs.teacher.LoadedTeacher`)."""
    import torch

    teacher.model.eval()
    with torch.no_grad():
        return torch.cat([teacher(images01[i:i + batch].float()).argmax(1)
                          for i in range(0, len(images01), batch)]).numpy()


def onnx_predictions(model_path: str | Path, images01: Any, batch: int = 256) -> np.ndarray:
    """Top-1 classes of an exported model (it takes images in [0, 1]) through onnxruntime."""
    session = onnx_session(Path(model_path))
    x = np.asarray(images01, dtype=np.float32)
    return np.concatenate([run_session(session, x[i:i + batch]).argmax(1) for i in range(0, len(x), batch)])


def student_trained_gate(metrics: dict[str, Any]) -> Gate:
    """At least one whole epoch of KD steps (a run stopped inside its first KD epoch never trained). Run folders
    written before ``kd_steps`` was recorded count the KD losses; before ``kd_steps_per_epoch``, one step."""
    steps = metrics.get("kd_steps")
    if steps is None:
        steps = sum(1 for row in metrics.get("history", []) if row.get("loss_kd") is not None)
    need = max(1, int(metrics.get("kd_steps_per_epoch") or 1))
    return Gate("student_trained", float(need), float(steps), steps >= need, rule=">=")


def teacher_gates(metrics: dict[str, Any], *, deployed_accuracy: float | None, deployed_agreement: float | None,
                  min_retention: float | None, min_agreement: float | None) -> list[Gate]:
    """The gates against the teacher for a deployed model (see the module's docstring)."""
    gates = [student_trained_gate(metrics)]
    teacher_top1 = metrics.get("teacher_accuracy")
    if deployed_accuracy is not None and teacher_top1:
        if min_retention is not None:
            retention = deployed_accuracy / teacher_top1
            gates.append(Gate("teacher_retention", float(min_retention), retention, retention >= min_retention,
                              rule=">="))
    elif min_agreement is not None and deployed_agreement is not None:
        gates.append(Gate("teacher_agreement_synthetic", float(min_agreement), deployed_agreement,
                          deployed_agreement >= min_agreement, rule=">="))
    return gates


def release_summary(metrics: dict[str, Any], gates: list[Gate], *, min_retention: float | None,
                    min_agreement: float | None) -> dict[str, Any]:
    """What a bundle records of the judgement against the teacher (manifest ``release``)."""
    by_name = {g.name: g for g in gates}
    trained = by_name.get("student_trained")
    return {
        "teacher_top1": metrics.get("teacher_accuracy"),
        "teacher_top1_by": "the teacher on the run's eval data" if metrics.get("teacher_accuracy") else None,
        "min_teacher_retention": min_retention,
        "min_teacher_agreement": min_agreement,
        "teacher_agreement_synthetic": by_name["teacher_agreement_synthetic"].value
        if "teacher_agreement_synthetic" in by_name else None,
        "student_trained": None if trained is None else bool(trained.passed),
        "untrained": metrics.get("untrained"),
        "gates_when_made": [{"name": g.name, "limit": g.limit, "value": g.value, "passed": g.passed, "rule": g.rule}
                            for g in gates],
    }


def failure_lines(metrics: dict[str, Any], gates: list[Gate]) -> list[str]:
    """One line per failed gate, naming it and saying what it means for a release."""
    lines = []
    for g in gates:
        if g.passed:
            continue
        if g.name == "student_trained":
            why = metrics.get("untrained") or (f"the student never trained ({g.value:.0f} of the {g.limit:.0f} KD "
                                               "steps of its first epoch); give a larger --time-budget or leave "
                                               "the schedule to the planner")
        elif g.name == "teacher_retention":
            why = (f"the deployed student keeps {g.value:.1%} of the teacher's top-1 "
                   f"({metrics.get('teacher_accuracy') or 0:.2%}), below the {g.limit:.0%} required "
                   "(--min-teacher-retention); distil longer (--time-budget) or use a larger student")
        elif g.name == "teacher_agreement_synthetic":
            why = (f"the deployed student agrees with the teacher on {g.value:.1%} of held-out synthetic samples, "
                   f"below the {g.limit:.0%} required (--min-teacher-agreement); distil longer (--time-budget), "
                   "or give --eval-data to judge on real images")
        else:
            why = f"{g.value:.4g}, needs {'≥' if g.rule == '>=' else '≤'} {g.limit:.4g}"
        lines.append(f"{g.name}: {why}")
    return lines
