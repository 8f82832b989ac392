#!/usr/bin/env python3
"""Check a nayer-edge bundle where it will run: integrity, parity, accuracy, latency, power mode.

    python3 scripts/check.py --backend tensorrt                 # on the Jetson, after build_engine.py
    python3 scripts/check.py --backend tensorrt --labelled ~/images --max-latency-ms 5 --json
    python3 scripts/check.py --backend onnxruntime              # anywhere with onnxruntime (CPU)

In order:
  1. integrity: the sha256 of every file listed in manifest.json, and the manifest's own hash. A changed or
     missing file fails the ``integrity`` gate (exit 1) naming the file, before anything runs. Then every
     engine in the bundle (and ``--engine``) must be one this machine can run, whatever the backend: an
     engine stamped for another TensorRT or GPU, or any engine on a machine without TensorRT or a GPU, is
     bad input (exit 2) naming the engine, what it was built for, what this machine has, and the fix;
  2. the model, through TensorRT (the bundle's engine, refused if its stamp does not match this TensorRT
     and GPU) or onnxruntime (the bundle's ONNX on the CPU);
  3. parity on reference.npz against the outputs recorded when the bundle was made (lowest per-sample
     cosine, max abs error, top-1 agreement), with the manifest's thresholds for this backend;
  4. top-1 on labelled.npz (if the bundle has one) and on ``--labelled DIR`` (one sub-folder per class name;
     needs Pillow, skipped with a message without it), against the expected accuracy minus the allowed drop;
  5. latency as trtexec reports it: warm up, then time at least N runs over at least T seconds; mean, p50,
     p90, p95, p99 (nearest rank), throughput, CV. TensorRT: GPU compute of one batch already on the device.
  6. the Jetson power mode (``nvpmodel -q``) and whether CPU/GPU clocks are locked (warnings only).

``--json`` prints the result on stdout in the schema ``nayer-edge verify --json`` uses too (``bundle_io.RESULT_KEYS``,
``schema_version`` 1); the summary lines then go to stderr.

Exit codes: 0 every gate passed, 1 a gate failed (each failure is one line naming the gate), 2 bad input (a
one-line message saying what to fix), 3 the runtime failed (onnxruntime or TensorRT raised, CUDA ran out of
memory, Ctrl-C): one line naming the error, no result.
Runs with python3 >= 3.8 and numpy; onnxruntime or tensorrt (+ cuda-python or pycuda) for the backend.
"""

from __future__ import annotations

import argparse
import glob
import json
import math
import os
import subprocess
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

try:  # Ctrl-C during the imports is the same runtime interruption as later: exit 3, one line
    import numpy as np

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import bundle_io  # noqa: E402  (sibling files: these scripts run from the bundle's scripts/ folder)
    from bundle_io import BundleError, IntegrityError, result_gate  # noqa: E402
except KeyboardInterrupt:
    print("error: interrupted (Ctrl-C): the check did not finish", file=sys.stderr)
    sys.exit(3)

BACKENDS = ("tensorrt", "onnxruntime")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")


class BadInput(Exception):
    """Exit code 2."""


