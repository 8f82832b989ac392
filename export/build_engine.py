#!/usr/bin/env python3
"""Build a TensorRT engine from a bundle's ONNX on the device, and stamp it with what it was built for.

    python3 scripts/build_engine.py                       # model.onnx -> model.engine (+ model.engine.json)
    python3 scripts/build_engine.py --dla-core 0          # on DLA core 0, GPU fallback for what DLA cannot run
    python3 scripts/build_engine.py --precision fp16 --engine fp16.engine --force

Runs with what JetPack ships (python3 >= 3.8, numpy, tensorrt); TensorRT 8.5/8.6, 10.x and 11.x.

Precision and TensorRT version (``plan_build``):
  * INT8 comes from the explicit Q/DQ nodes in the ONNX, never from calibration. TensorRT 8.x needs the
    INT8 builder flag to honour them; 10.x builds a strongly typed network (the ONNX's types are the engine's
    types); 11.x is always strongly typed and has no INT8/FP16 flags at all.
  * FP16 on 8.x/10.x is the FP16 builder flag on the FP32 ONNX. TensorRT 11 builds FP16 only from an
    FP16-typed ONNX (e.g. ModelOpt AutoCast); an FP32 ONNX is refused there rather than silently built FP32.
  * DLA (``--dla-core N``) runs only FP16/INT8 layers, so it needs precision fp16 or int8, and turns on
    GPU fallback. On 10.x an INT8 DLA build uses the INT8+FP16 flags instead of strong typing, because a
    strongly typed network keeps the non-quantized layers FP32, which DLA cannot run.

The engine is written with ``<engine>.json`` beside it (``make_stamp``): TensorRT version, GPU name and
compute capability, the ONNX's sha256, precision, DLA core and flags. ``check.py`` refuses an engine whose
stamp does not match the TensorRT and GPU it runs on (``stamp_mismatch``): engines are not portable.

Exit codes (as check.py's; 1, a gate failed, is check.py's alone): 0 built, 2 bad input, 3 the build failed
(TensorRT could not parse or build the network, or raised; Ctrl-C); each a one-line message, no traceback.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bundle_io  # noqa: E402  (a sibling file; this script runs from the bundle's scripts/ folder)

PRECISIONS = ("fp32", "fp16", "int8")
STAMP_SUFFIX = ".json"
STAMP_FORMAT = "nayer-edge-engine-stamp"
DEFAULT_WORKSPACE_MB = 1024


class BadInput(Exception):
    """Exit code 2."""


class BuildFailed(Exception):
    """Exit code 1."""


# --------------------------------------------------------------------------------------- pure logic


def parse_version(version: str) -> Tuple[int, int, int]:
    """``"10.3.0.30"`` -> ``(10, 3, 0)``; BadInput for anything that is not a TensorRT version."""
    match = re.match(r"^\s*(\d+)(?:\.(\d+))?(?:\.(\d+))?", str(version))
    if not match:
        raise BadInput("cannot read TensorRT version {!r}; expected e.g. 10.3.0".format(version))
    return int(match.group(1)), int(match.group(2) or 0), int(match.group(3) or 0)


@dataclass(frozen=True)
class BuildPlan:
    """What to ask TensorRT for: names of ``NetworkDefinitionCreationFlag`` and ``BuilderFlag`` members."""

    tensorrt: str
    precision: str
    dla_core: Optional[int]
    network_flags: Tuple[str, ...]
    builder_flags: Tuple[str, ...]
    strongly_typed: bool
    needs_fp16_onnx: bool = False
    notes: Tuple[str, ...] = field(default_factory=tuple)


def plan_build(tensorrt_version: str, precision: str, dla_core: Optional[int] = None) -> BuildPlan:
    """The network and builder flags for ``precision`` on TensorRT ``tensorrt_version`` (see the module doc).

    >>> plan_build("10.3.0", "int8").network_flags
    ('STRONGLY_TYPED',)
    >>> plan_build("8.6.2", "int8", dla_core=0).builder_flags
    ('INT8', 'FP16', 'GPU_FALLBACK')
    """
    if precision not in PRECISIONS:
        raise BadInput("precision must be one of {}, got {!r}".format(", ".join(PRECISIONS), precision))
    if dla_core is not None:
        if dla_core < 0:
            raise BadInput("--dla-core must be 0 or more, got {}".format(dla_core))
        if precision == "fp32":
            raise BadInput("DLA runs only fp16 or int8 layers; use --precision fp16 or int8 with --dla-core")
    major, minor, _ = parse_version(tensorrt_version)
    if (major, minor) < (8, 5):
        raise BadInput("TensorRT {} is too old: explicit Q/DQ and the name-based tensor API need 8.5 or "
                       "newer (JetPack 5.1+)".format(tensorrt_version))
    notes: List[str] = []
    network: List[str] = []
    builder: List[str] = []
    strongly_typed = False
    needs_fp16_onnx = False
    if major < 10:
        network.append("EXPLICIT_BATCH")
        if precision == "int8":
            builder.append("INT8")  # TensorRT 8 ignores Q/DQ scales without it
            if dla_core is not None:
                builder.append("FP16")
        elif precision == "fp16":
            builder.append("FP16")
    elif major == 10:
        if precision == "int8" and dla_core is None:
            network.append("STRONGLY_TYPED")
            strongly_typed = True
        elif precision == "int8":
            builder += ["INT8", "FP16"]
            notes.append("DLA build: weakly typed (INT8+FP16 flags) so non-quantized layers can run on DLA")
        elif precision == "fp16":
            builder.append("FP16")
    else:
        network.append("STRONGLY_TYPED")  # always on in 11 (the flag is kept but ignored)
        strongly_typed = True
        if precision == "fp16":
            needs_fp16_onnx = True
            notes.append("TensorRT {} has no FP16 builder flag: the ONNX itself must be FP16-typed".format(major))
    if dla_core is not None:
        builder.append("GPU_FALLBACK")
    return BuildPlan(tensorrt=str(tensorrt_version), precision=precision, dla_core=dla_core,
                     network_flags=tuple(network), builder_flags=tuple(builder), strongly_typed=strongly_typed,
                     needs_fp16_onnx=needs_fp16_onnx, notes=tuple(notes))


@dataclass(frozen=True)
class BatchProfile:
    """The optimisation profile for a dynamic batch axis; ``None`` when the ONNX has a fixed batch."""

    min: int
    opt: int
    max: int

    def __post_init__(self) -> None:
        if not (1 <= self.min <= self.opt <= self.max):
            raise BadInput("batch sizes must satisfy 1 <= min <= opt <= max, got {}/{}/{}".format(
                self.min, self.opt, self.max))


def trtexec_command(tensorrt_version: str, precision: str, *, onnx: str = "model.onnx",
                    engine: str = "model.engine", dla_core: Optional[int] = None,
                    input_name: str = "images", chw: Sequence[int] = (), profile: Optional[BatchProfile] = None,
                    workspace_mb: int = DEFAULT_WORKSPACE_MB, timing_cache: Optional[str] = "timing.cache") -> str:
    """The ``trtexec`` line equivalent to ``build_engine.py`` with the same settings.

    >>> trtexec_command("10.3", "int8")
    'trtexec --onnx=model.onnx --saveEngine=model.engine --stronglyTyped --memPoolSize=workspace:1024 --timingCacheFile=timing.cache'
    """
    plan = plan_build(tensorrt_version, precision, dla_core)
    major = parse_version(tensorrt_version)[0]
    parts = ["trtexec", "--onnx=" + onnx, "--saveEngine=" + engine]
    if plan.strongly_typed and major == 10:
        parts.append("--stronglyTyped")  # 11.x: always strongly typed
    if "INT8" in plan.builder_flags:
        parts.append("--int8")
    if "FP16" in plan.builder_flags:
        parts.append("--fp16")
    if dla_core is not None:
        parts += ["--useDLACore={}".format(dla_core), "--allowGPUFallback"]
    if profile is not None and chw:
        dims = "x".join(str(int(d)) for d in chw)
        for flag, batch in (("min", profile.min), ("opt", profile.opt), ("max", profile.max)):
            parts.append("--{}Shapes={}:{}x{}".format(flag, input_name, batch, dims))
    parts.append("--memPoolSize=workspace:{}".format(int(workspace_mb)))  # MiB
    if timing_cache:
        parts.append("--timingCacheFile=" + timing_cache)
    return " ".join(parts)


def make_stamp(*, tensorrt_version: str, gpu: Dict[str, Any], onnx_sha256: str, plan: BuildPlan,
               profile: Optional[BatchProfile], engine_sha256: Optional[str] = None) -> Dict[str, Any]:
    """What an engine was built for; written as ``<engine>.json``."""
    return {
        "format": STAMP_FORMAT,
        "tensorrt": str(tensorrt_version),
        "gpu_name": gpu.get("name"),
        "gpu_source": gpu.get("source"),
        "compute_capability": gpu.get("compute_capability"),
        "onnx_sha256": onnx_sha256,
        "engine_sha256": engine_sha256,
        "precision": plan.precision,
        "dla_core": plan.dla_core,
        "network_flags": list(plan.network_flags),
        "builder_flags": list(plan.builder_flags),
        "batch_profile": None if profile is None else {"min": profile.min, "opt": profile.opt, "max": profile.max},
        "built_utc": datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat(),
    }


def stamp_mismatch(stamp: Dict[str, Any], *, tensorrt_version: str, gpu: Dict[str, Any],
                   onnx_sha256: Optional[str] = None, engine_sha256: Optional[str] = None) -> Optional[str]:
    """``None`` when an engine stamped ``stamp`` may run here, else a one-line reason to rebuild.

    The TensorRT version must match exactly; the compute capability must match when both are known; the GPU
    name is compared only when both were read the same way (nvidia-smi and the device tree name the same
    GPU differently). ``onnx_sha256`` catches an engine built from another model.
    """
    rebuild = "; rebuild it here with: python3 scripts/build_engine.py --force"
    if not isinstance(stamp, dict) or stamp.get("format") != STAMP_FORMAT:
        return "the engine has no valid stamp" + rebuild
    if str(stamp.get("tensorrt")) != str(tensorrt_version):
        return "engine built with TensorRT {} but this is TensorRT {}{}".format(
            stamp.get("tensorrt"), tensorrt_version, rebuild)
    built_cc, here_cc = stamp.get("compute_capability"), gpu.get("compute_capability")
    if built_cc and here_cc and str(built_cc) != str(here_cc):
        return "engine built for compute capability {} ({}) but this GPU is {} ({}){}".format(
            built_cc, stamp.get("gpu_name") or "unknown GPU", here_cc, gpu.get("name") or "unknown GPU", rebuild)
    if (stamp.get("gpu_name") and gpu.get("name") and stamp.get("gpu_source") == gpu.get("source")
            and stamp.get("gpu_name") != gpu.get("name")):
        return "engine built on {} but this GPU is {}{}".format(stamp.get("gpu_name"), gpu.get("name"), rebuild)
    if onnx_sha256 and stamp.get("onnx_sha256") and stamp.get("onnx_sha256") != onnx_sha256:
        return "engine was built from a different ONNX than this bundle's model" + rebuild
    if engine_sha256 and stamp.get("engine_sha256") and stamp.get("engine_sha256") != engine_sha256:
        return "engine file does not match its stamp (changed after it was built)" + rebuild
    return None


def engine_mismatch(engine_path: str, here: Dict[str, Any], onnx_sha256: Optional[str] = None,
                    shown: Optional[str] = None) -> Optional[str]:
    """``None`` when the engine at ``engine_path`` may run on this machine (``here``: ``this_machine()``), else
    one line: the engine, what it was built for, what this machine has, and the fix. A machine without
    TensorRT or without a GPU can run no engine at all. ``shown``: the engine's name in the message."""
    stamp = read_stamp(engine_path)
    if not stamp or stamp.get("format") != STAMP_FORMAT:
        built = "an unknown TensorRT and GPU (no valid stamp {})".format(os.path.basename(stamp_path(engine_path)))
    else:
        built = "TensorRT {} on {}".format(stamp.get("tensorrt"), _describe_gpu(
            stamp.get("gpu_name"), stamp.get("compute_capability")))
    gpu = here.get("gpu") or {}
    trt_version = here.get("tensorrt")
    if trt_version and gpu.get("name"):
        reason = stamp_mismatch(stamp or {}, tensorrt_version=trt_version, gpu=gpu, onnx_sha256=onnx_sha256,
                                engine_sha256=bundle_io.sha256_file(engine_path))
        if reason is None:
            return None
        machine = "TensorRT {} on {} ({})".format(trt_version, _describe_gpu(gpu.get("name"),
                                                                             gpu.get("compute_capability")),
                                                   reason.split(";")[0])
    else:
        missing = [what for what, present in (("TensorRT", trt_version), ("GPU", gpu.get("name"))) if not present]
        machine = "no {}, so it can run no engine".format(" and no ".join(missing))
    return ("engine {} was built for {}, but this machine has {}; rebuild it on the machine that will run it "
            "with: python3 scripts/build_engine.py --force (or move it out of the bundle to check the ONNX "
            "alone)".format(shown or engine_path, built, machine))


