"""`nayer-edge export` and `nayer-edge verify` as a user runs them, on a real distilled student."""

from __future__ import annotations

import json

import pytest
from conftest import run_cli

from nayer_edge.distill.config import load_config
from nayer_edge.distill.run import distill


@pytest.fixture(scope="module")
def distilled(digits_teacher, tmp_path_factory):
    out = tmp_path_factory.mktemp("distilled") / "run"
    # Enough synthetic samples that the INT8 parity below is measured on ~70 held-out ones (with 18, two
    # disagreements of a 2-epoch, 14 %-accurate student already failed the 0.9 bound in a clean-clone run).
    config = load_config("demo-digits", {"student": "cnn_tiny", "epochs": 6, "warmup_epochs": 1, "g_steps": 5,
                                         "synthesis_batch": 100, "kd_batch": 64, "kd_steps": 30, "time_budget": None})
    metrics = distill(digits_teacher.path, out_dir=out, config=config, eval_data=digits_teacher.eval_path,
                      show_progress=False)
    return out, metrics


def test_export_then_verify_passes(distilled, digits_teacher):
    run_dir, metrics = distilled
    exported = run_cli("export", str(run_dir), "--json")
    assert exported.returncode == 0, exported.stderr[-2000:]
    result = json.loads(exported.stdout)
    assert result["parity"]["max_abs_error"] <= 1e-4 and result["input"] == "images01"
    onnx_path = run_dir / "student.onnx"
    verified = run_cli("verify", str(onnx_path), "--eval-data", str(digits_teacher.eval_path), "--reference",
                       str(run_dir), "--max-accuracy-drop", "0.5", "--max-latency-ms", "1000", "--json")
    assert verified.returncode == 0, verified.stderr[-2000:]
    report = json.loads(verified.stdout)
    assert report["accuracy"] == pytest.approx(metrics["student_accuracy"], abs=1e-6)
    assert report["passed"] and {g["name"] for g in report["gates"]} == {"accuracy_drop", "latency_p50_ms"}
    assert report["latency"]["p50_ms"] <= report["latency"]["p99_ms"]


@pytest.mark.parametrize("gate, args", [("latency_p50_ms", ["--max-latency-ms", "0.0001"]),
                                        ("accuracy_drop", ["--max-accuracy-drop", "-1"])])
def test_failing_gate_exits_1_naming_it(gate, args, distilled, digits_teacher):
    run_dir, _ = distilled
    if not (run_dir / "student.onnx").exists():
        assert run_cli("export", str(run_dir)).returncode == 0
    result = run_cli("verify", str(run_dir / "student.onnx"), "--eval-data", str(digits_teacher.eval_path),
                     "--reference", str(run_dir), *args)
    assert result.returncode == 1, result.stdout + result.stderr
    assert gate in result.stderr and "Traceback" not in result.stderr


def test_bad_input_exit_2(tmp_path):
    missing = run_cli("verify", str(tmp_path / "nope.onnx"))
    assert missing.returncode == 2 and "Traceback" not in missing.stderr
    not_a_run = run_cli("export", str(tmp_path))
    assert not_a_run.returncode == 2 and "distill" in not_a_run.stderr


def test_quantize_int8_close_to_fp32(distilled, digits_teacher):
    run_dir, _ = distilled
    result = run_cli("quantize", str(run_dir), "--eval-data", str(digits_teacher.eval_path), "--json")
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout)
    assert report["int8_bytes"] < report["fp32_bytes"]
    assert report["check_samples"] == "held-out synthetic" and report["calibration_samples"] >= 400, report
    assert report["parity_vs_fp32"]["top1_agreement"] >= 0.9, report
    assert abs(report["int8_accuracy"] - report["fp32_onnx_accuracy"]) <= 0.05, report
    verified = run_cli("verify", report["int8_onnx"], "--eval-data", str(digits_teacher.eval_path), "--reference",
                       report["fp32_onnx"], "--json")
    assert verified.returncode == 0, verified.stderr[-2000:]
    assert json.loads(verified.stdout)["accuracy"] == pytest.approx(report["int8_accuracy"], abs=1e-6)


