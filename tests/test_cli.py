"""End-to-end tests of the command line, run as a user would run it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import TEST_RECIPE, run_cli

FAST = ["--epochs", "3", "--synthesis-batch", "100", "--kd-batch", "128", "--kd-steps", "40", "--g-steps", "8",
        "--student", "cnn_tiny", "--recipe", TEST_RECIPE, "--device", "cpu"]


def assert_user_error(result: subprocess.CompletedProcess, *needles: str) -> None:
    assert result.returncode == 2, result.stderr + result.stdout
    assert "Traceback" not in result.stderr + result.stdout
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_import_is_light():
    code = ("import sys, nayer_edge, nayer_edge.cli; "
            "bad = [m for m in ('transformers', 'onnxruntime', 'tensorrt', 'sklearn', 'matplotlib') if m in sys.modules]; "
            "print(bad); sys.exit(1 if bad else 0)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_module_and_help():
    result = run_cli("--help")
    assert result.returncode == 0
    for command in ("distill", "compress", "inspect", "demo", "export", "deploy", "quantize", "verify", "models", "targets",
                    "recipes"):
        assert command in result.stdout


def test_distill_end_to_end(digits_teacher, tmp_path):
    out = tmp_path / "run"
    result = run_cli("distill", str(digits_teacher.path), "--out", str(out), "--eval-data",
                     str(digits_teacher.eval_path), "--json", *FAST)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads(result.stdout)
    for key in ("teacher_accuracy", "student_accuracy", "agreement", "epochs", "wall_seconds", "student_params"):
        assert key in metrics
    assert metrics["epochs"] == 3
    # The held-out .npz stores uint8 pixels, so the teacher's accuracy on it differs slightly from float input.
    assert metrics["teacher_accuracy"] == pytest.approx(digits_teacher.accuracy, abs=0.01)
    assert 0.3 < metrics["student_accuracy"] <= 1.0  # 3 tiny epochs: well above chance (0.1)
    assert metrics["teacher_bn_layers"] == 3
    on_disk = json.loads((out / "metrics.json").read_text())
    assert on_disk["student_accuracy"] == metrics["student_accuracy"]
    for name in ("student.ts", "student.pt", "student.json", "config.json", "samples.png", "curves.png",
                 "samples.npz", "checkpoint.pt"):
        assert (out / name).is_file(), name
    # The saved student is a drop-in replacement: same normalised input as the teacher.
    x, y = (lambda d: (torch.from_numpy(d["x"]).permute(0, 3, 1, 2).float() / 255, torch.from_numpy(d["y"])))(
        __import__("numpy").load(digits_teacher.eval_path))
    student = torch.jit.load(out / "student.ts")
    acc = (student((x - 0.5) / 0.5).argmax(1) == y).float().mean().item()
    assert acc == pytest.approx(metrics["student_accuracy"], abs=1e-6)
    config = json.loads((out / "config.json").read_text())
    assert config["config"]["student"] == "cnn_tiny" and config["teacher"]["format"] == "torchscript"


def test_resume_continues(digits_teacher, tmp_path):
    out = tmp_path / "run"
    first = run_cli("distill", str(digits_teacher.path), "--out", str(out), "--json", *FAST)
    assert first.returncode == 0, first.stderr[-2000:]
    args = [a if a != "3" else "5" for a in FAST]
    second = run_cli("distill", str(digits_teacher.path), "--out", str(out), "--json", "--resume", *args)
    assert second.returncode == 0, second.stderr[-2000:]
    metrics = json.loads(second.stdout)
    assert metrics["epochs"] == 5
    history = json.loads((out / "metrics.json").read_text())["history"]
    assert [row["epoch"] for row in history] == [1, 2, 3, 4, 5]
    changed = run_cli("distill", str(digits_teacher.path), "--out", str(out), "--resume", *args, "--seed", "7")
    assert_user_error(changed, "--resume", "seed")


def test_time_budget_stops_gracefully(digits_teacher, tmp_path):
    out = tmp_path / "run"
    result = run_cli("distill", str(digits_teacher.path), "--out", str(out), "--json", *FAST,
                     "--epochs", "1000", "--time-budget", "14")
    assert result.returncode == 0, result.stderr[-2000:]
    metrics = json.loads(result.stdout)
    assert metrics["stopped_by"] == "time_budget"
    assert 1 <= metrics["epochs"] < 1000
    # It stops at the next synthesis round or tenth KD step after the budget, well within an epoch; epochs
    # are measured in this run, so a loaded machine (slower epochs) does not fail the check.
    history = json.loads((out / "metrics.json").read_text())["history"]
    walls = [0.0] + [row["wall_seconds"] for row in history]
    longest_epoch = max(later - earlier for earlier, later in zip(walls, walls[1:]))
    # The budget bounds the whole command (setup and artefacts too): the loop alone gets less than all of it.
    assert metrics["distill_seconds"] < 14 + max(5.0, longest_epoch), (metrics["distill_seconds"], walls)
    assert metrics["wall_seconds"] < 14 + max(5.0, longest_epoch), metrics["wall_seconds"]
    assert (out / "student.ts").is_file()


def test_inspect(digits_teacher):
    result = run_cli("inspect", str(digits_teacher.path), "--json")
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["format"] == "torchscript" and info["num_classes"] == 10
    assert info["input_shape"] == [1, 16, 16] and len(info["batchnorm_layers"]) == 3
    human = run_cli("inspect", str(digits_teacher.path))
    assert "batchnorm layers" in human.stdout and "torchscript" in human.stdout


@pytest.mark.parametrize("case", ["missing", "corrupt", "class_mismatch", "bad_shape", "unknown_student",
                                  "out_is_file", "unknown_encoder", "bad_recipe_key"])
def test_bad_input_one_line_exit_2(case, digits_teacher, tmp_path):
    out = tmp_path / "out"
    teacher = str(digits_teacher.path)
    extra: list[str] = []
    if case == "missing":
        teacher = str(tmp_path / "nope.pt")
    elif case == "corrupt":
        (tmp_path / "bad.pt").write_bytes(b"\x00garbage" * 100)
        teacher = str(tmp_path / "bad.pt")
    elif case == "class_mismatch":
        extra = ["--classes", "a,b,c"]
    elif case == "bad_shape":
        extra = ["--input-shape", "3,16,16"]
    elif case == "unknown_student":
        extra = ["--student", "resnet19"]
    elif case == "out_is_file":
        out.write_text("x")
    elif case == "unknown_encoder":
        extra = ["--text-encoder", "no-such-org/no-such-encoder"]
    elif case == "bad_recipe_key":
        recipe = tmp_path / "r.yaml"
        recipe.write_text("epochz: 3\n")
        extra = ["--recipe", str(recipe)]
    args = ["distill", teacher, "--out", str(out), *extra]
    if case != "bad_recipe_key":
        args += ["--recipe", TEST_RECIPE]
    result = run_cli(*args)
    needles = {"missing": ["nope.pt"], "unknown_student": ["resnet19", "resnet18"], "out_is_file": ["is a file"],
               "class_mismatch": ["3 class names", "10 logits"], "bad_shape": ["3,16,16"],
               "unknown_encoder": ["no-such-org/no-such-encoder"], "bad_recipe_key": ["epochz", "epochs"],
               "corrupt": ["bad.pt"]}[case]
    assert_user_error(result, *needles)
    if case != "out_is_file":
        assert not out.exists(), "nothing may be written for bad input"


def test_demo_end_to_end(tmp_path):
    """The main job, on half its budget: a real digits teacher (trained on first use, not charged to the budget),
    distilled without its images, quantized, exported and verified, all planned to fit."""
    out = tmp_path / "demo"
    env = {"NAYER_EDGE_CACHE": str(tmp_path / "cache")}
    result = run_cli("demo", "--out", str(out), "--time-budget", "85", "--json", env=env)
    if result.returncode == 2 and "is too small to train the student at all" in result.stderr:
        # A slower CPU (an AVX2-only 2-core EPYC needed 126 s): the refusal names the budget that works, which must
        # be within the demo's own 170 s, and nothing was written.
        assert not out.exists() and "Traceback" not in result.stderr
        least = float(result.stderr.strip().rsplit(" ", 1)[-1])
        assert least <= 170, result.stderr
        result = run_cli("demo", "--out", str(out), "--time-budget", f"{least:g}", "--json", env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads(result.stdout)
    assert metrics["teacher_accuracy"] > 0.97
    # Half the demo's 170 s; the full demo reaches ≥ 95 % of the teacher (BENCHMARKS.md).
    assert metrics["epochs"] >= 3
    assert metrics["student_accuracy"] > 0.8 * metrics["teacher_accuracy"]
    assert (tmp_path / "cache" / "demo" / "digits_teacher.pt").is_file()
    assert metrics["target"] == "cpu-x86" and metrics["passed"] and (out / "student.int8.onnx").is_file()


@pytest.mark.parametrize("command", ["distill", "compress"])
@pytest.mark.parametrize("flag,expected", [([], "cpu"), (["--device", "auto"], "auto"), (["--device", "cuda"], "cuda")])
def test_recipe_device_wins_unless_the_flag_is_given(command, flag, expected, tmp_path, monkeypatch):
    """A recipe's `device:` is the run's device; only an explicit --device overrides it (the option has no
    default of its own that would silently replace the recipe's)."""
    from typer.testing import CliRunner

    import nayer_edge.deploy.compress
    import nayer_edge.distill.run
    from nayer_edge.cli import app

    seen = {}

    class Stop(Exception):
        pass

    def capture(*args, config, **kwargs):
        seen["device"] = config.device
        raise Stop

    monkeypatch.setattr(nayer_edge.distill.run, "distill", capture)
    monkeypatch.setattr(nayer_edge.deploy.compress, "compress", capture)
    recipe = tmp_path / "on-cpu.yaml"
    recipe.write_text(Path(TEST_RECIPE).read_text() + "device: cpu\n")
    result = CliRunner().invoke(app, [command, str(tmp_path / "teacher.pt"), "--recipe", str(recipe), *flag])
    assert isinstance(result.exception, Stop), result.output
    assert seen["device"] == expected


def test_command_help_still_works():
    result = run_cli("distill", "--help")
    assert result.returncode == 0, result.stderr
    assert "Usage: nayer-edge distill" in result.stdout and "--recipe" in result.stdout
    assert result.stderr == ""


@pytest.mark.parametrize("command,default", [
    ("distill", "[default: metadata, else 3,32,32]"), ("distill", "[default: auto]"),
    ("compress", "[default: on for INT8]"), ("compress", "[default: the target's, 0.9]"),
    ("demo", "[default: 170]"), ("export", "[default: RUN_DIR/student.onnx]"), ("export", "[default: dynamic]"),
    ("quantize", "[default: the one in RUN_DIR/config.json]"),
])
def test_help_shows_the_defaults_written_in_it(command, default):
    """A default named in an option's help survives rich's markup (unescaped, "[default: x]" is a style tag and
    vanishes from the help)."""
    result = run_cli(command, "--help", env={"COLUMNS": "100"})
    assert result.returncode == 0, result.stderr
    text = " ".join(result.stdout.replace("│", " ").split())
    assert default in text, text


@pytest.mark.parametrize("argv,code", [(["fail"], 3), (["ok"], None)])
def test_exit_codes_of_commands_pass_through(argv, code, monkeypatch):
    """Click runs outside its standalone mode (for one-line usage errors): a command's typer.Exit code is still
    the process's exit code, and a command that returns exits 0."""
    import signal

    import typer

    from nayer_edge import cli

    sub = typer.Typer()

    @sub.command()
    def fail() -> None:
        raise typer.Exit(3)

    @sub.command()
    def ok() -> None:
        pass

    monkeypatch.setattr(cli, "app", sub)
    monkeypatch.setattr(sys, "argv", ["nayer-edge", *argv])
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        if code is None:
            cli.main()
        else:
            with pytest.raises(SystemExit) as exited:
                cli.main()
            assert exited.value.code == code
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)


def test_every_option_that_names_a_config_field_reaches_the_config():
    """The config is built from the options whose names are DistillConfig fields (CONFIG_OPTIONS): none of them
    is left out, and nothing else is passed as a config key."""
    from dataclasses import fields

    from nayer_edge.cli.options import CONFIG_OPTIONS, DISTILL_OPTIONS
    from nayer_edge.distill.config import DistillConfig

    config_fields = {f.name for f in fields(DistillConfig)}
    declared = {parameter.name for group in DISTILL_OPTIONS for parameter in group}
    assert set(CONFIG_OPTIONS) <= config_fields
    assert declared & config_fields <= set(CONFIG_OPTIONS), declared & config_fields - set(CONFIG_OPTIONS)