def _describe_gpu(name: Optional[str], compute_capability: Optional[str]) -> str:
    return "{}{}".format(name or "an unknown GPU",
                         " (compute capability {})".format(compute_capability) if compute_capability else "")


def this_machine() -> Dict[str, Any]:
    """The TensorRT version (``None`` when its Python module does not import) and GPU 0 (``detect_gpu``)."""
    try:
        import tensorrt as trt

        version: Optional[str] = str(trt.__version__)
    except Exception:  # noqa: BLE001 - a broken install is as good as none here
        version = None
    return {"tensorrt": version, "gpu": detect_gpu()}


def stamp_path(engine_path: str) -> str:
    return engine_path + STAMP_SUFFIX


def read_stamp(engine_path: str) -> Optional[Dict[str, Any]]:
    try:
        with open(stamp_path(engine_path), "r", encoding="utf-8") as handle:
            data = json.load(handle)
        return data if isinstance(data, dict) else None
    except (OSError, ValueError):
        return None


_JETSON_CC = (("orin", "8.7"), ("xavier", "7.2"), ("tx2", "6.2"), ("nano", "5.3"), ("tx1", "5.3"))


def detect_gpu() -> Dict[str, Any]:
    """Name and compute capability of GPU 0 without torch: cuda-python, then pycuda, then ``nvidia-smi``,
    then the Jetson device tree. Missing fields are ``None``; nothing here raises."""
    for probe in (_gpu_from_cuda_python, _gpu_from_pycuda, _gpu_from_nvidia_smi, _gpu_from_device_tree):
        try:
            found = probe()
        except Exception:  # noqa: BLE001 - every probe is optional
            found = None
        if found and found.get("name"):
            return found
    return {"name": None, "compute_capability": None, "source": None}