def test_quantize_qat_for_tensorrt_writes_symmetric_qdq(distilled, digits_teacher):
    import onnx
    from onnx import numpy_helper

    run_dir, _ = distilled
    out = run_dir / "trt.int8.onnx"
    result = run_cli("quantize", str(run_dir), "--layout", "tensorrt", "--qat", "--out", str(out),
                     "--eval-data", str(digits_teacher.eval_path), "--json")
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout)
    assert set(report["candidates"]) == {"ptq", "qat"} and report["method"] in ("ptq", "qat")
    assert report["int8_accuracy"] == report[f"{report['method']}_int8_accuracy"]
    training = report["candidates"]["qat"]["training"]
    assert training["steps"] > 0 and training["layout"] == "tensorrt"
    for name in ("student.int8-ptq.onnx", "student.int8-qat.onnx", "student.qat-fp32.onnx"):
        assert (run_dir / name).is_file(), name
    graph = onnx.load(str(out)).graph
    inits = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    qdq = [n for n in graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    assert qdq and all(not inits[n.input[2]].any() for n in qdq)  # every zero point is 0
    assert abs(report["int8_accuracy"] - report["fp32_onnx_accuracy"]) <= 0.05, report


def test_quantize_qat_without_a_recorded_teacher_is_clear(distilled, tmp_path):
    import shutil

    run_dir, _ = distilled
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    (copy / "config.json").write_text("{}")
    result = run_cli("quantize", str(copy), "--qat")
    assert result.returncode == 2 and "--teacher" in result.stderr and "Traceback" not in result.stderr


def test_diverged_qat_keeps_its_start(distilled, digits_teacher, tmp_path):
    """A learning rate of 1e9 blows the fine-tuned weights up: no step beats the calibrated start on the samples QAT
    keeps out of training, so the start's weights are what it exports (the PTQ model's, BN folded)."""
    import shutil

    from nayer_edge.quantize.run import quantize

    run_dir = tmp_path / "run"
    shutil.copytree(distilled[0], run_dir)
    result = quantize(run_dir, qat=True, qat_lr=1e9, eval_data=digits_teacher.eval_path)
    training = result["candidates"]["qat"]["training"]
    assert training["steps"] > 1 and training["kept_step"] == 0, training
    assert training["validation_samples"] >= 50 and training["validation_kl_kept"] == training["validation_kl_start"]
    assert abs(result["qat_int8_accuracy"] - result["ptq_int8_accuracy"]) <= 0.01, result
    assert "Weights kept from step 0" in _report(result, run_dir)


def _report(result: dict, run_dir) -> str:
    from nayer_edge.deploy.report import _int8

    metrics = {"int8_candidates": result["candidates"], "int8_method": result["method"],
               "int8_selected_by": result["selected_by"], "qat_int8_accuracy": result.get("qat_int8_accuracy"),
               "ptq_int8_accuracy": result.get("ptq_int8_accuracy")}
    return "\n".join(_int8(metrics))


def test_tiny_memory_skips_qat_saying_why(distilled, digits_teacher, tmp_path):
    import shutil

    from nayer_edge.distill import run_folder as rf
    from nayer_edge.quantize.run import qat_skip_reason, quantize
    from nayer_edge.synthesis.memory import SampleMemory

    assert qat_skip_reason(499, 0.1) is not None and qat_skip_reason(500, 0.1) is None
    assert qat_skip_reason(10, 0.0) is None  # validation off: the user chose to train on everything
    run_dir = tmp_path / "run"
    shutil.copytree(distilled[0], run_dir)
    images, labels = rf.read_memory(run_dir, rf.MEMORY).all()
    small = SampleMemory(120, tuple(images.shape[1:]))
    small.add(images[:120], labels[:120])
    small.save(run_dir / rf.MEMORY)
    result = quantize(run_dir, qat=True, eval_data=digits_teacher.eval_path)
    assert result["method"] == "ptq" and "QAT skipped (only 120 synthetic samples" in result["selected_by"]
    assert "skipped" in result["candidates"]["qat"] and not (run_dir / "student.int8-qat.onnx").exists()
    assert "| QAT | skipped: only 120 synthetic samples" in _report(result, run_dir)


def test_diverged_qat_leaves_the_ptq_model_deployed(distilled, digits_teacher, tmp_path):
    """Without samples held out (``qat_validation: 0``), a learning rate of 1e9 blows the fine-tuned weights up
    (logits ~1e33): QAT fails its own export check, and quantize deploys the PTQ model, saying why, instead of
    dying or shipping garbage."""
    import shutil

    from nayer_edge.quantize.run import quantize

    run_dir = tmp_path / "run"
    shutil.copytree(distilled[0], run_dir)
    config = json.loads((run_dir / "config.json").read_text())
    config["config"]["qat_validation"] = 0.0
    (run_dir / "config.json").write_text(json.dumps(config))
    result = quantize(run_dir, qat=True, qat_lr=1e9, eval_data=digits_teacher.eval_path)
    assert result["method"] == "ptq", result["selected_by"]
    assert "QAT failed" in result["selected_by"] and "failed" in result["candidates"]["qat"]
    assert (run_dir / "student.int8.onnx").read_bytes() == (run_dir / "student.int8-ptq.onnx").read_bytes()
    assert result["qat_int8_accuracy"] is None and abs(result["int8_accuracy"] - result["fp32_onnx_accuracy"]) <= 0.05
