"""The typer application every command registers on, and the consoles they print to."""

from __future__ import annotations

import typer
from rich.console import Console

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Data-free distillation (NAYER) and edge deployment of image classifiers.")
console = Console()
err_console = Console(stderr=True)
