"""The typer application every command registers on, its own options (--version; typer's shell completion), and
the consoles they print to."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console

app = typer.Typer(add_completion=True, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Data-free distillation (NAYER) and edge deployment of image classifiers.")
console = Console()
err_console = Console(stderr=True)


def installed_version() -> str:
    """The installed distribution's version (importlib.metadata); the package's own from a bare checkout."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("nayer-edge")
    except PackageNotFoundError:
        from .. import __version__

        return __version__


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"nayer-edge {installed_version()}")
        raise typer.Exit()


@app.callback()
def _app_options(
    version: Annotated[bool, typer.Option("--version", callback=_print_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    # No docstring: the app's help is Typer(help=...) above.
    pass
