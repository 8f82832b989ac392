"""Load a user's teacher classifier from a file, whatever form it was saved in, and check it works.

Supported files (detected by content, not by extension):

* TorchScript (``torch.jit.save``),
* a ``torch.export`` program (``torch.export.save``, usually ``.pt2``),
* a state-dict checkpoint (``torch.save(model.state_dict())`` or a dict holding one under
  ``state_dict`` / ``model`` / ``model_state_dict``) plus ``arch``, a model name from :mod:`nayer_edge.zoo`,
* a safetensors state dict (``--arch`` a zoo name or ``timm:MODEL``, timm's architecture with the user's weights),
* an ONNX classifier, converted to torch and checked against onnxruntime (:mod:`.teacher_onnx`),
* a Hugging Face image-classification folder, ``config.json`` + ``model.safetensors`` (:mod:`.teacher_hf`),
* a fully pickled ``nn.Module`` (``torch.save(model)``), only with ``trust_pickle=True``: unpickling
  runs arbitrary code, so by default files are read with ``torch.load(weights_only=True)`` only.

Reading each format lives in :mod:`.teacher_formats`; parsing the user's description of the teacher
(class names, shapes, the metadata sidecar) in :mod:`.teacher_spec`.

Example::

    from nayer_edge.inputs.teacher_spec import parse_classes

    teacher = load_teacher("resnet34_cifar10.pt", arch="resnet34", classes=parse_classes("classes.txt"))
    logits = teacher(images01)          # images in [0, 1]; normalisation is applied for you
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..core.atomic import sha256_path
from ..core.errors import UserError
from .teacher_formats import (
    Logits,
    error_line,
    find_state_dict,
    load_export,
    load_torchscript,
    model_from_state_dict,
    safetensors_load,
    sniff_format,
    timm_settings,
    torch_load,
    unwrap,
)
from .teacher_spec import DEFAULT_INPUT_SHAPE, channels_values, parse_shape, read_metadata

__all__ = [
    "TeacherSpec",
    "LoadedTeacher",
    "load_teacher",
    "inspect_teacher",
]


@dataclass(frozen=True)
class TeacherSpec:
    """What the teacher expects: input shape (C, H, W), per-channel mean/std, and class names."""

    input_shape: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    classes: tuple[str, ...] | None


@dataclass
class LoadedTeacher:
    """A frozen teacher ready for distillation.

    ``model`` takes *normalised* input and returns logits (B, num_classes); calling the
    ``LoadedTeacher`` itself takes images in [0, 1] and normalises them first. Gradients flow
    through both to the input (the parameters are frozen).

    Example::

        t = load_teacher("teacher.pt2")
        x = torch.rand(7, *t.spec.input_shape, requires_grad=True)
        t(x).logsumexp(1).sum().backward()   # x.grad is set
    """

    model: nn.Module
    format: str
    path: Path
    sha256: str
    spec: TeacherSpec
    num_classes: int
    notes: list[str] = field(default_factory=list)

    def normalize(self, x01: Tensor) -> Tensor:
        """``(x - mean) / std`` per channel, for a batch (B, C, H, W) of images in [0, 1]."""
        mean = torch.as_tensor(self.spec.mean, dtype=x01.dtype, device=x01.device).view(1, -1, 1, 1)
        std = torch.as_tensor(self.spec.std, dtype=x01.dtype, device=x01.device).view(1, -1, 1, 1)
        return (x01 - mean) / std

    def __call__(self, x01: Tensor) -> Tensor:
        return self.model(self.normalize(x01))

    @property
    def param_count(self) -> int:
        return sum(p.numel() for p in self.model.parameters())


# --------------------------------------------------------------------------------------- loading


@dataclass(frozen=True)
class _Settings:
    """The teacher's settings from the explicit arguments, else from its metadata sidecar."""

    arch: str | None
    input_shape: tuple[int, int, int] | None
    classes: list[str] | None
    mean: Sequence[float] | None
    std: Sequence[float] | None


