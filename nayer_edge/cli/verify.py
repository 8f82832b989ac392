"""``nayer-edge verify``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..core.errors import UserError
from .app import app, console, err_console
from .options import JsonOpt


def _verify_bundle(bundle: Path, eval_data: Optional[Path], reference: Optional[Path],
                   max_accuracy_drop: Optional[float], max_latency_ms: Optional[float], as_json: bool,
                   teacher: Optional[Path], min_teacher_retention: Optional[float]) -> None:
    from ..deploy.bundle_verify import verify_bundle
    from ..deploy.device_scripts import device_module

    if reference is not None or max_accuracy_drop is not None or teacher is not None:
        raise UserError("a bundle carries its own reference outputs, accuracy budget and teacher's top-1: drop "
                        "--reference, --max-accuracy-drop and --teacher")
    if eval_data is not None and not eval_data.is_dir():
        raise UserError(f"{eval_data}: for a bundle, --eval-data is an image folder (one sub-folder per class)")
    result = verify_bundle(bundle, labelled=eval_data, max_latency_ms=max_latency_ms, json=as_json,
                           min_teacher_retention=min_teacher_retention)
    if as_json:  # the schema's keys only, as check.py prints them (exit_code and summary are the library's)
        schema = device_module("bundle_io").RESULT_KEYS
        print(json.dumps({key: result[key] for key in schema}, indent=2, default=str))
    else:
        for line in result.get("summary", []):
            console.print(line, markup=False, highlight=False)
    failed = [g["name"] for g in result.get("gates", []) if not g.get("passed")]
    if failed or not result.get("passed"):
        err_console.print(f"gate failed: {', '.join(failed) or 'check'}")
        raise typer.Exit(1)


# One parameter per command-line option (typer reads the options from the signature): the count is the interface.
@app.command("verify")
def verify_command(
    model: Annotated[Path, typer.Argument(help="An ONNX model, or a deploy bundle folder (checks it as the device would, through onnxruntime).")],
    eval_data: Annotated[Optional[Path], typer.Option("--eval-data", help="Labelled real data (.npz or image folder).")] = None,
    reference: Annotated[Optional[Path], typer.Option("--reference", help="Reference model: .onnx, TorchScript, or a distill folder.")] = None,
    batch: Annotated[int, typer.Option("--batch")] = 32,
    max_accuracy_drop: Annotated[Optional[float], typer.Option("--max-accuracy-drop", help="Gate: points of top-1 below the reference.")] = None,
    max_latency_ms: Annotated[Optional[float], typer.Option("--max-latency-ms", help="Gate: p50 latency at --batch.")] = None,
    teacher: Annotated[Optional[Path], typer.Option("--teacher", help="The teacher model file (TorchScript or ONNX, with its .json), for --min-teacher-retention.")] = None,
    min_teacher_retention: Annotated[Optional[float], typer.Option("--min-teacher-retention", help="Gate: least share of the teacher's top-1 on the eval data (a bundle: on its labelled subset) [default for a bundle: its manifest's].")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Accuracy, parity and latency of an ONNX model or a bundle, with pass/fail gates (exit 1 when a gate fails)."""
    from ..deploy.verify import verify

    if model.is_dir() and (model / "manifest.json").is_file():
        _verify_bundle(model, eval_data, reference, max_accuracy_drop, max_latency_ms, as_json, teacher,
                       min_teacher_retention)
        return
    result = verify(model, eval_data=eval_data, reference=reference, batch=batch,
                    max_accuracy_drop=max_accuracy_drop, max_latency_ms=max_latency_ms, teacher=teacher,
                    min_teacher_retention=min_teacher_retention)
    if as_json:
        print(json.dumps(result.to_dict(), indent=2, default=str))
    else:
        fmt = lambda v: "—" if v is None else f"{v:.2%}"
        console.print(f"top-1 {fmt(result.accuracy)}" + (f" (reference {fmt(result.reference_accuracy)})"
                                                          if result.reference_accuracy is not None else ""))
        if result.parity is not None:
            console.print(f"parity: max abs error {result.parity.max_abs_error:.2e}, lowest cosine "
                          f"{result.parity.cosine_similarity:.6f}, top-1 agreement {result.parity.top1_agreement:.2%}")
        lat = result.latency
        console.print(f"latency at batch {lat.batch}: mean {lat.mean_ms:.3f} ms, p50 {lat.p50_ms:.3f}, p90 {lat.p90_ms:.3f}, "
                      f"p95 {lat.p95_ms:.3f}, p99 {lat.p99_ms:.3f}; {lat.throughput:,.0f} images/s; CV {lat.cv:.1%}")
        if result.teacher_accuracy is not None:
            console.print(f"teacher top-1 {fmt(result.teacher_accuracy)} on the same data")
        for gate in result.gates:
            mark = "[green]pass[/]" if gate.passed else "[red]FAIL[/]"
            rule = "≥" if gate.rule == ">=" else "≤"
            console.print(f"gate {gate.name}: {gate.value:.4g} (limit {rule} {gate.limit:.4g}) {mark}")
    failed = [g.name for g in result.gates if not g.passed]
    if failed:
        err_console.print(f"gate failed: {', '.join(failed)}")
        raise typer.Exit(1)
