"""Speed of the CIFAR-10 ResNet-34 → ResNet-18 paper recipe on one device: fp32 vs bf16, channels_last and
torch.compile side by side, projected to a full 300-epoch run.

    python benchmarks/gpu_recipe_speed.py --out benchmarks/results-gpu-speed.json            # on a GPU
    python benchmarks/gpu_recipe_speed.py --quick --out /tmp/gpu-speed-quick.json            # on a CPU, small

The teacher is a random-weight network of the recipe's architecture (speed does not depend on its weights);
the label embeddings are one-hot (the text encoder runs once per run, not per step). Each variant builds its
own :class:`~nayer_edge.distill.engine.Distiller` and measures, after an untimed first round and KD steps (kernel
selection, ``torch.compile``):

* synthetic images/s: synthesis rounds with the adversarial term (as after warm-up), ``--rounds`` of them;
* KD images/s: student steps (teacher forward, student forward/backward, SGD), ``--kd-steps`` of them;
* seconds per epoch, through :meth:`Distiller.run` itself: one warm-up epoch (``warmup_rounds`` rounds, no
  KD, as the recipe) and one normal epoch (``rounds_per_epoch`` adversarial rounds + ``kd_steps`` steps);
* peak GPU memory (``torch.cuda.max_memory_allocated``), the sample memory included when it lives there.

The projection of the full run is ``warmup_epochs × warm-up epoch + (epochs − warmup_epochs) × epoch`` with
the recipe's schedule (per-epoch evaluation and checkpoint writing are not included), against the ≈7.2
GPU-hours the NAYER paper plots for its 300-epoch CIFAR-100 run. ``--quick`` shrinks batches
and steps so the script runs on a CPU in seconds: its figures are for this script's test and for comparing
variants on the CPU, and no projection is made from them. ``--repeats N`` interleaves the variants N times
and reports medians (on a shared machine load drifts).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PAPER_GPU_HOURS = 7.2  # NAYER, CIFAR-100 WRN-40-2 → WRN-16-2, 300 epochs (the paper's training-time figure)
GOAL_HOURS = 1.0  # issue 5: a full paper-recipe run in under one hour on one H200
CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
QUICK = {"synthesis_batch": 20, "kd_batch": 32, "g_steps": 2, "warmup_rounds": 2, "rounds_per_epoch": 1,
         "kd_steps": 4, "memory_capacity": 1000}


@dataclass(frozen=True)
class Variant:
    amp: str
    channels_last: bool
    compile: bool

    @property
    def name(self) -> str:
        return "+".join([self.amp] + (["channels_last"] if self.channels_last else [])
                        + (["compile"] if self.compile else []))


def parse_variant(text: str) -> Variant:
    parts = text.split("+")
    unknown = set(parts[1:]) - {"channels_last", "compile"}
    if parts[0] not in ("fp32", "bf16", "fp16") or unknown:
        raise argparse.ArgumentTypeError(f"variant {text!r}: fp32|bf16|fp16, optionally +channels_last, +compile")
    return Variant(parts[0], "channels_last" in parts, "compile" in parts)


GPU_VARIANTS = "fp32,fp32+channels_last,bf16,bf16+channels_last,bf16+channels_last+compile"
CPU_VARIANTS = "fp32,bf16"


def projection(recipe, warm_epoch_s: float, epoch_s: float) -> dict:
    """The recipe's whole schedule from one warm-up and one normal epoch, against the paper and the goal."""
    hours = (recipe.warmup_epochs * warm_epoch_s + (recipe.epochs - recipe.warmup_epochs) * epoch_s) / 3600
    return {"projected_full_run_h": round(hours, 2), "paper_over_projected": round(PAPER_GPU_HOURS / hours, 1),
            "under_one_hour": hours < GOAL_HOURS}


def median_row(rows: list[dict]) -> dict:
    """The first row with every numeric measurement replaced by its median over the repeats."""
    import statistics

    out = dict(rows[0])
    for key, value in rows[0].items():
        if isinstance(value, float):
            out[key] = round(statistics.median(r[key] for r in rows), 2)
    out["losses_finite"] = all(r["losses_finite"] for r in rows)
    if "projected_full_run_h" in out:
        hours = out["projected_full_run_h"]
        out.update({"paper_over_projected": round(PAPER_GPU_HOURS / hours, 1), "under_one_hour": hours < GOAL_HOURS})
    return out


