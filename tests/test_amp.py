"""Mixed precision and the device-side step skipping of the distillation loop (nayer_edge.distill.amp), on the CPU."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from nayer_edge.core.errors import UserError
from nayer_edge.distill.amp import Amp, backward_and_step, cpu_has_native_bf16, resolve_amp
from nayer_edge.distill.config import load_config
from nayer_edge.synthesis.bn_probe import BNProbe

CPU = torch.device("cpu")


def test_auto_follows_the_cpu_and_names_are_checked(monkeypatch):
    assert resolve_amp("auto", CPU) == ("bf16" if cpu_has_native_bf16() else "fp32")
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    assert resolve_amp("auto", CPU) == "fp32" and not cpu_has_native_bf16()
    monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported")  # a torch without the private probe reads as "no"
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True)
    assert resolve_amp("auto", CPU) == "bf16"
    assert resolve_amp("bf16", CPU) == "bf16" and resolve_amp("fp16", CPU) == "fp16"
    assert Amp.for_device("fp32", CPU).dtype is None and Amp.for_device("bf16", CPU).dtype is torch.bfloat16
    assert Amp.for_device("fp16", CPU).new_scaler() is not None and Amp.for_device("bf16", CPU).new_scaler() is None
    with pytest.raises(UserError, match="amp must be one of"):
        resolve_amp("int4", CPU)
    with pytest.raises(UserError, match="not one of"):
        load_config(None, {"amp": "int4"})
    with pytest.raises(UserError, match="memory_device_budget"):
        load_config(None, {"memory_device_budget": 1.5})
    with pytest.raises(UserError, match="true or false"):
        load_config(None, {"channels_last": "yes"})


def _params(seed: int = 0) -> list[nn.Parameter]:
    g = torch.Generator().manual_seed(seed)
    return [nn.Parameter(torch.randn(4, 3, 3, 3, generator=g)), nn.Parameter(torch.randn(7, generator=g))]


def _loss(params: list[nn.Parameter], x: torch.Tensor) -> torch.Tensor:
    return (params[0].sum() * x).pow(2).mean() + (params[1] * x[:7]).sum()


@pytest.mark.parametrize("make", [
    lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, weight_decay=1e-4, fused=True),
    lambda ps: torch.optim.Adam(ps, lr=0.01, betas=(0.5, 0.999), fused=True),
    lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9),  # not fused: decided on the host
], ids=["fused-sgd", "fused-adam", "plain-sgd"])
def test_a_step_with_a_non_finite_loss_leaves_parameters_and_state_alone(make):
    params = _params()
    optimizer = make(params)
    before = [p.detach().clone() for p in params]
    x = torch.linspace(-1, 1, 16)
    loss = _loss(params, x) * float("nan")
    ok = backward_and_step(optimizer, loss, torch.isfinite(loss))
    assert not bool(ok)
    assert all(torch.equal(b, p) for b, p in zip(before, params))
    state = [s for s in optimizer.state.values() if s]
    assert all(float(v.abs().sum()) == 0 for s in state for v in s.values() if isinstance(v, torch.Tensor)), state
    # The next, finite step is the first step any optimizer would take (a skipped first step leaves no trace).
    reference = _params()
    ref_opt = make(reference)
    for _ in range(3):
        loss = _loss(params, x)
        backward_and_step(optimizer, loss, torch.isfinite(loss))
        ref_opt.zero_grad()
        _loss(reference, x).backward()
        ref_opt.step()
    assert all(torch.equal(p, r) for p, r in zip(params, reference))


def test_fused_sgd_through_backward_and_step_tracks_torch_sgd():
    """The student's optimizer became fused so that skipped steps need no host sync: the same update as the
    for-loop SGD up to float rounding (the fused kernel's momentum update differs by at most an ulp or so)."""
    params, reference = _params(1), _params(1)
    fused = torch.optim.SGD(params, lr=0.2, momentum=0.9, weight_decay=1e-4, fused=True)
    plain = torch.optim.SGD(reference, lr=0.2, momentum=0.9, weight_decay=1e-4)
    for step in range(5):
        x = torch.randn(16, generator=torch.Generator().manual_seed(step))
        loss = _loss(params, x)
        backward_and_step(fused, loss, torch.isfinite(loss))
        plain.zero_grad()
        _loss(reference, x).backward()
        plain.step()
    for p, r in zip(params, reference):
        torch.testing.assert_close(p, r, rtol=1e-6, atol=1e-6)


def test_grad_check_when_no_flag_is_given():
    params = _params()
    optimizer = torch.optim.SGD(params, lr=0.1, momentum=0.9, fused=True)
    before = [p.detach().clone() for p in params]
    # A finite loss whose gradient is not: sqrt at 0.
    loss = (params[0].sum() * 0).sqrt() + params[1].sum()
    ok = backward_and_step(optimizer, loss)
    assert not bool(ok) and all(torch.equal(b, p) for b, p in zip(before, params))


def test_fp16_scaler_skips_a_non_finite_loss():
    params = _params()
    optimizer = torch.optim.SGD(params, lr=0.1, momentum=0.9, fused=True)
    scaler = Amp.for_device("fp16", CPU).new_scaler()
    before = [p.detach().clone() for p in params]
    loss = _loss(params, torch.linspace(-1, 1, 16)) * float("inf")
    backward_and_step(optimizer, loss, torch.isfinite(loss), scaler)
    assert all(torch.equal(b, p) for b, p in zip(before, params))
    loss = _loss(params, torch.linspace(-1, 1, 16))
    for _ in range(30):  # the scale backs off from 2**16 until the fp32 gradients fit; then steps are taken
        backward_and_step(optimizer, _loss(params, torch.linspace(-1, 1, 16)), torch.ones((), dtype=torch.bool),
                          scaler)
    assert not all(torch.equal(b, p) for b, p in zip(before, params))
    assert all(torch.isfinite(p).all() for p in params)


def test_bn_statistics_are_float32_under_bf16_autocast():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 3), nn.BatchNorm2d(4))
    model.eval()
    x = torch.rand(16, 3, 12, 12)
    with BNProbe(model) as probe:
        _, reference = probe(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out, stats = probe(x)
    assert out.dtype == torch.bfloat16
    for s, r in zip(stats, reference):
        assert s.batch_mean.dtype == torch.float32 and s.batch_var.dtype == torch.float32
        # The layer input itself is bf16 (8 bits of mantissa): its moments agree to about 1 %.
        torch.testing.assert_close(s.batch_var, r.batch_var, rtol=0.03, atol=1e-3)


def test_the_inner_loops_never_read_a_tensor_on_the_host(monkeypatch):
    """KD steps read nothing back; a synthesis round reads once, at its end (on a GPU each read is a wait)."""
    from nayer_edge.core.normalize import NormalizedModel
    from nayer_edge.distill.engine import Distiller
    from nayer_edge.synthesis.embeddings import onehot_embeddings
    from nayer_edge.zoo import create_model

    torch.manual_seed(0)
    config = load_config(None, {"student": "cnn_tiny", "synthesis_batch": 20, "kd_batch": 16, "g_steps": 3,
                                "ngf": 8, "noisy_dim": 32, "memory_capacity": 100, "device": "cpu"})
    teacher = NormalizedModel(create_model("cnn_small", num_classes=10, in_channels=1, input_size=16), [0.5], [0.5])
    student = NormalizedModel(create_model("cnn_tiny", num_classes=10, in_channels=1, input_size=16), [0.5], [0.5])
    distiller = Distiller(teacher, student, onehot_embeddings(10), config, (1, 16, 16), 10, CPU)
    distiller.generator = distiller.build_generator()
    distiller.synthesize(adversarial=True)

    reads: list[str] = []
    for name in ("item", "tolist", "__bool__", "__float__", "__int__"):
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _name=name, _original=original, **kwargs):
            reads.append(_name)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    losses = [distiller.kd_step() for _ in range(5)]
    assert reads == [], reads
    assert all(isinstance(v, torch.Tensor) for v in losses)
    distiller.synthesize(adversarial=True)
    assert reads == ["tolist"], reads
    monkeypatch.undo()
    assert all(math.isfinite(float(v)) for v in losses)


