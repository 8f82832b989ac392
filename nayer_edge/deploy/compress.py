"""``compress``: the release job: distill → ONNX at the target's precision (INT8 after QAT on the synthetic samples,
FP16, FP32) → verify with gates → a report a person can read, and for a TensorRT target the deploy bundle. A CPU
target without ``--precision`` builds FP32 and INT8 and deploys the faster that passes the accuracy gates
(:mod:`~nayer_edge.deploy.choice`). ``deploy`` is the same job on an existing distill folder."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..core.atomic import atomic_write_text, remove_temporaries
from ..core.errors import UserError
from ..core.interrupt import names_checkpoint
from ..core.optional import require
from ..core.progress import Progress, as_progress
from ..distill import run_folder as rf
from ..distill.config import DistillConfig
from ..distill.distributed import launch_env
from ..distill.run import distill
from ..distill.run_folder import CHECKPOINT, read_student_spec, require_code_trust
from ..inputs.evaldata import load_eval_data
from ..onnx_model.exporter import onnx_session
from ..onnx_model.fp16 import to_fp16
from ..onnx_model.student import export
from ..quantize.run import load_run_teacher, quantize
from .bundle_build import make_bundle
from .bundle_verify import verify_bundle
from .choice import FORCED, Candidate, Choice, choose_fastest, fixed
from .gates import onnx_predictions, release_summary, teacher_gates, teacher_predictions
from .latency import compare_latency
from .report import render_report
from .targets import load_target
from .verify import Gate, VerifyResult, latency_gate, verify


# Keyword-only options, one per command-line option of the command it backs: the library's public API.
@rf.reading_once
def compress(teacher: str | Path, *, target: str, out_dir: str | Path, config: DistillConfig,
             eval_data: str | Path | None = None, precision: str | None = None, qat: bool | None = None,
             max_accuracy_drop: float | None = None, max_latency_ms: float | None = None,
             min_teacher_retention: float | None = None, min_teacher_agreement: float | None = None,
             show_progress: bool | Progress = True, cache_dir: Path | None = None, resume: bool = False,
             user_set: Any = None, clock_start: float | None = None, **teacher_options: Any) -> dict[str, Any]:
    """Run every stage; returns the metrics, with ``passed`` false when a gate failed. ``resume``: continue
    the interrupted distillation in ``out_dir`` (see :func:`~nayer_edge.distill.run.distill`). ``show_progress``:
    the events of every stage (see :func:`~nayer_edge.core.progress.as_progress`).

    Gates: ``student_trained`` (at least one KD step), ``teacher_retention`` (deployed top-1 against the
    teacher's; needs eval data) or without eval data ``teacher_agreement_synthetic`` (see :mod:`nayer_edge.deploy.gates`),
    ``accuracy_drop`` (top-1 points of the deployed model below the FP32 student; needs eval data) and
    ``latency_p50_ms`` at the target's batch. Limits default to the target's.

        result = compress("teacher.pt", target="cpu-x86", out_dir="runs/release", config=load_config("demo-digits"),
                          eval_data="heldout.npz")
    """
    if launch_env().distributed:
        raise UserError("compress runs in one process (its export and quantize stages are not distributed): run "
                        "`torchrun ... nayer-edge distill`, then `nayer-edge deploy RUN_DIR --target ...`")
    plan = plan_deployment(target, precision=precision, qat=qat, max_accuracy_drop=max_accuracy_drop,
                           max_latency_ms=max_latency_ms, has_eval_data=eval_data is not None,
                           min_teacher_retention=min_teacher_retention, min_teacher_agreement=min_teacher_agreement)
    started = time.perf_counter() if clock_start is None else clock_start
    # With a time budget, the deployment's share is kept back from the distillation (see deployment_seconds).
    reserve = deployment_seconds(plan, config) if config.time_budget is not None else 0.0
    progress = as_progress(show_progress)
    metrics = distill(teacher, out_dir=out_dir, config=config, eval_data=eval_data, show_progress=progress,
                      cache_dir=cache_dir, resume=resume, user_set=user_set, clock_start=started,
                      reserve_after=reserve, **teacher_options)
    # Aborted while deploying: the distillation's checkpoint is whole, and --resume redoes only the deployment.
    with names_checkpoint(Path(out_dir) / CHECKPOINT):
        # The student factory in student.json is the one named in this call's config: trusted.
        run = DeployInputs(Path(out_dir), teacher, teacher_options, eval_data, progress, trust_code=True,
                           qat_seconds=QAT_SECONDS_SHARE * config.time_budget if config.time_budget else None)
        return _deploy(run, plan, metrics)


# Keyword-only options, one per command-line option of the command it backs: the library's public API.
@rf.reading_once
def deploy(run_dir: str | Path, *, target: str, eval_data: str | Path | None = None, precision: str | None = None,
           qat: bool | None = None, max_accuracy_drop: float | None = None, max_latency_ms: float | None = None,
           min_teacher_retention: float | None = None, min_teacher_agreement: float | None = None,
           teacher: str | Path | None = None, show_progress: bool | Progress = False, trust_code: bool = False,
           **teacher_options: Any) -> dict[str, Any]:
    """Every stage after distillation, on an existing ``nayer-edge distill`` folder: ONNX for the target's
    precision (INT8 with QAT, FP16, FP32), verification with gates, the report, and for a TensorRT target the
    deploy bundle. The teacher (for QAT) defaults to the one recorded in the run. ``trust_code``: import a
    student factory the run folder names (see :func:`~nayer_edge.onnx_model.student.load_student`).

        deploy("runs/digits", target="jetson", eval_data="heldout.npz")["bundle"]["archive"]
    """
    run_dir = Path(run_dir)
    require_code_trust(run_dir, read_student_spec(run_dir), trust_code)
    plan = plan_deployment(target, precision=precision, qat=qat, max_accuracy_drop=max_accuracy_drop,
                           max_latency_ms=max_latency_ms, has_eval_data=eval_data is not None,
                           min_teacher_retention=min_teacher_retention, min_teacher_agreement=min_teacher_agreement)
    try:
        metrics = rf.read_json(run_dir / rf.METRICS)
    except UserError:
        raise UserError(f"{run_dir}: no readable metrics.json; re-run distill") from None
    if not isinstance(metrics, dict):
        raise UserError(f"{run_dir}/metrics.json: expected a JSON object, got {type(metrics).__name__}; re-run distill")
    if eval_data is not None:
        metrics["teacher_accuracy"] = None  # measured again on this call's eval data, which may not be the run's
    return _deploy(DeployInputs(run_dir, teacher, teacher_options, eval_data, as_progress(show_progress), trust_code),
                   plan, metrics)


# What the deployment stages cost on a CPU of the development machine (BENCHMARKS.md, the planner section):
# ONNX export with its parity check, verification with latency of each model, the report; INT8 adds calibration,
# and QAT its fine-tuning (capped to QAT_SECONDS_SHARE of the budget, see quantize). Choosing between FP32 and
# INT8 adds the FP32 candidate's check against the PyTorch student and its gates (CHOICE_SECONDS); both are timed
# side by side for as long as INT8 alone timed them before.
DEPLOY_FIXED_SECONDS = {"fp32": 8.0, "fp16": 10.0, "int8": 16.0}
CHOICE_SECONDS = 2.0
QAT_SECONDS_SHARE = 0.06
BUNDLE_SECONDS = 6.0
LATENCY_SECONDS = 2.0  # timed seconds per model (verify's default), side by side when there are two


def deployment_seconds(plan: "DeploymentPlan", config: DistillConfig) -> float:
    """Seconds a budgeted compress keeps back for everything after distillation."""
    seconds = DEPLOY_FIXED_SECONDS.get(plan.precision, 16.0) + (BUNDLE_SECONDS if plan.on_device else 0.0)
    seconds += CHOICE_SECONDS if plan.choose_fastest else 0.0
    if plan.precision == "int8" and plan.qat and config.time_budget:
        seconds += QAT_SECONDS_SHARE * config.time_budget
    return seconds


@dataclass(frozen=True)
class DeploymentPlan:
    """What to build for a target, resolved and validated before any work starts. ``precision`` is what is built
    besides the FP32 export; with ``choose_fastest`` (a CPU target, no ``--precision``) that is INT8, and the
    faster of FP32 and INT8 that passes the accuracy gates is deployed."""

    target: Any
    precision: str
    qat: bool
    max_accuracy_drop: float | None
    max_latency_ms: float | None
    min_teacher_retention: float | None = None
    min_teacher_agreement: float | None = None
    choose_fastest: bool = False
    forced: bool = False  # --precision given

    @property
    def on_device(self) -> bool:
        return self.target.runtime == "tensorrt"


def plan_deployment(target: str, *, precision: str | None, qat: bool | None, max_accuracy_drop: float | None,
                    max_latency_ms: float | None, has_eval_data: bool, min_teacher_retention: float | None = None,
                    min_teacher_agreement: float | None = None) -> DeploymentPlan:
    """Resolve the target's defaults; raise UserError for a combination the target cannot do."""
    spec = load_target(target)
    # A CPU's latency can be measured here, so it decides; a TensorRT target's only on the device.
    choose_fastest = precision is None and spec.runtime == "onnxruntime" and spec.precision == "int8"
    precision_given = precision is not None
    precision = precision or spec.precision
    available = ("fp32", "int8") if spec.runtime == "onnxruntime" else ("fp32", "fp16", "int8")
    if precision not in available:
        raise UserError(f"precision {precision} is not available on {spec.name} ({spec.runtime}): "
                        f"use {' or '.join(available)}")
    if qat and precision != "int8":
        raise UserError(f"--qat fine-tunes for INT8, but the precision is {precision}; use --precision int8 or --no-qat")
    qat = precision == "int8" if qat is None else qat
    max_accuracy_drop = spec.max_accuracy_drop if max_accuracy_drop is None else max_accuracy_drop
    max_latency_ms = spec.max_latency_ms if max_latency_ms is None else max_latency_ms
    for name, value in (("--min-teacher-retention", min_teacher_retention),
                        ("--min-teacher-agreement", min_teacher_agreement)):
        if value is not None and not 0.0 <= value <= 1.0:
            raise UserError(f"{name} is a fraction in [0, 1] (0 turns the gate off), got {value:g}")
    retention = spec.min_teacher_retention if min_teacher_retention is None else min_teacher_retention
    agreement = spec.min_teacher_agreement if min_teacher_agreement is None else min_teacher_agreement
    if not has_eval_data:
        max_accuracy_drop = retention = None  # nothing to measure them on; the agreement proxy stands in
    else:
        agreement = None
    if spec.runtime == "tensorrt":
        require("onnx")  # fail before distilling when the bundle could not be written
    return DeploymentPlan(spec, precision, qat, max_accuracy_drop, max_latency_ms, retention or None, agreement or None,
                          choose_fastest, precision_given)


@dataclass(frozen=True)
class DeployInputs:
    """What the stages after distillation work from besides the plan: the run folder, the teacher (a path, or None
    for the run's) with its loading options, the eval data, and how to run (progress, trusting the run's student
    factory, QAT's share of the budget); handed down whole instead of as keyword relays."""

    out_dir: Path
    teacher: str | Path | None
    teacher_options: dict[str, Any]
    eval_data: str | Path | None
    progress: Progress
    trust_code: bool
    qat_seconds: float | None = None


@dataclass(frozen=True)
class _Models:
    """The ONNX models a deployment built: the FP32 export (``export``'s result), the INT8 result of ``quantize``
    (None unless INT8) and the path of the model at the plan's precision (the FP32 export for FP32)."""

    exported: dict[str, Any]
    int8: dict[str, Any] | None
    built: str

    def paths(self, precision: str) -> dict[str, str]:
        """Each candidate's file by precision: FP32, and the plan's precision when that is another."""
        return {"fp32": str(self.exported["onnx"]), precision: str(self.built)}


def _deploy(run: DeployInputs, plan: DeploymentPlan, metrics: dict[str, Any]) -> dict[str, Any]:
    remove_temporaries(run.out_dir)  # staging left by a deployment killed mid-write
    # Everything the later stages read is checked before the first file is written.
    _check_memories(run.out_dir, needs_samples=plan.precision == "int8")
    teacher_model = _teacher_for(run, plan, metrics)
    models = _build_models(run, plan, teacher_model)
    with run.progress.stage("verify"):
        results = _verify_models(run, plan, models)
        # Judged against the teacher: every candidate when the gates choose between them, else the deployed one.
        paths = models.paths(plan.precision)
        judged = {name: _teacher_judgement(run, plan, metrics, paths[name], results[name], teacher_model)
                  for name in (results if plan.choose_fastest else [plan.precision])}
        choice = _choose(plan, paths, results, judged)
    final = results[choice.precision]
    against_teacher, agreement = judged[choice.precision]
    release = release_summary(metrics, against_teacher, min_retention=plan.min_teacher_retention,
                              min_agreement=plan.min_teacher_agreement)
    bundle = None
    if plan.on_device:
        with run.progress.stage("bundle"):
            bundle = _bundle(run, plan, models.built, results["fp32"].accuracy, release)
    final_gates = against_teacher + list(final.gates)
    if bundle is not None:
        failed = sum(not g.get("passed", False) for g in bundle["check"].get("gates", []))
        final_gates.append(Gate("bundle_check_onnxruntime", 0.0, float(failed), bundle["check"]["passed"]))
    metrics.update(_deployment_metrics(plan, models, results, final_gates, release, agreement, bundle, choice))
    _record_artifacts(metrics["artifacts"], run.out_dir, plan.precision, models, bundle)
    atomic_write_text(run.out_dir / rf.METRICS, json.dumps(metrics, indent=2))
    atomic_write_text(run.out_dir / rf.REPORT, render_report(metrics, plan.target.name))
    return metrics


def _teacher_for(run: DeployInputs, plan: DeploymentPlan, metrics: dict[str, Any]) -> Any:
    """The teacher, loaded when a later stage needs it (QAT, its top-1 on this call's eval data, the agreement
    proxy), else None; its top-1 goes into ``metrics`` when measured here."""
    teacher_model = None
    measure_teacher = run.eval_data is not None and metrics.get("teacher_accuracy") is None
    proxy = plan.min_teacher_agreement is not None
    if (plan.precision == "int8" and plan.qat) or measure_teacher or proxy:
        teacher_model = load_run_teacher(run.out_dir, run.teacher, run.teacher_options)
    if measure_teacher:
        metrics["teacher_accuracy"] = _teacher_top1(run.out_dir, teacher_model, run.eval_data)
    return teacher_model


def _build_models(run: DeployInputs, plan: DeploymentPlan, teacher_model: Any) -> _Models:
    """The FP32 ONNX export, then the model at the plan's precision (INT8 by ``quantize``, FP16 converted)."""
    spec, precision, qat = plan.target, plan.precision, plan.qat
    batch = None if spec.dynamic_batch else spec.batch
    with run.progress.stage("export"):
        exported = export(run.out_dir, run.out_dir / rf.STUDENT_ONNX, batch=batch, opset=spec.opset,
                          trust_code=run.trust_code)
    int8: dict[str, Any] | None = None
    if precision == "int8":
        with run.progress.stage("quantize"):
            int8 = quantize(run.out_dir, layout="tensorrt" if spec.quantization == "qdq-trt" else "ort", qat=qat,
                            teacher=teacher_model if qat else None, teacher_options=run.teacher_options,
                            eval_data=run.eval_data, batch=batch, opset=spec.opset, show_progress=run.progress,
                            trust_code=run.trust_code, qat_seconds=run.qat_seconds)
        built = int8["int8_onnx"]
    elif precision == "fp16":
        with run.progress.stage("fp16"):
            built = str(to_fp16(exported["onnx"], run.out_dir / rf.STUDENT_FP16_ONNX))
    else:
        built = exported["onnx"]
    return _Models(exported, int8, built)


def _verify_models(run: DeployInputs, plan: DeploymentPlan, models: _Models) -> dict[str, VerifyResult]:
    """``verify`` of the FP32 export and of the model at the plan's precision (the same one for FP32), by
    precision, each with its gates. On a CPU target the two are timed side by side, with the same session
    settings, for the choice and the latency gate."""
    # A TensorRT target's latency gate is checked on the device (the bundle's check), not on this host.
    max_latency_ms = None if plan.on_device else plan.max_latency_ms
    batch, eval_data, exported = plan.target.batch, run.eval_data, models.exported["onnx"]
    if plan.precision == "fp32":
        return {"fp32": verify(models.built, eval_data=eval_data, reference=run.out_dir, batch=batch,
                               max_accuracy_drop=plan.max_accuracy_drop, max_latency_ms=max_latency_ms)}
    side_by_side = not plan.on_device
    # Timed below, side by side: verify's own timing is cut to its minimum of 20 calls.
    quick: dict[str, Any] = {"latency_seconds": 0.0, "warmup_seconds": 0.0} if side_by_side else {}
    # As a candidate FP32 is checked as a forced FP32 is: against the PyTorch student, with the drop gate.
    fp32_check: dict[str, Any] = ({"reference": run.out_dir, "max_accuracy_drop": plan.max_accuracy_drop}
                                  if plan.choose_fastest else {})
    results = {"fp32": verify(exported, eval_data=eval_data, batch=batch, **fp32_check, **quick),
               plan.precision: verify(models.built, eval_data=eval_data, reference=exported, batch=batch,
                                      max_accuracy_drop=plan.max_accuracy_drop,
                                      max_latency_ms=None if side_by_side else max_latency_ms, **quick)}
    if side_by_side:
        _time_side_by_side(results, models.paths(plan.precision), max_latency_ms)
    return results


def _time_side_by_side(results: dict[str, VerifyResult], paths: dict[str, str], max_latency_ms: float | None) -> None:
    """Every model's latency from one side-by-side measurement (``compare_latency``) into its result, with the
    latency gate when there is a limit."""
    first = results["fp32"]
    sessions = {name: onnx_session(paths[name]) for name in results}
    stats = compare_latency(sessions, first.latency.batch, first.input_shape, seconds=LATENCY_SECONDS)
    for name, result in results.items():
        result.latency = stats[name]
        if max_latency_ms is not None:
            result.gates.append(latency_gate(stats[name], max_latency_ms))
        result.passed = all(g.passed for g in result.gates)


def _teacher_judgement(run: DeployInputs, plan: DeploymentPlan, metrics: dict[str, Any], path: str,
                       result: VerifyResult, teacher_model: Any) -> tuple[list[Gate], float | None]:
    """A candidate's gates against the teacher, and its agreement with the teacher on held-out synthetic samples
    when that proxy stands in for eval data."""
    proxy = plan.min_teacher_agreement is not None
    agreement = _synthetic_agreement(run.out_dir, path, teacher_model) if proxy else None
    gates = teacher_gates(metrics, deployed_accuracy=result.accuracy, deployed_agreement=agreement,
                          min_retention=plan.min_teacher_retention, min_agreement=plan.min_teacher_agreement)
    return gates, agreement


def _choose(plan: DeploymentPlan, paths: dict[str, str], results: dict[str, VerifyResult],
            judged: dict[str, tuple[list[Gate], float | None]]) -> Choice:
    """The model to deploy: the fastest that passes (a CPU target without --precision), else the plan's."""
    on_host = not plan.on_device
    candidates = {name: Candidate(name, paths[name], results[name].latency.p50_ms if on_host else None,
                                  results[name].latency.batch, [*judged.get(name, ([], None))[0],
                                                                *results[name].gates])
                  for name in results}
    if plan.choose_fastest:
        return choose_fastest([candidates["fp32"], candidates[plan.precision]])
    others = [c for name, c in candidates.items() if name != plan.precision]
    reason = (FORCED if plan.forced else
              "the target's precision" + ("; a TensorRT target's latency is measured on the device, by the bundle's "
                                           "check" if plan.on_device else ""))
    return fixed(candidates[plan.precision], others, reason)


def _built_candidates(int8: dict[str, Any] | None) -> dict[str, Any]:
    """The INT8 candidates that have a model (a failed QAT has none)."""
    candidates = int8["candidates"] if int8 else {}
    return {name: c for name, c in candidates.items() if "onnx" in c}


# One parameter per part of the deployment the metrics record: the count is what there is to record.
def _deployment_metrics(plan: DeploymentPlan, models: _Models, results: dict[str, VerifyResult],
                        final_gates: list[Gate], release: dict[str, Any], agreement: float | None,
                        bundle: dict[str, Any] | None, choice: Choice) -> dict[str, Any]:
    """What the deployment adds to the run's metrics."""
    spec, exported, int8 = plan.target, models.exported, models.int8
    return {
        "target": spec.name, "precision": choice.precision, "qat": "qat" in _built_candidates(int8),
        "deployed": choice.record(),
        "fp32_onnx_accuracy": results["fp32"].accuracy,
        "fp16_accuracy": results["fp16"].accuracy if "fp16" in results else None,
        "int8_accuracy": results["int8"].accuracy if int8 else None,
        "ptq_int8_accuracy": int8.get("ptq_int8_accuracy") if int8 else None,
        "qat_int8_accuracy": int8.get("qat_int8_accuracy") if int8 else None,
        "int8_method": int8["method"] if int8 else None,
        "int8_selected_by": int8["selected_by"] if int8 else None,
        "int8_candidates": int8["candidates"] if int8 else {},
        "onnx_max_abs_error": exported["parity"]["max_abs_error"],
        "latency": {name: {"p50_ms": r.latency.p50_ms, "p90_ms": r.latency.p90_ms, "p95_ms": r.latency.p95_ms,
                           "p99_ms": r.latency.p99_ms, "mean_ms": r.latency.mean_ms, "cv": r.latency.cv,
                           "throughput": r.latency.throughput, "batch": r.latency.batch}
                    for name, r in results.items()},
        "model_bytes": {"fp32": exported["bytes"], **({"int8": int8["int8_bytes"]} if int8 else {}),
                        **({"fp16": Path(models.built).stat().st_size} if plan.precision == "fp16" else {})},
        "gates": [{"name": g.name, "limit": g.limit, "value": g.value, "passed": g.passed, "rule": g.rule}
                  for g in final_gates],
        "passed": all(g.passed for g in final_gates),
        "release": release,
        "teacher_agreement_synthetic": agreement,
        "runtime": spec.runtime,
        "bundle": None if bundle is None else {"dir": bundle["bundle_dir"], "archive": bundle["archive"],
                                               "host_check": {k: bundle["check"].get(k) for k in
                                                              ("passed", "backend", "parity", "accuracy", "gates")}},
        "deployed_model": choice.candidate.file,
    }


def _record_artifacts(artifacts: dict[str, Any], out_dir: Path, precision: str, models: _Models,
                      bundle: dict[str, Any] | None) -> None:
    """The deployment's files into the metrics' ``artifacts`` (every candidate's, deployed or not)."""
    artifacts.update({rf.STUDENT_ONNX: models.exported["onnx"], rf.REPORT: str(out_dir / rf.REPORT)})
    if bundle is not None:
        artifacts.update({"bundle": bundle["bundle_dir"], "bundle.tar.gz": bundle["archive"]})
    if precision == "fp16":
        artifacts[rf.STUDENT_FP16_ONNX] = models.built
    if models.int8:
        artifacts[rf.STUDENT_INT8_ONNX] = models.int8["int8_onnx"]
        built = _built_candidates(models.int8)
        artifacts.update({Path(c["onnx"]).name: c["onnx"] for c in built.values()})
        if "qat" in built:
            artifacts[rf.STUDENT_QAT_FP32_ONNX] = str(out_dir / rf.STUDENT_QAT_FP32_ONNX)


def _check_memories(out_dir: Path, *, needs_samples: bool) -> None:
    """Read the run's sample memories before anything is written: a damaged one stops the deployment with the
    folder as it was (the later stages calibrate, fine-tune and make reference inputs from them)."""
    if needs_samples and not (out_dir / rf.MEMORY).is_file():
        raise UserError(f"{out_dir}: no {rf.MEMORY} (the synthetic memory) to calibrate INT8 on; re-run distill")
    for name in (rf.MEMORY, rf.HOLDOUT):
        if (out_dir / name).is_file():
            rf.read_memory(out_dir, name)  # the later stages get this read, not another


def _teacher_top1(out_dir: Path, teacher: Any, eval_data: str | Path) -> float:
    """The teacher's top-1 on the eval data (for a run folder distilled without it, or with other data)."""
    student = read_student_spec(out_dir)
    x, y = load_eval_data(eval_data, input_shape=student["input_shape"], classes=student["classes"])
    return float((teacher_predictions(teacher, x) == y.numpy()).mean())


def _synthetic_agreement(out_dir: Path, deployed: str, teacher: Any) -> float | None:
    """Top-1 agreement of the deployed model with the teacher on the held-out synthetic samples (None: none)."""
    images = rf.read_held_out_samples(out_dir).all()[0]
    if not len(images):
        return None
    return float((onnx_predictions(deployed, images.numpy()) == teacher_predictions(teacher, images)).mean())


def _bundle(run: DeployInputs, plan: DeploymentPlan, deployed: str, fp32_accuracy: float | None,
            release: dict[str, Any] | None) -> dict[str, Any]:
    """The deploy bundle for a TensorRT target, and its check run here through onnxruntime."""
    out_dir = run.out_dir
    student = read_student_spec(out_dir)
    images = rf.read_held_out_samples(out_dir).all()[0]
    made = make_bundle(deployed, out_dir / "bundle", target=plan.target, classes=student["classes"],
                       input_shape=student["input_shape"], mean=student["mean"], std=student["std"],
                       input_convention="images01", reference_images=images[:64].float(), precision=plan.precision,
                       eval_data=run.eval_data, teacher_path=run.teacher, run_dir=out_dir,
                       expected_accuracy=fp32_accuracy, max_accuracy_drop=plan.max_accuracy_drop,
                       max_latency_ms=plan.max_latency_ms, release=release)
    made["check"] = verify_bundle(made["bundle_dir"], measure_latency=False)
    return made
