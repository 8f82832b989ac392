"""Release gates against the teacher: the arithmetic, and compress, verify and the bundle's check both ways."""

from __future__ import annotations

import json
import shutil

import pytest
from conftest import TEST_RECIPE, run_cli

from nayer_edge.core.errors import UserError
from nayer_edge.deploy.gates import failure_lines, release_summary, student_trained_gate, teacher_gates
from nayer_edge.distill.config import DistillConfig
from nayer_edge.distill.run_results import untrained_reason

FAST = ["--recipe", TEST_RECIPE, "--student", "cnn_tiny", "--synthesis-batch", "100", "--kd-batch", "128",
        "--g-steps", "8", "--device", "cpu"]
GOOD = [*FAST, "--epochs", "8", "--kd-steps", "40"]


# ------------------------------------------------------------------------------------------- arithmetic


def test_retention_gate_both_ways():
    metrics = {"teacher_accuracy": 0.9, "kd_steps": 12}
    kept = teacher_gates(metrics, deployed_accuracy=0.855, deployed_agreement=None, min_retention=0.9,
                         min_agreement=None)
    assert [g.name for g in kept] == ["student_trained", "teacher_retention"]
    assert kept[1].value == pytest.approx(0.95) and kept[1].limit == 0.9 and kept[1].rule == ">=" and kept[1].passed
    lost = teacher_gates(metrics, deployed_accuracy=0.8, deployed_agreement=None, min_retention=0.9, min_agreement=None)
    assert lost[1].value == pytest.approx(0.8 / 0.9) and not lost[1].passed
    assert failure_lines(metrics, lost) == [
        "teacher_retention: the deployed student keeps 88.9% of the teacher's top-1 (90.00%), below the 90% required "
        "(--min-teacher-retention); distil longer (--time-budget) or use a larger student"]
    off = teacher_gates(metrics, deployed_accuracy=0.1, deployed_agreement=None, min_retention=None, min_agreement=0.5)
    assert [g.name for g in off] == ["student_trained"]  # with eval data the proxy never stands in


def test_agreement_proxy_without_eval_data():
    metrics = {"teacher_accuracy": None, "kd_steps": 3}
    gates = teacher_gates(metrics, deployed_accuracy=None, deployed_agreement=0.84, min_retention=None,
                          min_agreement=0.85)
    assert [g.name for g in gates] == ["student_trained", "teacher_agreement_synthetic"]
    assert not gates[1].passed and gates[1].value == pytest.approx(0.84)
    assert teacher_gates(metrics, deployed_accuracy=None, deployed_agreement=0.86, min_retention=None,
                         min_agreement=0.85)[1].passed
    summary = release_summary(metrics, gates, min_retention=None, min_agreement=0.85)
    assert summary["teacher_agreement_synthetic"] == pytest.approx(0.84) and summary["student_trained"] is True
    assert [g["passed"] for g in summary["gates_when_made"]] == [True, False]


def test_student_trained_counts_kd_steps_and_reads_older_run_folders():
    assert not student_trained_gate({"kd_steps": 0}).passed
    assert student_trained_gate({"kd_steps": 1}).passed
    # A run folder from before kd_steps was recorded: its history's KD losses say whether it trained.
    assert not student_trained_gate({"history": [{"loss_bn": 1.0, "loss_kd": None}]}).passed
    assert student_trained_gate({"history": [{"loss_bn": 1.0}, {"loss_kd": 0.3}]}).passed


def test_untrained_reason_names_a_budget_that_would_have_trained():
    config = DistillConfig(warmup_epochs=2, warmup_rounds=5, rounds_per_epoch=2, kd_during_warmup=False)
    # 12 rounds before the first KD step at 10 s each, after 5 s of setup: 1.2 × 125 + 10 = 160.
    line = untrained_reason(config, kd_steps=0, rounds=3, distill_seconds=30.0, setup_seconds=5.0)
    assert line.startswith("the student never trained: 0 KD steps in 30 s") and "3 synthesis round(s) of the 12" in line
    assert "--time-budget of about 160 s" in line
    during = DistillConfig(warmup_epochs=2, warmup_rounds=5, rounds_per_epoch=2, kd_during_warmup=True)
    assert "of the 5 the schedule runs" in untrained_reason(during, kd_steps=0, rounds=1, distill_seconds=10.0,
                                                            setup_seconds=0.0)
    assert untrained_reason(config, kd_steps=config.kd_steps, rounds=3, distill_seconds=30.0,
                            setup_seconds=5.0) is None