def test_a_momentum_buffer_in_another_memory_format_is_laid_out_like_its_parameter():
    """A run resumed with channels_last switched on: fused kernels walk parameter and buffer as flat memory."""
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, 3)
    reference = nn.Conv2d(3, 4, 3)
    reference.load_state_dict(conv.state_dict())
    x = torch.rand(2, 3, 6, 6)
    opt = torch.optim.SGD(conv.parameters(), lr=0.1, momentum=0.9, fused=True)
    ref_opt = torch.optim.SGD(reference.parameters(), lr=0.1, momentum=0.9)
    for model, optimizer in ((conv, opt), (reference, ref_opt)):  # one step in the usual layout
        optimizer.zero_grad()
        model(x).square().mean().backward()
        optimizer.step()
    conv.to(memory_format=torch.channels_last)
    assert opt.state[conv.weight]["momentum_buffer"].is_contiguous()  # still NCHW: the layouts now differ
    for _ in range(2):
        loss = conv(x).square().mean()
        backward_and_step(opt, loss, torch.isfinite(loss))
        ref_opt.zero_grad()
        reference(x).square().mean().backward()
        ref_opt.step()
    assert opt.state[conv.weight]["momentum_buffer"].stride() == conv.weight.stride()
    torch.testing.assert_close(conv.weight, reference.weight, rtol=1e-5, atol=1e-6)


