"""Hugging Face image classifiers: a local folder with ``config.json`` and ``model.safetensors`` (never a pickled
``pytorch_model.bin``), loaded offline through ``transformers.AutoModelForImageClassification``. Class names come
from ``id2label``, the input size and normalisation from ``preprocessor_config.json`` (``size``,
``image_mean`` / ``image_std``; the processor's 1/255 rescale is what the teacher's [0, 1] input already is), the
channel count from the config; the model's output object gives its ``logits``.

Example::

    module, shape, notes, meta = load_hf(Path("vit-folder"), "cpu")
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..core.errors import UserError
from ..core.optional import require
from .teacher_formats import HF_CONFIG, error_line
from .teacher_spec import id2label_names, read_json_object

__all__ = ["load_hf"]

WEIGHTS = "model.safetensors"


class HFLogits(nn.Module):
    """The ``logits`` of a transformers image classifier's output object."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, x: Tensor) -> Tensor:
        return self.module(pixel_values=x).logits


def _size(value: Any) -> tuple[int, int] | None:
    """(H, W) of a processor's or a config's size: an int, [H, W], or {"height", "width"} / {"shortest_edge"}."""
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value, value
    if isinstance(value, (list, tuple)) and len(value) == 2 and all(isinstance(v, int) for v in value):
        return int(value[0]), int(value[1])
    if isinstance(value, dict):
        if isinstance(value.get("height"), int) and isinstance(value.get("width"), int):
            return int(value["height"]), int(value["width"])
        if isinstance(value.get("shortest_edge"), int):
            return int(value["shortest_edge"]), int(value["shortest_edge"])
    return None


def _metadata(folder: Path, config: dict[str, Any]) -> tuple[dict[str, Any], tuple[int, int] | None]:
    meta: dict[str, Any] = {}
    id2label = config.get("id2label")
    if isinstance(id2label, dict) and id2label:
        names = [str(n) for n in id2label_names(id2label) or []]
        # transformers fills in LABEL_0, LABEL_1, … when a config names no classes: those are not names
        if names and not all(n == f"LABEL_{i}" for i, n in enumerate(names)) and len(set(names)) == len(names):
            meta["classes"] = names
    size = _size(config.get("image_size"))
    processor_path = folder / "preprocessor_config.json"
    if processor_path.is_file():
        processor = read_json_object(processor_path)
        if processor.get("do_normalize", True):
            for key, target in (("image_mean", "mean"), ("image_std", "std")):
                value = processor.get(key)
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    value = [value]
                if isinstance(value, list) and value and all(isinstance(v, (int, float)) for v in value):
                    meta[target] = [float(v) for v in value]
        size = _size(processor.get("crop_size")) or _size(processor.get("size")) or size
    return meta, size


def load_hf(folder: Path, device: str | torch.device) -> tuple[nn.Module, tuple[int, int, int] | None, list[str],
                                                              dict[str, Any]]:
    """The folder's classifier (returning logits), its input shape where known, notes, and its metadata."""
    config = read_json_object(folder / HF_CONFIG)
    if not (folder / WEIGHTS).is_file():
        others = sorted(p.name for p in folder.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".h5", ".msgpack"))
        found = f" (found {', '.join(others)}: pickled or foreign weights are not read)" if others else ""
        raise UserError(f"{folder}: a Hugging Face folder without {WEIGHTS}{found}; save the model with "
                        "save_pretrained(..., safe_serialization=True)")
    transformers = require("transformers")
    hf_logging = transformers.utils.logging
    bar_was_on, verbosity = hf_logging.is_progress_bar_enabled(), hf_logging.get_verbosity()
    hf_logging.disable_progress_bar()  # our progress display, not its "Loading weights" bar
    hf_logging.set_verbosity_error()
    try:
        model = transformers.AutoModelForImageClassification.from_pretrained(
            str(folder), local_files_only=True, use_safetensors=True)
    except Exception as err:  # noqa: BLE001 - a folder transformers cannot read is the user's: one line
        raise UserError(f"{folder}: transformers cannot load this image classifier ({error_line(err)})") from None
    finally:
        hf_logging.set_verbosity(verbosity)
        if bar_was_on:
            hf_logging.enable_progress_bar()
    meta, size = _metadata(folder, config)
    channels = int(config.get("num_channels", 3))
    shape = (channels, *size) if size else None
    notes = [f"Hugging Face {type(model).__name__}; logits taken from its output object"]
    if "mean" not in meta:
        notes.append("no image_mean/image_std in a preprocessor_config.json: pass --mean and --std unless the model "
                     "takes [0, 1] images")
    return HFLogits(model).to(device), shape, notes, meta
