"""``quantize``: INT8 post-training quantization of a distilled student for onnxruntime CPU, calibrated on the
run's own synthetic samples (no real data), checked against the FP32 model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from .errors import UserError


def quantize(run_dir: str | Path, *, out: str | Path | None = None, calibration: int = 512,
             method: str = "minmax", eval_data: str | Path | None = None) -> dict[str, Any]:
    """FP32 ONNX (exported if missing) → INT8 QDQ (uint8 activations, per-channel int8 weights), calibrated on
    ``samples.npz``; parity against FP32 on the held-out synthetic samples, top-1 on ``eval_data`` if given.

        quantize("runs/demo", eval_data="heldout.npz")["int8_accuracy"]
    """
    from .export import export, load_student
    from .memory import SampleMemory
    from .onnx_export import compare_logits, onnx_session, run_session
    from .quantize_ort import quantize_static_ort

    run_dir = Path(run_dir)
    _, spec = load_student(run_dir)
    samples, holdout = run_dir / "samples.npz", run_dir / "holdout.npz"
    if not samples.is_file():
        raise UserError(f"{run_dir}: no samples.npz (the synthetic memory); re-run distill with this nayer-edge")
    fp32_path = run_dir / "student.onnx"
    if not fp32_path.is_file():
        export(run_dir, fp32_path)  # images in [0, 1], dynamic batch
    images, _ = SampleMemory.load(samples).all()
    generator = torch.Generator().manual_seed(0)
    calibration_images = images[torch.randperm(len(images), generator=generator)[:calibration]]
    int8_path = Path(out) if out else run_dir / "student.int8.onnx"
    quantize_static_ort(fp32_path, int8_path, calibration_images, calibrate_method=method,
                        max_calibration=calibration)
    check_images = SampleMemory.load(holdout).all()[0] if holdout.is_file() else calibration_images
    fp32_logits = run_session(onnx_session(fp32_path), check_images)
    int8_logits = run_session(onnx_session(int8_path), check_images)
    parity = compare_logits(fp32_logits, int8_logits)
    result: dict[str, Any] = {"fp32_onnx": str(fp32_path), "int8_onnx": str(int8_path), "method": "ptq-ort-qdq-u8s8",
                              "calibration_samples": int(len(calibration_images)), "parity_vs_fp32": parity.to_dict(),
                              "fp32_bytes": fp32_path.stat().st_size, "int8_bytes": int8_path.stat().st_size}
    if eval_data is not None:
        from .evaldata import load_eval_data

        x, y = load_eval_data(eval_data, input_shape=tuple(spec["input_shape"]), classes=spec["classes"])
        for name, path in (("fp32_onnx_accuracy", fp32_path), ("int8_accuracy", int8_path)):
            logits = torch.from_numpy(run_session(onnx_session(path), x))
            result[name] = (logits.argmax(1) == y).float().mean().item()
    return result
