"""``export``: a distilled student (a ``nayer-edge distill`` output folder) to a checked FP32 ONNX model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from .errors import UserError


def read_student_spec(run_dir: str | Path) -> dict[str, Any]:
    """``student.json`` of a distill output folder: architecture, input shape, mean/std, class names."""
    run_dir = Path(run_dir)
    spec_path = run_dir / "student.json"
    if not spec_path.is_file() or not (run_dir / "student.ts").is_file():
        raise UserError(f"{run_dir}: not a distill output folder (needs student.ts and student.json); "
                        "run `nayer-edge distill` first")
    try:
        spec = json.loads(spec_path.read_text())
        for key in ("architecture", "input_shape", "mean", "std", "classes"):
            spec[key]
    except (ValueError, KeyError, TypeError) as err:
        raise UserError(f"{spec_path}: unreadable ({type(err).__name__}: {err}); re-run distill") from None
    return spec


def user_factory_of(spec: dict[str, Any]) -> str | None:
    """The ``module:factory`` that ``student.json`` names to build the student, or None for a built-in model."""
    architecture = spec.get("architecture")
    name = architecture.get("spec") if isinstance(architecture, dict) else None
    return name if isinstance(name, str) and ":" in name else None


def require_code_trust(run_dir: Path, spec: dict[str, Any], trust_code: bool) -> None:
    """Refuse, before any work, a run whose student only its own Python code can build, unless trusted."""
    factory = user_factory_of(spec)
    if factory is not None and not trust_code:
        raise UserError(f"{run_dir / 'student.json'}: the student is built by Python code ({factory}) and importing "
                        "it runs that code; re-run with --trust-code only if you trust this run folder")


def load_student(run_dir: str | Path, *, trust_code: bool = False) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The student of a run folder and its ``student.json``: rebuilt as an eager module from its
    architecture spec and weights-only state dict (what ONNX export traces best); the TorchScript copy
    is the fallback when the architecture cannot be rebuilt here (a user factory not importable).

    A student built by the user's own factory (``student.json`` naming ``my_students.py:tiny``) is imported
    only with ``trust_code``: a run folder is data, and importing the file it names runs that file's code.
    """
    from .zoo import build_student

    run_dir = Path(run_dir)
    spec = read_student_spec(run_dir)
    require_code_trust(run_dir, spec, trust_code)
    try:
        arch = spec["architecture"]
        model = build_student(arch["spec"], num_classes=arch["num_classes"], in_channels=arch["in_channels"],
                              input_size=arch["input_size"])
        model.load_state_dict(torch.load(run_dir / "student.pt", map_location="cpu", weights_only=True))
    except UserError:
        model = None
    except Exception as err:  # noqa: BLE001
        raise UserError(f"{run_dir}: unreadable student ({type(err).__name__}: {err}); re-run distill") from None
    if model is None:
        try:
            model = torch.jit.load(str(run_dir / "student.ts"), map_location="cpu")
        except Exception as err:  # noqa: BLE001
            raise UserError(f"{run_dir}: unreadable student.ts ({type(err).__name__}); re-run distill") from None
    return model.eval(), spec


def export(run_dir: str | Path, out: str | Path, *, batch: int | None = None, fold_normalization: bool = True,
           opset: int = 17, parity_samples: int = 64, trust_code: bool = False) -> dict[str, Any]:
    """Export the student of ``run_dir`` to ONNX and check it against PyTorch in onnxruntime.

    With ``fold_normalization`` the ONNX model takes images in [0, 1]. ``trust_code``: see
    :func:`load_student`. Raises
    :class:`~nayer_edge.onnx_export.ParityError` when the ONNX model differs by more than 1e-4.

        export("runs/demo", "runs/demo/student.onnx")
    """
    from .normalize import NormalizedModel
    from .onnx_export import check_parity, export_onnx

    model, spec = load_student(run_dir, trust_code=trust_code)
    shape = tuple(spec["input_shape"])
    path = export_onnx(model, out, input_shape=shape, mean=spec["mean"], std=spec["std"],
                       fold_normalization=fold_normalization, batch=batch, opset=opset, classes=spec["classes"])
    generator = torch.Generator().manual_seed(0)
    images01 = torch.rand(parity_samples if batch is None else batch, *shape, generator=generator)
    reference = NormalizedModel(model, spec["mean"], spec["std"]).eval()
    if fold_normalization:
        report = check_parity(path, reference, images01)
    else:
        report = check_parity(path, model, (images01 - reference.mean) / reference.std)
    return {"onnx": str(path), "input": "images01" if fold_normalization else "normalised",
            "input_shape": list(shape), "batch": batch, "opset": opset, "parity": report.to_dict(),
            "bytes": Path(path).stat().st_size}
