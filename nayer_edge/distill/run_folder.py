"""The run folder: the one place that names its files and reads what a finished run wrote.

``distill`` writes a run folder (the student, its description, the sample memories, the run's config and
metrics); every later stage (export, quantize, compress, verify, bundle) reads it through here, so no file name
of a run folder is spelled anywhere else.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import json
import math
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

from ..core.atomic import sha256_file
from ..core.errors import UserError

T = TypeVar("T")

STUDENT_TS = "student.ts"  # the student as TorchScript: loads anywhere torch does
STUDENT_WEIGHTS = "student.pt"  # its weights-only state dict (rebuilt from STUDENT_SPEC)
STUDENT_SAFETENSORS = "student.safetensors"  # the same weights as safetensors, for tools that read no pickle
STUDENT_SPEC = "student.json"  # architecture, input shape, mean/std, class names
CONFIG = "config.json"  # the run's resolved config, its plan, the teacher's sha256
METRICS = "metrics.json"  # accuracies, history, timings; compress adds gates
CHECKPOINT = "checkpoint.pt"  # what a resume needs (removed once the run is finished)
MEMORY = "samples.npz"  # the synthetic samples the student learnt from
HOLDOUT = "holdout.npz"  # synthetic samples held out to measure agreement with the teacher
MEMORY_MMAP = "samples.mmap.npy"  # a disk-backed sample memory while a run is in progress
SAMPLE_GRID = "samples.png"
CURVES = "curves.png"
REPORT = "report.md"  # compress's report
STUDENT_ONNX = "student.onnx"  # FP32 export
STUDENT_FP16_ONNX = "student.fp16.onnx"
STUDENT_INT8_ONNX = "student.int8.onnx"  # the INT8 model quantize chose
STUDENT_INT8_PTQ_ONNX = "student.int8-ptq.onnx"
STUDENT_INT8_QAT_ONNX = "student.int8-qat.onnx"
STUDENT_QAT_FP32_ONNX = "student.qat-fp32.onnx"  # the fine-tuned FP32 student before its INT8 conversion
STUDENT_TRT_INT8_ONNX = "student.trt-int8.onnx"


def _stamp(path: Path) -> tuple[str, int, int, int]:
    """What identifies a file's content for the cache: an atomic rewrite is a new inode."""
    st = path.stat()
    return str(path.resolve()), st.st_ino, st.st_mtime_ns, st.st_size


_reads: dict[tuple[Any, ...], Any] | None = None  # the cache of the open reads_once() scope, if any
_depth = 0


@contextlib.contextmanager
def reads_once() -> Iterator[None]:
    """Within this block each run-folder file is read once while it stays as it is (``compress`` calibrates,
    measures agreement and bundles from one read of the samples); the cache goes when the outermost block
    ends, so that a library caller is not left holding sample memories. Outside a block every call reads."""
    global _reads, _depth
    if _depth == 0:
        _reads = {}
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1
        if _depth == 0:
            _reads = None


def reading_once(function: Callable[..., T]) -> Callable[..., T]:
    """``function`` runs inside :func:`reads_once` (the commands that read a run folder: export, quantize,
    deploy, compress)."""
    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        with reads_once():
            return function(*args, **kwargs)

    return wrapper


def _cached(kind: str, path: Path, read: Callable[[Path], Any]) -> Any:
    if _reads is None:
        return read(path)
    key = (kind, *_stamp(path))
    if key not in _reads:
        _reads[key] = read(path)
    return _reads[key]


def read_json(path: Path) -> Any:
    """A JSON file of a run folder (a copy: change it freely), or UserError naming it (see :func:`reads_once`)."""
    try:
        return copy.deepcopy(_cached("json", Path(path), lambda p: json.loads(p.read_text())))
    except (OSError, ValueError) as err:
        raise UserError(f"{path}: unreadable ({type(err).__name__}: {err}); re-run distill") from None


def read_memory(run_dir: str | Path, name: str = MEMORY) -> Any:
    """A finished run's sample memory (``MEMORY`` or ``HOLDOUT``), or UserError naming it; within
    :func:`reads_once` one read is shared, so treat it as read-only."""
    from ..synthesis.memory import SampleMemory  # here, not above: the CLI imports this module without torch

    path = Path(run_dir) / name
    try:
        return _cached("memory", path, SampleMemory.load)
    except OSError as err:
        raise UserError(f"{path}: unreadable ({type(err).__name__}); re-run distill") from None


