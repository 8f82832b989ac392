"""Throughput of one process against two torchrun processes (gloo) on this CPU, measured side by side.

    python benchmarks/distributed_throughput.py --repeats 3 --out benchmarks/results-distributed.json

Three set-ups run the same engine code (:class:`nayer_edge.distill.engine.Distiller`) on the same work, the
demo recipe's shapes (random-weight ``wrn16_1`` teacher on 1×16×16, ``cnn_tiny`` student, synthesis batch
200 with 20 generator steps, KD batch 256):

* ``1 proc × 1 thread``  — the baseline for scaling;
* ``1 proc × 2 threads`` — one process using both cores through intra-op threads;
* ``2 procs × 1 thread`` — ``torchrun --nproc-per-node 2``: each rank synthesises half of every round and
  trains on half of every KD batch (DDP, gradients averaged over gloo).

The fair comparison is ``2 procs × 1 thread`` against ``1 proc × 2 threads``: both use two cores for the
same total work. Against ``1 proc × 1 thread`` the ratio is the scaling efficiency of adding a core by
adding a process. The set-ups are interleaved ``--repeats`` times (machine load drifts alike for all) and
the median is reported: synthetic images per second (synthesis rounds with the adversarial term, as after
warm-up; the all-gather into every rank's memory included) and KD samples per second (teacher forward,
student forward/backward, DDP all-reduce, SGD step).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SETUPS = {  # name: (processes, threads per process)
    "1 proc × 1 thread": (1, 1),
    "1 proc × 2 threads": (1, 2),
    "2 procs × 1 thread": (2, 1),
}


def worker(args: argparse.Namespace) -> None:
    """One measurement (run in a fresh process, or in each torchrun rank)."""
    import torch

    from nayer_edge.core.normalize import NormalizedModel
    from nayer_edge.distill.config import load_config
    from nayer_edge.distill.engine import Distiller
    from nayer_edge.distill.run import distributed
    from nayer_edge.synthesis.embeddings import onehot_embeddings
    from nayer_edge.zoo import create_model

    torch.set_num_threads(args.threads)
    launch = distributed.launch_env()
    ctx = distributed.init(launch, torch.device("cpu"))
    try:
        shape = (1, 16, 16)
        config = load_config("demo-digits", {"seed": 0, "time_budget": None, "memory_capacity": 20000})
        torch.manual_seed(0)
        teacher = create_model(args.teacher, num_classes=10, in_channels=1, input_size=16)
        student = create_model(config.student, num_classes=10, in_channels=1, input_size=16)
        torch.manual_seed(distributed.rank_seed(0, ctx.rank))
        d = Distiller(NormalizedModel(teacher, (0.5,), (0.5,)), NormalizedModel(student, (0.5,), (0.5,)),
                      onehot_embeddings(10), config, shape, 10, torch.device("cpu"), dist=ctx)
        d.generator = d.build_generator()
        d.synthesize(adversarial=True)  # warm-up: first calls allocate and pick kernels
        for _ in range(3):
            d.kd_step()

        ctx.barrier()
        start = time.perf_counter()
        for _ in range(args.rounds):
            d.synthesize(adversarial=True)
        ctx.barrier()
        synth_s = time.perf_counter() - start
        start = time.perf_counter()
        for _ in range(args.kd_steps):
            d.kd_step()
        ctx.barrier()
        kd_s = time.perf_counter() - start
        if ctx.is_main:
            print(json.dumps({
                "synthetic_images_per_s": args.rounds * config.synthesis_batch / synth_s,
                "kd_samples_per_s": args.kd_steps * config.kd_batch / kd_s,
                "synthesis_seconds": synth_s, "kd_seconds": kd_s, "world_size": ctx.world_size,
                "synthesis_batch": config.synthesis_batch, "g_steps": config.g_steps, "kd_batch": config.kd_batch,
            }), flush=True)
    finally:
        distributed.shutdown(ctx)


def measure(procs: int, threads: int, args: argparse.Namespace) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONWARNINGS": "ignore"}
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        env.pop(key, None)
    script = [str(Path(__file__).resolve()), "--worker", "--threads", str(threads), "--rounds", str(args.rounds),
              "--kd-steps", str(args.kd_steps), "--teacher", args.teacher]
    if procs == 1:
        command = [sys.executable, *script]
    else:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(procs),
                   *script]
    result = subprocess.run(command, env=env, capture_output=True, text=True, cwd=ROOT)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=4, help="synthesis rounds timed per measurement")
    parser.add_argument("--kd-steps", type=int, default=60, help="KD steps timed per measurement")
    parser.add_argument("--teacher", default="wrn16_1", help="zoo architecture of the random-weight teacher")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results-distributed.json")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return

    runs: dict[str, list[dict]] = {name: [] for name in SETUPS}
    for repeat in range(args.repeats):  # interleaved, so that load drift touches every set-up alike
        for name, (procs, threads) in SETUPS.items():
            runs[name].append(measure(procs, threads, args))
            print(f"repeat {repeat + 1}/{args.repeats} {name}: "
                  f"{runs[name][-1]['synthetic_images_per_s']:.0f} img/s, "
                  f"{runs[name][-1]['kd_samples_per_s']:.0f} KD samples/s", file=sys.stderr, flush=True)

    summary = {}
    for name, rows in runs.items():
        summary[name] = {key: statistics.median(r[key] for r in rows)
                         for key in ("synthetic_images_per_s", "kd_samples_per_s")}
    base = summary["1 proc × 1 thread"]
    fair = summary["1 proc × 2 threads"]
    print("\n| set-up | synthetic images/s | KD samples/s | synthesis ×, vs 1×1 | KD ×, vs 1×1 |")
    print("|---|---|---|---|---|")
    for name, row in summary.items():
        print(f"| {name} | {row['synthetic_images_per_s']:.0f} | {row['kd_samples_per_s']:.0f} | "
              f"{row['synthetic_images_per_s'] / base['synthetic_images_per_s']:.2f} | "
              f"{row['kd_samples_per_s'] / base['kd_samples_per_s']:.2f} |")
    two = summary["2 procs × 1 thread"]
    print(f"\nfair comparison (two cores each): 2 procs × 1 thread / 1 proc × 2 threads = "
          f"{two['synthetic_images_per_s'] / fair['synthetic_images_per_s']:.2f}× synthesis, "
          f"{two['kd_samples_per_s'] / fair['kd_samples_per_s']:.2f}× KD")
    import torch

    record = {
        "command": "python benchmarks/distributed_throughput.py " + " ".join(sys.argv[1:]),
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__,
                    "load_average_1min_at_end": os.getloadavg()[0]},
        "settings": {"rounds": args.rounds, "kd_steps": args.kd_steps, "repeats": args.repeats,
                     "teacher": args.teacher, "recipe": "demo-digits"},
        "median": summary, "runs": runs,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    from nayer_edge.core.atomic import atomic_write_text

    atomic_write_text(args.out, json.dumps(record, indent=2))
    print(f"written {args.out}")


if __name__ == "__main__":
    main()
