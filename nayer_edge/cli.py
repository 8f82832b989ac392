"""The ``nayer-edge`` command line: a thin shell over the library functions of the same names.

Each command imports the library it runs inside itself, so that ``nayer-edge --help``, ``targets`` and a bad
option answer without importing torch.
"""

from __future__ import annotations

import functools
import inspect as pyinspect
import json
import os
import shlex
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.table import Table

from .core.errors import UserError
from .core.interrupt import Interrupted, abort_on_signals
from .distill import run_folder as rf

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Data-free distillation (NAYER) and edge deployment of image classifiers.")
console = Console()
err_console = Console(stderr=True)


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


TeacherArg = Annotated[Path, typer.Argument(help="Teacher: TorchScript, torch.export .pt2, or a state dict with --arch.")]
ArchOpt = Annotated[Optional[str], typer.Option("--arch", help="Zoo architecture of a state-dict teacher.")]
ClassesOpt = Annotated[Optional[str], typer.Option("--classes", help="Class names: a file (one per line) or a comma-separated list.")]
ShapeOpt = Annotated[Optional[str], typer.Option("--input-shape", help="C,H,W the teacher takes [default: metadata, else 3,32,32].")]
MeanOpt = Annotated[Optional[str], typer.Option("--mean", help="Per-channel mean the teacher normalises with [default 0].")]
StdOpt = Annotated[Optional[str], typer.Option("--std", help="Per-channel std the teacher normalises with [default 1].")]
TrustOpt = Annotated[bool, typer.Option("--trust-pickle", help="Allow loading a fully pickled module (runs code from the file).")]
TrustCodeOpt = Annotated[bool, typer.Option("--trust-code", help="Import the student factory (module:factory) that RUN_DIR/student.json names (runs its code).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the result as JSON on stdout.")]


def _teacher_kwargs(options: dict[str, Any]) -> dict[str, Any]:
    """The teacher-loading keywords of the library from the TEACHER_OPTIONS of a command."""
    from .inputs.teacher import parse_classes, parse_floats, parse_shape

    return {
        "arch": options["arch"],
        "classes": parse_classes(options["classes"]) if options["classes"] else None,
        "input_shape": parse_shape(options["input_shape"]) if options["input_shape"] else None,
        "mean": parse_floats(options["mean"]) if options["mean"] else None,
        "std": parse_floats(options["std"]) if options["std"] else None,
        "trust_pickle": options["trust_pickle"],
    }


def _summary(metrics: dict[str, Any], title: str) -> None:
    table = Table(title=title)
    table.add_column("model")
    table.add_column("params", justify="right")
    table.add_column("top-1 (held-out real data)", justify="right")
    fmt = lambda v: "—" if v is None else f"{v:.2%}"  # noqa: E731
    table.add_row("teacher", f"{metrics['teacher_params']:,}", fmt(metrics["teacher_accuracy"]))
    table.add_row(f"student ({metrics['student']})", f"{metrics['student_params']:,}", fmt(metrics["student_accuracy"]))
    console.print(table)
    if metrics["teacher_accuracy"] and metrics["student_accuracy"] is not None:
        console.print(f"student reaches {metrics['student_accuracy'] / metrics['teacher_accuracy']:.1%} of the "
                      f"teacher's accuracy with {metrics['compression']}× fewer parameters")
    agreement = metrics["agreement"]
    console.print(f"teacher–student agreement on held-out synthetic samples: {fmt(agreement)}; "
                  f"{metrics['epochs']} epochs in {metrics['distill_seconds']:.0f} s ({metrics['stopped_by']})")
    for note in metrics.get("notes", []):
        console.print(f"[yellow]note:[/] {note}")
    artifacts = metrics["artifacts"]
    console.print(f"artefacts in {Path(artifacts.get(rf.METRICS) or artifacts[rf.STUDENT_TS]).parent}")


