"""Batch statistics of the input to every BatchNorm layer of a teacher: eager, TorchScript or torch.export.

NAYER / DeepInversion synthesise images by matching, at every BatchNorm layer of the frozen teacher, the
mean and variance of the layer's input over the batch to the layer's running statistics. `BNProbe` runs the
teacher once and returns its output together with those statistics, whatever form the teacher came in:

- eager ``nn.Module``: forward hooks on every ``_BatchNorm`` module (kind ``"hooks"``);
- TorchScript (``torch.jit.load``): the forward graph is inlined into a copy, the input and running stats of
  every ``aten::batch_norm`` node are added as extra graph outputs, and the copy is compiled into a function
  that replaces the module's ``forward`` while the probe is open (kind ``"torchscript"``);
- ``torch.export`` (``torch.export.load(p).module()``): a copy of the fx graph, sharing the parameters, gets a
  recorder call after every batch-norm op and replaces the module's ``forward`` while the probe is open
  (kind ``"fx"``). The user's graph is never modified.

A wrapper (an adapter that normalises, or one that splits the batch into chunks and calls the inner model
several times) is handled: the compiled modules are found among ``model.modules()`` and instrumented in place;
statistics of one layer recorded several times in one forward are pooled (exact mean and biased variance of
the union of the chunks).

Example::

    probe = BNProbe(teacher)
    logits, stats = probe(x)
    loss, state = bn_statistics_loss(stats, state)
    probe.close()
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

__all__ = ["BNStat", "BNProbe", "bn_statistics_loss"]


@dataclass
class BNStat:
    """Statistics of the input of one BatchNorm layer for one forward pass.

    ``batch_mean`` / ``batch_var`` (biased) are taken over every dimension but the channel one (N, H, W for
    BatchNorm2d; N for BatchNorm1d on 2-D input) and stay differentiable w.r.t. the model input;
    ``running_mean`` / ``running_var`` are the layer's stored statistics, detached.
    """

    name: str
    batch_mean: Tensor
    batch_var: Tensor
    running_mean: Tensor
    running_var: Tensor


def _join(prefix: str, name: str) -> str:
    return ".".join(p for p in (prefix, name) if p)


class _Recorder:
    """Collects per-layer moments during one probed forward; inert outside it."""

    def __init__(self) -> None:
        self.active = False
        self.parts: dict[str, list[tuple[int, Tensor, Tensor]]] = {}
        self.running: dict[str, tuple[Tensor, Tensor]] = {}

    def record(self, name: str, x: Tensor, running_mean: Tensor | None, running_var: Tensor | None) -> None:
        if not self.active or running_mean is None or running_var is None:
            return
        dims = (0, *range(2, x.dim()))
        # Under bf16/fp16 autocast the layer input is half precision; its moments are taken in float32.
        with torch.autocast(x.device.type, enabled=False):
            var, mean = torch.var_mean(x.float(), dim=dims, correction=0)
        count = x.numel() // x.shape[1] if x.dim() > 1 else x.numel()
        self.parts.setdefault(name, []).append((count, mean, var))
        self.running.setdefault(name, (running_mean.detach(), running_var.detach()))

    def clear(self) -> None:
        self.parts = {}
        self.running = {}


def _pool(parts: list[tuple[int, Tensor, Tensor]]) -> tuple[Tensor, Tensor]:
    """Mean and biased variance of the union of several chunks, from each chunk's count, mean and variance."""
    if len(parts) == 1:
        return parts[0][1], parts[0][2]
    means = torch.stack([p[1] for p in parts])
    variances = torch.stack([p[2] for p in parts])
    counts = torch.tensor([float(p[0]) for p in parts], dtype=means.dtype, device=means.device)
    weights = (counts / counts.sum()).unsqueeze(1)
    mean = (weights * means).sum(0)
    var = (weights * (variances + (means - mean) ** 2)).sum(0)
    return mean, var


# --- TorchScript -----------------------------------------------------------------------------------------

