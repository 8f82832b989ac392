"""``nayer-edge demo``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from .app import app, console
from .options import LOG_OPTIONS, JsonOpt, ResumeOpt, with_options
from .output import fail_on_gates, print_deployment, print_result
from .progress import reporting


# One option per thing a user may change in the demo's job; --teacher-only turns it into the teacher's writer.
@app.command()
@with_options(LOG_OPTIONS)
def demo(
    out: Annotated[Path, typer.Option("--out", help="Output folder.")] = Path("runs/demo"),
    target: Annotated[str, typer.Option("--target", help="Deployment target (nayer-edge targets).")] = "cpu-x86",
    time_budget: Annotated[Optional[float], typer.Option("--time-budget", help="Seconds for the whole job (distillation planned to fit) \\[default: 170].")] = None,
    epochs: Annotated[Optional[int], typer.Option("--epochs")] = None,
    seed: Annotated[Optional[int], typer.Option("--seed")] = None,
    resume: ResumeOpt = False, as_json: JsonOpt = False,
    teacher_only: Annotated[Optional[Path], typer.Option(
        "--teacher-only", metavar="DIR", help="Only write the digits teacher (digits_teacher.pt, its .json metadata, "
        "digits_heldout.npz) into DIR, for a compress of one's own, and stop.")] = None,
    *, options: dict[str, Any],
) -> None:
    """The main job on a built-in teacher: handwritten digits, compressed without their images."""
    if teacher_only is not None:
        _teacher_only(teacher_only, as_json, {"--out": out != Path("runs/demo"), "--target": target != "cpu-x86",
                                              "--time-budget": time_budget is not None, "--epochs": epochs is not None,
                                              "--seed": seed is not None, "--resume": resume})
        return
    from ..demo.run import demo as run_demo
    from ..distill.config import chosen_keys, load_config

    overrides = {"time_budget": time_budget, "epochs": epochs, "seed": seed}
    config = load_config("demo-digits", overrides)
    with reporting("demo", options, as_json) as progress:
        metrics = run_demo(out, config=config, show_progress=progress, target=target, resume=resume,
                           user_set=chosen_keys("demo-digits", overrides))
        progress.result("demo", metrics)
    print_result(metrics, as_json, f"demo: digits teacher → student for {metrics['target']}, no training data")
    if not as_json:
        print_deployment(metrics)
    fail_on_gates(metrics)


def _teacher_only(folder: Path, as_json: bool, job_options: dict[str, bool]) -> None:
    from ..core.errors import UserError
    from ..demo.digits import METADATA_FILE, write_digits_teacher

    given = [name for name, set_ in job_options.items() if set_]
    if given:
        raise UserError(f"--teacher-only writes the teacher and stops; {', '.join(given)} belong to the demo's job: "
                        "drop them, or drop --teacher-only")
    teacher = write_digits_teacher(folder)
    result = {"teacher": str(teacher.teacher_path), "metadata": str(folder / METADATA_FILE),
              "eval_data": str(teacher.eval_path), "teacher_accuracy": teacher.accuracy}
    if as_json:
        print(json.dumps(result, indent=2))
        return
    console.print(f"digits teacher (held-out top-1 {teacher.accuracy:.2%}): {result['teacher']} with "
                  f"{result['metadata']}; held-out digits: {result['eval_data']}",
                  markup=False, highlight=False, soft_wrap=True)
    console.print(f"compress it: nayer-edge compress {result['teacher']} --eval-data {result['eval_data']}",
                  markup=False, highlight=False, soft_wrap=True)
