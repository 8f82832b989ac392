"""Export a classifier to ONNX and check the exported graph against the PyTorch model.

``export_onnx`` writes one ``.onnx`` file (plus ``<name>.data`` for models over 1.5 GB) whose metadata
records the input convention, so later steps (``verify``, TensorRT builds) know what to feed it.
``check_parity`` runs the file in onnxruntime next to the reference module and raises ``ParityError``,
showing the largest difference, when they disagree.

Example::

    path = export_onnx(student, "student.onnx", input_shape=(3, 32, 32), mean=mean, std=std,
                       fold_normalization=True, classes=classes)
    report = check_parity(path, NormalizedModel(student, mean, std), images01)
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from .. import __version__
from ..core.atomic import fsync_dir
from ..core.errors import UserError, first_line
from ..core.normalize import NormalizedModel
from ..core.optional import require

__all__ = [
    "export_onnx",
    "check_parity",
    "compare_logits",
    "onnx_session",
    "run_session",
    "read_metadata",
    "ParityReport",
    "ParityError",
    "EXTERNAL_DATA_THRESHOLD",
    "INPUT_NAME",
    "OUTPUT_NAME",
]

INPUT_NAME = "images"
OUTPUT_NAME = "logits"
# Above this many bytes of weights the tensors go to "<file>.data": a protobuf cannot exceed 2 GB.
EXTERNAL_DATA_THRESHOLD = 1_500_000_000
META_PREFIX = "nayer_edge."
IMAGES01 = "images01"
NORMALISED = "normalised"


# --------------------------------------------------------------------------------------- export

# One keyword per export setting, each with a default (callers name them): the count is the interface.
def export_onnx(
    model: nn.Module,
    path: str | os.PathLike[str],
    *,
    input_shape: Sequence[int],
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    fold_normalization: bool = False,
    batch: int | None = None,
    opset: int = 17,
    classes: Sequence[str] | None = None,
    external_data_threshold: int = EXTERNAL_DATA_THRESHOLD,
    provenance: dict[str, str] | None = None,
) -> Path:
    """Export ``model`` (a classifier taking N×C×H×W) to ONNX, check it, and write it atomically.

    The graph has one input ``images`` and one output ``logits``. ``batch=None`` gives a dynamic
    batch axis named ``batch``; an integer fixes it. With ``fold_normalization`` the graph takes
    images in [0, 1] and computes ``(x - mean) / std`` itself; otherwise it takes whatever ``model``
    takes (normalised input when ``mean``/``std`` are given, which are then recorded for the caller).
    Weights larger than ``external_data_threshold`` bytes are saved to ``<file>.data`` next to it.
    ``provenance`` adds ``nayer_edge.*`` metadata strings (e.g. the sha256 of the weights it was made from).

    Metadata (``metadata_props``): ``nayer_edge.input`` (``images01`` or ``normalised``),
    ``nayer_edge.input_shape``, ``nayer_edge.mean``, ``nayer_edge.std``, ``nayer_edge.classes``
    (JSON) and ``nayer_edge.version``.

    Example::

        export_onnx(student, "out/student.onnx", input_shape=(1, 16, 16), mean=[0.5], std=[0.5],
                    fold_normalization=True, batch=None)
    """
    require("onnx")  # a missing onnx is reported before bad arguments

    shape, mean_t, std_t = _check_options(input_shape, mean, std, fold_normalization, batch, opset)
    convention = _Convention(input=NORMALISED if (mean_t is not None and not fold_normalization) else IMAGES01,
                             shape=shape, mean=mean_t, std=std_t,
                             classes=[str(c) for c in classes] if classes is not None else None)
    was_training = model.training
    net, example = _export_input(model, convention, fold_normalization, batch)

    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    try:
        raw = tmp_dir / "export.onnx"
        _torch_export(net, example, raw, opset, dynamic=batch is None)
        staged = tmp_dir / out.name
        external = _stage(raw, staged, convention, provenance, external_data_threshold)
        _publish(staged, out, external)
    finally:
        model.train(was_training)
        shutil.rmtree(tmp_dir, ignore_errors=True)
    return out


def _check_options(input_shape: Sequence[int], mean: Sequence[float] | None, std: Sequence[float] | None,
                   fold_normalization: bool, batch: int | None, opset: int
                   ) -> tuple[tuple[int, int, int], tuple[float, ...] | None, tuple[float, ...] | None]:
    """The checked input shape, mean and std (one value per channel) of an export; UserError for bad options."""
    shape = _check_shape(input_shape)
    if batch is not None and (isinstance(batch, bool) or not isinstance(batch, int) or batch < 1):
        raise UserError(f"batch must be a positive integer or None (dynamic), got {batch!r}")
    if isinstance(opset, bool) or not isinstance(opset, int) or opset < 13:
        raise UserError(f"opset must be an integer ≥ 13 (TensorRT needs Q/DQ support), got {opset!r}")
    if (mean is None) != (std is None):
        raise UserError("give both mean and std, or neither")
    mean_t = _channel_values("mean", mean, shape[0]) if mean is not None else None
    std_t = _channel_values("std", std, shape[0]) if std is not None else None
    if std_t is not None and any(s <= 0 for s in std_t):
        raise UserError(f"std must be positive, got {list(std_t)}")
    if fold_normalization and mean_t is None:
        raise UserError("fold_normalization needs mean and std; pass the values the model was trained with")
    return shape, mean_t, std_t


@dataclass(frozen=True)
class _Convention:
    """What the exported graph takes and gives, recorded in its metadata for the steps that read it."""

    input: str  # IMAGES01 or NORMALISED
    shape: tuple[int, int, int]
    mean: tuple[float, ...] | None
    std: tuple[float, ...] | None
    classes: list[str] | None

    def metadata(self) -> dict[str, str]:
        """The ``nayer_edge.*`` metadata strings, without the prefix."""
        return {
            "input": self.input,
            "input_shape": json.dumps(list(self.shape)),
            "mean": json.dumps(list(self.mean) if self.mean is not None else None),
            "std": json.dumps(list(self.std) if self.std is not None else None),
            "classes": json.dumps(self.classes),
            "version": __version__,
        }


def _export_input(model: nn.Module, convention: _Convention, fold_normalization: bool, batch: int | None
                  ) -> tuple[nn.Module, Tensor]:
    """The module torch exports (``model``, or it behind the normalisation) and an example input for it."""
    # torch restores the mode of what it exports: a new wrapper is in train mode
    net: nn.Module = (NormalizedModel(model, convention.mean, convention.std).train(model.training)
                      if fold_normalization else model)
    device = next((t.device for t in list(model.parameters()) + list(model.buffers())), torch.device("cpu"))
    net = net.to(device) if fold_normalization else net
    # A batch of 2 for the dynamic export so nothing specialises on a size-1 batch.
    return net, torch.zeros(batch or 2, *convention.shape, device=device)


def _stage(raw: Path, staged: Path, convention: _Convention, provenance: dict[str, str] | None,
           external_data_threshold: int) -> bool:
    """Save torch's export at ``raw`` as ``staged`` with its metadata, and check it; returns whether the weights
    went to ``<name>.data`` beside it (over ``external_data_threshold`` bytes)."""
    onnx = require("onnx")
    proto = onnx.load(str(raw))  # loads external tensors too, should torch have written any
    out_dims = [d.dim_value or None for d in proto.graph.output[0].type.tensor_type.shape.dim]
    classes = convention.classes
    if classes is not None and out_dims and out_dims[-1] and out_dims[-1] != len(classes):
        raise UserError(f"{len(classes)} class names given but the model outputs {out_dims[-1]} logits; "
                        "pass one name per output")
    existing = {p.key: p.value for p in proto.metadata_props}
    existing.update({META_PREFIX + k: v for k, v in {**convention.metadata(), **(provenance or {})}.items()})
    onnx.helper.set_model_props(proto, existing)
    proto.producer_name = "nayer-edge"
    proto.producer_version = __version__

    external = _weight_bytes(proto) > external_data_threshold
    if external:
        onnx.save_model(proto, str(staged), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=f"{staged.name}.data", size_threshold=1024)
    else:
        onnx.save_model(proto, str(staged))
    del proto
    onnx.checker.check_model(str(staged))  # by path: resolves external data, no 2 GB limit
    return external


def _publish(staged: Path, out: Path, external: bool) -> None:
    """Move the staged model (and its ``.data``) to ``out`` durably, removing the weights of an earlier export."""
    data_name = f"{out.name}.data"
    _fsync(staged)
    data_path = out.parent / data_name
    if external:
        _fsync(staged.parent / data_name)
        # The old model may point into the old .data at other offsets: remove it first, so a kill
        # between the two renames leaves no model rather than a model with the wrong weights.
        out.unlink(missing_ok=True)
        os.replace(staged.parent / data_name, data_path)
        os.replace(staged, out)
    else:
        os.replace(staged, out)
        data_path.unlink(missing_ok=True)  # weights of an earlier, external export of this file
    fsync_dir(out.parent)


def _torch_export(net: nn.Module, example: Tensor, path: Path, opset: int, dynamic: bool) -> None:
    # The TorchScript-based exporter (dynamo=False), not torch 2.13's default torch.export-based one:
    # the dynamo exporter needs the extra package onnxscript, and on these CNNs it ignores
    # opset_version=17 (it emits opset 18 and its down-conversion fails), which JetPack 5's TensorRT 8.5
    # cannot parse; it is also ~50× slower and prints progress to stdout. The TorchScript exporter
    # honours the opset, folds eval-mode BatchNorm into the convolutions (do_constant_folding) and gives
    # a plain Conv/Relu/GlobalAveragePool/Gemm graph. It is deprecated upstream; its warning is silenced.
    dynamic_axes = {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}} if dynamic else None
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", FutureWarning)
            torch.onnx.export(
                net, (example,), str(path), dynamo=False, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                opset_version=opset, dynamic_axes=dynamic_axes, do_constant_folding=True,
                training=torch.onnx.TrainingMode.EVAL,
            )
    except UserError:
        raise
    except Exception as err:  # unsupported ops etc. in a user's model
        raise UserError(f"cannot export {type(net).__name__} to ONNX: {first_line(err)}") from err


def _weight_bytes(proto: Any) -> int:
    helper = require("onnx.helper")
    total = 0
    for t in proto.graph.initializer:
        itemsize = np.dtype(helper.tensor_dtype_to_np_dtype(t.data_type)).itemsize
        total += int(np.prod(t.dims, dtype=np.int64)) * itemsize
    return total


def _fsync(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


# --------------------------------------------------------------------------------------- runtime


def onnx_session(path: str | os.PathLike[str], providers: Sequence[str] | None = None, threads: int | None = None):
    """An onnxruntime ``InferenceSession`` with all graph optimisations (CPU provider by default).

    A missing or unreadable file raises ``UserError``. ``threads`` sets intra-op threads.

    Example: ``session = onnx_session("student.onnx", threads=4)``
    """
    ort = require("onnxruntime")
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{p}: no such ONNX file; export one with export_onnx or `nayer-edge export`")
    providers = list(providers) if providers else ["CPUExecutionProvider"]
    available = ort.get_available_providers()
    missing = [name for name in providers if name not in available]
    if missing:
        raise UserError(f"onnxruntime provider {missing[0]} is not available here (available: {', '.join(available)})")
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Fatal only: no "removing initializer" chatter, and a failed run is the exception it raises, said once.
    options.log_severity_level = 4
    if threads is not None:
        options.intra_op_num_threads = int(threads)
        options.inter_op_num_threads = 1
    try:
        return ort.InferenceSession(str(p), sess_options=options, providers=providers)
    except Exception as err:  # noqa: BLE001 - ORT raises several types for bad files
        raise UserError(f"{p}: not a loadable ONNX model ({first_line(err)})") from None


def read_metadata(session: Any) -> dict[str, Any]:
    """The ``nayer_edge.*`` metadata of a session's model, JSON values decoded (empty for foreign files)."""
    meta = session.get_modelmeta().custom_metadata_map
    out: dict[str, Any] = {}
    for key, value in meta.items():
        if not key.startswith(META_PREFIX):
            continue
        name = key[len(META_PREFIX):]
        if name in ("input", "version"):
            out[name] = value
        else:
            try:
                out[name] = json.loads(value)
            except json.JSONDecodeError:
                out[name] = value
    return out


