"""The package's shape: subpackages follow the data, each imports only the stages below it, no import circles,
and the run folder has one owner (the optional dependencies' one helper: test_optional.py)."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "nayer_edge"
# Stages in the order the data flows; a module may import its own stage and those before it.
STAGES = ["core", "inputs", "zoo", "synthesis", "distill", "onnx_model", "quantize", "deploy", "demo", "cli"]
TOP_LEVEL = {"__init__", "__main__"}


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every module of the package that ``path`` imports, at the top or inside functions."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.startswith("nayer_edge"):
                found.add(target)
                for alias in node.names:  # from .pkg import module
                    if (REPO / (target.replace(".", "/") + f"/{alias.name}.py")).is_file():
                        found.add(f"{target}.{alias.name}")
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("nayer_edge"))
    found.discard(name)
    return found


def _stage(module: str) -> int:
    parts = module.split(".")
    if len(parts) == 1 or parts[1] in TOP_LEVEL:
        return len(STAGES)
    return STAGES.index(parts[1])


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def test_every_module_lives_in_a_stage_or_is_the_shell():
    for name, path in _modules().items():
        parts = name.split(".")
        if len(parts) == 1 or path.name == "__init__.py" and len(parts) == 2:
            continue
        if len(parts) == 2:
            assert parts[1] in TOP_LEVEL, f"{path}: a module outside the stage subpackages {STAGES}"
        else:
            assert parts[1] in STAGES, f"{path}: {parts[1]} is not one of the stages {STAGES}"
    assert {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").is_file()} == set(STAGES)


def test_each_stage_imports_only_itself_and_the_stages_below():
    wrong = []
    for name, path in _modules().items():
        for target in _imports(path):
            if target != "nayer_edge" and _stage(target) > _stage(name):
                wrong.append(f"{name} imports {target}")
    assert not wrong, wrong


def test_no_import_circles():
    graph = {name: {t for t in _imports(path) if t in _modules()} for name, path in _modules().items()}
    graph = {n: {t for t in ts if not n.startswith(t + ".") and t != "nayer_edge"} for n, ts in graph.items()}
    state: dict[str, int] = {}
    circles = []

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                circles.append(trail[trail.index(nxt):] + [nxt] if nxt in trail else [node, nxt])
            elif nxt not in state:
                visit(nxt, trail + [nxt])
        state[node] = 2

    for start in sorted(graph):
        if start not in state:
            visit(start, [start])
    assert not circles, circles


def _code_strings(path: Path) -> list[tuple[int, str]]:
    """String constants of a module that are not docstrings (docstring examples name user paths)."""
    tree = ast.parse(path.read_text())
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                docstrings.add(id(first.value))
    return [(node.lineno, node.value) for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings]


def test_the_run_folder_has_one_owner():
    from nayer_edge.distill import run_folder

    names = {v for k, v in vars(run_folder).items() if k.isupper() and isinstance(v, str)}
    assert {"student.json", "samples.npz", "holdout.npz", "metrics.json", "config.json"} <= names
    # A Hugging Face model folder has a config.json of its own.
    other_folders = {("embeddings.py", "config.json"), ("teacher_formats.py", "config.json")}
    spelled = [f"{path.relative_to(REPO)}:{line}: {value!r}" for path in PACKAGE.rglob("*.py")
               if path.name != "run_folder.py" for line, value in _code_strings(path)
               if value in names and (path.name, value) not in other_folders]
    assert not spelled, spelled


MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 65  # "about 60"
MAX_PARAMETERS = 8


def test_no_module_over_500_lines():
    long = {str(p.relative_to(REPO)): n for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES}
    assert not long, long


def _reason_above(lines: list[str], node: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    """A comment on the line right above the function (or above its decorators)."""
    first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
    return first >= 2 and lines[first - 2].strip().startswith("#")


def _parameter_count(node: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    args = node.args
    names = [a.arg for a in (*args.posonlyargs, *args.args, *args.kwonlyargs)]
    return len(names) - (1 if names and names[0] in ("self", "cls") else 0)


def test_long_functions_and_long_parameter_lists_say_why():
    """No function over about 60 lines or 8 parameters without a comment right above it that says why."""
    unexplained = []
    for path in sorted(PACKAGE.rglob("*.py")):
        text = path.read_text()
        lines = text.splitlines()
        for node in ast.walk(ast.parse(text)):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            length, parameters = node.end_lineno - node.lineno + 1, _parameter_count(node)
            if (length > MAX_FUNCTION_LINES or parameters > MAX_PARAMETERS) and not _reason_above(lines, node):
                unexplained.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name} "
                                   f"({length} lines, {parameters} parameters)")
    assert not unexplained, "\n".join(unexplained)


def test_every_noqa_marker_says_why():
    """``# noqa: CODE - why`` (or ``(why)``): a bare marker hides a lint finding without a reason."""
    import re

    bare = re.compile(r"#\s*noqa(:\s*[A-Z]+[0-9]+(,\s*[A-Z]+[0-9]+)*)?\s*$")
    found = [f"{path.relative_to(REPO)}:{number}" for folder in ("nayer_edge", "tests", "benchmarks")
             for path in sorted((REPO / folder).rglob("*.py"))
             for number, line in enumerate(path.read_text().splitlines(), 1) if bare.search(line)]
    assert not found, found
