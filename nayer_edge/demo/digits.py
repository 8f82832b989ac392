"""The built-in demo teacher: a CNN trained on scikit-learn's bundled handwritten digits.

The 8×8 digit images are upsampled to 16×16 grayscale. A fixed, stratified split holds out a quarter
of the images; distillation never sees the training images, and the held-out ones are only used to
report accuracy.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..core.atomic import atomic_write_bytes, atomic_write_text
from ..core.errors import UserError
from ..core.evaluate import accuracy
from ..core.normalize import NormalizedModel
from ..core.optional import require
from ..inputs.evaldata import save_npz
from ..synthesis.augment import random_crop_flip
from ..zoo import create_model

DIGIT_CLASSES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
INPUT_SHAPE = (1, 16, 16)
MEAN, STD = (0.5,), (0.5,)
TEACHER_ARCH = "wrn16_1"
SPLIT_SEED = 0


TEACHER_FILE, METADATA_FILE, EVAL_FILE = "digits_teacher.pt", "digits_teacher.pt.json", "digits_heldout.npz"


@dataclass(frozen=True)
class DigitsTeacher:
    teacher_path: Path
    eval_path: Path
    accuracy: float


def default_cache_dir() -> Path:
    return Path(os.environ.get("NAYER_EDGE_CACHE", Path.home() / ".cache" / "nayer-edge"))


def load_digits_split() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x_train, y_train, x_test, y_test); x float N×1×16×16 in [0, 1]."""
    load_digits = require("sklearn.datasets").load_digits
    train_test_split = require("sklearn.model_selection").train_test_split
    digits = load_digits()
    images = torch.from_numpy(digits.images.astype(np.float32) / 16.0)[:, None]
    images = F.interpolate(images, size=INPUT_SHAPE[1:], mode="bilinear", align_corners=False).clamp(0, 1)
    labels = torch.from_numpy(digits.target.astype(np.int64))
    idx_train, idx_test = train_test_split(np.arange(len(labels)), test_size=0.25, random_state=SPLIT_SEED,
                                           stratify=labels.numpy())
    return images[idx_train], labels[idx_train], images[idx_test], labels[idx_test]


def train_digits_teacher(epochs: int = 40, seed: int = 0) -> tuple[torch.nn.Module, float]:
    """Train the teacher on the training split; returns the model (expects normalised input) and its
    held-out accuracy."""
    torch.manual_seed(seed)
    rng = torch.Generator().manual_seed(seed)
    x_train, y_train, x_test, y_test = load_digits_split()
    model = create_model(TEACHER_ARCH, num_classes=10, in_channels=1, input_size=16)
    wrapped = NormalizedModel(model, MEAN, STD)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4, nesterov=True)
    steps_per_epoch = (len(x_train) + 63) // 64
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=0.1, total_steps=epochs * steps_per_epoch)
    for _ in range(epochs):
        wrapped.train()
        perm = torch.randperm(len(x_train), generator=rng)
        for i in range(0, len(perm), 64):
            idx = perm[i:i + 64]
            x = random_crop_flip(x_train[idx], pad=2, flip=False, generator=rng)
            loss = F.cross_entropy(wrapped(x), y_train[idx], label_smoothing=0.05)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
    wrapped.eval()
    return model.eval(), accuracy(wrapped, x_test, y_test)


def ensure_digits_teacher(cache_dir: Path | None = None) -> DigitsTeacher:
    """Train the demo teacher once and cache it as TorchScript with its metadata and the held-out split."""
    folder = (cache_dir or default_cache_dir()) / "demo"
    teacher_path, eval_path, info_path = folder / TEACHER_FILE, folder / EVAL_FILE, folder / "info.json"
    if teacher_path.is_file() and eval_path.is_file() and info_path.is_file():
        return DigitsTeacher(teacher_path, eval_path, json.loads(info_path.read_text())["accuracy"])
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        source = "$NAYER_EDGE_CACHE" if cache_dir is None and os.environ.get("NAYER_EDGE_CACHE") else "the cache"
        raise UserError(f"cannot make the demo teacher's folder {folder} ({err.strerror or type(err).__name__}); point "
                        f"{source} at a folder you can write to") from None
    model, acc = train_digits_teacher()
    example = torch.zeros(1, *INPUT_SHAPE)
    scripted = torch.jit.trace(model, example)
    import io

    buffer = io.BytesIO()
    torch.jit.save(scripted, buffer)
    atomic_write_bytes(teacher_path, buffer.getvalue())
    metadata = {"classes": DIGIT_CLASSES, "input_shape": list(INPUT_SHAPE), "mean": list(MEAN), "std": list(STD)}
    atomic_write_text(folder / METADATA_FILE, json.dumps(metadata, indent=2))
    _, _, x_test, y_test = load_digits_split()
    save_npz(eval_path, x_test, y_test)
    atomic_write_text(info_path, json.dumps({"accuracy": acc, "arch": TEACHER_ARCH}))
    return DigitsTeacher(teacher_path, eval_path, acc)


def write_digits_teacher(out_dir: Path, cache_dir: Path | None = None) -> DigitsTeacher:
    """The demo teacher as the files a job of one's own takes, copied into ``out_dir`` from the cache (trained there
    first when needed): the TorchScript teacher, its metadata sidecar and the held-out digits.

    Example::

        teacher = write_digits_teacher(Path("teacher"))
        # nayer-edge compress teacher/digits_teacher.pt --eval-data teacher/digits_heldout.npz --target cpu-x86
    """
    cached = ensure_digits_teacher(cache_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"cannot make the folder {out_dir} for the demo teacher ({err.strerror or type(err).__name__});"
                        " choose a folder you can write to") from None
    # The teacher last: a teacher file never stands without the metadata that says its input shape.
    for name in (METADATA_FILE, EVAL_FILE, TEACHER_FILE):
        atomic_write_bytes(out_dir / name, (cached.teacher_path.parent / name).read_bytes())
    return DigitsTeacher(out_dir / TEACHER_FILE, out_dir / EVAL_FILE, cached.accuracy)
