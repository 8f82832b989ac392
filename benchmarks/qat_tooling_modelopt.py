"""Should nayer-edge use NVIDIA Model Optimizer (nvidia-modelopt) for INT8 QAT? Measured on this CPU.

Runs in its own virtual environment, because modelopt is not a nayer-edge dependency:

    python3 -m venv /tmp/modelopt-venv && echo torch==2.13.0 > /tmp/c.txt
    /tmp/modelopt-venv/bin/pip install -c /tmp/c.txt torch==2.13.0 numpy onnx onnxruntime scikit-learn \
        nvidia-modelopt==0.47.0 requests huggingface_hub      # the last two: missing from modelopt's metadata
    OMP_NUM_THREADS=1 /tmp/modelopt-venv/bin/python benchmarks/qat_tooling_modelopt.py
    OMP_NUM_THREADS=1 /tmp/modelopt-venv/bin/python benchmarks/qat_tooling_modelopt_onnx.py

A Conv-BN-ReLU×3 + GAP + Linear CNN on scikit-learn's digits (16×16): FP32 training, mtq.quantize with
INT8_DEFAULT_CFG on CPU, QAT steps, ONNX export, the exported Q/DQ layout, and onnxruntime CPU latency of FP32
vs the modelopt INT8 graph. Results: BENCHMARKS.md, "QAT tooling".
"""

import copy
import json
import os
import sys
import time
import traceback
import warnings

t_start = time.perf_counter()
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

torch.set_num_threads(1)
torch.manual_seed(0)
np.random.seed(0)
R = {}
OUT = os.environ.get("OUT", "runs/bench-modelopt")
os.makedirs(OUT, exist_ok=True)

# ---------------- data: load_digits resized 8x8 -> 16x16 ----------------
from sklearn.datasets import load_digits

d = load_digits()
x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
x = F.interpolate(x, size=(16, 16), mode="bilinear", align_corners=False)
y = torch.tensor(d.target)
perm = torch.randperm(len(x))
x, y = x[perm], y[perm]
xtr, ytr, xte, yte = x[:1400], y[:1400], x[1400:], y[1400:]


def cbr(i, o, s):
    return [nn.Conv2d(i, o, 3, s, 1, bias=False), nn.BatchNorm2d(o), nn.ReLU()]


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(*cbr(1, 16, 1), *cbr(16, 32, 2), *cbr(32, 64, 2))
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        return self.fc(self.features(x).mean((2, 3)))


def acc(m, xs=xte, ys=yte):
    m.eval()
    with torch.no_grad():
        return float((m(xs).argmax(1) == ys).float().mean())


def train(m, epochs, lr, tag):
    opt = torch.optim.Adam(m.parameters(), lr=lr)
    steps = 0
    t = time.perf_counter()
    for ep in range(epochs):
        m.train()
        for i in range(0, len(xtr), 64):
            loss = F.cross_entropy(m(xtr[i : i + 64]), ytr[i : i + 64])
            opt.zero_grad()
            loss.backward()
            opt.step()
            steps += 1
    dt = time.perf_counter() - t
    R[tag] = dict(
        epochs=epochs, steps=steps, wall_s=round(dt, 2), ms_per_step=round(1000 * dt / steps, 2), test_acc=acc(m)
    )
    print(tag, R[tag], flush=True)


fp = Net()
train(fp, 8, 3e-3, "fp32_train")

# ---------------- modelopt import ----------------
t = time.perf_counter()
import modelopt
import modelopt.torch.quantization as mtq

R["modelopt_version"] = modelopt.__version__
R["import_mtq_s"] = round(time.perf_counter() - t, 2)

# ---------------- PTQ calibration via mtq.quantize ----------------
q = copy.deepcopy(fp)


def forward_loop(model):
    with torch.no_grad():
        for i in range(0, 512, 64):
            model(xtr[i : i + 64])


