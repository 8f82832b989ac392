"""INT8 post-training quantization for onnxruntime CPU: onnxruntime's static quantizer, QDQ format, U8S8.

Why this layout and not the TensorRT one (verified on a CIFAR ResNet-18, onnxruntime 1.32, x86 with
AVX2/AVX512-VNNI, by dumping the graph ORT runs with ``int8_node_summary``; ``benchmarks/int8_latency.py``
reproduces it):

onnxruntime does not run Q/DQ nodes as such. Its optimiser looks for QDQ "node units": an op whose
float inputs come from DequantizeLinear *and* whose output goes straight into a QuantizeLinear, and
replaces the unit with an integer kernel (Conv -> QLinearConv, Add -> QLinearAdd, Gemm -> QGemm, ...).
The integer tensors then flow from kernel to kernel (in NHWC, u8) without ever becoming float.

- ``quantize_static`` (QDQ, U8 asymmetric activations, S8 per-channel weights) puts a Q/DQ pair on the
  output of every op as well as on its inputs, and absorbs each Relu into the Q before it (a U8 Q with
  zero point 0 *is* a Relu). Every Conv is a complete unit: the graph ORT runs has 20 QLinearConv,
  8 QLinearAdd, 1 QGemm, 1 QLinearGlobalAveragePool, no float Conv, one QuantizeLinear (the input),
  one DequantizeLinear (the logits) and 2 Transposes (NCHW -> NHWC and back): 0.32-0.35x of FP32
  time at batch 32, 2 threads.
- The TensorRT layout (symmetric S8, Q/DQ only on the *inputs* of Conv/Gemm and residual Adds) leaves
  most Conv outputs float: conv -> Relu -> (next layer's Q) is not a unit, because the Relu sits between
  Conv and Q and a symmetric Q (zero point 0, mid-range) cannot absorb it. ORT folds the weight DQ back
  to float and runs a float (Fused)Conv with Q/DQ round trips around it: 12 of 20 convs stay float
  (9 FusedConv+Relu, 3 Conv), only the 8 whose output happens to feed a quantized Add input become
  QLinearConv, and 16 Transposes convert layouts between the float and integer islands. FP32 work plus
  Q/DQ work: measured 0.92-0.96x of FP32 time, i.e. no real gain. TensorRT fuses the same graph because it
  looks forward to the next layer's Q; ORT does not.
- Symmetric S8 activations through ORT's own quantizer (Q/DQ on outputs too) do no better (0.96-1.04x):
  the Relus cannot be absorbed, so each stays a float op between Q/DQ pairs; only 9 of 20 Conv and
  3 of 8 Add fused (those left float read a tensor shared with the residual branch), with 18 Transposes.
  Hence U8 activations: they are what lets Relu vanish, and U8xS8 is what MLAS's x86 kernels
  (vpmaddubsw / VNNI vpdpbusd) multiply natively.

Weights are 7-bit (``reduce_range``, [-64, 64]) by default. Without VNNI (AVX2 only: AMD before Zen 4, most Atom
and Celeron parts, many edge x86 boards) MLAS multiplies U8xS8 with vpmaddubsw, which adds two u8·s8 products into
a saturating int16: with 8-bit weights two large products overflow and are clamped, as onnxruntime's quantization
guide warns. 7-bit weights keep every pair within int16 (2·255·64 < 32 767). Measured on an AVX2-only AMD EPYC with
a distilled photo student: the INT8 model's KL from FP32 on held-out synthetic samples was 4.0e-3 with 8-bit
weights and 2.2e-4 with 7-bit ones, and a random-weight CNN's top-1 agreement with FP32 0.85 against 0.9 and more.
The quantized model runs where it is deployed, not where it is built, so the safe width is the default; per-channel
scales make the lost bit cheap (BENCHMARKS.md §4).

Example::

    quantize_static_ort("resnet18.onnx", "resnet18.int8.onnx", images)   # images: N×C×H×W float32
    int8_node_summary("resnet18.int8.onnx")  # {'QLinearConv': 20, 'QuantizeLinear': 1, ...}
"""