def _settings(
    path: Path,
    arch: str | None,
    classes: Sequence[str] | None,
    input_shape: Sequence[int] | None,
    mean: Sequence[float] | None,
    std: Sequence[float] | None,
) -> _Settings:
    """Each setting from its argument, else from ``<file>.json`` / ``<stem>.json``; class names must be unique."""
    meta, _ = read_metadata(path)
    given_shape: tuple[int, int, int] | None = None
    if input_shape is not None:
        given_shape = parse_shape(input_shape if isinstance(input_shape, str) else ",".join(map(str, input_shape)))
    elif "input_shape" in meta:
        given_shape = meta["input_shape"]
    if classes is None and "classes" in meta:
        classes = meta["classes"]
    if classes is not None:
        classes = [str(c) for c in classes]
        if len(set(classes)) != len(classes):
            raise UserError("class names must be unique")
    return _Settings(
        arch=arch or meta.get("arch"),
        input_shape=given_shape,
        classes=classes,
        mean=mean if mean is not None else meta.get("mean"),
        std=std if std is not None else meta.get("std"),
    )


def _load_model(
    path: Path, kind: str, settings: _Settings, trust_pickle: bool, device: str | torch.device, notes: list[str]
) -> tuple[str, nn.Module, tuple[int, int, int] | None, dict[str, Any]]:
    """The model in a sniffed file, its format, the input shape the file itself gives (if any), and the classes,
    mean and std the file itself gives (ONNX metadata, a Hugging Face folder, a timm config)."""
    if kind == "torchscript":
        return "torchscript", load_torchscript(path, device), None, {}
    if kind == "onnx":
        from .teacher_onnx import load_onnx

        model, dims, onnx_notes, meta = load_onnx(path, device)
        notes.extend(onnx_notes)
        shape = tuple(dims[1:]) if len(dims) == 4 and all(d is not None for d in dims[1:]) else None
        return "onnx", model, shape, meta  # type: ignore[return-value]
    if kind == "huggingface":
        from .teacher_hf import load_hf

        model, shape, hf_notes, meta = load_hf(path, device)
        notes.extend(hf_notes)
        return "huggingface", model, shape, meta
    if kind == "export":
        model, dims, export_notes = load_export(path, device, trust_pickle)
        notes.extend(export_notes)
        inferred_shape: tuple[int, int, int] | None = None
        if len(dims) == 4 and all(d is not None for d in dims[1:]):
            inferred_shape = (dims[1], dims[2], dims[3])  # type: ignore[assignment]
        return "export", model, inferred_shape, {}
    if kind == "safetensors":
        sd: dict[str, Tensor] | None = safetensors_load(path)
        module = None
    else:
        sd, module = find_state_dict(torch_load(path, device, trust_pickle), path)
    if module is not None:
        return "pickle", module, None, {}
    assert sd is not None
    model, in_channels = model_from_state_dict(sd, settings.arch, path, settings.input_shape, notes)
    if settings.arch and settings.arch.startswith("timm:"):
        meta = timm_settings(model)
        return "state_dict", model.to(device), meta.pop("input_shape", None), meta
    return "state_dict", model.to(device), (in_channels, *DEFAULT_INPUT_SHAPE[1:]), {}  # type: ignore[return-value]


def _with_file_metadata(settings: _Settings, file_meta: dict[str, Any], notes: list[str]) -> _Settings:
    """Classes, mean and std the file itself gives fill what neither the arguments nor the sidecar set."""
    filled = {key: file_meta[key] for key in ("classes", "mean", "std")
              if key in file_meta and getattr(settings, key) is None}
    if filled:
        notes.append(f"{', '.join(filled)} read from the file")
    return replace(settings, **filled)


