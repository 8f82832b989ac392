"""The bad-input catalogue: malformed teachers, class lists, eval data, recipes, targets and output folders,
each run through the command line as a user runs it.

Every case must end with exit code 2, exactly one line on stderr that names the problem (and the fix where
there is one), no traceback, and nothing written: the test's whole folder (inputs, an output folder holding
an earlier run's results, the working directory) is hashed before and after the run and must be unchanged.
Runs that wrongly pass validation are kept short (one tiny epoch, one-hot embeddings) and time-limited.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import pickle
import shutil
import subprocess
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
from conftest import TEST_RECIPE, TrainedTeacher, run_cli
from torch import nn

# If validation wrongly lets a case through, the run is one epoch of a few tiny steps.
SMALL = ["--recipe", TEST_RECIPE, "--epochs", "1", "--kd-steps", "1", "--g-steps", "1", "--synthesis-batch", "10",
         "--kd-batch", "8", "--student", "cnn_tiny", "--device", "cpu", "--embedding", "onehot"]
TIMEOUT = 120
EARLIER_RESULTS = {"metrics.json": b'{"student_accuracy": 0.93}', "student.ts": os.urandom(2048),
                   "report.md": b"# earlier release\n", "checkpoint.pt": os.urandom(1024),
                   "student.onnx": os.urandom(512)}


class Evil:
    """Unpickling this creates ``marker``: proof that code ran."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


class ImageOut(nn.Module):  # returns N×C×H×W, not logits
    def forward(self, x):
        return x * 2


class VectorOut(nn.Module):  # drops the batch dimension
    def forward(self, x):
        return x.flatten()[:10]


class IntOut(nn.Module):  # integer "logits"
    def forward(self, x):
        return x.flatten(1)[:, :10].long()


class SmallBatchOnly(nn.Module):  # passes the load-time probe (a batch of 2), fails on a run's larger batches
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 10)

    def forward(self, x):
        if x.shape[0] > 2:
            raise RuntimeError("exported for batches of at most 2")
        return self.fc(torch.relu(self.bn(self.conv(x))).mean((2, 3)))


class FixedInput(nn.Module):  # takes 100 features only: rejects a 1×16×16 image
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(100, 10)

    def forward(self, x):
        return self.fc(x.flatten(1))


@dataclass
class Kit:
    """Malformed inputs made once per module, next to a good teacher."""

    dir: Path
    teacher: TrainedTeacher
    onnx: Path


