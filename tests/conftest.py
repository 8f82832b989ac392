"""Shared fixtures: small real teachers trained on scikit-learn's handwritten digits."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parent.parent
# The demo recipe without its time budget: with a budget the LR schedule follows wall time, so a busy
# machine would train a different student.
TEST_RECIPE = str(Path(__file__).resolve().parent / "recipes" / "tiny-digits.yaml")


@dataclass
class TrainedTeacher:
    path: Path
    eval_path: Path
    accuracy: float
    input_shape: tuple[int, int, int]


def digits_at(shape: tuple[int, int, int]):
    """The fixed digits split, resized to C×H×W (channels repeated for RGB)."""
    from nayer_edge.demo.digits import load_digits_split

    x_train, y_train, x_test, y_test = load_digits_split()
    c, h, w = shape

    def fit(x):
        x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False).clamp(0, 1)
        return x.repeat(1, c, 1, 1) if c > 1 else x

    return fit(x_train), y_train, fit(x_test), y_test


def train_and_save(model: torch.nn.Module, shape: tuple[int, int, int], folder: Path, epochs: int = 8,
                   mean: float = 0.5, std: float = 0.5) -> TrainedTeacher:
    """Train ``model`` on digits (normalised input), save it as TorchScript with a metadata file and the
    held-out split as .npz."""
    from nayer_edge.demo.digits import DIGIT_CLASSES
    from nayer_edge.inputs.evaldata import save_npz
    from nayer_edge.synthesis.augment import random_crop_flip

    torch.manual_seed(0)
    rng = torch.Generator().manual_seed(0)
    x_train, y_train, x_test, y_test = digits_at(shape)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs * ((len(x_train) + 63) // 64))
    for _ in range(epochs):
        model.train()
        perm = torch.randperm(len(x_train), generator=rng)
        for i in range(0, len(perm), 64):
            idx = perm[i:i + 64]
            x = random_crop_flip(x_train[idx], pad=max(1, shape[1] // 8), flip=False, generator=rng)
            loss = F.cross_entropy(model((x - mean) / std), y_train[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
    model.eval()
    with torch.no_grad():
        acc = (model((x_test - mean) / std).argmax(1) == y_test).float().mean().item()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "teacher.pt"
    torch.jit.save(torch.jit.trace(model, torch.zeros(1, *shape)), path)
    (folder / "teacher.pt.json").write_text(json.dumps(
        {"classes": DIGIT_CLASSES, "input_shape": list(shape), "mean": [mean], "std": [std]}))
    eval_path = folder / "heldout.npz"
    save_npz(eval_path, x_test, y_test)
    return TrainedTeacher(path, eval_path, acc, shape)


@pytest.fixture(scope="session")
def digits_teacher(tmp_path_factory) -> TrainedTeacher:
    """A cnn_small teacher on 1×16×16 digits (≈97 % held-out), as TorchScript with metadata."""
    from nayer_edge.zoo import create_model

    # Seeded here, not by whichever tests happened to draw random numbers before this fixture was first asked
    # for: otherwise the teacher (97.1 % in one clean-clone run, 96.7 % in another) changes with test order.
    torch.manual_seed(0)
    model = create_model("cnn_small", num_classes=10, in_channels=1, input_size=16)
    teacher = train_and_save(model, (1, 16, 16), tmp_path_factory.mktemp("digits_teacher"))
    assert teacher.accuracy > 0.9
    return teacher


def run_cli(*args: str, cwd: Path | None = None, env: dict | None = None, timeout: float = 600
            ) -> subprocess.CompletedProcess:
    """Run ``nayer-edge`` as a user would (a new process, the installed console script's module)."""
    full_env = {**os.environ, "PYTHONWARNINGS": "ignore", **(env or {})}
    return subprocess.run([sys.executable, "-m", "nayer_edge", *args], cwd=cwd or REPO, env=full_env,
                          capture_output=True, text=True, timeout=timeout)
