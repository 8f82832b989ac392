"""What a command shows while it runs, from its --quiet, --verbose, --log-json and --json options: progress on
stderr (rich live bars on a terminal, one line per epoch and stage elsewhere), a JSON-lines log, both or none."""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from typing import Any, Iterator

import typer

from ..core.errors import UserError, first_line
from ..core.interrupt import Interrupted
from ..core.progress import Progress, console_progress
from .app import err_console
from .errors import interrupted_line
from .options import clock_start


def progress_from(options: dict[str, Any], as_json: bool) -> Progress:
    """The command's progress. On the console unless ``--quiet``, or ``--json`` on a stderr that is no terminal
    (a program reads the result; ``--verbose`` shows the lines anyway); ``--log-json FILE`` gets every event.
    Under torchrun only rank 0 reports."""
    from ..core.progress_sinks import JsonLines

    if os.environ.get("RANK", "0") not in ("", "0"):
        return Progress()
    log = [JsonLines(options["log_json"])] if options.get("log_json") else []
    verbose = bool(options.get("verbose"))
    on_console = not options.get("quiet") and (not as_json or verbose or err_console.is_terminal)
    if on_console:
        return console_progress(verbose=verbose, started=clock_start(), extra=log)
    return Progress(log, verbose=verbose, started=clock_start())


@contextmanager
def reporting(command: str, options: dict[str, Any], as_json: bool) -> Iterator[Progress]:
    """The command's progress while its body runs: a ``start`` event first; a failure (bad input, a signal, a
    crash) ends the log with an ``error`` event (the body sends ``result`` itself); the bars stop either way."""
    from .. import __version__

    progress = progress_from(options, as_json)
    progress.emit("start", command=command, argv=sys.argv[1:], version=__version__)
    with progress:
        try:
            yield progress
        except UserError as err:
            progress.failed(command, 2, first_line(err))
            raise
        except Interrupted as err:
            progress.failed(command, err.exit_code, interrupted_line(err, sys.argv[1:]))
            raise
        except typer.Exit:
            raise
        except BaseException as err:
            progress.failed(command, 1, f"{type(err).__name__}: {first_line(err)}")
            raise