def synchronize(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(variant: Variant, args: argparse.Namespace, device) -> dict:
    import torch

    from nayer_edge.core.normalize import NormalizedModel
    from nayer_edge.distill.config import load_config
    from nayer_edge.distill.engine import Distiller
    from nayer_edge.distill.run_state import RunState
    from nayer_edge.synthesis.embeddings import onehot_embeddings
    from nayer_edge.zoo import create_model

    recipe = load_config(args.recipe)
    overrides = {**(QUICK if args.quick else {}), "embedding": "onehot", "time_budget": None,
                 "device": device.type, "amp": variant.amp, "channels_last": variant.channels_last,
                 "compile": variant.compile, "student": args.student or recipe.student,
                 "kd_during_warmup": False, "warmup_epochs": 1, "epochs": 2}
    config = load_config(args.recipe, overrides)
    shape, classes = (3, args.image_size, args.image_size), args.classes
    torch.manual_seed(0)
    teacher = create_model(args.teacher, num_classes=classes, in_channels=3, input_size=args.image_size)
    student = create_model(config.student, num_classes=classes, in_channels=3, input_size=args.image_size)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    d = Distiller(NormalizedModel(teacher, CIFAR_MEAN, CIFAR_STD), NormalizedModel(student, CIFAR_MEAN, CIFAR_STD),
                  onehot_embeddings(classes), config, shape, classes, device)

    start = time.perf_counter()
    d.generator = d.build_generator()
    d.synthesize(adversarial=False)
    d.synthesize(adversarial=True)  # the student in eval mode (compiled separately from training mode)
    for _ in range(3):
        d.kd_step()
    synchronize(device)
    first_s = time.perf_counter() - start

    start = time.perf_counter()
    for _ in range(args.rounds):
        d.synthesize(adversarial=True)
    synchronize(device)
    synth_s = time.perf_counter() - start
    start = time.perf_counter()
    losses = [d.kd_step() for _ in range(args.kd_steps)]
    synchronize(device)
    kd_s = time.perf_counter() - start
    assert all(torch.isfinite(v) for v in losses), "non-finite KD loss"

    # Two epochs of the real loop: the warm-up one (synthesis only) and a normal one.
    d.state, d.generator = RunState(), None
    state = d.run()
    warm_epoch_s = state.history[0]["wall_seconds"]
    epoch_s = state.history[1]["wall_seconds"] - warm_epoch_s
    row = {
        "variant": variant.name, "amp": d.amp.precision, "channels_last": d.channels_last, "compile": variant.compile,
        "first_round_and_steps_s": round(first_s, 2),
        "synthetic_images_per_s": round(args.rounds * config.synthesis_batch / synth_s, 1),
        "generator_steps_per_s": round(args.rounds * config.g_steps / synth_s, 2),
        "kd_images_per_s": round(args.kd_steps * config.kd_batch / kd_s, 1),
        "warmup_epoch_s": round(warm_epoch_s, 2), "epoch_s": round(epoch_s, 2),
        "memory_device": str(d.memory.device),
        "peak_gpu_memory_gib": (round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
                                if device.type == "cuda" else None),
        "losses_finite": all(v == v for row in state.history for k, v in row.items() if k.startswith("loss_")),
    }
    if not args.quick:
        row.update(projection(recipe, warm_epoch_s, epoch_s))
    del d
    return row


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="cifar10-resnet34-resnet18")
    parser.add_argument("--teacher", default="resnet34", help="zoo architecture of the random-weight teacher")
    parser.add_argument("--student", default=None, help="zoo student [default: the recipe's]")
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--image-size", type=int, default=32, help="H = W of the 3-channel images")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--variants", default=None,
                        help=f"comma-separated [default: {GPU_VARIANTS} on a GPU, {CPU_VARIANTS} on the CPU]")
    parser.add_argument("--rounds", type=int, default=None, help="timed adversarial synthesis rounds [5; quick 2]")
    parser.add_argument("--kd-steps", type=int, default=None, help="timed KD steps [100; quick 4]")
    parser.add_argument("--quick", action="store_true", help="small batches and few steps (a CPU smoke run)")
    parser.add_argument("--repeats", type=int, default=1, help="interleaved repeats; medians are reported")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads [default: torch's]")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results-gpu-speed.json")
    args = parser.parse_args(argv)

    import torch

    from nayer_edge.distill.performance import resolve_device

    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    args.rounds = args.rounds or (2 if args.quick else 5)
    args.kd_steps = args.kd_steps or (4 if args.quick else 100)
    try:
        variants = [parse_variant(v) for v in (args.variants or (GPU_VARIANTS if device.type == "cuda"
                                                                 else CPU_VARIANTS)).split(",")]
    except argparse.ArgumentTypeError as err:
        parser.error(str(err))
    runs: dict[str, list[dict]] = {v.name: [] for v in variants}
    for repeat in range(args.repeats):  # interleaved, so that load drift touches every variant alike
        for variant in variants:
            runs[variant.name].append(measure(variant, args, device))
            print(f"repeat {repeat + 1}/{args.repeats}", json.dumps(runs[variant.name][-1]), file=sys.stderr, flush=True)
    rows = [median_row(r) for r in runs.values()]

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    print(f"\n{args.recipe}: {args.teacher} → {args.student or 'recipe student'} on {name}"
          + (" — QUICK settings (not the recipe's batches)" if args.quick else ""))
    print("| variant | synthetic img/s | KD img/s | warm-up epoch s | epoch s | peak GPU GiB | projected 300 ep. h |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['variant']} | {r['synthetic_images_per_s']:.1f} | {r['kd_images_per_s']:.1f} | "
              f"{r['warmup_epoch_s']:.2f} | {r['epoch_s']:.2f} | {r['peak_gpu_memory_gib'] or '—'} | "
              f"{r.get('projected_full_run_h', '—')} |")
    record = {
        "command": "python benchmarks/gpu_recipe_speed.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "device": name, "device_type": device.type, "quick": args.quick,
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__,
                    "cuda": torch.version.cuda, "load_average_1min_at_end": os.getloadavg()[0]},
        "settings": {"recipe": args.recipe, "teacher": args.teacher, "student": args.student,
                     "image_size": args.image_size, "rounds": args.rounds, "repeats": args.repeats,
                     "kd_steps": args.kd_steps, "quick_overrides": QUICK if args.quick else None},
        "paper_gpu_hours": PAPER_GPU_HOURS, "goal_hours": GOAL_HOURS, "variants": rows,
        "runs": runs if args.repeats > 1 else None,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    from nayer_edge.core.atomic import atomic_write_text

    atomic_write_text(args.out, json.dumps(record, indent=2))
    print(f"written {args.out}")
    return record


if __name__ == "__main__":
    main()
