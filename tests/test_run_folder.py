"""A run folder is data that may have been copied, edited or damaged: every file the later stages read from it
(student.json, student.pt, samples.npz / holdout.npz, config.json, metrics.json) is checked, and a damaged one
is a UserError naming the file, raised before anything is written."""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from nayer_edge.core.errors import UserError

SPEC = {"architecture": {"spec": "cnn_tiny", "num_classes": 3, "in_channels": 1, "input_size": 8},
        "input_shape": [1, 8, 8], "mean": [0.5], "std": [0.25], "classes": ["cat", "dog", "bird"]}


@pytest.fixture
def run_dir(tmp_path) -> Path:
    """A run folder as distill leaves it, for a tiny 3-class student on 1×8×8 images."""
    from nayer_edge.synthesis.memory import SampleMemory
    from nayer_edge.zoo import create_model

    torch.manual_seed(0)
    student = create_model("cnn_tiny", num_classes=3, in_channels=1, input_size=8).eval()
    folder = tmp_path / "run"
    folder.mkdir()
    torch.save(student.state_dict(), folder / "student.pt")
    torch.jit.save(torch.jit.script(student), folder / "student.ts")
    (folder / "student.json").write_text(json.dumps(SPEC))
    for name, count in (("samples.npz", 24), ("holdout.npz", 8)):
        memory = SampleMemory(32, (1, 8, 8))
        memory.add(torch.rand(count, 1, 8, 8), torch.arange(count) % 3)
        memory.save(folder / name)
    (folder / "config.json").write_text(json.dumps({"config": {}, "teacher": {"path": str(tmp_path / "t.pt")}}))
    (folder / "metrics.json").write_text(json.dumps({"student_accuracy": None}))
    return folder


def snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def damaged(spec: dict, path: tuple, value) -> dict:
    spec = copy.deepcopy(spec)
    where = spec
    for key in path[:-1]:
        where = where[key]
    if value is KeyError:
        del where[path[-1]]
    else:
        where[path[-1]] = value
    return spec


@pytest.mark.parametrize("path, value, words", [
    (("architecture",), "cnn_tiny", "architecture must be an object"),
    (("architecture", "spec"), 7, "architecture must be an object"),
    (("architecture", "num_classes"), 0, "num_classes must be an integer from 1"),
    (("architecture", "in_channels"), True, "in_channels must be an integer"),
    (("architecture", "input_size"), "8", "input_size must be an integer"),
    (("input_shape",), [1, 8], "input_shape must be [C, H, W]"),
    (("input_shape",), [1, 100000, 100000], "from 1 to 4096"),
    (("input_shape",), [3, 8, 8], "does not fit the architecture's 1 channels"),
    (("mean",), "x", "mean must be a list of one finite number"),
    (("mean",), [float("nan")], "mean must be a list of one finite number"),
    (("std",), [0.5, 0.5, 0.5], "std must be a list of one finite number"),
    (("std",), [0.0], "std must be positive"),
    (("classes",), 3, "classes must be a list of class names"),
    (("classes",), ["cat", "dog"], "2 class names for a student with 3 outputs"),
    (("classes",), ["cat", "cat", "dog"], "duplicate class names"),
    (("std",), KeyError, "no std"),
])
def test_a_damaged_student_json_is_named_with_what_is_wrong(run_dir, path, value, words):
    from nayer_edge.onnx_model.student import export

    (run_dir / "student.json").write_text(json.dumps(damaged(SPEC, path, value)))
    before = snapshot(run_dir)
    with pytest.raises(UserError) as caught:
        export(run_dir, run_dir / "student.onnx")
    assert str(caught.value).startswith(f"{run_dir / 'student.json'}: ") and words in str(caught.value), caught.value
    assert snapshot(run_dir) == before


@pytest.mark.parametrize("content", [[SPEC], "null", "[1, 2"])
def test_student_json_that_is_not_an_object(run_dir, content):
    from nayer_edge.distill.run_folder import read_student_spec

    (run_dir / "student.json").write_text(content if isinstance(content, str) else json.dumps(content))
    with pytest.raises(UserError, match="student.json: (expected a JSON object|unreadable)"):
        read_student_spec(run_dir)


def test_the_student_as_written_exports(run_dir):
    from nayer_edge.onnx_model.student import export

    assert export(run_dir, run_dir / "student.onnx")["parity"]["max_abs_error"] < 1e-4


@pytest.mark.parametrize("weights", ["random", "pickle", "other_shapes"])
def test_student_weights_that_are_damaged_or_foreign(run_dir, weights):
    from nayer_edge.onnx_model.student import load_student
    from nayer_edge.zoo import create_model

    path = run_dir / "student.pt"
    if weights == "random":
        path.write_bytes(np.random.default_rng(0).integers(0, 256, 2000, dtype=np.uint8).tobytes())
        words = "student.pt: unreadable"
    elif weights == "pickle":
        torch.save({"state": object()}, path)
        words = "holds pickled objects, which are never loaded"
    else:
        torch.save(create_model("cnn_tiny", num_classes=5, in_channels=1, input_size=8).state_dict(), path)
        words = "size mismatch for"
    with pytest.raises(UserError) as caught:
        load_student(run_dir)
    assert words in str(caught.value) and "\n" not in str(caught.value), caught.value