def read_held_out_samples(run_dir: str | Path) -> Any:
    """The synthetic samples the student never trained on (``HOLDOUT``); the training memory in run folders
    written before there was a holdout."""
    return read_memory(run_dir, HOLDOUT if (Path(run_dir) / HOLDOUT).is_file() else MEMORY)


def read_student_spec(run_dir: str | Path) -> dict[str, Any]:
    """``student.json`` of a distill output folder: architecture, input shape, mean/std, class names."""
    run_dir = Path(run_dir)
    spec_path = run_dir / STUDENT_SPEC
    if not spec_path.is_file() or not (run_dir / STUDENT_TS).is_file():
        raise UserError(f"{run_dir}: not a distill output folder (needs student.ts and student.json); "
                        "run `nayer-edge distill` first")
    spec = read_json(spec_path)
    problem = _student_spec_problem(spec)
    if problem:
        raise UserError(f"{spec_path}: {problem}; re-run distill to write it again")
    return spec


def _positive_int(value: Any, most: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= most


def _finite_numbers(value: Any) -> bool:
    return (isinstance(value, list) and bool(value) and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value))


def shape_ok(shape: Any) -> bool:
    return isinstance(shape, list) and len(shape) == 3 and all(_positive_int(v, 4096) for v in shape)


def _student_spec_problem(spec: Any) -> str | None:
    """What is wrong with a ``student.json``'s content, or None: every field the later stages use, checked."""
    if not isinstance(spec, dict):
        return f"expected a JSON object, got {type(spec).__name__}"
    missing = [k for k in ("architecture", "input_shape", "mean", "std", "classes") if k not in spec]
    if missing:
        return f"no {', '.join(missing)}"
    arch, shape, classes = spec["architecture"], spec["input_shape"], spec["classes"]
    if not isinstance(arch, dict) or not isinstance(arch.get("spec"), str) or not arch["spec"]:
        return "architecture must be an object naming the model in 'spec'"
    for key, most in (("num_classes", 100_000), ("in_channels", 64), ("input_size", 4096)):
        if not _positive_int(arch.get(key), most):
            return f"architecture {key} must be an integer from 1 to {most}, got {arch.get(key)!r}"
    if not shape_ok(shape):
        return f"input_shape must be [C, H, W] of integers from 1 to 4096, got {shape!r}"
    if shape[0] != arch["in_channels"] or shape[1] != arch["input_size"]:
        return (f"input_shape {shape} does not fit the architecture's {arch['in_channels']} channels and input "
                f"size {arch['input_size']}")
    for key in ("mean", "std"):
        if not _finite_numbers(spec[key]) or len(spec[key]) not in (1, shape[0]):
            count = "one finite number" if shape[0] == 1 else f"1 or {shape[0]} finite numbers"
            return f"{key} must be a list of {count} (one per channel), got {spec[key]!r}"
    if any(v <= 0 for v in spec["std"]):
        return f"std must be positive, got {spec['std']!r}"
    if not (isinstance(classes, list) and all(isinstance(c, str) and c for c in classes)):
        return "classes must be a list of class names"
    if len(classes) != arch["num_classes"]:
        return f"{len(classes)} class names for a student with {arch['num_classes']} outputs"
    if len(set(classes)) != len(classes):
        return "duplicate class names"
    return None


def user_factory_of(spec: dict[str, Any]) -> str | None:
    """The ``module:factory`` that ``student.json`` names to build the student, or None for a built-in model."""
    architecture = spec.get("architecture")
    name = architecture.get("spec") if isinstance(architecture, dict) else None
    return name if isinstance(name, str) and ":" in name else None


def require_code_trust(run_dir: Path, spec: dict[str, Any], trust_code: bool) -> None:
    """Refuse, before any work, a run whose student only its own Python code can build, unless trusted."""
    factory = user_factory_of(spec)
    if factory is not None and not trust_code:
        raise UserError(f"{run_dir / STUDENT_SPEC}: the student is built by Python code ({factory}) and importing "
                        "it runs that code; re-run with --trust-code only if you trust this run folder")


def student_sha256(run_dir: Path) -> str:
    """sha256 of the run's student weights (student.pt, else student.ts): what an export was made from."""
    weights = run_dir / STUDENT_WEIGHTS
    return sha256_file(weights if weights.is_file() else run_dir / STUDENT_TS)


def recorded_teacher_sha256(run_dir: Path) -> str | None:
    """The sha256 of the teacher a finished run's ``config.json`` records, or None (no readable record)."""
    try:
        sha = read_json(run_dir / CONFIG)["teacher"]["sha256"]
    except (UserError, KeyError, TypeError):
        return None
    return sha if isinstance(sha, str) else None
