"""The Markdown report of a compress run (``report.md``): one function per section."""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Any

from ..core.optional import require
from ..quantize import QAT_NO_MODEL
from .gates import PROXY_NOTE, failure_lines
from .verify import Gate


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{value:.2%}"


def _accuracy(metrics: dict[str, Any], target: str) -> list[str]:
    """Result and top-1 of teacher, student and the deployed model."""
    lines: list[str] = []

    def mark(precision: str) -> str:
        return ", **deployed**" if metrics["precision"] == precision else ""

    lines += [f"# nayer-edge compress report: {target}", "",
             f"**Result: {'PASS' if metrics['passed'] else 'FAIL'}**: deployed model `{Path(metrics['deployed_model']).name}` "
             f"({metrics['precision']}).", *_deployed_line(metrics), "",
             "## Accuracy (top-1 on held-out real data)", "", "| model | top-1 | parameters / bytes |", "|---|---:|---:|",
             f"| teacher | {_pct(metrics['teacher_accuracy'])} | {metrics['teacher_params']:,} params |",
             f"| student, PyTorch FP32 | {_pct(metrics['student_accuracy'])} | {metrics['student_params']:,} params |",
             f"| student, ONNX FP32{mark('fp32')} | {_pct(metrics['fp32_onnx_accuracy'])} | {metrics['model_bytes']['fp32']:,} B |"]
    if metrics["int8_accuracy"] is not None:
        lines.append(f"| student, ONNX INT8 ({metrics['int8_method'].upper()}){mark('int8')} | "
                     f"{_pct(metrics['int8_accuracy'])} | {metrics['model_bytes']['int8']:,} B |")
    if metrics["precision"] == "fp16":
        lines.append(f"| student, ONNX FP16{mark('fp16')} | {_pct(metrics.get('fp16_accuracy'))} | "
                     f"{metrics['model_bytes']['fp16']:,} B |")
    return lines


def _deployed_line(metrics: dict[str, Any]) -> list[str]:
    """Which model was deployed and why (metrics ``deployed``; absent in run folders made before it was)."""
    deployed = metrics.get("deployed")
    if not deployed:
        return []
    return ["", f"Deployed {deployed['precision'].upper()}: {deployed['reason']}."]


def _int8(metrics: dict[str, Any]) -> list[str]:
    """PTQ against QAT, and which was deployed (the synthetic hold-out chooses, never real data)."""
    lines: list[str] = []
    if metrics.get("int8_candidates"):
        lines += ["", "### INT8: post-training quantization vs quantization-aware fine-tuning", "",
                  "Both calibrated on the run's synthetic samples; neither saw real data. QAT is deployed when it "
                  "reproduces the FP32 student more faithfully than PTQ on *held-out synthetic* samples (lower KL "
                  "from the FP32 logits); the real data below never chooses.", "",
                  "| INT8 method | top-1 (real) | KL from FP32 (synthetic hold-out) | top-1 agreement with FP32 "
                  "| agreement with teacher | cosine vs FP32 |",
                  "|---|---:|---:|---:|---:|---:|"]
        for name, cand in metrics["int8_candidates"].items():
            outcome = next((key for key in QAT_NO_MODEL if key in cand), None)
            if outcome is not None:
                lines.append(f"| {name.upper()} | {outcome}: {cand[outcome]} | | | | |")
                continue
            real = metrics.get(f"{name}_int8_accuracy")
            parity = cand["parity_vs_fp32"]
            kl = f"{cand['fp32_kl']:.2e}" if cand.get("fp32_kl") is not None else "n/a"
            lines.append(f"| {name.upper()} | {_pct(real)} | {kl} | {_pct(parity.get('top1_agreement'))} | "
                         f"{_pct(cand.get('teacher_agreement'))} | {parity['cosine_similarity']:.4f} |")
        lines += ["", f"Deployed: **{metrics['int8_method'].upper()}**: {metrics['int8_selected_by']}."]
        training = metrics["int8_candidates"].get("qat", {}).get("training")
        if training:
            lines.append(f"QAT: {training['steps']} steps ({training['epochs']:g} passes over the memory, lr "
                         f"{training['lr']:g}, KD target {training.get('fp32_anchor', 0):.0%} FP32 student / "
                         f"{1 - training.get('fp32_anchor', 0):.0%} teacher) in {training['seconds']:.1f} s, BatchNorm folded, "
                         f"{training['quantizers']} activation quantizers; KD loss {training['initial_loss']:.4f} → "
                         f"{training['final_loss']:.4f}.")
            if training.get("kept_step") is not None:
                lines[-1] += (f" Weights kept from step {training['kept_step']} of {training['steps']}, chosen on "
                              f"{training['validation_samples']} samples it did not train on (KL from FP32 "
                              f"{training['validation_kl_start']:.2e} at the start, {training['validation_kl_kept']:.2e} "
                              "kept).")
    return lines


