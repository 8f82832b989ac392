"""Second half of benchmarks/qat_tooling_modelopt.py (run it after that, same venv): the Q/DQ layout of the
exported graphs and onnxruntime CPU latency, FP32 vs modelopt INT8, batch 32, one thread."""

import collections
import json
import os
import sys
import time

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper

OUT = os.environ.get("OUT", "runs/bench-modelopt")
names = sys.argv[1:] or ["fp32_opset17_ts", "int8_opset17_ts", "int8_opset13_ts"]
xte = np.load(f"{OUT}/xte.npy")
yte = np.load(f"{OUT}/yte.npy")
ref = {"fp32": np.load(f"{OUT}/fp_logits.npy"), "int8": np.load(f"{OUT}/q_logits.npy")}
res = {}
for name in names:
    p = f"{OUT}/{name}.onnx"
    m = onnx.load(p)
    inits = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
    consts = {}
    for n in m.graph.node:
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value":
                    consts[n.output[0]] = numpy_helper.to_array(a.t)
    allc = {**inits, **consts}
    producer = {o: n for n in m.graph.node for o in n.output}
    info = dict(
        opset=[(o.domain or "ai.onnx", o.version) for o in m.opset_import],
        ops=dict(collections.Counter(n.op_type for n in m.graph.node)),
        init_dtypes=dict(collections.Counter(str(v.dtype) for v in inits.values())),
    )
    qd = []
    for n in m.graph.node:
        if n.op_type in ("QuantizeLinear", "DequantizeLinear"):
            axis = next((a.i for a in n.attribute if a.name == "axis"), None)
            zp_name = n.input[2] if len(n.input) > 2 else None
            zp = allc.get(zp_name)
            if zp is None and zp_name in producer:  # e.g. Cast(Constant)
                pr = producer[zp_name]
                zp = ("via " + pr.op_type, allc.get(pr.input[0]) if pr.input else None)
            sc = allc.get(n.input[1])
            x_in = n.input[0]
            src = "initializer" if x_in in inits else (producer[x_in].op_type if x_in in producer else "graph input")
            qd.append(
                dict(
                    op=n.op_type,
                    axis=axis,
                    x_from=src,
                    x_dtype=str(allc[x_in].dtype) if x_in in allc else None,
                    zp=str(zp)[:80],
                    zp_dtype=str(getattr(zp, "dtype", None)) if not isinstance(zp, tuple) else "cast",
                    scale_shape=list(getattr(sc, "shape", []))
                    if sc is not None
                    else ("from " + producer[n.input[1]].op_type if n.input[1] in producer else None),
                )
            )
    info["qdq"] = qd
    # ORT: parity + accuracy
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.optimized_model_filepath = f"{OUT}/{name}.ort_opt.onnx"
    try:
        s = ort.InferenceSession(p, so, providers=["CPUExecutionProvider"])
    except Exception as e:
        info["ort_error"] = str(e).splitlines()[0][:300]
        res[name] = info
        print(name, info)
        continue
    lo = s.run(None, {"x": xte})[0]
    r = np.load(f"{OUT}/qa_logits.npy") if "bnfolded" in name else ref["fp32" if name.startswith("fp32") else "int8"]
    info["ort_acc"] = float((lo.argmax(1) == yte).mean())
    info["max_abs_vs_torch"] = float(np.abs(lo - r).max())
    info["argmax_agree_vs_torch"] = float((lo.argmax(1) == r.argmax(1)).mean())
    om = onnx.load(so.optimized_model_filepath)
    info["ort_optimized_ops"] = dict(collections.Counter(n.op_type for n in om.graph.node))
    res[name] = info
    print(json.dumps({name: {k: v for k, v in info.items() if k != "qdq"}}, indent=1))
    for q in qd:
        print("   ", q)

# -------- latency, batch 32, intra_op 1, interleaved rounds --------
xb = np.ascontiguousarray(xte[:32])
sess = {}
for name in names:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    sess[name] = ort.InferenceSession(f"{OUT}/{name}.onnx", so, providers=["CPUExecutionProvider"])
    for _ in range(50):
        sess[name].run(None, {"x": xb})
lat = {n: [] for n in names}
for rnd in range(5):
    for n in names:
        s = sess[n]
        ts = []
        for _ in range(200):
            t = time.perf_counter()
            s.run(None, {"x": xb})
            ts.append(time.perf_counter() - t)
        lat[n] += ts
bench = {}
for n in names:
    a = np.array(lat[n]) * 1000
    bench[n] = dict(
        iters=len(a),
        p50_ms=round(float(np.median(a)), 4),
        mean_ms=round(float(a.mean()), 4),
        p90_ms=round(float(np.percentile(a, 90)), 4),
    )
base = bench[names[0]]["p50_ms"]
for n in names:
    bench[n]["p50_ratio_vs_" + names[0]] = round(bench[n]["p50_ms"] / base, 3)
print(json.dumps(bench, indent=1))
json.dump(
    dict(graphs=res, bench=bench, ort=ort.__version__, onnx=onnx.__version__),
    open(f"{OUT}/onnx_results_{'_'.join(n[:4] for n in names)}.json", "w"),
    indent=1,
    default=str,
)
