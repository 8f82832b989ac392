"""Load a user's teacher classifier from a file, whatever form it was saved in, and check it works.

Supported files (detected by content, not by extension):

* TorchScript (``torch.jit.save``),
* a ``torch.export`` program (``torch.export.save``, usually ``.pt2``),
* a state-dict checkpoint (``torch.save(model.state_dict())`` or a dict holding one under
  ``state_dict`` / ``model`` / ``model_state_dict``) plus ``arch``, a model name from :mod:`nayer_edge.zoo`,
* a fully pickled ``nn.Module`` (``torch.save(model)``), only with ``trust_pickle=True``: unpickling
  runs arbitrary code, so by default files are read with ``torch.load(weights_only=True)`` only.

Example::

    teacher = load_teacher("resnet34_cifar10.pt", arch="resnet34", classes=parse_classes("classes.txt"))
    logits = teacher(images01)          # images in [0, 1]; normalisation is applied for you
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import warnings
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..core.atomic import sha256_file
from ..core.errors import UserError, first_line
from ..core.strict import closest_name

__all__ = [
    "TeacherSpec",
    "LoadedTeacher",
    "load_teacher",
    "inspect_teacher",
    "parse_classes",
    "parse_floats",
    "parse_shape",
]

FORMATS = ("torchscript", "export", "state_dict", "pickle")
DEFAULT_INPUT_SHAPE = (3, 32, 32)
_NOT_A_MODEL = "not a TorchScript, torch.export or state-dict file"
_META_KEYS = ("classes", "input_shape", "mean", "std", "arch")
_STATE_DICT_KEYS = ("state_dict", "model", "model_state_dict")


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


# --------------------------------------------------------------------------------------- wrappers


class _ExportedModule(nn.Module):
    """Runs a ``torch.export`` module at any batch size.

    Exported graphs usually carry a static batch size B (a guard rejects anything else), so a batch
    is cut into chunks of B, the last one padded with zeros and the padding dropped from the output.
    Slicing and ``torch.cat`` keep the autograd graph, so gradients still reach the input.
    """

    def __init__(self, module: nn.Module, batch: int | None):
        super().__init__()
        self.module = module
        self.batch = batch

    def train(self, mode: bool = True) -> _ExportedModule:
        # train/eval behaviour is baked into an exported graph, and calling .train()/.eval() on
        # it raises NotImplementedError; only record the flag here.
        self.training = mode
        return self

    def forward(self, x: Tensor) -> Any:
        b = self.batch
        if b is None or x.shape[0] == b:
            return self.module(x)
        from torch.utils import _pytree as pytree

        leaves_per_chunk, spec = [], None
        for start in range(0, x.shape[0], b):
            chunk = x[start : start + b]
            n = chunk.shape[0]
            if n < b:
                chunk = torch.cat([chunk, chunk.new_zeros((b - n, *chunk.shape[1:]))])
            leaves, spec = pytree.tree_flatten(self.module(chunk))
            leaves_per_chunk.append(
                [t[:n] if isinstance(t, Tensor) and t.ndim > 0 and t.shape[0] == b else t for t in leaves]
            )
        if spec is None:  # empty batch
            return self.module(x)
        merged = [
            torch.cat(column) if isinstance(column[0], Tensor) and column[0].ndim > 0 else column[0]
            for column in zip(*leaves_per_chunk)
        ]
        return pytree.tree_unflatten(merged, spec)


class _Logits(nn.Module):
    """Picks the logits out of a model that returns a tuple, list or dict."""

    def __init__(self, module: nn.Module, key: int | str):
        super().__init__()
        self.module = module
        self.key = key

    def forward(self, x: Tensor) -> Tensor:
        return self.module(x)[self.key]


def _unwrap(model: nn.Module) -> nn.Module:
    while isinstance(model, (_ExportedModule, _Logits)):
        model = model.module
    return model


# --------------------------------------------------------------------------------------- parsing


def parse_classes(value: str) -> list[str]:
    """Class names from a file (one per line, blank lines ignored) or a comma-separated list.

    Example: ``parse_classes("cat,dog,bird")`` -> ``["cat", "dog", "bird"]``.
    """
    text = str(value)
    p = Path(text)
    if text and p.is_file():
        try:
            names = [line.strip() for line in p.read_text(encoding="utf-8").splitlines()]
        except (OSError, UnicodeDecodeError) as err:
            raise UserError(f"{p}: cannot read class names ({err})") from None
        names = [n for n in names if n]
        where = str(p)
    else:
        if "," not in text and (os.sep in text or "/" in text or p.suffix.lower() in {".txt", ".names", ".csv"}):
            raise UserError(
                f"{text}: no such file; pass a file with one class name per line or a comma-separated list"
            )
        names = [n.strip() for n in text.split(",")]
        if any(not n for n in names) and any(names):
            raise UserError(f"empty class name in '{text}'; separate names with single commas")
        names = [n for n in names if n]
        where = f"'{text}'"
    if not names:
        raise UserError(f"no class names in {where}; give a file with one per line or a comma-separated list")
    seen: set[str] = set()
    for n in names:
        if n in seen:
            raise UserError(f"duplicate class name '{n}' in {where}; class names must be unique")
        seen.add(n)
    return names


def parse_floats(value: str, n: int | None = None) -> tuple[float, ...]:
    """Comma-separated numbers, e.g. ``"0.485,0.456,0.406"``; ``n`` is the required count."""
    parts = [s.strip() for s in str(value).split(",")]
    try:
        numbers = tuple(float(s) for s in parts)
    except ValueError:
        raise UserError(f"'{value}' is not a comma-separated list of numbers (e.g. 0.5,0.5,0.5)") from None
    if not all(math.isfinite(v) for v in numbers):
        raise UserError(f"'{value}' contains a non-finite number; give finite values")
    if n is not None and len(numbers) != n:
        raise UserError(f"'{value}' has {len(numbers)} numbers; expected {n}")
    return numbers


def parse_shape(value: str) -> tuple[int, int, int]:
    """An input shape ``"C,H,W"``, e.g. ``"3,32,32"``."""
    parts = [s.strip() for s in str(value).replace("x", ",").split(",")]
    try:
        dims = tuple(int(s) for s in parts)
    except ValueError:
        raise UserError(f"input shape '{value}' is not C,H,W (e.g. 3,32,32)") from None
    if len(dims) != 3 or any(d <= 0 for d in dims):
        raise UserError(f"input shape '{value}' is not C,H,W with three positive integers (e.g. 3,32,32)")
    return dims  # type: ignore[return-value]


# --------------------------------------------------------------------------------------- metadata


def _metadata_path(path: Path) -> Path | None:
    for cand in (path.with_name(path.name + ".json"), path.with_suffix(".json")):
        if cand != path and cand.is_file():
            return cand
    return None


def _read_metadata(path: Path) -> tuple[dict[str, Any], Path | None]:
    meta_path = _metadata_path(path)
    if meta_path is None:
        return {}, None
    try:
        data = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UserError(f"{meta_path}: not valid JSON ({first_line(err)})") from None
    if not isinstance(data, dict):
        raise UserError(f"{meta_path}: expected a JSON object with keys {', '.join(_META_KEYS)}")
    out: dict[str, Any] = {}
    for key, value in data.items():
        if key not in _META_KEYS:
            raise UserError(
                f"{meta_path}: unknown key {key!r}{closest_name(key, _META_KEYS)}; "
                f"allowed keys: {', '.join(_META_KEYS)}"
            )
        where = f"{meta_path}: '{key}'"
        if key == "classes":
            if not isinstance(value, list) or not value or not all(isinstance(c, str) and c for c in value):
                raise UserError(f"{where} must be a non-empty list of class-name strings")
            if len(set(value)) != len(value):
                dup = next(c for c in value if value.count(c) > 1)
                raise UserError(f"{where} has the duplicate class name '{dup}'")
            out[key] = list(value)
        elif key == "input_shape":
            if (
                not isinstance(value, list)
                or len(value) != 3
                or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in value)
            ):
                raise UserError(f"{where} must be [C, H, W] with three positive integers, got {value!r}")
            out[key] = tuple(value)
        elif key in ("mean", "std"):
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                value = [value]
            if (
                not isinstance(value, list)
                or not value
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
            ):
                raise UserError(f"{where} must be a list of numbers, got {value!r}")
            out[key] = tuple(float(v) for v in value)
        elif key == "arch":
            if not isinstance(value, str) or not value:
                raise UserError(f"{where} must be a model name string")
            out[key] = value
    return out, meta_path


def _channels_values(name: str, values: Sequence[float], channels: int) -> tuple[float, ...]:
    values = tuple(float(v) for v in values)
    if len(values) == 1:
        values = values * channels
    if len(values) != channels:
        raise UserError(
            f"{name} has {len(values)} values but the teacher takes {channels} channels; "
            f"give 1 or {channels} values"
        )
    if not all(math.isfinite(v) for v in values):
        raise UserError(f"{name} contains a non-finite value; give finite numbers")
    if name == "std" and any(v <= 0 for v in values):
        raise UserError("std values must be positive")
    return values


# --------------------------------------------------------------------------------------- loading


def _error_line(err: BaseException) -> str:
    """One informative line of an exception message (TorchScript puts the real error last)."""
    lines = [ln.strip() for ln in str(err).strip().splitlines() if ln.strip()]
    if not lines:
        return type(err).__name__
    line = lines[0]
    if "TorchScript interpreter" in line or line.startswith("Traceback"):
        line = lines[-1]
        head, sep, rest = line.partition(": ")
        if sep and head.endswith(("Error", "Exception")):
            line = rest
    return line[:300]


def _sniff(path: Path) -> str:
    """'torchscript' | 'export' | 'torch_save' by file content; UserError for anything else."""
    if not path.exists():
        raise UserError(f"{path}: {_NOT_A_MODEL} (file not found)")
    if path.is_dir():
        raise UserError(f"{path}: {_NOT_A_MODEL} (it is a directory)")
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as err:
        raise UserError(f"{path}: cannot read file ({err.strerror or err})") from None
    if not head:
        raise UserError(f"{path}: {_NOT_A_MODEL} (the file is empty)")
    if _is_tar(path):
        raise UserError(f"{path}: {_NOT_A_MODEL} (a tar or compressed archive; extract it and pass the model file inside)")
    # zipfile.is_zipfile finds an end-of-archive record anywhere, even in a zip embedded in another file;
    # model archives start with a local file header.
    if head.startswith(b"PK") and zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as zf:
                names = zf.namelist()
        except (zipfile.BadZipFile, OSError, ValueError) as err:
            raise UserError(f"{path}: {_NOT_A_MODEL} (corrupt zip archive: {err})") from None
        tails = {n.split("/", 1)[1] if "/" in n else n for n in names}
        if "archive_format" in tails:
            return "export"
        if "constants.pkl" in tails or any(t.startswith("code/") for t in tails):
            return "torchscript"
        if "data.pkl" in tails:
            return "torch_save"
        raise UserError(f"{path}: {_NOT_A_MODEL} (a zip archive with none of their contents)")
    if head.startswith(b"PK"):
        raise UserError(f"{path}: {_NOT_A_MODEL} (truncated or corrupt zip archive)")
    if head[0] == 0x80:  # pickle protocol marker: legacy torch.save format or a plain pickle
        return "torch_save"
    raise UserError(f"{path}: {_NOT_A_MODEL} (unrecognised content)")


def _is_tar(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            f.seek(257)
            if f.read(5) == b"ustar":  # POSIX / GNU tar header magic
                return True
            f.seek(0)
            head = f.read(6)
    except OSError:
        return False
    # compressed tarballs: gzip, bzip2, xz
    return head.startswith((b"\x1f\x8b", b"BZh", b"\xfd7zXZ"))


def _load_torchscript(path: Path, device: str | torch.device) -> nn.Module:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # "torch.jit.load is deprecated"
            return torch.jit.load(str(path), map_location=device)
    except Exception as err:  # noqa: BLE001 - any loader failure is a bad file for the user
        raise UserError(f"{path}: cannot load TorchScript file ({_error_line(err)})") from None


class _PickledCode(Exception):
    """An unpickling inside ``torch.export.load`` that would need code; not a RuntimeError, which torch catches."""


@contextlib.contextmanager
def _no_code_from_pickles():
    """``torch.export.load`` unpickles some payloads with ``weights_only=False`` (weights and constants marked
    ``use_pickle``, legacy state-dict files, custom and opaque objects): a crafted archive runs code there. For
    the duration of the load, every ``torch.load`` is made weights-only and the unpicklers that cannot be made
    safe refuse. Torch calls them through module attributes, so patching the attributes reaches every path."""
    import pickle

    real_load, real_loads, real_load_obj = torch.load, pickle.loads, torch._C._pickle_load_obj

    def weights_only_load(f, *args, weights_only=None, **kwargs):
        try:
            return real_load(f, *args, weights_only=True, **kwargs)
        except Exception as err:
            if weights_only is True:
                raise
            raise _PickledCode(str(err)) from None

    def refuse(*_args, **_kwargs):
        raise _PickledCode("a pickled object")

    torch.load, pickle.loads, torch._C._pickle_load_obj = weights_only_load, refuse, refuse
    try:
        yield
    finally:
        torch.load, pickle.loads, torch._C._pickle_load_obj = real_load, real_loads, real_load_obj


@contextlib.contextmanager
def _quiet_torch_export_logs():
    """torch.export.load logs a failed read with its whole traceback before raising; the one-line error says it."""
    loggers = [logging.getLogger(name) for name in ("torch.export", "torch._export")]
    disabled = [lg.disabled for lg in loggers]
    for lg in loggers:
        lg.disabled = True
    try:
        yield
    finally:
        for lg, was in zip(loggers, disabled):
            lg.disabled = was


def _load_export(path: Path, device: str | torch.device, trust_pickle: bool = False
                 ) -> tuple[nn.Module, list[int | None], list[str]]:
    guard = contextlib.nullcontext() if trust_pickle else _no_code_from_pickles()
    try:
        with _quiet_torch_export_logs(), guard, open(path, "rb") as f:
            # a file object: torch.export.load insists on a .pt2 name otherwise
            program = torch.export.load(f)
        module = program.module()
    except _PickledCode:
        raise UserError(
            f"{path}: the exported program contains pickled code; re-run with --trust-pickle only if you trust "
            "its source"
        ) from None
    except Exception as err:  # noqa: BLE001
        raise UserError(f"{path}: cannot load torch.export program ({_error_line(err)})") from None
    user_inputs = list(program.graph_signature.user_inputs)
    if len(user_inputs) != 1:
        raise UserError(
            f"{path}: the exported program takes {len(user_inputs)} inputs; expected one image tensor"
        )
    dims: list[int | None] = []
    for node in program.graph.nodes:
        if node.op == "placeholder" and node.name == user_inputs[0]:
            val = node.meta.get("val")
            if isinstance(val, Tensor):
                dims = [d if isinstance(d, int) else None for d in val.shape]
    notes = []
    batch = dims[0] if dims else None
    if batch is not None:
        notes.append(f"exported program has a fixed batch size {batch}; batches are run in chunks of {batch}")
    module = module.to(device)
    return _ExportedModule(module, batch), dims, notes


def _torch_load(path: Path, device: str | torch.device, trust_pickle: bool) -> Any:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "Detected pickle protocol 4 ..."
            return torch.load(path, map_location=device, weights_only=True)
    except Exception as err:  # noqa: BLE001
        message = str(err)
        with open(path, "rb") as f:
            head = f.read(2)
        is_pickle = len(head) == 2 and head[0] == 0x80 and 2 <= head[1] <= 5
        # torch's refusal of a global (a class, a function) is worded differently from version to version
        # and callable to callable; "Weights only load failed" heads all of them.
        has_code = any(s in message for s in ("Weights only load failed", "Unsupported global", "GLOBAL ")) or (
            is_pickle and "Unsupported operand" in message)
        if not has_code:
            raise UserError(f"{path}: {_NOT_A_MODEL} ({_error_line(err)})") from None
        if not trust_pickle:
            raise UserError(
                f"{path}: contains pickled code; re-run with --trust-pickle only if you trust its source"
            ) from None
    try:
        return torch.load(path, map_location=device, weights_only=False)
    except Exception as err:  # noqa: BLE001
        raise UserError(f"{path}: cannot unpickle ({_error_line(err)})") from None


def _find_state_dict(obj: Any, path: Path) -> tuple[dict[str, Tensor] | None, nn.Module | None]:
    if isinstance(obj, nn.Module):
        return None, obj
    if not isinstance(obj, Mapping):
        raise UserError(f"{path}: holds a {type(obj).__name__}, not a model or a state dict")
    for key in _STATE_DICT_KEYS:
        inner = obj.get(key)
        if isinstance(inner, nn.Module):
            return None, inner
        if isinstance(inner, Mapping) and inner and all(isinstance(v, Tensor) for v in inner.values()):
            return dict(inner), None
    if obj and all(isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items()):
        return dict(obj), None
    keys = ", ".join(map(str, list(obj)[:8]))
    raise UserError(
        f"{path}: no state dict found: expected a dict of tensors or one under "
        f"{'/'.join(_STATE_DICT_KEYS)} (found keys: {keys})"
    )


def _strip_prefix(sd: dict[str, Tensor], notes: list[str]) -> dict[str, Tensor]:
    for prefix in ("module.", "_orig_mod."):
        if sd and all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix) :]: v for k, v in sd.items()}
            notes.append(f"stripped the '{prefix}' prefix from the state-dict keys")
    return sd


def _model_from_state_dict(
    sd: dict[str, Tensor],
    arch: str | None,
    path: Path,
    input_shape: tuple[int, int, int] | None,
    notes: list[str],
) -> tuple[nn.Module, int]:
    from .. import zoo  # lazy: the zoo imports every architecture

    names = list(zoo.list_models())
    if not arch:
        raise UserError(
            f"{path}: is a state-dict checkpoint, which holds weights only; pass --arch NAME "
            f"(one of: {', '.join(names)})"
        )
    if arch not in names:
        raise UserError(f"unknown --arch '{arch}'{closest_name(arch, names)}; choose one of: {', '.join(names)}")
    sd = _strip_prefix(sd, notes)
    weights_2d = [v for k, v in sd.items() if k.endswith("weight") and v.ndim == 2]
    if not weights_2d:
        raise UserError(f"{path}: no 2-D weight in the state dict, so the number of classes is unknown")
    num_classes = int(weights_2d[-1].shape[0])
    conv = next((v for k, v in sd.items() if k.endswith("weight") and v.ndim == 4), None)
    in_channels = int(conv.shape[1]) if conv is not None else (input_shape or DEFAULT_INPUT_SHAPE)[0]
    input_size = (input_shape or DEFAULT_INPUT_SHAPE)[1]
    try:
        model = zoo.create_model(arch, num_classes=num_classes, in_channels=in_channels, input_size=input_size)
    except UserError:
        raise
    except Exception as err:  # noqa: BLE001
        raise UserError(f"cannot build --arch {arch} for {num_classes} classes: {_error_line(err)}") from None
    expected = model.state_dict()
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    problems = []
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        problems.append(f"missing key '{missing[0]}'{more}")
    if unexpected:
        more = f" (and {len(unexpected) - 1} more)" if len(unexpected) > 1 else ""
        problems.append(f"unexpected key '{unexpected[0]}'{more}")
    if not problems:
        for k, v in expected.items():
            if tuple(sd[k].shape) != tuple(v.shape):
                problems.append(f"'{k}' has shape {tuple(sd[k].shape)}, expected {tuple(v.shape)}")
                break
    if problems:
        raise UserError(
            f"{path}: state dict does not match --arch {arch}: {'; '.join(problems)}; check --arch"
        )
    try:
        model.load_state_dict(sd, strict=True)
    except Exception as err:  # noqa: BLE001
        raise UserError(f"{path}: state dict does not match --arch {arch}: {_error_line(err)}") from None
    return model, in_channels


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
    kind = _sniff(p)
    meta, _ = _read_metadata(p)
    arch = arch or meta.get("arch")
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
    mean = mean if mean is not None else meta.get("mean")
    std = std if std is not None else meta.get("std")

    notes: list[str] = []
    inferred_shape: tuple[int, int, int] | None = None
    if kind == "torchscript":
        fmt, model = "torchscript", _load_torchscript(p, device)
    elif kind == "export":
        fmt = "export"
        model, dims, export_notes = _load_export(p, device, trust_pickle)
        notes += export_notes
        if len(dims) == 4 and all(d is not None for d in dims[1:]):
            inferred_shape = (dims[1], dims[2], dims[3])  # type: ignore[assignment]
    else:
        obj = _torch_load(p, device, trust_pickle)
        sd, module = _find_state_dict(obj, p)
        if module is not None:
            fmt, model = "pickle", module
        else:
            assert sd is not None
            fmt = "state_dict"
            model, in_channels = _model_from_state_dict(sd, arch, p, given_shape, notes)
            inferred_shape = (in_channels, *DEFAULT_INPUT_SHAPE[1:])  # type: ignore[assignment]
            model = model.to(device)

    if fmt == "export" and given_shape and inferred_shape and given_shape != inferred_shape:
        fixed = ",".join(map(str, inferred_shape))
        raise UserError(
            f"teacher rejects input shape {','.join(map(str, given_shape))}: the exported program takes "
            f"{fixed}; pass --input-shape {fixed}"
        )
    shape = given_shape or inferred_shape or DEFAULT_INPUT_SHAPE
    if given_shape is None and inferred_shape is not None and inferred_shape != DEFAULT_INPUT_SHAPE:
        notes.append(f"input shape {','.join(map(str, shape))} read from the file")
    channels = shape[0]
    spec = TeacherSpec(
        input_shape=tuple(shape),  # type: ignore[arg-type]
        mean=_channels_values("mean", mean if mean is not None else (0.0,), channels),
        std=_channels_values("std", std if std is not None else (1.0,), channels),
        classes=None,
    )

    model.eval()
    for param in model.parameters():
        param.requires_grad_(False)

    teacher = LoadedTeacher(model=model, format=fmt, path=p, sha256=sha256_file(p), spec=spec, num_classes=0, notes=notes)
    try:
        with torch.no_grad():
            out = teacher(torch.zeros(2, *shape, device=device))
    except Exception as err:  # noqa: BLE001 - whatever the model raises, the shape is the usual cause
        c, h, w = shape
        raise UserError(
            f"teacher rejects input shape {c},{h},{w}: {_error_line(err)}; pass --input-shape C,H,W"
        ) from None

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
        teacher.model = _Logits(model, key)
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
    names = tuple(classes) if classes is not None else tuple(str(i) for i in range(num_classes))
    teacher.spec = TeacherSpec(input_shape=spec.input_shape, mean=spec.mean, std=spec.std, classes=names)
    teacher.num_classes = num_classes
    return teacher


# --------------------------------------------------------------------------------------- inspect


def _bn_layers(teacher: LoadedTeacher) -> list[dict[str, Any]]:
    raw = _unwrap(teacher.model)
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