def test_a_run_stopped_inside_its_first_kd_epoch_never_trained():
    config = DistillConfig(kd_steps=100)
    # 25 of 100 steps in 30 s after 5 s of setup: at most 1.2 × (5 + 120) + 10 = 160 s would finish the epoch.
    line = untrained_reason(config, kd_steps=25, rounds=3, distill_seconds=30.0, setup_seconds=5.0)
    assert line.startswith("the student never finished its first epoch: 25 of its 100 KD steps")
    assert "of about 160 s would let it" in line
    gate = student_trained_gate({"kd_steps": 25, "kd_steps_per_epoch": 100})
    assert not gate.passed and gate.limit == 100
    assert student_trained_gate({"kd_steps": 100, "kd_steps_per_epoch": 100}).passed
    assert "25 of the 100 KD steps" in failure_lines({}, [gate])[0]


def test_target_limits_are_checked(tmp_path):
    from nayer_edge.deploy.compress import plan_deployment
    from nayer_edge.deploy.targets import load_target

    assert load_target("cpu-x86").min_teacher_retention == 0.9
    assert load_target("jetson").min_teacher_agreement == 0.9
    bad = tmp_path / "bad.yaml"
    bad.write_text((load_target.__globals__["targets_dir"]() / "cpu-x86.yaml").read_text()
                   + "min_teacher_retention: 1.5\n")
    with pytest.raises(UserError, match="min_teacher_retention is a fraction"):
        load_target(bad)
    with pytest.raises(UserError, match="--min-teacher-retention is a fraction"):
        plan_deployment("cpu-x86", precision=None, qat=None, max_accuracy_drop=None, max_latency_ms=None,
                        has_eval_data=True, min_teacher_retention=2.0)
    with_data = plan_deployment("cpu-x86", precision=None, qat=None, max_accuracy_drop=None, max_latency_ms=None,
                                has_eval_data=True)
    without = plan_deployment("cpu-x86", precision=None, qat=None, max_accuracy_drop=None, max_latency_ms=None,
                              has_eval_data=False)
    assert (with_data.min_teacher_retention, with_data.min_teacher_agreement) == (0.9, None)
    assert (without.min_teacher_retention, without.min_teacher_agreement) == (None, 0.9)
    off = plan_deployment("cpu-x86", precision=None, qat=None, max_accuracy_drop=None, max_latency_ms=None,
                          has_eval_data=True, min_teacher_retention=0.0)
    assert off.min_teacher_retention is None


# ------------------------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def good_run(digits_teacher, tmp_path_factory):
    """A student that keeps most of the teacher (FP32 deployment, so the test is about the teacher gates)."""
    out = tmp_path_factory.mktemp("gates") / "good"
    result = run_cli("compress", str(digits_teacher.path), "--target", "cpu-x86", "--precision", "fp32", "--out",
                     str(out), "--eval-data", str(digits_teacher.eval_path), "--json", *GOOD)
    assert result.returncode == 0, result.stderr[-3000:]
    return out, json.loads(result.stdout)


def test_compress_good_student_passes_against_the_teacher(good_run, digits_teacher):
    out, metrics = good_run
    gates = {g["name"]: g for g in metrics["gates"]}
    assert list(gates) == ["student_trained", "teacher_retention", "accuracy_drop"]
    assert gates["teacher_retention"]["value"] == pytest.approx(
        metrics["fp32_onnx_accuracy"] / metrics["teacher_accuracy"], abs=1e-9)
    assert gates["teacher_retention"]["value"] >= 0.9 and gates["teacher_retention"]["rule"] == ">="
    assert metrics["kd_steps"] == 8 * 40 and metrics["untrained"] is None
    assert metrics["release"]["teacher_top1"] == pytest.approx(digits_teacher.accuracy, abs=0.01)
    report = (out / "report.md").read_text()
    assert "| teacher_retention | ≥ 0.9 |" in report and "**Result: PASS**" in report


def test_compress_weak_student_fails_the_retention_gate(digits_teacher, tmp_path):
    out = tmp_path / "weak"
    result = run_cli("compress", str(digits_teacher.path), "--target", "cpu-x86", "--precision", "fp32", "--out",
                     str(out), "--eval-data", str(digits_teacher.eval_path), "--epochs", "1", "--kd-steps", "2", *FAST)
    assert result.returncode == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert "gate failed: teacher_retention: the deployed student keeps" in result.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    failed = [g["name"] for g in metrics["gates"] if not g["passed"]]
    assert failed == ["teacher_retention"], metrics["gates"]
    # The weak student still passes the stage-to-stage gate: only the teacher gate catches it.
    assert next(g for g in metrics["gates"] if g["name"] == "accuracy_drop")["passed"]
    assert "**Result: FAIL**" in (out / "report.md").read_text()


