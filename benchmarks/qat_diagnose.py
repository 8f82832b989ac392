"""Why quantization-aware fine-tuning hurts a real-photo student: a grid of QAT settings on finished distill runs,
judged in PyTorch (fast, no ONNX) on the teacher's held-out real images.

For each run folder and each setting it reports the real top-1 of

* the FP32 student before QAT, and its BN-folded copy with calibrated fake quantization (the PTQ proxy);
* the BN-folded FP32 model after QAT (did fine-tuning move the float model?) and the same model with fake
  quantization recalibrated on the samples (the INT8 proxy: what onnxruntime's quantizer then makes of it);
* the fake-quantized model's KL from the FP32 student on the run's *held-out synthetic* samples (what the
  deploy choice sees; no real data).

    .venv/bin/python benchmarks/qat_diagnose.py runs/qat-short/photo32-planned-150-0 \
        --eval-data runs/teachers/photo32/heldout.npz --out runs/qat-diag.json

The real images only report; nothing is chosen on them.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from nayer_edge.core.atomic import atomic_write_text
from nayer_edge.distill import run_folder as rf
from nayer_edge.distill.losses import kd_divergence
from nayer_edge.inputs.evaldata import load_eval_data
from nayer_edge.onnx_model.student import load_student
from nayer_edge.quantize import qat

# name -> finetune_qat keywords over the defaults below
SETTINGS: dict[str, dict] = {
    "before (lr 0.01, T 20, trained on all)": {"validation": 0.0},
    "default (lr 0.01, T 20, 10 % held out to choose the step)": {},
    "lr 1e-3, held out": {"lr": 1e-3},
    "8 epochs, held out": {"epochs": 8.0},
    "lr 1e-3": {"lr": 1e-3, "validation": 0.0},
    "lr 1e-4": {"lr": 1e-4, "validation": 0.0},
    "T 1": {"temperature": 1.0, "validation": 0.0},
    "lr 0.01, 8 epochs": {"epochs": 8.0, "validation": 0.0},
}
DEFAULTS = {"layout": "ort", "epochs": 2.0, "lr": 0.01, "batch": 256, "temperature": 20.0, "fp32_anchor": 1.0,
            "validation": 0.1}


@torch.no_grad()
def logits(model: torch.nn.Module, x: torch.Tensor, batch: int = 256) -> torch.Tensor:
    model.eval()
    return torch.cat([model(x[i:i + batch]) for i in range(0, len(x), batch)])


def top1(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    return float((logits(model, x).argmax(1) == y).float().mean())


def fake_int8(gm: torch.nn.Module, calibration: torch.Tensor) -> torch.nn.Module:
    qat.calibrate(gm, calibration)
    return gm


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--eval-data", type=Path, required=True)
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--out", type=Path, default=Path("runs/qat-diag.json"))
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = json.loads(args.out.read_text()) if args.out.is_file() else []
    for run in args.runs:
        student, spec = load_student(run, trust_code=True)
        mean = torch.tensor(spec["mean"]).view(1, -1, 1, 1)
        std = torch.tensor(spec["std"]).view(1, -1, 1, 1)
        x01, y = load_eval_data(args.eval_data, input_shape=spec["input_shape"], classes=spec["classes"])
        x = (x01 - mean) / std
        images01, _ = rf.read_memory(run, rf.MEMORY).all()
        held01, _ = rf.read_memory(run, rf.HOLDOUT).all()
        samples, held = (images01.float() - mean) / std, (held01.float() - mean) / std
        calibration = samples[torch.randperm(len(samples), generator=torch.Generator().manual_seed(0))[:512]]
        fp32_held = logits(student, held)
        ptq = fake_int8(qat.prepare_qat(student, "ort"), calibration)
        base = {"run": str(run), "samples": len(samples), "fp32": top1(student, x, y), "ptq_proxy": top1(ptq, x, y),
                "ptq_proxy_kl": float(kd_divergence(logits(ptq, held), fp32_held))}
        print(json.dumps(base), flush=True)
        for name in args.settings:
            keywords = {**DEFAULTS, **SETTINGS[name]}
            started = time.perf_counter()
            gm, report = qat.finetune_qat(student, images01, None, mean=spec["mean"], std=spec["std"], **keywords)
            row = {**base, "setting": name, "steps": report.steps, "seconds": round(time.perf_counter() - started, 1),
                   "kept_step": report.kept_step, "qat_fp32": top1(gm, x, y)}
            fake_int8(gm, calibration)
            row["qat_proxy"] = top1(gm, x, y)
            row["qat_proxy_kl"] = float(kd_divergence(logits(gm, held), fp32_held))
            rows.append(row)
            print(json.dumps(row), flush=True)
            atomic_write_text(args.out, json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
