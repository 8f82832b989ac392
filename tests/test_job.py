"""`nayer-edge compress --config job.yaml`: the job file end to end, command-line options over the file, strict
keys, paths relative to the file, its JSON Schema; and `deploy RUN_DIR` as the name of `export RUN_DIR --target`."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import yaml
from conftest import REPO, TEST_RECIPE, run_cli

from nayer_edge.core.errors import UserError
from nayer_edge.deploy.job import compress_arguments, job_schema, job_schema_path, job_schema_text, load_job

EXAMPLE = REPO / "recipes" / "jobs" / "digits-cpu-x86.yaml"
FAST = {"epochs": 3, "synthesis_batch": 100, "kd_batch": 128, "kd_steps": 40, "g_steps": 8, "device": "cpu"}


def write_job(folder: Path, digits_teacher, **changes) -> Path:
    """A job for the tiny digits teacher, every path relative to ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    job = {"teacher": os.path.relpath(digits_teacher.path, folder),
           "eval_data": os.path.relpath(digits_teacher.eval_path, folder),
           "target": "cpu-x86", "precision": "fp32", "student": "cnn_tiny", "seed": 0,
           "recipe": os.path.relpath(TEST_RECIPE, folder), "recipe_overrides": dict(FAST),
           "gates": {"min_teacher_retention": 0.9, "max_latency_ms": 10000.0}, "out": "out", **changes}
    path = folder / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    return path


@pytest.fixture(scope="module")
def job_run(digits_teacher, tmp_path_factory):
    """One compress from a job file, run from another folder, with two options given that the job also sets."""
    path = write_job(tmp_path_factory.mktemp("job") / "jobs", digits_teacher)
    result = run_cli("compress", "--config", str(path), "--epochs", "2", "--min-teacher-retention", "0", "--json")
    return path, result


def test_compress_from_a_job_file_with_command_line_options_winning(job_run):
    path, result = job_run
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads(result.stdout)
    out = path.parent / "out"  # the job's relative out, against the job's folder, not the working folder
    assert (out / "metrics.json").is_file() and (out / "report.md").is_file()
    assert metrics["epochs"] == 2  # --epochs over the job's recipe_overrides (3)
    assert metrics["precision"] == "fp32"  # the job's, over the target's default (int8): a default is not "given"
    gates = {g["name"]: g for g in metrics["gates"]}
    assert "teacher_retention" not in gates  # --min-teacher-retention 0 over the job's 0.9
    assert gates["latency_p50_ms"]["limit"] == 10000.0  # the job's gate, not set on the command line
    assert metrics["teacher_accuracy"] > 0.9  # the job's eval data was used
    config = json.loads((out / "config.json").read_text())["config"]
    assert (config["student"], config["kd_steps"], config["g_steps"], config["epochs"]) == ("cnn_tiny", 40, 8, 2)


def test_deploy_is_export_with_a_target(job_run, tmp_path):
    path, result = job_run
    assert result.returncode == 0, result.stderr[-3000:]
    outputs = {}
    for spelling in ("deploy", "export"):
        run_dir = tmp_path / spelling
        shutil.copytree(path.parent / "out", run_dir)
        # Two tiny epochs: the agreement gate (no eval data here) would fail both spellings alike.
        done = run_cli(spelling, str(run_dir), "--target", "cpu-x86", "--precision", "fp32",
                       "--min-teacher-agreement", "0", "--json")
        assert done.returncode == 0, done.stderr[-3000:]
        outputs[spelling] = json.loads(done.stdout)
        assert json.loads((run_dir / "metrics.json").read_text())["target"] == "cpu-x86"
    deployed, exported = outputs["deploy"], outputs["export"]
    assert [g["name"] for g in deployed["gates"]] == [g["name"] for g in exported["gates"]]
    for key in ("target", "precision", "passed", "fp32_onnx_accuracy", "onnx_max_abs_error"):
        assert deployed[key] == exported[key], key


