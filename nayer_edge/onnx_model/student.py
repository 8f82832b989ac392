"""``export``: a distilled student (a ``nayer-edge distill`` output folder) to a checked FP32 ONNX model."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from ..core.atomic import prepare_output_file
from ..core.errors import UserError
from ..core.normalize import NormalizedModel
from ..core.optional import require
from ..distill import run_folder as rf
from ..distill.run_folder import read_student_spec, require_code_trust, student_sha256
from ..zoo import build_student
from .exporter import check_parity, export_onnx


def _loading_error_line(err: BaseException) -> str:
    """The informative line of a loading error: torch puts a size mismatch on the line after its heading."""
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    if lines and lines[0].startswith("Weights only load failed"):
        return "not a file of weights: it holds pickled objects, which are never loaded"
    if len(lines) > 1 and lines[0].startswith("Error(s) in loading state_dict"):
        return lines[1][:300]
    return f"{type(err).__name__}: {lines[0][:300]}" if lines else type(err).__name__


def load_student(run_dir: str | Path, *, trust_code: bool = False) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The student of a run folder and its ``student.json``: rebuilt as an eager module from its
    architecture spec and weights-only state dict (what ONNX export traces best); the TorchScript copy
    is the fallback when the architecture cannot be rebuilt here (a user factory not importable).

    A student built by the user's own factory (``student.json`` naming ``my_students.py:tiny``) is imported
    only with ``trust_code``: a run folder is data, and importing the file it names runs that file's code.
    """
    run_dir = Path(run_dir)
    spec = read_student_spec(run_dir)
    require_code_trust(run_dir, spec, trust_code)
    try:
        arch = spec["architecture"]
        model = build_student(arch["spec"], num_classes=arch["num_classes"], in_channels=arch["in_channels"],
                              input_size=arch["input_size"])
        model.load_state_dict(torch.load(run_dir / rf.STUDENT_WEIGHTS, map_location="cpu", weights_only=True))
    except UserError:
        model = None
    except Exception as err:  # noqa: BLE001 - any failure to read the run's student becomes one line
        raise UserError(f"{run_dir / rf.STUDENT_WEIGHTS}: unreadable, or not the weights of the student in student.json "
                        f"({_loading_error_line(err)}); re-run distill") from None
    if model is None:
        try:
            model = torch.jit.load(str(run_dir / rf.STUDENT_TS), map_location="cpu")
        except Exception as err:  # noqa: BLE001 - any failure to read the run's student becomes one line
            raise UserError(f"{run_dir}: unreadable student.ts ({type(err).__name__}); re-run distill") from None
    tensors = [*model.parameters(), *model.buffers()]
    if any(t.is_floating_point() and not torch.isfinite(t).all() for t in tensors):
        raise UserError(f"{run_dir}: the student's weights hold NaN or inf (a diverged or damaged run); re-run distill")
    return model.eval(), spec


@rf.reading_once
def export(run_dir: str | Path, out: str | Path, *, batch: int | None = None, fold_normalization: bool = True,
           opset: int = 17, parity_samples: int = 64, trust_code: bool = False) -> dict[str, Any]:
    """Export the student of ``run_dir`` to ONNX and check it against PyTorch in onnxruntime.

    With ``fold_normalization`` the ONNX model takes images in [0, 1]. ``trust_code``: see
    :func:`load_student`. Raises
    :class:`~nayer_edge.onnx_model.exporter.ParityError` when the ONNX model differs by more than 1e-4.

        export("runs/demo", "runs/demo/student.onnx")
    """
    prepare_output_file(Path(out))
    model, spec = load_student(run_dir, trust_code=trust_code)
    shape = tuple(spec["input_shape"])
    path = export_onnx(model, out, input_shape=shape, mean=spec["mean"], std=spec["std"],
                       fold_normalization=fold_normalization, batch=batch, opset=opset, classes=spec["classes"],
                       provenance={"student_sha256": student_sha256(Path(run_dir))})
    generator = torch.Generator().manual_seed(0)
    # At most about 512 MB of parity images, however large the input (at least two images: a batch).
    parity_samples = max(2, min(parity_samples, 2**27 // math.prod(shape)))
    images01 = torch.rand(parity_samples if batch is None else batch, *shape, generator=generator)
    reference = NormalizedModel(model, spec["mean"], spec["std"]).eval()
    if fold_normalization:
        report = check_parity(path, reference, images01)
    else:
        report = check_parity(path, model, (images01 - reference.mean) / reference.std)
    return {"onnx": str(path), "input": "images01" if fold_normalization else "normalised",
            "input_shape": list(shape), "batch": batch, "opset": opset, "parity": report.to_dict(),
            "bytes": Path(path).stat().st_size}


def check_onnx_fits(path: Path, spec: dict[str, Any]) -> dict[str, str]:
    """UserError unless the ONNX model at ``path`` takes one N×C×H×W input and gives N×K logits for the student
    of ``spec`` (a ``student.json``): a damaged or foreign ``student.onnx`` is found before it is quantized.
    Returns its metadata."""
    onnx = require("onnx")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as err:  # noqa: BLE001 - protobuf decode errors of every kind
        raise UserError(f"{path}: not a loadable ONNX model ({type(err).__name__}); remove it and run again "
                        "(it is exported anew)") from None
    initializers = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in initializers]

    def dims(value: Any) -> list[int | None]:
        return [d.dim_value if d.HasField("dim_value") else None for d in value.type.tensor_type.shape.dim]

    expected_in, classes = list(spec["input_shape"]), len(spec["classes"])
    got_in = dims(inputs[0]) if len(inputs) == 1 else None
    got_out = dims(model.graph.output[0]) if len(model.graph.output) >= 1 else None
    fits_in = got_in is not None and len(got_in) == 4 and all(g in (None, e) for g, e in zip(got_in[1:], expected_in))
    fits_out = got_out is not None and len(got_out) == 2 and got_out[1] in (None, classes)
    if not (fits_in and fits_out):
        raise UserError(f"{path}: takes {got_in if got_in is not None else f'{len(inputs)} inputs'} and gives "
                        f"{got_out}, not N×{'×'.join(map(str, expected_in))} images to N×{classes} logits as "
                        "student.json says; remove it and run again (it is exported anew)")
    return {p.key: p.value for p in model.metadata_props}