@pytest.fixture(scope="module")
def kit(digits_teacher, tmp_path_factory) -> Kit:
    from nayer_edge.zoo import create_model

    d = tmp_path_factory.mktemp("bad_inputs")
    good = digits_teacher.path.read_bytes()
    (d / "empty.pt").write_bytes(b"")
    (d / "truncated.pt").write_bytes(good[: len(good) // 2])
    (d / "header_only.pt").write_bytes(good[:64])
    (d / "random.pt").write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with zipfile.ZipFile(d / "not_a_model.pt", "w") as zf:
        zf.writestr("notes/readme.txt", "a zip archive, but not a model")
    with tarfile.open(d / "teacher.tar", "w") as tar:
        tar.add(digits_teacher.path, arcname="teacher.pt")
    (d / "teacher_dir.pt").mkdir()
    torch.save([1, 2, 3], d / "a_list.pt")

    torch.manual_seed(0)
    model = create_model("cnn_small", num_classes=10, in_channels=1, input_size=16)
    torch.save(model.state_dict(), d / "state_dict.pt")
    for name, value in (("nan", float("nan")), ("inf", float("inf"))):
        sd = {k: v.clone() for k, v in model.state_dict().items()}
        for key, tensor in sd.items():
            if key.endswith("weight") and tensor.is_floating_point():
                tensor.fill_(value)
        torch.save(sd, d / f"{name}_weights.pt")
    for cls in (ImageOut, VectorOut, IntOut, FixedInput, SmallBatchOnly):
        torch.jit.save(torch.jit.script(cls().eval()), d / f"{cls.__name__}.pt")

    shutil_copy(digits_teacher.path, d / "bad_meta" / "teacher.pt")
    (d / "bad_meta" / "teacher.pt.json").write_text('{"classes": ["zero", "one"')
    shutil_copy(digits_teacher.path, d / "meta_key" / "teacher.pt")
    (d / "meta_key" / "teacher.pt.json").write_text(json.dumps({"clases": [str(i) for i in range(10)]}))

    (d / "no_classes.txt").write_text("\n\n")
    (d / "dup_classes.txt").write_text("\n".join(["zero", "one", "two", "one", "four", "five", "six", "seven",
                                                  "eight", "nine"]))
    (d / "three_classes.txt").write_text("cat\ndog\nbird\n")

    u8 = lambda n=5: np.zeros((n, 16, 16, 1), np.uint8)
    labels = lambda n=5: np.arange(n) % 10
    npz = {
        "x_2d.npz": dict(x=np.zeros((5, 7), np.uint8), y=labels()),
        "x_5d.npz": dict(x=np.zeros((5, 1, 16, 16, 2), np.float32), y=labels()),
        "two_channels.npz": dict(x=np.zeros((5, 2, 16, 16), np.float32), y=labels()),
        "labels_42.npz": dict(x=u8(), y=np.array([0, 1, 2, 3, 42])),
        "labels_neg.npz": dict(x=u8(), y=np.array([0, 1, -1, 3, 4])),
        "labels_u64_max.npz": dict(x=u8(), y=np.array([0, 1, 2, 3, 2**64 - 1], np.uint64)),
        "empty.npz": dict(x=u8(0), y=labels(0)),
        "x_strings.npz": dict(x=np.array([["a", "b"]] * 5), y=labels()),
        "y_strings.npz": dict(x=u8(), y=np.array(list("abcde"))),
        "y_floats.npz": dict(x=u8(), y=np.full(5, 0.5)),
        "count.npz": dict(x=u8(), y=labels(4)),
        "x_nan.npz": dict(x=np.full((5, 1, 16, 16), np.nan, np.float32), y=labels()),
        "x_255_float.npz": dict(x=np.full((5, 1, 16, 16), 255.0, np.float32), y=labels()),
        "no_x_y.npz": dict(images=u8(), labels=labels()),
    }
    for name, arrays in npz.items():
        np.savez(d / name, **arrays)
    np.save(d / "single.npy", u8())
    (d / "text.npz").write_text("x,y\n0,1\n")
    (d / "corrupt.npz").write_bytes((d / "labels_42.npz").read_bytes()[:200])
    with open(d / "objects.npz", "wb") as f:
        np.savez(f, x=np.array([None] * 5, dtype=object), y=labels())

    from PIL import Image

    (d / "bad_image" / "one").mkdir(parents=True)
    Image.new("L", (16, 16)).save(d / "bad_image" / "one" / "ok.png")
    (d / "bad_image" / "one" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    (d / "flat_folder").mkdir()
    Image.new("L", (16, 16)).save(d / "flat_folder" / "a.png")
    (d / "unknown_class" / "onne").mkdir(parents=True)
    Image.new("L", (16, 16)).save(d / "unknown_class" / "onne" / "a.png")
    (d / "no_images" / "one").mkdir(parents=True)
    (d / "no_images" / "one" / "notes.txt").write_text("no pictures here")

    recipe = Path(TEST_RECIPE).read_text()
    (d / "recipe_key.yaml").write_text(recipe + "g_lif: 3\n")
    (d / "recipe_type.yaml").write_text(recipe + "augment_flip: maybe\n")
    (d / "recipe_value.yaml").write_text(recipe.replace("g_life: 10", "g_life: -2"))
    (d / "recipe_yaml.yaml").write_text(recipe + "ngf: [32\n")
    (d / "recipe_list.yaml").write_text("- student\n- cnn_tiny\n")
    (d / "recipe_seed.yaml").write_text(recipe + "seed: -1\n")
    (d / "recipe_threads.yaml").write_text(recipe.replace("threads: 2", "threads: 100000000000"))
    target = (Path(__file__).resolve().parent.parent / "recipes" / "targets" / "cpu-x86.yaml").read_text()
    (d / "target_key.yaml").write_text(target + "max_latncy_ms: 3\n")
    (d / "target_type.yaml").write_text(target.replace("batch: 32", "batch: thirty-two"))

    from nayer_edge.demo.digits import DIGIT_CLASSES
    from nayer_edge.onnx_model.exporter import export_onnx

    student = create_model("cnn_tiny", num_classes=10, in_channels=1, input_size=16).eval()
    onnx = export_onnx(student, d / "student.onnx", input_shape=(1, 16, 16), mean=[0.5], std=[0.5],
                       fold_normalization=True, classes=DIGIT_CLASSES)
    make_bad_bundles(d, Path(onnx), DIGIT_CLASSES)

    # A run folder whose student.json names Python code: importing it would leave a marker in the folder.
    code_run = d / "code_run"
    code_run.mkdir()
    (code_run / "payload.py").write_text(f"open({str(code_run / 'PWNED')!r}, 'w').close()\n"
                                         "def tiny(num_classes, in_channels):\n    raise SystemExit(7)\n")
    torch.save(student.state_dict(), code_run / "student.pt")
    torch.jit.save(torch.jit.script(student), code_run / "student.ts")
    (code_run / "student.json").write_text(json.dumps({
        "architecture": {"spec": f"{code_run / 'payload.py'}:tiny", "num_classes": 10, "in_channels": 1,
                         "input_size": 16},
        "input_shape": [1, 16, 16], "mean": [0.5], "std": [0.5], "classes": DIGIT_CLASSES}))

    # Run folders with a damaged synthetic memory or checkpoint.
    from nayer_edge.synthesis.memory import SampleMemory

    memory_run = d / "memory_run"
    memory_run.mkdir()
    for name in ("student.pt", "student.ts"):
        shutil_copy(code_run / name, memory_run / name)
    shutil_copy(Path(onnx), memory_run / "student.onnx")
    spec = json.loads((code_run / "student.json").read_text())
    spec["architecture"]["spec"] = "cnn_tiny"
    (memory_run / "student.json").write_text(json.dumps(spec))
    (memory_run / "samples.npz").write_bytes(np.random.default_rng(1).integers(0, 256, 3000, np.uint8).tobytes())
    for name, change in (("bad_spec_run", "spec"), ("bad_weights_run", "weights")):
        shutil.copytree(memory_run, d / name)
        SampleMemory(4, (1, 16, 16)).save(d / name / "samples.npz")
        if change == "spec":
            (d / name / "student.json").write_text(json.dumps({**spec, "std": [0.0]}))
        else:
            (d / name / "student.pt").write_bytes(np.random.default_rng(2).integers(0, 256, 3000, np.uint8).tobytes())
    from onnx import TensorProto, helper
    from onnx import save as save_onnx

    image = lambda name: helper.make_tensor_value_info(name, TensorProto.FLOAT, ["N", 1, 16, 16])
    for name, inputs in (("two_inputs.onnx", ["a", "b"]), ("image_out.onnx", ["a"])):
        node = helper.make_node("Add" if len(inputs) == 2 else "Identity", inputs, ["y"])
        graph = helper.make_graph([node], "g", [image(i) for i in inputs], [image("y")])
        save_onnx(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), d / name)
    # Teachers in the formats of issue 17: ONNX, safetensors state dicts, Hugging Face folders.
    conv = helper.make_node("Hardmax", ["x"], ["y"], name="hardmax_1", axis=1)
    graph = helper.make_graph([conv], "g", [image("x")], [helper.make_tensor_value_info("y", TensorProto.FLOAT,
                                                                                          ["N", 1, 16, 16])])
    save_onnx(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), d / "unsupported_op.onnx")
    pool = helper.make_node("GlobalAveragePool", ["x"], ["p"])
    flat = helper.make_node("Flatten", ["p"], ["y"])
    graph = helper.make_graph([pool, flat], "g", [image("x")],
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["N", 1]) for n in ("y", "p")])
    save_onnx(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), d / "two_outputs.onnx")
    teacher_onnx = export_onnx(create_model("cnn_small", num_classes=10, in_channels=1, input_size=16).eval(),
                               d / "teacher.onnx", input_shape=(1, 16, 16), mean=[0.5], std=[0.5],
                               fold_normalization=True, classes=DIGIT_CLASSES)
    good_onnx = Path(teacher_onnx).read_bytes()
    (d / "truncated.onnx").write_bytes(good_onnx[: len(good_onnx) // 2])
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, d / "state_dict.safetensors")
    (d / "hf_no_weights").mkdir()
    (d / "hf_no_weights" / "config.json").write_text(json.dumps({"model_type": "resnet", "num_labels": 10}))
    (d / "hf_no_weights" / "pytorch_model.bin").write_bytes(b"\x80\x02pickled")
    (d / "list_checkpoint_run").mkdir()
    torch.save([1, 2, 3], d / "list_checkpoint_run" / "checkpoint.pt")
    from nayer_edge.distill.config import load_config

    settings = load_config(TEST_RECIPE, {"epochs": 1, "kd_steps": 1, "g_steps": 1, "synthesis_batch": 10,
                                         "kd_batch": 8, "student": "cnn_tiny", "device": "cpu", "embedding": "onehot"})
    (d / "stateless_checkpoint_run").mkdir()
    torch.save({"config": settings.to_dict(), "memory_ring": {}, "holdout_ring": {}},
               d / "stateless_checkpoint_run" / "checkpoint.pt")
    return Kit(d, digits_teacher, Path(onnx))


def make_bad_bundles(d: Path, onnx: Path, classes: list[str]) -> None:
    """A good Jetson bundle, then copies with a file missing, a file changed, an engine stamped for another
    GPU and TensorRT, and an engine without a stamp (an engine must be one this machine can run)."""

    from nayer_edge.deploy.bundle_build import make_bundle

    good = d / "bundle_good"
    make_bundle(onnx, good, target="jetson-orin-nx", precision="fp32", classes=classes, input_shape=(1, 16, 16),
                mean=[0.5], std=[0.5], input_convention="images01",
                reference_images=np.random.default_rng(0).random((8, 1, 16, 16)).astype(np.float32))
    for name in ("bundle_missing_file", "bundle_changed_file", "bundle_foreign_engine", "bundle_unstamped_engine"):
        shutil.copytree(good, d / name)
    (d / "bundle_missing_file" / "labels.txt").unlink()
    with open(d / "bundle_changed_file" / "labels.txt", "a") as handle:
        handle.write("ten\n")
    for name in ("bundle_foreign_engine", "bundle_unstamped_engine"):
        (d / name / "model.engine").write_bytes(os.urandom(256))
    (d / "bundle_foreign_engine" / "model.engine.json").write_text(json.dumps({
        "format": "nayer-edge-engine-stamp", "tensorrt": "10.3.0.30", "gpu_name": "Orin", "gpu_source": "cuda",
        "compute_capability": "8.7", "precision": "fp32", "dla_core": None}))


def shutil_copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_bytes(src.read_bytes())


# --------------------------------------------------------------------------------------- the catalogue

# Each case: (command, arguments built from the kit and the test's folder, words the error line must contain).
# {out} is an output folder holding an earlier run's results unless the case gives --out itself.
Args = Callable[[Kit, Path], list[str]]


def small(case_args: tuple[str, ...]) -> list[str]:
    """SMALL without the options the case sets itself (a later option would win over the case's)."""
    pairs = zip(SMALL[::2], SMALL[1::2])
    return [item for flag, value in pairs if flag not in case_args for item in (flag, value)]


def distill(teacher: Callable[[Kit], Path] | None = None, *extra: str, out: bool = True) -> Args:
    def build(k: Kit, tmp: Path) -> list[str]:
        t = teacher(k) if teacher else k.teacher.path
        return ["distill", str(t), *(["--out", str(tmp / "run")] if out else []),
                *[e.format(d=k.dir, tmp=tmp, eval=k.teacher.eval_path) for e in extra], *small(extra)]
    return build


def compress(*extra: str) -> Args:
    def build(k: Kit, tmp: Path) -> list[str]:
        return ["compress", str(k.teacher.path), "--out", str(tmp / "run"),
                *[e.format(d=k.dir, tmp=tmp, eval=k.teacher.eval_path) for e in extra], *small(extra)]
    return build


def command(*args: str) -> Args:
    def build(k: Kit, tmp: Path) -> list[str]:
        return [a.format(d=k.dir, tmp=tmp, eval=k.teacher.eval_path, teacher=k.teacher.path, onnx=k.onnx)
                for a in args]
    return build


def read_only_fs(build: Args, where: str = "/sys") -> Args:
    """``build`` where the folder ``where`` is on a filesystem nobody, not even root, can create files in
    (sysfs); skipped where it is writable after all."""
    def check(k: Kit, tmp: Path) -> list[str]:
        probe = Path(where) / f"nayer-edge-write-probe-{os.getpid()}"
        try:
            probe.mkdir()
        except OSError:
            return build(k, tmp)
        probe.rmdir()
        pytest.skip(f"{where} is writable here")
    return check


def bad(name: str) -> Callable[[Kit], Path]:
    return lambda k: k.dir / name


CATALOGUE: dict[str, tuple[Args, tuple[str, ...]]] = {
    # ---- teacher files
    "teacher-missing": (command("inspect", "{d}/no_such_teacher.pt"), ("no_such_teacher.pt", "file not found")),
    "teacher-empty": (distill(bad("empty.pt")), ("empty.pt", "the file is empty")),
    "teacher-truncated-torchscript": (distill(bad("truncated.pt")), ("truncated.pt", "corrupt zip")),
    "teacher-header-only": (command("inspect", "{d}/header_only.pt"), ("header_only.pt", "not a TorchScript")),
    "teacher-random-bytes": (distill(bad("random.pt")), ("random.pt", "unrecognised content")),
    "teacher-zip-not-a-model": (distill(bad("not_a_model.pt")), ("not_a_model.pt", "zip archive with none")),
    "teacher-tar-archive": (distill(bad("teacher.tar")), ("teacher.tar", "tar", "extract it")),
    "teacher-is-directory": (distill(bad("teacher_dir.pt")), ("teacher_dir.pt", "directory")),
    "teacher-pickled-list": (command("inspect", "{d}/a_list.pt", "--trust-pickle"), ("a_list.pt", "holds a list")),
    "teacher-state-dict-without-arch": (distill(bad("state_dict.pt"), "--input-shape", "1,16,16"),
                                        ("state_dict.pt", "--arch NAME")),
    "teacher-state-dict-wrong-arch": (distill(bad("state_dict.pt"), "--arch", "wrn16_1", "--input-shape", "1,16,16"),
                                      ("does not match --arch wrn16_1", "check --arch")),
    "teacher-unknown-arch": (command("inspect", "{d}/state_dict.pt", "--arch", "cnn_smal"),
                             ("cnn_smal", "did you mean 'cnn_small'")),
    "teacher-nan-weights": (distill(bad("nan_weights.pt"), "--arch", "cnn_small", "--input-shape", "1,16,16"),
                            ("NaN or inf",)),
    "teacher-inf-weights": (distill(bad("inf_weights.pt"), "--arch", "cnn_small", "--input-shape", "1,16,16"),
                            ("NaN or inf",)),
    "teacher-output-not-logits": (distill(bad("ImageOut.pt"), "--input-shape", "1,16,16"),
                                  ("shape (2, 1, 16, 16)", "expected float logits")),
    "teacher-output-no-batch": (distill(bad("VectorOut.pt"), "--input-shape", "1,16,16"), ("shape (10,)",)),
    "teacher-output-integer": (command("inspect", "{d}/IntOut.pt", "--input-shape", "1,16,16"), ("torch.int64",)),
    "teacher-rejects-input-shape": (distill(bad("FixedInput.pt"), "--input-shape", "1,16,16"),
                                    ("rejects input shape 1,16,16", "--input-shape")),
    "teacher-fails-on-larger-batches": (distill(bad("SmallBatchOnly.pt"), "--input-shape", "1,16,16"),
                                        ("the teacher failed on a batch of 10 images of 1×16×16",
                                         "at most 2", "accepts any batch size")),
    "teacher-metadata-bad-json": (distill(lambda k: k.dir / "bad_meta" / "teacher.pt"),
                                  ("teacher.pt.json", "not valid JSON")),
    "teacher-metadata-unknown-key": (distill(lambda k: k.dir / "meta_key" / "teacher.pt"),
                                     ("clases", "did you mean 'classes'")),
    "teacher-onnx-truncated": (distill(bad("truncated.onnx")), ("truncated.onnx", "cannot read the ONNX file")),
    "teacher-onnx-two-inputs": (distill(bad("two_inputs.onnx")), ("two_inputs.onnx", "takes 2 inputs (a, b)",
                                                                  "one image tensor")),
    "teacher-onnx-two-outputs": (distill(bad("two_outputs.onnx")), ("two_outputs.onnx", "2 outputs (y, p)",
                                                                    "one logits tensor")),
    "teacher-onnx-output-not-logits": (distill(bad("image_out.onnx"), "--input-shape", "1,16,16"),
                                       ("shape (2, 1, 16, 16)", "expected float logits")),
    "teacher-onnx-unsupported-operator": (distill(bad("unsupported_op.onnx"), "--input-shape", "1,16,16"),
                                          ("unsupported_op.onnx", "operator 'Hardmax'", "node 'hardmax_1'")),
    "teacher-safetensors-wrong-arch": (distill(bad("state_dict.safetensors"), "--arch", "wrn16_1",
                                               "--input-shape", "1,16,16"),
                                       ("state_dict.safetensors", "does not match --arch wrn16_1")),
    "teacher-hf-folder-without-weights": (distill(bad("hf_no_weights")),
                                          ("hf_no_weights", "without model.safetensors", "pytorch_model.bin",
                                           "safe_serialization=True")),
    "teacher-timm-not-installed": (distill(bad("state_dict.safetensors"), "--arch", "timm:resnet18",
                                           "--input-shape", "1,16,16"), ("timm is not installed", "nayer-edge[timm]")),
    # ---- class lists
    "classes-empty-file": (distill(None, "--classes", "{d}/no_classes.txt"), ("no class names",)),
    "classes-empty-list": (distill(None, "--classes", ","), ("no class names",)),
    "classes-duplicates": (distill(None, "--classes", "{d}/dup_classes.txt"), ("duplicate class name 'one'",)),
    "classes-count-mismatch": (distill(None, "--classes", "{d}/three_classes.txt"), ("3 class names", "10 logits")),
    "classes-missing-file": (distill(None, "--classes", "{d}/classes.txt"), ("classes.txt", "no such file")),
    # ---- evaluation data
    "eval-missing": (distill(None, "--eval-data", "{d}/nowhere.npz"), ("nowhere.npz", "no such file")),
    "eval-x-2d": (distill(None, "--eval-data", "{d}/x_2d.npz"), ("x_2d.npz", "N×H×W×C")),
    "eval-x-5d": (distill(None, "--eval-data", "{d}/x_5d.npz"), ("x_5d.npz", "N×C×H×W")),
    "eval-wrong-channels": (command("verify", "{onnx}", "--eval-data", "{d}/two_channels.npz"),
                            ("2 channels", "takes 1")),
    "eval-labels-out-of-range": (distill(None, "--eval-data", "{d}/labels_42.npz"), ("labels_42.npz", "[0, 10)")),
    "eval-labels-negative": (distill(None, "--eval-data", "{d}/labels_neg.npz"), ("labels_neg.npz", "-1")),
    "eval-labels-uint64-max": (distill(None, "--eval-data", "{d}/labels_u64_max.npz"),
                               ("labels_u64_max.npz", "18446744073709551615", "[0, 10)")),
    "eval-empty": (distill(None, "--eval-data", "{d}/empty.npz"), ("empty.npz", "no images")),
    "eval-x-strings": (distill(None, "--eval-data", "{d}/x_strings.npz"), ("x_strings.npz", "dtype <U1")),
    "eval-y-strings": (distill(None, "--eval-data", "{d}/y_strings.npz"), ("y_strings.npz", "labels must be integers")),
    "eval-y-floats": (distill(None, "--eval-data", "{d}/y_floats.npz"), ("y_floats.npz", "labels must be integers")),
    "eval-count-mismatch": (distill(None, "--eval-data", "{d}/count.npz"), ("5 images but y has 4 labels",)),
    "eval-nan-pixels": (distill(None, "--eval-data", "{d}/x_nan.npz"), ("NaN or inf",)),
    "eval-float-0-255": (distill(None, "--eval-data", "{d}/x_255_float.npz"), ("[255, 255]", "[0, 1]")),
    "eval-npz-without-x-y": (distill(None, "--eval-data", "{d}/no_x_y.npz"), ("no array 'x'", "images, labels")),
    "eval-single-npy": (distill(None, "--eval-data", "{d}/single.npy"), ("single .npy array", "numpy.savez")),
    "eval-text-file": (distill(None, "--eval-data", "{d}/text.npz"), ("text.npz", "not a zip archive")),
    "eval-corrupt-npz": (distill(None, "--eval-data", "{d}/corrupt.npz"), ("corrupt.npz", "not a readable .npz")),
    "eval-object-arrays": (distill(None, "--eval-data", "{d}/objects.npz"), ("objects.npz", "Python objects")),
    "eval-unreadable-image": (distill(None, "--eval-data", "{d}/bad_image"), ("broken.png", "cannot read image")),
    "eval-folder-without-class-folders": (distill(None, "--eval-data", "{d}/flat_folder"), ("no class folders",)),
    "eval-folder-unknown-class": (distill(None, "--eval-data", "{d}/unknown_class"),
                                  ("'onne' is not a class name", "did you mean 'one'")),
    "eval-folder-no-images": (distill(None, "--eval-data", "{d}/no_images"), ("no images",)),
    "eval-labels-beyond-model": (command("verify", "{onnx}", "--eval-data", "{d}/labels_42.npz"), ("42",)),
    # ---- recipes, options and targets
    "recipe-unknown-key": (distill(None, "--recipe", "{d}/recipe_key.yaml"), ("g_lif", "did you mean 'g_life'")),
    "recipe-wrong-type": (distill(None, "--recipe", "{d}/recipe_type.yaml"), ("augment_flip", "true or false")),
    "recipe-invalid-value": (distill(None, "--recipe", "{d}/recipe_value.yaml"), ("g_life must be positive",)),
    "recipe-invalid-yaml": (distill(None, "--recipe", "{d}/recipe_yaml.yaml"), ("recipe_yaml.yaml", "not valid YAML")),
    "recipe-not-a-mapping": (distill(None, "--recipe", "{d}/recipe_list.yaml"), ("expected a mapping",)),
    "recipe-negative-seed": (distill(None, "--recipe", "{d}/recipe_seed.yaml"), ("seed", "0 to 2**32 - 1", "got -1")),
    "option-seed-too-large": (distill(None, "--seed", "5000000000"), ("seed", "0 to 2**32 - 1", "got 5000000000")),
    "recipe-huge-thread-count": (distill(None, "--recipe", "{d}/recipe_threads.yaml"),
                                 ("threads must be at most 1024", "got 100000000000")),
    "recipe-unknown-name": (distill(None, "--recipe", "demo-digitz"), ("demo-digitz", "did you mean 'demo-digits'")),
    "student-unknown-name": (distill(None, "--student", "cnn_tinny"), ("cnn_tinny", "did you mean 'cnn_tiny'")),
    "option-input-shape-malformed": (distill(None, "--input-shape", "16,16"), ("16,16", "C,H,W")),
    "option-mean-not-numbers": (distill(None, "--mean", "half"), ("'half'", "numbers")),
    "option-value-not-a-number": (distill(None, "--epochs", "abc"),
                                  ("Invalid value for '--epochs'", "integer", "see 'nayer-edge distill --help'")),
    "option-unknown": (distill(None, "--epoch", "3"), ("No such option: --epoch", "see 'nayer-edge distill --help'")),
    "argument-missing": (command("distill", "--out", "{tmp}/run", "--epochs", "1"),
                         ("Missing argument 'teacher'", "see 'nayer-edge distill --help'")),
    "command-unknown": (command("distil", "{teacher}"), ("No such command 'distil'", "see 'nayer-edge --help'")),
    "target-unknown-name": (compress("--target", "cpu-x68"), ("cpu-x68", "did you mean 'cpu-x86'")),
    "target-unknown-key": (compress("--target", "{d}/target_key.yaml"), ("max_latncy_ms", "did you mean 'max_latency_ms'")),
    "target-wrong-type": (compress("--target", "{d}/target_type.yaml"), ("batch", "integer")),
    "compress-qat-with-fp32": (compress("--precision", "fp32", "--qat"), ("--qat", "--precision int8")),
    "compress-eval-labels-out-of-range": (compress("--eval-data", "{d}/labels_42.npz"), ("labels_42.npz", "[0, 10)")),
    # ---- output folders
    "out-is-a-file": (distill(None, "--out", "{tmp}/earlier/report.md", out=False), ("report.md", "is a file")),
    "out-parent-is-a-file": (distill(None, "--out", "{tmp}/earlier/report.md/run", out=False), ("report.md/run",)),
    "out-on-read-only-filesystem": (read_only_fs(distill(None, "--out", "/sys/nayer-edge-run", out=False)),
                                    ("/sys/nayer-edge-run", "not writable", "--out")),
    "out-parent-on-read-only-filesystem": (read_only_fs(distill(None, "--out", "/sys/nayer-edge/run", out=False)),
                                           ("/sys/nayer-edge/run", "not writable")),
    # ---- run folders (export, quantize, deploy)
    "run-names-python-code-export": (command("export", "{d}/code_run", "--out", "{tmp}/student.onnx"),
                                     ("code_run/student.json", "payload.py:tiny", "runs that code", "--trust-code")),
    "run-names-python-code-quantize": (command("quantize", "{d}/code_run", "--qat"),
                                       ("code_run/student.json", "payload.py:tiny", "--trust-code")),
    "run-names-python-code-deploy": (command("export", "{d}/code_run", "--target", "cpu-x86"),
                                     ("code_run/student.json", "payload.py:tiny", "--trust-code")),
    "run-damaged-synthetic-memory": (command("quantize", "{d}/memory_run", "--out", "{tmp}/int8.onnx"),
                                     ("memory_run/samples.npz", "not a sample memory", "re-run distill")),
    "run-student-json-invalid": (command("export", "{d}/bad_spec_run", "--out", "{tmp}/student.onnx"),
                                 ("bad_spec_run/student.json", "std must be positive", "re-run distill")),
    "run-student-weights-not-weights": (command("export", "{d}/bad_weights_run", "--out", "{tmp}/student.onnx"),
                                        ("bad_weights_run/student.pt", "unreadable", "re-run distill")),
    "export-out-is-a-folder": (command("export", "{d}/memory_run", "--out", "{tmp}/earlier"),
                               ("--out", "earlier is a folder", "file path")),
    "export-out-under-a-file": (command("export", "{d}/memory_run", "--out", "{tmp}/earlier/report.md/student.onnx"),
                                ("report.md is a file",)),
    "quantize-out-on-read-only-filesystem": (read_only_fs(command("quantize", "{d}/memory_run", "--out",
                                                                  "/sys/nayer-edge/int8.onnx")),
                                             ("/sys/nayer-edge", "not writable")),
    "resume-checkpoint-not-a-checkpoint": (distill(None, "--out", "{d}/list_checkpoint_run", "--resume", out=False),
                                           ("list_checkpoint_run/checkpoint.pt", "not a nayer-edge checkpoint",
                                            "without --resume")),
    "resume-checkpoint-without-run-state": (distill(None, "--out", "{d}/stateless_checkpoint_run", "--resume",
                                                    out=False),
                                            ("stateless_checkpoint_run/checkpoint.pt", "damaged or not this run's",
                                             "without --resume")),
    # ---- models to verify
    "verify-not-onnx": (command("verify", "{teacher}"), ("teacher.pt", "not a loadable ONNX model")),
    "verify-missing-model": (command("verify", "{d}/nothing.onnx"), ("nothing.onnx", "no such ONNX file")),
    "verify-two-inputs": (command("verify", "{d}/two_inputs.onnx"), ("two_inputs.onnx", "takes 2 inputs (a, b)")),
    "verify-output-not-logits": (command("verify", "{onnx}", "--reference", "{d}/image_out.onnx"),
                                 ("image_out.onnx", "shape ['N', 1, 16, 16]", "not N×K logits")),
    "verify-missing-reference": (command("verify", "{onnx}", "--reference", "{d}/nowhere"), ("reference", "nowhere")),
    # ---- deploy bundles
    "bundle-missing-file": (command("verify", "{d}/bundle_missing_file"), ("labels.txt is missing",)),
    "bundle-hash-mismatch": (command("verify", "{d}/bundle_changed_file"), ("labels.txt sha256 mismatch",)),
    "bundle-engine-for-another-gpu": (command("verify", "{d}/bundle_foreign_engine"),
                                      ("engine model.engine", "built for TensorRT 10.3.0.30 on Orin (compute "
                                       "capability 8.7)", "this machine has", "scripts/build_engine.py")),
    "bundle-engine-without-stamp": (command("verify", "{d}/bundle_unstamped_engine"),
                                    ("engine model.engine", "no valid stamp", "scripts/build_engine.py")),
}


def snapshot(folder: Path) -> dict[str, str]:
    """Every file's sha256 and every folder, by path relative to ``folder``."""
    state = {}
    for path in sorted(folder.rglob("*")):
        rel = str(path.relative_to(folder))
        state[rel] = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "<dir>"
    return state


def earlier_run(folder: Path) -> Path:
    folder.mkdir(parents=True)
    for name, data in EARLIER_RESULTS.items():
        (folder / name).write_bytes(data)
    return folder


def assert_one_line_exit_2(result: subprocess.CompletedProcess, needles: tuple[str, ...]) -> str:
    output = result.stderr + result.stdout
    assert result.returncode == 2, f"exit {result.returncode}: {output[-3000:]}"
    assert "Traceback" not in output, output[-3000:]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{result.stderr[-3000:]}"
    for needle in needles:
        assert needle in lines[0], f"{needle!r} not in: {lines[0]}"
    return lines[0]


def test_catalogue_has_at_least_30_cases():
    assert len(CATALOGUE) >= 30


@pytest.mark.parametrize("case", list(CATALOGUE))
def test_bad_input(case, kit, tmp_path):
    build, needles = CATALOGUE[case]
    earlier = earlier_run(tmp_path / "earlier")
    args = build(kit, tmp_path)
    if "--out" in args and args[args.index("--out") + 1] == str(tmp_path / "run"):
        args[args.index("--out") + 1] = str(earlier)  # a failed run must leave earlier results untouched
    before, inputs_before = snapshot(tmp_path), snapshot(kit.dir)
    result = run_cli(*args, cwd=tmp_path, timeout=TIMEOUT)
    line = assert_one_line_exit_2(result, needles)
    assert line.startswith("error: ")
    assert snapshot(tmp_path) == before, "the run wrote, changed or removed files"
    assert snapshot(kit.dir) == inputs_before, "the run changed its inputs"


@pytest.mark.parametrize("case", ["teacher-truncated-torchscript", "eval-labels-out-of-range", "recipe-unknown-key",
                                  "teacher-fails-on-larger-batches", "out-on-read-only-filesystem"])
def test_bad_input_creates_no_output_folder(case, kit, tmp_path):
    """With a new --out, nothing is created at all."""
    build, needles = CATALOGUE[case]
    args = build(kit, tmp_path)
    result = run_cli(*args, cwd=tmp_path, timeout=TIMEOUT)
    assert_one_line_exit_2(result, needles)
    assert not (tmp_path / "run").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == []


# --------------------------------------------------------------------------------------- untrusted pickles


@pytest.mark.parametrize("how", ["torch_save", "plain_pickle", "inside_checkpoint"])
def test_malicious_pickle_does_not_run_without_trust_pickle(how, kit, tmp_path):
    """The pickle is live (with --trust-pickle it creates its marker); without the flag nothing runs."""
    marker = tmp_path / "PWNED"
    path = tmp_path / "evil.pt"
    if how == "torch_save":
        torch.save(Evil(marker), path)
    elif how == "plain_pickle":
        path.write_bytes(pickle.dumps(Evil(marker)))
    else:
        state = torch.load(kit.dir / "state_dict.pt", weights_only=True)
        torch.save({"state_dict": state, "epoch": 3, "hook": Evil(marker)}, path)
    out = earlier_run(tmp_path / "earlier")
    before = snapshot(tmp_path)
    result = run_cli("distill", str(path), "--out", str(out), "--arch", "cnn_small", *SMALL, cwd=tmp_path,
                     timeout=TIMEOUT)
    assert_one_line_exit_2(result, ("evil.pt", "pickled code", "--trust-pickle"))
    assert not marker.exists(), "unpickling ran code without --trust-pickle"
    assert snapshot(tmp_path) == before
    # The proof that the file would have run code: trusting it creates the marker.
    trusted = run_cli("inspect", str(path), "--arch", "cnn_small", "--trust-pickle", cwd=tmp_path, timeout=TIMEOUT)
    assert marker.exists(), trusted.stderr[-2000:]
    assert "Traceback" not in trusted.stderr


USER_STUDENTS = """
import os
from nayer_edge.zoo import create_model

with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "imports.log"), "a") as log:
    log.write("imported\\n")


def tiny(num_classes, in_channels):
    return create_model("cnn_tiny", num_classes=num_classes, in_channels=in_channels, input_size=16)
"""


def test_run_folder_student_code_is_imported_only_with_trust_code(kit, tmp_path):
    """compress with the user's own student factory works (the factory is the one on its command line); a
    later export, quantize or deploy of that run folder does not import the file student.json names (the
    folder could come from anywhere) unless given --trust-code."""
    (tmp_path / "my_students.py").write_text(USER_STUDENTS)
    imports = tmp_path / "imports.log"
    run = tmp_path / "run"
    args = [*small(("--student",)), "--student", "my_students.py:tiny"]
    # One KD step makes no release: the agreement gate is off here, the test is about whose code is imported.
    result = run_cli("compress", str(kit.teacher.path), "--out", str(run), "--target", "cpu-x86", "--no-qat", *args,
                     "--min-teacher-agreement", "0", cwd=tmp_path, timeout=TIMEOUT)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (run / "student.int8.onnx").is_file()
    imported = imports.read_text()
    assert imported.count("imported") >= 1

    before = snapshot(tmp_path)
    for refused in (["export", str(run), "--out", str(tmp_path / "other.onnx")], ["quantize", str(run), "--qat"],
                    ["export", str(run), "--target", "cpu-x86"]):
        result = run_cli(*refused, cwd=tmp_path, timeout=TIMEOUT)
        assert_one_line_exit_2(result, ("run/student.json", "my_students.py:tiny", "--trust-code"))
        assert snapshot(tmp_path) == before, f"{refused[0]} imported the factory or wrote files"

    trusted = run_cli("export", str(run), "--out", str(tmp_path / "other.onnx"), "--trust-code", cwd=tmp_path,
                      timeout=TIMEOUT)
    assert trusted.returncode == 0, trusted.stderr[-3000:]
    assert imports.read_text().count("imported") == imported.count("imported") + 1
    assert (tmp_path / "other.onnx").is_file()


def test_a_library_warning_is_one_line_on_the_command_line(kit, tmp_path):
    """Warnings reach the CLI user as 'warning: ...', not Python's two lines with the raising source line."""
    out = tmp_path / "run"
    first = run_cli("distill", str(kit.teacher.path), "--out", str(out), *SMALL, cwd=tmp_path, timeout=TIMEOUT)
    assert first.returncode == 0, first.stderr[-3000:]
    resumed = run_cli("distill", str(kit.teacher.path), "--out", str(out), "--resume", *small(("--epochs",)),
                      "--epochs", "2", cwd=tmp_path, timeout=TIMEOUT, env={"PYTHONWARNINGS": "default"})
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    warned = [line for line in resumed.stderr.splitlines() if "resumed with other settings" in line]
    assert len(warned) == 1 and warned[0].startswith("warning: resumed with other settings (epochs: 1 → 2)"), \
        resumed.stderr[-3000:]
    assert "UserWarning" not in resumed.stderr and "_build_and_run" not in resumed.stderr, resumed.stderr[-3000:]


def test_a_cache_that_is_a_file_is_one_line(kit, tmp_path):
    cache = tmp_path / "cache"
    cache.write_text("not a folder")
    result = run_cli("demo", "--out", str(tmp_path / "demo"), cwd=tmp_path, timeout=TIMEOUT,
                     env={"NAYER_EDGE_CACHE": str(cache)})
    assert_one_line_exit_2(result, ("cache/demo", "Not a directory", "point $NAYER_EDGE_CACHE at a folder"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache"]


def test_resume_refuses_another_teacher_and_says_when_there_is_nothing_to_resume(kit, tmp_path):
    out = tmp_path / "run"
    first = run_cli("distill", str(kit.teacher.path), "--out", str(out), *SMALL, cwd=tmp_path, timeout=TIMEOUT)
    assert first.returncode == 0, first.stderr[-3000:]
    before = snapshot(out)
    other = run_cli("distill", str(kit.dir / "state_dict.pt"), "--arch", "cnn_small", "--input-shape", "1,16,16",
                    "--out", str(out), "--resume", *SMALL, cwd=tmp_path, timeout=TIMEOUT)
    assert_one_line_exit_2(other, ("--resume", "distilled from another teacher", "the same teacher"))
    assert snapshot(out) == before
    fresh = run_cli("distill", str(kit.teacher.path), "--out", str(tmp_path / "new"), "--resume", *SMALL,
                    cwd=tmp_path, timeout=TIMEOUT, env={"PYTHONWARNINGS": "default"})
    assert fresh.returncode == 0, fresh.stderr[-3000:]
    assert f"warning: --resume: no checkpoint in {tmp_path / 'new'}; starting a new run" in fresh.stderr


# --------------------------------------------------------------------------------------- output folders


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0,
                    reason="root ignores permission bits, so a read-only folder is writable; as root the "
                           "read-only filesystem cases (under /sys) check the same refusal")
def test_out_not_writable(kit, tmp_path):
    locked = earlier_run(tmp_path / "locked")
    locked.chmod(0o500)
    try:
        before = snapshot(tmp_path)
        result = run_cli("distill", str(kit.teacher.path), "--out", str(locked / "run"), *SMALL, cwd=tmp_path,
                         timeout=TIMEOUT)
        assert_one_line_exit_2(result, ("not writable",))
        assert snapshot(tmp_path) == before
    finally:
        locked.chmod(0o700)


def test_atomic_writer_keeps_the_old_file_when_the_disk_is_full(tmp_path, monkeypatch):
    """Disk full at the library level: an ENOSPC while writing leaves the earlier file intact and no
    temporary file behind, and says so in one line (the CLI-level run on a real full disk is the tmpfs test below)."""
    from nayer_edge.core import atomic
    from nayer_edge.core.errors import UserError

    target = tmp_path / "metrics.json"
    target.write_text("earlier")

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(atomic.os, "fsync", full)
    for write in (lambda: atomic.atomic_write_text(target, "new " * 1000),
                  lambda: atomic.atomic_write_bytes(target, b"new"),
                  lambda: atomic.atomic_torch_save(target, {"w": torch.zeros(10)})):
        with pytest.raises(UserError, match="no space left on the device writing .*metrics.json"):
            write()
        assert target.read_text() == "earlier"
        assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]


@pytest.fixture
def tiny_disk(tmp_path):
    """A 96 KiB tmpfs: a disk that fills up during a run. Needs root and mount rights."""
    mount_point = tmp_path / "tiny_disk"
    mount_point.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=96k", "tmpfs", str(mount_point)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip() or done.returncode}); "
                    "the atomic-writer ENOSPC test covers the library level")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", str(mount_point)], capture_output=True)


