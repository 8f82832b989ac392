"""BNProbe on eager, TorchScript (scripted / traced) and torch.export teachers; the NAYER BN loss."""

from __future__ import annotations

import gc
import weakref

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from nayer_edge.synthesis.bn_probe import BNProbe, BNStat, bn_statistics_loss

BATCH = 4

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.*` is deprecated:DeprecationWarning")


class Block(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.c1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.b1 = nn.BatchNorm2d(c)
        self.c2 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.b2 = nn.BatchNorm2d(c)

    def forward(self, x):
        return F.relu(x + self.b2(self.c2(F.relu(self.b1(self.c1(x))))))


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.layer = nn.Sequential(Block(8), Block(8))
        self.fc1 = nn.Linear(8, 16)
        self.bn1d = nn.BatchNorm1d(16)
        self.fc2 = nn.Linear(16, 5)

    def forward(self, x):
        x = self.layer(self.stem(x)).mean((2, 3))
        return self.fc2(F.relu(self.bn1d(self.fc1(x))))


BN_NAMES = ["stem.1", "layer.0.b1", "layer.0.b2", "layer.1.b1", "layer.1.b2", "bn1d"]


class Normalize(nn.Module):
    """A wrapper that preprocesses, then calls an inner (compiled) model."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner((x - 0.5) / 0.25)


class Chunked(nn.Module):
    """An adapter that feeds a fixed-batch inner model chunk by chunk."""

    def __init__(self, inner: nn.Module, chunk: int):
        super().__init__()
        self.inner = inner
        self.chunk = chunk

    def forward(self, x):
        return torch.cat([self.inner(c) for c in x.split(self.chunk)])


def _freeze(model: nn.Module) -> nn.Module:
    for p in model.parameters():
        p.requires_grad_(False)
    return model


@pytest.fixture(scope="module")
def eager() -> nn.Module:
    torch.manual_seed(0)
    model = Net()
    model.train()
    with torch.no_grad():
        for _ in range(4):
            model(torch.randn(16, 3, 8, 8) * 2 + 1)
    return _freeze(model.eval())


@pytest.fixture(scope="module")
def x() -> torch.Tensor:
    return torch.randn(BATCH, 3, 8, 8, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def compiled(eager, x, tmp_path_factory) -> dict[str, nn.Module]:
    root = tmp_path_factory.mktemp("teachers")
    torch.jit.save(torch.jit.script(eager), root / "scripted.pt")
    torch.jit.save(torch.jit.trace(eager, x), root / "traced.pt")
    torch.export.save(torch.export.export(eager, (x,)), root / "exported.pt2")
    return {
        "eager": eager,
        "scripted": _freeze(torch.jit.load(root / "scripted.pt")),
        "traced": _freeze(torch.jit.load(root / "traced.pt")),
        "exported": _freeze(torch.export.load(root / "exported.pt2").module()),
    }


def _reference(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, BNStat]]:
    """Plain forward hooks on the eager model; stats pooled over repeated calls by concatenation."""
    inputs: dict[str, list[torch.Tensor]] = {}
    handles = []
    for name, m in model.named_modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            handles.append(m.register_forward_hook(lambda m, i, o, n=name: inputs.setdefault(n, []).append(i[0])))
    out = model(x)
    for h in handles:
        h.remove()
    stats = {}
    for name, xs in inputs.items():
        t = torch.cat(xs)
        dims = [0] + list(range(2, t.dim()))
        bn = model.get_submodule(name)
        stats[name] = BNStat(name, t.mean(dims), t.var(dims, unbiased=False), bn.running_mean, bn.running_var)
    return out, stats


def _reference_list(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, list[BNStat]]:
    out, stats = _reference(model, x)
    return out, list(stats.values())


def _input_grad(fn, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x = x.clone().requires_grad_(True)
    out, stats = fn(x)
    loss, _ = bn_statistics_loss(stats, None)
    loss = loss + 0.1 * out.square().mean()
    (grad,) = torch.autograd.grad(loss, x)
    return loss.detach(), grad


@pytest.mark.parametrize(
    ("which", "kind"),
    [("eager", "hooks"), ("scripted", "torchscript"), ("traced", "torchscript"), ("exported", "fx")],
)
def test_probe_matches_eager_reference(compiled, x, which, kind):
    eager, model = compiled["eager"], compiled[which]
    probe = BNProbe(model)
    assert probe.kind == kind
    assert probe.num_layers == 6
    assert probe.layer_names == BN_NAMES

    ref_out, ref_stats = _reference(eager, x)
    with torch.no_grad():
        plain = model(x)
    out, stats = probe(x)
    torch.testing.assert_close(out, plain, atol=1e-5, rtol=0)
    torch.testing.assert_close(out, ref_out, atol=1e-5, rtol=0)
    assert [s.name for s in stats] == BN_NAMES
    for s in stats:
        r = ref_stats[s.name]
        torch.testing.assert_close(s.batch_mean, r.batch_mean, atol=1e-5, rtol=0)
        torch.testing.assert_close(s.batch_var, r.batch_var, atol=1e-5, rtol=0)
        torch.testing.assert_close(s.running_mean, r.running_mean, atol=0, rtol=0)
        torch.testing.assert_close(s.running_var, r.running_var, atol=0, rtol=0)
        assert s.batch_var.shape == s.running_var.shape
    assert not torch.allclose(stats[0].running_var, torch.ones(8))  # running stats are non-trivial

    ref_loss, ref_grad = _input_grad(lambda t: _reference_list(eager, t), x)
    loss, grad = _input_grad(probe, x)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    torch.testing.assert_close(loss, ref_loss, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(grad, ref_grad, atol=1e-6, rtol=1e-4)

    probe.close()
    assert "forward" not in model.__dict__
    assert all(not m._forward_hooks for m in eager.modules())


@pytest.mark.parametrize("which", ["scripted", "exported"])
def test_wrappers_and_chunking(compiled, x, which):
    eager, inner = compiled["eager"], compiled[which]
    xx = torch.cat([x, x.flip(0) * 1.5 - 0.2])  # 8 samples; the exported model only takes batches of 4
    wrapped = Chunked(Normalize(inner), chunk=BATCH)
    with BNProbe(wrapped) as probe:
        assert probe.kind == ("torchscript" if which == "scripted" else "fx")
        assert probe.layer_names == [f"inner.inner.{n}" for n in BN_NAMES]
        out, stats = probe(xx)
        ref_out, ref_stats = _reference(Chunked(Normalize(eager), chunk=8), xx)  # one chunk = the whole batch
        torch.testing.assert_close(out, ref_out, atol=1e-5, rtol=0)
        assert len(stats) == 6
        for s, name in zip(stats, BN_NAMES):
            assert s.name == f"inner.inner.{name}"
            torch.testing.assert_close(s.batch_mean, ref_stats[f"inner.inner.{name}"].batch_mean, atol=1e-5, rtol=0)
            torch.testing.assert_close(s.batch_var, ref_stats[f"inner.inner.{name}"].batch_var, atol=1e-5, rtol=1e-5)
        _, grad = _input_grad(probe, xx)
        assert torch.isfinite(grad).all()
        # outside a probe call the inner model runs its own forward
        torch.testing.assert_close(wrapped(xx), out, atol=1e-5, rtol=0)
    assert "forward" not in inner.__dict__


def test_eager_chunked_pools_per_layer(compiled, x):
    eager = compiled["eager"]
    xx = torch.cat([x, x * 3 + 1])
    with BNProbe(Chunked(eager, chunk=BATCH)) as probe:
        assert probe.kind == "hooks"
        _, stats = probe(xx)
    _, ref = _reference(eager, xx)
    for s in stats:
        torch.testing.assert_close(s.batch_var, ref[s.name.removeprefix("inner.")].batch_var, atol=1e-5, rtol=1e-5)


def test_no_batchnorm_gives_kind_none():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.LazyLinear(2))
    x = torch.randn(2, 3, 5, 5)
    scripted = torch.jit.script(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()))
    for m in (model, scripted):
        probe = BNProbe(m)
        assert probe.kind == "none" and probe.num_layers == 0 and probe.layer_names == []
        out, stats = probe(x)
        assert stats == [] and out.shape[0] == 2
        probe.close()


def test_repeated_calls_do_not_accumulate(compiled, x):
    for which in ("eager", "scripted", "exported"):
        model = compiled[which]
        probe = BNProbe(model)
        alive = []
        for i in range(50):
            xi = x.clone().requires_grad_(True)
            out, stats = probe(xi)
            loss, _ = bn_statistics_loss(stats, None)
            if i % 10 == 0:
                torch.autograd.grad(loss + out.sum(), xi)
            assert len(stats) == 6
            assert probe._recorder.parts == {} and probe._recorder.running == {}
            alive.append(weakref.ref(stats[0].batch_mean))
            del out, stats, loss, xi
        gc.collect()
        assert not any(ref() is not None for ref in alive), which  # the probe keeps nothing alive
        hooks = sum(len(m._forward_hooks) for m in compiled["eager"].modules())
        assert hooks == (6 if which == "eager" else 0)
        probe.close()


def _stat(name, mean, var, rmean, rvar):
    t = torch.tensor
    return BNStat(name, t(mean), t(var), t(rmean), t(rvar))


def test_loss_zero_when_stats_match():
    s = _stat("a", [0.5, -1.0], [2.0, 0.3], [0.5, -1.0], [2.0, 0.3])
    loss, state = bn_statistics_loss([s], None)
    assert loss.dim() == 0 and loss.item() == pytest.approx(0.0)
    assert set(state) == {"a"}


def test_loss_known_value_and_gradient():
    mean = torch.tensor([3.0, 0.0], requires_grad=True)
    s1 = BNStat("a", mean, torch.tensor([1.0, 1.0]), torch.zeros(2), torch.tensor([1.0, 2.0]))
    s2 = _stat("b", [1.0], [5.0], [0.0], [1.0])
    loss, state = bn_statistics_loss([s1, s2], None)
    # a: |(3,0)| + |(0,-1)| = 3 + 1 ; b: 1 + 4
    assert loss.item() == pytest.approx(9.0)
    (g,) = torch.autograd.grad(loss, mean)
    torch.testing.assert_close(g, torch.tensor([1.0, 0.0]))
    assert not state["a"][0].requires_grad
    empty, same = bn_statistics_loss([], state)
    assert empty.item() == 0.0 and same.keys() == state.keys()
    # first_weight scales the first layer's term only (a: 4, b: 5): 10·4 + 5
    weighted, _ = bn_statistics_loss([s1, s2], None, first_weight=10.0)
    assert weighted.item() == pytest.approx(45.0)
    (g,) = torch.autograd.grad(weighted, mean)
    torch.testing.assert_close(g, torch.tensor([10.0, 0.0]))


def test_loss_momentum_blending():
    first = _stat("a", [2.0], [4.0], [0.0], [0.0])
    loss1, state1 = bn_statistics_loss([first], None, momentum=0.9)
    assert loss1.item() == pytest.approx(6.0)  # first call: raw batch stats
    torch.testing.assert_close(state1["a"][0], torch.tensor([2.0]))
    second = _stat("a", [12.0], [14.0], [0.0], [0.0])
    loss2, state2 = bn_statistics_loss([second], state1, momentum=0.9)
    # mean: 0.1*12 + 0.9*2 = 3.0 ; var: 0.1*14 + 0.9*4 = 5.0
    assert loss2.item() == pytest.approx(8.0)
    torch.testing.assert_close(state2["a"][0], torch.tensor([3.0]))
    torch.testing.assert_close(state2["a"][1], torch.tensor([5.0]))
    torch.testing.assert_close(state1["a"][0], torch.tensor([2.0]))  # the input state is not mutated
