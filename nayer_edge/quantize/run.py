"""``quantize``: INT8 for a distilled student, with no real data: post-training quantization calibrated on the
run's synthetic samples (the PTQ baseline), and optionally quantization-aware fine-tuning on the same samples
(``qat``; KD target: the FP32 student's own logits, optionally blended with the teacher's). Both are checked on
the held-out synthetic samples; QAT is deployed when it reproduces the FP32 student there more faithfully than
PTQ (``_choose``); real data never chooses.

Layouts: ``ort`` (onnxruntime CPU: QDQ, U8 activations, S8 per-channel weights; ``quantize_ort``) and
``tensorrt`` (explicit symmetric Q/DQ; ``qdq_tensorrt``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal

import numpy as np
import torch

from ..core.atomic import atomic_write_bytes, prepare_output_file
from ..core.errors import UserError, first_line
from ..core.normalize import NormalizedModel
from ..core.progress import Progress, as_progress
from ..core.strict import from_dict
from ..distill import run_folder as rf
from ..distill.config import DistillConfig
from ..distill.losses import kd_divergence
from ..distill.run_folder import read_student_spec, require_code_trust, student_sha256
from ..inputs.evaldata import load_eval_data
from ..inputs.teacher import LoadedTeacher, load_teacher
from ..onnx_model.exporter import ParityError, check_parity, compare_logits, export_onnx, onnx_session, run_session
from ..onnx_model.student import check_onnx_fits, export, load_student
from . import QAT_NO_MODEL
from .ort import quantize_static_ort
from .qat import QAT_TOOL_DECISION, finetune_qat
from .qdq_tensorrt import quantize_tensorrt

Layout = Literal["ort", "tensorrt"]
DEPLOYED = rf.STUDENT_INT8_ONNX


# One keyword per option of `nayer-edge quantize` and of deploy's INT8 step: the count is the interface.
@rf.reading_once
def quantize(run_dir: str | Path, *, out: str | Path | None = None, layout: Layout = "ort", qat: bool = False,
             teacher: str | Path | Any | None = None, teacher_options: dict[str, Any] | None = None,
             calibration: int = 512, method: str = "minmax", eval_data: str | Path | None = None,
             batch: int | None = None, opset: int = 17, qat_epochs: float | None = None, qat_lr: float | None = None,
             show_progress: bool | Progress = False, trust_code: bool = False, qat_seconds: float | None = None
             ) -> dict[str, Any]:
    """INT8 ONNX of the student in ``run_dir``; returns paths, parity and (with ``eval_data``) top-1 figures.

    Writes ``student.onnx`` (FP32, if missing), ``student.int8-ptq.onnx``, with ``qat`` also
    ``student.qat-fp32.onnx`` (the fine-tuned, BN-folded FP32 model) and ``student.int8-qat.onnx``, and a
    copy of the deployed one at ``out`` (default ``student.int8.onnx``). ``teacher`` defaults to the one
    recorded in the run's ``config.json`` (a loaded teacher is used as it is). ``batch`` fixes the exported batch (None: dynamic). ``trust_code``:
    import a student factory the run folder names (see :func:`~nayer_edge.onnx_model.student.load_student`).
    ``show_progress``: QAT's steps (see :func:`~nayer_edge.core.progress.as_progress`).

        quantize("runs/demo", qat=True, eval_data="heldout.npz")["int8_accuracy"]
    """
    run_dir = Path(run_dir)
    spec = read_student_spec(run_dir)
    run = QuantizeInputs(run_dir=run_dir, spec=spec, layout=layout, qat=qat, calibration=calibration, method=method,
                         batch=batch, opset=opset, qat_epochs=qat_epochs, qat_lr=qat_lr, qat_seconds=qat_seconds,
                         progress=as_progress(show_progress), trust_code=trust_code)
    _check_request(run, out)
    eval_set = None
    if eval_data is not None:
        eval_set = load_eval_data(eval_data, input_shape=tuple(spec["input_shape"]), classes=spec["classes"])
    teacher_model = _qat_teacher(run_dir, teacher, teacher_options) if qat else None

    # The memories are read before anything is written: a damaged one leaves the folder as it was.
    images, holdout = _read_samples(run)
    fp32_path = _fp32_onnx(run)
    generator = torch.Generator().manual_seed(0)
    calibration_images = images[torch.randperm(len(images), generator=generator)[:calibration]]
    held_out = holdout is not None and len(holdout)
    check_images = holdout if held_out else calibration_images
    candidates, qat_report, qat_outcome = _int8_candidates(run, fp32_path, images, calibration_images, teacher_model)

    # One session per model, reused for every check.
    logits = {name: _Runner(path) for name, path in {"fp32": fp32_path, **candidates}.items()}
    result: dict[str, Any] = {"fp32_onnx": str(fp32_path), "layout": layout,
                              "calibration_samples": int(len(calibration_images)),
                              "check_samples": "held-out synthetic" if held_out else "calibration",
                              "fp32_bytes": fp32_path.stat().st_size,
                              "candidates": _compare(candidates, logits, check_images, teacher_model)}
    if qat_report is not None:
        result["candidates"]["qat"]["training"] = qat_report
    if qat_outcome is not None:
        result["candidates"]["qat"] = qat_outcome

    chosen, reason = _choose(result["candidates"])
    deployed = Path(out) if out else run_dir / DEPLOYED

    atomic_write_bytes(deployed, Path(candidates[chosen]).read_bytes())
    result.update({"method": chosen, "selected_by": reason, "int8_onnx": str(deployed),
                   "int8_bytes": deployed.stat().st_size,
                   "parity_vs_fp32": result["candidates"][chosen]["parity_vs_fp32"]})
    if eval_set is not None:
        result.update(_accuracy(eval_set, logits, chosen))
    return result


@dataclass(frozen=True)
class QuantizeInputs:
    """What one :func:`quantize` call works from, besides the data it reads: handed down whole instead of as
    keyword relays. ``spec`` is the run's ``student.json``; the ``qat_*`` values override ``config.json``'s."""

    run_dir: Path
    spec: dict[str, Any]
    layout: Layout
    qat: bool
    calibration: int
    method: str
    batch: int | None
    opset: int
    qat_epochs: float | None
    qat_lr: float | None
    qat_seconds: float | None
    progress: Progress
    trust_code: bool


# Held-out synthetic samples QAT needs to choose among its steps (qat.finetune_qat's ``validation``); a memory too
# small for them (under 500 samples at the default share) is one a short run made: QAT is skipped and says so.
QAT_MIN_VALIDATION = 50


def _check_request(run: QuantizeInputs, out: str | Path | None) -> None:
    """UserError for a request that cannot be met, before anything is read or written."""
    if out is not None:
        prepare_output_file(Path(out))
    if run.qat or not (run.run_dir / rf.STUDENT_ONNX).is_file():  # both rebuild the student from student.json
        require_code_trust(run.run_dir, run.spec, run.trust_code)
    if run.layout not in ("ort", "tensorrt"):
        raise UserError(f"layout must be 'ort' or 'tensorrt', got {run.layout!r}")
    if not (run.run_dir / rf.MEMORY).is_file():
        raise UserError(f"{run.run_dir}: no {rf.MEMORY} (the synthetic memory); re-run distill with this nayer-edge")
    if run.calibration < 1:
        raise UserError(f"calibration must be a positive number of samples, got {run.calibration}")


def _qat_teacher(run_dir: Path, teacher: str | Path | Any | None, options: dict[str, Any] | None) -> Any:
    """The teacher QAT blends in (a loaded one as it is), after checking the run's QAT settings."""
    _run_config(run_dir)  # QAT's settings: a damaged config.json is found before any work
    return teacher if isinstance(teacher, LoadedTeacher) else load_run_teacher(run_dir, teacher, options)


