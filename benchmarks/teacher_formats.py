"""Teachers in the formats the field has them (issue 17): one real-photo teacher saved as ONNX with its BatchNorm
kept, as ONNX as most exports leave it (BatchNorm folded into the convolutions), and a Hugging Face
``ResNetForImageClassification`` folder; each then ``compress``-ed for ``cpu-x86`` with only the file, the
held-out real images and a time budget, as a user types it::

    .venv/bin/python benchmarks/teacher_formats.py --out runs/formats --budget 600

The photo32 task of ``benchmarks/eval_teachers.py`` (10 photo classes, training crops from the left 70 % of each
photo, held-out crops from the rest). The ONNX files carry the classes, mean and std as metadata properties
(``classes``, ``mean``, ``std``: JSON), the Hugging Face folder as ``id2label`` and a ``preprocessor_config.json``.
Writes ``results.json`` (after every run) and prints a Markdown table. ``--formats`` picks some.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import eval_teachers as et

REPO = Path(__file__).resolve().parent.parent
STUDENT = f"{REPO / 'benchmarks' / 'students.py'}:resnet_w16"
FORMATS = ("onnx-bn", "onnx-folded", "huggingface")


def export_onnx_teacher(model: nn.Module, path: Path, task: et.Task, keep_bn: bool) -> None:
    onnx = __import__("onnx")
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(model.eval(), (torch.zeros(1, 3, 32, 32),), str(path), dynamo=False, input_names=["image"],
                          output_names=["logits"], opset_version=17,
                          dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}},
                          do_constant_folding=not keep_bn,
                          training=torch.onnx.TrainingMode.PRESERVE if keep_bn else torch.onnx.TrainingMode.EVAL)
    proto = onnx.load(str(path))
    for key, value in (("classes", task.classes), ("mean", task.mean), ("std", task.std)):
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, json.dumps(value)
    onnx.save(proto, str(path))


def train_hf_teacher(task: et.Task, folder: Path, seed: int, steps: int) -> float:
    """A small ResNetForImageClassification built from a config and trained on the photo crops."""
    from transformers import ResNetConfig, ResNetForImageClassification

    torch.manual_seed(seed)
    config = ResNetConfig(num_channels=3, embedding_size=32, hidden_sizes=[32, 64, 128], depths=[1, 1, 1],
                          layer_type="basic", downsample_in_first_stage=False, num_labels=len(task.classes),
                          id2label=dict(enumerate(task.classes)),
                          label2id={c: i for i, c in enumerate(task.classes)})
    model = ResNetForImageClassification(config)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: et.cosine_lr(s, steps, max(1, steps // 20)))
    rng = torch.Generator().manual_seed(seed + 3_000)
    for _ in range(steps):
        model.train()
        x, y = task.sample(rng)
        loss = F.cross_entropy(model(pixel_values=et.normalise(x, task.mean, task.std)).logits, y,
                               label_smoothing=0.1)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
    model.eval()
    model.save_pretrained(str(folder), safe_serialization=True)
    (folder / "preprocessor_config.json").write_text(json.dumps({
        "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True, "image_mean": task.mean,
        "image_std": task.std, "size": {"height": 32, "width": 32}}, indent=2))

    class Logits(nn.Module):
        def forward(self, x):
            return model(pixel_values=x).logits

    return et.accuracy(Logits(), et.normalise(task.x_heldout, task.mean, task.std), task.y_heldout)


def loaded_top1(path: Path, heldout: Path) -> float:
    """The teacher as nayer-edge loads it, on the held-out real images."""
    from nayer_edge.inputs.evaldata import load_eval_data
    from nayer_edge.inputs.teacher import load_teacher

    teacher = load_teacher(path)
    x, y = load_eval_data(heldout, input_shape=teacher.spec.input_shape, classes=list(teacher.spec.classes))
    with torch.no_grad():
        predictions = torch.cat([teacher(x[i:i + 256]).argmax(1) for i in range(0, len(x), 256)])
    return float((predictions == y).float().mean())


def compress(teacher: Path, heldout: Path, out: Path, budget: float) -> dict:
    command = [sys.executable, "-m", "nayer_edge", "compress", str(teacher), "--target", "cpu-x86",
               "--eval-data", str(heldout), "--student", STUDENT, "--time-budget", f"{budget:g}",
               "--out", str(out), "--json"]
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    wall = time.perf_counter() - started
    row: dict = {"wall_seconds": round(wall, 1), "returncode": result.returncode}
    if result.stdout.strip().startswith("{"):
        row["metrics"] = json.loads(result.stdout)
    else:
        row["error"] = (result.stderr.strip().splitlines() or ["failed"])[-1]
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/formats"))
    parser.add_argument("--budget", type=float, default=600.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--formats", nargs="+", choices=FORMATS, default=list(FORMATS))
    parser.add_argument("--teacher-steps", type=int, default=None, help="training steps (default: eval_teachers')")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    spec = et.TEACHERS["photo32"]
    task = et.photo_task(spec, et.load_photos(), args.seed)
    heldout = args.out / "heldout.npz"
    et.save_npz(heldout, task.x_heldout, task.y_heldout)
    steps = args.teacher_steps or spec.steps
    files: dict[str, Path] = {}
    trained: dict[str, float] = {}
    if any(f.startswith("onnx") for f in args.formats):
        model, _ = et.train(spec, task, args.seed, steps)
        trained["photo32 ResNet (eager)"] = et.accuracy(model, et.normalise(task.x_heldout, task.mean, task.std),
                                                         task.y_heldout)
        for name, keep in (("onnx-bn", True), ("onnx-folded", False)):
            files[name] = args.out / f"teacher-{name}.onnx"
            export_onnx_teacher(model, files[name], task, keep_bn=keep)
    if "huggingface" in args.formats:
        files["huggingface"] = args.out / "teacher-hf"
        files["huggingface"].mkdir(exist_ok=True)
        trained["ResNetForImageClassification"] = train_hf_teacher(task, files["huggingface"], args.seed, steps)
    results_path = args.out / "results.json"
    rows = []
    for name in args.formats:
        row = {"format": name, "teacher_file": str(files[name]), "budget": args.budget, "seed": args.seed,
               "teacher_top1_loaded": loaded_top1(files[name], heldout), "trained_top1": trained}
        row.update(compress(files[name], heldout, args.out / f"run-{name}", args.budget))
        rows.append(row)
        results_path.write_text(json.dumps(rows, indent=2))
        print(json.dumps({k: v for k, v in row.items() if k != "metrics"}), flush=True)
    print("\n| format | teacher top-1 (as loaded) | deployed student top-1 | of the teacher | wall |")
    print("|---|---:|---:|---:|---:|")
    for row in rows:
        metrics = row.get("metrics") or {}
        student = metrics.get("deployed_accuracy", metrics.get("student_accuracy"))
        teacher = row["teacher_top1_loaded"]
        share = f"{student / teacher:.1%}" if isinstance(student, float) and teacher else "—"
        print(f"| {row['format']} | {teacher:.3f} | {student if student is not None else row.get('error')} | "
              f"{share} | {row['wall_seconds']} s |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
