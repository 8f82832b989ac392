"""Labelled evaluation images supplied by the user: an ``.npz`` file or a folder of class folders.

The distillation itself needs no data; these only measure accuracy. Images come back as float32
N×C×H×W in [0, 1], converted to the teacher's channel count and resized to its input size.

Example::

    x, y = load_eval_data("cifar10_test.npz", input_shape=(3, 32, 32), classes=teacher.spec.classes)
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..core.atomic import atomic_write
from ..core.errors import UserError, first_line
from ..core.strict import closest_name

__all__ = ["load_eval_data", "save_npz", "IMAGE_SUFFIXES"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
_LUMA = (0.299, 0.587, 0.114)  # ITU-R 601-2, as PIL's convert("L")


def load_eval_data(
    path: str | os.PathLike[str],
    *,
    input_shape: Sequence[int],
    classes: Sequence[str] | None,
) -> tuple[Tensor, Tensor]:
    """Load evaluation images and integer labels.

    ``path`` is an ``.npz`` with ``x`` (uint8 N×H×W×C or N×H×W, or float N×C×H×W in [0, 1]) and
    ``y`` (integer labels), or a folder ``root/<class name>/*.png|jpg|jpeg|bmp``. With ``classes``,
    folder names must be among them and labels must lie in ``[0, len(classes))``; without, folders
    are labelled in sorted order. Returns ``x`` float32 N×C×H×W in [0, 1] and ``y`` int64.

    Example::

        x, y = load_eval_data("val_images/", input_shape=(1, 28, 28), classes=None)
    """
    p = Path(path)
    c, h, w = (int(d) for d in input_shape)
    if not p.exists():
        raise UserError(f"{p}: no such file or folder; pass an .npz file or a folder of class folders")
    if p.is_dir():
        x, y = _load_folder(p, c, h, w, classes)
    else:
        x, y = _load_npz(p, classes)
    return _fit(x, c, h, w, str(p)), y


def save_npz(path: str | os.PathLike[str], x: Tensor | np.ndarray, y: Tensor | np.ndarray) -> None:
    """Write images in [0, 1] (N×C×H×W) and labels as ``x`` uint8 N×H×W×C and ``y`` int64.

    Example: ``save_npz("eval.npz", x, y)``; ``load_eval_data`` reads it back.
    """
    x_t = torch.as_tensor(np.asarray(x) if not isinstance(x, Tensor) else x).detach().cpu()
    y_t = torch.as_tensor(np.asarray(y) if not isinstance(y, Tensor) else y).detach().cpu()
    if x_t.ndim != 4:
        raise UserError(f"save_npz: x must be N×C×H×W, got shape {tuple(x_t.shape)}")
    if y_t.ndim != 1 or y_t.shape[0] != x_t.shape[0]:
        raise UserError(f"save_npz: y must have shape ({x_t.shape[0]},), got {tuple(y_t.shape)}")
    if x_t.dtype != torch.uint8:
        x_t = (x_t.float().clamp(0, 1) * 255).round().to(torch.uint8)
    pixels, labels = x_t.permute(0, 2, 3, 1).contiguous().numpy(), y_t.long().numpy()
    # a file object stops numpy appending ".npz" to other names
    atomic_write(path, lambda handle: np.savez_compressed(handle, x=pixels, y=labels))


# --------------------------------------------------------------------------------------- npz


def _load_npz(p: Path, classes: Sequence[str] | None) -> tuple[Tensor, Tensor]:
    x_np, y_np = _read_npz_arrays(p)
    y_np = _checked_labels(p, x_np, y_np)
    x = _images_01(p, x_np)
    # Checked in the file's own dtype (Python ints are exact): a uint64 label past 2**63 - 1 would wrap to a
    # negative number in int64 and be reported as one.
    lo, hi = int(y_np.min()), int(y_np.max())
    bound = f"[0, {len(classes)})" if classes is not None else "[0, num_classes)"
    if lo < 0 or (classes is not None and hi >= len(classes)) or hi > np.iinfo(np.int64).max:
        raise UserError(f"{p}: labels range over [{lo}, {hi}]; they must lie in {bound}")
    return x, torch.from_numpy(y_np.astype(np.int64))


def _read_npz_arrays(p: Path) -> tuple[np.ndarray, np.ndarray]:
    """Arrays ``x`` and ``y`` of an .npz file, never unpickling; UserError saying what the file is instead."""
    try:
        with open(p, "rb") as f:
            head = f.read(6)
    except OSError as err:
        raise UserError(f"{p}: cannot read ({err.strerror or err})") from None
    if head == b"\x93NUMPY":
        raise UserError(f"{p}: is a single .npy array; save images and labels together with "
                        "numpy.savez(path, x=images, y=labels)")
    if not head.startswith(b"PK"):
        what = "the file is empty" if not head else "not a zip archive"
        raise UserError(f"{p}: not a readable .npz file ({what}); save images and labels with "
                        "numpy.savez(path, x=images, y=labels) or pass an image folder")
    try:
        with np.load(p, allow_pickle=False) as data:
            keys = list(data.keys())
            missing = [k for k in ("x", "y") if k not in keys]
            if missing:
                raise UserError(
                    f"{p}: no array '{missing[0]}' (found: {', '.join(keys) or 'none'}); "
                    "save images as x and labels as y"
                )
            x_np, y_np = data["x"], data["y"]
    except UserError:
        raise
    except ValueError as err:
        if "Object arrays" in str(err) or "pickled" in str(err):
            raise UserError(f"{p}: holds Python objects, which are not loaded (they could run code); "
                            "save x and y as numeric arrays") from None
        raise UserError(f"{p}: not a readable .npz file ({first_line(err)})") from None
    except Exception as err:  # noqa: BLE001 - numpy raises many types for a bad file
        raise UserError(f"{p}: not a readable .npz file ({first_line(err)})") from None
    return x_np, y_np


def _checked_labels(p: Path, x_np: np.ndarray, y_np: np.ndarray) -> np.ndarray:
    """One integer label per image (an N×1 column is taken as N)."""
    if y_np.ndim == 2 and y_np.shape[1] == 1:
        y_np = y_np[:, 0]
    if y_np.ndim != 1:
        raise UserError(f"{p}: y has shape {y_np.shape}; expected one integer label per image (N,)")
    if not np.issubdtype(y_np.dtype, np.integer):
        raise UserError(f"{p}: y has dtype {y_np.dtype}; labels must be integers")
    if x_np.shape[0:1] != y_np.shape[0:1]:
        raise UserError(f"{p}: x has {x_np.shape[0] if x_np.ndim else 0} images but y has {y_np.shape[0]} labels")
    if y_np.shape[0] == 0:
        raise UserError(f"{p}: contains no images")
    return y_np


def _images_01(p: Path, x_np: np.ndarray) -> Tensor:
    """N×C×H×W float images in [0, 1] from uint8 N×H×W×C (or N×H×W) or float N×C×H×W already in [0, 1]."""
    if x_np.dtype == np.uint8:
        if x_np.ndim == 3:
            x_np = x_np[..., None]
        if x_np.ndim != 4 or x_np.shape[-1] not in (1, 3, 4):
            raise UserError(
                f"{p}: uint8 x has shape {x_np.shape}; expected N×H×W×C (C = 1, 3 or 4) or N×H×W"
            )
        x = torch.from_numpy(np.ascontiguousarray(x_np)).permute(0, 3, 1, 2).float().div_(255.0)
    elif np.issubdtype(x_np.dtype, np.floating):
        if x_np.ndim != 4:
            raise UserError(f"{p}: float x has shape {x_np.shape}; expected N×C×H×W in [0, 1]")
        x = torch.from_numpy(np.ascontiguousarray(x_np)).float()
        if x.numel() == 0:
            raise UserError(f"{p}: x has shape {x_np.shape}: images with no pixels; expected N×C×H×W in [0, 1] "
                            "with C, H, W at least 1")
        if not torch.isfinite(x).all():
            raise UserError(f"{p}: x contains NaN or inf")
        lo, hi = float(x.min()), float(x.max())
        if lo < 0.0 or hi > 1.0:
            raise UserError(
                f"{p}: float x has values in [{lo:g}, {hi:g}]; float images must be in [0, 1] "
                "(or save uint8 N×H×W×C)"
            )
    else:
        raise UserError(f"{p}: x has dtype {x_np.dtype}; expected uint8 N×H×W×C or float N×C×H×W in [0, 1]")
    if x.numel() == 0:
        raise UserError(f"{p}: x has shape {x_np.shape}: images with no pixels; expected N×H×W×C (uint8) or "
                        "N×C×H×W (float) with C, H, W at least 1")
    return x

# --------------------------------------------------------------------------------------- folder


def _load_folder(
    root: Path, channels: int, h: int, w: int, classes: Sequence[str] | None
) -> tuple[Tensor, Tensor]:
    from PIL import Image

    folders = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not folders:
        raise UserError(f"{root}: no class folders; expected {root}/<class name>/*.png")
    if classes is not None:
        index = {name: i for i, name in enumerate(classes)}
        for d in folders:
            if d.name not in index:
                raise UserError(
                    f"{root}: folder {d.name!r} is not a class name{closest_name(d.name, index)}; "
                    "rename it or give matching --classes"
                )
    else:
        index = {d.name: i for i, d in enumerate(folders)}

    mode = {1: "L", 3: "RGB"}.get(channels, "RGB")
    images: list[Tensor] = []
    labels: list[int] = []
    for d in folders:
        for f in sorted(d.iterdir()):
            if not f.is_file() or f.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            try:
                with Image.open(f) as img:
                    arr = np.asarray(img.convert(mode), dtype=np.uint8)
            except Exception as err:  # noqa: BLE001 - PIL raises many types for a bad image
                raise UserError(f"{f}: cannot read image ({err})") from None
            if arr.ndim == 2:
                arr = arr[..., None]
            img_t = torch.from_numpy(arr.copy()).permute(2, 0, 1)[None].float().div_(255.0)
            images.append(_resize(img_t, h, w))  # one by one: images may differ in size
            labels.append(index[d.name])
    if not images:
        raise UserError(f"{root}: no images ({', '.join(IMAGE_SUFFIXES)}) in its class folders")

    return torch.cat(images), torch.tensor(labels, dtype=torch.int64)


# --------------------------------------------------------------------------------------- convert


def _resize(x: Tensor, h: int, w: int) -> Tensor:
    if tuple(x.shape[-2:]) == (h, w):
        return x
    out = torch.nn.functional.interpolate(x, size=(h, w), mode="bilinear", antialias=True, align_corners=False)
    return out.clamp_(0.0, 1.0)


def _fit(x: Tensor, c: int, h: int, w: int, where: str) -> Tensor:
    """Convert channels (gray↔RGB, RGBA→RGB) and resize to H×W."""
    src = x.shape[1]
    if src == 4 and c != 4:
        x, src = x[:, :3], 3
    if src != c:
        if src == 1 and c == 3:
            x = x.repeat(1, 3, 1, 1)
        elif src == 3 and c == 1:
            luma = torch.tensor(_LUMA, dtype=x.dtype).view(1, 3, 1, 1)
            x = (x * luma).sum(1, keepdim=True)
        else:
            raise UserError(f"{where}: images have {src} channels and the teacher takes {c}; cannot convert")
    if tuple(x.shape[-2:]) != (h, w):
        x = torch.cat([_resize(chunk, h, w) for chunk in x.split(512)])
    return x.float().contiguous()
