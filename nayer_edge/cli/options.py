"""The options commands share, declared once (typer ``Annotated`` types and groups), and the config they make."""

from __future__ import annotations

import functools
import inspect as pyinspect
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Optional

import typer


class Device(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


class GeneratorKind(str, Enum):
    nayer = "nayer"
    noise = "noise"


class EmbeddingKind(str, Enum):
    text = "text"
    onehot = "onehot"


class ScheduleKind(str, Enum):
    auto = "auto"
    fixed = "fixed"


class AmpKind(str, Enum):
    auto = "auto"
    fp32 = "fp32"
    bf16 = "bf16"
    fp16 = "fp16"


TeacherArg = Annotated[Path, typer.Argument(help="Teacher: TorchScript, torch.export .pt2, ONNX, a Hugging Face "
                                                 "folder, or a state dict (.pt, .safetensors) with --arch.")]
OptionalTeacherArg = Annotated[Optional[Path], typer.Argument(
    help="Teacher: TorchScript, torch.export .pt2, ONNX, a Hugging Face folder, or a state dict with --arch "
         "\\[default: the job file's teacher].",
    show_default=False)]
JobOpt = Annotated[Optional[Path], typer.Option(
    "--config", help="Job file (YAML, recipes/jobs/job.schema.json): teacher, target, gates, recipe, ...; the "
    "options you give win over its keys.")]
ArchOpt = Annotated[Optional[str], typer.Option(
    "--arch", help="Architecture of a state-dict teacher: a zoo name, or timm:NAME (the timm extra).")]
ClassesOpt = Annotated[Optional[str], typer.Option("--classes", help="Class names: a file (one per line) or a comma-separated list.")]
ShapeOpt = Annotated[Optional[str], typer.Option("--input-shape", help="C,H,W the teacher takes \\[default: metadata, else 3,32,32].")]
MeanOpt = Annotated[Optional[str], typer.Option("--mean", help="Per-channel mean the teacher normalises with [default 0].")]
StdOpt = Annotated[Optional[str], typer.Option("--std", help="Per-channel std the teacher normalises with [default 1].")]
TrustOpt = Annotated[bool, typer.Option("--trust-pickle", help="Allow loading a fully pickled module (runs code from the file).")]
TrustCodeOpt = Annotated[bool, typer.Option("--trust-code", help="Import the student factory (module:factory) that RUN_DIR/student.json names (runs its code).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the result as JSON on stdout.")]


def teacher_kwargs(options: dict[str, Any]) -> dict[str, Any]:
    """The teacher-loading keywords of the library from the TEACHER_OPTIONS of a command."""
    from ..inputs.teacher_spec import parse_classes, parse_floats, parse_shape

    return {
        "arch": options["arch"],
        "classes": parse_classes(options["classes"]) if options["classes"] else None,
        "input_shape": parse_shape(options["input_shape"]) if options["input_shape"] else None,
        "mean": parse_floats(options["mean"]) if options["mean"] else None,
        "std": parse_floats(options["std"]) if options["std"] else None,
        "trust_pickle": options["trust_pickle"],
    }


OutOpt = Annotated[Path, typer.Option("--out", help="Output folder.")]
StudentOpt = Annotated[Optional[str], typer.Option("--student", help="Zoo name or package.module:factory.")]
RecipeOpt = Annotated[Optional[str], typer.Option("--recipe", help="Recipe name from recipes/ or a YAML file.")]
EvalOpt = Annotated[Optional[Path], typer.Option("--eval-data", help=".npz (x, y) or image folder root/<class>/*.png; reported, never used for selection.")]
EpochsOpt = Annotated[Optional[int], typer.Option("--epochs")]
BudgetOpt = Annotated[Optional[float], typer.Option("--time-budget", help="Seconds for the whole command (setup, measuring, training, artefacts); the schedule is planned to fit.")]
ScheduleOpt = Annotated[Optional[ScheduleKind], typer.Option("--schedule", help="auto: plan the settings you leave unset for this device, the models and the budget; fixed: use the recipe and defaults as they are (the paper's GPU values) \\[default: auto].")]
GeneratorOpt = Annotated[Optional[GeneratorKind], typer.Option("--generator", help="nayer (label-text embeddings) or noise (z ~ N(0, I) baseline).")]
EmbeddingOpt = Annotated[Optional[EmbeddingKind], typer.Option("--embedding", help="text (LTE) or onehot (ablation).")]
EncoderOpt = Annotated[Optional[str], typer.Option("--text-encoder", help="Hub name or local path of a CLIP or sentence encoder.")]
TemplateOpt = Annotated[Optional[str], typer.Option("--prompt-template", help="Prompt with {} for the class name.")]
DownloadOpt = Annotated[bool, typer.Option("--allow-download", help="Let the text encoder be fetched from a hub.")]
IntOpt = lambda flag, text=None: Annotated[Optional[int], typer.Option(flag, help=text)]
DeviceOpt = Annotated[Optional[Device], typer.Option("--device", help="Where to run (default: the recipe's device, else auto).")]
SeedOpt = Annotated[Optional[int], typer.Option("--seed")]
ResumeOpt = Annotated[bool, typer.Option("--resume", help="Continue the interrupted run in --out.")]
AmpOpt = Annotated[Optional[AmpKind], typer.Option("--amp", help="Autocast precision of distillation (default auto: bf16 on a GPU or CPU that has it natively, else fp32).")]
ChannelsLastOpt = Annotated[Optional[bool], typer.Option("--channels-last/--no-channels-last", help="NHWC memory format (default: on for CUDA, off on the CPU).")]
CompileOpt = Annotated[Optional[bool], typer.Option("--compile/--no-compile", help="torch.compile the student (and an eager teacher); default off.")]


def _options(**declared: tuple[Any, Any]) -> tuple[pyinspect.Parameter, ...]:
    """Options several commands share, declared once: name=(annotation, default)."""
    return tuple(pyinspect.Parameter(name, pyinspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation)
                 for name, (annotation, default) in declared.items())


TEACHER_OPTIONS = _options(arch=(ArchOpt, None), classes=(ClassesOpt, None), input_shape=(ShapeOpt, None),
                           mean=(MeanOpt, None), std=(StdOpt, None), trust_pickle=(TrustOpt, False))


# The distillation settings of distill, compress and plan.
SCHEDULE_OPTIONS = _options(
    student=(StudentOpt, None), recipe=(RecipeOpt, None), epochs=(EpochsOpt, None), time_budget=(BudgetOpt, None),
    generator=(GeneratorOpt, None), embedding=(EmbeddingOpt, None), text_encoder=(EncoderOpt, None),
    prompt_template=(TemplateOpt, None), allow_download=(DownloadOpt, False),
    synthesis_batch=(IntOpt("--synthesis-batch"), None), kd_batch=(IntOpt("--kd-batch"), None),
    kd_steps=(IntOpt("--kd-steps", "Student steps per epoch."), None),
    g_steps=(IntOpt("--g-steps", "Generator steps per synthesis round."), None),
    memory_capacity=(IntOpt("--memory-capacity", "Most synthetic samples kept."), None),
    device=(DeviceOpt, None), seed=(SeedOpt, None), amp=(AmpOpt, None), channels_last=(ChannelsLastOpt, None))


# What a training run adds (distill and compress).
RUN_OPTIONS = _options(eval_data=(EvalOpt, None), compile=(CompileOpt, None), schedule=(ScheduleOpt, None),
                       resume=(ResumeOpt, False))
LogJsonOpt = Annotated[Optional[Path], typer.Option("--log-json", help="Also append every progress event (stages, epochs, rounds with -v, the result) to this file as JSON lines, flushed as they happen.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress on the console: only the result and errors (--log-json still gets every event).")]
VerboseOpt = Annotated[bool, typer.Option("--verbose", "-v", help="Also a line per synthesis round (round, kept loss, seconds); with --json, progress lines on stderr even when it is not a terminal.")]
# How a command reports while it runs (see cli/progress.py).
LOG_OPTIONS = _options(log_json=(LogJsonOpt, None), quiet=(QuietOpt, False), verbose=(VerboseOpt, False))
# What a distillation run takes, for `distill` and `compress` alike.
DISTILL_OPTIONS = (TEACHER_OPTIONS, SCHEDULE_OPTIONS, RUN_OPTIONS, LOG_OPTIONS)


def with_options(*groups: tuple[pyinspect.Parameter, ...]) -> Any:
    """Adds the shared option ``groups`` to a command's own parameters (typer reads the signature); the command
    receives them as one dict, ``options``."""
    shared = [parameter for group in groups for parameter in group]
    names = [parameter.name for parameter in shared]

    def decorate(command: Any) -> Any:
        signature = pyinspect.signature(command, eval_str=True)
        own = [p for name, p in signature.parameters.items() if name != "options"]

        @functools.wraps(command)
        def wrapper(**kwargs: Any) -> Any:
            options = {name: kwargs.pop(name) for name in names}
            return command(**kwargs, options=options)

        wrapper.__signature__ = signature.replace(parameters=own + shared)  # type: ignore[attr-defined]
        return wrapper

    return decorate


# Command-line options that override a DistillConfig field of the same name.
CONFIG_OPTIONS = ("student", "epochs", "time_budget", "generator", "embedding", "text_encoder", "prompt_template",
                  "allow_download", "synthesis_batch", "kd_batch", "kd_steps", "g_steps", "memory_capacity",
                  "device", "seed", "amp", "channels_last", "compile", "schedule")


def config_overrides(options: dict[str, Any]) -> dict[str, Any]:
    """The command's options that override a DistillConfig field (CONFIG_OPTIONS), as the config spells them; None:
    not given."""
    overrides = {key: options[key] for key in CONFIG_OPTIONS if key in options}
    for key in ("generator", "embedding", "device", "amp", "schedule"):
        if overrides.get(key) is not None:
            overrides[key] = overrides[key].value
    overrides["allow_download"] = overrides.get("allow_download") or None
    return overrides


def config_from(options: dict[str, Any]) -> tuple[Any, set[str]]:
    """The run's config, defaults ← recipe ← the command's options (those in CONFIG_OPTIONS), and the settings the
    recipe and options chose (the planner keeps them)."""
    from ..distill.config import chosen_keys, load_config

    overrides = config_overrides(options)
    return load_config(options["recipe"], overrides), chosen_keys(options["recipe"], overrides)


def given_options(ctx: typer.Context) -> set[str]:
    """The parameters the user gave (on the command line or through the environment), not left at their defaults."""
    return {name for name in ctx.params
            if getattr(ctx.get_parameter_source(name), "name", "DEFAULT") not in ("DEFAULT", "DEFAULT_MAP")}


def distill_kwargs(options: dict[str, Any], progress: Any) -> dict[str, Any]:
    """The keywords ``distill`` and ``compress`` give the library alike: the config and the settings chosen, the
    clock, the eval data, resume, the ``progress`` (cli/progress.py) and the teacher's description."""
    config, chosen = config_from(options)
    return {"config": config, "user_set": chosen, "clock_start": clock_start(), "eval_data": options["eval_data"],
            "resume": options["resume"], "show_progress": progress, **teacher_kwargs(options)}


def clock_start() -> float:
    from .. import IMPORTED_AT

    return IMPORTED_AT


RetentionOpt = Annotated[Optional[float], typer.Option(
    "--min-teacher-retention", help="Gate: least share of the teacher's top-1 the deployed student keeps on the eval data, 0 to 1 (0: off) \\[default: the target's, 0.9].")]
AgreementOpt = Annotated[Optional[float], typer.Option(
    "--min-teacher-agreement", help="Gate without eval data: least top-1 agreement with the teacher on held-out synthetic samples (0: off) \\[default: the target's, 0.9].")]


class Precision(str, Enum):
    fp32 = "fp32"
    fp16 = "fp16"
    int8 = "int8"


class Layout(str, Enum):
    ort = "ort"
    tensorrt = "tensorrt"
