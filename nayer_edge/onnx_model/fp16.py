"""FP16 ONNX for GPU targets: a float16-typed graph, as TensorRT's strongly typed networks need (TensorRT 11 has
no FP16 builder flag; the precision comes from the tensor types). Converted with onnxruntime's own
``onnxruntime.transformers.float16`` converter; graph input and output stay float32 (a Cast at each end), so
callers feed and read float32 exactly as with the FP32 model.

    to_fp16("student.onnx", "student.fp16.onnx")
"""

from __future__ import annotations

import os
from pathlib import Path

from ..core.atomic import atomic_write_bytes
from ..core.optional import require
from .graph import load_fp32_onnx, set_metadata, topological_order


def to_fp16(fp32_onnx: str | os.PathLike[str], out: str | os.PathLike[str]) -> Path:
    """Write a float16 copy of ``fp32_onnx`` (float32 input/output) to ``out`` atomically; return its path."""
    onnx = require("onnx")
    convert_float_to_float16 = require("onnxruntime.transformers.float16").convert_float_to_float16
    model = load_fp32_onnx(fp32_onnx)
    converted = convert_float_to_float16(model, keep_io_types=True)
    graph = converted.graph
    # The converter appends its input/output Casts at the end of the node list; the checker wants order.
    ordered = topological_order(list(graph.node), {i.name for i in graph.input} | {t.name for t in graph.initializer})
    del graph.node[:]
    graph.node.extend(ordered)
    set_metadata(converted, "nayer_edge.precision", "fp16")
    onnx.checker.check_model(converted)
    dest = Path(out)
    atomic_write_bytes(dest, converted.SerializeToString())
    return dest
