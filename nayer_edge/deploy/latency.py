"""Latency measured the way trtexec reports it: warm up for a while, then time at least N runs over at
least T seconds, and summarise with nearest-rank percentiles, throughput and coefficient of variation.

Example::

    stats = measure_latency(lambda: session.run(None, feed), batch=32)
    print(stats.summary())   # p50 1.84 ms (p90 1.97, p99 2.40), 17391 img/s, CV 4.1%, 1088 runs
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ..core.errors import UserError
from ..onnx_model.exporter import _ORT_FLOAT_TYPES, onnx_session

__all__ = ["LatencyStats", "compare_latency", "measure_latency", "onnx_latency", "nearest_rank"]


@dataclass
class LatencyStats:
    """Per-call latency in milliseconds over ``iterations`` timed calls of ``batch`` images each.

    ``throughput`` is images per second (batch × iterations / total timed seconds); ``cv`` is the
    population standard deviation divided by the mean.
    """

    batch: int
    iterations: int
    mean_ms: float
    p50_ms: float
    p90_ms: float
    p95_ms: float
    p99_ms: float
    min_ms: float
    max_ms: float
    throughput: float
    cv: float

    @classmethod
    def from_seconds(cls, times: Sequence[float], batch: int) -> LatencyStats:
        """Summarise per-call durations in seconds.

        Example: ``LatencyStats.from_seconds([0.001, 0.002, 0.003], batch=8).p50_ms`` -> ``2.0``
        """
        if len(times) == 0:
            raise ValueError("no timings to summarise")
        ms = np.sort(np.asarray(times, dtype=np.float64)) * 1e3
        mean = float(ms.mean())
        total_s = float(ms.sum()) / 1e3
        return cls(
            batch=int(batch),
            iterations=int(len(ms)),
            mean_ms=mean,
            p50_ms=nearest_rank(ms, 50),
            p90_ms=nearest_rank(ms, 90),
            p95_ms=nearest_rank(ms, 95),
            p99_ms=nearest_rank(ms, 99),
            min_ms=float(ms[0]),
            max_ms=float(ms[-1]),
            throughput=batch * len(ms) / total_s if total_s > 0 else math.inf,
            cv=float(ms.std()) / mean if mean > 0 else 0.0,
        )

    def summary(self) -> str:
        return (f"p50 {self.p50_ms:.3g} ms (p90 {self.p90_ms:.3g}, p99 {self.p99_ms:.3g}), "
                f"{self.throughput:.0f} img/s at batch {self.batch}, CV {self.cv:.1%}, {self.iterations} runs")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def nearest_rank(sorted_values: Sequence[float] | np.ndarray, percentile: float) -> float:
    """The nearest-rank percentile of ascending ``sorted_values``: the value at rank ⌈p/100 · n⌉."""
    n = len(sorted_values)
    if n == 0:
        raise ValueError("no values")
    rank = max(1, math.ceil(percentile / 100.0 * n - 1e-9))  # the epsilon absorbs 0.9 * 100 = 90.00000000000001
    return float(sorted_values[min(rank, n) - 1])


def measure_latency(
    run: Callable[[], Any],
    *,
    batch: int,
    warmup_seconds: float = 0.5,
    min_iterations: int = 20,
    min_seconds: float = 2.0,
) -> LatencyStats:
    """Time ``run()`` (one call = one batch of ``batch`` images) after a warm-up.

    As trtexec does: call ``run`` for ``warmup_seconds`` (at least once) untimed, then time calls until
    both ``min_iterations`` calls and ``min_seconds`` have passed. Durations come from
    ``time.perf_counter``; ``run`` must block until its result is ready (synchronise a GPU inside it).

    Example::

        stats = measure_latency(lambda: model(x), batch=len(x), min_seconds=1.0)
    """
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise UserError(f"batch must be a positive integer, got {batch!r}")
    if min_iterations < 1:
        raise UserError(f"min_iterations must be at least 1, got {min_iterations}")
    if warmup_seconds < 0 or min_seconds < 0:
        raise UserError("warmup_seconds and min_seconds must not be negative")
    _warm_up(run, warmup_seconds)
    return LatencyStats.from_seconds(_timed_calls(run, min_iterations, min_seconds), batch)


def _warm_up(run: Callable[[], Any], seconds: float) -> None:
    start = time.perf_counter()
    run()
    while time.perf_counter() - start < seconds:
        run()


def _timed_calls(run: Callable[[], Any], min_iterations: int, min_seconds: float) -> list[float]:
    """The duration of each call, until both ``min_iterations`` calls and ``min_seconds`` have passed."""
    clock = time.perf_counter
    times: list[float] = []
    began = clock()
    while len(times) < min_iterations or clock() - began < min_seconds:
        t0 = clock()
        run()
        times.append(clock() - t0)
    return times


def compare_latency(sessions: Mapping[str, Any], batch: int, input_shape: Sequence[int], *, seconds: float = 2.0,
                    rounds: int = 8, warmup_seconds: float = 0.5, min_iterations: int = 20, seed: int = 0
                    ) -> dict[str, LatencyStats]:
    """Latency of several onnxruntime sessions side by side, for choosing between them: the same random input,
    each warmed up alike, then timed in ``rounds`` alternating turns (``seconds`` per session in all, in the
    order A B, B A, ...), so that a machine that grows busier or quieter half-way weighs on every session alike
    instead of on whichever was timed second. Per session, the stats pool its turns' calls.

    Example: ``compare_latency({"fp32": onnx_session(a), "int8": onnx_session(b)}, 32, (1, 16, 16))["int8"].p50_ms``
    """
    if rounds < 1 or seconds < 0:
        raise UserError(f"rounds must be at least 1 and seconds not negative, got {rounds} and {seconds:g}")
    calls = {name: _session_call(session, batch, input_shape, seed, name) for name, session in sessions.items()}
    for call in calls.values():
        _warm_up(call, warmup_seconds)
    times: dict[str, list[float]] = {name: [] for name in calls}
    order = list(calls)
    for turn in range(rounds):
        for name in (order if turn % 2 == 0 else order[::-1]):
            times[name] += _timed_calls(calls[name], math.ceil(min_iterations / rounds), seconds / rounds)
    return {name: LatencyStats.from_seconds(times[name], batch) for name in order}


def onnx_latency(
    path: str | os.PathLike[str],
    batch: int,
    input_shape: Sequence[int] | None = None,
    *,
    providers: Sequence[str] | None = None,
    threads: int | None = None,
    seed: int = 0,
    **kw: Any,
) -> LatencyStats:
    """Latency of an ONNX model in onnxruntime on random input of ``batch`` × ``input_shape``.

    ``input_shape`` (C, H, W) defaults to the graph's own; a model with a fixed batch must be timed at
    that batch. Other keywords go to ``measure_latency``.

    Example: ``onnx_latency("student.onnx", 32, min_seconds=1.0).p50_ms``
    """
    session = onnx_session(path, providers=providers, threads=threads)
    return session_latency(session, batch, input_shape, seed=seed, where=str(path), **kw)


def session_latency(session: Any, batch: int, input_shape: Sequence[int] | None = None, *, seed: int = 0,
                    where: str = "model", **kw: Any) -> LatencyStats:
    """``onnx_latency`` for an already open onnxruntime session."""
    inp = session.get_inputs()[0]
    dims = list(inp.shape)
    if input_shape is None:
        if len(dims) != 4 or not all(isinstance(d, int) and d > 0 for d in dims[1:]):
            raise UserError(f"{where}: input shape {dims} is not fixed; pass input_shape (C, H, W)")
        input_shape = dims[1:]
    return measure_latency(_session_call(session, batch, input_shape, seed, where), batch=batch, **kw)


def _session_call(session: Any, batch: int, input_shape: Sequence[int], seed: int, where: str) -> Callable[[], Any]:
    """One timed call: ``session`` on a fixed random batch of ``batch`` × ``input_shape`` in [0, 1)."""
    inp = session.get_inputs()[0]
    fixed = inp.shape[0]
    if isinstance(fixed, int) and fixed > 0 and fixed != batch:
        raise UserError(f"{where} has a fixed batch size {fixed}; measure it at batch {fixed}")
    rng = np.random.default_rng(seed)
    x = rng.random((batch, *[int(d) for d in input_shape])).astype(_ORT_FLOAT_TYPES.get(inp.type, np.float32))
    feed = {inp.name: x}
    return lambda: session.run(None, feed)
