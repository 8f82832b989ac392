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
    if qat:
        raise UserError("quantization-aware training is not implemented yet; use --no-qat (post-training quantization)")
    max_accuracy_drop = spec.max_accuracy_drop if max_accuracy_drop is None else max_accuracy_drop
    max_latency_ms = spec.max_latency_ms if max_latency_ms is None else max_latency_ms
    if eval_data is None:
        max_accuracy_drop = None  # nothing to measure it on; reported as skipped

    out_dir = Path(out_dir)
    metrics = distill(teacher, out_dir=out_dir, config=config, eval_data=eval_data, show_progress=show_progress,
                      cache_dir=cache_dir, **teacher_options)
    exported = export(out_dir, out_dir / "student.onnx", batch=None if spec.dynamic_batch else spec.batch,
                      opset=spec.opset)
    fp32 = verify(exported["onnx"], eval_data=eval_data, batch=spec.batch)
    results: dict[str, Any] = {"fp32": fp32}
    deployed = exported["onnx"]
    ptq: dict[str, Any] | None = None
    if precision == "int8":
        from .quantize import quantize

        ptq = quantize(out_dir, out=out_dir / "student.int8.onnx")
        deployed = ptq["int8_onnx"]
        results["int8"] = verify(deployed, eval_data=eval_data, reference=exported["onnx"], batch=spec.batch,
                                 max_accuracy_drop=max_accuracy_drop, max_latency_ms=max_latency_ms)
    else:
        results["fp32"] = fp32 = verify(deployed, eval_data=eval_data, reference=out_dir, batch=spec.batch,
                                        max_accuracy_drop=max_accuracy_drop, max_latency_ms=max_latency_ms)
    final = results[precision]
    metrics.update({
        "target": spec.name, "precision": precision, "qat": False,
        "fp32_onnx_accuracy": fp32.accuracy,
        "int8_accuracy": results["int8"].accuracy if "int8" in results else None,
        "ptq_int8_accuracy": results["int8"].accuracy if "int8" in results else None,
        "onnx_max_abs_error": exported["parity"]["max_abs_error"],
        "latency": {name: {"p50_ms": r.latency.p50_ms, "p90_ms": r.latency.p90_ms, "p99_ms": r.latency.p99_ms,
                           "throughput": r.latency.throughput, "batch": r.latency.batch}
                    for name, r in results.items()},
        "model_bytes": {"fp32": exported["bytes"], **({"int8": ptq["int8_bytes"]} if ptq else {})},
        "gates": [{"name": g.name, "limit": g.limit, "value": g.value, "passed": g.passed} for g in final.gates],
        "passed": final.passed,
        "deployed_model": str(deployed),
    })
    metrics["artifacts"].update({"student.onnx": exported["onnx"], "report.md": str(out_dir / "report.md"),
                                 **({"student.int8.onnx": deployed} if ptq else {})})
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
        lines.append(f"| student, ONNX INT8 (PTQ on synthetic samples) | {pct(metrics['int8_accuracy'])} | "
                     f"{metrics['model_bytes']['int8']:,} B |")
    lines += ["", "QAT is not implemented yet: the INT8 model is post-training quantized.", "",
              f"ONNX FP32 vs PyTorch: max abs error {metrics['onnx_max_abs_error']:.2e}.", "",
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
