"""The deploy choice on a CPU target: the fastest of FP32 and INT8 that passes the accuracy gates, on latencies
measured here, side by side, of real ONNX exports of zoo students and their onnxruntime INT8 (U8S8 QDQ)."""

from __future__ import annotations

import pytest

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

BATCH = 32


def _measured(tmp_path, arch: str, shape: tuple[int, int, int], seconds: float):
    """The FP32 and INT8 candidates of a randomly initialised ``arch``, with p50 latencies at batch 32 measured
    side by side (FP32 first, as compress lists them) and passing accuracy gates."""
    import torch

    from nayer_edge.deploy.choice import Candidate
    from nayer_edge.deploy.latency import compare_latency
    from nayer_edge.deploy.verify import Gate
    from nayer_edge.onnx_model.exporter import export_onnx, onnx_session
    from nayer_edge.quantize.ort import quantize_static_ort
    from nayer_edge.zoo import create_model

    torch.manual_seed(0)
    model = create_model(arch, num_classes=10, in_channels=shape[0], input_size=shape[1]).eval()
    fp32 = export_onnx(model, tmp_path / f"{arch}.onnx", input_shape=shape)
    int8 = quantize_static_ort(fp32, tmp_path / f"{arch}.int8.onnx", torch.rand(64, *shape), max_calibration=64)
    paths = {"fp32": str(fp32), "int8": str(int8)}
    # One intra-op thread each: the ratio then holds on a busy machine too (with a 2-thread pool a contended
    # core stalls the multi-threaded FP32 convolutions more than INT8's, and narrows the tiny student's margin).
    stats = compare_latency({name: onnx_session(path, threads=1) for name, path in paths.items()}, BATCH, shape,
                            seconds=seconds)
    passing = [Gate("accuracy_drop", 1.0, 0.2, True), Gate("teacher_retention", 0.9, 0.97, True, rule=">=")]
    return {name: Candidate(name, paths[name], stats[name].p50_ms, BATCH, passing) for name in paths}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The demo's student at the demo's input: INT8 is slower (Q/DQ around convolutions this narrow costs more
    than the integer kernels save)."""
    return _measured(tmp_path_factory.mktemp("tiny"), "cnn_tiny", (1, 16, 16), seconds=1.0)


@pytest.fixture(scope="module")
def wide(tmp_path_factory):
    """A wider conv student (32-64-128 channels) at the same input: INT8 is clearly faster on a CPU with integer
    dot products (measured 1.7× on this 2-core Xeon with AVX512-VNNI)."""
    return _measured(tmp_path_factory.mktemp("wide"), "cnn_small", (1, 16, 16), seconds=1.0)


def test_int8_slower_deploys_fp32_saying_why(tiny):
    from nayer_edge.deploy.choice import choose_fastest

    fp32, int8 = tiny["fp32"], tiny["int8"]
    assert int8.latency_p50_ms > 1.05 * fp32.latency_p50_ms, (int8.latency_p50_ms, fp32.latency_p50_ms)
    choice = choose_fastest([fp32, int8])
    assert choice.precision == "fp32" and choice.candidate.file == fp32.file
    assert choice.line() == (f"deployed FP32: INT8 p50 {int8.latency_p50_ms:.2f} ms is slower than FP32 "
                             f"{fp32.latency_p50_ms:.2f} ms at batch 32")
    assert choice.record() == {"file": fp32.file, "precision": "fp32", "reason": choice.reason,
                               "latency_p50_ms": {"fp32": fp32.latency_p50_ms, "int8": int8.latency_p50_ms}}


def test_int8_faster_and_passing_deploys_int8(wide):
    from nayer_edge.deploy.choice import choose_fastest

    fp32, int8 = wide["fp32"], wide["int8"]
    assert fp32.latency_p50_ms > 1.3 * int8.latency_p50_ms, (int8.latency_p50_ms, fp32.latency_p50_ms)
    choice = choose_fastest([fp32, int8])
    assert choice.precision == "int8" and choice.candidate.file == int8.file
    assert choice.reason == (f"INT8 p50 {int8.latency_p50_ms:.2f} ms is faster than FP32 {fp32.latency_p50_ms:.2f} "
                             "ms at batch 32 and passes the accuracy gates")


def test_a_faster_int8_that_fails_an_accuracy_gate_leaves_fp32(wide):
    from dataclasses import replace

    from nayer_edge.deploy.choice import choose_fastest
    from nayer_edge.deploy.verify import Gate

    fp32, int8 = wide["fp32"], wide["int8"]
    dropped = replace(int8, gates=[Gate("accuracy_drop", 1.0, 2.5, False), Gate("latency_p50_ms", 100.0, 1.0, True)])
    choice = choose_fastest([fp32, dropped])
    assert choice.precision == "fp32"
    assert choice.reason.endswith("ms at batch 32 but fails accuracy_drop") and "is faster than FP32" in choice.reason
    # The latency gate and student_trained do not choose: failing them, the faster model is still the one.
    slow_gate = [Gate("latency_p50_ms", 1e-6, int8.latency_p50_ms, False), Gate("student_trained", 40, 0, False,
                                                                               rule=">=")]
    assert choose_fastest([replace(fp32, gates=slow_gate), replace(int8, gates=slow_gate)]).precision == "int8"
    # Neither passes: the faster, and the line says so.
    both = choose_fastest([replace(fp32, gates=dropped.gates), dropped])
    assert both.precision == "int8" and both.reason.endswith("; none passes the accuracy gates")


def test_only_a_cpu_target_without_precision_chooses():
    from nayer_edge.deploy.compress import CHOICE_SECONDS, deployment_seconds, plan_deployment
    from nayer_edge.distill.config import DistillConfig

    options = {"qat": None, "max_accuracy_drop": None, "max_latency_ms": None, "has_eval_data": True}
    auto = plan_deployment("cpu-x86", precision=None, **options)
    assert auto.choose_fastest and auto.precision == "int8" and auto.qat and not auto.forced
    given = plan_deployment("cpu-x86", precision="int8", **options)
    assert not given.choose_fastest and given.forced
    assert not plan_deployment("cpu-x86", precision="fp32", **options).choose_fastest
    jetson = plan_deployment("jetson", precision=None, **options)
    assert not jetson.choose_fastest and not jetson.forced and jetson.precision == "int8"
    config = DistillConfig(time_budget=170)
    assert deployment_seconds(auto, config) == pytest.approx(deployment_seconds(given, config) + CHOICE_SECONDS)