_ORT_FLOAT_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64}


def run_session(session: Any, inputs: Tensor | np.ndarray, batch_size: int = 64) -> np.ndarray:
    """Logits (first output) for ``inputs`` in chunks; a fixed-batch model gets padded chunks of its size."""
    x = inputs.detach().cpu().numpy() if isinstance(inputs, Tensor) else np.asarray(inputs)
    inp = session.get_inputs()[0]
    fixed = inp.shape[0] if isinstance(inp.shape[0], int) and inp.shape[0] > 0 else None
    step = fixed or max(1, int(batch_size))
    dtype = _ORT_FLOAT_TYPES.get(inp.type, np.float32)
    outs = []
    for i in range(0, len(x), step):
        chunk = np.ascontiguousarray(x[i:i + step], dtype=dtype)
        n = len(chunk)
        if fixed and n < fixed:
            chunk = np.concatenate([chunk, np.zeros((fixed - n, *chunk.shape[1:]), dtype=dtype)])
        outs.append(np.asarray(session.run(None, {inp.name: chunk})[0])[:n])
    if not outs:
        raise UserError("no inputs to run")
    return np.concatenate(outs)


# --------------------------------------------------------------------------------------- parity


@dataclass
class ParityReport:
    """How closely two models' logits agree over the same inputs.

    ``cosine_similarity`` is the minimum over samples of the per-sample cosine between logit vectors;
    ``worst_index``/``worst_logit`` locate the largest absolute difference, whose two values are
    ``reference_value`` and ``onnx_value``.
    """

    max_abs_error: float
    mean_abs_error: float
    cosine_similarity: float
    top1_agreement: float
    worst_index: int
    samples: int
    worst_logit: int = 0
    reference_value: float = 0.0
    onnx_value: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class ParityError(Exception):
    """The ONNX model's outputs are outside tolerance; ``report`` holds the comparison."""

    def __init__(self, report: ParityReport, max_abs_error: float, min_cosine: float):
        self.report = report
        r = report
        super().__init__(
            f"ONNX output differs from the reference: max abs error {r.max_abs_error:.3g} (limit {max_abs_error:g}) "
            f"at sample {r.worst_index}, logit {r.worst_logit}: reference {r.reference_value:.6g} vs onnx "
            f"{r.onnx_value:.6g}; min cosine {r.cosine_similarity:.6f} (limit {min_cosine:g}); "
            f"top-1 agreement {r.top1_agreement:.1%} over {r.samples} samples"
        )


