"""``nayer-edge distill``."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from .app import app
from .options import (
    RUN_OPTIONS,
    SCHEDULE_OPTIONS,
    TEACHER_OPTIONS,
    JsonOpt,
    OutOpt,
    TeacherArg,
    clock_start,
    config_from,
    teacher_kwargs,
    with_options,
)
from .output import print_result


@app.command()
@with_options(TEACHER_OPTIONS, SCHEDULE_OPTIONS, RUN_OPTIONS)
def distill(teacher: TeacherArg, out: OutOpt = Path("runs/distill"), as_json: JsonOpt = False, *,
            options: dict[str, Any]) -> None:
    """Distil TEACHER into a small student without any training data (NAYER)."""
    from ..distill.run import distill as run_distill

    config, chosen = config_from(options)
    metrics = run_distill(teacher, out_dir=out, config=config, eval_data=options["eval_data"],
                          resume=options["resume"], show_progress=not as_json or sys.stderr.isatty(),
                          user_set=chosen, clock_start=clock_start(), **teacher_kwargs(options))
    print_result(metrics, as_json, "distillation")
