"""Quantization-aware fine-tuning (QAT) of a distilled student on its own synthetic samples.

No real data is used: the student is fine-tuned on the run's synthetic memory, through fake quantization
that simulates the INT8 graph the target runtime will run, to reproduce its own FP32 logits (optionally
blended with the teacher's; ``fp32_anchor``).

Steps (``finetune_qat``):
1. BatchNorm is folded into the preceding convolutions (``torch.fx.experimental.optimization.fuse``),
   as every INT8 runtime does, so QAT trains the weights that will actually be quantized and BN
   statistics cannot drift during fine-tuning.
2. Fake quantizers are inserted with torch.fx where the target's graph has Q/DQ:
   - ``ort`` (onnxruntime's QDQ U8S8): asymmetric uint8 on the *output* of every op, a Relu sharing the
     quantizer of the conv before it (onnxruntime absorbs it), per-channel symmetric 7-bit weights ([-64, 64]);
   - ``tensorrt``: symmetric int8 (zero point 0, [-127, 127]) on the *inputs* of Conv/Linear and both
     inputs of residual Adds, per-channel narrow-range int8 weights (``qdq_tensorrt``'s layout).
3. Activation ranges are calibrated on the samples the same way the ONNX quantizer will calibrate them
   (min/max for ``ort``, max-abs for ``tensorrt``), then frozen; weights train through a straight-through
   estimator (``torch.fake_quantize_per_*_affine``). With a ``validation`` share, the samples it holds out choose
   the step whose weights are kept (the calibrated start when no step beats it).
4. The result is a plain FP32 module (fake quantizers switched off, BN folded) that the ONNX quantizer
   then calibrates on the same samples, so the deployed INT8 graph is what QAT trained for.

Why hand-written rather than NVIDIA Model Optimizer: see the note above ``QAT_TOOL_DECISION``.
"""

from __future__ import annotations

import copy
import math
import operator
import time
from dataclasses import dataclass
from typing import Any, Callable, Literal

import torch
import torch.nn.functional as F
from torch import fx, nn

from ..core.errors import UserError, first_line
from ..distill.losses import kd_divergence

Layout = Literal["ort", "tensorrt"]

# Measured (BENCHMARKS.md §5, benchmarks/qat_tooling_modelopt.py): nvidia-modelopt 0.47 runs QAT on CPU, but
# it does not fold BatchNorm, exports float weights with full-range [-128, 127] Q/DQ (narrow range fails to
# export), has no layout onnxruntime fuses (its INT8 ONNX ran 2.1x slower than FP32 there), and adds ~120 MB
# of dependencies. Both layouts we need are a few lines of torch.fx on top of torch's own fake-quant ops.
QAT_TOOL_DECISION = "hand-written torch.fx fake quantization (nvidia-modelopt measured and not used: BENCHMARKS.md §5)"

_PASS_THROUGH_MODULES = (nn.Identity, nn.Flatten, nn.Dropout)
_RELU_MODULES = (nn.ReLU, nn.ReLU6)
_RELU_FUNCTIONS = (F.relu, torch.relu, torch.relu_)
_ADD_FUNCTIONS = (operator.add, operator.iadd, torch.add)
_PASS_THROUGH_FUNCTIONS = (torch.flatten, operator.getitem, getattr)
_PASS_THROUGH_METHODS = ("view", "reshape", "flatten", "size", "squeeze", "unsqueeze", "contiguous", "dim")


