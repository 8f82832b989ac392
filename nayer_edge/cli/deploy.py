"""``nayer-edge deploy``: every stage after distillation, for a target (what ``export RUN_DIR --target`` also does)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from .app import app
from .options import AgreementOpt, JsonOpt, Precision, RetentionOpt, TrustCodeOpt, TrustOpt
from .output import fail_on_gates, print_deployment

RunDirArg = Annotated[Path, typer.Argument(help="A `nayer-edge distill` output folder.")]
DeployPrecisionOpt = Annotated[Optional[Precision], typer.Option("--precision", help="Default: the target's.")]
DeployQatOpt = Annotated[Optional[bool], typer.Option("--qat/--no-qat", help="Quantization-aware fine-tuning \\[default: on for INT8].")]
DeployEvalOpt = Annotated[Optional[Path], typer.Option("--eval-data", help="Labelled real data for the accuracy gate and the bundle.")]
DeployTeacherOpt = Annotated[Optional[Path], typer.Option("--teacher", help="For QAT and the gates against the teacher \\[default: the one in RUN_DIR/config.json].")]


# One parameter per command-line option (typer reads the options from the signature): the count is the interface.
@app.command("deploy")
def deploy_command(
    run_dir: RunDirArg,
    target: Annotated[str, typer.Option("--target", help="Deployment target (nayer-edge targets).")] = "cpu-x86",
    precision: DeployPrecisionOpt = None, qat: DeployQatOpt = None, eval_data: DeployEvalOpt = None,
    teacher: DeployTeacherOpt = None, min_teacher_retention: RetentionOpt = None,
    min_teacher_agreement: AgreementOpt = None, trust_pickle: TrustOpt = False, trust_code: TrustCodeOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Every stage after distill, for a target: its precision (INT8 after QAT), gates, report, TensorRT bundle.

    Exit 1 when a gate fails. The same as `nayer-edge export RUN_DIR --target T`.
    """
    run_deploy(run_dir, target=target, precision=precision, qat=qat, eval_data=eval_data, teacher=teacher,
               min_teacher_retention=min_teacher_retention, min_teacher_agreement=min_teacher_agreement,
               trust_pickle=trust_pickle, trust_code=trust_code, as_json=as_json)


# The options of `deploy`, one keyword each, shared with `export --target`.
def run_deploy(run_dir: Path, *, target: str, precision: Optional[Precision], qat: Optional[bool],
               eval_data: Optional[Path], teacher: Optional[Path], min_teacher_retention: Optional[float],
               min_teacher_agreement: Optional[float], trust_pickle: bool, trust_code: bool, as_json: bool) -> None:
    """``deploy`` through the library, its result printed (JSON with ``as_json``); exit 1 when a gate fails."""
    from ..deploy.compress import deploy

    metrics = deploy(run_dir, target=target, eval_data=eval_data, precision=precision.value if precision else None,
                     qat=qat, teacher=teacher, trust_pickle=trust_pickle, trust_code=trust_code,
                     min_teacher_retention=min_teacher_retention, min_teacher_agreement=min_teacher_agreement,
                     show_progress=not as_json or sys.stderr.isatty())
    if as_json:
        print(json.dumps({k: v for k, v in metrics.items() if k != "history"}, indent=2))
    else:
        print_deployment(metrics)
    fail_on_gates(metrics)
