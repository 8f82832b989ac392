"""Deployment targets: the shipped YAMLs load strictly; bad names, keys, types and combinations are UserErrors."""

from __future__ import annotations

import dataclasses
import doctest
import json
from pathlib import Path

import pytest
import yaml

import nayer_edge.deploy.targets as targets_mod
from nayer_edge.core.errors import UserError
from nayer_edge.deploy.targets import (
    Target,
    describe_targets,
    list_targets,
    load_target,
    resolve_alias,
    targets_dir,
)

SHIPPED = ["cpu-arm64", "cpu-x86", "jetson-agx-orin", "jetson-orin-nano", "jetson-orin-nx", "jetson-xavier-nx"]


def write_target(tmp_path: Path, stem: str = "mine", **changes) -> Path:
    """A copy of cpu-x86 with ``changes`` applied (a value of ... removes the key)."""
    data = yaml.safe_load((targets_dir() / "cpu-x86.yaml").read_text())
    for key, value in changes.items():
        if value is ...:
            data.pop(key, None)
        else:
            data[key] = value
    path = tmp_path / f"{stem}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_list_targets_is_the_shipped_files_without_aliases():
    assert list_targets() == SHIPPED
    assert "aliases" not in list_targets()


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_target_loads_and_takes_its_file_name(name):
    t = load_target(name)
    assert isinstance(t, Target)
    assert t.name == name
    assert t.precision == "int8"
    assert t.max_accuracy_drop == 1.0
    assert t.max_latency_ms is None
    assert t.description


def test_cpu_targets_are_onnxruntime_int8_qdq_ort():
    for name in ("cpu-x86", "cpu-arm64"):
        t = load_target(name)
        assert (t.runtime, t.device, t.quantization) == ("onnxruntime", "cpu", "qdq-ort")
        assert (t.batch, t.dynamic_batch, t.layout, t.opset) == (32, True, "NCHW", 17)
        assert t.execution_providers == ("CPUExecutionProvider",)
        assert t.tensorrt is None and t.gpu_arch is None and t.dla_cores == 0


@pytest.mark.parametrize(
    "name, arch, dla, trt",
    [
        ("jetson-orin-nano", "sm_87", 0, "10.3"),
        ("jetson-orin-nx", "sm_87", 2, "10.3"),
        ("jetson-agx-orin", "sm_87", 2, "10.3"),
        ("jetson-xavier-nx", "sm_72", 2, "8.5.2"),
    ],
)
def test_jetson_targets_are_tensorrt_static_batch_one(name, arch, dla, trt):
    t = load_target(name)
    assert (t.runtime, t.quantization, t.batch, t.dynamic_batch) == ("tensorrt", "qdq-trt", 1, False)
    assert (t.gpu_arch, t.dla_cores, t.tensorrt) == (arch, dla, trt)
    assert t.execution_providers == ()
    assert t.opset >= 13 and t.memory_gb and t.jetpack


def test_alias_resolves():
    assert resolve_alias("jetson") == "jetson-orin-nano"
    assert resolve_alias("cpu-x86") == "cpu-x86"
    assert load_target("jetson") == load_target("jetson-orin-nano")


def test_every_alias_points_at_a_shipped_target():
    aliases = yaml.safe_load((targets_dir() / "aliases.yaml").read_text())
    assert aliases
    for alias, target in aliases.items():
        assert target in list_targets(), alias
        assert alias not in list_targets()


def test_unknown_target_lists_the_available_ones_with_a_suggestion():
    with pytest.raises(UserError) as err:
        load_target("cpu-x68")
    msg = str(err.value)
    assert "did you mean 'cpu-x86'" in msg
    for name in SHIPPED:
        assert name in msg
    with pytest.raises(UserError, match="did you mean 'jetson'"):
        load_target("jetsn")
    with pytest.raises(UserError, match="unknown target 'aliases'"):
        load_target("aliases")


def test_yaml_path_loads_with_its_stem_as_name(tmp_path):
    t = load_target(write_target(tmp_path, stem="my-box", max_latency_ms=12.5))
    assert t.name == "my-box" and t.max_latency_ms == 12.5
    t = load_target(str(write_target(tmp_path, stem="other", name="explicit")))
    assert t.name == "explicit"


def test_missing_yaml_path_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="no such file"):
        load_target(tmp_path / "absent.yaml")


