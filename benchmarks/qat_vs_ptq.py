"""INT8 post-training quantization vs quantization-aware fine-tuning, both on the synthetic samples only, for
each layout (onnxruntime U8S8, TensorRT symmetric Q/DQ), on existing distill runs; side by side in one run.

    python benchmarks/qat_vs_ptq.py runs/demo --eval-data ~/.cache/nayer-edge/demo/digits_heldout.npz \
        --out runs/bench-qat/results.json

Each run folder must hold a distilled student (``nayer-edge distill``/``compress``/``demo``) whose teacher is
recorded in its config.json. The real held-out data only reports accuracy; the deployed choice is made on
held-out synthetic samples (agreement with the teacher), as ``compress`` does. The run folders are copied
first, so nothing in them changes.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="distill output folders")
    parser.add_argument("--eval-data", type=Path, action="append", required=True,
                        help="labelled real data per run (one, or one per run in the same order)")
    parser.add_argument("--out", type=Path, default=Path("runs/bench-qat/results.json"))
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    if len(args.eval_data) not in (1, len(args.runs)):
        parser.error("give one --eval-data, or one per run")

    import torch

    from nayer_edge.atomic import atomic_write_text
    from nayer_edge.quantize import quantize

    torch.set_num_threads(args.threads)
    rows = []
    for i, run in enumerate(args.runs):
        eval_data = args.eval_data[0] if len(args.eval_data) == 1 else args.eval_data[i]
        student = json.loads((run / "student.json").read_text())["architecture"]["spec"]
        for layout in ("ort", "tensorrt"):
            with tempfile.TemporaryDirectory(prefix="nayer-bench-qat-") as tmp:
                copy = Path(tmp) / "run"
                shutil.copytree(run, copy, ignore=shutil.ignore_patterns("*.onnx", "bundle*", "checkpoint.pt"))
                started = time.perf_counter()
                result = quantize(copy, layout=layout, qat=True, eval_data=eval_data)
                seconds = time.perf_counter() - started
            cands = result["candidates"]
            row = {"run": str(run), "student": student, "layout": layout,
                   "fp32": result["fp32_onnx_accuracy"], "ptq": result["ptq_int8_accuracy"],
                   "qat": result["qat_int8_accuracy"], "deployed": result["method"],
                   "ptq_agreement": cands["ptq"]["teacher_agreement"], "qat_agreement": cands["qat"]["teacher_agreement"],
                   "qat_steps": cands["qat"]["training"]["steps"], "qat_seconds": cands["qat"]["training"]["seconds"],
                   "total_seconds": seconds}
            rows.append(row)
            print(json.dumps(row), flush=True)

    print("\n| run | student | layout | FP32 top-1 | PTQ top-1 | QAT top-1 | agreement PTQ / QAT (synthetic) "
          "| deployed | QAT steps (s) |")
    print("|---|---|---|---:|---:|---:|---:|---|---:|")
    for r in rows:
        print(f"| {r['run']} | {r['student']} | {r['layout']} | {r['fp32']:.2%} | {r['ptq']:.2%} | {r['qat']:.2%} | "
              f"{r['ptq_agreement']:.2%} / {r['qat_agreement']:.2%} | {r['deployed'].upper()} | "
              f"{r['qat_steps']} ({r['qat_seconds']:.1f}) |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps({"rows": rows}, indent=2))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
