"""TensorRT-style explicit symmetric Q/DQ and FP16 ONNX: graph rules read from the file, numbers checked in
onnxruntime against the FP32 model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")

import onnx
from onnx import numpy_helper

from nayer_edge.core.errors import UserError
from nayer_edge.onnx_model.exporter import compare_logits, export_onnx, onnx_session, run_session
from nayer_edge.onnx_model.fp16 import to_fp16
from nayer_edge.quantize.qdq_tensorrt import quantize_tensorrt
from nayer_edge.quantize.trt_rules import tensorrt_qdq_violations
from nayer_edge.zoo import create_model

SHAPE = (3, 32, 32)


@pytest.fixture(scope="module")
def resnet(tmp_path_factory):
    """A CIFAR ResNet-18 with real BN statistics, exported with normalisation folded in."""
    torch.manual_seed(0)
    model = create_model("resnet18", num_classes=10, in_channels=3, input_size=32)
    model.train()
    with torch.no_grad():
        for _ in range(4):
            model(torch.rand(32, *SHAPE))
    model.eval()
    folder = tmp_path_factory.mktemp("trt")
    fp32 = export_onnx(model, folder / "fp32.onnx", input_shape=SHAPE, mean=[0.5] * 3, std=[0.25] * 3,
                       fold_normalization=True, batch=8)
    rng = np.random.default_rng(0)
    calibration, test = rng.random((64, *SHAPE), dtype=np.float32), rng.random((32, *SHAPE), dtype=np.float32)
    int8 = quantize_tensorrt(fp32, folder / "int8.onnx", calibration, batch=8)
    return fp32, int8, test


def test_passes_the_tensorrt_rules(resnet):
    _, int8, _ = resnet
    assert tensorrt_qdq_violations(int8) == []
    graph = onnx.load(str(int8)).graph
    inits = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    producers = {o: n for n in graph.node for o in n.output}
    convs = [n for n in graph.node if n.op_type == "Conv"]
    assert len(convs) == 20
    for conv in convs:  # every conv: quantized input, int8 per-channel weight behind a DQ
        assert producers[conv.input[0]].op_type == "DequantizeLinear"
        weight_dq = producers[conv.input[1]]
        assert weight_dq.op_type == "DequantizeLinear" and inits[weight_dq.input[0]].dtype == np.int8
        assert inits[weight_dq.input[1]].shape == (inits[weight_dq.input[0]].shape[0],)
    adds = [n for n in graph.node if n.op_type == "Add"]
    assert len(adds) == 8 and all(producers[i].op_type == "DequantizeLinear" for a in adds for i in a.input)


def test_tracks_fp32_in_onnxruntime(resnet):
    fp32, int8, test = resnet
    report = compare_logits(run_session(onnx_session(fp32), test), run_session(onnx_session(int8), test))
    assert report.cosine_similarity >= 0.99 and report.top1_agreement >= 0.9
    assert report.max_abs_error > 0  # really quantized


def test_refuses_what_it_cannot_quantize(resnet, tmp_path):
    fp32, int8, test = resnet
    with pytest.raises(UserError, match="already quantized"):
        quantize_tensorrt(int8, tmp_path / "again.onnx", test)
    old = onnx.load(str(fp32))
    old.opset_import[0].version = 12
    onnx.save(old, str(tmp_path / "opset12.onnx"))
    with pytest.raises(UserError, match="opset"):
        quantize_tensorrt(tmp_path / "opset12.onnx", tmp_path / "x.onnx", test)
    with pytest.raises(UserError, match="fixed batch"):
        quantize_tensorrt(fp32, tmp_path / "x.onnx", test[:3], batch=8)
    with pytest.raises(UserError, match="no such"):
        quantize_tensorrt(tmp_path / "missing.onnx", tmp_path / "x.onnx", test)
    assert not (tmp_path / "x.onnx").exists()


def test_fp16_is_float16_typed_and_close(resnet, tmp_path):
    fp32, int8, test = resnet
    fp16 = to_fp16(fp32, tmp_path / "fp16.onnx")
    model = onnx.load(str(fp16))
    conv_weights = {n.input[1] for n in model.graph.node if n.op_type == "Conv"}
    types = {t.name: t.data_type for t in model.graph.initializer}
    assert conv_weights and all(types[w] == onnx.TensorProto.FLOAT16 for w in conv_weights)
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT  # callers feed float32
    report = compare_logits(run_session(onnx_session(fp32), test), run_session(onnx_session(fp16), test))
    assert report.cosine_similarity >= 0.9999 and report.top1_agreement >= 0.95
    with pytest.raises(UserError, match="quantized"):
        to_fp16(int8, tmp_path / "bad.onnx")
