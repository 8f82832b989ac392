"""NAYER against its baselines in the same engine: same teacher, student, wall-clock budget and seeds.

    python benchmarks/generator_ablation.py --budget 90 --seeds 0 1 2 --out runs/bench-generators

Variants: nayer (MiniLM label-text embeddings), onehot (one-hot embeddings), noise (z ~ N(0, I) input,
the DeepInversion / Fast-DFKD style), and two ablations of choices we made: no BatchNorm1d over the
embeddings, and no student training during warm-up (the reference's schedule). Accuracy is top-1 on the
held-out real digits, recorded after every epoch for the curve only (never used to select anything).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

VARIANTS = {
    "nayer": {},
    "onehot": {"embedding": "onehot"},
    "noise": {"generator": "noise"},
    "nayer-no-bn1d": {"embedding_norm": False},
    "nayer-no-warmup-kd": {"kd_during_warmup": False},
}


def time_to_reach(history: list[dict], target: float) -> float | None:
    for row in history:
        if row["student_accuracy"] is not None and row["student_accuracy"] >= target:
            return row["wall_seconds"]
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=90.0, help="seconds of distillation per run")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS))
    parser.add_argument("--out", type=Path, default=Path("runs/bench-generators"))
    args = parser.parse_args()

    import torch

    from nayer_edge.core.plots import save_accuracy_vs_time
    from nayer_edge.demo.digits import DIGIT_CLASSES, ensure_digits_teacher
    from nayer_edge.distill.config import load_config
    from nayer_edge.distill.run import distill
    from nayer_edge.synthesis.embeddings import class_separation, encode_class_names

    torch.set_num_threads(2)
    teacher = ensure_digits_teacher()
    args.out.mkdir(parents=True, exist_ok=True)
    runs: dict[str, list[dict]] = {}
    for seed in args.seeds:  # seeds outermost so that machine drift affects every variant alike
        for name in args.variants:
            config = load_config("demo-digits", {**VARIANTS[name], "seed": seed, "time_budget": args.budget,
                                                 "epochs": 1000})
            with tempfile.TemporaryDirectory() as tmp:
                metrics = distill(teacher.teacher_path, out_dir=tmp, config=config, eval_data=teacher.eval_path,
                                  show_progress=False)
            runs.setdefault(name, []).append(metrics)
            print(f"{name:20s} seed {seed}: student {metrics['student_accuracy']:.4f} "
                  f"(teacher {metrics['teacher_accuracy']:.4f}) in {metrics['epochs']} epochs", flush=True)

    teacher_acc = runs[args.variants[0]][0]["teacher_accuracy"]
    baseline_final = float(np.mean([m["student_accuracy"] for m in runs.get("noise", runs[args.variants[0]])]))
    summary = {}
    for name, metrics_list in runs.items():
        finals = [m["student_accuracy"] for m in metrics_list]
        reach_base = [time_to_reach(m["history"], baseline_final) for m in metrics_list]
        reach_95 = [time_to_reach(m["history"], 0.95 * teacher_acc) for m in metrics_list]
        summary[name] = {
            "final_accuracy_mean": float(np.mean(finals)), "final_accuracy_std": float(np.std(finals)),
            "final_accuracies": finals,
            "seconds_to_noise_final": reach_base, "seconds_to_95pct_teacher": reach_95,
            "epochs": [m["epochs"] for m in metrics_list],
        }
    emb = encode_class_names(DIGIT_CLASSES)
    result = {"budget_seconds": args.budget, "seeds": args.seeds, "teacher_accuracy": teacher_acc,
              "noise_final_accuracy_mean": baseline_final, "summary": summary,
              "minilm_separation": class_separation(emb),
              "histories": {k: [m["history"] for m in v] for k, v in runs.items()}}
    from nayer_edge.core.atomic import atomic_write_text

    atomic_write_text(args.out / "results.json", json.dumps(result, indent=2))

    # Accuracy against wall time: per variant, the mean over seeds on a common time grid, min–max band.
    grid = np.linspace(0, args.budget, 46)[1:]
    series, bands = {}, {}
    for name, metrics_list in runs.items():
        curves = []
        for m in metrics_list:
            t = [0.0] + [r["wall_seconds"] for r in m["history"]]
            a = [0.1] + [r["student_accuracy"] for r in m["history"]]
            curves.append(np.interp(grid, t, a))
        curves = np.array(curves)
        series[name] = list(zip(grid.tolist(), curves.mean(0).tolist()))
        bands[name] = list(zip(grid.tolist(), curves.min(0).tolist(), curves.max(0).tolist()))
    save_accuracy_vs_time(series, args.out / "accuracy_vs_time.png",
                          title=f"digits teacher → cnn_tiny, {len(args.seeds)} seeds, {args.budget:.0f} s each",
                          teacher_accuracy=teacher_acc, bands=bands)
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
