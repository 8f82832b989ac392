"""Verifying a deploy bundle on this machine: ``verify_bundle`` checks the hashes and that the bundle's device scripts
are this version's, then runs this installation's ``check.py`` on the bundle with the onnxruntime backend in a
subprocess (never code the bundle carries: its hashes are no signature).

Example::

    result = verify_bundle("runs/x/bundle")        # BundleIntegrityError if a file was changed
    assert result["passed"]
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

from .. import __version__
from ..core.errors import RuntimeFailure, UserError
from .device_scripts import DEVICE_SCRIPTS, device_module, device_scripts_dir

__all__ = ["verify_bundle", "BundleIntegrityError"]


class BundleIntegrityError(UserError):
    """A bundle file does not match its manifest (changed, missing or unlisted); ``file`` names it."""

    def __init__(self, file: str, message: str):
        super().__init__(message)
        self.file = file


def verify_bundle(
    bundle_dir: str | os.PathLike[str],
    *,
    labelled: str | os.PathLike[str] | None = None,
    max_latency_ms: float | None = None,
    min_teacher_retention: float | None = None,
    json: bool = False,  # shadows the module name on purpose: it mirrors the CLI flag
    latency_seconds: float = 1.0,
    measure_latency: bool = True,
    timeout: float = 600,
) -> dict[str, Any]:
    """Check a bundle on this machine: hashes first, the bundle's scripts against this installation's, then
    this installation's ``check.py`` with the onnxruntime backend in a new Python process. Returns check.py's JSON
    result (the schema of ``bundle_io.RESULT_KEYS``: ``passed``, ``gates``, ``parity``, ``latency``, ...; the notes
    on the bundle's scripts added to ``notes``) plus ``exit_code``, ``summary`` (check.py's lines) and
    ``script_notes``, which are not part of the schema; gates failing is a result, not an exception.

    Raises BundleIntegrityError (a UserError) naming the first changed, missing or unlisted file, UserError for
    anything else check.py calls bad input, and RuntimeFailure when onnxruntime failed to run the model.
    ``json=True`` also prints check.py's summary lines to stderr as they come (the CLI's ``--json`` mode prints
    the result itself).

    Example: ``verify_bundle("runs/x/bundle", max_latency_ms=5.0)["passed"]``
    """
    bundle_io = device_module("bundle_io")
    folder = Path(bundle_dir)
    manifest = _checked_manifest(bundle_io, folder)
    script_notes = _compare_scripts(folder, manifest)
    command = _check_command(folder, labelled, max_latency_ms, min_teacher_retention, latency_seconds,
                             measure_latency)
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}  # no __pycache__ inside the bundle
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)
    if json and done.stderr:
        sys.stderr.write(done.stderr)
    result = _check_result(folder, done)
    result["notes"] += script_notes
    result["exit_code"] = done.returncode
    result["summary"] = [line for line in done.stderr.splitlines() if line.strip()] + script_notes
    result["script_notes"] = script_notes
    return result


def _checked_manifest(bundle_io: ModuleType, folder: Path) -> dict[str, Any]:
    """The bundle's manifest, once every file matches its hash."""
    try:
        manifest = bundle_io.load_manifest(str(folder))
        bundle_io.verify_integrity(str(folder), manifest)
    except bundle_io.IntegrityError as err:
        raise BundleIntegrityError(err.file, f"{folder}: {err}") from None
    except bundle_io.BundleError as err:
        raise UserError(str(err)) from None
    return manifest


def _compare_scripts(folder: Path, manifest: dict[str, Any]) -> list[str]:
    """The bundle's device scripts against this installation's. Made by this version, they must be the same
    bytes (a difference is an edit with the manifest re-sealed); made by another, they may differ, and the
    note says that the device will run scripts this check did not."""
    ours = device_scripts_dir()
    for name in DEVICE_SCRIPTS:
        if not (folder / "scripts" / name).is_file():
            raise BundleIntegrityError(f"scripts/{name}", f"{folder}: scripts/{name} is missing from the bundle; "
                                                          "rebuild it with nayer-edge export")
    differing = [name for name in DEVICE_SCRIPTS
                 if (folder / "scripts" / name).read_bytes() != (ours / name).read_bytes()]
    if not differing:
        return []
    made_by = (manifest.get("versions") or {}).get("nayer_edge")
    first = f"scripts/{differing[0]}"
    if made_by == __version__:
        raise BundleIntegrityError(first, f"{folder}: {first} is not the file nayer-edge {__version__} puts in "
                                          "its bundles, though the manifest says this version made the bundle: "
                                          "it was edited and the manifest re-sealed; rebuild the bundle with "
                                          "nayer-edge export")
    listed = ", ".join(f"scripts/{name}" for name in differing)
    return [f"note: {listed} differ from nayer-edge {__version__}'s (the bundle was made by nayer-edge "
            f"{made_by}); this check ran {__version__}'s check.py, the device runs the bundle's: verify with "
            f"nayer-edge {made_by} to check those"]


def _check_command(folder: Path, labelled: str | os.PathLike[str] | None, max_latency_ms: float | None,
                   min_teacher_retention: float | None, latency_seconds: float, measure_latency: bool) -> list[str]:
    # This installation's check.py, not the bundle's: the manifest's hashes are no signature (anyone who edits
    # a file can re-seal them), so running the bundle's copy would run whatever a bundle carries.
    command = [sys.executable, str(device_scripts_dir() / "check.py"), "--bundle", str(folder),
               "--backend", "onnxruntime", "--json", "--duration-s", str(latency_seconds)]
    if labelled is not None:
        command += ["--labelled", str(labelled)]
    if max_latency_ms is not None:
        command += ["--max-latency-ms", str(max_latency_ms)]
    if min_teacher_retention is not None:
        command += ["--min-teacher-retention", str(min_teacher_retention)]
    if not measure_latency:  # e.g. on a build host, where a device's latency budget means nothing
        command += ["--no-latency"]
    return command


def _check_result(folder: Path, done: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    """check.py's JSON result; its bad-input or runtime-failure exit, no result at all, or a file it found
    changed raise."""
    if done.returncode in (2, 3):
        message = next((line for line in done.stderr.splitlines() if line.startswith("error:")),
                       done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "check.py failed")
        error = UserError if done.returncode == 2 else RuntimeFailure
        raise error(f"{folder}: {message.removeprefix('error: ')}")
    try:
        result = _json_loads(done.stdout)
    except ValueError:
        raise UserError(f"{folder}: check.py printed no result (exit {done.returncode}): "
                        f"{done.stderr.strip().splitlines()[-1] if done.stderr.strip() else 'no output'}") from None
    failed_file = (result.get("integrity") or {}).get("failed_file")
    if done.returncode == 1 and failed_file:
        raise BundleIntegrityError(failed_file, f"{folder}: {result['gates'][0]['text']}")
    return result


def _json_loads(text: str) -> dict[str, Any]:
    data = json.loads(text)
    if not isinstance(data, dict):
        raise ValueError("not an object")
    return data
