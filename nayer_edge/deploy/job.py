"""A release job file: one reviewed YAML that says everything ``compress`` runs (teacher, its description, eval data,
target, gates, recipe and its overrides, time budget, seed, output folder).

Keys are strict (an unknown key is an error naming the valid ones), paths are relative to the job file's folder
(``~`` is the home folder), and command-line options the user gave win over the file: defaults ← job ← options.
``recipes/jobs/job.schema.json`` is generated from :class:`CompressJob` (:func:`write_job_schema`).

Example::

    job = load_job("recipes/jobs/digits-cpu-x86.yaml")
    metrics = compress(**compress_arguments(job))
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ..core.atomic import atomic_write_text
from ..core.errors import UserError
from ..core.json_schema import DRAFT, dataclass_schema
from ..core.strict import closest_name, from_dict, load_yaml
from ..distill.config import DistillConfig, chosen_keys, load_config, recipes_dir
from ..inputs.teacher_spec import parse_classes, parse_floats, parse_shape
from .targets import load_target

JOB_SCHEMA_NAME = "job.schema.json"


def job_schema_path() -> Path:
    """The committed JSON Schema of job files: recipes/jobs/ of a checkout, or where a wheel installed it."""
    return recipes_dir() / "jobs" / JOB_SCHEMA_NAME


def _key(text: str, default: Any = dataclasses.MISSING, keys_of: type | None = None, **kwargs: Any) -> Any:
    """A job key with its description (the schema's); ``keys_of``: a mapping whose keys are that config's."""
    return field(default=default, metadata={"help": text, **({"keys_of": keys_of} if keys_of else {})}, **kwargs)


@dataclass(frozen=True)
class JobGates:
    """Release gates (nayer_edge/deploy/gates.py); a gate left out takes the target's limit."""

    min_teacher_retention: float | None = _key(
        "With eval_data: least share of the teacher's top-1 the deployed student keeps, 0 to 1 (0: off).", None)
    min_teacher_agreement: float | None = _key(
        "Without eval_data: least top-1 agreement with the teacher on held-out synthetic samples, 0 to 1 (0: off).",
        None)
    max_accuracy_drop: float | None = _key("With eval_data: most top-1 points below the FP32 student.", None)
    max_latency_ms: float | None = _key("Most p50 latency (ms) at the target's batch.", None)

    def __post_init__(self) -> None:
        for name in ("min_teacher_retention", "min_teacher_agreement"):
            value = getattr(self, name)
            if value is not None and not 0.0 <= value <= 1.0:
                raise UserError(f"gates.{name} is a fraction in [0, 1] (0 turns the gate off), got {value:g}")
        for name in ("max_accuracy_drop", "max_latency_ms"):
            value = getattr(self, name)
            if value is not None and not value >= 0:  # NaN fails too
                raise UserError(f"gates.{name} must not be negative, got {value:g}")


@dataclass(frozen=True)
class CompressJob:
    """A nayer-edge compress job (nayer-edge compress --config JOB.yaml). Paths are relative to the job file's
    folder; command-line options win over every key."""

    teacher: str = _key("Teacher file: TorchScript, torch.export .pt2, ONNX, a Hugging Face folder, or a state dict "
                        "with arch.")
    target: str = _key("Deployment target (nayer-edge targets), e.g. cpu-x86 or jetson.")
    out: str | None = _key("Output folder [default: runs/compress in the current folder].", None)
    eval_data: str | None = _key("Labelled real data, .npz (x, y) or an image folder root/<class>/*.png; for "
                                 "the gates and the report, never for selection.", None)
    arch: str | None = _key("Architecture of a state-dict teacher: a zoo name, or timm:NAME.", None)
    classes: list[str] | str | None = _key("Class names: a list, or a file with one per line [default: the "
                                           "teacher's metadata, else 0 ... K-1].", None)
    input_shape: tuple[int, int, int] | None = _key("[C, H, W] the teacher takes [default: its metadata, else "
                                                    "[3, 32, 32]].", None)
    mean: tuple[float, ...] | None = _key("Per-channel mean the teacher normalises with [default: 0].", None)
    std: tuple[float, ...] | None = _key("Per-channel std the teacher normalises with [default: 1].", None)
    trust_pickle: bool = _key("Allow loading a fully pickled module (runs code from the file).", False)
    precision: Literal["fp32", "fp16", "int8"] | None = _key("Deployed precision [default: the target's].", None)
    qat: bool | None = _key("INT8 quantization-aware fine-tuning [default: on for INT8].", None)
    gates: JobGates = _key("Release gates; a gate left out takes the target's limit.", default_factory=JobGates)
    student: str | None = _key("Zoo name, package.module:factory or file.py:factory [default: the recipe's].",
                               None)
    recipe: str | None = _key("Recipe: a name from recipes/ or a YAML file [default: none].", None)
    recipe_overrides: dict[str, Any] = _key("Distillation settings over the recipe: any DistillConfig key.",
                                            keys_of=DistillConfig, default_factory=dict)
    time_budget: float | None = _key("Seconds for the whole job; the distillation is planned to fit.", None)
    seed: int | None = _key("Random seed [default: 0].", None)


# The job's keys that are compress() keywords (out is its out_dir), and those that are DistillConfig fields.
RUN_KEYS = ("teacher", "target", "out", "eval_data", "arch", "classes", "input_shape", "mean", "std",
            "trust_pickle", "precision", "qat")
GATE_KEYS = tuple(f.name for f in dataclasses.fields(JobGates))
CONFIG_KEYS = ("student", "time_budget", "seed")


def load_job(path: str | Path) -> CompressJob:
    """Read a job file strictly: unknown keys and wrong types are errors, paths are resolved against its folder,
    and the files it names, its target and its distillation settings are checked before anything runs."""
    path = Path(path)
    data = load_yaml(path)
    _check_keys(path, data)
    try:
        job = from_dict(CompressJob, data, where=f"{path}: job")
    except UserError as err:
        raise _in(path, err) from None
    job = _resolved(job, path.resolve().parent)
    _check(path, job)
    return job


def _check_keys(path: Path, data: dict[str, Any]) -> None:
    """Unknown keys at every level, required keys, and a distillation setting given twice."""
    _known(path, "", data, [f.name for f in dataclasses.fields(CompressJob)])
    required = [f for f in dataclasses.fields(CompressJob)
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    for missing in (f for f in required if f.name not in data):
        raise UserError(f"{path}: missing key '{missing.name}' ({missing.metadata['help']}); required: "
                        f"{', '.join(f.name for f in required)}")
    for section, cls in (("gates", JobGates), ("recipe_overrides", DistillConfig)):
        if section in data and data[section] is None:  # every key under it commented out
            data[section] = {}
        value = data.get(section, {})
        if not isinstance(value, dict):
            raise UserError(f"{path}: {section} must be a mapping of keys to values, got {type(value).__name__}")
        _known(path, f"{section}.", value, [f.name for f in dataclasses.fields(cls)])
    twice = [key for key in CONFIG_KEYS if key in data and key in (data.get("recipe_overrides") or {})]
    if twice:
        raise UserError(f"{path}: {twice[0]} is set both at the top level and in recipe_overrides; keep one")


def _known(path: Path, prefix: str, data: dict[str, Any], valid: list[str]) -> None:
    for key in data:
        if key not in valid:
            # A short list in full; DistillConfig's sixty keys as the few nearest the misspelt one.
            listed = valid if len(valid) <= 20 else difflib.get_close_matches(str(key), valid, n=6, cutoff=0.0)
            label = "valid keys" if len(valid) <= 20 else "nearest valid keys"
            raise UserError(f"{path}: unknown key '{prefix}{key}'{closest_name(str(key), valid)}; "
                            f"{label}{' in ' + prefix.rstrip('.') if prefix else ''}: {', '.join(listed)}")


def _resolved(job: CompressJob, folder: Path) -> CompressJob:
    """The job with its paths made absolute against ``folder`` (the job file's); names stay names."""
    def at(value: str) -> str:
        p = Path(value).expanduser()
        return os.path.normpath(p if p.is_absolute() else folder / p)  # "a/../b" as "b"; links left as they are

    changes: dict[str, Any] = {key: at(getattr(job, key)) for key in ("teacher", "out", "eval_data")
                               if getattr(job, key) is not None}
    if isinstance(job.classes, str):
        changes["classes"] = at(job.classes)
    if job.recipe is not None and Path(job.recipe).suffix:  # a YAML file, not a recipe's name
        changes["recipe"] = at(job.recipe)
    if job.student is not None and ".py:" in job.student:  # file.py:factory
        file, factory = job.student.rsplit(":", 1)
        changes["student"] = f"{at(file)}:{factory}"
    return dataclasses.replace(job, **changes)


def _check(path: Path, job: CompressJob) -> None:
    """What the job names exists and makes sense, before anything runs (messages name the job file)."""
    relative = "paths in a job file are relative to its folder"
    if not Path(job.teacher).exists():
        raise UserError(f"{path}: teacher: {job.teacher}: no such file ({relative})")
    if job.eval_data is not None and not Path(job.eval_data).exists():
        raise UserError(f"{path}: eval_data: {job.eval_data}: no such file or folder ({relative})")
    try:
        if isinstance(job.classes, str) and not Path(job.classes).is_file():
            raise UserError(f"classes: {job.classes}: no such file ({relative}; or give a list of names)")
        _classes(job)
        if job.input_shape is not None:
            parse_shape(",".join(map(str, job.input_shape)))
        for name in ("mean", "std"):
            if getattr(job, name) is not None:
                parse_floats(",".join(map(str, getattr(job, name))))
        load_target(job.target)
        load_config(job.recipe, config_overrides(job))
    except UserError as err:
        raise _in(path, err) from None


def _in(path: Path, err: UserError) -> UserError:
    text = str(err)
    return UserError(text if text.startswith(str(path)) else f"{path}: {text}")


def _classes(job: CompressJob) -> list[str] | None:
    if job.classes is None:
        return None
    if isinstance(job.classes, str):
        return parse_classes(job.classes)
    names = list(job.classes)
    if not names or not all(names) or len(set(names)) != len(names):
        raise UserError("classes: give a non-empty list of distinct, non-empty names")
    return names


def config_overrides(job: CompressJob) -> dict[str, Any]:
    """The DistillConfig settings the job makes over its recipe: recipe_overrides and the top-level keys."""
    top = {key: getattr(job, key) for key in CONFIG_KEYS if getattr(job, key) is not None}
    return {**job.recipe_overrides, **top}


def compress_arguments(job: CompressJob | None, command_line: dict[str, Any] | None = None,
                       given: set[str] | frozenset[str] = frozenset()) -> dict[str, Any]:
    """The keywords of :func:`~nayer_edge.deploy.compress.compress` (config included) for ``job``, where the
    command line's options win: its defaults ← the job ← the options the user ``given``.

    ``command_line`` holds the command's values by the job's key names (RUN_KEYS, GATE_KEYS, ``recipe``) and
    ``config_overrides``: the DistillConfig settings it made (None: not given).
    """
    command_line = command_line or {}
    values: dict[str, Any] = {}
    for key in (*RUN_KEYS, *GATE_KEYS, "recipe"):
        from_job = None if job is None else (getattr(job.gates, key) if key in GATE_KEYS else getattr(job, key))
        values[key] = command_line.get(key) if key in given or from_job is None else from_job
    if values["teacher"] is None:
        raise UserError("compress needs a teacher: give TEACHER, or --config JOB.yaml with a teacher key")
    if job is not None and "classes" not in given:
        values["classes"] = _classes(job)
    overrides = {**(config_overrides(job) if job else {}),
                 **{k: v for k, v in (command_line.get("config_overrides") or {}).items() if v is not None}}
    recipe = values.pop("recipe")
    values["out_dir"] = values.pop("out") or "runs/compress"
    values["trust_pickle"] = bool(values["trust_pickle"])
    return {**values, "config": load_config(recipe, overrides), "user_set": chosen_keys(recipe, overrides)}


def job_schema() -> dict[str, Any]:
    """The JSON Schema of a job file, from :class:`CompressJob` (recipe_overrides: DistillConfig's keys)."""
    return {"$schema": DRAFT, "title": "nayer-edge compress job", **dataclass_schema(CompressJob)}


def job_schema_text() -> str:
    return json.dumps(job_schema(), indent=2) + "\n"


def write_job_schema(path: str | Path | None = None) -> Path:
    """Write the job file's JSON Schema (what ``recipes/jobs/job.schema.json`` must hold)."""
    target = Path(path) if path is not None else job_schema_path()
    atomic_write_text(target, job_schema_text())
    return target
