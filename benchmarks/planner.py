"""Student top-1 against time budget: the planner against the paper's defaults and a hand-written CPU recipe.

Every run is the CLI as a user types it (a new process; the budget counts from its start), on a teacher built by
``benchmarks/eval_teachers.py``, with the user's own student factory; top-1 on the teacher's held-out real images.
Variants run seed after seed, budget after budget, so machine drift hits all alike::

    .venv/bin/python benchmarks/eval_teachers.py --out runs/teachers
    .venv/bin/python benchmarks/planner.py --teacher runs/teachers/photo32 --budgets 150 300 600 1200 \\
        --seeds 0 1 2 --variants planned paper hand --out runs/bench-planner

Variants: ``planned`` (no recipe: the planner), ``paper`` (``--schedule fixed``: the paper's GPU settings),
``hand`` (the best hand-written CPU recipe found, ``--schedule fixed``), and ``noise`` / ``onehot`` (the planner
with the noise-input generator or one-hot class codes instead of label-text embeddings). Writes
``results.json`` (atomically, after every run), ``planner.png`` and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
STUDENT = f"{REPO / 'benchmarks' / 'students.py'}:resnet_w16"
# The hand-written CPU recipe of the reference measurements (../shared/REFERENCE.md, note 1): the best we had.
HAND_RECIPE = """\
synthesis_batch: 100
g_steps: 30
rounds_per_epoch: 2
warmup_epochs: 3
warmup_rounds: 5
kd_batch: 128
kd_steps: 50
epochs: 30
memory_capacity: 20000
"""
VARIANTS = {
    "planned": [],
    "paper": ["--schedule", "fixed"],
    "hand": ["--schedule", "fixed", "--recipe", "{hand}"],
    "noise": ["--generator", "noise"],
    "onehot": ["--embedding", "onehot"],
    "bf16": ["--amp", "bf16"],
    "fp32": ["--amp", "fp32"],
}


def run_one(teacher_dir: Path, variant: str, budget: float, seed: int, work: Path, hand: Path,
            extra: list[str]) -> dict:
    out = work / f"{teacher_dir.name}-{variant}-{budget:g}-{seed}"
    args = [a.replace("{hand}", str(hand)) for a in VARIANTS[variant]]
    command = [sys.executable, "-m", "nayer_edge", "distill", str(teacher_dir / "teacher.pt"), "--out", str(out),
               "--student", STUDENT, "--eval-data", str(teacher_dir / "heldout.npz"), "--time-budget", f"{budget:g}",
               "--seed", str(seed), "--device", "cpu", "--json", *args, *extra]
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    wall = time.perf_counter() - started
    row = {"teacher": teacher_dir.name, "variant": variant, "budget": budget, "seed": seed,
           "wall_seconds": round(wall, 2), "returncode": result.returncode}
    if result.returncode != 0:
        row["error"] = result.stderr.strip().splitlines()[-1] if result.stderr.strip() else "failed"
        return row
    metrics = json.loads(result.stdout)
    row.update({k: metrics.get(k) for k in ("teacher_accuracy", "student_accuracy", "agreement", "epochs",
                                            "stopped_by", "synthetic_samples", "amp")})
    row["overshoot"] = round(wall - budget, 2)
    row["plan"] = (metrics.get("plan") or {}).get("values")
    row["curve"] = [(h["wall_seconds"], h["student_accuracy"]) for h in metrics.get("history", [])]
    return row


def write_json(path: Path, data: object) -> None:
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(handle, "w") as f:
        json.dump(data, f, indent=1)
    os.replace(tmp, path)


def table(rows: list[dict]) -> str:
    budgets = sorted({r["budget"] for r in rows})
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    teacher = next((r["teacher_accuracy"] for r in rows if r.get("teacher_accuracy")), None)
    lines = [f"teacher top-1 {teacher:.3f}" if teacher else "",
             "| variant | " + " | ".join(f"{b:g} s" for b in budgets) + " |", "|---|" + "---:|" * len(budgets)]
    for v in variants:
        cells = []
        for b in budgets:
            accs = [r["student_accuracy"] for r in rows if r["variant"] == v and r["budget"] == b
                    and r.get("student_accuracy") is not None]
            over = [r["overshoot"] for r in rows if r["variant"] == v and r["budget"] == b and "overshoot" in r]
            if not accs:
                cells.append("—")
                continue
            sd = f" ± {statistics.stdev(accs):.3f}" if len(accs) > 1 else ""
            cells.append(f"{statistics.mean(accs):.3f}{sd} (n={len(accs)}, {max(over):+.0f} s)")
        lines.append(f"| {v} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for v in dict.fromkeys(r["variant"] for r in rows):
        budgets = sorted({r["budget"] for r in rows if r["variant"] == v})
        means = [statistics.mean([r["student_accuracy"] for r in rows if r["variant"] == v and r["budget"] == b
                                  and r.get("student_accuracy") is not None] or [float("nan")]) for b in budgets]
        ax.plot(budgets, means, marker="o", label=v)
    teacher = next((r["teacher_accuracy"] for r in rows if r.get("teacher_accuracy")), None)
    if teacher:
        ax.axhline(teacher, color="gray", ls="--", label="teacher")
        ax.axhline(0.95 * teacher, color="gray", ls=":", label="95 % of teacher")
    ax.set_xscale("log")
    ax.set_xlabel("--time-budget (s), whole command")
    ax.set_ylabel("student top-1, held-out real images")
    ax.legend()
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=120)
    os.replace(tmp, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", type=Path, nargs="+", required=True, help="Folders from eval_teachers.py.")
    parser.add_argument("--budgets", type=float, nargs="+", default=[150, 300, 600, 1200])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--variants", nargs="+", default=["planned", "paper", "hand"], choices=list(VARIANTS))
    parser.add_argument("--out", type=Path, default=Path("runs/bench-planner"))
    parser.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="More distill options for every run.")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    hand = args.out / "hand.yaml"
    hand.write_text(HAND_RECIPE)
    results_path = args.out / "results.json"
    rows = json.loads(results_path.read_text()) if results_path.is_file() else []
    done = {(r["teacher"], r["variant"], r["budget"], r["seed"]) for r in rows}
    for teacher in args.teacher:
        for budget in args.budgets:
            for seed in args.seeds:
                for variant in args.variants:
                    if (teacher.name, variant, budget, seed) in done:
                        continue
                    row = run_one(teacher, variant, budget, seed, args.out, hand, args.extra)
                    rows.append(row)
                    write_json(results_path, rows)
                    print(json.dumps({k: v for k, v in row.items() if k not in ("curve", "plan")}), flush=True)
    print(table(rows))
    plot(rows, args.out / "planner.png")


if __name__ == "__main__":
    main()