def _gpu_from_cuda_python() -> Optional[Dict[str, Any]]:
    try:
        from cuda.bindings import runtime as cudart  # cuda-python >= 12.6
    except ImportError:
        from cuda import cudart  # older cuda-python
    err, prop = cudart.cudaGetDeviceProperties(0)
    if err != cudart.cudaError_t.cudaSuccess:
        return None
    name = prop.name.decode("utf-8", "replace") if isinstance(prop.name, bytes) else str(prop.name)
    return {"name": name.rstrip("\x00").strip(), "compute_capability": "{}.{}".format(prop.major, prop.minor),
            "source": "cuda"}


def _gpu_from_pycuda() -> Optional[Dict[str, Any]]:
    import pycuda.driver as driver

    driver.init()
    device = driver.Device(0)
    major, minor = device.compute_capability()
    return {"name": device.name(), "compute_capability": "{}.{}".format(major, minor), "source": "cuda"}


def _gpu_from_nvidia_smi() -> Optional[Dict[str, Any]]:
    for query in ("name,compute_cap", "name"):
        done = subprocess.run(["nvidia-smi", "--query-gpu=" + query, "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=10)
        lines = [line for line in done.stdout.splitlines() if line.strip()]
        if done.returncode == 0 and lines:
            fields = [f.strip() for f in lines[0].split(",")]
            cc = fields[1] if len(fields) > 1 and re.match(r"^\d+\.\d+$", fields[1]) else None
            return {"name": fields[0], "compute_capability": cc, "source": "nvidia-smi"}
    return None


def _gpu_from_device_tree() -> Optional[Dict[str, Any]]:
    with open("/proc/device-tree/model", "rb") as handle:
        model = handle.read().decode("utf-8", "replace").rstrip("\x00").strip()
    lowered = model.lower()
    cc = next((cc for key, cc in _JETSON_CC if key in lowered), None)
    return {"name": model, "compute_capability": cc, "source": "device-tree"}


# --------------------------------------------------------------------------------------- arguments


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2, as for every other bad input
        raise BadInput(message)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = _Parser(description="Build a TensorRT engine from a nayer-edge bundle's ONNX, on the device.")
    parser.add_argument("--bundle", default=None,
                        help="bundle folder (default: the folder above this script's scripts/)")
    parser.add_argument("--onnx", default=None, help="ONNX file (default: the bundle's model)")
    parser.add_argument("--engine", default=None, help="engine to write (default: <bundle>/model.engine)")
    parser.add_argument("--precision", choices=PRECISIONS, default=None,
                        help="default: the bundle's precision")
    parser.add_argument("--dla-core", type=int, default=None, help="build for this DLA core (GPU fallback on)")
    parser.add_argument("--workspace-mb", type=int, default=DEFAULT_WORKSPACE_MB,
                        help="workspace memory pool limit in MiB (default %(default)s)")
    parser.add_argument("--timing-cache", default=None,
                        help="timing cache file, loaded if present and saved after (default: <bundle>/timing.cache)")
    parser.add_argument("--no-timing-cache", action="store_true")
    parser.add_argument("--min-batch", type=int, default=None)
    parser.add_argument("--opt-batch", type=int, default=None)
    parser.add_argument("--max-batch", type=int, default=None)
    parser.add_argument("--force", action="store_true", help="overwrite an existing engine")
    parser.add_argument("--verbose", action="store_true", help="TensorRT's verbose log")
    args = parser.parse_args(argv)
    if args.workspace_mb < 1:
        raise BadInput("--workspace-mb must be at least 1, got {}".format(args.workspace_mb))
    return args


def default_bundle_dir() -> Optional[str]:
    """The bundle a script in ``<bundle>/scripts/`` belongs to, when there is one."""
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return here if os.path.isfile(os.path.join(here, bundle_io.MANIFEST)) else None


@dataclass
class BuildRequest:
    onnx: str
    engine: str
    plan: BuildPlan
    batch: BatchProfile
    workspace_mb: int
    timing_cache: Optional[str]
    force: bool
    verbose: bool


def resolve_request(args: argparse.Namespace, tensorrt_version: str) -> BuildRequest:
    """Fill unspecified options from the bundle's manifest (precision, batch sizes, file names)."""
    bundle = args.bundle or default_bundle_dir()
    manifest: Dict[str, Any] = {}
    if bundle is not None:
        try:
            manifest = bundle_io.load_manifest(bundle)
        except bundle_io.IntegrityError as err:
            raise BadInput(str(err)) from None
        except bundle_io.BundleError as err:
            raise BadInput(str(err)) from None
    elif args.onnx is None:
        raise BadInput("give --bundle DIR or --onnx FILE (no bundle manifest found next to this script)")
    engine_spec = manifest.get("engine", {})
    onnx = args.onnx or os.path.join(bundle, manifest.get("model", {}).get("file", "model.onnx"))
    if not os.path.isfile(onnx):
        raise BadInput("{}: no such ONNX file".format(onnx))
    engine = args.engine or os.path.join(bundle or os.path.dirname(os.path.abspath(onnx)),
                                         engine_spec.get("file", "model.engine"))
    precision = args.precision or manifest.get("model", {}).get("precision")
    if precision is None:
        raise BadInput("give --precision (fp32, fp16 or int8): there is no bundle manifest to read it from")
    plan = plan_build(tensorrt_version, precision, args.dla_core)
    batch = BatchProfile(min=args.min_batch or engine_spec.get("min_batch", 1),
                         opt=args.opt_batch or engine_spec.get("opt_batch", 1),
                         max=args.max_batch or engine_spec.get("max_batch", 1))
    cache = None if args.no_timing_cache else (
        args.timing_cache or os.path.join(os.path.dirname(os.path.abspath(engine)), "timing.cache"))
    return BuildRequest(onnx=onnx, engine=engine, plan=plan, batch=batch, workspace_mb=args.workspace_mb,
                        timing_cache=cache, force=args.force, verbose=args.verbose)


# --------------------------------------------------------------------------------------- the build


def build(request: BuildRequest) -> Dict[str, Any]:
    """Parse, build, write the engine and its stamp atomically; return the stamp. Needs ``tensorrt``."""
    import tensorrt as trt

    if os.path.exists(request.engine) and not request.force:
        raise BadInput("{} exists; pass --force to rebuild it".format(request.engine))
    logger = trt.Logger(trt.Logger.VERBOSE if request.verbose else trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    for name in request.plan.network_flags:
        member = getattr(trt.NetworkDefinitionCreationFlag, name, None)
        if member is not None:  # EXPLICIT_BATCH is gone in 10+, STRONGLY_TYPED may go after 11
            flags |= 1 << int(member)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(request.onnx):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise BuildFailed("TensorRT cannot parse {}: {}".format(
            request.onnx, errors[0].splitlines()[0] if errors else "no details"))
    if request.plan.needs_fp16_onnx and not _has_half_tensors(network, trt):
        raise BadInput("TensorRT {} builds fp16 only from an FP16-typed ONNX and {} is FP32; convert it "
                       "(e.g. ModelOpt AutoCast) or build --precision int8/fp32".format(trt.__version__, request.onnx))

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, request.workspace_mb << 20)
    for name in request.plan.builder_flags:
        member = getattr(trt.BuilderFlag, name, None)
        if member is None:
            raise BuildFailed("TensorRT {} has no builder flag {}".format(trt.__version__, name))
        config.set_flag(member)
    if request.plan.dla_core is not None:
        cores = int(getattr(builder, "num_DLA_cores", 0))
        if request.plan.dla_core >= cores:
            raise BadInput("--dla-core {}: this device has {} DLA core(s)".format(request.plan.dla_core, cores))
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = request.plan.dla_core

    profile_used = _add_batch_profile(builder, network, config, request.batch)
    cache_loaded = _load_timing_cache(config, request.timing_cache)

    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise BuildFailed("TensorRT could not build the engine; see its messages above (try --verbose)")
    blob = bytes(serialized)
    onnx_sha = bundle_io.sha256_file(request.onnx)
    stamp = make_stamp(tensorrt_version=trt.__version__, gpu=detect_gpu(), onnx_sha256=onnx_sha,
                       plan=request.plan, profile=profile_used, engine_sha256=hashlib.sha256(blob).hexdigest())
    stamp["timing_cache"] = {"file": request.timing_cache, "loaded": cache_loaded}
    _write_engine_and_stamp(request.engine, blob, stamp)
    if request.timing_cache:
        _write_bytes(request.timing_cache, bytes(config.get_timing_cache().serialize()))
    return stamp


def _has_half_tensors(network: Any, trt: Any) -> bool:
    for i in range(network.num_inputs):
        if network.get_input(i).dtype == trt.DataType.HALF:
            return True
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        for j in range(layer.num_outputs):
            if layer.get_output(j).dtype == trt.DataType.HALF:
                return True
    return False


def _add_batch_profile(builder: Any, network: Any, config: Any, batch: BatchProfile) -> Optional[BatchProfile]:
    if network.num_inputs != 1:
        raise BadInput("expected a classifier with one input, the ONNX has {}".format(network.num_inputs))
    tensor = network.get_input(0)
    dims = list(tensor.shape)
    if any(d < 0 for d in dims[1:]):
        raise BadInput("input {} has dynamic dimensions other than the batch: {}".format(tensor.name, dims))
    if dims[0] >= 0:
        return None  # a fixed batch needs no profile
    profile = builder.create_optimization_profile()
    rest = tuple(dims[1:])
    profile.set_shape(tensor.name, (batch.min,) + rest, (batch.opt,) + rest, (batch.max,) + rest)
    config.add_optimization_profile(profile)
    return batch


def _load_timing_cache(config: Any, path: Optional[str]) -> bool:
    if not path:
        return False
    blob = b""
    if os.path.isfile(path):
        with open(path, "rb") as handle:
            blob = handle.read()
    cache = config.create_timing_cache(blob)
    if config.set_timing_cache(cache, ignore_mismatch=False):
        return bool(blob)
    # A cache from another device or TensorRT version: start afresh rather than fail.
    print("warning: {} does not match this device/TensorRT; starting a new timing cache".format(path),
          file=sys.stderr)
    config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False)
    return False


def _write_bytes(path: str, data: bytes) -> None:
    tmp = "{}.{}.tmp".format(path, os.getpid())
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        _fsync_dir(os.path.dirname(os.path.abspath(path)))
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _fsync_dir(folder: str) -> None:
    # Without it a power cut (a Jetson unplugged) after the rename can bring back the folder's old entry.
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_engine_and_stamp(engine: str, blob: bytes, stamp: Dict[str, Any]) -> None:
    # Old stamp first: a kill between the two writes leaves an unstamped engine, which is refused,
    # never a new engine under an old stamp.
    if os.path.exists(stamp_path(engine)):
        os.unlink(stamp_path(engine))
    _write_bytes(engine, blob)
    _write_bytes(stamp_path(engine), (json.dumps(stamp, indent=2, sort_keys=True) + "\n").encode("utf-8"))


# --------------------------------------------------------------------------------------- entry point


def main(argv: Optional[Sequence[str]] = None) -> int:
    try:
        args = parse_args(argv)
        try:
            import tensorrt as trt
        except ImportError:
            raise BadInput("TensorRT is needed to build an engine and its Python module does not import here; "
                           "run this on the device (JetPack ships it as python3-libnvinfer)") from None
        request = resolve_request(args, trt.__version__)
        stamp = build(request)
    except BadInput as err:
        print("error: {}".format(err), file=sys.stderr)
        return bundle_io.EXIT_BAD_INPUT
    except BuildFailed as err:
        print("build failed: {}".format(err), file=sys.stderr)
        return bundle_io.EXIT_RUNTIME_FAILURE
    except KeyboardInterrupt:
        print("build failed: interrupted (Ctrl-C); no engine was written", file=sys.stderr)
        return bundle_io.EXIT_RUNTIME_FAILURE
    except Exception as err:  # noqa: BLE001 - TensorRT raises plain RuntimeError/TypeError on bad builds
        print("build failed: {}: {}".format(type(err).__name__, str(err).splitlines()[0] if str(err) else ""),
              file=sys.stderr)
        return bundle_io.EXIT_RUNTIME_FAILURE
    print("built {} (TensorRT {}, {}, {}{}); stamp {}".format(
        request.engine, stamp["tensorrt"], stamp["precision"], stamp.get("gpu_name") or "unknown GPU",
        "" if stamp["dla_core"] is None else ", DLA core {}".format(stamp["dla_core"]), stamp_path(request.engine)))
    for note in request.plan.notes:
        print("note: " + note)
    return bundle_io.EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