OutOpt = Annotated[Path, typer.Option("--out", help="Output folder.")]
StudentOpt = Annotated[Optional[str], typer.Option("--student", help="Zoo name or package.module:factory.")]
RecipeOpt = Annotated[Optional[str], typer.Option("--recipe", help="Recipe name from recipes/ or a YAML file.")]
EvalOpt = Annotated[Optional[Path], typer.Option("--eval-data", help=".npz (x, y) or image folder root/<class>/*.png; reported, never used for selection.")]
EpochsOpt = Annotated[Optional[int], typer.Option("--epochs")]
BudgetOpt = Annotated[Optional[float], typer.Option("--time-budget", help="Seconds for the whole command (setup, measuring, training, artefacts); the schedule is planned to fit.")]
ScheduleOpt = Annotated[Optional[ScheduleKind], typer.Option("--schedule", help="auto: plan the settings you leave unset for this device, the models and the budget; fixed: use the recipe and defaults as they are (the paper's GPU values) [default: auto].")]
GeneratorOpt = Annotated[Optional[GeneratorKind], typer.Option("--generator", help="nayer (label-text embeddings) or noise (z ~ N(0, I) baseline).")]
EmbeddingOpt = Annotated[Optional[EmbeddingKind], typer.Option("--embedding", help="text (LTE) or onehot (ablation).")]
EncoderOpt = Annotated[Optional[str], typer.Option("--text-encoder", help="Hub name or local path of a CLIP or sentence encoder.")]
TemplateOpt = Annotated[Optional[str], typer.Option("--prompt-template", help="Prompt with {} for the class name.")]
DownloadOpt = Annotated[bool, typer.Option("--allow-download", help="Let the text encoder be fetched from a hub.")]
IntOpt = lambda flag, text=None: Annotated[Optional[int], typer.Option(flag, help=text)]  # noqa: E731
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


def _config(options: dict[str, Any]) -> tuple[Any, set[str]]:
    """The run's config, defaults ← recipe ← the command's options (those in CONFIG_OPTIONS), and the settings the
    recipe and options chose (the planner keeps them)."""
    from .distill.config import chosen_keys, load_config

    overrides = {key: options[key] for key in CONFIG_OPTIONS if key in options}
    for key in ("generator", "embedding", "device", "amp", "schedule"):
        if overrides.get(key) is not None:
            overrides[key] = overrides[key].value
    overrides["allow_download"] = overrides.get("allow_download") or None
    return load_config(options["recipe"], overrides), chosen_keys(options["recipe"], overrides)


def _clock_start() -> float:
    from . import IMPORTED_AT

    return IMPORTED_AT


@app.command()
@with_options(TEACHER_OPTIONS, SCHEDULE_OPTIONS, RUN_OPTIONS)
def distill(teacher: TeacherArg, out: OutOpt = Path("runs/distill"), as_json: JsonOpt = False, *,
            options: dict[str, Any]) -> None:
    """Distil TEACHER into a small student without any training data (NAYER)."""
    from .distill.run import distill as run_distill

    config, chosen = _config(options)
    metrics = run_distill(teacher, out_dir=out, config=config, eval_data=options["eval_data"],
                          resume=options["resume"], show_progress=not as_json or sys.stderr.isatty(),
                          user_set=chosen, clock_start=_clock_start(), **_teacher_kwargs(options))
    _print_result(metrics, as_json, "distillation")


RetentionOpt = Annotated[Optional[float], typer.Option(
    "--min-teacher-retention", help="Gate: least share of the teacher's top-1 the deployed student keeps on the eval data, 0 to 1 (0: off) [default: the target's, 0.9].")]
AgreementOpt = Annotated[Optional[float], typer.Option(
    "--min-teacher-agreement", help="Gate without eval data: least top-1 agreement with the teacher on held-out synthetic samples (0: off) [default: the target's, 0.9].")]


def _fail_on_gates(metrics: dict[str, Any]) -> None:
    """Exit 1 with one line per failed gate, saying what it means, when a gate failed."""
    from .deploy.gates import failure_lines
    from .deploy.verify import Gate

    if metrics["passed"]:
        return
    for line in failure_lines(metrics, [Gate(**g) for g in metrics["gates"]]):
        err_console.print(f"gate failed: {line}", markup=False, highlight=False, soft_wrap=True)
    raise typer.Exit(1)


class Precision(str, Enum):
    fp32 = "fp32"
    fp16 = "fp16"
    int8 = "int8"


