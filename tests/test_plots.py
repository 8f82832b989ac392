"""Figures: files are real PNGs of plausible size, written atomically, tolerant of missing history keys."""

import subprocess
import sys

import pytest
import torch

pytest.importorskip("matplotlib")

from nayer_edge.core import plots

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _read_png(path):
    from matplotlib.image import imread

    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC
    assert len(data) > 2_000
    return imread(path)


def _no_leftovers(folder):
    assert not [p for p in folder.iterdir() if p.name.startswith(".")], "temporary file left behind"


def test_sample_grid_grayscale(tmp_path):
    g = torch.Generator().manual_seed(0)
    images = torch.rand(50, 1, 28, 28, generator=g)
    labels = torch.arange(50) % 10
    out = plots.save_sample_grid(images, labels, [str(d) for d in range(10)], tmp_path / "grid.png")
    assert out == tmp_path / "grid.png"
    img = _read_png(out)
    assert img.shape[0] > 200 and img.shape[1] > 200
    _no_leftovers(tmp_path)


def test_sample_grid_rgb_caps_rows(tmp_path):
    g = torch.Generator().manual_seed(0)
    names = [f"class_{i}" for i in range(30)]
    images = torch.rand(90, 3, 32, 32, generator=g) * 1.4 - 0.2  # out of range values are clamped
    labels = torch.arange(90) % 30
    small = plots.save_sample_grid(images[:20], labels[:20], names[:20], tmp_path / "twenty.png", per_class=3)
    capped = plots.save_sample_grid(images, labels, names, tmp_path / "thirty.png", per_class=3)
    a, b = _read_png(small), _read_png(capped)
    # At most 20 rows: thirty classes draw the same height as twenty.
    assert abs(a.shape[0] - b.shape[0]) <= 2
    # A class with no samples still gets its (empty) row; nothing crashes.
    plots.save_sample_grid(images[:5], torch.zeros(5, dtype=torch.long), names[:4], tmp_path / "sparse.png")
    _read_png(tmp_path / "sparse.png")


def test_sample_grid_rejects_bad_shapes(tmp_path):
    with pytest.raises(ValueError):
        plots.save_sample_grid(torch.rand(4, 2, 8, 8), torch.zeros(4), ["a"], tmp_path / "x.png")
    with pytest.raises(ValueError):
        plots.save_sample_grid(torch.rand(4, 1, 8, 8), torch.zeros(3), ["a"], tmp_path / "x.png")


def test_training_curves_full_and_sparse(tmp_path):
    history = [
        {
            "epoch": e, "wall_seconds": 2.5 * e, "loss_bn": 1 / (e + 1), "loss_oh": 0.3 / (e + 1),
            "loss_adv": -0.1 * e, "loss_kd": 0.2, "agreement": e / 10,
            "student_accuracy": e / 12 if e % 2 == 0 else None,
        }
        for e in range(10)
    ]
    _read_png(plots.save_training_curves(history, tmp_path / "curves.png"))
    sparse = [{}, {"epoch": 1}, {"loss_kd": 0.5}, {"wall_seconds": 3.0, "agreement": 0.4},
              {"loss_bn": None, "student_accuracy": float("nan")}, {"loss_custom": 2.0}]
    _read_png(plots.save_training_curves(sparse, tmp_path / "sparse.png"))
    _read_png(plots.save_training_curves([], tmp_path / "sub" / "empty.png"))  # creates the folder
    _no_leftovers(tmp_path)


def test_accuracy_vs_time(tmp_path):
    series = {"nayer": [(60.0, 0.9), (10.0, 0.5), (30.0, 0.8)], "dfad": [(10.0, 0.3), (60.0, 0.7)]}
    bands = {"nayer": [(10.0, 0.45, 0.55), (30.0, 0.7, 0.85), (60.0, 0.88, 0.92)]}
    out = plots.save_accuracy_vs_time(series, tmp_path / "bench.png", "MNIST", teacher_accuracy=0.99, bands=bands)
    _read_png(out)
    _read_png(plots.save_accuracy_vs_time({"only": [(1.0, 0.1)]}, tmp_path / "one.png", "one point"))
    _no_leftovers(tmp_path)


def test_overwrite_is_atomic_replace(tmp_path):
    path = tmp_path / "curves.png"
    path.write_bytes(b"old")
    plots.save_training_curves([{"epoch": 0, "loss_kd": 1.0}], path)
    assert path.read_bytes()[:8] == PNG_MAGIC
    _no_leftovers(tmp_path)


def test_does_not_touch_pyplot(tmp_path):
    # Drawing goes through Figure + the Agg canvas, so a caller's pyplot backend is never switched.
    code = (
        "import sys, torch; from nayer_edge.core import plots; "
        f"plots.save_training_curves([{{'epoch': 0, 'loss_kd': 1.0}}], {str(tmp_path / 'c.png')!r}); "
        "assert 'matplotlib.pyplot' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_kill_mid_write_leaves_a_temporary_that_the_next_run_clears(tmp_path):
    """Killed while the PNG is being written (the process dies, no except clause runs): what is left is a
    temporary file named like every other atomic write's, which remove_temporaries (run at the start of a run)
    clears; the figure already there is untouched."""
    from nayer_edge.core.atomic import remove_temporaries

    (tmp_path / "curves.png").write_bytes(b"earlier")
    code = (
        "import os; from matplotlib.figure import Figure; from nayer_edge.core import plots\n"
        "def dying_savefig(self, fh, **kwargs):\n"
        "    fh.write(b'\\x89PNG partial'); fh.flush(); os._exit(9)\n"
        "Figure.savefig = dying_savefig\n"
        f"plots.save_training_curves([{{'epoch': 0, 'loss_kd': 1.0}}], {str(tmp_path / 'curves.png')!r})\n"
    )
    killed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert killed.returncode == 9, killed.stderr[-2000:]
    assert len(list(tmp_path.iterdir())) == 2  # the figure and the partial temporary file
    remove_temporaries(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["curves.png"]
    assert (tmp_path / "curves.png").read_bytes() == b"earlier"
