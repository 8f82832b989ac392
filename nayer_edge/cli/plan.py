"""``nayer-edge plan``."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from .app import app, console
from .options import SCHEDULE_OPTIONS, TEACHER_OPTIONS, JsonOpt, TeacherArg, config_from, teacher_kwargs, with_options


@app.command()
@with_options(TEACHER_OPTIONS, SCHEDULE_OPTIONS)
def plan(
    teacher: TeacherArg,
    eval_samples: Annotated[int, typer.Option("--eval-samples", help="Held-out images the run would evaluate on each epoch.")] = 0,
    as_json: JsonOpt = False, *, options: dict[str, Any],
) -> None:
    """Measure the step costs here and print the schedule distill would run, without training."""
    from ..distill.run_plan import plan as run_plan

    config, chosen = config_from(options)
    result = run_plan(teacher, config=config, user_set=chosen, eval_samples=eval_samples, **teacher_kwargs(options))
    if as_json:
        print(json.dumps(result.to_dict(), indent=2))
        return
    from ..distill.planner import plan_table

    console.print(plan_table(result))
    for note in result.notes:
        console.print(f"[yellow]plan:[/] {note}")
