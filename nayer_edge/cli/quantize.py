"""``nayer-edge quantize``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from .app import app, console
from .options import LOG_OPTIONS, JsonOpt, Layout, TrustCodeOpt, TrustOpt, with_options
from .progress import reporting


# One parameter per command-line option (typer reads the options from the signature): the count is the interface.
@app.command("quantize")
@with_options(LOG_OPTIONS)
def quantize_command(
    run_dir: Annotated[Path, typer.Argument(help="A `nayer-edge distill` output folder.")],
    out: Annotated[Optional[Path], typer.Option("--out", help="INT8 ONNX file \\[default: RUN_DIR/student.int8.onnx].")] = None,
    layout: Annotated[Layout, typer.Option("--layout", help="ort: onnxruntime CPU (U8S8 QDQ); tensorrt: explicit symmetric Q/DQ.")] = Layout.ort,
    qat: Annotated[bool, typer.Option("--qat/--no-qat", help="Also fine-tune through fake INT8 on the synthetic samples (needs the teacher).")] = False,
    teacher: Annotated[Optional[Path], typer.Option("--teacher", help="Teacher for QAT \\[default: the one in RUN_DIR/config.json].")] = None,
    trust_pickle: TrustOpt = False,
    trust_code: TrustCodeOpt = False,
    calibration: Annotated[int, typer.Option("--calibration", help="Synthetic samples to calibrate on.")] = 512,
    eval_data: Annotated[Optional[Path], typer.Option("--eval-data", help="Labelled real data to report FP32 vs INT8 top-1.")] = None,
    as_json: JsonOpt = False, *, options: dict[str, Any],
) -> None:
    """INT8 for a distilled student, calibrated (and with --qat fine-tuned) on the run's synthetic samples."""
    from ..quantize.run import quantize

    with reporting("quantize", options, as_json) as progress:
        result = quantize(run_dir, out=out, layout=layout.value, qat=qat, teacher=teacher,
                          teacher_options={"trust_pickle": trust_pickle}, calibration=calibration,
                          eval_data=eval_data, show_progress=progress, trust_code=trust_code)
        progress.result("quantize", result)
    if as_json:
        print(json.dumps(result, indent=2))
        return
    parity = result["parity_vs_fp32"]
    console.print(f"wrote {result['int8_onnx']} ({result['method'].upper()}, {result['int8_bytes']:,} bytes vs "
                  f"{result['fp32_bytes']:,} FP32); vs FP32 on {result['check_samples']} samples: cosine "
                  f"{parity['cosine_similarity']:.4f}, top-1 agreement {parity['top1_agreement']:.2%}")
    console.print(f"deployed {result['method'].upper()}: {result['selected_by']}")
    if "int8_accuracy" in result:
        qat_part = (f", QAT INT8 {result['qat_int8_accuracy']:.2%}" if result.get("qat_int8_accuracy") is not None
                    else "")
        console.print(f"top-1 on real data: FP32 {result['fp32_onnx_accuracy']:.2%}, PTQ INT8 "
                      f"{result['ptq_int8_accuracy']:.2%}{qat_part}")
