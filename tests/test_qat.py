"""Quantization-aware fine-tuning: BN folding is exact, the fake quantization simulates the INT8 graph the
runtime really runs (onnxruntime's U8S8 QDQ and the TensorRT-style symmetric Q/DQ), and fine-tuning
lowers the KD loss through it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("onnxruntime")

from nayer_edge.core.errors import UserError
from nayer_edge.onnx_model.exporter import compare_logits, export_onnx, onnx_session, run_session
from nayer_edge.quantize.ort import quantize_static_ort
from nayer_edge.quantize.qat import (
    ActivationQuantizer,
    calibrate,
    finetune_qat,
    fold_batchnorm,
    prepare_qat,
    set_quantization,
)
from nayer_edge.quantize.qdq_tensorrt import quantize_tensorrt
from nayer_edge.zoo import create_model


def _with_bn_statistics(model: nn.Module, shape: tuple[int, int, int]) -> nn.Module:
    torch.manual_seed(0)
    model.train()
    with torch.no_grad():
        for _ in range(4):
            model(torch.rand(32, *shape) * 2 - 1)
    return model.eval()


@pytest.mark.parametrize("name", ["cnn_tiny", "resnet18", "mobilenetv2"])
def test_folding_batchnorm_keeps_outputs(name):
    shape = (3, 32, 32)
    model = _with_bn_statistics(create_model(name, num_classes=10, in_channels=3, input_size=32), shape)
    folded = fold_batchnorm(model)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in folded.modules())
    x = torch.rand(8, *shape)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x), atol=1e-4, rtol=1e-4)
    assert any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())  # original untouched


def test_quantizers_off_is_the_folded_fp32_model():
    model = _with_bn_statistics(create_model("resnet18", num_classes=10, in_channels=3, input_size=32), (3, 32, 32))
    for layout in ("ort", "tensorrt"):
        gm = prepare_qat(model, layout)
        quantizers = [m for m in gm.modules() if isinstance(m, ActivationQuantizer)]
        assert quantizers and all(q.symmetric == (layout == "tensorrt") for q in quantizers)
        x = torch.rand(4, 3, 32, 32)
        with torch.no_grad():
            torch.testing.assert_close(gm(x), model(x), atol=1e-4, rtol=1e-4)


def _simulation_vs_runtime(layout: str, tmp_path):
    """Logits of the fake-quantized torch model and of the ONNX INT8 model onnxruntime runs, same inputs."""
    shape = (3, 16, 16)
    model = _with_bn_statistics(create_model("cnn_small", num_classes=10, in_channels=3, input_size=16), shape)
    gen = torch.Generator().manual_seed(1)
    calibration = torch.rand(128, *shape, generator=gen)
    test = torch.rand(64, *shape, generator=gen)
    gm = prepare_qat(model, layout)
    calibrate(gm, calibration)
    with torch.no_grad():
        simulated = gm(test).numpy()
    set_quantization(gm, "off")
    fp32 = export_onnx(gm, tmp_path / "fp32.onnx", input_shape=shape)
    writer = quantize_static_ort if layout == "ort" else quantize_tensorrt
    int8 = writer(fp32, tmp_path / "int8.onnx", calibration.numpy())
    runtime = run_session(onnx_session(int8), test.numpy())
    with torch.no_grad():
        float_logits = gm(test).numpy()
    return simulated, runtime, float_logits


def test_tensorrt_simulation_matches_the_qdq_graph(tmp_path):
    simulated, runtime, float_logits = _simulation_vs_runtime("tensorrt", tmp_path)
    # Same scales, same rounding: the simulation is the Q/DQ graph up to float summation order. That order
    # moves an occasional activation across a rounding boundary (one step, then propagated), so many
    # samples match bit for bit and the rest closely; a wrong scale, zero point or axis matches none.
    difference = np.abs(simulated - runtime)
    assert (difference.max(1) <= 1e-7).mean() >= 0.25
    assert difference.mean() < 0.3 * np.abs(float_logits - runtime).mean()


def test_ort_simulation_tracks_onnxruntime_int8(tmp_path):
    simulated, runtime, float_logits = _simulation_vs_runtime("ort", tmp_path)
    sim_vs_runtime = compare_logits(runtime, simulated)
    float_vs_runtime = compare_logits(runtime, float_logits)
    # onnxruntime rewrites the graph (Relu absorbed, normalisation not fused), so the simulation is close,
    # not exact; it must be closer to what onnxruntime computes than the float model is.
    assert sim_vs_runtime.cosine_similarity >= 0.999
    assert sim_vs_runtime.mean_abs_error < float_vs_runtime.mean_abs_error


def test_finetuning_lowers_the_quantized_kd_loss(digits_teacher, tmp_path):
    from conftest import train_and_save

    from nayer_edge.demo.digits import load_digits_split
    from nayer_edge.distill.losses import kd_divergence
    from nayer_edge.inputs.teacher import load_teacher

    teacher = load_teacher(digits_teacher.path)
    x_train = load_digits_split()[0][:512]
    with torch.no_grad():
        teacher_logits = teacher(x_train)
    student = create_model("cnn_tiny", num_classes=10, in_channels=1, input_size=16)
    train_and_save(student, (1, 16, 16), tmp_path, epochs=1)  # a weak student: room to learn from the teacher
    normalised = (x_train - 0.5) / 0.5

    def quantized_loss(module: nn.Module) -> float:
        gm = prepare_qat(module, "ort")
        calibrate(gm, normalised)
        with torch.no_grad():
            return float(kd_divergence(gm(normalised), teacher_logits, 4.0))

    before = quantized_loss(student)
    tuned, report = finetune_qat(student, x_train, teacher_logits, mean=[0.5], std=[0.5], layout="ort", epochs=6,
                                 lr=0.05, batch=64, temperature=4.0, fp32_anchor=0.0)
    assert report.steps == 48 and report.final_loss < report.initial_loss
    assert quantized_loss(tuned) < 0.8 * before, (quantized_loss(tuned), before)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in tuned.modules())


@pytest.mark.parametrize("layout", ["ort", "tensorrt"])
def test_default_qat_brings_int8_closer_to_the_fp32_student(tmp_path, layout):
    """The default target is the FP32 student itself: after fine-tuning, the fake-INT8 model, recalibrated as
    the exporter does, is closer to the FP32 student's logits (KL) than the same student calibrated only.
    (On held-out synthetic samples, BENCHMARKS.md section 5.)"""
    from conftest import train_and_save

    from nayer_edge.demo.digits import load_digits_split
    from nayer_edge.distill.losses import kd_divergence

    student = create_model("cnn_tiny", num_classes=10, in_channels=1, input_size=16)
    train_and_save(student, (1, 16, 16), tmp_path, epochs=1)
    student.eval()
    images01 = load_digits_split()[0][:512]
    normalised = (images01 - 0.5) / 0.5
    with torch.no_grad():
        fp32_logits = student(normalised)

    def int8_kl(module: nn.Module) -> float:
        gm = prepare_qat(module, layout)
        calibrate(gm, normalised)
        with torch.no_grad():
            return float(kd_divergence(gm(normalised), fp32_logits, 1.0))

    before = int8_kl(student)
    tuned, report = finetune_qat(student, images01, None, mean=[0.5], std=[0.5], layout=layout, epochs=4,
                                 lr=0.01, batch=64, temperature=4.0)
    assert report.final_loss < report.initial_loss
    after = int8_kl(tuned)
    assert after < 0.8 * before, (after, before)


def test_qat_blending_in_the_teacher_needs_its_logits():
    student = create_model("cnn_tiny", num_classes=10, in_channels=1, input_size=16)
    with pytest.raises(UserError, match="teacher"):
        finetune_qat(student, torch.rand(8, 1, 16, 16), None, mean=[0.5], std=[0.5], layout="ort", epochs=1,
                     lr=0.01, batch=4, temperature=4.0, fp32_anchor=0.5)


def test_deployed_int8_is_the_one_closer_to_fp32():
    from nayer_edge.quantize.run import _choose

    assert _choose({"ptq": {"fp32_kl": 3e-4}})[0] == "ptq"
    assert _choose({"ptq": {"fp32_kl": 3e-4}, "qat": {"fp32_kl": 1e-4}})[0] == "qat"
    method, reason = _choose({"ptq": {"fp32_kl": 1e-4}, "qat": {"fp32_kl": 3e-4}})
    assert method == "ptq" and "1.00e-04 vs 3.00e-04" in reason
    # Non-finite logits lose, whichever candidate has them; a failed QAT leaves PTQ, saying why.
    assert _choose({"ptq": {"fp32_kl": float("nan")}, "qat": {"fp32_kl": 3e-4}})[0] == "qat"
    assert _choose({"ptq": {"fp32_kl": 3e-4}, "qat": {"fp32_kl": float("nan")}})[0] == "ptq"
    assert _choose({"ptq": {"fp32_kl": float("inf")}, "qat": {"fp32_kl": float("nan")}})[0] == "ptq"
    method, reason = _choose({"ptq": {"fp32_kl": 3e-4}, "qat": {"failed": "diverged"}})
    assert method == "ptq" and "QAT failed (diverged)" in reason


def test_untraceable_student_is_a_clear_error():
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 4, 3)

        def forward(self, x):
            if x.sum() > 0:  # data-dependent control flow: torch.fx cannot trace it
                return self.conv(x).mean((2, 3))
            return self.conv(-x).mean((2, 3))

    with pytest.raises(UserError, match="no-qat"):
        prepare_qat(Branchy(), "ort")
    with pytest.raises(UserError, match="layout"):
        prepare_qat(create_model("cnn_tiny", num_classes=10, in_channels=1, input_size=16), "tflite")


def test_qat_keeps_the_weights_that_did_best_on_samples_it_did_not_train_on(tmp_path):
    """With ``validation``, the step returned is the one whose fake-INT8 model was closest to the FP32 student on the
    held-out share; a run that only gets worse (lr 1e4) returns its calibrated start, the BN-folded student."""
    from conftest import train_and_save

    from nayer_edge.demo.digits import load_digits_split

    student = create_model("cnn_tiny", num_classes=10, in_channels=1, input_size=16)
    train_and_save(student, (1, 16, 16), tmp_path, epochs=1)
    student.eval()
    images01 = load_digits_split()[0][:600]
    normalised = (images01 - 0.5) / 0.5

    ruined, report = finetune_qat(student, images01, None, mean=[0.5], std=[0.5], layout="ort", epochs=4, lr=1e4,
                                  batch=64, temperature=4.0, validation=0.2)
    assert report.validation_samples == 120 and report.steps == 30, report
    assert report.kept_step == 0 and report.validation_kl_kept == report.validation_kl_start, report
    with torch.no_grad():
        assert torch.allclose(ruined(normalised), fold_batchnorm(student)(normalised), atol=1e-5)

    tuned, report = finetune_qat(student, images01, None, mean=[0.5], std=[0.5], layout="ort", epochs=4, lr=0.01,
                                 batch=64, temperature=4.0, validation=0.2)
    assert report.kept_step > 0 and report.validation_kl_kept < report.validation_kl_start, report
    with pytest.raises(UserError, match="validation"):
        finetune_qat(student, images01, None, mean=[0.5], std=[0.5], layout="ort", epochs=1, lr=0.01, batch=64,
                     temperature=4.0, validation=1.0)
