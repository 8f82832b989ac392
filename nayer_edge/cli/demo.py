"""``nayer-edge demo``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from .app import app
from .options import LOG_OPTIONS, JsonOpt, ResumeOpt, with_options
from .output import fail_on_gates, print_deployment, print_result
from .progress import reporting


@app.command()
@with_options(LOG_OPTIONS)
def demo(
    out: Annotated[Path, typer.Option("--out", help="Output folder.")] = Path("runs/demo"),
    target: Annotated[str, typer.Option("--target", help="Deployment target (nayer-edge targets).")] = "cpu-x86",
    time_budget: Annotated[Optional[float], typer.Option("--time-budget", help="Seconds for the whole job (distillation planned to fit) \\[default: 170].")] = None,
    epochs: Annotated[Optional[int], typer.Option("--epochs")] = None,
    seed: Annotated[Optional[int], typer.Option("--seed")] = None,
    resume: ResumeOpt = False, as_json: JsonOpt = False, *, options: dict[str, Any],
) -> None:
    """The main job on a built-in teacher: handwritten digits, compressed without their images."""
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
