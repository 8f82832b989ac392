"""``compress``: the release job for an onnxruntime target: distill → FP32 ONNX → INT8 → verify with gates,
and a report a person can read."""

from __future__ import annotations

import json
import platform
from pathlib import Path
from typing import Any

from .atomic import atomic_write_text
from .config import DistillConfig
from .errors import UserError


def compress(teacher: str | Path, *, target: str, out_dir: str | Path, config: DistillConfig,
             eval_data: str | Path | None = None, precision: str | None = None, qat: bool | None = None,
             max_accuracy_drop: float | None = None, max_latency_ms: float | None = None,
             show_progress: bool = True, cache_dir: Path | None = None, **teacher_options: Any) -> dict[str, Any]:
    """Run every stage; returns the metrics, with ``passed`` false when a gate failed.

    Gates: ``accuracy_drop`` (top-1 points of the deployed model below the FP32 student; needs eval data) and
    ``latency_p50_ms`` at the target's batch. Limits default to the target's budgets.

        result = compress("teacher.pt", target="cpu-x86", out_dir="runs/release", config=load_config("demo-digits"),
                          eval_data="heldout.npz")
    """
    from .distill import distill
    from .export import export
    from .targets import load_target
    from .verify import verify

    spec = load_target(target)
    if spec.runtime != "onnxruntime":
        raise UserError(f"target '{spec.name}' runs TensorRT, whose bundle is not built yet; "
                        "use an onnxruntime target (nayer-edge targets)")
    precision = precision or spec.precision
    if precision not in ("fp32", "int8"):
        raise UserError(f"precision {precision} is not available on {spec.name} (onnxruntime CPU): use fp32 or int8")
    if qat and precision != "int8":
        raise UserError(f"--qat fine-tunes for INT8, but the precision is {precision}; use --precision int8 or --no-qat")
    qat = precision == "int8" if qat is None else qat
    max_accuracy_drop = spec.max_accuracy_drop if max_accuracy_drop is None else max_accuracy_drop
    max_latency_ms = spec.max_latency_ms if max_latency_ms is None else max_latency_ms
    if eval_data is None:
        max_accuracy_drop = None  # nothing to measure it on; reported as skipped

    out_dir = Path(out_dir)
    metrics = distill(teacher, out_dir=out_dir, config=config, eval_data=eval_data, show_progress=show_progress,
                      cache_dir=cache_dir, **teacher_options)
    batch = None if spec.dynamic_batch else spec.batch
    exported = export(out_dir, out_dir / "student.onnx", batch=batch, opset=spec.opset)
    gates = {"max_accuracy_drop": max_accuracy_drop, "max_latency_ms": max_latency_ms}
    int8: dict[str, Any] | None = None
    if precision == "int8":
        from .quantize import quantize

        int8 = quantize(out_dir, layout="ort", qat=qat, teacher=teacher, teacher_options=teacher_options,
                        eval_data=eval_data, batch=batch, opset=spec.opset, show_progress=show_progress)
        results = {"fp32": verify(exported["onnx"], eval_data=eval_data, batch=spec.batch),
                   "int8": verify(int8["int8_onnx"], eval_data=eval_data, reference=exported["onnx"],
                                  batch=spec.batch, **gates)}
        deployed = int8["int8_onnx"]
    else:
        results = {"fp32": verify(exported["onnx"], eval_data=eval_data, reference=out_dir, batch=spec.batch,
                                  **gates)}
        deployed = exported["onnx"]
    final = results[precision]
    candidates = int8["candidates"] if int8 else {}
    metrics.update({
        "target": spec.name, "precision": precision, "qat": bool(int8 and "qat" in candidates),
        "fp32_onnx_accuracy": results["fp32"].accuracy,
        "int8_accuracy": results["int8"].accuracy if int8 else None,
        "ptq_int8_accuracy": int8.get("ptq_int8_accuracy") if int8 else None,
        "qat_int8_accuracy": int8.get("qat_int8_accuracy") if int8 else None,
        "int8_method": int8["method"] if int8 else None,
        "int8_selected_by": int8["selected_by"] if int8 else None,
        "int8_candidates": candidates,
        "onnx_max_abs_error": exported["parity"]["max_abs_error"],
        "latency": {name: {"p50_ms": r.latency.p50_ms, "p90_ms": r.latency.p90_ms, "p95_ms": r.latency.p95_ms,
                           "p99_ms": r.latency.p99_ms, "mean_ms": r.latency.mean_ms, "cv": r.latency.cv,
                           "throughput": r.latency.throughput, "batch": r.latency.batch}
                    for name, r in results.items()},
        "model_bytes": {"fp32": exported["bytes"], **({"int8": int8["int8_bytes"]} if int8 else {})},
        "gates": [{"name": g.name, "limit": g.limit, "value": g.value, "passed": g.passed} for g in final.gates],
        "passed": final.passed,
        "deployed_model": str(deployed),
    })
    metrics["artifacts"].update({"student.onnx": exported["onnx"], "report.md": str(out_dir / "report.md")})
    if int8:
        metrics["artifacts"]["student.int8.onnx"] = deployed
        metrics["artifacts"].update({Path(c["onnx"]).name: c["onnx"] for c in candidates.values()})
        if "qat" in candidates:
            metrics["artifacts"]["student.qat-fp32.onnx"] = str(out_dir / "student.qat-fp32.onnx")
    atomic_write_text(out_dir / "metrics.json", json.dumps(metrics, indent=2))
    atomic_write_text(out_dir / "report.md", render_report(metrics, spec.name))
    return metrics


