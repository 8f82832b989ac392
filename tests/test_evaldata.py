"""Evaluation data: npz layouts, image folders, conversion, and each user error."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from nayer_edge.core.errors import UserError
from nayer_edge.inputs.evaldata import load_eval_data, save_npz

CLASSES = ["cat", "dog", "frog"]


def _images(n=6, c=3, h=8, w=8, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(n, h, w, c), dtype=np.uint8), rng.integers(0, 3, size=n)


def _raises(pattern, path, **kw):
    kw.setdefault("input_shape", (3, 8, 8))
    kw.setdefault("classes", CLASSES)
    with pytest.raises(UserError, match=pattern) as e:
        load_eval_data(path, **kw)
    assert "\n" not in str(e.value)
    return str(e.value)


# ------------------------------------------------------------------------------- npz


def test_npz_uint8_nhwc(tmp_path):
    x_np, y_np = _images()
    np.savez(tmp_path / "d.npz", x=x_np, y=y_np)
    x, y = load_eval_data(tmp_path / "d.npz", input_shape=(3, 8, 8), classes=CLASSES)
    assert x.dtype == torch.float32 and y.dtype == torch.int64
    assert x.shape == (6, 3, 8, 8) and y.tolist() == y_np.tolist()
    torch.testing.assert_close(x, torch.from_numpy(x_np).permute(0, 3, 1, 2).float() / 255)


def test_npz_uint8_nhw_gray_to_rgb(tmp_path):
    x_np, y_np = _images(c=1)
    np.savez(tmp_path / "d.npz", x=x_np[..., 0], y=y_np)
    x, _ = load_eval_data(tmp_path / "d.npz", input_shape=(3, 8, 8), classes=None)
    assert x.shape == (6, 3, 8, 8)
    torch.testing.assert_close(x[:, 0], x[:, 2])
    torch.testing.assert_close(x[:, 0], torch.from_numpy(x_np[..., 0]).float() / 255)


def test_npz_float_nchw_rgb_to_gray_and_resize(tmp_path):
    x_np = np.random.default_rng(1).random((5, 3, 16, 16)).astype(np.float32)
    x_np[:, :, :, :] = x_np[:, :1]  # gray content in RGB form, so luminance equals the value
    np.savez(tmp_path / "d.npz", x=x_np, y=np.arange(5) % 3)
    x, y = load_eval_data(tmp_path / "d.npz", input_shape=(1, 8, 8), classes=CLASSES)
    assert x.shape == (5, 1, 8, 8) and y.dtype == torch.int64
    expected = torch.nn.functional.interpolate(
        torch.from_numpy(x_np[:, :1]), size=(8, 8), mode="bilinear", antialias=True, align_corners=False
    )
    torch.testing.assert_close(x, expected, rtol=1e-5, atol=1e-5)
    assert float(x.min()) >= 0 and float(x.max()) <= 1


def test_save_npz_round_trip(tmp_path):
    x = torch.rand(4, 3, 5, 7)
    y = torch.tensor([0, 1, 2, 1])
    save_npz(tmp_path / "sub" / "eval.data", x, y)  # any name; no ".npz" appended
    with np.load(tmp_path / "sub" / "eval.data") as data:
        assert data["x"].dtype == np.uint8 and data["x"].shape == (4, 5, 7, 3)
    x2, y2 = load_eval_data(tmp_path / "sub" / "eval.data", input_shape=(3, 5, 7), classes=CLASSES)
    assert torch.equal(y2, y) and (x2 - x).abs().max() <= 0.5 / 255 + 1e-6


@pytest.mark.parametrize(
    "arrays, pattern",
    [
        ({"x": np.zeros((2, 8, 8, 3), np.uint8)}, "no array 'y'"),
        ({"y": np.zeros(2, np.int64)}, "no array 'x'"),
        ({"x": np.zeros((3, 8, 8, 3), np.uint8), "y": np.zeros(2, np.int64)}, "3 images but y has 2 labels"),
        ({"x": np.zeros((2, 8, 8, 3, 1), np.uint8), "y": np.zeros(2, np.int64)}, "uint8 x has shape"),
        ({"x": np.zeros((2, 8, 8), np.float32), "y": np.zeros(2, np.int64)}, "float x has shape"),
        ({"x": np.full((2, 3, 8, 8), 255.0, np.float32), "y": np.zeros(2, np.int64)}, r"values in \[255, 255\]"),
        ({"x": np.full((2, 3, 8, 8), -0.5, np.float32), "y": np.zeros(2, np.int64)}, "must be in \\[0, 1\\]"),
        ({"x": np.zeros((2, 8, 8, 3), np.int32), "y": np.zeros(2, np.int64)}, "dtype int32"),
        ({"x": np.zeros((2, 8, 8, 3), np.uint8), "y": np.array([0, 3])}, r"must lie in \[0, 3\)"),
        ({"x": np.zeros((2, 8, 8, 3), np.uint8), "y": np.array([-1, 0])}, "must lie in"),
        ({"x": np.zeros((2, 8, 8, 3), np.uint8), "y": np.array([0.0, 1.0])}, "labels must be integers"),
        ({"x": np.zeros((2, 8, 8, 3), np.uint8), "y": np.zeros((2, 2), np.int64)}, "y has shape"),
        ({"x": np.zeros((0, 8, 8, 3), np.uint8), "y": np.zeros(0, np.int64)}, "no images"),
    ],
)
def test_npz_errors(tmp_path, arrays, pattern):
    np.savez(tmp_path / "d.npz", **arrays)
    _raises(pattern, tmp_path / "d.npz")


def test_missing_and_unreadable_files(tmp_path):
    _raises("no such file", tmp_path / "nope.npz")
    (tmp_path / "junk.npz").write_bytes(b"definitely not numpy")
    _raises("not a readable .npz", tmp_path / "junk.npz")


@pytest.mark.parametrize("classes", [("a", "b", "c"), None])
@pytest.mark.parametrize("label", [2**64 - 1, 2**63])
def test_uint64_labels_past_int64_are_reported_as_they_are(tmp_path, classes, label):
    """Not wrapped to a negative int64 (2**64 - 1 reported as -1), with or without a class list."""
    x_np, _ = _images(n=2)
    np.savez(tmp_path / "d.npz", x=x_np, y=np.array([0, label], np.uint64))
    with pytest.raises(UserError, match=rf"labels range over \[0, {label}\]"):
        load_eval_data(tmp_path / "d.npz", input_shape=(3, 8, 8), classes=list(classes) if classes else None)


def test_uint64_labels_in_range_load(tmp_path):
    x_np, _ = _images(n=2)
    np.savez(tmp_path / "d.npz", x=x_np, y=np.array([2, 1], np.uint64))
    _, y = load_eval_data(tmp_path / "d.npz", input_shape=(3, 8, 8), classes=["a", "b", "c"])
    assert y.dtype == torch.int64 and y.tolist() == [2, 1]


def test_labels_unbounded_without_classes(tmp_path):
    x_np, _ = _images(n=2)
    np.savez(tmp_path / "d.npz", x=x_np, y=np.array([0, 17]))
    _, y = load_eval_data(tmp_path / "d.npz", input_shape=(3, 8, 8), classes=None)
    assert y.tolist() == [0, 17]


# ------------------------------------------------------------------------------- folders


def _folder(root, classes=("cat", "dog"), per_class=2, size=(8, 8), mode="RGB", seed=0):
    rng = np.random.default_rng(seed)
    pixels = {}
    for name in classes:
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
            arr = rng.integers(0, 256, size=shape, dtype=np.uint8)
            Image.fromarray(arr, mode=mode).save(root / name / f"{i}.png")
            pixels[(name, i)] = arr
    return pixels


def test_image_folder_with_classes(tmp_path):
    pixels = _folder(tmp_path / "imgs", classes=("dog", "frog"))
    (tmp_path / "imgs" / "dog" / "notes.txt").write_text("ignored")
    x, y = load_eval_data(tmp_path / "imgs", input_shape=(3, 8, 8), classes=CLASSES)
    assert x.shape == (4, 3, 8, 8) and y.tolist() == [1, 1, 2, 2]
    torch.testing.assert_close(x[0], torch.from_numpy(pixels[("dog", 0)]).permute(2, 0, 1).float() / 255)


def test_image_folder_without_classes_sorted(tmp_path):
    _folder(tmp_path / "imgs", classes=("zebra", "ant"), per_class=1)
    _, y = load_eval_data(tmp_path / "imgs", input_shape=(3, 8, 8), classes=None)
    assert y.tolist() == [0, 1]  # ant, zebra


def test_image_folder_gray_resized_to_rgb(tmp_path):
    _folder(tmp_path / "imgs", classes=("cat",), per_class=1, size=(12, 10), mode="L")
    (tmp_path / "imgs" / "dog").mkdir()
    Image.fromarray(np.zeros((20, 16, 3), np.uint8)).save(tmp_path / "imgs" / "dog" / "a.jpg")
    x, y = load_eval_data(tmp_path / "imgs", input_shape=(3, 8, 8), classes=CLASSES)
    assert x.shape == (2, 3, 8, 8) and y.tolist() == [0, 1]
    torch.testing.assert_close(x[0, 0], x[0, 1])


def test_image_folder_rgb_to_gray(tmp_path):
    pixels = _folder(tmp_path / "imgs", classes=("cat",), per_class=1)
    x, _ = load_eval_data(tmp_path / "imgs", input_shape=(1, 8, 8), classes=CLASSES)
    rgb = torch.from_numpy(pixels[("cat", 0)]).float() / 255
    luma = rgb @ torch.tensor([0.299, 0.587, 0.114])
    assert x.shape == (1, 1, 8, 8) and (x[0, 0] - luma).abs().max() < 2 / 255


def test_image_folder_errors(tmp_path):
    _folder(tmp_path / "a", classes=("cat", "dgo"), per_class=1)
    message = _raises("folder 'dgo' is not a class name", tmp_path / "a")
    assert "did you mean 'dog'" in message
    (tmp_path / "b").mkdir()
    _raises("no class folders", tmp_path / "b")
    (tmp_path / "c" / "cat").mkdir(parents=True)
    _raises("no images", tmp_path / "c")
    _folder(tmp_path / "d", classes=("cat",), per_class=1)
    (tmp_path / "d" / "cat" / "broken.png").write_bytes(b"not a png")
    message = _raises("cannot read image", tmp_path / "d")
    assert "broken.png" in message
