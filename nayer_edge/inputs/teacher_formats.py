"""Reading each teacher file format safely: sniffing the format from the file's content, TorchScript,
``torch.export`` archives (run at any batch size, read with no code from pickles unless trusted),
``torch.load`` (weights-only unless trusted), and building a zoo model from a state dict.

Example::

    kind = sniff_format(Path("teacher.pt2"))     # "torchscript" | "export" | "torch_save" | "onnx" | …
"""

from __future__ import annotations

import contextlib
import logging
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..core.errors import UserError
from ..core.strict import closest_name
from .teacher_spec import DEFAULT_INPUT_SHAPE

FORMATS = ("torchscript", "export", "state_dict", "pickle", "onnx", "huggingface")
_NOT_A_MODEL = ("not a TorchScript, torch.export, ONNX, safetensors or state-dict file, nor a Hugging Face "
                "model folder")
_STATE_DICT_KEYS = ("state_dict", "model", "model_state_dict")


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


HF_CONFIG = "config.json"  # a Hugging Face model folder's own config (not the run folder's config.json)
BatchChunks = _ExportedModule  # any module with a fixed batch size (an ONNX graph's too)


class Logits(nn.Module):
    """Picks the logits out of a model that returns a tuple, list or dict."""

    def __init__(self, module: nn.Module, key: int | str):
        super().__init__()
        self.module = module
        self.key = key

    def forward(self, x: Tensor) -> Tensor:
        return self.module(x)[self.key]


def unwrap(model: nn.Module) -> nn.Module:
    while isinstance(model, (_ExportedModule, Logits)):
        model = model.module
    return model



# --------------------------------------------------------------------------------------- loading


def error_line(err: BaseException) -> str:
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


def sniff_format(path: Path) -> str:
    """'torchscript' | 'export' | 'torch_save' | 'safetensors' | 'onnx' | 'huggingface' by content; UserError
    for anything else."""
    if not path.exists():
        raise UserError(f"{path}: {_NOT_A_MODEL} (file not found)")
    if path.is_dir():
        if (path / HF_CONFIG).is_file():
            return "huggingface"
        raise UserError(f"{path}: {_NOT_A_MODEL} (a directory without a Hugging Face config.json)")
    try:
        with open(path, "rb") as f:
            head = f.read(9)
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
    if len(head) == 9 and head[8:9] == b"{" and 0 < int.from_bytes(head[:8], "little") < 100_000_000:
        return "safetensors"  # an 8-byte little-endian header length, then the JSON header
    if head[0] == 0x08:  # protobuf field 1 (ir_version), varint: how every ONNX ModelProto starts
        return "onnx"
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


def load_torchscript(path: Path, device: str | torch.device) -> nn.Module:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # "torch.jit.load is deprecated"
            return torch.jit.load(str(path), map_location=device)
    except Exception as err:  # noqa: BLE001 - any loader failure is a bad file for the user
        raise UserError(f"{path}: cannot load TorchScript file ({error_line(err)})") from None


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


