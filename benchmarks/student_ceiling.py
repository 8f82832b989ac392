"""How far can the student get with the real training images? The bound data-free distillation works under.

For a teacher made by ``benchmarks/eval_teachers.py``, the student is distilled from the teacher with the
engine's own KD loss, optimizer and temperature (``nayer_edge.distill.config`` defaults: SGD lr 0.2 cosine, momentum
0.9, KL at T = 20), but on random crops of the *real training regions* of the photos (the ones the teacher was
trained on, with its augmentation) instead of synthetic samples. Student top-1 on the same held-out real images
as every other figure, at a few step counts. Command::

    .venv/bin/python benchmarks/student_ceiling.py --teacher runs/teachers/photo64 \
        --student benchmarks/students.py:resnet_w16 --steps 500 1500 3000 --batch 64

No test set is used to choose anything: the step counts are given, and each is its own fresh run.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import eval_teachers  # noqa: E402 - after the repository is put on sys.path

from nayer_edge.distill.config import load_config  # noqa: E402 - after the repository is put on sys.path
from nayer_edge.distill.losses import kd_divergence  # noqa: E402 - after the repository is put on sys.path
from nayer_edge.inputs.evaldata import load_eval_data  # noqa: E402 - after the repository is put on sys.path
from nayer_edge.zoo.registry import build_student  # noqa: E402 - after the repository is put on sys.path


def distil_on_real(teacher: torch.nn.Module, student: torch.nn.Module, task: eval_teachers.Task, steps: int,
                   batch: int, mean: list[float], std: list[float], seed: int) -> float:
    """Trains ``student`` for ``steps`` KD steps on real training crops; returns the seconds it took."""
    config = load_config(None, {})
    rng = torch.Generator().manual_seed(seed + 7_000)
    optimizer = torch.optim.SGD(student.parameters(), lr=config.lr, momentum=config.momentum,
                                weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps, eta_min=config.lr_min)
    start = time.perf_counter()
    for _ in range(steps):
        x, _labels = task.sample(rng)  # the teacher's own augmented batch size; cut or repeat to ``batch``
        while len(x) < batch:
            more, _ = task.sample(rng)
            x = torch.cat([x, more])
        x = eval_teachers.normalise(x[:batch], mean, std)
        with torch.no_grad():
            teacher_logits = teacher(x)
        student.train()
        loss = kd_divergence(student(x), teacher_logits, config.temperature)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", type=Path, required=True, help="a folder made by eval_teachers.py")
    parser.add_argument("--student", default="benchmarks/students.py:resnet_w16")
    parser.add_argument("--steps", type=int, nargs="+", default=[500, 1500, 3000])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="write the rows as JSON here")
    args = parser.parse_args()

    info = json.loads((args.teacher / "info.json").read_text())
    spec = eval_teachers.TEACHERS[info["name"]]
    if spec.kind != "photo":
        raise SystemExit("student_ceiling.py: only the photo teachers have a training region to sample")
    task = eval_teachers.photo_task(spec, eval_teachers.load_photos(), int(info["seed"]))
    mean, std = info["mean"], info["std"]
    teacher = torch.jit.load(str(args.teacher / "teacher.pt")).eval()
    x_held, y_held = load_eval_data(args.teacher / "heldout.npz", input_shape=spec.input_shape, classes=None)
    x_held = eval_teachers.normalise(x_held, mean, std)
    teacher_top1 = eval_teachers.accuracy(teacher, x_held, y_held)

    rows = []
    for steps in args.steps:
        torch.manual_seed(args.seed)
        student = build_student(args.student, num_classes=len(info["classes"]), in_channels=spec.input_shape[0],
                                input_size=spec.input_shape[1])
        seconds = distil_on_real(teacher, student, task, steps, args.batch, mean, std, args.seed)
        top1 = eval_teachers.accuracy(student, x_held, y_held)
        rows.append({"teacher": info["name"], "student": args.student, "steps": steps, "batch": args.batch,
                     "seconds": round(seconds, 1), "teacher_top1": teacher_top1, "student_top1": top1,
                     "of_teacher": top1 / teacher_top1})
        print(f"{info['name']}: {steps} KD steps x {args.batch} real crops, {seconds:.0f} s: student {top1:.3f} "
              f"= {100 * top1 / teacher_top1:.1f} % of the teacher ({teacher_top1:.3f})", flush=True)
    if args.out is not None:
        args.out.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
