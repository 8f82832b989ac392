"""The ``nayer-edge`` command line: a thin shell over the library functions of the same names, one module per
command.

Each command imports the library it runs inside itself, so that ``nayer-edge --help``, ``targets`` and a bad
option answer without importing torch.
"""

from __future__ import annotations

import os
import sys

import typer

from ..core.errors import UserError
from ..core.interrupt import Interrupted, abort_on_signals

# Importing a command's module registers it on the app, in the order --help lists them.
from . import compress, demo, deploy, distill, export, inspect, lists, plan, quantize, verify  # noqa: F401 - importing a command module registers its command
from .app import app, err_console
from .errors import (
    EXIT_RUNTIME_FAILURE,
    PROGRAM,
    click_errors,
    interrupted_line,
    is_click_error,
    runtime_failure_line,
    usage_line,
    warning_line,
)


def main() -> None:
    import warnings

    import click

    abort_on_signals()
    warnings.showwarning = warning_line
    try:
        # Not standalone: Click hands its usage errors over (one line here, not a box); --help and typer.Exit come
        # back as an exit code.
        code = app(prog_name=PROGRAM, standalone_mode=False)
    except click_errors() as err:
        if is_click_error(err, "NoArgsIsHelpError"):  # a bare command: its help (Typer has printed it, Click puts it here)
            if err.format_message().strip():
                click.echo(err.format_message(), err=True)
            sys.exit(err.exit_code)
        err_console.print(usage_line(err), markup=False, highlight=False, soft_wrap=True)
        sys.exit(2 if is_click_error(err, "UsageError") else err.exit_code)
    except (click.exceptions.Abort, typer.Abort):
        err_console.print("aborted", markup=False, highlight=False)
        sys.exit(1)
    except UserError as err:
        err_console.print(f"error: {err}", markup=False, highlight=False, soft_wrap=True)
        sys.exit(2)
    except Interrupted as err:
        if os.environ.get("RANK", "0") in ("", "0"):  # under torchrun, rank 0 says it for all
            err_console.print(interrupted_line(err, sys.argv[1:]), markup=False, highlight=False, soft_wrap=True)
        sys.exit(err.exit_code)
    except Exception as err:  # a runtime failure (onnxruntime raised, out of memory, a bug): exit 3, one line
        err_console.print(runtime_failure_line(err), markup=False, highlight=False, soft_wrap=True)
        if os.environ.get("NAYER_EDGE_TRACEBACK"):
            raise
        sys.exit(EXIT_RUNTIME_FAILURE)
    if isinstance(code, int) and code:
        sys.exit(code)  # typer.Exit(1) of a failed gate
