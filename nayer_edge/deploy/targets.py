"""Deployment targets: where a student runs (runtime, device, precision) and the budgets it must meet.

Each target is a YAML file in ``recipes/targets/`` loaded strictly into a frozen :class:`Target`;
``recipes/targets/aliases.yaml`` maps short names (``jetson``) onto them.

Example::

    >>> from nayer_edge.deploy.targets import list_targets, load_target
    >>> "cpu-x86" in list_targets()
    True
    >>> t = load_target("jetson")          # alias of jetson-orin-nano
    >>> (t.runtime, t.precision, t.quantization, t.gpu_arch)
    ('tensorrt', 'int8', 'qdq-trt', 'sm_87')
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ..core.data_dirs import data_dir
from ..core.errors import UserError
from ..core.strict import closest_name, from_dict, load_yaml, to_dict

ALIASES_FILE = "aliases.yaml"

# What each quantization format means; the quantizer produces exactly this.
QUANTIZATION_FORMATS = {
    "qdq-ort": "QDQ for ONNX Runtime: U8 activations (asymmetric, per-tensor), S8 weights (symmetric, per-channel)",
    "qdq-trt": "explicit Q/DQ for TensorRT: symmetric (zero point 0); S8 weights per-channel (axis 0, narrow "
    "range [-127, 127]); S8 activations per-tensor",
    "none": "no quantization (FP32 or FP16 network)",
}

_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]*$")
_GPU_ARCH = re.compile(r"^sm_\d{2,3}$")


@dataclass(frozen=True, kw_only=True)
class Target:
    """One deployment target. Build it with :func:`load_target`; invalid combinations raise UserError.

    ``batch`` is the batch size latency is measured at; ``dynamic_batch`` whether the exported model keeps a
    dynamic batch axis. ``max_accuracy_drop`` is in top-1 percentage points against the FP32 student;
    ``None`` budgets are not checked. ``min_teacher_retention`` is the least share of the teacher's top-1 the
    deployed student must keep on the eval data; ``min_teacher_agreement`` the least top-1 agreement with the
    teacher on held-out synthetic samples, the proxy used when there is no eval data (``None``: not checked). The Jetson fields (``jetpack``, ``tensorrt``, ``gpu_arch``,
    ``dla_cores``, ``memory_gb``) describe the device an engine is built on.
    """

    name: str
    description: str = ""
    runtime: Literal["onnxruntime", "tensorrt"]
    device: str
    precision: Literal["fp32", "fp16", "int8"]
    quantization: Literal["qdq-ort", "qdq-trt", "none"]
    batch: int
    dynamic_batch: bool
    layout: Literal["NCHW", "NHWC"]
    opset: int
    max_accuracy_drop: float | None = None
    max_latency_ms: float | None = None
    min_teacher_retention: float | None = 0.9
    min_teacher_agreement: float | None = 0.9
    execution_providers: tuple[str, ...] = ()
    jetpack: str | None = None
    tensorrt: str | None = None
    gpu_arch: str | None = None
    dla_cores: int = 0
    memory_gb: float | None = None
    notes: str = ""

    def __post_init__(self) -> None:
        for problem in self._problems():
            raise UserError(f"target '{self.name}': {problem}")

    def _problems(self):
        if not _NAME.match(self.name):
            yield "name must be lower-case letters, digits, '.', '_' or '-'"
        if self.batch < 1:
            yield f"batch must be at least 1, got {self.batch}"
        if self.opset < 7:
            yield f"opset must be at least 7, got {self.opset}"
        if self.precision == "int8":
            if self.quantization == "none":
                yield "precision int8 needs a quantization format (qdq-ort or qdq-trt), not 'none'"
            if self.opset < 13:
                yield f"int8 needs opset >= 13 (per-channel Q/DQ), got {self.opset}"
        elif self.quantization != "none":
            yield f"quantization '{self.quantization}' needs precision int8, got {self.precision}"
        if self.max_accuracy_drop is not None and self.max_accuracy_drop < 0:
            yield f"max_accuracy_drop must be >= 0, got {self.max_accuracy_drop}"
        if self.max_latency_ms is not None and self.max_latency_ms <= 0:
            yield f"max_latency_ms must be > 0, got {self.max_latency_ms}"
        for key in ("min_teacher_retention", "min_teacher_agreement"):
            value = getattr(self, key)
            if value is not None and not 0.0 <= value <= 1.0:
                yield f"{key} is a fraction in [0, 1], got {value}"
        if self.dla_cores < 0:
            yield f"dla_cores must be >= 0, got {self.dla_cores}"
        if self.memory_gb is not None and self.memory_gb <= 0:
            yield f"memory_gb must be > 0, got {self.memory_gb}"
        if self.gpu_arch is not None and not _GPU_ARCH.match(self.gpu_arch):
            yield f"gpu_arch must look like 'sm_87', got {self.gpu_arch!r}"

        if self.runtime == "tensorrt":
            if self.quantization == "qdq-ort":
                yield "runtime tensorrt needs symmetric Q/DQ: use quantization 'qdq-trt', not 'qdq-ort'"
            if self.device == "cpu":
                yield "runtime tensorrt runs on a GPU, not device 'cpu'"
            if self.execution_providers:
                yield "execution_providers is for runtime onnxruntime; remove it for tensorrt"
            if self.tensorrt is None:
                yield "runtime tensorrt needs the TensorRT version ('tensorrt'): engines are tied to it"
            if self.gpu_arch is None:
                yield "runtime tensorrt needs 'gpu_arch' (e.g. sm_87): engines are tied to it"
        else:
            if not self.execution_providers:
                yield "runtime onnxruntime needs execution_providers (e.g. [CPUExecutionProvider])"
            if self.device == "cpu" and self.precision == "fp16":
                yield "fp16 is not supported by ONNX Runtime on a CPU; use fp32 or int8"
            if self.device == "cpu" and any(ep != "CPUExecutionProvider" for ep in self.execution_providers):
                yield "device cpu takes only CPUExecutionProvider"
            for key in ("jetpack", "tensorrt"):
                if getattr(self, key) is not None:
                    yield f"'{key}' is for runtime tensorrt"
            if self.dla_cores:
                yield "dla_cores is for runtime tensorrt"

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)


_FIELDS = {f.name: f for f in dataclasses.fields(Target)}
_REQUIRED = [
    name for name, f in _FIELDS.items()
    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING and name != "name"
]


def targets_dir() -> Path:
    """The shipped targets: ``recipes/targets/`` of a checkout, or where a wheel installed it (core.data_dirs)."""
    return data_dir("recipes/targets", [ALIASES_FILE])


def _aliases() -> dict[str, str]:
    path = targets_dir() / ALIASES_FILE
    if not path.is_file():
        return {}
    data = load_yaml(path)
    for alias, target in data.items():
        if not isinstance(alias, str) or not isinstance(target, str):
            raise UserError(f"{path}: expected 'alias: target-name' strings, got {alias!r}: {target!r}")
    return dict(data)


def list_targets() -> list[str]:
    """Names of the shipped targets (file stems in ``recipes/targets/``), without aliases."""
    return sorted(p.stem for p in targets_dir().glob("*.yaml") if p.name != ALIASES_FILE)


def resolve_alias(name: str) -> str:
    """The target name an alias stands for (``jetson`` → ``jetson-orin-nano``); other names come back unchanged."""
    return _aliases().get(name, name)


def _is_path(name_or_path: str | Path) -> bool:
    s = str(name_or_path)
    return isinstance(name_or_path, Path) or s.endswith((".yaml", ".yml")) or "/" in s or "\\" in s


def load_target(name_or_path: str | Path) -> Target:
    """A :class:`Target` from a shipped name, an alias or a YAML path.

    A file without ``name`` takes its stem as the name. Unknown names, unknown keys, wrong types and
    invalid combinations raise UserError with a "did you mean" hint where one is close.

    Example::

        >>> load_target("cpu-x86").execution_providers
        ('CPUExecutionProvider',)
    """
    if _is_path(name_or_path):
        path = Path(name_or_path)
    else:
        name = resolve_alias(str(name_or_path))
        path = targets_dir() / f"{name}.yaml"
        if name == ALIASES_FILE.removesuffix(".yaml") or not path.is_file():
            choices = list_targets() + sorted(_aliases())
            raise UserError(
                f"unknown target '{name_or_path}'{closest_name(str(name_or_path), choices)}; "
                f"available: {', '.join(list_targets())}"
                + (f" (aliases: {', '.join(f'{a} → {t}' for a, t in sorted(_aliases().items()))})"
                   if _aliases() else "")
            )
    data = load_yaml(path)
    data.setdefault("name", path.stem)
    where = str(path)
    for key in data:  # unknown keys first, so a misspelt required key is reported as a misspelling
        if key not in _FIELDS:
            raise UserError(f"{where}: unknown key {key!r}{closest_name(key, _FIELDS)}")
    missing = [key for key in _REQUIRED if key not in data]
    if missing:
        raise UserError(f"{where}: missing required key(s): {', '.join(missing)}")
    try:
        return from_dict(Target, data, where=where)
    except UserError as err:
        msg = str(err)
        raise UserError(msg if msg.startswith(where) else f"{where}: {msg}") from None


def describe_targets() -> list[dict[str, Any]]:
    """One row per shipped target (with its aliases), for a table."""
    by_target: dict[str, list[str]] = {}
    for alias, target in _aliases().items():
        by_target.setdefault(target, []).append(alias)
    rows = []
    for name in list_targets():
        t = load_target(name)
        rows.append({
            "name": t.name,
            "aliases": ", ".join(sorted(by_target.get(name, []))),
            "runtime": t.runtime,
            "device": t.device,
            "precision": t.precision,
            "quantization": t.quantization,
            "batch": t.batch,
            "dynamic_batch": t.dynamic_batch,
            "opset": t.opset,
            "max_accuracy_drop": t.max_accuracy_drop,
            "max_latency_ms": t.max_latency_ms,
            "min_teacher_retention": t.min_teacher_retention,
            "min_teacher_agreement": t.min_teacher_agreement,
            "description": t.description,
        })
    return rows
