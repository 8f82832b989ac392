"""Reading a deploy bundle: its manifest, the integrity of its files, its arrays. Device side and host side.

Copied into every bundle's ``scripts/`` folder and run on a Jetson with only what JetPack ships: Python 3.8+
and numpy. No torch, no nayer_edge.

The manifest lists the sha256 of every other file in the bundle (``files``) and carries the sha256 of its own
canonical JSON without that field (``manifest_sha256``), so an edited manifest is caught too. This is an
integrity check against accidents (a truncated copy, a hand-edited threshold, a swapped model), not a
signature: whoever can edit the files can recompute the hashes.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from typing import Any, Dict, List, Optional

import numpy as np

MANIFEST = "manifest.json"
FORMAT = "nayer-edge-bundle"
FORMAT_VERSION = 1
SELF_HASH_KEY = "manifest_sha256"

# Exit codes shared by the device scripts and the host's nayer-edge.
EXIT_OK = 0
EXIT_GATE_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_RUNTIME_FAILURE = 3  # the runtime failed (onnxruntime or TensorRT raised, out of memory, Ctrl-C)

# The one JSON result of a check: the device's ``check.py --json`` and the host's ``nayer-edge verify --json``
# (of an ONNX model or of a bundle) emit exactly these keys, null where a field does not apply (README, "verify
# and check: one JSON result"). A new key or a changed meaning bumps the version.
RESULT_SCHEMA_VERSION = 1
RESULT_KEYS = (
    "schema_version", "passed", "model", "bundle", "backend", "runtime", "precision", "input", "input_shape",
    "accuracy", "accuracy_samples", "reference_accuracy", "accuracy_drop_points", "teacher_accuracy",
    "labelled_folder", "parity", "latency", "integrity", "device", "gates", "notes",
)
PARITY_KEYS = ("reference", "samples", "min_cosine", "max_abs_error", "mean_abs_error", "top1_agreement")
LATENCY_KEYS = ("batch", "iterations", "mean_ms", "p50_ms", "p90_ms", "p95_ms", "p99_ms", "min_ms", "max_ms",
                "throughput", "cv", "timed")
GATE_KEYS = ("name", "limit", "value", "rule", "passed", "text")


def new_result() -> Dict[str, Any]:
    """A check result with every key of the schema: null, no gates, no notes, not passed."""
    result: Dict[str, Any] = {key: None for key in RESULT_KEYS}
    result.update(schema_version=RESULT_SCHEMA_VERSION, passed=False, gates=[], notes=[])
    return result


def result_gate(name: str, value: Optional[float], limit: Optional[float], passed: bool, text: str,
                rule: str = "<=") -> Dict[str, Any]:
    """One gate of a check result: ``value`` must be ``rule`` (<= or >=) ``limit``; ``text`` says it in words."""
    return {"name": name, "limit": limit, "value": value, "rule": rule, "passed": bool(passed), "text": text}


class BundleError(Exception):
    """Bad input: no manifest, an unreadable one, a missing argument. Exit code 2."""


class IntegrityError(Exception):
    """A bundle file does not match the manifest (changed, missing or extra). Exit code 1.

    ``file`` is the bundle-relative name of the first offending file.
    """

    def __init__(self, file: str, message: str):
        super().__init__(message)
        self.file = file


def sha256_file(path: str, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def canonical_json(data: Dict[str, Any]) -> bytes:
    """The bytes the manifest's self-hash is computed over: sorted keys, no whitespace, UTF-8."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def manifest_self_hash(manifest: Dict[str, Any]) -> str:
    body = {k: v for k, v in manifest.items() if k != SELF_HASH_KEY}
    return hashlib.sha256(canonical_json(body)).hexdigest()


def seal_manifest(manifest: Dict[str, Any]) -> Dict[str, Any]:
    """The manifest with ``manifest_sha256`` set over everything else in it."""
    sealed = {k: v for k, v in manifest.items() if k != SELF_HASH_KEY}
    sealed[SELF_HASH_KEY] = manifest_self_hash(sealed)
    return sealed


