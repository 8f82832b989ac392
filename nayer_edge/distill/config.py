"""Typed, strict configuration of a distillation run. Recipes (YAML) are merged onto the defaults."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ..core.data_dirs import data_dir
from ..core.errors import UserError
from ..core.strict import closest_name, from_dict, load_yaml, to_dict

# Most CPU threads a run may ask for: far above any machine, far below what torch.set_num_threads overflows on.
MAX_THREADS = 1024
MAX_QAT_EPOCHS = 1000


@dataclass(frozen=True)
class DistillConfig:
    """Every knob of a NAYER run. Defaults are the paper's CIFAR-10 settings (its appendix and released code),
    except ``kd_during_warmup`` (the reference trains nothing for its first 20 epochs)."""

    student: str = "resnet18"
    generator: Literal["nayer", "noise"] = "nayer"
    embedding: Literal["text", "onehot"] = "text"
    text_encoder: str = "all-MiniLM-L6-v2"
    prompt_template: str = "a photo of a {}"
    allow_download: bool = False
    embedding_norm: bool = True

    epochs: int = 100
    warmup_epochs: int = 20
    rounds_per_epoch: int = 2
    warmup_rounds: int = 10
    g_steps: int = 30
    # Batches a round keeps: its g_steps in this many equal segments (at most g_steps), the lowest-loss batch of
    # each (1: the paper's best batch of the round).
    batches_per_round: int = 1
    g_life: int = 10
    lr_g: float = 4e-3
    synthesis_batch: int = 400
    noisy_dim: int = 1000
    noise_dim: int = 256
    ngf: int = 64
    decoder_upsamplings: int = 2  # the decoder starts at H/2ⁿ, W/2ⁿ (the paper: 2)
    decoder_taper: bool = False  # halve the decoder's channels at every ×2 stage (DCGAN); the paper: 2·ngf, then ngf

    bn_weight: float = 10.0
    oh_weight: float = 0.5
    adv_weight: float = 1.33
    bn_momentum: float = 0.9
    # Weight of the first BatchNorm layer's term inside L_BN (DeepInversion's first_bn_multiplier; 1: NAYER's
    # equal weights). The first layer's statistics are the images' low-level edge and texture energy.
    bn_first_weight: float = 1.0

    kd_batch: int = 512
    kd_steps: int = 400
    kd_during_warmup: bool = True
    lr: float = 0.2
    lr_min: float = 2e-4
    momentum: float = 0.9
    weight_decay: float = 1e-4
    temperature: float = 20.0

    augment_pad: int = -1
    augment_flip: bool = True
    # The student's KD batches are also zoomed in by a random factor in [1, kd_zoom] (1: off, the paper).
    kd_zoom: float = 1.0

    memory_capacity: int = 50_000
    memory_backing: Literal["ram", "mmap"] = "ram"
    holdout_fraction: float = 0.1

    # Quantization-aware fine-tuning on the synthetic memory (compress / quantize --qat).
    qat_epochs: float = 2.0
    qat_lr: float = 0.01
    qat_batch: int = 256
    qat_fp32_anchor: float = 1.0  # share of the QAT KD target from the FP32 student's logits (rest: teacher)
    # share of the memory QAT keeps out of training to choose its weights (the fake-INT8 model closest to FP32)
    qat_validation: float = 0.1

    time_budget: float | None = None  # seconds for the whole command (distill: loop, evaluation and artefacts)
    # auto: settings left unset are planned for the device, the models and the budget (nayer_edge.distill.planner);
    # fixed: every setting is used as it is (the paper's GPU values where unset).
    schedule: Literal["auto", "fixed"] = "auto"
    synthesis_share: float = 0.5  # planned schedules: share of a normal epoch's time spent synthesising (rest: KD)
    seed: int = 0
    device: str = "auto"
    threads: int = 0

    # How one device is used (nayer_edge.distill.amp, nayer_edge.distill.performance); none of these changes the method.
    amp: Literal["auto", "fp32", "bf16", "fp16"] = "auto"  # auto: bf16 where the GPU or CPU has it natively
    channels_last: bool | None = None  # None: on for CUDA, off on the CPU
    compile: bool = False  # torch.compile the student (and an eager teacher)
    memory_device_budget: float = 0.25  # sample memory on the GPU if it takes at most this share of its free memory

    def __post_init__(self) -> None:
        import math

        for name, value in vars(self).items():
            # NaN slips through every comparison below ("nan <= 0" is false), inf through most.
            if isinstance(value, float) and not math.isfinite(value):
                raise UserError(f"config: {name} must be a finite number, got {value}")

        positive = ("epochs", "rounds_per_epoch", "g_steps", "g_life", "synthesis_batch", "noisy_dim",
                    "kd_batch", "memory_capacity", "ngf", "decoder_upsamplings")
        for name in positive:
            if getattr(self, name) <= 0:
                raise UserError(f"config: {name} must be positive, got {getattr(self, name)}")
        for name in ("warmup_epochs", "warmup_rounds", "kd_steps", "bn_weight", "oh_weight", "adv_weight",
                     "bn_first_weight", "threads"):
            if getattr(self, name) < 0:
                raise UserError(f"config: {name} must not be negative, got {getattr(self, name)}")
        if not 0 <= self.seed < 2**32:
            raise UserError(f"config: seed must be an integer from 0 to 2**32 - 1 (4294967295), got {self.seed}")
        if self.threads > MAX_THREADS:
            raise UserError(f"config: threads must be at most {MAX_THREADS} (0: torch's default), got {self.threads}")
        if not 0 <= self.bn_momentum < 1:
            raise UserError(f"config: bn_momentum must be in [0, 1), got {self.bn_momentum}")
        if not 0 <= self.momentum < 1:
            raise UserError(f"config: momentum must be in [0, 1), got {self.momentum}")
        if self.weight_decay < 0:
            raise UserError(f"config: weight_decay must not be negative, got {self.weight_decay}")
        if not 0 <= self.lr_min <= self.lr:
            raise UserError(f"config: lr_min must be in [0, lr], got {self.lr_min}")
        if self.kd_zoom < 1:
            raise UserError(f"config: kd_zoom must be at least 1 (1: no zoom), got {self.kd_zoom}")
        if self.augment_pad < -1:
            raise UserError(f"config: augment_pad must be -1 (auto: H/8) or a pixel count, got {self.augment_pad}")
        if not 0 <= self.memory_device_budget <= 1:
            raise UserError(f"config: memory_device_budget must be in [0, 1], got {self.memory_device_budget}")
        if self.batches_per_round < 1:
            raise UserError(f"config: batches_per_round must be at least 1, got {self.batches_per_round}")
        if not 0 <= self.holdout_fraction < 1:
            raise UserError(f"config: holdout_fraction must be in [0, 1), got {self.holdout_fraction}")
        if self.temperature <= 0 or self.lr <= 0 or self.lr_g <= 0:
            raise UserError("config: temperature, lr and lr_g must be positive")
        if self.qat_epochs <= 0 or self.qat_lr <= 0 or self.qat_batch <= 0:
            raise UserError("config: qat_epochs, qat_lr and qat_batch must be positive")
        if self.qat_epochs > MAX_QAT_EPOCHS:
            raise UserError(f"config: qat_epochs must be at most {MAX_QAT_EPOCHS} (passes over the synthetic samples; "
                            f"the default is 2), got {self.qat_epochs:g}")
        if not 0.0 <= self.qat_validation < 0.5:
            raise UserError(f"config: qat_validation must be within [0, 0.5), got {self.qat_validation}")
        if not 0.0 <= self.qat_fp32_anchor <= 1.0:
            raise UserError(f"config: qat_fp32_anchor must be within [0, 1], got {self.qat_fp32_anchor}")
        if not 0.05 <= self.synthesis_share <= 0.95:
            raise UserError(f"config: synthesis_share must be within [0.05, 0.95], got {self.synthesis_share}")
        if self.time_budget is not None and self.time_budget <= 0:
            raise UserError(f"config: time_budget must be positive seconds, got {self.time_budget}")
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise UserError(f"config: device must be auto, cpu or cuda, got {self.device!r}")

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)


def recipes_dir() -> Path:
    """The built-in recipes: ``recipes/`` of a checkout, or where a wheel installed it (core.data_dirs)."""
    return data_dir("recipes", ["demo-digits.yaml"])


def list_recipes() -> list[str]:
    return sorted(p.stem for p in recipes_dir().glob("*.yaml"))


def chosen_keys(recipe: str | Path | None = None, overrides: dict[str, Any] | None = None) -> set[str]:
    """The settings a recipe and overrides choose (what the schedule planner keeps as it is)."""
    keys = {k for k, v in (overrides or {}).items() if v is not None}
    if recipe is not None:
        path = Path(recipe)
        keys |= set(load_yaml(path if path.suffix else recipes_dir() / f"{recipe}.yaml"))
    return keys


def load_config(recipe: str | Path | None = None, overrides: dict[str, Any] | None = None) -> DistillConfig:
    """Defaults ← recipe (a name from ``recipes/`` or a YAML path) ← overrides; unknown keys are errors."""
    data: dict[str, Any] = {}
    if recipe is not None:
        path = Path(recipe)
        if not path.suffix:
            path = recipes_dir() / f"{recipe}.yaml"
            if not path.is_file():
                raise UserError(f"unknown recipe '{recipe}'{closest_name(str(recipe), list_recipes())}; "
                                f"available: {', '.join(list_recipes())}")
        data.update(load_yaml(path))
    data.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return from_dict(DistillConfig, data, where=f"recipe {recipe}" if recipe else "config")