@app.command()
@with_options(TEACHER_OPTIONS, SCHEDULE_OPTIONS, RUN_OPTIONS)
def compress(
    teacher: TeacherArg,
    target: Annotated[str, typer.Option("--target", help="Deployment target (nayer-edge targets).")] = "cpu-x86",
    out: OutOpt = Path("runs/compress"),
    precision: Annotated[Optional[Precision], typer.Option("--precision", help="Default: the target's.")] = None,
    qat: Annotated[Optional[bool], typer.Option("--qat/--no-qat", help="INT8 quantization-aware fine-tuning on the synthetic samples [default: on for INT8].")] = None,
    max_accuracy_drop: Annotated[Optional[float], typer.Option("--max-accuracy-drop", help="Gate: top-1 points below the FP32 student.")] = None,
    max_latency_ms: Annotated[Optional[float], typer.Option("--max-latency-ms", help="Gate: p50 latency at the target's batch.")] = None,
    min_teacher_retention: RetentionOpt = None, min_teacher_agreement: AgreementOpt = None,
    as_json: JsonOpt = False, *, options: dict[str, Any],
) -> None:
    """Distil, quantize, export and verify for a deployment target; exit 1 when a gate fails."""
    from .deploy.compress import compress as run_compress

    config, chosen = _config(options)
    metrics = run_compress(teacher, target=target, out_dir=out, config=config, eval_data=options["eval_data"],
                           user_set=chosen, clock_start=_clock_start(),
                           precision=precision.value if precision else None, qat=qat,
                           max_accuracy_drop=max_accuracy_drop, max_latency_ms=max_latency_ms,
                           resume=options["resume"], min_teacher_retention=min_teacher_retention,
                           min_teacher_agreement=min_teacher_agreement,
                           show_progress=not as_json or sys.stderr.isatty(), **_teacher_kwargs(options))
    _print_result(metrics, as_json, f"compress → {metrics['target']}")
    if not as_json:
        _print_deployment(metrics)
    _fail_on_gates(metrics)


def _print_deployment(metrics: dict[str, Any]) -> None:
    fmt = lambda v: "—" if v is None else f"{v:.2%}"  # noqa: E731
    console.print(f"ONNX FP32 top-1 {fmt(metrics['fp32_onnx_accuracy'])}"
                  + (f", INT8 top-1 {fmt(metrics['int8_accuracy'])}" if metrics["int8_accuracy"] is not None else ""))
    for name, lat in metrics["latency"].items():
        console.print(f"{name}: p50 {lat['p50_ms']:.3f} ms at batch {lat['batch']} ({lat['throughput']:,.0f} images/s)")
    for gate in metrics["gates"]:
        rule = "≥" if gate.get("rule") == ">=" else "≤"
        console.print(f"gate {gate['name']}: {gate['value']:.4g} (limit {rule} {gate['limit']:.4g}) "
                      f"{'[green]pass[/]' if gate['passed'] else '[red]FAIL[/]'}")
    console.print(f"report: {metrics['artifacts'][rf.REPORT]}")


def _print_result(metrics: dict[str, Any], as_json: bool, title: str) -> None:
    if as_json:
        print(json.dumps({k: v for k, v in metrics.items() if k != "history"}, indent=2))
    else:
        _summary(metrics, title)


@app.command()
@with_options(TEACHER_OPTIONS, SCHEDULE_OPTIONS)
def plan(
    teacher: TeacherArg,
    eval_samples: Annotated[int, typer.Option("--eval-samples", help="Held-out images the run would evaluate on each epoch.")] = 0,
    as_json: JsonOpt = False, *, options: dict[str, Any],
) -> None:
    """Measure the step costs here and print the schedule distill would run, without training."""
    from .distill.run import plan as run_plan

    config, chosen = _config(options)
    result = run_plan(teacher, config=config, user_set=chosen, eval_samples=eval_samples, **_teacher_kwargs(options))
    if as_json:
        print(json.dumps(result.to_dict(), indent=2))
        return
    from .distill.planner import plan_table

    console.print(plan_table(result))
    for note in result.notes:
        console.print(f"[yellow]plan:[/] {note}")