class ActivationQuantizer(nn.Module):
    """Per-tensor fake quantization of an activation: observes its range, then quantizes with it."""

    def __init__(self, symmetric: bool):
        super().__init__()
        self.symmetric = symmetric
        self.mode: Literal["observe", "quantize", "off"] = "off"
        self.register_buffer("low", torch.tensor(0.0))
        self.register_buffer("high", torch.tensor(0.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "observe":
            with torch.no_grad():
                self.low.copy_(torch.minimum(self.low, x.min()))
                self.high.copy_(torch.maximum(self.high, x.max()))
            return x
        if self.mode == "off":
            return x
        if self.symmetric:
            amax = max(float(-self.low), float(self.high), 1e-8)
            return torch.fake_quantize_per_tensor_affine(x, amax / 127.0, 0, -127, 127)
        low, high = min(float(self.low), 0.0), max(float(self.high), 0.0)
        scale = max(high - low, 1e-8) / 255.0
        zero_point = int(min(255, max(0, round(-low / scale))))
        return torch.fake_quantize_per_tensor_affine(x, scale, zero_point, 0, 255)


# The largest weight level of each layout: onnxruntime's weights are 7-bit ([-64, 64], ``reduce_range``: see
# ``quantize.ort``), TensorRT's narrow-range 8-bit ([-127, 127]).
WEIGHT_QMAX: dict[str, int] = {"ort": 64, "tensorrt": 127}


def _fake_quantize_weight(weight: torch.Tensor, qmax: int) -> torch.Tensor:
    """Per-output-channel symmetric int8 in [-qmax, qmax], scales from max |w| (what both quantizers use)."""
    amax = weight.detach().abs().flatten(1).amax(1).clamp_min(1e-12)
    zero = torch.zeros(weight.shape[0], dtype=torch.int32, device=weight.device)
    return torch.fake_quantize_per_channel_affine(weight, amax / qmax, zero, 0, -qmax, qmax)


class QuantConv2d(nn.Conv2d):
    """A Conv2d whose weight goes through fake int8 quantization while ``quantize`` is set."""

    quantize = False
    weight_qmax = 127

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = _fake_quantize_weight(self.weight, self.weight_qmax) if self.quantize else self.weight
        return self._conv_forward(x, weight, self.bias)


class QuantLinear(nn.Linear):
    """A Linear whose weight goes through fake int8 quantization while ``quantize`` is set."""

    quantize = False
    weight_qmax = 127

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = _fake_quantize_weight(self.weight, self.weight_qmax) if self.quantize else self.weight
        return F.linear(x, weight, self.bias)


def fold_batchnorm(model: nn.Module) -> fx.GraphModule:
    """A copy of ``model`` (eval mode) traced with torch.fx, every Conv→BatchNorm folded into the Conv."""
    from torch.fx.experimental.optimization import fuse

    try:
        return fuse(copy.deepcopy(model).eval())
    except Exception as err:  # noqa: BLE001 - fx raises many types for untraceable code
        raise UserError(f"quantization-aware training needs a torch.fx-traceable student "
                        f"({type(err).__name__}: {first_line(err, limit=120)}); use --no-qat") from None


def prepare_qat(model: nn.Module, layout: Layout) -> fx.GraphModule:
    """BN-folded copy of ``model`` with fake quantizers for ``layout`` (all switched off)."""
    if layout not in ("ort", "tensorrt"):
        raise UserError(f"QAT layout must be 'ort' or 'tensorrt', got {layout!r}")
    gm = fold_batchnorm(model)
    _swap_weight_modules(gm, WEIGHT_QMAX[layout])
    if layout == "ort":
        _quantize_outputs(gm)
    else:
        _quantize_conv_and_add_inputs(gm)
    gm.graph.lint()
    gm.recompile()
    set_quantization(gm, "off")
    return gm


def set_quantization(gm: nn.Module, mode: Literal["observe", "quantize", "off"]) -> None:
    """Switch every quantizer: ``observe`` ranges (weights float), ``quantize`` (fake INT8), or ``off`` (FP32)."""
    for module in gm.modules():
        if isinstance(module, ActivationQuantizer):
            module.mode = mode
        elif isinstance(module, (QuantConv2d, QuantLinear)):
            module.quantize = mode == "quantize"


def calibrate(gm: nn.Module, images: torch.Tensor, batch: int = 256) -> None:
    """Observe activation ranges over ``images`` (already in the module's input convention)."""
    for module in gm.modules():
        if isinstance(module, ActivationQuantizer):
            module.low.zero_()
            module.high.zero_()
    set_quantization(gm, "observe")
    with torch.no_grad():
        for i in range(0, len(images), batch):
            gm(images[i:i + batch])
    set_quantization(gm, "quantize")


@dataclass
class QATReport:
    steps: int
    seconds: float
    initial_loss: float
    final_loss: float
    quantizers: int
    layout: str
    # With a validation share: the step whose weights were kept (0: none beat the calibrated start) and the fake-INT8
    # model's KL from the FP32 student on the validation samples, at the start and at the kept step.
    kept_step: int | None = None
    validation_samples: int = 0
    validation_kl_start: float | None = None
    validation_kl_kept: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


# One keyword per QAT setting, recorded in config.json or chosen by the caller: the count is the interface.
def finetune_qat(student: nn.Module, images01: torch.Tensor, teacher_logits: torch.Tensor | None, *,
                 mean: list[float],
                 std: list[float], layout: Layout, epochs: float, lr: float, batch: int, temperature: float,
                 fp32_anchor: float = 1.0, calibration: int = 512, seed: int = 0,
                 on_step: Callable[[int, int], None] | None = None, max_seconds: float | None = None,
                 validation: float = 0.0) -> tuple[fx.GraphModule, QATReport]:
    """Fine-tune ``student`` (takes normalised input) through fake INT8 quantization on ``images01``.
    Returns the BN-folded FP32 module (quantizers off; same input convention as ``student``) and a report.
    SGD with momentum, cosine learning rate from ``lr`` to 0.

    The KD target blends the FP32 student's own logits (weight ``fp32_anchor``, default all of it) with the
    teacher's. QAT's job is to recover what quantization loses from the student that was validated, not to
    re-fit the synthetic samples: with the teacher as the target, the student moved on real data by as much as
    it gained on synthetic data, and lost to PTQ (BENCHMARKS.md §5).

    ``max_seconds``: the steps are cut, once the first few have been timed, to fit that time (the cosine then runs
    over the steps that fit).

    ``validation``: the share of ``images01`` kept out of training to choose the weights returned: the fake-INT8
    model's KL from the FP32 student on them is measured at the start and about ten times during training, and the
    weights of the lowest are kept (the start when no step beat it: then QAT returns the calibrated student, which
    is what PTQ deploys). Fine-tuning on a few synthetic samples can move the student away from what it does on real
    images while it fits them; samples it never trained on see that."""
    _check_settings(images01, teacher_logits, epochs, lr, batch, fp32_anchor, validation)
    mean_t = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    normalised = (images01.float() - mean_t) / std_t
    generator = torch.Generator().manual_seed(seed)
    student_logits = _logits(student, normalised, batch) if fp32_anchor > 0 or validation > 0 else None
    gm = prepare_qat(student, layout)
    order = torch.randperm(len(normalised), generator=generator)
    calibrate(gm, normalised[order[:calibration]])
    held = int(len(normalised) * validation)
    trained_on, judged_on = order[:len(order) - held], order[len(order) - held:]
    keeper = _BestWeights(gm, normalised[judged_on], student_logits[judged_on]) if held else None

    targets = _Targets(student_logits if fp32_anchor > 0 else None, teacher_logits, fp32_anchor, temperature)
    schedule = _Schedule(steps=max(1, math.ceil(epochs * (len(normalised) - held) / batch)), lr=lr, batch=batch,
                         max_seconds=max_seconds, on_step=on_step)
    losses, started = _train(gm, normalised, targets, schedule, generator, trained_on if held else None, keeper)
    gm.eval()
    if keeper is not None:
        keeper.restore()
    set_quantization(gm, "off")
    steps = len(losses)
    window = max(1, min(10, steps // 5))
    report = QATReport(steps=steps, seconds=time.perf_counter() - started,
                       initial_loss=sum(losses[:window]) / window, final_loss=sum(losses[-window:]) / window,
                       quantizers=sum(isinstance(m, ActivationQuantizer) for m in gm.modules()), layout=layout)
    if keeper is not None:
        report.kept_step, report.validation_samples = keeper.step, held
        report.validation_kl_start, report.validation_kl_kept = keeper.start, keeper.best
    return gm, report


def _check_settings(images01: torch.Tensor, teacher_logits: torch.Tensor | None, epochs: float, lr: float,
                    batch: int, fp32_anchor: float, validation: float) -> None:
    if len(images01) == 0:
        raise UserError("no synthetic samples to fine-tune on")
    if not 0.0 <= validation < 1.0:
        raise UserError(f"QAT validation share must be within [0, 1), got {validation}")
    if validation > 0 and len(images01) - int(len(images01) * validation) < 1:
        raise UserError(f"QAT keeps {validation:g} of {len(images01)} samples for validation and none to train on")
    if epochs <= 0 or lr <= 0 or batch < 1:
        raise UserError("QAT epochs, learning rate and batch must be positive")
    if not 0.0 <= fp32_anchor <= 1.0:
        raise UserError(f"QAT fp32_anchor must be within [0, 1], got {fp32_anchor}")
    if fp32_anchor < 1.0 and teacher_logits is None:
        raise UserError("QAT with fp32_anchor below 1 needs the teacher's logits")


@dataclass(frozen=True)
class _Targets:
    """QAT's KD target: the FP32 student's logits (weight ``fp32_anchor``) blended with the teacher's."""

    student: torch.Tensor | None
    teacher: torch.Tensor | None
    fp32_anchor: float
    temperature: float

    def loss(self, out: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """The KD loss of the logits ``out`` for the samples ``idx``."""
        loss = out.new_zeros(())
        if self.student is not None:
            loss = loss + kd_divergence(out, self.student[idx], self.temperature) * self.fp32_anchor
        if self.teacher is not None and self.fp32_anchor < 1.0:
            loss = loss + kd_divergence(out, self.teacher[idx], self.temperature) * (1.0 - self.fp32_anchor)
        return loss


@dataclass(frozen=True)
class _Schedule:
    """How QAT trains: ``steps`` SGD steps on random batches of ``batch``, the cosine from ``lr`` to 0, the steps
    cut to fit ``max_seconds`` once the first few are timed; ``on_step(done, total)`` after each."""

    steps: int
    lr: float
    batch: int
    max_seconds: float | None
    on_step: Callable[[int, int], None] | None


class _BestWeights:
    """Keeps the weights of ``gm`` at which its fake-INT8 logits on ``images`` are closest (KL) to ``reference``,
    the FP32 student's logits on them."""

    def __init__(self, gm: fx.GraphModule, images: torch.Tensor, reference: torch.Tensor):
        self.gm, self.images, self.reference = gm, images, reference
        self.start = self.best = self._kl()
        self.step = 0
        self.weights = copy.deepcopy(gm.state_dict())

    @torch.no_grad()
    def _kl(self) -> float:
        was_training = self.gm.training
        self.gm.eval()
        out = torch.cat([self.gm(self.images[i:i + 256]) for i in range(0, len(self.images), 256)])
        self.gm.train(was_training)
        kl = float(kd_divergence(out, self.reference))
        return kl if math.isfinite(kl) else math.inf

    def offer(self, step: int) -> None:
        kl = self._kl()
        if kl < self.best:
            self.best, self.step, self.weights = kl, step, copy.deepcopy(self.gm.state_dict())

    def restore(self) -> None:
        self.gm.load_state_dict(self.weights)


def _train(gm: fx.GraphModule, normalised: torch.Tensor, targets: _Targets, schedule: _Schedule,
           generator: torch.Generator, trained_on: torch.Tensor | None = None, keeper: _BestWeights | None = None
           ) -> tuple[list[float], float]:
    """Train ``gm`` (its quantizers calibrated) on ``normalised`` (only the indices ``trained_on`` when given); returns
    the loss of each step taken and the ``perf_counter()`` at the first. ``keeper`` is offered the weights about ten
    times and after the last step."""
    steps = schedule.steps
    params = [p for p in gm.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=schedule.lr, momentum=0.9)
    cosine: Any = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    gm.train()
    started = time.perf_counter()
    losses: list[float] = []
    timed_steps = 3
    step = 0
    while step < steps:
        if schedule.max_seconds is not None and step == timed_steps:
            fits = int(schedule.max_seconds / ((time.perf_counter() - started) / timed_steps))
            if fits < steps:
                steps = max(timed_steps + 1, fits)
                cosine = _Cosine(optimizer, schedule.lr, steps, step)
        pool = len(normalised) if trained_on is None else len(trained_on)
        idx = torch.randint(0, pool, (min(schedule.batch, pool),), generator=generator)
        if trained_on is not None:
            idx = trained_on[idx]
        loss = targets.loss(gm(normalised[idx]), idx)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        cosine.step()
        losses.append(float(loss.detach()))
        if schedule.on_step is not None:
            schedule.on_step(step + 1, steps)
        step += 1
        if keeper is not None and (step % max(1, steps // 10) == 0 or step == steps):
            keeper.offer(step)
    return losses, started


class _Cosine:
    """The cosine from ``lr`` to 0 over ``steps``, continued from step ``done`` (after the step count was cut)."""

    def __init__(self, optimizer: torch.optim.Optimizer, lr: float, steps: int, done: int):
        self.optimizer, self.lr, self.steps, self.done = optimizer, lr, steps, done

    def step(self) -> None:
        self.done += 1
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, self.done / self.steps)))


@torch.no_grad()
def _logits(model: nn.Module, inputs: torch.Tensor, batch: int) -> torch.Tensor:
    was_training = model.training
    model.eval()
    out = torch.cat([model(inputs[i:i + batch]) for i in range(0, len(inputs), batch)])
    model.train(was_training)
    return out


# --------------------------------------------------------------------------------------- graph surgery


def _swap_weight_modules(gm: fx.GraphModule, weight_qmax: int) -> None:
    for name, module in list(gm.named_modules()):
        if type(module) is nn.Conv2d:
            replacement: nn.Module = QuantConv2d(
                module.in_channels, module.out_channels, module.kernel_size, module.stride, module.padding,
                module.dilation, module.groups, module.bias is not None, module.padding_mode)
        elif type(module) is nn.Linear:
            replacement = QuantLinear(module.in_features, module.out_features, module.bias is not None)
        else:
            continue
        replacement.load_state_dict(module.state_dict())
        replacement.weight_qmax = weight_qmax
        parent_name, _, child = name.rpartition(".")
        setattr(gm.get_submodule(parent_name) if parent_name else gm, child, replacement)


def _module(gm: fx.GraphModule, node: fx.Node) -> nn.Module | None:
    return gm.get_submodule(node.target) if node.op == "call_module" else None


def _is_relu(gm: fx.GraphModule, node: fx.Node) -> bool:
    return (node.op == "call_function" and node.target in _RELU_FUNCTIONS) or \
        (node.op == "call_method" and node.target in ("relu", "relu_")) or \
        isinstance(_module(gm, node), _RELU_MODULES)


def _is_add(node: fx.Node) -> bool:
    return (node.op == "call_function" and node.target in _ADD_FUNCTIONS) or \
        (node.op == "call_method" and node.target in ("add", "add_"))


def _is_pass_through(gm: fx.GraphModule, node: fx.Node) -> bool:
    return (node.op == "call_function" and node.target in _PASS_THROUGH_FUNCTIONS) or \
        (node.op == "call_method" and node.target in _PASS_THROUGH_METHODS) or \
        node.op in ("get_attr", "output") or isinstance(_module(gm, node), _PASS_THROUGH_MODULES)


def _attach_quantizer(gm: fx.GraphModule, producer: fx.Node, consumers: list[fx.Node] | None,
                      symmetric: bool) -> None:
    """Insert a quantizer after ``producer``, used by ``consumers`` (all users when None)."""
    name = f"act_quant_{sum(isinstance(m, ActivationQuantizer) for m in gm.modules())}"
    gm.add_submodule(name, ActivationQuantizer(symmetric))
    with gm.graph.inserting_after(producer):
        quantized = gm.graph.call_module(name, (producer,))
    if consumers is None:
        producer.replace_all_uses_with(quantized, delete_user_cb=lambda user: user is not quantized)
    else:
        for consumer in consumers:
            consumer.replace_input_with(producer, quantized)


def _quantize_outputs(gm: fx.GraphModule) -> None:
    for node in list(gm.graph.nodes):
        if node.op == "output" or _is_pass_through(gm, node):
            continue
        users = list(node.users)
        if users and all(_is_relu(gm, user) for user in users):
            continue  # the Relu's own quantizer covers it: onnxruntime folds Relu into the Q before it
        _attach_quantizer(gm, node, None, symmetric=False)


def _quantize_conv_and_add_inputs(gm: fx.GraphModule) -> None:
    wanted: dict[fx.Node, list[fx.Node]] = {}
    for node in list(gm.graph.nodes):
        if isinstance(_module(gm, node), (QuantConv2d, QuantLinear)):
            inputs = [node.args[0]]
        elif _is_add(node):
            inputs = [a for a in node.args[:2] if isinstance(a, fx.Node)]
            if len(inputs) < 2:
                continue  # a bias-like add of a constant is not a residual join
        else:
            continue
        for producer in inputs:
            wanted.setdefault(producer, []).append(node)
    for producer, consumers in wanted.items():
        _attach_quantizer(gm, producer, consumers, symmetric=True)