def test_a_run_that_never_trained_fails_saying_what_budget_would_train(digits_teacher, tmp_path):
    recipe = tmp_path / "no-kd.yaml"
    recipe.write_text((open(TEST_RECIPE).read() + "\nepochs: 1\nwarmup_epochs: 1\nkd_during_warmup: false\n")
                      .replace("epochs: 40\n", "").replace("warmup_epochs: 5\n", ""))
    out = tmp_path / "never"
    result = run_cli("compress", str(digits_teacher.path), "--target", "cpu-x86", "--precision", "fp32", "--out",
                     str(out), "--eval-data", str(digits_teacher.eval_path), "--recipe", str(recipe),
                     "--student", "cnn_tiny", "--synthesis-batch", "100", "--g-steps", "4", "--device", "cpu")
    assert result.returncode == 1, result.stderr[-3000:]
    line = next(ln for ln in result.stderr.splitlines() if "student_trained" in ln)
    assert "the student never trained: 0 KD steps" in line and "--time-budget of about" in line, line
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["kd_steps"] == 0 and not metrics["passed"]
    assert not next(g for g in metrics["gates"] if g["name"] == "student_trained")["passed"]


def test_without_eval_data_the_agreement_proxy_judges(good_run, tmp_path):
    source, _ = good_run
    run_dir = tmp_path / "run"
    shutil.copytree(source, run_dir)
    passed = run_cli("export", str(run_dir), "--target", "cpu-x86", "--precision", "fp32", "--json",
                     "--min-teacher-agreement", "0.5")
    assert passed.returncode == 0, passed.stderr[-3000:]
    metrics = json.loads(passed.stdout)
    gate = next(g for g in metrics["gates"] if g["name"] == "teacher_agreement_synthetic")
    assert 0.5 <= gate["value"] <= 1.0 and gate["value"] == pytest.approx(metrics["teacher_agreement_synthetic"])
    assert "a proxy" in (run_dir / "report.md").read_text()
    strict = run_cli("export", str(run_dir), "--target", "cpu-x86", "--precision", "fp32",
                     "--min-teacher-agreement", "1.0")
    if gate["value"] < 1.0:
        assert strict.returncode == 1 and "gate failed: teacher_agreement_synthetic" in strict.stderr, strict.stderr


def test_verify_onnx_against_the_teacher_both_ways(good_run, digits_teacher):
    out, metrics = good_run
    assert metrics["fp32_onnx_accuracy"] < digits_teacher.accuracy  # the premise of the failing case
    common = ["verify", str(out / "student.onnx"), "--eval-data", str(digits_teacher.eval_path), "--teacher",
              str(digits_teacher.path), "--json"]
    ok = run_cli(*common, "--min-teacher-retention", "0.9")
    assert ok.returncode == 0, ok.stderr[-2000:]
    result = json.loads(ok.stdout)
    assert result["teacher_accuracy"] == pytest.approx(digits_teacher.accuracy, abs=1e-6)
    assert [g["name"] for g in result["gates"]] == ["teacher_retention"] and result["gates"][0]["passed"]
    bad = run_cli(*common, "--min-teacher-retention", "1.0")
    assert bad.returncode == 1 and "teacher_retention" in bad.stderr.splitlines()[-1], bad.stderr
    lonely = run_cli("verify", str(out / "student.onnx"), "--min-teacher-retention", "0.9")
    assert lonely.returncode == 2 and "needs both --eval-data and --teacher" in lonely.stderr


def test_bundle_check_applies_the_teacher_gate_on_the_device(good_run, digits_teacher, tmp_path):
    source, _ = good_run
    run_dir = tmp_path / "run"
    shutil.copytree(source, run_dir)
    made = run_cli("export", str(run_dir), "--target", "jetson", "--precision", "fp32", "--eval-data",
                   str(digits_teacher.eval_path), "--json")
    assert made.returncode == 0, made.stderr[-3000:]
    bundle = run_dir / "bundle"
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["release"]["min_teacher_retention"] == 0.9 and manifest["release"]["teacher_top1"] > 0.9
    checked = run_cli("verify", str(bundle), "--json")
    assert checked.returncode == 0, checked.stderr[-2000:]
    gates = {g["name"]: g for g in json.loads(checked.stdout)["gates"]}
    assert gates["release_gates_when_made"]["passed"] and gates["teacher_retention_labelled_subset"]["passed"]
    strict = run_cli("verify", str(bundle), "--min-teacher-retention", "1.0")
    assert strict.returncode == 1 and "teacher_retention_labelled_subset" in strict.stderr, strict.stderr

    # A bundle made from a run that failed the teacher gate fails on the device too.
    failed_dir = tmp_path / "failed"
    shutil.copytree(source, failed_dir)
    failed = run_cli("export", str(failed_dir), "--target", "jetson", "--precision", "fp32", "--eval-data",
                     str(digits_teacher.eval_path), "--min-teacher-retention", "1.0")
    assert failed.returncode == 1 and "teacher_retention" in failed.stderr, failed.stderr
    device = run_cli("verify", str(failed_dir / "bundle"), "--json")
    assert device.returncode == 1
    gates = {g["name"]: g for g in json.loads(device.stdout)["gates"]}
    assert not gates["release_gates_when_made"]["passed"] and "teacher_retention" in gates["release_gates_when_made"]["text"]