@pytest.mark.parametrize("memory", ["samples.npz", "holdout.npz"])
def test_quantize_reads_the_memories_before_writing_anything(run_dir, memory):
    from nayer_edge.quantize.run import quantize

    (run_dir / memory).write_bytes(b"PK\x03\x04 truncated")
    before = snapshot(run_dir)
    with pytest.raises(UserError, match=f"{memory}: not a sample memory written by nayer-edge"):
        quantize(run_dir)
    assert snapshot(run_dir) == before, "student.onnx was written before the damaged memory was found"


def test_quantize_refuses_samples_of_another_shape(run_dir):
    from nayer_edge.quantize.run import quantize
    from nayer_edge.synthesis.memory import SampleMemory

    memory = SampleMemory(8, (3, 8, 8))
    memory.add(torch.rand(8, 3, 8, 8), torch.arange(8) % 3)
    memory.save(run_dir / "samples.npz")
    with pytest.raises(UserError, match=r"samples of shape \[3, 8, 8\], but the student takes \[1, 8, 8\]"):
        quantize(run_dir)


@pytest.mark.parametrize("config, words", [
    ({"config": {}, "teacher": "t.pt"}, "'teacher' should be an object, not str"),
    ({"config": {}, "teacher": {"path": 5}}, "the teacher's path is not text (int)"),
    ({"config": {}, "teacher": {"path": "t.pt", "classes": 3}}, "the teacher's classes should be a list, not int"),
    ({"config": ["epochs"], "teacher": {"path": "t.pt"}}, "'config' should be an object, not list"),
    ([1, 2], "no teacher recorded in config.json"),
])
def test_a_damaged_config_json_is_named(run_dir, config, words):
    from nayer_edge.quantize.run import quantize

    (run_dir / "config.json").write_text(json.dumps(config))
    before = snapshot(run_dir)
    with pytest.raises(UserError) as caught:
        quantize(run_dir, qat=True)
    assert words in str(caught.value), caught.value
    assert snapshot(run_dir) == before


def test_deploy_refuses_metrics_that_are_not_an_object(run_dir):
    from nayer_edge.deploy.compress import deploy

    (run_dir / "metrics.json").write_text("[]")
    with pytest.raises(UserError, match="metrics.json: expected a JSON object, got list"):
        deploy(run_dir, target="cpu-x86")


def test_student_weights_with_nan_are_refused(run_dir):
    from nayer_edge.onnx_model.student import load_student

    state = torch.load(run_dir / "student.pt", weights_only=True)
    next(v for k, v in state.items() if k.endswith("weight")).view(-1)[0] = float("nan")
    torch.save(state, run_dir / "student.pt")
    with pytest.raises(UserError, match="weights hold NaN or inf"):
        load_student(run_dir)


@pytest.mark.parametrize("onnx_file", ["garbage", "image_out", "two_inputs"])
def test_quantize_refuses_a_student_onnx_that_does_not_fit(run_dir, onnx_file):
    """quantize reuses an existing student.onnx: a damaged or foreign one is refused before PTQ writes."""
    import onnx
    from onnx import TensorProto, helper

    from nayer_edge.quantize.run import quantize

    path = run_dir / "student.onnx"
    if onnx_file == "garbage":
        path.write_bytes(b"\x08\x07garbage that is not a protobuf model")
        words = "not a loadable ONNX model"
    else:
        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 8, 8])
        inputs = [x] + ([helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", 1, 8, 8])]
                        if onnx_file == "two_inputs" else [])
        y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 1, 8, 8])
        graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", inputs, [y])
        onnx.save(helper.make_model(graph), path)
        words = "not N×1×8×8 images to N×3 logits"
    before = snapshot(run_dir)
    with pytest.raises(UserError, match=words):
        quantize(run_dir)
    assert snapshot(run_dir) == before


@pytest.mark.parametrize("missing", ["samples", "teacher"])
def test_deploy_checks_what_it_needs_before_writing(run_dir, missing):
    """An INT8 deployment without the synthetic memory, or (for QAT) without a loadable teacher, stops before
    student.onnx or anything else is written."""
    from nayer_edge.deploy.compress import deploy

    if missing == "samples":
        (run_dir / "samples.npz").unlink()
        words = "no samples.npz"
    else:
        words = "t.pt, is not there; give the teacher with --teacher"  # config.json records a missing teacher
    before = snapshot(run_dir)
    with pytest.raises(UserError, match=words):
        deploy(run_dir, target="cpu-x86", qat=True)
    assert snapshot(run_dir) == before


def test_quantize_exports_again_when_student_onnx_is_of_an_earlier_student(run_dir):
    """student.onnx records the sha256 of the weights it was made from: after a resumed or repeated distill
    changed student.pt, quantize does not calibrate the old student's ONNX."""
    import onnx

    from nayer_edge.distill.run_folder import student_sha256
    from nayer_edge.onnx_model.student import export
    from nayer_edge.quantize.run import quantize
    from nayer_edge.zoo import create_model

    export(run_dir, run_dir / "student.onnx")
    made_from = lambda: {p.key: p.value for p in onnx.load(str(run_dir / "student.onnx")).metadata_props}[
        "nayer_edge.student_sha256"]
    assert made_from() == student_sha256(run_dir)
    first = (run_dir / "student.onnx").read_bytes()
    quantize(run_dir)
    assert (run_dir / "student.onnx").read_bytes() == first  # the same student: reused as it is

    torch.manual_seed(1)
    torch.save(create_model("cnn_tiny", num_classes=3, in_channels=1, input_size=8).state_dict(),
               run_dir / "student.pt")
    quantize(run_dir)
    assert made_from() == student_sha256(run_dir) and (run_dir / "student.onnx").read_bytes() != first