# --------------------------------------------------------------------------------------- arguments


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line and exit 2, not argparse's usage block
        raise BadInput(message)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = _Parser(description="Check a nayer-edge bundle: integrity, parity, accuracy, latency.")
    parser.add_argument("--bundle", default=None, help="bundle folder (default: the folder above scripts/)")
    parser.add_argument("--backend", choices=BACKENDS, default="tensorrt")
    parser.add_argument("--engine", default=None, help="TensorRT engine (default: the bundle's model.engine)")
    parser.add_argument("--labelled", default=None, help="folder of labelled images, one sub-folder per class")
    parser.add_argument("--max-latency-ms", type=float, default=None,
                        help="gate on p50 latency at the latency batch (default: the manifest's, if any)")
    parser.add_argument("--min-teacher-retention", type=float, default=None,
                        help="least share of the teacher's top-1 on the labelled subset (default: the manifest's)")
    parser.add_argument("--batch", type=int, default=None, help="latency batch (default: the manifest's)")
    parser.add_argument("--warmup-s", type=float, default=0.2, help="untimed warm-up seconds (default 0.2)")
    parser.add_argument("--duration-s", type=float, default=1.0, help="minimum timed seconds (default 1)")
    parser.add_argument("--iterations", type=int, default=20, help="minimum timed runs (default 20)")
    parser.add_argument("--no-latency", action="store_true", help="skip the latency measurement and gate")
    parser.add_argument("--threads", type=int, default=None, help="onnxruntime intra-op threads")
    parser.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args(argv)
    if args.min_teacher_retention is not None and not 0.0 <= args.min_teacher_retention <= 1.0:
        raise BadInput("--min-teacher-retention is a fraction in [0, 1], got {}".format(args.min_teacher_retention))
    if args.max_latency_ms is not None and not args.max_latency_ms > 0:
        raise BadInput("--max-latency-ms must be > 0, got {}".format(args.max_latency_ms))
    if args.batch is not None and args.batch < 1:
        raise BadInput("--batch must be at least 1, got {}".format(args.batch))
    if args.iterations < 1 or args.duration_s < 0 or args.warmup_s < 0:
        raise BadInput("--iterations must be >= 1 and --duration-s/--warmup-s >= 0")
    return args


def default_bundle_dir() -> Optional[str]:
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return here if os.path.isfile(os.path.join(here, bundle_io.MANIFEST)) else None


# --------------------------------------------------------------------------------------- backends


class OnnxRuntimeRunner:
    """The bundle's ONNX in onnxruntime on the CPU, with the same interface as TensorRTRunner."""

    def __init__(self, onnx_path: str, threads: Optional[int] = None) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise BadInput("onnxruntime is needed for --backend onnxruntime (pip3 install onnxruntime); "
                           "on the device use --backend tensorrt") from None
        options = ort.SessionOptions()
        options.log_severity_level = 4  # fatal only: a failed run is the exception it raises, said once
        if threads:
            options.intra_op_num_threads = int(threads)
            options.inter_op_num_threads = 1
        self.version = ort.__version__
        self.session = ort.InferenceSession(onnx_path, sess_options=options, providers=["CPUExecutionProvider"])
        if len(self.session.get_inputs()) != 1:
            raise BadInput("{}: takes {} inputs, not one batch of images; rebuild the bundle with nayer-edge "
                           "export".format(os.path.basename(onnx_path), len(self.session.get_inputs())))
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        first = inp.shape[0]
        self.fixed_batch = int(first) if isinstance(first, int) and first > 0 else None
        self.max_batch = self.fixed_batch or 64
        self.input_dtype = np.float16 if inp.type == "tensor(float16)" else np.float32

    def _run_batch(self, chunk: np.ndarray) -> np.ndarray:
        n = len(chunk)
        if self.fixed_batch and n < self.fixed_batch:
            chunk = np.concatenate([chunk, np.zeros((self.fixed_batch - n,) + chunk.shape[1:], chunk.dtype)])
        feed = {self.input_name: np.ascontiguousarray(chunk, dtype=self.input_dtype)}
        return np.asarray(self.session.run(None, feed)[0])[:n].astype(np.float32)

    def run(self, x: np.ndarray) -> np.ndarray:
        return np.concatenate([self._run_batch(x[i:i + self.max_batch]) for i in range(0, len(x), self.max_batch)])

    def timed_call(self, batch: int, sample: np.ndarray) -> Callable[[], None]:
        if self.fixed_batch and batch != self.fixed_batch:
            raise BadInput("the model has a fixed batch size {}; time it with --batch {}".format(
                self.fixed_batch, self.fixed_batch))
        reps = int(math.ceil(batch / max(1, len(sample))))
        feed = {self.input_name: np.ascontiguousarray(np.concatenate([sample] * reps)[:batch],
                                                      dtype=self.input_dtype)}
        return lambda: self.session.run(None, feed)

    def describe(self) -> str:
        return "onnxruntime {} (CPUExecutionProvider)".format(self.version)

    def close(self) -> None:
        pass