def render_report(metrics: dict[str, Any], target: str) -> str:
    """A Markdown report of a compress run (accuracies, sizes, latency, gates, pictures, config, versions)."""
    import onnxruntime
    import torch

    pct = lambda v: "—" if v is None else f"{v:.2%}"  # noqa: E731
    lines = [f"# nayer-edge compress report: {target}", "",
             f"**Result: {'PASS' if metrics['passed'] else 'FAIL'}**: deployed model `{Path(metrics['deployed_model']).name}` "
             f"({metrics['precision']}).", "",
             "## Accuracy (top-1 on held-out real data)", "", "| model | top-1 | parameters / bytes |", "|---|---:|---:|",
             f"| teacher | {pct(metrics['teacher_accuracy'])} | {metrics['teacher_params']:,} params |",
             f"| student, PyTorch FP32 | {pct(metrics['student_accuracy'])} | {metrics['student_params']:,} params |",
             f"| student, ONNX FP32 | {pct(metrics['fp32_onnx_accuracy'])} | {metrics['model_bytes']['fp32']:,} B |"]
    if metrics["int8_accuracy"] is not None:
        lines.append(f"| student, ONNX INT8 deployed ({metrics['int8_method'].upper()}) | {pct(metrics['int8_accuracy'])} | "
                     f"{metrics['model_bytes']['int8']:,} B |")
    if metrics.get("int8_candidates"):
        lines += ["", "### INT8: post-training quantization vs quantization-aware fine-tuning", "",
                  "Both calibrated on the run's synthetic samples; neither saw real data. The deployed one is chosen "
                  "by agreement with the teacher on *held-out synthetic* samples, never on the real data below.", "",
                  "| INT8 method | top-1 (real) | agreement with teacher (synthetic hold-out) | cosine vs FP32 |",
                  "|---|---:|---:|---:|"]
        for name, cand in metrics["int8_candidates"].items():
            real = metrics.get(f"{name}_int8_accuracy")
            lines.append(f"| {name.upper()} | {pct(real)} | {pct(cand.get('teacher_agreement'))} | "
                         f"{cand['parity_vs_fp32']['cosine_similarity']:.4f} |")
        lines += ["", f"Deployed: **{metrics['int8_method'].upper()}**: {metrics['int8_selected_by']}."]
        training = metrics["int8_candidates"].get("qat", {}).get("training")
        if training:
            lines.append(f"QAT: {training['steps']} steps ({training['epochs']:g} passes over the memory, lr "
                         f"{training['lr']:g}) in {training['seconds']:.1f} s, BatchNorm folded, "
                         f"{training['quantizers']} activation quantizers; KD loss {training['initial_loss']:.4f} → "
                         f"{training['final_loss']:.4f}.")
    lines += ["", f"ONNX FP32 vs PyTorch: max abs error {metrics['onnx_max_abs_error']:.2e}.", "",
              "## Latency (onnxruntime CPU, after warm-up)", "",
              "| precision | batch | p50 ms | p90 ms | p99 ms | images/s |", "|---|---:|---:|---:|---:|---:|"]
    for name, lat in metrics["latency"].items():
        lines.append(f"| {name} | {lat['batch']} | {lat['p50_ms']:.3f} | {lat['p90_ms']:.3f} | {lat['p99_ms']:.3f} | "
                     f"{lat['throughput']:,.0f} |")
    lines += ["", "## Gates", "", "| gate | limit | value | result |", "|---|---:|---:|---|"]
    lines += [f"| {g['name']} | {g['limit']:.4g} | {g['value']:.4g} | {'pass' if g['passed'] else '**FAIL**'} |"
              for g in metrics["gates"]] or ["| (none configured) | | | |"]
    lines += ["", "## Synthetic samples and training", "", "![samples](samples.png)", "", "![curves](curves.png)", "",
              f"{metrics['epochs']} epochs in {metrics['distill_seconds']:.0f} s ({metrics['stopped_by']}); "
              f"{metrics['synthetic_samples']:,} synthetic samples generated, {metrics['memory_samples']:,} kept.", "",
              "## Configuration and versions", "", "The resolved configuration is in `config.json`.", "",
              f"torch {torch.__version__}, onnxruntime {onnxruntime.__version__}, Python {platform.python_version()}, "
              f"{platform.machine()}.", ""]
    return "\n".join(lines)
