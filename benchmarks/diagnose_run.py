"""Where a distilled student on an ``eval_teachers.py`` photo teacher falls short: per class, and by BatchNorm.

For a finished ``distill`` run folder and its teacher folder, on the teacher's held-out real images:

- teacher and student top-1 per class, and the teacher–student top-1 agreement;
- how class-conditional the run's synthetic memory is (the teacher's top-1 against the target labels);
- a *diagnostic only* (real images, so never a method): the student's top-1 after its BatchNorm running
  statistics are re-estimated on real crops of the teacher's *training* regions (never the held-out ones).
  A large rise means the gap is the student's BatchNorm statistics, learnt on synthetic images, rather than
  what its weights learnt.

    .venv/bin/python benchmarks/diagnose_run.py --run runs/x --teacher runs/teachers/photo64 \
        --student benchmarks/students.py:resnet_w16
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import eval_teachers  # noqa: E402 - after the repository is put on sys.path

from nayer_edge.inputs.evaldata import load_eval_data  # noqa: E402 - after the repository is put on sys.path
from nayer_edge.zoo.registry import build_student  # noqa: E402 - after the repository is put on sys.path


def predictions(model: torch.nn.Module, x: torch.Tensor, batch: int = 256) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([model(x[i:i + batch]).argmax(1) for i in range(0, len(x), batch)])


@torch.no_grad()
def recalibrate_bn(student: torch.nn.Module, task: eval_teachers.Task, mean: list[float], std: list[float],
                   batches: int = 40) -> None:
    """Re-estimates every BatchNorm's running mean/var (cumulative average) on real training crops."""
    for module in student.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
            module.momentum = None
    student.train()
    rng = torch.Generator().manual_seed(123)
    for _ in range(batches):
        x, _ = task.sample(rng)
        student(eval_teachers.normalise(x, mean, std))
    student.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True)
    parser.add_argument("--teacher", type=Path, required=True)
    parser.add_argument("--student", default="benchmarks/students.py:resnet_w16")
    args = parser.parse_args()

    info = json.loads((args.teacher / "info.json").read_text())
    spec = eval_teachers.TEACHERS[info["name"]]
    mean, std, classes = info["mean"], info["std"], info["classes"]
    teacher = torch.jit.load(str(args.teacher / "teacher.pt")).eval()
    x_held, y_held = load_eval_data(args.teacher / "heldout.npz", input_shape=spec.input_shape, classes=None)
    x_held = eval_teachers.normalise(x_held, mean, std)
    student = build_student(args.student, num_classes=len(classes), in_channels=spec.input_shape[0],
                            input_size=spec.input_shape[1])
    student.load_state_dict(torch.load(args.run / "student.pt", weights_only=True))
    student.eval()

    t_pred, s_pred = predictions(teacher, x_held), predictions(student, x_held)
    print(f"held-out: teacher {float((t_pred == y_held).float().mean()):.3f}, student "
          f"{float((s_pred == y_held).float().mean()):.3f}, agreement {float((t_pred == s_pred).float().mean()):.3f}")
    for k, name in enumerate(classes):
        mask = y_held == k
        print(f"  {name:>16}: teacher {float((t_pred[mask] == k).float().mean()):.2f}  student "
              f"{float((s_pred[mask] == k).float().mean()):.2f}  (n={int(mask.sum())})")
    memory = args.run / "samples.npz"
    if memory.exists():
        with np.load(memory) as data:
            keys = list(data.keys())
            images = torch.from_numpy(data[keys[0]]).float()
            labels = torch.from_numpy(data[keys[1]]).long()
        if images.max() > 1.5:
            images = images / 255
        m_pred = predictions(teacher, eval_teachers.normalise(images, mean, std))
        print(f"memory ({keys[0]}, {len(images)}): teacher = target on {float((m_pred == labels).float().mean()):.2f}; "
              f"teacher's classes {np.bincount(m_pred.numpy(), minlength=len(classes)).tolist()}")
    task = eval_teachers.photo_task(spec, eval_teachers.load_photos(), int(info["seed"]))
    recalibrate_bn(student, task, mean, std)
    r_pred = predictions(student, x_held)
    print(f"diagnostic, BatchNorm re-estimated on real training crops: student {float((r_pred == y_held).float().mean()):.3f}")


if __name__ == "__main__":
    main()