t = time.perf_counter()
try:
    q = mtq.quantize(q, mtq.INT8_DEFAULT_CFG, forward_loop)
    R["quantize_s"] = round(time.perf_counter() - t, 2)
    R["quantize_ok"] = True
except Exception:
    R["quantize_ok"] = False
    R["quantize_err"] = traceback.format_exc()
    print(R["quantize_err"])
    json.dump(R, open(f"{OUT}/results.json", "w"), indent=1)
    sys.exit(1)
R["ptq_acc"] = acc(q)
print("quantize", R["quantize_s"], "s  PTQ acc", R["ptq_acc"], flush=True)
print(q)
try:
    mtq.print_quant_summary(q)
except Exception as e:
    print("print_quant_summary failed:", e)
R["module_types_after_quantize"] = sorted({type(m).__module__ + "." + type(m).__name__ for m in q.modules()})
R["bn_still_present"] = any(isinstance(m, nn.BatchNorm2d) for m in q.modules())
# quantizer attributes
qs = {}
for n, m in q.named_modules():
    if type(m).__name__ == "TensorQuantizer":
        qs[n] = dict(
            enabled=bool(m.is_enabled),
            num_bits=m.num_bits,
            axis=m.axis,
            unsigned=m.unsigned,
            narrow_range=m.narrow_range,
            amax_shape=list(m.amax.shape) if getattr(m, "amax", None) is not None else None,
        )
R["quantizers"] = qs

# ---------------- QAT fine-tune ----------------
try:
    train(q, 3, 1e-4, "qat_train")
    R["qat_ok"] = True
except Exception:
    R["qat_ok"] = False
    R["qat_err"] = traceback.format_exc()
    print(R["qat_err"])
# reference: same 3 epochs of plain fp32 fine-tune for per-step cost comparison
fp_ft = copy.deepcopy(fp)
train(fp_ft, 3, 1e-4, "fp32_finetune_same_steps")

# ---------------- ONNX export ----------------
dummy = torch.randn(1, 1, 16, 16)
fp.eval()
q.eval()


def export(m, path, **kw):
    t = time.perf_counter()
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        torch.onnx.export(
            m, dummy, path, input_names=["x"], output_names=["y"], dynamic_axes={"x": {0: "n"}, "y": {0: "n"}}, **kw
        )
    return round(time.perf_counter() - t, 2), [str(x.message).splitlines()[0][:200] for x in w][:8]


R["export"] = {}
for name, m, kw in [
    ("fp32_opset17_ts", fp, dict(opset_version=17, dynamo=False)),
    ("int8_opset17_ts", q, dict(opset_version=17, dynamo=False)),
    ("int8_opset13_ts", q, dict(opset_version=13, dynamo=False)),
    ("int8_default_dynamo", q, dict()),
]:
    path = f"{OUT}/{name}.onnx"
    try:
        if name == "int8_default_dynamo":
            kw = dict(dynamo=True, opset_version=18)
        dt, ws = export(m, path, **kw)
        R["export"][name] = dict(ok=True, wall_s=dt, warnings=ws)
    except Exception as e:
        tb = traceback.format_exc()
        R["export"][name] = dict(
            ok=False,
            err_first=str(e).splitlines()[0][:300] if str(e) else repr(e),
            err_where=[l for l in tb.splitlines() if l.strip().startswith("File")][-3:],
        )
    print(name, R["export"][name], flush=True)

json.dump(R, open(f"{OUT}/results.json", "w"), indent=1, default=str)
torch.save({"fp": fp.state_dict()}, f"{OUT}/fp.pt")
np.save(f"{OUT}/xte.npy", xte.numpy())
np.save(f"{OUT}/yte.npy", yte.numpy())
# torch reference outputs of the QAT model for ONNX parity check
with torch.no_grad():
    np.save(f"{OUT}/q_logits.npy", q(xte).numpy())
    np.save(f"{OUT}/fp_logits.npy", fp(xte).numpy())
print("total", round(time.perf_counter() - t_start, 1), "s")
