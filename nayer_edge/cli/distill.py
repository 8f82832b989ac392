"""``nayer-edge distill``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .app import app
from .options import (
    DISTILL_OPTIONS,
    JsonOpt,
    OutOpt,
    TeacherArg,
    distill_kwargs,
    with_options,
)
from .output import print_result
from .progress import reporting


@app.command()
@with_options(*DISTILL_OPTIONS)
def distill(teacher: TeacherArg, out: OutOpt = Path("runs/distill"), as_json: JsonOpt = False, *,
            options: dict[str, Any]) -> None:
    """Distil TEACHER into a small student without any training data (NAYER)."""
    from ..distill.run import distill as run_distill

    with reporting("distill", options, as_json) as progress:
        metrics = run_distill(teacher, out_dir=out, **distill_kwargs(options, progress))
        progress.result("distill", metrics)
    print_result(metrics, as_json, "distillation")
