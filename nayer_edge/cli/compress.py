"""``nayer-edge compress``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from .app import app
from .options import (
    DISTILL_OPTIONS,
    AgreementOpt,
    JobOpt,
    JsonOpt,
    OptionalTeacherArg,
    OutOpt,
    Precision,
    RetentionOpt,
    clock_start,
    config_overrides,
    given_options,
    teacher_kwargs,
    with_options,
)
from .output import fail_on_gates, print_deployment, print_result
from .progress import reporting


# One parameter per command-line option (typer reads the options from the signature): the count is the interface.
@app.command()
@with_options(*DISTILL_OPTIONS)
def compress(
    ctx: typer.Context,
    teacher: OptionalTeacherArg = None,
    job_file: JobOpt = None,
    target: Annotated[str, typer.Option("--target", help="Deployment target (nayer-edge targets).")] = "cpu-x86",
    out: OutOpt = Path("runs/compress"),
    precision: Annotated[Optional[Precision], typer.Option("--precision", help="Default: the target's.")] = None,
    qat: Annotated[Optional[bool], typer.Option("--qat/--no-qat", help="INT8 quantization-aware fine-tuning on the synthetic samples \\[default: on for INT8].")] = None,
    max_accuracy_drop: Annotated[Optional[float], typer.Option("--max-accuracy-drop", help="Gate: top-1 points below the FP32 student.")] = None,
    max_latency_ms: Annotated[Optional[float], typer.Option("--max-latency-ms", help="Gate: p50 latency at the target's batch.")] = None,
    min_teacher_retention: RetentionOpt = None, min_teacher_agreement: AgreementOpt = None,
    as_json: JsonOpt = False, *, options: dict[str, Any],
) -> None:
    """Distil, quantize, export and verify for a deployment target; exit 1 when a gate fails."""
    from ..deploy.job import compress_arguments, load_job

    job = load_job(job_file) if job_file is not None else None  # read and checked before torch is imported
    command_line = {"teacher": teacher, "target": target, "out": out, "precision": precision.value if precision else None,
                    "qat": qat, "max_accuracy_drop": max_accuracy_drop, "max_latency_ms": max_latency_ms,
                    "min_teacher_retention": min_teacher_retention, "min_teacher_agreement": min_teacher_agreement,
                    "eval_data": options["eval_data"], "recipe": options["recipe"], **teacher_kwargs(options),
                    "config_overrides": config_overrides(options)}
    arguments = compress_arguments(job, command_line, given_options(ctx))
    from ..deploy.compress import compress as run_compress

    with reporting("compress", options, as_json) as progress:
        metrics = run_compress(**arguments, clock_start=clock_start(), resume=options["resume"],
                               show_progress=progress)
        progress.result("compress", metrics)
    print_result(metrics, as_json, f"compress → {metrics['target']}")
    if not as_json:
        print_deployment(metrics)
    fail_on_gates(metrics)