from __future__ import annotations

import os
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ..core.atomic import atomic_write_bytes
from ..core.errors import UserError, first_line
from ..core.optional import require

CalibrateMethod = Literal["minmax", "percentile", "entropy"]
_INT_TYPES = ("uint8", "int8")
_METHODS = {"minmax": "MinMax", "percentile": "Percentile", "entropy": "Entropy"}  # onnxruntime's CalibrationMethod


# One keyword per setting of onnxruntime's quantize_static it wraps: the count is the interface.
def quantize_static_ort(
    fp32_onnx: str | os.PathLike[str],
    out: str | os.PathLike[str],
    calibration_images: Any,
    *,
    per_channel: bool = True,
    activation: Literal["uint8", "int8"] = "uint8",
    weight: Literal["uint8", "int8"] = "int8",
    calibrate_method: CalibrateMethod = "minmax",
    max_calibration: int = 512,
    batch: int = 32,
    preprocess: bool = True,
    reduce_range: bool = True,
    float_stem: bool = False,
    extra_options: dict[str, Any] | None = None,
) -> Path:
    """Quantize an FP32 ONNX classifier to INT8 (QDQ format) for onnxruntime CPU and write it atomically.

    ``calibration_images`` (Tensor or array, N×C×H×W) are in the model's own input convention, i.e.
    exactly what you would feed the FP32 graph; at most ``max_calibration`` of them are used, fed in
    batches of ``batch`` (or the graph's fixed batch size). ``preprocess`` runs onnxruntime's
    ``quant_pre_process`` (shape inference + graph optimisation) first. ``extra_options`` go to
    ``quantize_static`` unchanged (e.g. ``{"ActivationSymmetric": True}``). ``reduce_range`` quantizes the weights to 7 bits
    ([-64, 64]; see the module's note on saturation). ``float_stem`` leaves the graph's first
    convolution in float (the stem, whose 1-3 input channels are too few for the integer kernels to pay).

    Example: ``quantize_static_ort("student.onnx", "student.int8.onnx", memory.all()[0])``
    """
    onnx, quantization = require("onnx"), require("onnxruntime.quantization")
    QuantFormat, QuantType = quantization.QuantFormat, quantization.QuantType

    src = Path(fp32_onnx)
    _check_options(src, activation, weight, calibrate_method, max_calibration, batch)
    input_name, chunks = _calibration_chunks(onnx, src, calibration_images, max_calibration, batch)
    qtype = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}
    dest = Path(out)
    with tempfile.TemporaryDirectory(prefix="nayer-ort-quant-") as tmp:
        source = str(src)
        if preprocess:
            source = os.path.join(tmp, "pre.onnx")
            quantization.quant_pre_process(str(src), source, skip_symbolic_shape=False)
        target = os.path.join(tmp, "int8.onnx")
        excluded = _first_conv(onnx, source) if float_stem else []
        quantization.quantize_static(
            source,
            target,
            _reader(input_name, chunks),
            quant_format=QuantFormat.QDQ,
            per_channel=per_channel,
            activation_type=qtype[activation],
            weight_type=qtype[weight],
            calibrate_method=getattr(quantization.CalibrationMethod, _METHODS[calibrate_method]),
            nodes_to_exclude=excluded,
            reduce_range=reduce_range,
            extra_options=dict(extra_options or {}),
        )
        atomic_write_bytes(dest, Path(target).read_bytes())
    return dest


def _check_options(src: Path, activation: str, weight: str, calibrate_method: str, max_calibration: int,
                   batch: int) -> None:
    if not src.is_file():
        raise UserError(f"{src}: no such ONNX file; export one with export_onnx or `nayer-edge export`")
    if activation not in _INT_TYPES or weight not in _INT_TYPES:
        raise UserError(f"activation and weight must be one of {_INT_TYPES}, got {activation!r}, {weight!r}")
    if calibrate_method not in _METHODS:
        raise UserError(f"calibrate_method must be one of {sorted(_METHODS)}, got {calibrate_method!r}")
    if max_calibration < 1 or batch < 1:
        raise UserError("max_calibration and batch must be positive")


