"""INT8 vs FP32 on onnxruntime CPU, side by side in one run: CIFAR ResNet-18 at batch 32.

    python benchmarks/int8_latency.py --threads 2 --rounds 3 --out runs/bench-int8/results.json

Variants (all from the same FP32 export, calibrated on the same uniform random images):
  fp32            the FP32 graph as exported (static batch 32).
  ort-qdq-u8s8    ``quantize_static_ort``: onnxruntime's static quantizer, QDQ format, U8 asymmetric
                  activations, S8 per-channel weights (the library default).
  ort-qdq-s8s8    the same quantizer with symmetric S8 activations (isolates the U8-vs-S8 question).
  trt-sym-inputs  the TensorRT-style layout the issue measured: symmetric (zero point 0) S8 Q/DQ on the
                  *inputs* of every Conv/Gemm and on both inputs of every residual Add, per-channel S8
                  narrow-range weights behind a DequantizeLinear, nothing on op outputs.
Latency is timed with ``onnx_latency`` in interleaved rounds (every variant once per round) so drift hits
all alike; the table reports the median over rounds of p50/p90/throughput. Parity (cosine, top-1
agreement vs FP32 logits) is measured on random images that were not used for calibration.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=2.0, help="timed seconds per variant per round")
    parser.add_argument("--calibration", type=int, default=256, help="number of calibration images")
    parser.add_argument("--samples", type=Path, default=None,
                        help="calibrate on a run's samples.npz instead (must be 3x32x32)")
    parser.add_argument("--out", type=Path, default=Path("runs/bench-int8/results.json"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import torch

    from nayer_edge.core.atomic import atomic_write_text
    from nayer_edge.deploy.latency import onnx_latency
    from nayer_edge.onnx_model.exporter import compare_logits, export_onnx, onnx_session, run_session
    from nayer_edge.quantize.ort import int8_node_summary, quantize_static_ort
    from nayer_edge.quantize.qdq_tensorrt import quantize_tensorrt
    from nayer_edge.zoo import create_model

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    shape = (3, 32, 32)
    model = create_model("resnet18", num_classes=10, in_channels=3, input_size=32)
    model.train()
    with torch.no_grad():  # non-trivial BN running statistics
        for _ in range(5):
            model(torch.randn(64, *shape) * 0.5 + 0.5)
    model.eval()

    rng = np.random.default_rng(args.seed)
    calib = rng.random((args.calibration, *shape), dtype=np.float32)
    calib_source = "uniform random [0,1)"
    if args.samples is not None:
        from nayer_edge.synthesis.memory import SampleMemory

        images, _ = SampleMemory.load(args.samples).all()
        if tuple(images.shape[1:]) == shape:
            calib, calib_source = images[: args.calibration].numpy().astype(np.float32), str(args.samples)
        else:
            print(f"{args.samples}: images are {tuple(images.shape[1:])}, not {shape}; using random images")
    held_out = np.random.default_rng(args.seed + 1).random((256, *shape), dtype=np.float32)

    args.out.parent.mkdir(parents=True, exist_ok=True)
    work = args.out.parent
    fp32 = export_onnx(model, work / "resnet18.fp32.onnx", input_shape=shape, batch=args.batch)
    fp32_dyn = export_onnx(model, work / "resnet18.fp32.dynamic.onnx", input_shape=shape)
    paths = {
        "fp32": fp32,
        "ort-qdq-u8s8": quantize_static_ort(fp32, work / "resnet18.ort-u8s8.onnx", calib, batch=args.batch),
        "ort-qdq-s8s8": quantize_static_ort(fp32, work / "resnet18.ort-s8s8.onnx", calib, batch=args.batch,
                                            activation="int8", extra_options={"ActivationSymmetric": True,
                                                                              "WeightSymmetric": True}),
        "ort-qdq-u8s8-nopre": quantize_static_ort(fp32, work / "resnet18.ort-u8s8-nopre.onnx", calib,
                                                  batch=args.batch, preprocess=False),
        "trt-sym-inputs": quantize_tensorrt(fp32, work / "resnet18.trt-sym-inputs.onnx", calib, batch=args.batch),
    }
    # The dynamic-batch export quantizes the same way (calibration batches of --batch).
    quantize_static_ort(fp32_dyn, work / "resnet18.ort-u8s8.dynamic.onnx", calib, batch=args.batch)

    summaries = {name: int8_node_summary(p) for name, p in paths.items()}
    reference = run_session(onnx_session(fp32_dyn, threads=args.threads), held_out, args.batch)
    parity = {}
    for name, p in paths.items():
        if name == "fp32":
            continue
        # Static-batch graphs: feed held-out images in full batches only.
        out = run_session(onnx_session(p, threads=args.threads), held_out, args.batch)
        parity[name] = compare_logits(reference, out).to_dict()

    rounds: dict[str, list[dict]] = {name: [] for name in paths}
    for r in range(args.rounds):
        for name, p in paths.items():
            stats = onnx_latency(p, args.batch, threads=args.threads, seed=r, min_seconds=args.seconds)
            rounds[name].append(stats.to_dict())
            print(f"round {r + 1}/{args.rounds} {name:20s} p50 {stats.p50_ms:7.2f} ms", flush=True)

    def med(name: str, key: str) -> float:
        return statistics.median(s[key] for s in rounds[name])

    fp32_p50 = med("fp32", "p50_ms")
    rows = []
    for name in paths:
        rows.append({"variant": name, "p50_ms": med(name, "p50_ms"), "p90_ms": med(name, "p90_ms"),
                     "throughput": med(name, "throughput"), "ratio_vs_fp32": med(name, "p50_ms") / fp32_p50,
                     "cosine": parity.get(name, {}).get("cosine_similarity"),
                     "top1_agreement": parity.get(name, {}).get("top1_agreement")})
    print(f"\nCIFAR ResNet-18, batch {args.batch}, {args.threads} threads, onnxruntime CPU, "
          f"median of {args.rounds} interleaved rounds; calibration: {len(calib)} × {calib_source}\n")
    print("| variant | p50 ms | p90 ms | img/s | p50 ratio vs FP32 | cosine | top-1 agree |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        cos = "—" if row["cosine"] is None else f"{row['cosine']:.4f}"
        agree = "—" if row["top1_agreement"] is None else f"{row['top1_agreement']:.3f}"
        print(f"| {row['variant']} | {row['p50_ms']:.2f} | {row['p90_ms']:.2f} | {row['throughput']:.0f} | "
              f"{row['ratio_vs_fp32']:.2f} | {cos} | {agree} |")
    print("\nOp types in the graph onnxruntime runs (ORT_ENABLE_ALL):")
    for name, summary in summaries.items():
        print(f"- {name}: " + ", ".join(f"{k} {v}" for k, v in summary.items()))

    import onnxruntime

    result = {"model": "resnet18", "input_shape": list(shape), "batch": args.batch, "threads": args.threads,
              "rounds": args.rounds, "onnxruntime": onnxruntime.__version__, "calibration": calib_source,
              "calibration_images": len(calib), "table": rows, "rounds_raw": rounds,
              "node_summary": summaries, "parity": parity}
    atomic_write_text(args.out, json.dumps(result, indent=2))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
