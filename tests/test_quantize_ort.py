"""INT8 post-training quantization with onnxruntime's static quantizer: a small seeded conv student."""

from __future__ import annotations

import numpy as np
import pytest
import torch

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from onnx import TensorProto  # noqa: E402 - after the importorskip of the extras

from nayer_edge.core.errors import UserError  # noqa: E402 - after the importorskip of the extras
from nayer_edge.onnx_model.exporter import compare_logits, export_onnx, onnx_session, run_session  # noqa: E402 - after the importorskip of the extras
from nayer_edge.quantize.ort import int8_node_summary, quantize_static_ort  # noqa: E402 - after the importorskip of the extras
from nayer_edge.zoo import create_model  # noqa: E402 - after the importorskip of the extras

SHAPE = (1, 16, 16)


@pytest.fixture(scope="module")
def quantized(tmp_path_factory):
    torch.manual_seed(0)
    model = create_model("cnn_small", num_classes=10, in_channels=1, input_size=16)
    model.train()
    with torch.no_grad():  # BatchNorm running statistics from data, not the trivial 0/1 defaults
        for _ in range(5):
            model(torch.rand(64, *SHAPE))
    model.eval()
    work = tmp_path_factory.mktemp("int8")
    fp32 = export_onnx(model, work / "fp32.onnx", input_shape=SHAPE)
    rng = np.random.default_rng(0)
    calib = rng.random((128, *SHAPE), dtype=np.float32)
    out_dir = work / "out"
    int8 = quantize_static_ort(fp32, out_dir / "int8.onnx", torch.from_numpy(calib), batch=32)
    held_out = np.random.default_rng(1).random((256, *SHAPE), dtype=np.float32)
    return fp32, int8, held_out


def test_int8_runs_and_tracks_fp32(quantized):
    fp32, int8, x = quantized
    ref = run_session(onnx_session(fp32), x, 64)
    out = run_session(onnx_session(int8), x, 64)
    assert out.shape == ref.shape == (len(x), 10)
    report = compare_logits(ref, out)
    assert report.cosine_similarity >= 0.98, report
    assert report.top1_agreement >= 0.9, report
    assert report.max_abs_error > 0  # it really is quantized, not a copy of the FP32 graph


def test_graph_is_qdq_with_int8_per_channel_weights(quantized):
    _, int8, _ = quantized
    graph = onnx.load(str(int8)).graph
    ops = {n.op_type for n in graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    inits = {t.name: t for t in graph.initializer}
    conv_weights = []
    for node in graph.node:
        if node.op_type == "DequantizeLinear" and node.input[0] in inits:
            t = inits[node.input[0]]
            if t.data_type == TensorProto.INT8 and len(t.dims) == 4:
                conv_weights.append(node)
    assert len(conv_weights) >= 3  # cnn_small has three convs
    scales = [inits[n.input[1]] for n in conv_weights]
    assert all(len(s.dims) == 1 and s.dims[0] > 1 for s in scales)  # per-channel
    # U8 activations (the fast x86 kernels): the graph input is quantized to uint8.
    first_q = next(n for n in graph.node if n.op_type == "QuantizeLinear" and n.input[0] == graph.input[0].name)
    assert inits[first_q.input[2]].data_type == TensorProto.UINT8


def test_ort_fuses_into_integer_kernels(quantized):
    fp32, int8, _ = quantized
    before = int8_node_summary(fp32)
    after = int8_node_summary(int8)
    assert before.get("QLinearConv", 0) == 0 and before.get("ConvInteger", 0) == 0
    assert after.get("QLinearConv", 0) + after.get("ConvInteger", 0) >= 3, after
    assert after.get("Conv", 0) == 0 and after.get("FusedConv", 0) == 0, after  # no float conv left


def test_float_stem_leaves_only_the_first_convolution_in_float(quantized, tmp_path):
    fp32, int8, x = quantized
    calib = np.random.default_rng(0).random((128, *SHAPE), dtype=np.float32)
    stem = quantize_static_ort(fp32, tmp_path / "stem.onnx", calib, batch=32, float_stem=True)
    all_int8, float_stem = int8_node_summary(int8), int8_node_summary(stem)
    float_convs = float_stem.get("Conv", 0) + float_stem.get("FusedConv", 0)
    assert float_convs == 1 and float_stem.get("QLinearConv", 0) == all_int8["QLinearConv"] - 1, float_stem
    graph = onnx.load(str(stem)).graph
    assert not any(n.op_type == "QuantizeLinear" and n.input[0] == graph.input[0].name for n in graph.node)
    report = compare_logits(run_session(onnx_session(fp32), x, 64), run_session(onnx_session(stem), x, 64))
    assert report.cosine_similarity >= 0.98 and report.top1_agreement >= 0.9, report


def test_writes_only_the_output_file(quantized):
    _, int8, _ = quantized
    assert [p.name for p in int8.parent.iterdir()] == ["int8.onnx"]


def test_bad_inputs_raise_user_error(quantized, tmp_path):
    fp32, _, x = quantized
    with pytest.raises(UserError, match="no such ONNX file"):
        quantize_static_ort(tmp_path / "missing.onnx", tmp_path / "out.onnx", x)
    with pytest.raises(UserError, match="no such ONNX file"):
        int8_node_summary(tmp_path / "missing.onnx")
    with pytest.raises(UserError, match="shape"):
        quantize_static_ort(fp32, tmp_path / "out.onnx", np.zeros((8, 3, 16, 16), np.float32))
    with pytest.raises(UserError, match="calibrate_method"):
        quantize_static_ort(fp32, tmp_path / "out.onnx", x, calibrate_method="median")
    assert not (tmp_path / "out.onnx").exists()
