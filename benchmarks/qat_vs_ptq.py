"""INT8 post-training quantization vs quantization-aware fine-tuning, both on the synthetic samples only, for
each layout (onnxruntime U8S8, TensorRT symmetric Q/DQ), on existing distill runs; side by side in one run.
QAT is run twice: with the FP32 student's own logits as the KD target (the default, ``qat_fp32_anchor`` 1)
and with the teacher's (anchor 0, the first design).

    python benchmarks/qat_vs_ptq.py runs/demo --eval-data ~/.cache/nayer-edge/demo/digits_heldout.npz \
        --out runs/bench-qat/results.json

Each run folder must hold a distilled student (``nayer-edge distill``/``compress``/``demo``) whose teacher is
recorded in its config.json. The real held-out data only reports accuracy; the deployed choice is made on
held-out synthetic samples (KL from the FP32 student), as ``compress`` does. The run folders are copied
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

    from nayer_edge.core.atomic import atomic_write_text
    from nayer_edge.quantize.run import quantize

    torch.set_num_threads(args.threads)
    rows = []
    for i, run in enumerate(args.runs):
        eval_data = args.eval_data[0] if len(args.eval_data) == 1 else args.eval_data[i]
        student = json.loads((run / "student.json").read_text())["architecture"]["spec"]
        for layout in ("ort", "tensorrt"):
            row: dict = {"run": str(run), "student": student, "layout": layout}
            for anchor, tag in ((1.0, "qat"), (0.0, "qat_teacher")):
                with tempfile.TemporaryDirectory(prefix="nayer-bench-qat-") as tmp:
                    copy = Path(tmp) / "run"
                    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("*.onnx", "bundle*", "checkpoint.pt"))
                    config = json.loads((copy / "config.json").read_text())
                    config["config"]["qat_fp32_anchor"] = anchor
                    (copy / "config.json").write_text(json.dumps(config))
                    started = time.perf_counter()
                    result = quantize(copy, layout=layout, qat=True, eval_data=eval_data, trust_code=True)
                    seconds = time.perf_counter() - started
                cands = result["candidates"]
                row.update({"fp32": result["fp32_onnx_accuracy"], "ptq": result["ptq_int8_accuracy"],
                            "ptq_kl": cands["ptq"]["fp32_kl"],
                            tag: result["qat_int8_accuracy"], f"{tag}_kl": cands["qat"]["fp32_kl"],
                            f"{tag}_deployed": result["method"], f"{tag}_steps": cands["qat"]["training"]["steps"],
                            f"{tag}_seconds": cands["qat"]["training"]["seconds"], f"{tag}_total_seconds": seconds})
            rows.append(row)
            print(json.dumps(row), flush=True)

    print("\n| run | layout | FP32 top-1 | PTQ top-1 | QAT top-1 (FP32 target) | QAT top-1 (teacher target) "
          "| KL from FP32 on held-out synthetic: PTQ / QAT / QAT-teacher | deployed (default QAT) |")
    print("|---|---|---:|---:|---:|---:|---:|---|")
    for r in rows:
        print(f"| {r['run']} | {r['layout']} | {r['fp32']:.2%} | {r['ptq']:.2%} | {r['qat']:.2%} | "
              f"{r['qat_teacher']:.2%} | {r['ptq_kl']:.2e} / {r['qat_kl']:.2e} / {r['qat_teacher_kl']:.2e} | "
              f"{r['qat_deployed'].upper()} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps({"rows": rows}, indent=2))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