def _latency(metrics: dict[str, Any]) -> list[str]:
    """ONNX parity and latency."""
    lines: list[str] = []
    lines += ["", f"ONNX FP32 vs PyTorch: max abs error {metrics['onnx_max_abs_error']:.2e}.", "",
              "## Latency (onnxruntime CPU, after warm-up)" + (" on this host, not the device" if metrics.get("bundle")
                                                              else ""), "",
              "| precision | batch | p50 ms | p90 ms | p99 ms | images/s |", "|---|---:|---:|---:|---:|---:|"]
    for name, lat in metrics["latency"].items():
        lines.append(f"| {name} | {lat['batch']} | {lat['p50_ms']:.3f} | {lat['p90_ms']:.3f} | {lat['p99_ms']:.3f} | "
                     f"{lat['throughput']:,.0f} |")
    if len(metrics["latency"]) > 1 and not metrics.get("bundle"):
        lines += ["", "Timed side by side (alternating turns, the same input and session settings)."]

    return lines


def _gates(metrics: dict[str, Any]) -> list[str]:
    """Every gate, and a line for each that failed."""
    lines: list[str] = []
    lines += ["", "## Gates", "", "| gate | limit | value | result |", "|---|---:|---:|---|"]
    lines += [f"| {g['name']} | {'≥' if g.get('rule') == '>=' else '≤'} {g['limit']:.4g} | {g['value']:.4g} | "
              f"{'pass' if g['passed'] else '**FAIL**'} |" for g in metrics["gates"]] or ["| (none configured) | | | |"]
    if any(g["name"] == "teacher_agreement_synthetic" for g in metrics["gates"]):
        lines += ["", f"Judged against the teacher without eval data: {PROXY_NOTE} (how well it tracks real "
                  "accuracy: BENCHMARKS.md, release gates)."]
    failed = failure_lines(metrics, [Gate(**g) for g in metrics["gates"]])
    if failed:
        lines += [""] + [f"- **{line}**" for line in failed]
    return lines


def _bundle(metrics: dict[str, Any]) -> list[str]:
    """The deploy bundle and its host check (TensorRT targets)."""
    lines: list[str] = []
    if metrics.get("bundle"):
        bundle = metrics["bundle"]
        check = bundle["host_check"]
        lines += ["", "## Deploy bundle", "",
                  f"`{Path(bundle['dir']).name}/` and `{Path(bundle['archive']).name}`: the ONNX, `manifest.json` (sha256 "
                  "of every file), labels, reference inputs and outputs, a DeepStream nvinfer config, the device "
                  "scripts and a README with the exact commands.", "",
                  f"Checked here with `check.py --backend onnxruntime` (this installation's copy, the same bytes as the bundle's): "
                  f"**{'pass' if check['passed'] else 'FAIL'}**"
                  + (f" (lowest parity cosine {check['parity']['min_cosine']:.4f}, top-1 agreement "
                     f"{check['parity']['top1_agreement']:.2%})" if isinstance(check.get("parity"), dict) else "") + ".",
                  "The TensorRT check (engine build, parity, accuracy, latency) runs on the device: "
                  "`python3 scripts/build_engine.py` then `python3 scripts/check.py --backend tensorrt` "
                  "(see the bundle's README)."]
    return lines


def _training(metrics: dict[str, Any], torch_version: str, onnxruntime_version: str) -> list[str]:
    """Samples, curves, the schedule that ran, and the versions."""
    lines: list[str] = []
    lines += ["", "## Synthetic samples and training", "", "![samples](samples.png)", "", "![curves](curves.png)", "",
              f"{metrics['epochs']} epochs in {metrics['distill_seconds']:.0f} s ({metrics['stopped_by']}); "
              f"{metrics['synthetic_samples']:,} synthetic samples generated, {metrics['memory_samples']:,} kept.", "",
              "## Configuration and versions", "", "The resolved configuration is in `config.json`.", "",
              f"torch {torch_version}, onnxruntime {onnxruntime_version}, Python {platform.python_version()}, "
              f"{platform.machine()}.", ""]
    return lines


def render_report(metrics: dict[str, Any], target: str) -> str:
    """A Markdown report of a compress run (accuracies, sizes, latency, gates, pictures, config, versions)."""
    import torch

    onnxruntime = require("onnxruntime")
    lines = [*_accuracy(metrics, target), *_int8(metrics), *_latency(metrics), *_gates(metrics), *_bundle(metrics),
             *_training(metrics, torch.__version__, onnxruntime.__version__)]
    return "\n".join(lines)
