"""Atomic file writes: temporary file in the same folder, fsync, rename. A kill never leaves a truncated file."""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable


def atomic_write(path: str | Path, write: Callable[[Any], None], mode: str = "wb") -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o666 & ~_umask())
        with os.fdopen(fd, mode) as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        if _out_of_space(err, path.parent):
            from .errors import UserError

            raise UserError(f"no space left on the device writing {path}; free some space or write to another "
                            "folder") from None
        raise


_LOW_SPACE = 1 << 20


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks (teachers and weights can be large)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fsync_dir(folder: str | Path) -> None:
    """Make a rename in ``folder`` durable: without it a power cut after ``os.replace`` can bring back the
    folder's old entry (the file's bytes were synced, the name pointing at them was not). A no-op where
    folders cannot be opened (Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems (network, FUSE) refuse fsync on a folder; the rename itself was done
    finally:
        os.close(fd)


def _out_of_space(err: BaseException, folder: Path) -> bool:
    """ENOSPC/EDQUOT, or an error from a writer that hides it (torch's zip writer raises RuntimeError)."""
    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    if isinstance(err, (OSError, RuntimeError)):
        try:
            return shutil.disk_usage(folder).free < _LOW_SPACE
        except OSError:
            return False
    return False


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def remove_temporaries(folder: str | Path) -> None:
    """What writers killed mid-write left in ``folder``: temporary files and staging folders (``.NAME.*.tmp``:
    atomic writes, the ONNX exporter's and the bundle's staging folders; ``NAME.npz.tmp`` of
    :meth:`SampleMemory.save`) and a bundle folder set aside while its replacement was renamed in
    (``.bundle.*.old``). The files they were writing are untouched."""
    folder = Path(folder)
    for tmp in [*folder.glob(".*.tmp"), *folder.glob("*.npz.tmp"), *folder.glob(".bundle.*.old")]:
        if tmp.is_dir() and not tmp.is_symlink():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    atomic_write(path, lambda h: h.write(data))


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda h: h.write(text), mode="w")


def atomic_torch_save(path: str | Path, obj: Any) -> None:
    import torch

    atomic_write(path, lambda h: torch.save(obj, h))
