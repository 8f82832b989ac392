"""Print the Markdown table of a generator_ablation.py results.json (the figures in BENCHMARKS.md).

    python benchmarks/table.py runs/bench-generators/results.json
"""

from __future__ import annotations

import json
import sys

import numpy as np


def fmt_seconds(values: list[float | None]) -> str:
    reached = [v for v in values if v is not None]
    if not reached:
        return "never"
    text = f"{np.mean(reached):.0f} s"
    return text if len(reached) == len(values) else f"{text} ({len(reached)}/{len(values)} runs)"


def main(path: str) -> None:
    result = json.loads(open(path).read())
    teacher = result["teacher_accuracy"]
    print(f"Teacher top-1 on the held-out digits: {teacher:.2%}; budget {result['budget_seconds']:.0f} s per run; "
          f"seeds {result['seeds']}.\n")
    print("| variant | final top-1 (mean ± sd) | per seed | % of teacher | time to 95 % of teacher | "
          "time to the noise baseline's final | epochs in budget |")
    print("|---|---|---|---|---|---|---|")
    for name, s in result["summary"].items():
        per_seed = " / ".join(f"{a:.2%}" for a in s["final_accuracies"])
        print(f"| {name} | {s['final_accuracy_mean']:.2%} ± {s['final_accuracy_std']:.2%} | {per_seed} | "
              f"{s['final_accuracy_mean'] / teacher:.1%} | {fmt_seconds(s['seconds_to_95pct_teacher'])} | "
              f"{fmt_seconds(s['seconds_to_noise_final'])} | {' / '.join(map(str, s['epochs']))} |")
    sep = result["minilm_separation"]
    print(f"\nMiniLM class-embedding cosine (\"a photo of a zero\" …): raw min {sep['raw']['min']:.2f} / mean "
          f"{sep['raw']['mean']:.2f} / max {sep['raw']['max']:.2f}; after standardisation (what BatchNorm1d "
          f"does): {sep['standardised']['min']:.2f} / {sep['standardised']['mean']:.2f} / "
          f"{sep['standardised']['max']:.2f}.")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "runs/bench-generators/results.json")
