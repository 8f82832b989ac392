"""Errors, interrupts and warnings as one line each."""

from __future__ import annotations

import os
import shlex

import typer

from ..core.interrupt import Interrupted
from .app import err_console


def interrupted_line(err: Interrupted, argv: list[str]) -> str:
    """One line: what stopped the run, where its checkpoint is, and the command that continues it."""
    # Under torchrun the command is torchrun's, whose own options are not known here.
    program = "torchrun <the same options> -m nayer_edge" if _under_torchrun() else "nayer-edge"
    again = f"{program} {shlex.join(argv)}"
    resume = f"{program} {shlex.join([*argv, *([] if '--resume' in argv else ['--resume'])])}"
    if err.graceful:
        return (f"stopped by {err.signal_name} {err.where}: checkpoint {err.checkpoint}; "
                f"resume with: {resume}")
    if err.checkpoint is not None:
        return (f"aborted by {err.signal_name}; the last checkpoint, {err.checkpoint}, is intact; "
                f"resume with: {resume}")
    if argv and argv[0] in ("distill", "compress", "demo"):
        return f"aborted by {err.signal_name} before any checkpoint was written; start again with: {again}"
    return f"aborted by {err.signal_name}"


def _under_torchrun() -> bool:
    return os.environ.get("WORLD_SIZE", "1") not in ("", "1")


PROGRAM = "nayer-edge"
EXIT_RUNTIME_FAILURE = 3  # exit codes: 0 pass, 1 a gate failed, 2 bad input, 3 a runtime failure


def runtime_failure_line(err: BaseException) -> str:
    """One line for a failure the input did not cause (onnxruntime raised, out of memory): what raised it, and
    how to see where."""
    from ..core.errors import RuntimeFailure, first_line

    if isinstance(err, RuntimeFailure):
        return f"error: {first_line(err)}"
    return (f"error: runtime failure: {type(err).__name__}: {first_line(err, default='(no message)')} "
            "(NAYER_EDGE_TRACEBACK=1 shows where)")


def usage_line(err: Exception) -> str:
    """Click's message on one line, and where the command's options are listed."""
    message = " ".join(line.strip() for line in err.format_message().splitlines() if line.strip()).rstrip(".")
    ctx = getattr(err, "ctx", None)
    command = ctx.command_path if ctx is not None else PROGRAM
    return f"error: {message}; see '{command} --help'"


def is_click_error(err: BaseException, name: str) -> bool:
    """``err`` is Click's ``name`` (by name: Typer 0.2x raises the classes of the Click it carries, typer._click)."""
    return any(cls.__name__ == name for cls in type(err).__mro__)


def click_errors() -> tuple[type[Exception], ...]:
    import click

    return tuple({click.ClickException, getattr(typer, "TyperException", click.ClickException)})


def warning_line(message, category, filename, lineno, file=None, line=None) -> None:
    """A warning as one line on stderr: what it says, not the library's source line that raised it."""
    text = " ".join(part.strip() for part in str(message).splitlines() if part.strip()) or category.__name__
    err_console.print(f"warning: {text}", markup=False, highlight=False, soft_wrap=True)