def test_unknown_key_names_the_closest_valid_key(tmp_path):
    path = write_target(tmp_path, max_latency=5.0)
    with pytest.raises(UserError, match=r"unknown key 'max_latency' \(did you mean 'max_latency_ms'\?\)"):
        load_target(path)
    # A misspelt required key is reported as the misspelling, not as a missing key.
    path = write_target(tmp_path, precision=..., precison="int8")
    with pytest.raises(UserError, match="did you mean 'precision'"):
        load_target(path)


def test_missing_required_key_is_named(tmp_path):
    with pytest.raises(UserError, match="missing required key.*opset"):
        load_target(write_target(tmp_path, opset=...))


@pytest.mark.parametrize(
    "changes, match",
    [
        ({"batch": "32"}, "batch: expected an integer"),
        ({"dynamic_batch": "yes please"}, "dynamic_batch: expected true or false"),
        ({"precision": "int4"}, "precision: 'int4' is not one of"),
        ({"runtime": "tflite"}, "runtime: 'tflite' is not one of"),
        ({"execution_providers": "CPUExecutionProvider"}, "execution_providers: expected a list"),
        ({"max_accuracy_drop": "a lot"}, "max_accuracy_drop: expected a number"),
    ],
)
def test_wrong_type_is_a_user_error_naming_the_key(tmp_path, changes, match):
    with pytest.raises(UserError, match=match):
        load_target(write_target(tmp_path, **changes))


JETSON = dict(runtime="tensorrt", device="gpu", quantization="qdq-trt", batch=1, dynamic_batch=False,
              execution_providers=[], tensorrt="10.3", gpu_arch="sm_87")


@pytest.mark.parametrize(
    "changes, match",
    [
        ({**JETSON, "quantization": "qdq-ort"}, "use quantization 'qdq-trt'"),
        ({**JETSON, "device": "cpu"}, "not device 'cpu'"),
        ({**JETSON, "execution_providers": ["CUDAExecutionProvider"]}, "execution_providers is for"),
        ({**JETSON, "tensorrt": ...}, "needs the TensorRT version"),
        ({**JETSON, "gpu_arch": ...}, "needs 'gpu_arch'"),
        ({**JETSON, "gpu_arch": "orin"}, "gpu_arch must look like"),
        ({"precision": "fp16", "quantization": "none"}, "fp16 is not supported by ONNX Runtime on a CPU"),
        ({"opset": 12}, "int8 needs opset >= 13"),
        ({"quantization": "none"}, "int8 needs a quantization format"),
        ({"precision": "fp32"}, "needs precision int8"),
        ({"execution_providers": []}, "needs execution_providers"),
        ({"execution_providers": ["CUDAExecutionProvider"]}, "only CPUExecutionProvider"),
        ({"dla_cores": 2}, "dla_cores is for runtime tensorrt"),
        ({"tensorrt": "10.3"}, "'tensorrt' is for runtime tensorrt"),
        ({"batch": 0}, "batch must be at least 1"),
        ({"max_accuracy_drop": -1}, "max_accuracy_drop must be >= 0"),
        ({"max_latency_ms": 0}, "max_latency_ms must be > 0"),
        ({"name": "My Box"}, "name must be lower-case"),
    ],
)
def test_invalid_combinations_are_rejected(tmp_path, changes, match):
    path = write_target(tmp_path, **changes)
    with pytest.raises(UserError, match=match) as err:
        load_target(path)
    assert str(path) in str(err.value)


def test_valid_variants_load(tmp_path):
    assert load_target(write_target(tmp_path, precision="fp32", quantization="none")).precision == "fp32"
    t = load_target(write_target(tmp_path, **{**JETSON, "precision": "fp16", "quantization": "none"}))
    assert t.runtime == "tensorrt" and t.precision == "fp16"


def test_target_is_frozen():
    t = load_target("cpu-x86")
    with pytest.raises(dataclasses.FrozenInstanceError):
        t.batch = 1  # type: ignore[misc]


def test_describe_targets_has_one_row_per_target_with_aliases():
    rows = describe_targets()
    assert [r["name"] for r in rows] == SHIPPED
    nano = next(r for r in rows if r["name"] == "jetson-orin-nano")
    assert nano["aliases"] == "jetson"
    assert {"runtime", "precision", "quantization", "batch", "max_accuracy_drop", "max_latency_ms"} <= set(nano)


def test_docstring_examples_run():
    result = doctest.testmod(targets_mod)
    assert result.attempted > 0 and result.failed == 0


def test_targets_command_lists_every_target():
    from conftest import run_cli

    from nayer_edge.deploy.targets import list_targets

    result = run_cli("targets", "--json")
    assert result.returncode == 0, result.stderr
    assert sorted(row["name"] for row in json.loads(result.stdout)) == list_targets()
