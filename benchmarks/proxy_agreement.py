"""How well the release gate's proxy (top-1 agreement with the teacher on held-out *synthetic* samples) tracks
what it stands in for (the share of the teacher's top-1 the student keeps on held-out *real* images).

Reads the per-epoch history of finished ``nayer-edge distill --eval-data`` runs (the eval data is only ever
reported, never used by the run) and prints, per run and over all epochs: the Pearson correlation, and how
often the proxy's verdict at ``--min-agreement`` matches the real verdict at ``--min-retention``. Writes a
scatter plot::

    .venv/bin/python benchmarks/proxy_agreement.py runs/bench14/out-* runs/bench-planner/photo32-* \\
        --out runs/bench14/proxy.png
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path


def points(run: Path) -> list[tuple[float, float]]:
    """(agreement on held-out synthetic samples, retention of the teacher's top-1 on real images) per epoch."""
    metrics = json.loads((run / "metrics.json").read_text())
    teacher = metrics.get("teacher_accuracy")
    if not teacher:
        return []
    return [(row["agreement"], row["student_accuracy"] / teacher) for row in metrics.get("history", [])
            if row.get("agreement") is not None and row.get("student_accuracy") is not None]


def pearson(xs: list[float], ys: list[float]) -> float:
    mx, my = statistics.mean(xs), statistics.mean(ys)
    sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys))
    sxx = sum((x - mx) ** 2 for x in xs)
    syy = sum((y - my) ** 2 for y in ys)
    return sxy / (sxx * syy) ** 0.5 if sxx and syy else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path, nargs="+", help="distill output folders (with metrics.json)")
    parser.add_argument("--min-agreement", type=float, default=0.9)
    parser.add_argument("--min-retention", type=float, default=0.9)
    parser.add_argument("--out", type=Path, default=None, help="scatter plot (PNG)")
    args = parser.parse_args()
    rows, everything = [], []
    for run in args.runs:
        if not (run / "metrics.json").is_file():
            continue
        pts = points(run)
        if len(pts) < 2:
            continue
        everything += [(run.name, a, r) for a, r in pts]
        final_a, final_r = pts[-1]
        rows.append((run.name, len(pts), pearson(*zip(*pts)), final_a, final_r))
    print("| run | epochs | Pearson r | final agreement (synthetic) | final retention (real) |")
    print("|---|---:|---:|---:|---:|")
    for name, n, r, a, ret in rows:
        print(f"| {name} | {n} | {r:.2f} | {a:.3f} | {ret:.3f} |")
    xs, ys = [a for _, a, _ in everything], [r for _, _, r in everything]
    same = sum((a >= args.min_agreement) == (r >= args.min_retention) for a, r in zip(xs, ys))
    false_pass = sum(a >= args.min_agreement and r < args.min_retention for a, r in zip(xs, ys))
    false_fail = sum(a < args.min_agreement and r >= args.min_retention for a, r in zip(xs, ys))
    print(f"\nall {len(xs)} epochs: Pearson r {pearson(xs, ys):.2f}; verdict at agreement ≥ {args.min_agreement:g} vs "
          f"retention ≥ {args.min_retention:g}: same in {same} ({same / len(xs):.0%}), proxy passes a failing "
          f"student in {false_pass}, fails a passing one in {false_fail}")
    if args.out:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(5.5, 4.5))
        for name in dict.fromkeys(n for n, _, _ in everything):
            pts = [(a, r) for n, a, r in everything if n == name]
            ax.scatter(*zip(*pts), s=14, label=name)
        ax.axvline(args.min_agreement, color="gray", ls=":")
        ax.axhline(args.min_retention, color="gray", ls=":")
        ax.set_xlabel("agreement with the teacher, held-out synthetic samples")
        ax.set_ylabel("student / teacher top-1, held-out real images")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(args.out, dpi=120)


if __name__ == "__main__":
    main()
