"""Soak: does memory stay flat over a long distillation run?

    OMP_NUM_THREADS=1 python benchmarks/soak.py --minutes 30 --out runs/soak --png benchmarks/soak.png

Runs the demo's distillation (digits teacher, cached in ~/.cache/nayer-edge/demo, trained once if absent;
demo-digits recipe; one thread) through :func:`nayer_edge.distill.run.distill` for a wall-clock budget, with a
checkpoint every epoch as in any run. A sampler thread records every ``--interval`` seconds the process's
resident memory (RSS, /proc/self/statm), what the C allocator has handed out and holds free (glibc's
``mallinfo2``: bytes in use, free bytes kept; torch's CPU tensors live there) and what Python itself holds:
``sys.getallocatedblocks()`` (live pymalloc blocks) and the objects the garbage collector tracks. RSS that
grows while the allocator's bytes in use stay flat is memory kept by the allocator, not a leak. Memory is judged on the second half of the
run, after the sample memory and the allocators have warmed up: the least-squares slope of RSS over time,
in MB per hour with its standard error, against ``--max-slope`` (and the same slope for Python blocks, per
hour). RSS swings by tens of MB within an epoch (evaluation, checkpoint), so a 30-minute run resolves
slopes of about ±10 MB/h: the default limit is 20 MB/h. Each sample is labelled with the phase it fell in
(``setup``, ``run`` = inside ``Distiller.run``, ``after`` = artefacts); only ``run`` samples are fitted.

Writes OUT/soak.csv (one row per sample), OUT/soak.json (the summary, the run's metrics without history),
the curve as PNG (``--png``, default OUT/soak.png), and prints one verdict line; exit 1 when RSS grows.
"""

from __future__ import annotations

import argparse
import csv
import ctypes
import gc
import json
import os
import platform
import resource
import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

PAGE = os.sysconf("SC_PAGE_SIZE")
MB = 1 << 20


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]


def _mallinfo2():
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallinfo2.restype = _MallInfo2
        return libc.mallinfo2
    except (OSError, AttributeError):  # not glibc, or glibc < 2.33
        return None


MALLINFO2 = _mallinfo2()


def malloc_mb() -> tuple[float | None, float | None]:
    """(bytes in use, free bytes kept) of glibc's malloc, in MB: mmapped chunks count as in use."""
    if MALLINFO2 is None:
        return None, None
    info = MALLINFO2()
    return round((info.uordblks + info.hblkhd) / MB, 2), round(info.fordblks / MB, 2)


def rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * PAGE


class Sampler(threading.Thread):
    """Samples memory every ``interval`` seconds until stopped (a daemon: it never holds the process up)."""

    def __init__(self, interval: float):
        super().__init__(daemon=True)
        self.interval = interval
        self.rows: list[dict[str, float]] = []
        self.started = time.monotonic()
        self.phase = "setup"
        self._done = threading.Event()

    def sample(self) -> None:
        in_use, kept_free = malloc_mb()
        self.rows.append({"t_s": round(time.monotonic() - self.started, 2), "phase": self.phase,
                          "rss_mb": round(rss_bytes() / MB, 2), "malloc_in_use_mb": in_use,
                          "malloc_free_kept_mb": kept_free, "py_blocks": sys.getallocatedblocks(),
                          "gc_objects": len(gc.get_objects())})

    def run(self) -> None:
        while not self._done.wait(self.interval):
            self.sample()

    def stop(self) -> None:
        self._done.set()
        self.join()
        self.sample()


def slope_per_hour(t_s: np.ndarray, values: np.ndarray) -> tuple[float, float]:
    """Least-squares slope of ``values`` against time, per hour, and its standard error."""
    if len(t_s) < 3:
        return 0.0, float("inf")
    (slope, _), cov = np.polyfit(t_s / 3600.0, np.asarray(values, dtype=np.float64), 1, cov=True)
    return float(slope), float(np.sqrt(cov[0, 0]))