def _input_spec(
    fmt: str, settings: _Settings, inferred_shape: tuple[int, int, int] | None, notes: list[str]
) -> TeacherSpec:
    """Input shape (given, else read from the file, else the default) and per-channel mean/std; no classes yet."""
    given_shape = settings.input_shape
    if fmt in ("export", "onnx") and given_shape and inferred_shape and given_shape != inferred_shape:
        fixed = ",".join(map(str, inferred_shape))
        what = "exported program" if fmt == "export" else "ONNX graph"
        raise UserError(
            f"teacher rejects input shape {','.join(map(str, given_shape))}: the {what} takes "
            f"{fixed}; pass --input-shape {fixed}"
        )
    shape = given_shape or inferred_shape or DEFAULT_INPUT_SHAPE
    if given_shape is None and inferred_shape is not None and inferred_shape != DEFAULT_INPUT_SHAPE:
        notes.append(f"input shape {','.join(map(str, shape))} read from the file")
    channels = shape[0]
    return TeacherSpec(
        input_shape=tuple(shape),  # type: ignore[arg-type]
        mean=channels_values("mean", settings.mean if settings.mean is not None else (0.0,), channels),
        std=channels_values("std", settings.std if settings.std is not None else (1.0,), channels),
        classes=None,
    )


def _freeze(model: nn.Module) -> None:
    """Eval mode, and no gradients for the parameters."""
    model.eval()
    for param in model.parameters():
        param.requires_grad_(False)


def _probe(teacher: LoadedTeacher, device: str | torch.device) -> Any:
    """The teacher's output for a batch of two all-zero images; UserError naming the input shape if it fails."""
    shape = teacher.spec.input_shape
    try:
        with torch.no_grad():
            return teacher(torch.zeros(2, *shape, device=device))
    except Exception as err:  # noqa: BLE001 - whatever the model raises, the shape is the usual cause
        c, h, w = shape
        raise UserError(
            f"teacher rejects input shape {c},{h},{w}: {error_line(err)}; pass --input-shape C,H,W"
        ) from None


def _pick_logits(teacher: LoadedTeacher, out: Any, notes: list[str]) -> Any:
    """The logits in a tuple, list or dict output, wrapping ``teacher.model`` to return only them."""
    key: int | str | None = None
    if isinstance(out, (tuple, list)):
        key = next((i for i, v in enumerate(out) if isinstance(v, Tensor)), None)
        if key is None:
            raise UserError(f"teacher returns a {type(out).__name__} with no tensor in it; expected logits")
        notes.append(f"teacher returns a {type(out).__name__}; using its first tensor (item {key}) as logits")
    elif isinstance(out, Mapping):
        if "logits" not in out or not isinstance(out["logits"], Tensor):
            raise UserError(f"teacher returns a dict without a 'logits' tensor (keys: {', '.join(map(str, out))})")
        key = "logits"
        notes.append("teacher returns a dict; using its 'logits' entry")
    if key is not None:
        out = out[key]
        teacher.model = Logits(teacher.model, key)
    return out


def _num_classes(out: Any, classes: Sequence[str] | None) -> int:
    """The class count of finite float logits (2, num_classes), checked against the class names given."""
    if not isinstance(out, Tensor):
        raise UserError(f"teacher returns a {type(out).__name__}; expected a logits tensor")
    if out.ndim != 2 or out.shape[0] != 2 or not out.is_floating_point():
        raise UserError(
            f"teacher output for a batch of 2 has shape {tuple(out.shape)} and dtype {out.dtype}; "
            "expected float logits of shape (2, num_classes)"
        )
    if not torch.isfinite(out).all():
        raise UserError("teacher outputs NaN or inf logits for an all-zero input; check the file and its mean/std")
    num_classes = int(out.shape[1])
    if num_classes < 2:
        raise UserError(f"teacher outputs {num_classes} logit per image; distillation needs a classifier with at "
                        "least 2 classes (for one sigmoid logit z, wrap the model to return [0, z])")
    if classes is not None and len(classes) != num_classes:
        raise UserError(f"{len(classes)} class names given but the teacher outputs {num_classes} logits")
    return num_classes