def refuse_foreign_engines(bundle_dir: str, manifest: Dict[str, Any], engine_path: Optional[str]) -> None:
    """BadInput for the first engine (``*.engine`` in the bundle, and ``--engine``) that cannot run here."""
    engines = []
    for root, dirs, names in os.walk(bundle_dir):
        dirs[:] = sorted(d for d in dirs if d not in ("scripts", "__pycache__"))
        engines += [os.path.join(root, name) for name in sorted(names) if name.endswith(".engine")]
    if engine_path and os.path.isfile(engine_path) and os.path.abspath(engine_path) not in engines:
        engines.append(os.path.abspath(engine_path))
    if not engines:
        return
    import build_engine

    here = build_engine.this_machine()
    onnx_sha256 = manifest["files"].get(manifest["model"]["file"])
    for engine in engines:
        shown = os.path.relpath(engine, bundle_dir) if engine.startswith(bundle_dir + os.sep) else engine
        reason = build_engine.engine_mismatch(engine, here, onnx_sha256, shown=shown)
        if reason:
            raise BadInput(reason)


def open_tensorrt(bundle_dir: str, manifest: Dict[str, Any], engine_path: Optional[str], verbose: bool) -> Any:
    """The TensorRT runner for the bundle's engine, after its stamp was checked against this TensorRT/GPU."""
    import build_engine

    try:
        import tensorrt as trt
    except ImportError:
        raise BadInput("TensorRT is needed for --backend tensorrt and its Python module does not import here; "
                       "run this on the device (JetPack ships it), or use --backend onnxruntime") from None
    engine = engine_path or os.path.join(bundle_dir, manifest.get("engine", {}).get("file", "model.engine"))
    if not os.path.isfile(engine):
        raise BadInput("{}: no engine; build it first with: python3 scripts/build_engine.py".format(engine))
    stamp = build_engine.read_stamp(engine)
    reason = build_engine.stamp_mismatch(
        stamp or {}, tensorrt_version=trt.__version__, gpu=build_engine.detect_gpu(),
        onnx_sha256=manifest["files"].get(manifest["model"]["file"]), engine_sha256=bundle_io.sha256_file(engine))
    if reason:
        raise BadInput("{}: {}".format(engine, reason))
    import trt_runner

    try:
        return trt_runner.TensorRTRunner(engine, verbose=verbose)
    except trt_runner.RuntimeMissing as err:
        raise BadInput(str(err)) from None


# --------------------------------------------------------------------------------------- measurements


