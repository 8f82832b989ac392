"""`nayer-edge compress` end to end on a tiny real teacher: every stage, the report, and gates both ways."""

from __future__ import annotations

import json

from conftest import TEST_RECIPE, run_cli

FAST = ["--recipe", TEST_RECIPE, "--student", "cnn_tiny", "--epochs", "3", "--synthesis-batch", "100",
        "--kd-batch", "128", "--kd-steps", "40", "--g-steps", "8", "--device", "cpu"]


def test_compress_cpu_int8_passes(digits_teacher, tmp_path):
    out = tmp_path / "release"
    result = run_cli("compress", str(digits_teacher.path), "--target", "cpu-x86", "--out", str(out),
                     "--eval-data", str(digits_teacher.eval_path), "--json", *FAST)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads(result.stdout)
    assert metrics["target"] == "cpu-x86" and metrics["precision"] == "int8" and metrics["passed"]
    assert metrics["onnx_max_abs_error"] <= 1e-4
    assert abs(metrics["fp32_onnx_accuracy"] - metrics["student_accuracy"]) <= 0.005
    assert abs(metrics["int8_accuracy"] - metrics["fp32_onnx_accuracy"]) <= 0.01  # the target's 1-point budget
    assert set(metrics["latency"]) == {"fp32", "int8"}
    assert [g["name"] for g in metrics["gates"]] == ["accuracy_drop"]
    for name in ("student.onnx", "student.int8.onnx", "report.md", "metrics.json", "samples.png"):
        assert (out / name).is_file(), name
    report = (out / "report.md").read_text()
    assert "PASS" in report and "ONNX INT8" in report and "![samples](samples.png)" in report


def test_compress_failing_latency_gate_exits_1(digits_teacher, tmp_path):
    result = run_cli("compress", str(digits_teacher.path), "--target", "cpu-x86", "--out", str(tmp_path / "r"),
                     "--eval-data", str(digits_teacher.eval_path), "--max-latency-ms", "0.0001", *FAST)
    assert result.returncode == 1, result.stderr[-2000:]
    assert "latency_p50_ms" in result.stderr.splitlines()[-1]
    assert "FAIL" in (tmp_path / "r" / "report.md").read_text()


def test_compress_rejects_what_it_cannot_do_yet(digits_teacher, tmp_path):
    for extra in (["--target", "jetson"], ["--qat", "--precision", "fp32"], ["--target", "cpu-x86s"]):
        result = run_cli("compress", str(digits_teacher.path), "--out", str(tmp_path / "x"), *extra, *FAST)
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert not (tmp_path / "x").exists()