@app.command()
@with_options(TEACHER_OPTIONS)
def inspect(teacher: TeacherArg, as_json: JsonOpt = False, *, options: dict[str, Any]) -> None:
    """Show a teacher's format, size, number of classes and BatchNorm layers."""
    from .inputs.teacher import inspect_teacher, load_teacher

    info = inspect_teacher(load_teacher(teacher, **_teacher_kwargs(options)))
    if as_json:
        print(json.dumps(info, indent=2, default=str))
        return
    for key in ("path", "format", "sha256", "params", "num_classes", "input_shape", "mean", "std"):
        value = info[key]
        console.print(f"[bold]{key}[/]: {f'{value:,}' if key == 'params' else value}")
    classes_list = info.get("classes") or []
    console.print(f"[bold]classes[/]: {', '.join(map(str, classes_list[:20]))}{' …' if len(classes_list) > 20 else ''}")
    layers = info["batchnorm_layers"]
    console.print(f"[bold]batchnorm layers[/]: {len(layers)}")
    for layer in layers:
        console.print(f"  {layer['name']}  {layer['type']}({layer['num_features']})")
    if not layers:
        console.print("[yellow]no BatchNorm: distillation runs without the BN-statistics loss[/]")
    for note in info.get("notes", []):
        console.print(f"[yellow]note:[/] {note}")


@app.command()
def demo(
    out: Annotated[Path, typer.Option("--out", help="Output folder.")] = Path("runs/demo"),
    target: Annotated[str, typer.Option("--target", help="Deployment target (nayer-edge targets).")] = "cpu-x86",
    time_budget: Annotated[Optional[float], typer.Option("--time-budget", help="Seconds for the whole job (distillation planned to fit) [default: 170].")] = None,
    epochs: Annotated[Optional[int], typer.Option("--epochs")] = None,
    seed: Annotated[Optional[int], typer.Option("--seed")] = None,
    resume: ResumeOpt = False, as_json: JsonOpt = False,
) -> None:
    """The main job on a built-in teacher: handwritten digits, compressed without their images."""
    from .demo.run import demo as run_demo
    from .distill.config import chosen_keys, load_config

    overrides = {"time_budget": time_budget, "epochs": epochs, "seed": seed}
    config = load_config("demo-digits", overrides)
    metrics = run_demo(out, config=config, show_progress=not as_json or sys.stderr.isatty(), target=target,
                       resume=resume, user_set=chosen_keys("demo-digits", overrides))
    _print_result(metrics, as_json, f"demo: digits teacher → student for {metrics['target']}, no training data")
    if not as_json:
        _print_deployment(metrics)
    _fail_on_gates(metrics)