def parity(reference: np.ndarray, candidate: np.ndarray, reference_name: str) -> Dict[str, Any]:
    """Lowest per-sample cosine, max and mean abs error, top-1 agreement of two N×K logit arrays (the result's
    ``parity``; ``reference_name`` says where the reference logits came from)."""
    ref = reference.astype(np.float64)
    out = candidate.astype(np.float64)
    if ref.shape != out.shape:
        raise BadInput("reference outputs have shape {} but the model gives {}".format(ref.shape, out.shape))
    diff = np.abs(ref - out)
    diff = np.where(np.isnan(diff), np.inf, diff)
    norms = np.linalg.norm(ref, axis=1) * np.linalg.norm(out, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        cosine = np.where(norms > 0, (ref * out).sum(1) / norms, 1.0)
    cosine = np.where(np.isnan(cosine), -1.0, cosine)
    return {"reference": reference_name, "samples": int(len(ref)), "min_cosine": float(cosine.min()),
            "max_abs_error": float(diff.max()), "mean_abs_error": float(diff.mean()),
            "top1_agreement": float((ref.argmax(1) == out.argmax(1)).mean())}


def nearest_rank(sorted_values: Sequence[float], percentile: float) -> float:
    """The value at rank ceil(p/100 * n) of ascending values (trtexec's percentile)."""
    n = len(sorted_values)
    rank = max(1, int(math.ceil(percentile / 100.0 * n - 1e-9)))
    return float(sorted_values[min(rank, n) - 1])


def measure_latency(call: Callable[[], Any], batch: int, warmup_s: float, duration_s: float,
                    iterations: int) -> Dict[str, Any]:
    """Warm up for ``warmup_s`` (at least one call), then time calls until both ``iterations`` calls and
    ``duration_s`` seconds have passed; milliseconds per call."""
    clock = time.perf_counter
    start = clock()
    call()
    while clock() - start < warmup_s:
        call()
    times: List[float] = []
    began = clock()
    while len(times) < iterations or clock() - began < duration_s:
        t0 = clock()
        call()
        times.append(clock() - t0)
    ms = np.sort(np.asarray(times)) * 1e3
    mean = float(ms.mean())
    total_s = float(ms.sum()) / 1e3
    return {"batch": int(batch), "iterations": int(len(ms)), "mean_ms": mean,
            "p50_ms": nearest_rank(ms, 50), "p90_ms": nearest_rank(ms, 90), "p95_ms": nearest_rank(ms, 95),
            "p99_ms": nearest_rank(ms, 99), "min_ms": float(ms[0]), "max_ms": float(ms[-1]),
            "throughput": batch * len(ms) / total_s if total_s > 0 else float("inf"),
            "cv": float(ms.std()) / mean if mean > 0 else 0.0}


def top1(runner: Any, x: np.ndarray, y: np.ndarray) -> float:
    return float((runner.run(x).argmax(1) == y).mean())


def load_labelled_folder(folder: str, manifest: Dict[str, Any]) -> Tuple[Optional[np.ndarray], Optional[np.ndarray], str]:
    """uint8 N×C×H×W images and labels from ``folder/<class name>/*``; (None, None, why) without Pillow."""
    if not os.path.isdir(folder):
        raise BadInput("--labelled {}: no such folder".format(folder))
    try:
        from PIL import Image
    except ImportError:
        return None, None, "Pillow is not installed (pip3 install pillow): labelled folder skipped"
    classes = list(manifest["classes"])
    c, h, w = (int(d) for d in manifest["input"]["shape"])
    images, labels = [], []
    for name in sorted(os.listdir(folder)):
        sub = os.path.join(folder, name)
        if not os.path.isdir(sub):
            continue
        if name not in classes:
            raise BadInput("--labelled: folder '{}' is not a class of this model ({} classes: {}...)".format(
                name, len(classes), ", ".join(classes[:5])))
        for file in sorted(os.listdir(sub)):
            if not file.lower().endswith(IMAGE_SUFFIXES):
                continue
            with Image.open(os.path.join(sub, file)) as img:
                img = img.convert("L" if c == 1 else "RGB").resize((w, h), Image.BILINEAR)
                arr = np.asarray(img, dtype=np.uint8)
            arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
            images.append(arr)
            labels.append(classes.index(name))
    if not images:
        raise BadInput("--labelled {}: no images (.png/.jpg/.jpeg/.bmp) in class sub-folders".format(folder))
    return np.stack(images), np.asarray(labels, dtype=np.int64), ""


# --------------------------------------------------------------------------------------- the device


def _read(path: str) -> Optional[str]:
    try:
        with open(path, "r") as handle:
            return handle.read().strip()
    except (OSError, UnicodeDecodeError):
        return None


def read_power_state() -> Dict[str, Any]:
    """The Jetson power mode and whether clocks are locked; every read tolerates absence."""
    state: Dict[str, Any] = {"nvpmodel": None, "cpu_clocks_locked": None, "gpu_clocks_locked": None,
                             "warnings": []}
    try:
        done = subprocess.run(["nvpmodel", "-q"], capture_output=True, text=True, timeout=10)
        if done.returncode == 0:
            lines = [line.strip() for line in done.stdout.splitlines() if line.strip()]
            state["nvpmodel"] = "; ".join(lines) or None
    except (OSError, subprocess.SubprocessError):
        pass
    cpu_pairs = []
    for cpu in sorted(glob.glob("/sys/devices/system/cpu/cpu[0-9]*/cpufreq")):
        low, high = _read(os.path.join(cpu, "scaling_min_freq")), _read(os.path.join(cpu, "scaling_max_freq"))
        if low and high:
            cpu_pairs.append((low, high))
    if cpu_pairs:
        state["cpu_clocks_locked"] = all(low == high for low, high in cpu_pairs)
        if not state["cpu_clocks_locked"]:
            state["warnings"].append("CPU clocks are not locked (scaling_min_freq != scaling_max_freq): latency "
                                     "varies; on a Jetson run sudo jetson_clocks first")
    gpu_pairs = []
    for dev in sorted(glob.glob("/sys/class/devfreq/*")):
        name = os.path.basename(dev).lower()
        if not any(key in name for key in ("gpu", "ga10b", "gv11b", "gp10b", "gm20b")):
            continue
        low, high = _read(os.path.join(dev, "min_freq")), _read(os.path.join(dev, "max_freq"))
        if low and high:
            gpu_pairs.append((low, high))
    if gpu_pairs:
        state["gpu_clocks_locked"] = all(low == high for low, high in gpu_pairs)
        if not state["gpu_clocks_locked"]:
            state["warnings"].append("GPU clocks are not locked (devfreq min_freq != max_freq): run sudo "
                                     "jetson_clocks for repeatable latency")
    return state


# --------------------------------------------------------------------------------------- gates


gate = result_gate


def parity_gates(measured: Dict[str, Any], limits: Dict[str, Any]) -> List[Dict[str, Any]]:
    gates = []
    if limits.get("min_cosine") is not None:
        lim = float(limits["min_cosine"])
        gates.append(gate("parity_min_cosine", measured["min_cosine"], lim, measured["min_cosine"] >= lim,
                          "lowest per-sample cosine {:.6f} (limit >= {:g})".format(measured["min_cosine"], lim),
                          rule=">="))
    if limits.get("max_abs_error") is not None:
        lim = float(limits["max_abs_error"])
        gates.append(gate("parity_max_abs_error", measured["max_abs_error"], lim, measured["max_abs_error"] <= lim,
                          "max abs error {:.4g} (limit <= {:g})".format(measured["max_abs_error"], lim)))
    if limits.get("min_top1_agreement") is not None:
        lim = float(limits["min_top1_agreement"])
        gates.append(gate("parity_top1_agreement", measured["top1_agreement"], lim,
                          measured["top1_agreement"] >= lim - 1e-12,
                          "top-1 agreement {:.1%} (limit >= {:.1%})".format(measured["top1_agreement"], lim),
                          rule=">="))
    return gates


def release_gates(release: Dict[str, Any], subset_top1: Optional[float],
                  min_retention: Optional[float]) -> List[Dict[str, Any]]:
    """The judgement against the teacher: the gates as they stood when the bundle was made, and the retention of
    the teacher's top-1 measured here on the labelled subset."""
    gates = []
    made = release.get("gates_when_made") or []
    failed = [g for g in made if not g.get("passed")]
    if made:
        text = ("all {} passed when the bundle was made".format(len(made)) if not failed else
                "failed when the bundle was made: " + "; ".join(
                    (release.get("untrained") if g["name"] == "student_trained" and release.get("untrained")
                     else "{} {:.4g} (limit {} {:.4g})".format(g["name"], g["value"],
                                                            ">=" if g.get("rule") == ">=" else "<=", g["limit"]))
                    for g in failed))
        gates.append(gate("release_gates_when_made", float(len(failed)), 0.0, not failed, text))
    limit = min_retention if min_retention is not None else release.get("min_teacher_retention")
    teacher = release.get("teacher_top1")
    if subset_top1 is not None and teacher and limit:
        floor = float(limit) * float(teacher)
        gates.append(gate("teacher_retention_labelled_subset", subset_top1, floor, subset_top1 >= floor - 1e-12,
                          "top-1 {:.2%} on the labelled subset, {:.1%} of the teacher's {:.2%} (limit >= {:.0%} "
                          "of it = {:.2%})".format(subset_top1, subset_top1 / float(teacher), float(teacher),
                                                   float(limit), floor), rule=">="))
    return gates


def accuracy_gate(name: str, measured: float, expected: Optional[float], drop_points: float) -> Dict[str, Any]:
    if expected is None:
        return gate(name, measured, None, True, "top-1 {:.2%} (no expected accuracy: reported only)".format(measured),
                    rule=">=")
    floor = float(expected) - drop_points / 100.0
    return gate(name, measured, floor, measured >= floor - 1e-12,
                "top-1 {:.2%} (expected {:.2%} minus {:g} points = {:.2%})".format(
                    measured, expected, drop_points, floor), rule=">=")


# --------------------------------------------------------------------------------------- the check


def run_check(args: argparse.Namespace) -> Dict[str, Any]:
    """Everything after argument parsing, as a result in the shared schema (``bundle_io.new_result``); raises
    BadInput, BundleError or IntegrityError, and whatever the runtime raises."""
    bundle = args.bundle or default_bundle_dir()
    if bundle is None:
        raise BadInput("give --bundle DIR (no manifest.json above this script)")
    bundle = os.path.abspath(bundle)
    manifest = bundle_io.load_manifest(bundle)
    checked = bundle_io.verify_integrity(bundle, manifest)
    result = bundle_io.new_result()
    result.update(model=os.path.join(bundle, manifest["model"]["file"]), bundle=bundle, backend=args.backend,
                  precision=manifest["model"]["precision"], input=manifest["input"]["convention"],
                  input_shape=[int(d) for d in manifest["input"]["shape"]],
                  integrity={"passed": True, "files": len(checked), "failed_file": None})
    gates: List[Dict[str, Any]] = [gate("integrity", None, None, True, "{} files match the manifest".format(
        len(checked)))]

    refuse_foreign_engines(bundle, manifest, args.engine)
    if args.backend == "onnxruntime":
        runner: Any = OnnxRuntimeRunner(result["model"], args.threads)
    else:
        runner = open_tensorrt(bundle, manifest, args.engine, args.verbose)
    result["runtime"] = runner.describe()
    try:
        gates += _measure(args, bundle, manifest, runner, result)
    finally:
        runner.close()

    power = read_power_state()
    result["notes"] += power.pop("warnings")
    result["device"] = power
    result["gates"] = gates
    result["passed"] = all(g["passed"] for g in gates)
    return result


def _measure(args: argparse.Namespace, bundle: str, manifest: Dict[str, Any], runner: Any,
             result: Dict[str, Any]) -> List[Dict[str, Any]]:
    """Parity, accuracy and latency through ``runner``, into ``result``; their gates."""
    reference = manifest["reference"]["file"]
    ref = bundle_io.load_arrays(bundle, reference, ["inputs", "logits"])
    measured = parity(ref["logits"], runner.run(ref["inputs"]), reference)
    result["parity"] = measured
    gates = parity_gates(measured, manifest.get("parity", {}).get(args.backend, {}))

    accuracy = manifest.get("accuracy", {})
    drop = float(accuracy.get("max_drop_points") or 0.0)
    labelled = manifest.get("labelled")
    release = manifest.get("release") or {}
    result["teacher_accuracy"] = release.get("teacher_top1")
    if labelled:
        data = bundle_io.load_arrays(bundle, labelled["file"], ["images", "labels"])
        subset = top1(runner, bundle_io.images_to_input(data["images"], manifest), data["labels"])
        made = labelled.get("top1")
        result.update(accuracy=subset, accuracy_samples=int(len(data["labels"])), reference_accuracy=made,
                      accuracy_drop_points=None if made is None else (float(made) - subset) * 100.0)
        gates.append(accuracy_gate("accuracy_labelled_subset", subset, made, drop))
    gates += release_gates(release, result["accuracy"], args.min_teacher_retention)
    if args.labelled:
        images, labels, why = load_labelled_folder(args.labelled, manifest)
        if images is None:
            result["notes"].append(why)
        else:
            folder = top1(runner, bundle_io.images_to_input(images, manifest), labels)
            result["labelled_folder"] = {"folder": os.path.abspath(args.labelled), "samples": int(len(labels)),
                                         "top1": folder}
            expected = accuracy.get("expected")
            gates.append(accuracy_gate("accuracy_labelled_folder", folder,
                                       expected if expected is not None else (labelled or {}).get("top1"), drop))

    if not args.no_latency:
        batch = args.batch or int(manifest.get("latency", {}).get("batch") or 1)
        if runner.fixed_batch and args.batch is None:
            batch = runner.fixed_batch
        call = runner.timed_call(batch, ref["inputs"])
        stats = measure_latency(call, batch, args.warmup_s, args.duration_s, args.iterations)
        stats["timed"] = ("GPU compute of one batch already on the device (no host copies)"
                          if args.backend == "tensorrt" else "InferenceSession.run on host memory")
        result["latency"] = stats
        limit = args.max_latency_ms if args.max_latency_ms is not None else manifest.get("latency", {}).get("max_ms")
        if limit is not None:
            gates.append(gate("latency_p50_ms", stats["p50_ms"], float(limit), stats["p50_ms"] <= float(limit),
                              "p50 {:.4g} ms at batch {} (limit <= {:g} ms)".format(stats["p50_ms"], batch,
                                                                                     float(limit))))
    return gates


def summary_lines(result: Dict[str, Any]) -> List[str]:
    lines = ["bundle {} — {} ({})".format(result["bundle"], result.get("runtime") or result["backend"],
                                          result["precision"])]
    if result.get("latency"):
        s = result["latency"]
        lines.append("latency at batch {}: mean {:.4g} ms, p50 {:.4g}, p90 {:.4g}, p95 {:.4g}, p99 {:.4g}; "
                     "{:.0f} img/s; CV {:.1%}; {} runs".format(s["batch"], s["mean_ms"], s["p50_ms"], s["p90_ms"],
                                                            s["p95_ms"], s["p99_ms"], s["throughput"], s["cv"],
                                                            s["iterations"]))
    if (result.get("device") or {}).get("nvpmodel"):
        lines.append("power mode: " + result["device"]["nvpmodel"])
    for g in result["gates"]:
        lines.append("{} {}: {}".format("PASS" if g["passed"] else "FAIL", g["name"], g["text"]))
    for note in result["notes"]:
        lines.append("warning: " + note)
    return lines


def integrity_failure(err: IntegrityError) -> Dict[str, Any]:
    """The result of a bundle whose files do not match its manifest: one failed gate, nothing run."""
    result = bundle_io.new_result()
    result["integrity"] = {"passed": False, "files": None, "failed_file": err.file}
    result["gates"] = [gate("integrity", None, None, False, str(err))]
    return result


def main(argv: Optional[Sequence[str]] = None) -> int:
    want_json = False
    try:
        args = parse_args(argv)
        want_json = args.json
        result = run_check(args)
    except (BadInput, BundleError) as err:
        print("error: {}".format(err), file=sys.stderr)
        return bundle_io.EXIT_BAD_INPUT
    except IntegrityError as err:
        if want_json:
            print(json.dumps(integrity_failure(err), indent=2, sort_keys=True))
        print("FAIL {}".format(err), file=sys.stderr)
        return bundle_io.EXIT_GATE_FAILED
    except KeyboardInterrupt:
        print("error: interrupted (Ctrl-C): the check did not finish", file=sys.stderr)
        return bundle_io.EXIT_RUNTIME_FAILURE
    except Exception as err:  # noqa: BLE001 - a runtime's own failure (e.g. CUDA out of memory): one line, no traceback
        print("error: the runtime failed: {}: {}".format(type(err).__name__, (str(err).strip().splitlines() or [""])[0]),
              file=sys.stderr)
        return bundle_io.EXIT_RUNTIME_FAILURE
    stream = sys.stderr if args.json else sys.stdout
    for line in summary_lines(result):
        print(line, file=stream)
    if args.json:
        print(json.dumps(result, indent=2, sort_keys=True))
    return bundle_io.EXIT_OK if result["passed"] else bundle_io.EXIT_GATE_FAILED


if __name__ == "__main__":
    sys.exit(main())