def _read_samples(run: QuantizeInputs) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The synthetic memory's images and the held-out ones (None without ``holdout.npz``), checked against the
    student's input shape."""
    samples_path, holdout_path = run.run_dir / rf.MEMORY, run.run_dir / rf.HOLDOUT
    images, _ = rf.read_memory(run.run_dir, rf.MEMORY).all()
    holdout = rf.read_memory(run.run_dir, rf.HOLDOUT).all()[0] if holdout_path.is_file() else None
    for path, held in ((samples_path, images), (holdout_path, holdout)):
        if held is not None and len(held) and list(held.shape[1:]) != list(run.spec["input_shape"]):
            raise UserError(f"{path}: samples of shape {list(held.shape[1:])}, but the student takes "
                            f"{run.spec['input_shape']}; re-run distill")
    if not len(images):
        raise UserError(f"{samples_path}: holds no samples to calibrate on; re-run distill")
    return images, holdout


def _fp32_onnx(run: QuantizeInputs) -> Path:
    """The run's ``student.onnx``, exported first when missing or made from an earlier student."""
    fp32_path = run.run_dir / rf.STUDENT_ONNX
    # An export of an earlier student (the run was resumed or redone since) is made again from this one.
    made_from = (check_onnx_fits(fp32_path, run.spec).get("nayer_edge.student_sha256") if fp32_path.is_file()
                 else None)
    if not fp32_path.is_file() or made_from not in (None, student_sha256(run.run_dir)):
        export(run.run_dir, fp32_path, batch=run.batch, opset=run.opset, trust_code=run.trust_code)  # images in [0, 1]
    return fp32_path


