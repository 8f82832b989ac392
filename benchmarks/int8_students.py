"""INT8 against FP32 latency on onnxruntime CPU for the students people ship: every zoo student and the user's kind
of student (``benchmarks/students.py:resnet_w16``, 78 k parameters), at batch 1 and 32, side by side in one run.

    .venv/bin/python benchmarks/int8_students.py --threads 2 --rounds 3 --out runs/bench-int8-students/results.json

Each student gets random weights with non-trivial BatchNorm statistics (this measures speed, not accuracy), is
exported as ``nayer-edge`` exports a student (input normalisation folded, dynamic batch) and quantized with
``quantize_static_ort`` (the library's U8S8 QDQ layout) on the same uniform random calibration images. Variants:

  fp32              the FP32 graph.
  int8              the library's INT8 graph.
  int8-float-stem   the same with the first convolution left in float (``nodes_to_exclude``): the stem has 1-3
                    input channels, too few for the integer kernels to pay, and keeping it float moves the
                    QuantizeLinear from the image to the stem's output.

Latency: ``onnx_latency`` p50, interleaved rounds (every variant of every student once per round, so drift hits all
alike), median over rounds. The op types of the graph onnxruntime runs are recorded for each variant.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

ZOO = ["cnn_tiny", "cnn_small", "wrn16_1", "wrn16_2", "wrn40_1", "resnet18", "mobilenetv2", "vgg11"]
USER = "resnet_w16"


def build(name: str, shape: tuple[int, int, int]):
    import torch

    if name == USER:
        from students import resnet_w16

        model = resnet_w16(10, shape[0])
    else:
        from nayer_edge.zoo import create_model

        model = create_model(name, num_classes=10, in_channels=shape[0], input_size=shape[1])
    model.train()
    with torch.no_grad():  # non-trivial BN running statistics
        for _ in range(3):
            model(torch.rand(32, *shape))
    return model.eval()


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--students", nargs="+", default=[USER, *ZOO])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=1.0, help="timed seconds per variant per round")
    parser.add_argument("--out", type=Path, default=Path("runs/bench-int8-students/results.json"))
    args = parser.parse_args()

    import onnxruntime
    import torch

    from nayer_edge.core.atomic import atomic_write_text
    from nayer_edge.deploy.latency import onnx_latency
    from nayer_edge.onnx_model.exporter import export_onnx
    from nayer_edge.quantize.ort import int8_node_summary, quantize_static_ort

    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    shape = (3, 32, 32)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="nayer-int8-students-"))  # the ONNX files; removed at the end
    calibration = np.random.default_rng(0).random((256, *shape), dtype=np.float32)
    paths: dict[tuple[str, str], Path] = {}
    params: dict[str, int] = {}
    for name in args.students:
        model = build(name, shape)
        params[name] = sum(p.numel() for p in model.parameters())
        fp32 = export_onnx(model, work / f"{name}.fp32.onnx", input_shape=shape, mean=[0.45, 0.38, 0.34],
                           std=[0.28, 0.23, 0.24])
        paths[name, "fp32"] = fp32
        paths[name, "int8"] = quantize_static_ort(fp32, work / f"{name}.int8.onnx", calibration)
        paths[name, "int8-float-stem"] = quantize_static_ort(fp32, work / f"{name}.int8-float-stem.onnx", calibration,
                                                             float_stem=True)
    summaries = {f"{n}/{v}": int8_node_summary(p, threads=args.threads) for (n, v), p in paths.items()}

    timings: dict[str, list[float]] = {}
    for r in range(args.rounds):
        for batch in args.batches:
            for (name, variant), path in paths.items():
                stats = onnx_latency(path, batch, threads=args.threads, seed=r, min_seconds=args.seconds)
                timings.setdefault(f"{name}/{variant}/{batch}", []).append(stats.p50_ms)
        print(f"round {r + 1}/{args.rounds} done", flush=True)

    rows = []
    for name in args.students:
        for batch in args.batches:
            fp32 = statistics.median(timings[f"{name}/fp32/{batch}"])
            row = {"student": name, "params": params[name], "batch": batch, "fp32_ms": fp32}
            for variant in ("int8", "int8-float-stem"):
                p50 = statistics.median(timings[f"{name}/{variant}/{batch}"])
                row[f"{variant}_ms"], row[f"{variant}_ratio"] = p50, p50 / fp32
            rows.append(row)
    print(f"\nonnxruntime {onnxruntime.__version__} CPU, {args.threads} threads, {cpu_name()}, p50 median of "
          f"{args.rounds} interleaved rounds\n")
    print("| student | params | batch | FP32 ms | INT8 ms | INT8/FP32 | INT8 float stem ms | ratio |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        print(f"| {row['student']} | {row['params']:,} | {row['batch']} | {row['fp32_ms']:.3f} | {row['int8_ms']:.3f} | "
              f"{row['int8_ratio']:.2f} | {row['int8-float-stem_ms']:.3f} | {row['int8-float-stem_ratio']:.2f} |")
    result = {"onnxruntime": onnxruntime.__version__, "threads": args.threads, "cpu": cpu_name(),
              "rounds": args.rounds, "rows": rows, "timings": timings, "node_summary": summaries}
    atomic_write_text(args.out, json.dumps(result, indent=1))
    shutil.rmtree(work, ignore_errors=True)
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