def compare_logits(reference: np.ndarray | Tensor, candidate: np.ndarray | Tensor) -> ParityReport:
    """Compare two N×K logit arrays (reference first); see ``ParityReport``."""
    ref = _as_float64(reference)
    out = _as_float64(candidate)
    if ref.shape != out.shape or ref.ndim != 2 or len(ref) == 0:
        raise UserError(f"cannot compare outputs of shapes {ref.shape} and {out.shape}; expected equal N×K")
    diff = np.abs(ref - out)
    diff = np.where(np.isnan(diff), np.inf, diff)  # a NaN must count as the worst difference
    flat = int(np.argmax(diff))
    worst, logit = divmod(flat, ref.shape[1])
    dot = (ref * out).sum(1)
    norms = np.linalg.norm(ref, axis=1) * np.linalg.norm(out, axis=1)
    both_zero = (np.linalg.norm(ref, axis=1) == 0) & (np.linalg.norm(out, axis=1) == 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        cosine = np.where(both_zero, 1.0, dot / norms)
    cosine = np.where(np.isnan(cosine), -1.0, cosine)
    return ParityReport(
        max_abs_error=float(diff.max()),
        mean_abs_error=float(diff.mean()),
        cosine_similarity=float(cosine.min()),
        top1_agreement=float((ref.argmax(1) == out.argmax(1)).mean()),
        worst_index=int(worst),
        samples=int(len(ref)),
        worst_logit=int(logit),
        reference_value=float(ref[worst, logit]),
        onnx_value=float(out[worst, logit]),
    )


def check_parity(
    onnx_path: str | os.PathLike[str],
    reference: nn.Module,
    inputs: Tensor,
    *,
    max_abs_error: float = 1e-4,
    min_cosine: float = 0.997,
    batch_size: int = 64,
    providers: Sequence[str] | None = None,
) -> ParityReport:
    """Run the ONNX file and ``reference`` on ``inputs`` and compare logits; raise ``ParityError`` if
    the max abs error exceeds ``max_abs_error`` or the lowest per-sample cosine is below ``min_cosine``.

    ``inputs`` are what the ONNX graph takes (images in [0, 1] for a folded export), and ``reference``
    must take the same: wrap a student in ``NormalizedModel`` to compare it with a folded export.

    Example::

        report = check_parity("student.onnx", NormalizedModel(student, mean, std), torch.rand(64, 3, 32, 32))
    """
    session = onnx_session(onnx_path, providers=providers)
    candidate = run_session(session, inputs, batch_size)
    ref = _run_module(reference, inputs, batch_size)
    report = compare_logits(ref, candidate)
    if not (report.max_abs_error <= max_abs_error and report.cosine_similarity >= min_cosine):
        raise ParityError(report, max_abs_error, min_cosine)
    return report


@torch.no_grad()
def _run_module(model: nn.Module, inputs: Tensor, batch_size: int) -> np.ndarray:
    was_training = model.training
    model.eval()
    device = next((t.device for t in list(model.parameters()) + list(model.buffers())), torch.device("cpu"))
    x = torch.as_tensor(inputs).float()
    try:
        outs = [model(x[i:i + batch_size].to(device)).float().cpu().numpy() for i in range(0, len(x), batch_size)]
    finally:
        model.train(was_training)
    if not outs:
        raise UserError("no inputs to run")
    return np.concatenate(outs)


# --------------------------------------------------------------------------------------- helpers




def _check_shape(input_shape: Sequence[int]) -> tuple[int, int, int]:
    dims = tuple(input_shape)
    if len(dims) != 3 or any(isinstance(d, bool) or not isinstance(d, (int, np.integer)) or d < 1 for d in dims):
        raise UserError(f"input_shape must be three positive integers (C, H, W), got {list(dims)}")
    return int(dims[0]), int(dims[1]), int(dims[2])


def _channel_values(name: str, values: Sequence[float], channels: int) -> tuple[float, ...]:
    try:
        vals = tuple(float(v) for v in np.asarray(values, dtype=np.float64).ravel())
    except (TypeError, ValueError):
        raise UserError(f"{name} must be numbers (one per channel), got {values!r}") from None
    if len(vals) == 1:
        vals = vals * channels
    if len(vals) != channels or not all(math.isfinite(v) for v in vals):
        raise UserError(f"{name} needs 1 or {channels} finite values (one per channel), got {list(vals)}")
    return vals


def _as_float64(x: np.ndarray | Tensor) -> np.ndarray:
    if isinstance(x, Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float64)
