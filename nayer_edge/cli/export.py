"""``nayer-edge export``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..distill import run_folder as rf
from .app import app, console, err_console
from .deploy import run_deploy
from .options import AgreementOpt, JsonOpt, Precision, RetentionOpt, TrustCodeOpt, TrustOpt


# One parameter per command-line option (typer reads the options from the signature): the count is the interface.
@app.command("export")
def export_command(
    run_dir: Annotated[Path, typer.Argument(help="A `nayer-edge distill` output folder.")],
    out: Annotated[Optional[Path], typer.Option("--out", help="ONNX file \\[default: RUN_DIR/student.onnx].")] = None,
    batch: Annotated[Optional[int], typer.Option("--batch", help="Static batch size \\[default: dynamic].")] = None,
    fold_normalization: Annotated[bool, typer.Option("--fold-normalization/--no-fold-normalization",
                                                     help="Take images in [0, 1] and normalise inside the graph.")] = True,
    opset: Annotated[int, typer.Option("--opset")] = 17,
    target: Annotated[Optional[str], typer.Option("--target", help="Build everything for a target instead: its precision (INT8 after QAT), gates, report, and for TensorRT targets the deploy bundle.")] = None,
    precision: Annotated[Optional[Precision], typer.Option("--precision", help="With --target; default: the target's.")] = None,
    qat: Annotated[Optional[bool], typer.Option("--qat/--no-qat", help="With --target: quantization-aware fine-tuning \\[default: on for INT8].")] = None,
    eval_data: Annotated[Optional[Path], typer.Option("--eval-data", help="With --target: labelled real data for the accuracy gate and the bundle.")] = None,
    teacher: Annotated[Optional[Path], typer.Option("--teacher", help="With --target, for QAT and the gates against the teacher \\[default: the one in RUN_DIR/config.json].")] = None,
    min_teacher_retention: RetentionOpt = None, min_teacher_agreement: AgreementOpt = None,
    trust_pickle: TrustOpt = False,
    trust_code: TrustCodeOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Export a distilled student to ONNX, checked against PyTorch in onnxruntime (or, with --target, what `deploy` does)."""
    from ..onnx_model.exporter import ParityError
    from ..onnx_model.student import export

    if target is not None:
        run_deploy(run_dir, target=target, precision=precision, qat=qat, eval_data=eval_data, teacher=teacher,
                   min_teacher_retention=min_teacher_retention, min_teacher_agreement=min_teacher_agreement,
                   trust_pickle=trust_pickle, trust_code=trust_code, as_json=as_json)
        return
    try:
        result = export(run_dir, out or run_dir / rf.STUDENT_ONNX, batch=batch, fold_normalization=fold_normalization,
                        opset=opset, trust_code=trust_code)
    except ParityError as err:
        err_console.print(f"export failed parity: {err}", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None
    if as_json:
        print(json.dumps(result, indent=2))
    else:
        parity = result["parity"]
        console.print(f"wrote {result['onnx']} ({result['bytes']:,} bytes, input {result['input']}, opset {opset}); "
                      f"max abs error vs PyTorch {parity['max_abs_error']:.2e}, cosine {parity['cosine_similarity']:.6f}")
