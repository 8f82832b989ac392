"""Atomic file writes: temporary file in the same folder, fsync, rename. A kill never leaves a truncated file."""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

from .errors import UserError


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


def sha256_path(path: str | Path) -> str:
    """sha256_file of a file; of a model folder (a Hugging Face teacher), the sha256 of its files' names and
    digests, so that changing, adding or removing any file in it changes the digest."""
    p = Path(path)
    if not p.is_dir():
        return sha256_file(p)
    listing = "".join(f"{f.relative_to(p).as_posix()}\0{sha256_file(f)}\n"
                      for f in sorted(p.rglob("*")) if f.is_file())
    return hashlib.sha256(listing.encode()).hexdigest()


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


def prepare_output_dir(out_dir: Path) -> None:
    """Fail early, before any work, if the output folder cannot be written.

    Permission bits do not say (root passes ``os.access`` on a read-only filesystem), so the folder is made and
    a probe file written and removed in it; whatever the probe made is removed again, so the folder is only
    really created when the run starts writing."""
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"output folder {out_dir} is a file; pass --out with a folder path")
    parent = out_dir if out_dir.exists() else next((p for p in out_dir.parents if p.exists()), Path("."))
    if not parent.is_dir():
        raise UserError(f"output folder {out_dir} cannot be made: {parent} is a file, not a folder; "
                        "pass --out with a folder path")
    made: list[Path] = []  # the folders the probe creates, outermost first
    try:
        for folder in [*reversed(out_dir.parents), out_dir]:
            if not folder.exists():
                folder.mkdir()
                made.append(folder)
        fd, probe = tempfile.mkstemp(dir=out_dir, prefix=".nayer-edge-probe.", suffix=".tmp")
        try:
            os.write(fd, b"probe")
        finally:
            os.close(fd)
            os.unlink(probe)
    except OSError as err:
        reason = err.strerror or type(err).__name__
        raise UserError(f"output folder {out_dir} is not writable ({reason}); pass --out with a folder you can "
                        "write to") from None
    finally:
        for folder in reversed(made):
            try:
                folder.rmdir()
            except OSError:
                pass


def prepare_output_file(path: Path) -> None:
    """Fail early, before any work, if the file ``path`` (an ``--out``) cannot be written: a folder there, a
    file where its folder should be, or a folder that cannot be made or written."""
    if path.is_dir():
        raise UserError(f"--out {path} is a folder; pass --out with a file path (or leave it out)")
    prepare_output_dir(path.parent)


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