def test_unknown_key_is_one_line_naming_it_and_nothing_is_written(digits_teacher, tmp_path):
    path = write_job(tmp_path / "jobs", digits_teacher, gates={"max_latency": 5})
    result = run_cli("compress", "--config", str(path))
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for needle in (str(path), "'gates.max_latency'", "did you mean 'max_latency_ms'", "max_accuracy_drop"):
        assert needle in lines[0], lines[0]
    assert not (path.parent / "out").exists()

    write_job(tmp_path / "jobs", digits_teacher, evaldata="x.npz")
    with pytest.raises(UserError, match=r"unknown key 'evaldata' \(did you mean 'eval_data'\?\); valid keys: teacher"):
        load_job(path)
    write_job(tmp_path / "jobs", digits_teacher, recipe_overrides={"kd_step": 4})
    with pytest.raises(UserError, match=r"'recipe_overrides.kd_step' \(did you mean 'kd_steps'\?\); nearest valid"):
        load_job(path)
    for bad, needle in (({"recipe_overrides": {"lr": -1.0}}, "lr"), ({"seed": 1, "recipe_overrides": {"seed": 2}},
                        "seed is set both"), ({"target": "cpu-x68"}, "cpu-x86"), ({"precision": "int4"}, "int4"),
                        ({"gates": {"min_teacher_retention": 90}}, "gates.min_teacher_retention")):
        write_job(tmp_path / "jobs", digits_teacher, **bad)
        with pytest.raises(UserError, match=needle) as caught:
            load_job(path)
        assert str(caught.value).startswith(str(path)), caught.value
    bare = tmp_path / "bare.yaml"
    bare.write_text("target: cpu-x86\n")
    with pytest.raises(UserError, match="missing key 'teacher'"):
        load_job(bare)


def test_a_missing_teacher_named_in_the_job_is_one_line(digits_teacher, tmp_path):
    path = write_job(tmp_path / "jobs", digits_teacher, teacher="teachers/missing.pt")
    result = run_cli("compress", "--config", str(path))
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    line = result.stderr.strip()
    assert str(tmp_path / "jobs" / "teachers" / "missing.pt") in line and "relative to its folder" in line, line
    assert "\n" not in line and not (path.parent / "out").exists()


def test_paths_are_relative_to_the_job_file_and_names_stay_names(digits_teacher, tmp_path, monkeypatch):
    folder = tmp_path / "ci" / "jobs"
    (folder / "recipes").mkdir(parents=True)
    shutil.copy(digits_teacher.path, tmp_path / "ci" / "teacher.pt")
    shutil.copy(TEST_RECIPE, folder / "recipes" / "mine.yaml")
    (folder / "classes.txt").write_text("\n".join("abcdefghij") + "\n")
    home = tmp_path / "home"
    (home / "data").mkdir(parents=True)
    shutil.copy(digits_teacher.eval_path, home / "data" / "heldout.npz")
    monkeypatch.setenv("HOME", str(home))
    path = write_job(folder, digits_teacher, teacher="../teacher.pt", eval_data="~/data/heldout.npz",
                     recipe="recipes/mine.yaml", classes="classes.txt", student="my_student.py:build")
    monkeypatch.chdir(tmp_path)  # nothing is read from the working folder
    job = load_job(os.path.relpath(path, tmp_path))
    assert job.teacher == str(tmp_path / "ci" / "teacher.pt") and job.out == str(folder / "out")
    assert job.eval_data == str(home / "data" / "heldout.npz") and job.recipe == str(folder / "recipes" / "mine.yaml")
    assert job.student == f"{folder / 'my_student.py'}:build" and job.classes == str(folder / "classes.txt")
    assert compress_arguments(job)["classes"] == list("abcdefghij")
    named = load_job(write_job(folder, digits_teacher, teacher="../teacher.pt", recipe="demo-digits"))
    assert named.recipe == "demo-digits" and named.student == "cnn_tiny"