def test_full_disk_leaves_no_truncated_file(kit, tiny_disk):
    """A real full disk during a run: whatever the run got to write is whole (atomic writes), no temporary
    files remain, and the run fails rather than reporting success."""
    out = tiny_disk / "run"
    result = run_cli("distill", str(kit.teacher.path), "--out", str(out), *SMALL, cwd=tiny_disk.parent,
                     timeout=TIMEOUT)
    assert result.returncode != 0, "a run that could not write its artefacts reported success"
    leftovers = [p.name for p in out.rglob("*") if p.name.endswith(".tmp")] if out.exists() else []
    assert not leftovers, leftovers
    for path in out.glob("*.npz") if out.exists() else []:
        with np.load(path) as data:  # whole, or not there at all
            [data[k] for k in data.files]
    for path in out.glob("*.pt") if out.exists() else []:
        torch.load(path, weights_only=True)


def test_full_disk_is_one_line_exit_2(kit, tiny_disk):
    """The disk fills up mid-run (after progress was shown): the run ends with one error line saying so."""
    result = run_cli("distill", str(kit.teacher.path), "--out", str(tiny_disk / "run"), *SMALL,
                     cwd=tiny_disk.parent, timeout=TIMEOUT)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: no space left") and "another folder" in last, result.stderr[-3000:]
