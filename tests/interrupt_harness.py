"""Runs ``nayer-edge`` in this process with one fault planted at an exact point (tests/test_kill_resume.py).

    python tests/interrupt_harness.py FAULT N RECORD distill TEACHER --out RUN ...

N counts calls in this process. FAULT:

- ``kill-synthesis``: SIGKILL inside the Nth synthesis round (at its first generator forward);
- ``kill-kd``: SIGKILL right after the Nth KD step;
- ``kill-mid-write``: SIGKILL with half of the Nth checkpoint written to its temporary file;
- ``kill-before-rename``: SIGKILL once the Nth checkpoint's temporary file is whole and fsynced, before its
  rename;
- ``sigint-kd`` / ``sigterm-kd``: SIGINT / SIGTERM to itself right after the Nth KD step;
- ``double-sigint``: SIGINT after the Nth KD step, and a second one while the checkpoint that the first one
  causes is about to replace the previous one;
- ``kill-export`` / ``sigint-export``: SIGKILL / SIGINT inside the Nth ONNX export (compress's deployment,
  after the distillation), with the exporter's staging folder on disk.

Before a fault at a checkpoint write, the sha256 of the checkpoint then on disk is written to RECORD. Only
functions are wrapped; the production code has no test hooks.
"""

from __future__ import annotations

import hashlib
import io
import os
import signal
import sys
import time
from pathlib import Path

import torch

from nayer_edge import cli
from nayer_edge.distill.engine import Distiller
from nayer_edge.onnx_model import exporter as onnx_export

fault, nth, record = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3])
args = sys.argv[4:]
out = Path(args[args.index("--out") + 1])
counts = {"synthesis": 0, "kd": 0, "write": 0, "rename": 0, "export": 0}
armed = {"rename": False}


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def record_checkpoint() -> None:
    path = out / "checkpoint.pt"
    record.write_text(hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "")


real_synthesize, real_kd_step = Distiller.synthesize, Distiller.kd_step
real_save, real_replace = torch.save, os.replace
real_torch_export = onnx_export._torch_export


def synthesize(self, *a, **k):
    counts["synthesis"] += 1
    if fault == "kill-synthesis" and counts["synthesis"] == nth:
        self.generator.register_forward_hook(lambda *_: die())
    return real_synthesize(self, *a, **k)


def kd_step(self, *a, **k):
    loss = real_kd_step(self, *a, **k)
    counts["kd"] += 1
    if counts["kd"] == nth:
        if fault == "kill-kd":
            die()
        if fault in ("sigint-kd", "double-sigint"):
            armed["rename"] = fault == "double-sigint"
            os.kill(os.getpid(), signal.SIGINT)
        if fault == "sigterm-kd":
            os.kill(os.getpid(), signal.SIGTERM)
    return loss


def writes_checkpoint(f) -> bool:
    """Whether ``f`` is the atomic writer's temporary file for checkpoint.pt (opened from a descriptor)."""
    try:
        return Path(os.readlink(f"/proc/self/fd/{f.fileno()}")).name.startswith(".checkpoint.pt.")
    except (AttributeError, OSError, io.UnsupportedOperation):
        return False


def save(obj, f, *a, **k):
    if writes_checkpoint(f):
        counts["write"] += 1
        if fault == "kill-mid-write" and counts["write"] == nth:
            buffer = io.BytesIO()
            real_save(obj, buffer, *a, **k)
            data = buffer.getvalue()
            f.write(data[: len(data) // 2])
            f.flush()
            os.fsync(f.fileno())
            record_checkpoint()
            die()
    return real_save(obj, f, *a, **k)


def replace(src, dst, *a, **k):
    if Path(dst).name == "checkpoint.pt":
        counts["rename"] += 1
        if fault == "kill-before-rename" and counts["rename"] == nth:
            record_checkpoint()
            die()
        if armed["rename"]:
            record_checkpoint()
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(5)  # the handler raises here, before the rename
    return real_replace(src, dst, *a, **k)


def torch_export(*a, **k):
    counts["export"] += 1
    if counts["export"] == nth:
        if fault == "kill-export":
            die()
        if fault == "sigint-export":
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(5)  # the handler raises here
    return real_torch_export(*a, **k)


Distiller.synthesize, Distiller.kd_step = synthesize, kd_step
onnx_export._torch_export = torch_export
torch.save, os.replace = save, replace
sys.argv = ["nayer-edge", *args]
cli.main()