def floor_trend(t_s: np.ndarray, rss: np.ndarray, window_s: float = 60.0) -> tuple[float, float]:
    """Slope (MB/h, with its standard error) of each minute's lowest RSS over the second half: the footprint
    between an epoch's transient allocations (evaluation, checkpoint), which a leak would lift and which
    swings far less than single samples do."""
    bins = (t_s // window_s).astype(int)
    centres, floors = [], []
    for b in np.unique(bins)[:-1]:  # the last minute may be partial
        inside = bins == b
        centres.append(t_s[inside].mean())
        floors.append(rss[inside].min())
    centres, floors = np.array(centres), np.array(floors)
    half = centres >= centres[-1] / 2 if len(centres) else centres.astype(bool)
    return slope_per_hour(centres[half], floors[half])


def summarise(rows: list[dict], max_slope: float) -> dict:
    during = [r for r in rows if r["phase"] == "run"]
    t = np.array([r["t_s"] for r in during])
    rss = np.array([r["rss_mb"] for r in during])
    half = t >= t[-1] / 2
    slope, error = slope_per_hour(t[half], rss[half])
    blocks_slope, _ = slope_per_hour(t[half], np.array([r["py_blocks"] for r in during])[half])
    objects_slope, _ = slope_per_hour(t[half], np.array([r["gc_objects"] for r in during])[half])
    malloc = None
    if during[0]["malloc_in_use_mb"] is not None:
        in_use = np.array([r["malloc_in_use_mb"] for r in during])
        kept = np.array([r["malloc_free_kept_mb"] for r in during])
        in_use_slope, in_use_error = slope_per_hour(t[half], in_use[half])
        malloc = {"in_use_start": float(in_use[0]), "in_use_second_half_mean": float(in_use[half].mean()),
                  "in_use_end_of_run": float(in_use[-1]), "in_use_slope_mb_per_hour_second_half": in_use_slope,
                  "in_use_slope_standard_error": in_use_error, "free_kept_second_half_mean": float(kept[half].mean()),
                  "free_kept_end_of_run": float(kept[-1])}
    second = [r for r, h in zip(during, half) if h]
    floor_slope, floor_error = floor_trend(t, rss)
    return {
        "samples": len(rows), "seconds": float(t[-1]),
        "rss_mb": {"start": float(rss[0]), "first_half_peak": float(rss[~half].max()),
                   "second_half_min": float(rss[half].min()), "second_half_mean": float(rss[half].mean()),
                   "second_half_max": float(rss[half].max()), "end_of_run": float(rss[-1]),
                   "after_artefacts": float(rows[-1]["rss_mb"]) if rows[-1]["phase"] == "after" else None,
                   "peak": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024},
        "rss_slope_mb_per_hour_second_half": slope, "rss_slope_standard_error": error,
        "rss_floor_slope_mb_per_hour_second_half": floor_slope, "rss_floor_slope_standard_error": floor_error,
        "malloc_mb": malloc,
        "py_blocks": {"start": int(during[0]["py_blocks"]), "second_half_first": int(second[0]["py_blocks"]),
                      "end_of_run": int(during[-1]["py_blocks"]), "slope_per_hour_second_half": blocks_slope},
        "gc_objects": {"second_half_first": int(second[0]["gc_objects"]), "end_of_run": int(during[-1]["gc_objects"]),
                       "slope_per_hour_second_half": objects_slope},
        "max_slope_mb_per_hour": max_slope,
        # Too short a run (fewer than 3 whole minutes in its second half) has no floor trend: no verdict.
        "judged": bool(np.isfinite(floor_error)),
        "flat": bool(np.isfinite(floor_error) and slope <= max_slope and floor_slope <= max_slope),
    }


def plot(rows: list[dict[str, float]], summary: dict, path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = [r for r in rows if r["phase"] == "run"]
    t_min = np.array([r["t_s"] for r in rows]) / 60
    fig = Figure(figsize=(8, 4.5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    ax.plot(t_min, [r["rss_mb"] for r in rows], color="tab:blue", lw=1.2, label="RSS (MB)")
    half = t_min >= t_min[-1] / 2
    rss_half = np.array([r["rss_mb"] for r in rows])[half]
    fit = np.polyfit(t_min[half], rss_half, 1)
    ax.plot(t_min[half], np.polyval(fit, t_min[half]), color="tab:red", lw=1, ls="--",
            label=f"second-half fit: {summary['rss_slope_mb_per_hour_second_half']:+.1f} "
                  f"± {summary['rss_slope_standard_error']:.1f} MB/h")
    ax.set_xlabel("minutes")
    ax.set_ylabel("resident memory (MB)")
    ax.set_ylim(0, max(r["rss_mb"] for r in rows) * 1.15)
    ax.grid(alpha=0.3)
    if rows[0]["malloc_in_use_mb"] is not None:
        ax.plot(t_min, [r["malloc_in_use_mb"] for r in rows], color="tab:purple", lw=1, alpha=0.8,
                label="malloc in use (MB)")
    blocks = ax.twinx()
    blocks.plot(t_min, [r["py_blocks"] / 1e3 for r in rows], color="tab:green", lw=0.8, alpha=0.7,
                label="Python blocks (thousands)")
    blocks.set_ylabel("live pymalloc blocks (thousands)")
    blocks.set_ylim(0, max(r["py_blocks"] for r in rows) / 1e3 * 1.15)
    lines = ax.get_legend_handles_labels(), blocks.get_legend_handles_labels()
    ax.legend(lines[0][0] + lines[1][0], lines[0][1] + lines[1][1], loc="lower right", fontsize=8)
    ax.set_title(f"soak: demo distillation, {summary['seconds'] / 60:.0f} min, "
                 f"{summary['epochs']} epochs, 1 thread", fontsize=10)
    path.parent.mkdir(parents=True, exist_ok=True)
    from nayer_edge.core.atomic import atomic_write

    atomic_write(path, lambda handle: fig.savefig(handle, format="png", bbox_inches="tight"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30.0, help="wall-clock budget of the distillation")
    parser.add_argument("--interval", type=float, default=5.0, help="seconds between samples")
    parser.add_argument("--max-slope", type=float, default=20.0, help="MB per hour of RSS growth still called flat")
    parser.add_argument("--out", type=Path, default=Path("runs/soak"))
    parser.add_argument("--png", type=Path, default=None, help="the curve [default: OUT/soak.png]")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--memory-capacity", type=int, default=None,
                        help="synthetic samples kept [default: the demo recipe's 20000, which fills in ~35 min]")
    args = parser.parse_args()

    import torch

    from nayer_edge.demo.digits import ensure_digits_teacher
    from nayer_edge.distill.config import load_config
    from nayer_edge.distill.run import distill

    torch.set_num_threads(1)
    teacher = ensure_digits_teacher()
    # The budget, not the epoch count, ends the run (the LR schedule follows the budget, as in the demo).
    config = load_config("demo-digits", {"time_budget": args.minutes * 60, "epochs": 100_000, "threads": 1,
                                         "seed": args.seed, "memory_capacity": args.memory_capacity})
    git = _git_describe()  # now: the code this process imported, not what the tree holds when it ends
    sampler = Sampler(args.interval)
    _label_the_training_loop(sampler)
    sampler.sample()
    sampler.start()
    try:
        metrics = distill(teacher.teacher_path, out_dir=args.out / "run", config=config, eval_data=teacher.eval_path,
                          show_progress=False)
    finally:
        sampler.stop()

    summary = summarise(sampler.rows, args.max_slope)
    summary.update({"epochs": metrics["epochs"], "student_accuracy": metrics["student_accuracy"],
                    "minutes": args.minutes, "interval_s": args.interval, "python": platform.python_version(),
                    "torch": torch.__version__, "threads": torch.get_num_threads(),
                    "command": " ".join(["python", *sys.argv]), "git": git})
    args.out.mkdir(parents=True, exist_ok=True)
    from nayer_edge.core.atomic import atomic_write, atomic_write_text

    def write_csv(handle):
        writer = csv.DictWriter(handle, fieldnames=list(sampler.rows[0]))
        writer.writeheader()
        writer.writerows(sampler.rows)

    atomic_write(args.out / "soak.csv", write_csv, mode="w")
    atomic_write_text(args.out / "soak.json", json.dumps(
        {**summary, "metrics": {k: v for k, v in metrics.items() if k != "history"}}, indent=2))
    plot(sampler.rows, summary, args.png or args.out / "soak.png")
    rss = summary["rss_mb"]
    print(f"soak {summary['seconds'] / 60:.1f} min, {summary['epochs']} epochs: RSS start {rss['start']:.0f} MB, "
          f"peak {rss['peak']:.0f} MB, end of run {rss['end_of_run']:.0f} MB; second-half slope "
          f"{summary['rss_slope_mb_per_hour_second_half']:+.1f} ± {summary['rss_slope_standard_error']:.1f} MB/h "
          f"(limit {args.max_slope:g}; per-minute floor {summary['rss_floor_slope_mb_per_hour_second_half']:+.1f} ± "
          f"{summary['rss_floor_slope_standard_error']:.1f} MB/h), Python blocks {summary['py_blocks']['slope_per_hour_second_half']:+.0f}/h: "
          f"{'FLAT' if summary['flat'] else 'GROWING' if summary['judged'] else 'TOO SHORT TO JUDGE'}")
    return 0 if summary["flat"] else 1


def _label_the_training_loop(sampler: Sampler) -> None:
    """Samples taken inside Distiller.run are the ``run`` phase (the loop, with its per-epoch evaluation and
    checkpoint), those after it ``after``."""
    from nayer_edge.distill.engine import Distiller

    run = Distiller.run

    def labelled_run(self, *args, **kwargs):
        sampler.phase = "run"
        try:
            return run(self, *args, **kwargs)
        finally:
            sampler.phase = "after"

    Distiller.run = labelled_run


def _git_describe() -> str | None:
    import subprocess

    try:
        root = Path(__file__).resolve().parent.parent
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True)
        return head.stdout.strip() + ("+uncommitted changes" if dirty.stdout.strip() else "")
    except OSError:
        return None


if __name__ == "__main__":
    sys.exit(main())