def test_resume_accepts_other_device_settings(tmp_path):
    from nayer_edge.core.atomic import atomic_torch_save
    from nayer_edge.distill.checkpoint import read_checkpoint
    from nayer_edge.distill.run_folder import CHECKPOINT

    saved = load_config(None, {"amp": "fp32", "channels_last": False})
    atomic_torch_save(tmp_path / CHECKPOINT, {"config": saved.to_dict()})
    changed = load_config(None, {"amp": "bf16", "channels_last": True, "compile": True, "memory_device_budget": 0.5})
    assert read_checkpoint(tmp_path, changed) is not None
    with pytest.raises(UserError, match="different settings"):
        read_checkpoint(tmp_path, load_config(None, {"kd_batch": 7}))
    from nayer_edge.distill.checkpoint import changed_on_resume

    # Allowed, but said: the run is no longer bitwise the uninterrupted one.
    assert changed_on_resume({"config": saved.to_dict()}, changed) == [
        "amp: fp32 → bf16", "channels_last: False → True", "compile: False → True"]  # where samples live: no
    assert changed_on_resume({"config": saved.to_dict()}, saved) == []


def test_fp16_resume_is_bitwise_identical_with_the_loss_scales_restored(digits_teacher, tmp_path, monkeypatch):
    """fp16's GradScalers back off (the generator's falls from 2^16 to ~2^10 in the first rounds); a resumed run
    that started them afresh would skip other steps. Stopped by SIGINT after KD step 15, then resumed."""
    import hashlib
    import os
    import signal

    from conftest import TEST_RECIPE

    from nayer_edge.core.interrupt import Interrupted
    from nayer_edge.distill.engine import Distiller
    from nayer_edge.distill.run import distill

    config = load_config(TEST_RECIPE, {"epochs": 4, "warmup_epochs": 1, "synthesis_batch": 40, "kd_batch": 32,
                                       "kd_steps": 10, "g_steps": 4, "memory_capacity": 100, "amp": "fp16",
                                       "embedding": "onehot", "device": "cpu"})
    run = lambda out, **kw: distill(digits_teacher.path, out_dir=out, config=config, show_progress=False, **kw)
    run(tmp_path / "whole")

    real_kd_step, calls = Distiller.kd_step, []

    def kd_step(self):
        loss = real_kd_step(self)
        calls.append(1)
        if len(calls) == 15:
            os.kill(os.getpid(), signal.SIGINT)
        return loss

    monkeypatch.setattr(Distiller, "kd_step", kd_step)
    with pytest.raises(Interrupted) as stopped:
        run(tmp_path / "cut")
    assert stopped.value.graceful
    saved = torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=True)["scalers"]
    assert saved["generator"]["scale"] < 2.0 ** 16  # what the fix restores; without it this test cannot fail
    monkeypatch.undo()
    run(tmp_path / "cut", resume=True)
    digest = lambda p: hashlib.sha256(p.read_bytes()).hexdigest()
    assert digest(tmp_path / "cut" / "student.pt") == digest(tmp_path / "whole" / "student.pt")