def load_manifest(bundle_dir: str) -> Dict[str, Any]:
    """The parsed ``manifest.json`` of ``bundle_dir``; BundleError when absent, unreadable or foreign."""
    path = os.path.join(bundle_dir, MANIFEST)
    if not os.path.isdir(bundle_dir):
        raise BundleError("{}: no such bundle folder".format(bundle_dir))
    if not os.path.isfile(path):
        raise BundleError("{}: no {} here; is this a nayer-edge bundle folder?".format(bundle_dir, MANIFEST))
    try:
        with open(path, "r", encoding="utf-8") as handle:
            manifest = json.load(handle)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        # An unparsable manifest is as good as a tampered one: the integrity gate names it.
        raise IntegrityError(MANIFEST, "integrity gate failed: {} is not valid JSON ({})".format(
            MANIFEST, str(err).splitlines()[0])) from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BundleError("{}: not a nayer-edge bundle manifest (format is not '{}')".format(path, FORMAT))
    version = manifest.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise BundleError("{}: bundle format version {!r} is newer than these scripts understand ({}); "
                          "use the scripts shipped inside the bundle".format(path, version, FORMAT_VERSION))
    return manifest


def _is_int(value: Any, least: int, most: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and least <= value <= most


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_fraction(value: Any) -> bool:
    return value is None or (_is_number(value) and 0 <= value <= 1)


def manifest_problem(manifest: Dict[str, Any]) -> Optional[str]:
    """What is wrong with the fields the scripts read from a manifest, or None. (The hashes say whether the
    files were changed; this says whether what they describe can be used: a re-sealed manifest can say
    anything.)"""
    classes = manifest.get("classes")
    if not (isinstance(classes, list) and len(classes) >= 2 and all(isinstance(c, str) and c for c in classes)):
        return "classes must be a list of at least 2 class names"
    if len(set(classes)) != len(classes):
        return "classes holds duplicate names"
    spec = manifest.get("input")
    if not isinstance(spec, dict):
        return "input must be an object (shape, convention, mean, std)"
    shape = spec.get("shape")
    if not (isinstance(shape, list) and len(shape) == 3 and all(_is_int(d, 1, 4096) for d in shape)):
        return "input shape must be [C, H, W] of integers from 1 to 4096, got {!r}".format(shape)
    if spec.get("convention") not in ("images01", "normalised"):
        return "input convention must be 'images01' or 'normalised', got {!r}".format(spec.get("convention"))
    for key in ("mean", "std"):
        values = spec.get(key)
        if not (isinstance(values, list) and len(values) in (1, shape[0]) and all(_is_number(v) for v in values)):
            return "input {} must be 1 or {} finite numbers, got {!r}".format(key, shape[0], values)
    if any(v <= 0 for v in spec["std"]):
        return "input std must be positive, got {!r}".format(spec["std"])
    for section in ("model", "reference"):
        if not (isinstance(manifest.get(section), dict) and isinstance(manifest[section].get("file"), str)):
            return "{} must be an object naming its file".format(section)
    for section in ("accuracy", "latency", "engine", "parity"):
        if not isinstance(manifest.get(section, {}), dict):
            return "{} must be an object".format(section)
    accuracy, latency = manifest.get("accuracy", {}), manifest.get("latency", {})
    if not _is_fraction(accuracy.get("expected")):
        return "accuracy expected must be a fraction in [0, 1], got {!r}".format(accuracy.get("expected"))
    drop = accuracy.get("max_drop_points")
    if drop is not None and not (_is_number(drop) and 0 <= drop <= 100):
        return "accuracy max_drop_points must be a number of points from 0 to 100, got {!r}".format(drop)
    labelled = manifest.get("labelled")
    if labelled is not None and not (isinstance(labelled, dict) and isinstance(labelled.get("file"), str)
                                     and _is_fraction(labelled.get("top1"))):
        return "labelled must be an object naming its file with a top1 fraction"
    if latency.get("batch") is not None and not _is_int(latency.get("batch"), 1, 65536):
        return "latency batch must be a positive integer, got {!r}".format(latency.get("batch"))
    limit = latency.get("max_ms")
    if limit is not None and not (_is_number(limit) and limit > 0):
        return "latency max_ms must be a positive number, got {!r}".format(limit)
    engine_file = manifest.get("engine", {}).get("file")
    if engine_file is not None and not isinstance(engine_file, str):
        return "engine file must be a file name"
    return None


def verify_integrity(bundle_dir: str, manifest: Optional[Dict[str, Any]] = None) -> List[str]:
    """Check the manifest's self-hash, then the sha256 of every listed file; return the files checked.

    Raises IntegrityError naming the first file that was edited or is missing, or an unlisted file that
    would change what runs (a module in ``scripts/``, ``model.onnx.data``). Engines, timing caches, stamps
    and results made on the device are not listed and are allowed.
    """
    manifest = manifest if manifest is not None else load_manifest(bundle_dir)
    if manifest.get(SELF_HASH_KEY) != manifest_self_hash(manifest):
        raise IntegrityError(MANIFEST, "integrity gate failed: {} was edited after the bundle was made "
                                       "(its manifest_sha256 does not match its content)".format(MANIFEST))
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        raise IntegrityError(MANIFEST, "integrity gate failed: {} lists no files".format(MANIFEST))
    for name in sorted(files):
        parts = str(name).split("/")
        if not isinstance(name, str) or name.startswith("/") or ".." in parts or "" in parts:
            raise IntegrityError(MANIFEST, "integrity gate failed: {} lists {!r}, which is not a file inside the "
                                           "bundle".format(MANIFEST, name))
        path = os.path.join(bundle_dir, *parts)
        if not os.path.isfile(path):
            raise IntegrityError(name, "integrity gate failed: {} is missing from the bundle".format(name))
        if sha256_file(path) != files[name]:
            raise IntegrityError(name, "integrity gate failed: {} sha256 mismatch (the file was changed after "
                                       "the bundle was made)".format(name))
    model = manifest.get("model")
    if not isinstance(model, dict):
        raise BundleError("{}: 'model' must be an object; rebuild the bundle with nayer-edge".format(MANIFEST))
    model_file = str(model.get("file", "model.onnx"))
    for name in _unlisted_files(bundle_dir, files):
        # Engines, timing caches and results written on the device are expected. What is refused are
        # unlisted files that change what runs: a module in scripts/ (it would shadow an import) and
        # external weights beside the model (model.onnx.data).
        if name.startswith("scripts/") or name.startswith(model_file + "."):
            raise IntegrityError(name, "integrity gate failed: {} is not listed in {}; remove it".format(
                name, MANIFEST))
    problem = manifest_problem(manifest)
    if problem:
        raise BundleError("{}: {}; rebuild the bundle with nayer-edge export".format(MANIFEST, problem))
    return sorted(files)


def _unlisted_files(bundle_dir: str, files: Dict[str, str]) -> List[str]:
    extra = []
    for root, dirs, names in os.walk(bundle_dir):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        for name in names:
            rel = os.path.relpath(os.path.join(root, name), bundle_dir).replace(os.sep, "/")
            if rel != MANIFEST and rel not in files:
                extra.append(rel)
    return sorted(extra)


def load_arrays(bundle_dir: str, name: str, keys: List[str]) -> Dict[str, np.ndarray]:
    """Arrays ``keys`` from the bundle's ``.npz`` file ``name``; BundleError when absent, incomplete or empty."""
    path = os.path.join(bundle_dir, name)
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = [k for k in keys if k not in data.files]
            if missing:
                raise BundleError("{}: missing array(s) {}".format(name, ", ".join(missing)))
            arrays = {k: np.asarray(data[k]) for k in keys}
    except (OSError, ValueError) as err:
        raise BundleError("{}: cannot read ({})".format(name, str(err).splitlines()[0])) from None
    if any(a.ndim == 0 or len(a) == 0 for a in arrays.values()):
        raise BundleError("{}: holds no samples; rebuild the bundle with nayer-edge export".format(name))
    if any(a.dtype.kind == "f" and not np.isfinite(a).all() for a in arrays.values()):
        raise BundleError("{}: holds NaN or inf; rebuild the bundle with nayer-edge export".format(name))
    return arrays


def images_to_input(images_u8: np.ndarray, manifest: Dict[str, Any]) -> np.ndarray:
    """uint8 images N×C×H×W (0–255) → what the model takes, as the manifest's ``input`` section says:
    scaled to [0, 1], then ``(x − mean) / std`` for a model that takes normalised input."""
    spec = manifest["input"]
    x = images_u8.astype(np.float32) / np.float32(255.0)
    if spec["convention"] == "normalised":
        mean = np.asarray(spec["mean"], dtype=np.float32).reshape(1, -1, 1, 1)
        std = np.asarray(spec["std"], dtype=np.float32).reshape(1, -1, 1, 1)
        x = (x - mean) / std
    return np.ascontiguousarray(x, dtype=np.float32)
