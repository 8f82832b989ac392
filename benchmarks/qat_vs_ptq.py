"""INT8 post-training quantization vs quantization-aware fine-tuning, both on the synthetic samples only, for
each layout (onnxruntime U8S8, TensorRT symmetric Q/DQ), on existing distill runs; side by side in one run.
QAT is run twice: as it is now (10 % of the memory held out to choose the step it keeps, ``qat_validation``
0.1; skipped on memories under 500 samples) and as it was (trained on the whole memory, ``qat_validation`` 0).

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


# QAT as it is now (the defaults: 10 % of the memory held out to choose the step) and as it was (trained on all).
VARIANTS = {"qat": {}, "qat_before": {"qat_validation": 0.0}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="distill output folders")
    parser.add_argument("--eval-data", type=Path, action="append", required=True,
                        help="labelled real data per run (one, or one per run in the same order)")
    parser.add_argument("--out", type=Path, default=Path("runs/bench-qat/results.json"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--layouts", nargs="+", default=["ort", "tensorrt"], choices=["ort", "tensorrt"])
    args = parser.parse_args()
    if len(args.eval_data) not in (1, len(args.runs)):
        parser.error("give one --eval-data, or one per run")

    import torch

    from nayer_edge.core.atomic import atomic_write_text
    from nayer_edge.distill import run_folder as rf
    from nayer_edge.quantize.run import quantize

    torch.set_num_threads(args.threads)
    rows = []
    for i, run in enumerate(args.runs):
        eval_data = args.eval_data[0] if len(args.eval_data) == 1 else args.eval_data[i]
        student = json.loads((run / "student.json").read_text())["architecture"]["spec"]
        for layout in args.layouts:
            row: dict = {"run": str(run), "student": student, "layout": layout}
            for tag, settings in VARIANTS.items():
                with tempfile.TemporaryDirectory(prefix="nayer-bench-qat-") as tmp:
                    copy = Path(tmp) / "run"
                    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("*.onnx", "bundle*", "checkpoint.pt"))
                    config = json.loads((copy / "config.json").read_text())
                    config["config"].update(settings)
                    (copy / "config.json").write_text(json.dumps(config))
                    started = time.perf_counter()
                    result = quantize(copy, layout=layout, qat=True, eval_data=eval_data, trust_code=True)
                    seconds = time.perf_counter() - started
                cands = result["candidates"]
                training = cands["qat"].get("training", {})
                row.update({"samples": len(rf.read_memory(run, rf.MEMORY)), "fp32": result["fp32_onnx_accuracy"],
                            "ptq": result["ptq_int8_accuracy"], "ptq_kl": cands["ptq"]["fp32_kl"],
                            tag: result["qat_int8_accuracy"], f"{tag}_kl": cands["qat"].get("fp32_kl"),
                            f"{tag}_skipped": cands["qat"].get("skipped"),
                            f"{tag}_deployed": result["method"], f"{tag}_steps": training.get("steps"),
                            f"{tag}_kept_step": training.get("kept_step"),
                            f"{tag}_seconds": training.get("seconds"), f"{tag}_total_seconds": seconds})
            rows.append(row)
            print(json.dumps(row), flush=True)

    def pct(value: float | None) -> str:
        return "skipped" if value is None else f"{value:.2%}"

    print("\n| run | layout | FP32 top-1 | PTQ top-1 | QAT top-1 (default) | QAT kept step / steps | QAT top-1 (trained on "
          "all, before) | KL from FP32 on held-out synthetic: PTQ / QAT / before | deployed (default QAT) |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---|")
    for r in rows:
        kl = " / ".join("—" if r.get(k) is None else f"{r[k]:.2e}" for k in ("ptq_kl", "qat_kl", "qat_before_kl"))
        kept = "—" if r.get("qat_steps") is None else f"{r['qat_kept_step']} / {r['qat_steps']}"
        print(f"| {r['run']} | {r['layout']} | {r['fp32']:.2%} | {r['ptq']:.2%} | {pct(r['qat'])} | {kept} | "
              f"{pct(r['qat_before'])} | {kl} | {r['qat_deployed'].upper()} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps({"rows": rows}, indent=2))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