def load_export(path: Path, device: str | torch.device, trust_pickle: bool = False
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
    except Exception as err:  # noqa: BLE001 - whatever the user's file makes torch raise becomes one line
        raise UserError(f"{path}: cannot load torch.export program ({error_line(err)})") from None
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


def torch_load(path: Path, device: str | torch.device, trust_pickle: bool) -> Any:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "Detected pickle protocol 4 ..."
            return torch.load(path, map_location=device, weights_only=True)
    except Exception as err:  # noqa: BLE001 - whatever the user's file makes torch raise becomes one line
        message = str(err)
        with open(path, "rb") as f:
            head = f.read(2)
        is_pickle = len(head) == 2 and head[0] == 0x80 and 2 <= head[1] <= 5
        # torch's refusal of a global (a class, a function) is worded differently from version to version
        # and callable to callable; "Weights only load failed" heads all of them.
        has_code = any(s in message for s in ("Weights only load failed", "Unsupported global", "GLOBAL ")) or (
            is_pickle and "Unsupported operand" in message)
        if not has_code:
            raise UserError(f"{path}: {_NOT_A_MODEL} ({error_line(err)})") from None
        if not trust_pickle:
            raise UserError(
                f"{path}: contains pickled code; re-run with --trust-pickle only if you trust its source"
            ) from None
    try:
        return torch.load(path, map_location=device, weights_only=False)
    except Exception as err:  # noqa: BLE001 - whatever the user's file makes torch raise becomes one line
        raise UserError(f"{path}: cannot unpickle ({error_line(err)})") from None


def safetensors_load(path: Path) -> dict[str, Tensor]:
    """A safetensors file's tensors (no pickle involved)."""
    from ..core.optional import require

    safetensors_torch = require("safetensors.torch")
    try:
        return safetensors_torch.load_file(str(path), device="cpu")
    except Exception as err:  # noqa: BLE001 - a bad file is the user's: one line
        raise UserError(f"{path}: cannot read the safetensors file (truncated or corrupt: {error_line(err)})") from None


def find_state_dict(obj: Any, path: Path) -> tuple[dict[str, Tensor] | None, nn.Module | None]:
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


def _classes_and_channels(sd: dict[str, Tensor], path: Path) -> tuple[int, int | None]:
    """The class count (rows of the last 2-D weight) and the input channels (of the first conv weight, None
    without one) of a classifier's state dict."""
    weights_2d = [v for k, v in sd.items() if k.endswith("weight") and v.ndim == 2]
    if not weights_2d:
        raise UserError(f"{path}: no 2-D weight in the state dict, so the number of classes is unknown")
    conv = next((v for k, v in sd.items() if k.endswith("weight") and v.ndim == 4), None)
    return int(weights_2d[-1].shape[0]), int(conv.shape[1]) if conv is not None else None


def model_from_state_dict(
    sd: dict[str, Tensor],
    arch: str | None,
    path: Path,
    input_shape: tuple[int, int, int] | None,
    notes: list[str],
) -> tuple[nn.Module, int]:
    from .. import zoo  # lazy: the zoo imports every architecture

    if arch and arch.startswith("timm:"):
        return timm_model(sd, arch, path, notes)
    names = list(zoo.list_models())
    if not arch:
        raise UserError(
            f"{path}: is a state-dict checkpoint, which holds weights only; pass --arch NAME "
            f"(one of: {', '.join(names)}, or timm:MODEL for a timm architecture)"
        )
    if arch not in names:
        raise UserError(f"unknown --arch '{arch}'{closest_name(arch, names)}; choose one of: {', '.join(names)}")
    sd = _strip_prefix(sd, notes)
    num_classes, conv_channels = _classes_and_channels(sd, path)
    in_channels = conv_channels or (input_shape or DEFAULT_INPUT_SHAPE)[0]
    input_size = (input_shape or DEFAULT_INPUT_SHAPE)[1]
    try:
        model = zoo.create_model(arch, num_classes=num_classes, in_channels=in_channels, input_size=input_size)
    except UserError:
        raise
    except Exception as err:  # noqa: BLE001 - whatever the user's file makes torch raise becomes one line
        raise UserError(f"cannot build --arch {arch} for {num_classes} classes: {error_line(err)}") from None
    load_matching(model, sd, path, arch)
    return model, in_channels


def load_matching(model: nn.Module, sd: dict[str, Tensor], path: Path, arch: str) -> None:
    """``model.load_state_dict(sd, strict=True)``, or one line naming the first missing, unexpected or
    mis-shaped key."""
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
    except Exception as err:  # noqa: BLE001 - whatever the user's file makes torch raise becomes one line
        raise UserError(f"{path}: state dict does not match --arch {arch}: {error_line(err)}") from None


def timm_model(sd: dict[str, Tensor], arch: str, path: Path, notes: list[str]) -> tuple[nn.Module, int]:
    """``--arch timm:NAME``: timm's architecture (``pretrained=False``: nothing downloaded) with the user's weights;
    its input size and normalisation are in ``model.pretrained_cfg`` (read by :func:`timm_settings`)."""
    from ..core.optional import require

    timm = require("timm")
    name = arch.split(":", 1)[1]
    sd = _strip_prefix(sd, notes)
    num_classes, conv_channels = _classes_and_channels(sd, path)
    in_chans = conv_channels or 3
    try:
        model = timm.create_model(name, pretrained=False, num_classes=num_classes, in_chans=in_chans)
    except Exception as err:  # noqa: BLE001 - an unknown name or bad arguments are the user's: one line
        raise UserError(f"cannot build --arch {arch}: {error_line(err)}") from None
    load_matching(model, sd, path, arch)
    notes.append(f"timm architecture {name} (pretrained=False) with the weights of {path.name}")
    return model, in_chans


def timm_settings(model: nn.Module) -> dict[str, Any]:
    """input_shape, mean and std from a timm model's ``pretrained_cfg``, where it has them."""
    cfg = getattr(unwrap(model), "pretrained_cfg", None) or {}
    out: dict[str, Any] = {}
    size = cfg.get("input_size")
    if isinstance(size, (list, tuple)) and len(size) == 3:
        out["input_shape"] = tuple(int(v) for v in size)
    for key in ("mean", "std"):
        if isinstance(cfg.get(key), (list, tuple)):
            out[key] = tuple(float(v) for v in cfg[key])
    return out