def qat_skip_reason(samples: int, validation: float) -> str | None:
    """Why QAT is not run on a memory of ``samples`` with the ``validation`` share held out to judge its steps
    (None when it is run): too few held-out samples to tell a step that helps from one that hurts."""
    held = int(samples * validation)
    if validation <= 0 or held >= QAT_MIN_VALIDATION:
        return None
    return (f"only {samples} synthetic samples, {held} of them held out to judge its steps (it needs "
            f"{QAT_MIN_VALIDATION}): fine-tuning on so few could not be checked; a longer distillation makes more")


def _int8_candidates(run: QuantizeInputs, fp32_path: Path, images: torch.Tensor, calibration_images: torch.Tensor,
                     teacher_model: Any) -> tuple[dict[str, Path], dict[str, Any] | None, dict[str, str] | None]:
    """The INT8 models to choose from (PTQ, and with QAT the fine-tuned one), QAT's training report, and
    ``{"failed": why}`` or ``{"skipped": why}`` when QAT made no model (None when it made one or was not asked)."""
    to_int8 = _int8_writer(run.layout, run.method, run.calibration)
    candidates = {"ptq": to_int8(fp32_path, run.run_dir / rf.STUDENT_INT8_PTQ_ONNX, calibration_images)}
    if not run.qat:
        return candidates, None, None
    skipped = qat_skip_reason(len(images), _run_config(run.run_dir).qat_validation)
    if skipped is not None:
        for stale in (rf.STUDENT_INT8_QAT_ONNX, rf.STUDENT_QAT_FP32_ONNX):  # an earlier quantize's, not this one's
            (run.run_dir / stale).unlink(missing_ok=True)
        return candidates, None, {"skipped": skipped}
    try:
        qat_fp32, qat_report = _qat_fp32_onnx(run, images, teacher_model)
    except ParityError as err:  # e.g. fine-tuning diverged: PTQ is still a valid INT8 model
        return candidates, None, {"failed": f"its FP32 export does not match the fine-tuned model: {first_line(err)}"}
    candidates["qat"] = to_int8(qat_fp32, run.run_dir / rf.STUDENT_INT8_QAT_ONNX, calibration_images)
    return candidates, qat_report, None


def _compare(candidates: dict[str, Path], logits: dict[str, _Runner], check_images: torch.Tensor,
             teacher_model: Any) -> dict[str, dict[str, Any]]:
    """Each candidate's size and how closely it reproduces the FP32 model (and the teacher) on ``check_images``."""
    fp32_check = logits["fp32"](check_images)
    teacher_check = _teacher_logits(teacher_model, check_images) if teacher_model is not None else None
    entries = {}
    for name, path in candidates.items():
        out_check = logits[name](check_images)
        entry = {"onnx": str(path), "bytes": path.stat().st_size,
                 "parity_vs_fp32": compare_logits(fp32_check, out_check).to_dict(),
                 "fp32_kl": _kl(fp32_check, out_check)}
        if teacher_check is not None:
            entry["teacher_agreement"] = float((out_check.argmax(1) == teacher_check.argmax(1)).mean())
            entry["teacher_kl"] = _kl(teacher_check, out_check)
        entries[name] = entry
    return entries


