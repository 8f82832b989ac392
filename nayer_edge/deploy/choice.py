"""Which model a CPU target deploys: the fastest candidate (FP32 or INT8) that passes the accuracy gates.

INT8 is not always the faster one on a CPU: for a tiny student at batch 32 onnxruntime's Q/DQ kernels cost more
than they save (the demo's ``cnn_tiny``: INT8 p50 0.51 ms against FP32's 0.32 ms), while a wide convolutional
student runs several times faster in INT8 on a CPU with VNNI. So both are built, timed side by side
(:func:`~nayer_edge.deploy.latency.compare_latency`) and judged by the gates that depend on the model; the latency
gate and ``student_trained`` do not choose (they are the same verdict whichever is deployed, or not about accuracy).

Example::

    choice = choose_fastest([Candidate("fp32", "student.onnx", 0.32, 32, gates_fp32),
                             Candidate("int8", "student.int8.onnx", 0.51, 32, gates_int8)])
    choice.precision, choice.reason   # ('fp32', 'INT8 p50 0.51 ms is slower than FP32 0.32 ms at batch 32')
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .verify import Gate

__all__ = ["Candidate", "Choice", "choose_fastest", "fixed", "FORCED", "NOT_CHOOSING"]

# Gates whose verdict does not depend on which candidate is deployed, or that are not about accuracy.
NOT_CHOOSING = ("student_trained", "latency_p50_ms")
FORCED = "forced by --precision"


@dataclass(frozen=True)
class Candidate:
    """A model that could be deployed: its precision, file, p50 latency at ``batch`` and its gates."""

    precision: str
    file: str
    latency_p50_ms: float | None
    batch: int
    gates: Sequence[Gate] = field(default_factory=tuple)

    @property
    def failed_accuracy_gates(self) -> list[str]:
        """The gates that choose (accuracy against the teacher and the FP32 student) that this one fails."""
        return [g.name for g in self.gates if g.name not in NOT_CHOOSING and not g.passed]


@dataclass(frozen=True)
class Choice:
    """The candidate to deploy, and one line saying why."""

    candidate: Candidate
    reason: str
    latency_p50_ms: dict[str, float | None]

    @property
    def precision(self) -> str:
        return self.candidate.precision

    def record(self) -> dict[str, Any]:
        """``deployed`` in metrics.json: file, precision, reason and every candidate's p50."""
        return {"file": self.candidate.file, "precision": self.precision, "reason": self.reason,
                "latency_p50_ms": dict(self.latency_p50_ms)}

    def line(self) -> str:
        """``deployed FP32: INT8 p50 0.51 ms is slower than FP32 0.32 ms at batch 32``."""
        return f"deployed {self.precision.upper()}: {self.reason}"


def choose_fastest(candidates: Sequence[Candidate]) -> Choice:
    """The fastest candidate that passes the accuracy gates (the first listed on a tie, so list FP32 first);
    when none passes, the fastest of all, and the reason says that none passed."""
    if not candidates or any(c.latency_p50_ms is None for c in candidates):
        raise ValueError("every candidate needs a measured latency to choose by")
    passing = [c for c in candidates if not c.failed_accuracy_gates]
    pool = passing or list(candidates)
    chosen = min(pool, key=lambda c: c.latency_p50_ms)  # min keeps the first of equals
    latencies = {c.precision: c.latency_p50_ms for c in candidates}
    others = [c for c in candidates if c is not chosen]
    reason = "; ".join(_why(chosen, other) for other in others) or f"the only candidate ({_p50(chosen)})"
    if not passing:
        reason += "; none passes the accuracy gates"
    return Choice(chosen, reason, latencies)


def fixed(candidate: Candidate, others: Sequence[Candidate] = (), reason: str = FORCED) -> Choice:
    """The candidate the user (or a TensorRT target, whose latency only the device can measure) fixed."""
    latencies = {c.precision: c.latency_p50_ms for c in (*others, candidate)}
    return Choice(candidate, reason, latencies)


def _p50(c: Candidate) -> str:
    return f"{c.precision.upper()} p50 {c.latency_p50_ms:.2f} ms"


def _why(chosen: Candidate, other: Candidate) -> str:
    """Why ``chosen`` rather than ``other``, with the quantized one named first (it is the one in question)."""
    at = f"at batch {chosen.batch}"
    if other.failed_accuracy_gates and other.latency_p50_ms <= chosen.latency_p50_ms:  # chosen for the gates
        relation = "faster than" if other.latency_p50_ms < chosen.latency_p50_ms else "as fast as"
        return (f"{_p50(other)} is {relation} {chosen.precision.upper()} {chosen.latency_p50_ms:.2f} ms {at} but "
                f"fails {', '.join(other.failed_accuracy_gates)}")
    if chosen.precision == "fp32":
        relation = "slower than" if other.latency_p50_ms > chosen.latency_p50_ms else "no faster than"
        return f"{_p50(other)} is {relation} FP32 {chosen.latency_p50_ms:.2f} ms {at}"
    passes = "" if chosen.failed_accuracy_gates else " and passes the accuracy gates"
    relation = "faster than" if other.latency_p50_ms > chosen.latency_p50_ms else "as fast as"
    return f"{_p50(chosen)} is {relation} {other.precision.upper()} {other.latency_p50_ms:.2f} ms {at}{passes}"