def load_teacher(
    path: str | os.PathLike[str],
    *,
    arch: str | None = None,
    classes: Sequence[str] | None = None,
    input_shape: Sequence[int] | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    trust_pickle: bool = False,
    device: str | torch.device = "cpu",
) -> LoadedTeacher:
    """Load, freeze and validate a teacher classifier.

    Settings come from the explicit arguments, else from ``<file>.json`` / ``<stem>.json`` next to
    the teacher (keys ``classes``, ``input_shape``, ``mean``, ``std``, ``arch``), else from the
    file itself where it says (input channels of a state dict, the static shape of an export),
    else defaults: input (3, 32, 32), mean 0, std 1 (the teacher takes [0, 1] images).

    Example::

        t = load_teacher("teacher.pt", arch="cnn_small", classes=["cat", "dog"])
        t.num_classes, t.spec.input_shape     # (2, (3, 32, 32))
    """
    p = Path(path)
    kind = sniff_format(p)
    settings = _settings(p, arch, classes, input_shape, mean, std)
    notes: list[str] = []
    fmt, model, inferred_shape, file_meta = _load_model(p, kind, settings, trust_pickle, device, notes)
    settings = _with_file_metadata(settings, file_meta, notes)
    spec = _input_spec(fmt, settings, inferred_shape, notes)
    _freeze(model)
    teacher = LoadedTeacher(model=model, format=fmt, path=p, sha256=sha256_path(p), spec=spec, num_classes=0, notes=notes)
    num_classes = _num_classes(_pick_logits(teacher, _probe(teacher, device), notes), settings.classes)
    names = tuple(settings.classes) if settings.classes is not None else tuple(str(i) for i in range(num_classes))
    teacher.spec = TeacherSpec(input_shape=spec.input_shape, mean=spec.mean, std=spec.std, classes=names)
    teacher.num_classes = num_classes
    return teacher


# --------------------------------------------------------------------------------------- inspect


def _bn_layers(teacher: LoadedTeacher) -> list[dict[str, Any]]:
    raw = unwrap(teacher.model)
    layers: list[dict[str, Any]] = []
    if teacher.format == "torchscript":
        for name, mod in raw.named_modules():
            original = getattr(mod, "original_name", "")
            if "BatchNorm" in original:
                running = getattr(mod, "running_mean", None)
                features = int(running.shape[0]) if isinstance(running, Tensor) else None
                layers.append({"name": name, "type": original, "num_features": features})
    elif teacher.format == "export":
        graph = getattr(raw, "graph", None)
        for node in graph.nodes if graph is not None else ():
            if node.op != "call_function" or "batch_norm" not in str(node.target):
                continue
            features = None
            for i in (3, 1):  # running_mean, weight
                arg = node.args[i] if len(node.args) > i else None
                val = getattr(arg, "meta", {}).get("val")
                if isinstance(val, Tensor) and val.ndim == 1:
                    features = int(val.shape[0])
                    break
            stack = node.meta.get("nn_module_stack") or {}
            source = list(stack.values())[-1][1] if stack else ""
            kind = str(source).rsplit(".", 1)[-1] if "BatchNorm" in str(source) else str(node.target)
            layers.append({"name": node.name, "type": kind, "num_features": features})
    else:
        for name, mod in raw.named_modules():
            if isinstance(mod, nn.modules.batchnorm._BatchNorm):
                layers.append({"name": name, "type": type(mod).__name__, "num_features": mod.num_features})
    return layers


def inspect_teacher(loaded: LoadedTeacher) -> dict[str, Any]:
    """A JSON-friendly summary of a loaded teacher, including its batch-norm layers.

    Example::

        info = inspect_teacher(load_teacher("teacher.pt"))
        [bn["name"] for bn in info["batchnorm_layers"]]
    """
    spec = loaded.spec
    return {
        "format": loaded.format,
        "path": str(loaded.path),
        "sha256": loaded.sha256,
        "params": loaded.param_count,
        "num_classes": loaded.num_classes,
        "input_shape": list(spec.input_shape),
        "mean": list(spec.mean),
        "std": list(spec.std),
        "classes": list(spec.classes) if spec.classes is not None else None,
        "batchnorm_layers": _bn_layers(loaded),
        "notes": list(loaded.notes),
    }