def test_command_line_over_job_over_defaults(digits_teacher, tmp_path):
    job = load_job(write_job(tmp_path, digits_teacher, gates={"max_accuracy_drop": 0.5}, time_budget=90))
    defaults = {"teacher": None, "target": "cpu-x86", "out": Path("runs/compress"), "precision": None, "qat": None,
                "max_accuracy_drop": None, "max_latency_ms": None, "min_teacher_retention": None,
                "min_teacher_agreement": None, "eval_data": None, "recipe": None, "arch": None, "classes": None,
                "input_shape": None, "mean": None, "std": None, "trust_pickle": False,
                "config_overrides": {"epochs": None, "seed": None}}
    from_job = compress_arguments(job, defaults, set())
    assert (from_job["precision"], from_job["max_accuracy_drop"], from_job["out_dir"]) == ("fp32", 0.5, job.out)
    assert from_job["teacher"] == job.teacher and from_job["config"].epochs == 3
    assert from_job["config"].time_budget == 90 and {"epochs", "time_budget", "student"} <= from_job["user_set"]
    given = {**defaults, "precision": "int8", "out": Path("elsewhere"), "max_accuracy_drop": 2.0,
             "config_overrides": {"epochs": 7, "seed": 3}}
    mine = compress_arguments(job, given, {"precision", "out", "max_accuracy_drop", "epochs", "seed"})
    assert (mine["precision"], mine["out_dir"], mine["max_accuracy_drop"]) == ("int8", Path("elsewhere"), 2.0)
    assert (mine["config"].epochs, mine["config"].seed, mine["config"].kd_steps) == (7, 3, 40)
    with pytest.raises(UserError, match="needs a teacher"):
        compress_arguments(None, defaults, set())


def _check_against_schema(instance: dict, schema: dict, where: str = "job") -> None:
    """The parts of JSON Schema the job's schema uses (without the jsonschema package): required and known keys,
    types and enums, recursively."""
    kinds = {"string": str, "integer": int, "number": (int, float), "boolean": bool, "null": type(None),
             "array": list, "object": dict}
    if "anyOf" in schema:
        failures = []
        for option in schema["anyOf"]:
            try:
                return _check_against_schema(instance, option, where)
            except AssertionError as err:
                failures.append(str(err))
        raise AssertionError(f"{where}: no option of anyOf fits: {failures}")
    if "enum" in schema:
        assert instance in schema["enum"], f"{where}: {instance!r} not in {schema['enum']}"
    if "type" in schema:
        types = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        assert any(isinstance(instance, kinds[t]) and not (t in ("integer", "number") and isinstance(instance, bool))
                   for t in types), f"{where}: {instance!r} is not {types}"
    if isinstance(instance, dict):
        assert set(schema.get("required", ())) <= set(instance), f"{where}: missing {schema.get('required')}"
        for key, value in instance.items():
            assert key in schema["properties"], f"{where}: unknown key {key}"
            _check_against_schema(value, schema["properties"][key], f"{where}.{key}")
    if isinstance(instance, list) and "items" in schema:
        assert schema.get("minItems", 0) <= len(instance) <= schema.get("maxItems", len(instance)), where
        for i, item in enumerate(instance):
            _check_against_schema(item, schema["items"], f"{where}[{i}]")


def test_the_schema_is_generated_and_the_example_job_fits_it(tmp_path, monkeypatch):
    assert job_schema_path().read_text() == job_schema_text(), (
        "recipes/jobs/job.schema.json is out of date; regenerate it with: python -c \"from nayer_edge.deploy.job "
        "import write_job_schema; write_job_schema()\"")
    example = yaml.safe_load(EXAMPLE.read_text())
    assert EXAMPLE.read_text().startswith("# yaml-language-server: $schema=job.schema.json\n")
    schema = job_schema()
    assert schema["required"] == ["teacher", "target"] and schema["additionalProperties"] is False
    assert "kd_steps" in schema["properties"]["recipe_overrides"]["properties"]
    try:
        import jsonschema
    except ImportError:  # not installed in the project's environment: the same checks by hand
        _check_against_schema(example, schema)
        with pytest.raises(AssertionError, match="unknown key"):
            _check_against_schema({**example, "gates": {"max_latency": 1}}, schema)
    else:
        jsonschema.validate(example, schema)
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate({**example, "gates": {"max_latency": 1}}, schema)
    # The example loads strictly too (its target, recipe and overrides), given the files the demo caches.
    demo = tmp_path / ".cache" / "nayer-edge" / "demo"
    demo.mkdir(parents=True)
    for name in ("digits_teacher.pt", "digits_heldout.npz"):
        (demo / name).write_bytes(b"")
    monkeypatch.setenv("HOME", str(tmp_path))
    job = load_job(EXAMPLE)
    assert (job.teacher, job.target, job.recipe) == (str(demo / "digits_teacher.pt"), "cpu-x86", "demo-digits")
