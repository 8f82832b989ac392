"""``nayer-edge inspect``."""

from __future__ import annotations

import json
from typing import Any

from .app import app, console
from .options import TEACHER_OPTIONS, JsonOpt, TeacherArg, teacher_kwargs, with_options


@app.command()
@with_options(TEACHER_OPTIONS)
def inspect(teacher: TeacherArg, as_json: JsonOpt = False, *, options: dict[str, Any]) -> None:
    """Show a teacher's format, size, number of classes and BatchNorm layers."""
    from ..inputs.teacher import inspect_teacher, load_teacher

    info = inspect_teacher(load_teacher(teacher, **teacher_kwargs(options)))
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