def _first_conv(onnx: Any, path: str) -> list[str]:
    """The name of the first Conv node of the graph at ``path`` (in graph order), as a list; empty when none."""
    graph = onnx.load(path, load_external_data=False).graph
    return [node.name for node in graph.node if node.op_type == "Conv"][:1]


def _calibration_chunks(onnx: Any, src: Path, calibration_images: Any, max_calibration: int, batch: int
                        ) -> tuple[str, list[np.ndarray]]:
    """The graph's one input and the calibration batches for it (only full ones for a fixed-batch graph)."""
    try:
        model = onnx.load(str(src), load_external_data=False)
    except Exception as err:  # noqa: BLE001 - onnx raises several types for bad files
        raise UserError(f"{src}: not a loadable ONNX model ({first_line(err)})") from None
    graph_inputs = [i for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer}]
    if len(graph_inputs) != 1:
        raise UserError(f"{src}: expected one graph input, found {len(graph_inputs)}")
    inp = graph_inputs[0]
    dims = [d.dim_value if d.HasField("dim_value") else None for d in inp.type.tensor_type.shape.dim]

    images = _as_float32(calibration_images)[:max_calibration]
    if images.ndim != len(dims) or any(d is not None and d != s for d, s in zip(dims[1:], images.shape[1:])):
        raise UserError(f"calibration images have shape {tuple(images.shape)}; {src} expects {dims}")
    step = dims[0] if dims and dims[0] else batch
    chunks = [images[i:i + step] for i in range(0, len(images), step)]
    chunks = [c for c in chunks if len(c) == step or not dims[0]]  # a fixed-batch graph takes full batches only
    if not chunks:
        raise UserError(f"{src} has a fixed batch {step}; give at least {step} calibration images, got {len(images)}")
    return inp.name, chunks


def _reader(input_name: str, chunks: list[np.ndarray]) -> Any:
    """An onnxruntime ``CalibrationDataReader`` that feeds ``chunks`` to ``input_name``, rewindable."""
    CalibrationDataReader = require("onnxruntime.quantization").CalibrationDataReader

    class _Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter(chunks)

        def get_next(self) -> dict[str, np.ndarray] | None:
            chunk = next(self._it, None)
            return None if chunk is None else {input_name: chunk}

        def rewind(self) -> None:
            self._it = iter(chunks)

    return _Reader()


def int8_node_summary(onnx_path: str | os.PathLike[str], *, threads: int | None = 1) -> dict[str, int]:
    """Op-type counts of the graph onnxruntime actually runs (CPU provider, all optimisations).

    The proof that quantization fused: an INT8 model that onnxruntime runs fast shows ``QLinearConv``
    (or ``ConvInteger``) and no float ``Conv``; one it cannot fuse keeps ``Conv`` next to many
    ``QuantizeLinear``/``DequantizeLinear``.

    Example: ``int8_node_summary("student.int8.onnx").get("QLinearConv", 0)``
    """
    onnx, ort = require("onnx"), require("onnxruntime")
    src = Path(onnx_path)
    if not src.is_file():
        raise UserError(f"{src}: no such ONNX file")
    with tempfile.TemporaryDirectory(prefix="nayer-ort-opt-") as tmp:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.optimized_model_filepath = os.path.join(tmp, "optimized.onnx")
        options.log_severity_level = 3
        if threads is not None:
            options.intra_op_num_threads = int(threads)
        try:
            ort.InferenceSession(str(src), sess_options=options, providers=["CPUExecutionProvider"])
        except Exception as err:  # noqa: BLE001 - whatever onnxruntime raises on a bad model becomes one line
            raise UserError(f"{src}: not a loadable ONNX model ({first_line(err)})") from None
        graph = onnx.load(options.optimized_model_filepath).graph
        return dict(sorted(Counter(node.op_type for node in graph.node).items()))


def _as_float32(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.ascontiguousarray(np.asarray(x, dtype=np.float32))
