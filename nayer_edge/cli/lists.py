"""``nayer-edge models``, ``targets`` and ``recipes``."""

from __future__ import annotations

import json

from rich.table import Table

from .app import app, console
from .options import JsonOpt


@app.command()
def models() -> None:
    """List the student architectures in the zoo."""
    from ..zoo import list_models

    for name in list_models():
        console.print(name)


@app.command()
def targets(as_json: JsonOpt = False) -> None:
    """List the deployment targets (recipes/targets/*.yaml)."""
    from ..deploy.targets import describe_targets

    rows = describe_targets()
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    table = Table(title="deployment targets", expand=False)
    columns = ("name", "aliases", "runtime", "precision", "quantization", "batch", "max_accuracy_drop",
               "max_latency_ms", "min_teacher_retention", "min_teacher_agreement")
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*(str(row[c]) for c in columns))
    console.print(table)


@app.command()
def recipes() -> None:
    """List the built-in recipes."""
    from ..distill.config import list_recipes

    for name in list_recipes():
        console.print(name)
