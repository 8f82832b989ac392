"""What the commands print: result tables, deployment summaries, failed gates."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from ..distill import run_folder as rf
from .app import console, err_console


def print_summary(metrics: dict[str, Any], title: str) -> None:
    table = Table(title=title)
    table.add_column("model")
    table.add_column("params", justify="right")
    table.add_column("top-1 (held-out real data)", justify="right")
    fmt = lambda v: "—" if v is None else f"{v:.2%}"
    table.add_row("teacher", f"{metrics['teacher_params']:,}", fmt(metrics["teacher_accuracy"]))
    table.add_row(f"student ({metrics['student']})", f"{metrics['student_params']:,}", fmt(metrics["student_accuracy"]))
    console.print(table)
    if metrics["teacher_accuracy"] and metrics["student_accuracy"] is not None:
        console.print(f"student reaches {metrics['student_accuracy'] / metrics['teacher_accuracy']:.1%} of the "
                      f"teacher's accuracy with {metrics['compression']}× fewer parameters")
    agreement = metrics["agreement"]
    console.print(f"teacher–student agreement on held-out synthetic samples: {fmt(agreement)}; "
                  f"{metrics['epochs']} epochs in {metrics['distill_seconds']:.0f} s ({metrics['stopped_by']})")
    for note in metrics.get("notes", []):
        console.print(f"[yellow]note:[/] {note}")
    artifacts = metrics["artifacts"]
    console.print(f"artefacts in {Path(artifacts.get(rf.METRICS) or artifacts[rf.STUDENT_TS]).parent}")


def fail_on_gates(metrics: dict[str, Any]) -> None:
    """Exit 1 with one line per failed gate, saying what it means, when a gate failed."""
    from ..deploy.gates import failure_lines
    from ..deploy.verify import Gate

    if metrics["passed"]:
        return
    for line in failure_lines(metrics, [Gate(**g) for g in metrics["gates"]]):
        err_console.print(f"gate failed: {line}", markup=False, highlight=False, soft_wrap=True)
    raise typer.Exit(1)


def print_deployment(metrics: dict[str, Any]) -> None:
    fmt = lambda v: "—" if v is None else f"{v:.2%}"
    console.print(f"ONNX FP32 top-1 {fmt(metrics['fp32_onnx_accuracy'])}"
                  + (f", INT8 top-1 {fmt(metrics['int8_accuracy'])}" if metrics["int8_accuracy"] is not None else ""))
    for name, lat in metrics["latency"].items():
        console.print(f"{name}: p50 {lat['p50_ms']:.3f} ms at batch {lat['batch']} ({lat['throughput']:,.0f} images/s)")
    deployed = metrics.get("deployed")
    if deployed:
        console.print(f"deployed {deployed['precision'].upper()}: {deployed['reason']}", markup=False, highlight=False)
    for gate in metrics["gates"]:
        rule = "≥" if gate.get("rule") == ">=" else "≤"
        console.print(f"gate {gate['name']}: {gate['value']:.4g} (limit {rule} {gate['limit']:.4g}) "
                      f"{'[green]pass[/]' if gate['passed'] else '[red]FAIL[/]'}")
    console.print(f"report: {metrics['artifacts'][rf.REPORT]}")


def print_result(metrics: dict[str, Any], as_json: bool, title: str) -> None:
    if as_json:
        print(json.dumps({k: v for k, v in metrics.items() if k != "history"}, indent=2))
    else:
        print_summary(metrics, title)