def _accuracy(eval_set: tuple[torch.Tensor, torch.Tensor], logits: dict[str, _Runner], chosen: str
              ) -> dict[str, float | None]:
    """Top-1 on the labelled real data of the FP32 model, each INT8 candidate and the deployed one."""
    x, y = eval_set
    accuracy = {name: float((torch.from_numpy(run(x)).argmax(1) == y).float().mean()) for name, run in
                logits.items()}
    return {"fp32_onnx_accuracy": accuracy["fp32"], "ptq_int8_accuracy": accuracy["ptq"],
            "qat_int8_accuracy": accuracy.get("qat"), "int8_accuracy": accuracy[chosen]}


def _choose(candidates: dict[str, dict[str, Any]]) -> tuple[str, str]:
    """QAT when it reproduces the FP32 student more faithfully than PTQ on the held-out synthetic samples
    (lower mean KL divergence of its logits from the FP32 student's), else PTQ.

    INT8's job is to lose nothing of the FP32 student, whose accuracy is what was validated; the KL over all
    logits measures that with far less noise than top-1 agreement over a few hundred samples, and the
    held-out samples were seen by neither candidate.
    """
    if "qat" not in candidates:
        return "ptq", "post-training quantization only (QAT off)"
    for outcome in QAT_NO_MODEL:
        if outcome in candidates["qat"]:
            return "ptq", f"post-training quantization: QAT {outcome} ({candidates['qat'][outcome]})"
    qat, ptq = candidates["qat"]["fp32_kl"], candidates["ptq"]["fp32_kl"]
    # A NaN/Inf KL (non-finite logits) loses to any finite one, and never wins by a comparison with NaN.
    if math.isfinite(qat) and (not math.isfinite(ptq) or qat < ptq):
        return "qat", (f"QAT reproduces the FP32 student more faithfully than PTQ on held-out synthetic samples "
                       f"(KL from FP32 {qat:.2e} vs {ptq:.2e})")
    return "ptq", (f"PTQ reproduces the FP32 student at least as faithfully as QAT on held-out synthetic samples "
                   f"(KL from FP32 {ptq:.2e} vs {qat:.2e})")


def _int8_writer(layout: Layout, method: str, calibration: int) -> Callable[[Path, Path, torch.Tensor], Path]:
    if layout == "ort":
        return lambda src, dst, images: quantize_static_ort(src, dst, images, calibrate_method=method,
                                                            max_calibration=calibration)

    return lambda src, dst, images: quantize_tensorrt(src, dst, images, max_calibration=calibration)


class _Runner:
    """One onnxruntime session, run in chunks."""

    def __init__(self, path: Path):
        self.session = onnx_session(path)

    def __call__(self, x: Any) -> np.ndarray:
        return run_session(self.session, x)


def load_run_teacher(run_dir: Path, teacher: str | Path | None, options: dict[str, Any] | None) -> Any:
    """The teacher for QAT: ``teacher`` with ``options``, else the one the run's ``config.json`` records."""
    options = dict(options or {})
    if teacher is None:
        recorded = _recorded(run_dir, "teacher")
        if recorded is None or not recorded.get("path"):
            raise UserError(f"{run_dir}: no teacher recorded in config.json; give the teacher with --teacher")
        if not isinstance(recorded["path"], str):
            raise UserError(f"{run_dir}/config.json: the teacher's path is not text "
                            f"({type(recorded['path']).__name__}); give the teacher with --teacher")
        teacher = recorded["path"]
        for key, kind in (("arch", str), ("classes", list), ("input_shape", list), ("mean", list), ("std", list)):
            if options.get(key) is None and recorded.get(key) is not None:
                if not isinstance(recorded[key], kind):
                    raise UserError(f"{run_dir}/config.json: the teacher's {key} should be a {kind.__name__}, not "
                                    f"{type(recorded[key]).__name__}; give the teacher with --teacher and its options")
                options[key] = recorded[key]
        if not Path(teacher).exists():
            raise UserError(f"{run_dir}/config.json: the teacher it records, {teacher}, is not there; give the teacher "
                            "with --teacher")
    return load_teacher(teacher, **options)