# Every one of these takes (input, weight, bias, running_mean, running_var, ...).
_TS_BN_KINDS = (
    "aten::batch_norm",
    "aten::native_batch_norm",
    "aten::_native_batch_norm_legit",
    "aten::_native_batch_norm_legit_no_training",
)


def _ts_module_path(value: Any, self_value: Any) -> str | None:
    """'blk.b1' for a value produced by GetAttr[running_mean](GetAttr[b1](GetAttr[blk](self)))."""
    node = value.node()
    if node.kind() != "prim::GetAttr":
        return None
    parts: list[str] = []
    owner = node.input()
    while owner is not self_value:
        owner_node = owner.node()
        if owner_node.kind() != "prim::GetAttr":
            return None
        parts.append(owner_node.s("name"))
        owner = owner_node.input()
    return ".".join(reversed(parts))


class _Instrument:
    """A compiled module whose ``forward`` is replaced, while the probe is open, by a probed copy of its graph;
    outside a probe call it defers to the original. Subclasses build the copy and run it in ``_probed``."""

    kind = ""

    def __init__(self, module: nn.Module, recorder: _Recorder):
        self.module = module
        self.recorder = recorder
        self.layer_names: list[str] = []
        self._original: Callable | None = None

    def _probed(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if not self.recorder.active:
            assert self._original is not None
            return self._original(*args, **kwargs)
        return self._probed(*args, **kwargs)

    def install(self) -> None:
        self._original = self.module.forward
        self.module.forward = self.forward

    def remove(self) -> None:
        if self.module.__dict__.get("forward") == self.forward:
            delattr(self.module, "forward")
        self._original = None


class _ScriptInstrument(_Instrument):
    """Replaces a ScriptModule's forward by a compiled copy of its graph that also returns BN inputs."""

    kind = "torchscript"

    def __init__(self, module: torch.jit.ScriptModule, prefix: str, recorder: _Recorder):
        super().__init__(module, recorder)
        self._function: Any = None
        if not module._c._has_method("forward"):
            return
        graph = module.forward.graph.copy()
        torch._C._jit_pass_inline(graph)
        self_value = next(iter(graph.inputs()))
        names: list[str] = []
        top_level = 0
        for node in graph.nodes():  # the top block only: values inside if/loop blocks cannot be returned
            if node.kind() not in _TS_BN_KINDS:
                continue
            top_level += 1
            inputs = list(node.inputs())
            if any(v.type().kind() == "NoneType" for v in inputs[3:5]):
                continue  # track_running_stats=False: nothing to match
            path = _ts_module_path(inputs[3], self_value)
            names.append(_join(prefix, path if path is not None else f"batch_norm{top_level - 1}"))
            for v in (inputs[0], inputs[3], inputs[4]):
                graph.registerOutput(v)
        nested = sum(len(graph.findAllNodes(kind)) for kind in _TS_BN_KINDS) - top_level
        if nested:
            warnings.warn(
                f"BNProbe: {nested} batch-norm op(s) inside control flow of TorchScript module "
                f"'{prefix or module.original_name}' are not probed",
                stacklevel=3,
            )
        if not names:
            return
        graph.makeMultiOutputIntoTuple()
        self._function = torch._C._create_function_from_graph("bn_probe_forward", graph)
        self._names = names
        self.layer_names = list(dict.fromkeys(names))

    def _probed(self, *args: Any, **kwargs: Any) -> Any:
        result = self._function(self.module._c, *args, **kwargs)
        extras = result[1:]
        for i, name in enumerate(self._names):
            self.recorder.record(name, extras[3 * i], extras[3 * i + 1], extras[3 * i + 2])
        return result[0]


# --- torch.export / fx -----------------------------------------------------------------------------------


def _fx_bn_targets() -> dict[Any, tuple[tuple[int, str], tuple[int, str], tuple[int, str]]]:
    """call_function targets that are batch norm -> (position, name) of input, running_mean, running_var."""
    aten = torch.ops.aten
    standard = ((0, "input"), (3, "running_mean"), (4, "running_var"))
    table: dict[Any, Any] = {}
    for op in (
        "batch_norm",
        "native_batch_norm",
        "_native_batch_norm_legit",
        "_native_batch_norm_legit_no_training",
        "_native_batch_norm_legit_functional",
        "cudnn_batch_norm",
        "miopen_batch_norm",
    ):
        packet = getattr(aten, op, None)
        if packet is not None and "default" in packet.overloads():
            table[packet.default] = standard
    table[torch.batch_norm] = standard
    table[torch.nn.functional.batch_norm] = ((0, "input"), (1, "running_mean"), (2, "running_var"))
    return table


def _fx_arg(node: torch.fx.Node, where: tuple[int, str]) -> Any:
    index, name = where
    return node.args[index] if len(node.args) > index else node.kwargs.get(name)


class _FxInstrument(_Instrument):
    """Replaces a GraphModule's forward by a copy of its graph (sharing parameters) with recorder calls."""

    kind = "fx"

    def __init__(self, module: torch.fx.GraphModule, prefix: str, recorder: _Recorder):
        super().__init__(module, recorder)
        self._copy: torch.fx.GraphModule | None = None
        targets = _fx_bn_targets()
        source = module.graph
        # graph_copy rather than deepcopy: the codegen (pytree in/out specs) is shared, read-only.
        graph = torch.fx.Graph(tracer_cls=source._tracer_cls)
        graph._codegen = source._codegen
        graph.output(graph.graph_copy(source, {}))
        names: list[str] = []
        for node in list(graph.nodes):
            if node.op != "call_function" or node.target not in targets:
                continue
            x_arg, mean_arg, var_arg = (_fx_arg(node, w) for w in targets[node.target])
            if not isinstance(x_arg, torch.fx.Node) or mean_arg is None or var_arg is None:
                continue
            if isinstance(mean_arg, torch.fx.Node) and mean_arg.op == "get_attr":
                path = str(mean_arg.target).removesuffix("running_mean").rstrip(".")
            else:
                path = getattr(mean_arg, "name", node.name)
            name = _join(prefix, path)
            names.append(name)
            with graph.inserting_after(node):
                graph.call_function(recorder.record, (name, x_arg, mean_arg, var_arg))
        if not names:
            return
        self._copy = torch.fx.GraphModule(module, graph, class_name=type(module).__name__)
        self.layer_names = list(dict.fromkeys(names))

    def _probed(self, *args: Any, **kwargs: Any) -> Any:
        assert self._copy is not None
        return self._copy.forward(*args, **kwargs)


# --- the probe -------------------------------------------------------------------------------------------


class BNProbe:
    """Runs a teacher and returns its output with the input statistics of each of its BatchNorm layers.

    Works on eager modules (forward hooks), TorchScript modules and torch.export GraphModules, also when
    they sit inside an eager wrapper. ``kind`` is ``"torchscript"``, ``"fx"``, ``"hooks"`` or ``"none"``
    (the first that applies, in that order, when a wrapper mixes them). The teacher's mode is not
    changed. Compiled modules get an instance ``forward`` while the probe is open (outside a probe call it
    defers to the original); ``close()`` removes it and the hooks.

    Example::

        with BNProbe(torch.jit.load("teacher.pt")) as probe:
            logits, stats = probe(x)          # stats: list[BNStat], in layer order
    """

    def __init__(self, model: nn.Module):
        self.model = model
        self._recorder = _Recorder()
        self._instruments: list[_Instrument] = []
        self._hooks: list[torch.utils.hooks.RemovableHandle] = []
        names: list[str] = []
        opaque: list[str] = []  # prefixes of compiled modules: their submodules are not hooked
        for path, module in model.named_modules():
            if any(p == "" or path == p or path.startswith(p + ".") for p in opaque):
                continue
            if isinstance(module, torch.jit.ScriptModule):
                opaque.append(path)
                instrument: _ScriptInstrument | _FxInstrument = _ScriptInstrument(module, path, self._recorder)
            elif isinstance(module, torch.fx.GraphModule):
                instrument = _FxInstrument(module, path, self._recorder)
                if not instrument.layer_names:
                    continue  # e.g. symbolic_trace: BN stays a call_module, hooks below see it
                opaque.append(path)
            elif isinstance(module, _BatchNorm):
                if module.running_mean is None or module.running_var is None:
                    continue
                self._hooks.append(module.register_forward_hook(self._hook(path)))
                names.append(path)
                continue
            else:
                continue
            if instrument.layer_names:
                instrument.install()
                self._instruments.append(instrument)
                names.extend(instrument.layer_names)
        self.layer_names: list[str] = list(dict.fromkeys(names))
        self.num_layers: int = len(self.layer_names)
        kinds = {i.kind for i in self._instruments} | ({"hooks"} if self._hooks else set())
        self.kind: str = next((k for k in ("torchscript", "fx", "hooks") if k in kinds), "none")

    def _hook(self, name: str) -> Callable:
        recorder = self._recorder

        def hook(module: _BatchNorm, inputs: tuple, output: Any) -> None:
            recorder.record(name, inputs[0], module.running_mean, module.running_var)

        return hook

    def __call__(self, *args: Any, **kwargs: Any) -> tuple[Any, list[BNStat]]:
        """Forward the model; returns (output, stats of the layers that ran, in ``layer_names`` order)."""
        recorder = self._recorder
        recorder.clear()
        recorder.active = True
        try:
            output = self.model(*args, **kwargs)
        finally:
            recorder.active = False
        known = set(self.layer_names)
        order = self.layer_names + [n for n in recorder.parts if n not in known]
        stats = []
        for name in order:
            parts = recorder.parts.get(name)
            if parts:
                mean, var = _pool(parts)
                running_mean, running_var = recorder.running[name]
                stats.append(BNStat(name, mean, var, running_mean, running_var))
        recorder.clear()
        return output, stats

    def close(self) -> None:
        """Remove hooks and restore the original forwards. Idempotent."""
        for handle in self._hooks:
            handle.remove()
        self._hooks = []
        for instrument in self._instruments:
            instrument.remove()
        self._instruments = []

    def __enter__(self) -> BNProbe:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def bn_statistics_loss(
    stats: list[BNStat], momentum_state: dict | None = None, momentum: float = 0.9, first_weight: float = 1.0
) -> tuple[Tensor, dict]:
    """NAYER's BatchNorm statistics loss, Σ_l ‖μ̂_l − μ_l‖₂ + ‖σ̂²_l − σ²_l‖₂, with momentum blending.

    μ̂ = (1 − momentum)·batch_mean + momentum·previous mean (the same for the variance), where the previous
    blended statistics come from ``momentum_state[name] = (mean, var)``; a layer with no previous entry uses
    its batch statistics as they are. ``first_weight`` scales the first layer's term (DeepInversion's
    first_bn_multiplier). Returns the loss (0-dim, differentiable) and the new state (a new
    dict, detached tensors). NAYER carries the state over once per synthesised batch, after its inner steps:
    keep the returned state only when that is what you want.

    Example::

        loss, state = bn_statistics_loss(stats, None)         # first call
        loss, state = bn_statistics_loss(stats2, state)
    """
    new_state: dict = dict(momentum_state or {})
    if not stats:
        return torch.tensor(0.0), new_state
    previous = momentum_state or {}
    total: Tensor | None = None
    for index, s in enumerate(stats):
        mean, var = s.batch_mean, s.batch_var
        if s.name in previous:
            prev_mean, prev_var = previous[s.name]
            mean = (1 - momentum) * mean + momentum * prev_mean.to(mean)
            var = (1 - momentum) * var + momentum * prev_var.to(var)
        term = torch.linalg.vector_norm(mean - s.running_mean.to(mean)) + torch.linalg.vector_norm(
            var - s.running_var.to(var)
        )
        if index == 0 and first_weight != 1.0:
            term = first_weight * term
        total = term if total is None else total + term
        new_state[s.name] = (mean.detach(), var.detach())
    assert total is not None
    return total, new_state