@app.command("export")
def export_command(
    run_dir: Annotated[Path, typer.Argument(help="A `nayer-edge distill` output folder.")],
    out: Annotated[Optional[Path], typer.Option("--out", help="ONNX file [default: RUN_DIR/student.onnx].")] = None,
    batch: Annotated[Optional[int], typer.Option("--batch", help="Static batch size [default: dynamic].")] = None,
    fold_normalization: Annotated[bool, typer.Option("--fold-normalization/--no-fold-normalization",
                                                     help="Take images in [0, 1] and normalise inside the graph.")] = True,
    opset: Annotated[int, typer.Option("--opset")] = 17,
    target: Annotated[Optional[str], typer.Option("--target", help="Build everything for a target instead: its precision (INT8 after QAT), gates, report, and for TensorRT targets the deploy bundle.")] = None,
    precision: Annotated[Optional[Precision], typer.Option("--precision", help="With --target; default: the target's.")] = None,
    qat: Annotated[Optional[bool], typer.Option("--qat/--no-qat", help="With --target: quantization-aware fine-tuning [default: on for INT8].")] = None,
    eval_data: Annotated[Optional[Path], typer.Option("--eval-data", help="With --target: labelled real data for the accuracy gate and the bundle.")] = None,
    teacher: Annotated[Optional[Path], typer.Option("--teacher", help="With --target, for QAT and the gates against the teacher [default: the one in RUN_DIR/config.json].")] = None,
    min_teacher_retention: RetentionOpt = None, min_teacher_agreement: AgreementOpt = None,
    trust_pickle: TrustOpt = False,
    trust_code: TrustCodeOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Export a distilled student to ONNX, checked against PyTorch in onnxruntime (or, with --target, deploy it)."""
    from .onnx_model.exporter import ParityError
    from .onnx_model.student import export

    if target is not None:
        from .deploy.compress import deploy

        metrics = deploy(run_dir, target=target, eval_data=eval_data, precision=precision.value if precision else None,
                         qat=qat, teacher=teacher, trust_pickle=trust_pickle, trust_code=trust_code,
                         min_teacher_retention=min_teacher_retention, min_teacher_agreement=min_teacher_agreement,
                         show_progress=not as_json or sys.stderr.isatty())
        if as_json:
            print(json.dumps({k: v for k, v in metrics.items() if k != "history"}, indent=2))
        else:
            _print_deployment(metrics)
        _fail_on_gates(metrics)
        return
    try:
        result = export(run_dir, out or run_dir / rf.STUDENT_ONNX, batch=batch, fold_normalization=fold_normalization,
                        opset=opset, trust_code=trust_code)
    except ParityError as err:
        err_console.print(f"export failed parity: {err}", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None
    if as_json:
        print(json.dumps(result, indent=2))
    else:
        parity = result["parity"]
        console.print(f"wrote {result['onnx']} ({result['bytes']:,} bytes, input {result['input']}, opset {opset}); "
                      f"max abs error vs PyTorch {parity['max_abs_error']:.2e}, cosine {parity['cosine_similarity']:.6f}")


class Layout(str, Enum):
    ort = "ort"
    tensorrt = "tensorrt"


@app.command("quantize")
def quantize_command(
    run_dir: Annotated[Path, typer.Argument(help="A `nayer-edge distill` output folder.")],
    out: Annotated[Optional[Path], typer.Option("--out", help="INT8 ONNX file [default: RUN_DIR/student.int8.onnx].")] = None,
    layout: Annotated[Layout, typer.Option("--layout", help="ort: onnxruntime CPU (U8S8 QDQ); tensorrt: explicit symmetric Q/DQ.")] = Layout.ort,
    qat: Annotated[bool, typer.Option("--qat/--no-qat", help="Also fine-tune through fake INT8 on the synthetic samples (needs the teacher).")] = False,
    teacher: Annotated[Optional[Path], typer.Option("--teacher", help="Teacher for QAT [default: the one in RUN_DIR/config.json].")] = None,
    trust_pickle: TrustOpt = False,
    trust_code: TrustCodeOpt = False,
    calibration: Annotated[int, typer.Option("--calibration", help="Synthetic samples to calibrate on.")] = 512,
    eval_data: Annotated[Optional[Path], typer.Option("--eval-data", help="Labelled real data to report FP32 vs INT8 top-1.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """INT8 for a distilled student, calibrated (and with --qat fine-tuned) on the run's synthetic samples."""
    from .quantize.run import quantize

    result = quantize(run_dir, out=out, layout=layout.value, qat=qat, teacher=teacher,
                      teacher_options={"trust_pickle": trust_pickle}, calibration=calibration, eval_data=eval_data,
                      show_progress=not as_json or sys.stderr.isatty(), trust_code=trust_code)
    if as_json:
        print(json.dumps(result, indent=2))
        return
    parity = result["parity_vs_fp32"]
    console.print(f"wrote {result['int8_onnx']} ({result['method'].upper()}, {result['int8_bytes']:,} bytes vs "
                  f"{result['fp32_bytes']:,} FP32); vs FP32 on {result['check_samples']} samples: cosine "
                  f"{parity['cosine_similarity']:.4f}, top-1 agreement {parity['top1_agreement']:.2%}")
    console.print(f"deployed {result['method'].upper()}: {result['selected_by']}")
    if "int8_accuracy" in result:
        qat_part = (f", QAT INT8 {result['qat_int8_accuracy']:.2%}" if result.get("qat_int8_accuracy") is not None
                    else "")
        console.print(f"top-1 on real data: FP32 {result['fp32_onnx_accuracy']:.2%}, PTQ INT8 "
                      f"{result['ptq_int8_accuracy']:.2%}{qat_part}")


def _verify_bundle(bundle: Path, eval_data: Optional[Path], reference: Optional[Path],
                   max_accuracy_drop: Optional[float], max_latency_ms: Optional[float], as_json: bool,
                   teacher: Optional[Path], min_teacher_retention: Optional[float]) -> None:
    from .deploy.bundle import verify_bundle

    if reference is not None or max_accuracy_drop is not None or teacher is not None:
        raise UserError("a bundle carries its own reference outputs, accuracy budget and teacher's top-1: drop "
                        "--reference, --max-accuracy-drop and --teacher")
    if eval_data is not None and not eval_data.is_dir():
        raise UserError(f"{eval_data}: for a bundle, --eval-data is an image folder (one sub-folder per class)")
    result = verify_bundle(bundle, labelled=eval_data, max_latency_ms=max_latency_ms, json=as_json,
                           min_teacher_retention=min_teacher_retention)
    if as_json:
        print(json.dumps(result, indent=2, default=str))
    else:
        for line in result.get("summary", []):
            console.print(line, markup=False, highlight=False)
    failed = [g["name"] for g in result.get("gates", []) if not g.get("passed")]
    if failed or not result.get("passed"):
        err_console.print(f"gate failed: {', '.join(failed) or 'check'}")
        raise typer.Exit(1)


@app.command("verify")
def verify_command(
    model: Annotated[Path, typer.Argument(help="An ONNX model, or a deploy bundle folder (checks it as the device would, through onnxruntime).")],
    eval_data: Annotated[Optional[Path], typer.Option("--eval-data", help="Labelled real data (.npz or image folder).")] = None,
    reference: Annotated[Optional[Path], typer.Option("--reference", help="Reference model: .onnx, TorchScript, or a distill folder.")] = None,
    batch: Annotated[int, typer.Option("--batch")] = 32,
    max_accuracy_drop: Annotated[Optional[float], typer.Option("--max-accuracy-drop", help="Gate: points of top-1 below the reference.")] = None,
    max_latency_ms: Annotated[Optional[float], typer.Option("--max-latency-ms", help="Gate: p50 latency at --batch.")] = None,
    teacher: Annotated[Optional[Path], typer.Option("--teacher", help="The teacher model file (TorchScript or ONNX, with its .json), for --min-teacher-retention.")] = None,
    min_teacher_retention: Annotated[Optional[float], typer.Option("--min-teacher-retention", help="Gate: least share of the teacher's top-1 on the eval data (a bundle: on its labelled subset) [default for a bundle: its manifest's].")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Accuracy, parity and latency of an ONNX model or a bundle, with pass/fail gates (exit 1 when a gate fails)."""
    from .deploy.verify import verify

    if model.is_dir() and (model / "manifest.json").is_file():
        _verify_bundle(model, eval_data, reference, max_accuracy_drop, max_latency_ms, as_json, teacher,
                       min_teacher_retention)
        return
    result = verify(model, eval_data=eval_data, reference=reference, batch=batch,
                    max_accuracy_drop=max_accuracy_drop, max_latency_ms=max_latency_ms, teacher=teacher,
                    min_teacher_retention=min_teacher_retention)
    if as_json:
        print(json.dumps(result.to_dict(), indent=2, default=str))
    else:
        fmt = lambda v: "—" if v is None else f"{v:.2%}"  # noqa: E731
        console.print(f"top-1 {fmt(result.accuracy)}" + (f" (reference {fmt(result.reference_accuracy)})"
                                                          if result.reference_accuracy is not None else ""))
        if result.parity is not None:
            console.print(f"parity: max abs error {result.parity.max_abs_error:.2e}, cosine "
                          f"{result.parity.cosine_similarity:.6f}, top-1 agreement {result.parity.top1_agreement:.2%}")
        lat = result.latency
        console.print(f"latency at batch {lat.batch}: mean {lat.mean_ms:.3f} ms, p50 {lat.p50_ms:.3f}, p90 {lat.p90_ms:.3f}, "
                      f"p95 {lat.p95_ms:.3f}, p99 {lat.p99_ms:.3f}; {lat.throughput:,.0f} images/s; CV {lat.cv:.1%}")
        if result.teacher_accuracy is not None:
            console.print(f"teacher top-1 {fmt(result.teacher_accuracy)} on the same data")
        for gate in result.gates:
            mark = "[green]pass[/]" if gate.passed else "[red]FAIL[/]"
            rule = "≥" if gate.rule == ">=" else "≤"
            console.print(f"gate {gate.name}: {gate.value:.4g} (limit {rule} {gate.limit:.4g}) {mark}")
    failed = [g.name for g in result.gates if not g.passed]
    if failed:
        err_console.print(f"gate failed: {', '.join(failed)}")
        raise typer.Exit(1)


@app.command()
def models() -> None:
    """List the student architectures in the zoo."""
    from .zoo import list_models

    for name in list_models():
        console.print(name)


@app.command()
def targets(as_json: JsonOpt = False) -> None:
    """List the deployment targets (recipes/targets/*.yaml)."""
    from .deploy.targets import describe_targets

    rows = describe_targets()
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    table = Table(title="deployment targets", expand=False)
    columns = ("name", "aliases", "runtime", "precision", "quantization", "batch", "max_accuracy_drop",
               "max_latency_ms", "min_teacher_retention", "min_teacher_agreement")
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*(str(row[c]) for c in columns))
    console.print(table)


@app.command()
def recipes() -> None:
    """List the built-in recipes."""
    from .distill.config import list_recipes

    for name in list_recipes():
        console.print(name)


def _interrupted_line(err: Interrupted, argv: list[str]) -> str:
    """One line: what stopped the run, where its checkpoint is, and the command that continues it."""
    # Under torchrun the command is torchrun's, whose own options are not known here.
    program = "torchrun <the same options> -m nayer_edge" if _under_torchrun() else "nayer-edge"
    again = f"{program} {shlex.join(argv)}"
    resume = f"{program} {shlex.join([*argv, *([] if '--resume' in argv else ['--resume'])])}"
    if err.graceful:
        return (f"stopped by {err.signal_name} {err.where}: checkpoint {err.checkpoint}; "
                f"resume with: {resume}")
    if err.checkpoint is not None:
        return (f"aborted by {err.signal_name}; the last checkpoint, {err.checkpoint}, is intact; "
                f"resume with: {resume}")
    if argv and argv[0] in ("distill", "compress", "demo"):
        return f"aborted by {err.signal_name} before any checkpoint was written; start again with: {again}"
    return f"aborted by {err.signal_name}"


def _under_torchrun() -> bool:
    return os.environ.get("WORLD_SIZE", "1") not in ("", "1")


PROGRAM = "nayer-edge"


def _usage_line(err: Exception) -> str:
    """Click's message on one line, and where the command's options are listed."""
    message = " ".join(line.strip() for line in err.format_message().splitlines() if line.strip()).rstrip(".")
    ctx = getattr(err, "ctx", None)
    command = ctx.command_path if ctx is not None else PROGRAM
    return f"error: {message}; see '{command} --help'"


def _kind(err: BaseException, name: str) -> bool:
    """``err`` is Click's ``name`` (by name: Typer 0.2x raises the classes of the Click it carries, typer._click)."""
    return any(cls.__name__ == name for cls in type(err).__mro__)


def _click_errors() -> tuple[type[Exception], ...]:
    import click

    return tuple({click.ClickException, getattr(typer, "TyperException", click.ClickException)})


def _warning_line(message, category, filename, lineno, file=None, line=None) -> None:
    """A warning as one line on stderr: what it says, not the library's source line that raised it."""
    text = " ".join(part.strip() for part in str(message).splitlines() if part.strip()) or category.__name__
    err_console.print(f"warning: {text}", markup=False, highlight=False, soft_wrap=True)


def main() -> None:
    import warnings

    import click

    abort_on_signals()
    warnings.showwarning = _warning_line
    try:
        # Not standalone: Click hands its usage errors over (one line here, not a box); --help and typer.Exit come
        # back as an exit code.
        code = app(prog_name=PROGRAM, standalone_mode=False)
    except _click_errors() as err:
        if _kind(err, "NoArgsIsHelpError"):  # a bare command: its help (Typer has printed it, Click puts it here)
            if err.format_message().strip():
                click.echo(err.format_message(), err=True)
            sys.exit(err.exit_code)
        err_console.print(_usage_line(err), markup=False, highlight=False, soft_wrap=True)
        sys.exit(2 if _kind(err, "UsageError") else err.exit_code)
    except (click.exceptions.Abort, typer.Abort):
        err_console.print("aborted", markup=False, highlight=False)
        sys.exit(1)
    except UserError as err:
        err_console.print(f"error: {err}", markup=False, highlight=False, soft_wrap=True)
        sys.exit(2)
    except Interrupted as err:
        if os.environ.get("RANK", "0") in ("", "0"):  # under torchrun, rank 0 says it for all
            err_console.print(_interrupted_line(err, sys.argv[1:]), markup=False, highlight=False, soft_wrap=True)
        sys.exit(err.exit_code)
    if isinstance(code, int) and code:
        sys.exit(code)  # typer.Exit(1) of a failed gate