def _recorded(run_dir: Path, key: str) -> dict[str, Any] | None:
    """``config.json``'s section ``key`` (None when there is no readable one; UserError when it is damaged)."""
    try:
        data = rf.read_json(run_dir / rf.CONFIG)
    except UserError:
        return None
    if not isinstance(data, dict) or key not in data:
        return None
    if not isinstance(data[key], dict):
        raise UserError(f"{run_dir}/config.json: '{key}' should be an object, not {type(data[key]).__name__}; re-run "
                        "distill or remove config.json")
    return data[key]


@torch.no_grad()
def _teacher_logits(teacher: Any, images01: torch.Tensor, batch: int = 256) -> np.ndarray:
    teacher.model.eval()
    return torch.cat([teacher(images01[i:i + batch].float()) for i in range(0, len(images01), batch)]).numpy()


def _kl(teacher_logits: np.ndarray, student_logits: np.ndarray) -> float:
    return float(kd_divergence(torch.from_numpy(student_logits), torch.from_numpy(teacher_logits)))


def _qat_fp32_onnx(run: QuantizeInputs, images: torch.Tensor, teacher: Any) -> tuple[Path, dict[str, Any]]:
    """Fine-tune through fake INT8 and export the BN-folded FP32 result (checked against PyTorch)."""
    spec = run.spec
    if list(teacher.spec.input_shape) != list(spec["input_shape"]):
        raise UserError(f"the teacher takes {list(teacher.spec.input_shape)} but the student takes "
                        f"{spec['input_shape']}; give the teacher this run was distilled from")
    config = _run_config(run.run_dir)
    student, _ = load_student(run.run_dir, trust_code=run.trust_code)
    if isinstance(student, torch.jit.ScriptModule):
        raise UserError(f"{run.run_dir}: the student's architecture cannot be rebuilt here (only TorchScript); "
                        "QAT needs it: make its factory importable, or use --no-qat")
    teacher_logits = (torch.from_numpy(_teacher_logits(teacher, images)) if config.qat_fp32_anchor < 1.0
                      else None)
    epochs = run.qat_epochs if run.qat_epochs is not None else config.qat_epochs
    lr = run.qat_lr if run.qat_lr is not None else config.qat_lr

    with run.progress.stage("qat", layout=run.layout):
        model, report = finetune_qat(
            student, images, teacher_logits, mean=spec["mean"], std=spec["std"], layout=run.layout, epochs=epochs,
            lr=lr, batch=config.qat_batch, temperature=config.temperature,
            fp32_anchor=config.qat_fp32_anchor, seed=config.seed, max_seconds=run.qat_seconds,
            validation=config.qat_validation,
            on_step=lambda done, total: run.progress.steps("qat", done, total, logged=True))
    shape = tuple(spec["input_shape"])
    path = export_onnx(model, run.run_dir / rf.STUDENT_QAT_FP32_ONNX, input_shape=shape, mean=spec["mean"],
                       std=spec["std"], fold_normalization=True, batch=run.batch, opset=run.opset,
                       classes=spec["classes"])
    probe = torch.rand(run.batch or 64, *shape, generator=torch.Generator().manual_seed(0))
    check_parity(path, NormalizedModel(model, spec["mean"], spec["std"]).eval(), probe)
    return path, {**report.to_dict(), "epochs": epochs, "lr": lr, "fp32_anchor": config.qat_fp32_anchor,
                  "validation": config.qat_validation,
                  "tool": QAT_TOOL_DECISION}


def _run_config(run_dir: Path) -> Any:
    data = _recorded(run_dir, "config")
    if data is None:
        return DistillConfig()
    known = set(DistillConfig.__dataclass_fields__)
    return from_dict(DistillConfig, {k: v for k, v in data.items() if k in known}, where=f"{run_dir}/config.json")

