"""Putting a bundle staged in a temporary folder in place: its files listed and fsynced, the folder swapped in
for the old bundle (never half of either in its place), and ``<bundle>.tar.gz`` written as reproducible bytes."""

from __future__ import annotations

import gzip
import io
import os
import shutil
import tarfile
import tempfile
from pathlib import Path

from ..core.atomic import atomic_write, fsync_dir
from ..core.interrupt import signals_deferred

__all__ = ["umask", "tree", "fsync_tree", "replace_dir", "write_archive"]


def umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def tree(folder: Path) -> list[str]:
    """Every file under ``folder``, as sorted POSIX paths relative to it."""
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def fsync_tree(folder: Path) -> None:
    for rel in tree(folder):
        with open(folder / rel, "rb+") as handle:
            os.fsync(handle.fileno())


def replace_dir(stage: Path, out: Path) -> None:
    """Rename the finished ``stage`` to ``out``, replacing a folder there."""
    fsync_dir(stage)
    if not out.exists():
        os.replace(stage, out)
        fsync_dir(out.parent)
        return
    # Two renames: a kill in between leaves the old bundle under a hidden name and no half-written one.
    old = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".old"))
    os.rmdir(old)
    with signals_deferred():  # a Ctrl-C between the renames would leave no bundle at all
        os.replace(out, old)
        os.replace(stage, out)
        fsync_dir(out.parent)
    shutil.rmtree(old, ignore_errors=True)


def write_archive(folder: Path, archive: Path) -> None:
    """``folder`` as a .tar.gz with sorted entries, zero timestamps and owners: reproducible bytes."""
    buffer = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buffer, mtime=0) as gz:
        with tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
            entries = [folder] + sorted((p for p in folder.rglob("*") if "__pycache__" not in p.parts),
                                        key=lambda p: p.relative_to(folder).as_posix())
            for path in entries:
                rel = folder.name if path == folder else f"{folder.name}/{path.relative_to(folder).as_posix()}"
                if path.is_file() and path.name.endswith((".engine", ".cache")) or (
                        path.name.endswith(".engine.json")):
                    continue  # built on a device: not part of what was shipped
                info = tar.gettarinfo(str(path), arcname=rel)
                info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
                info.mode = 0o755 if path.is_dir() or path.suffix == ".py" else 0o644
                if path.is_file():
                    with open(path, "rb") as handle:
                        tar.addfile(info, handle)
                else:
                    tar.addfile(info)
    atomic_write(archive, lambda h: h.write(buffer.getvalue()))
