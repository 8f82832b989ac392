"""The human- and DeepStream-facing files of a deploy bundle: its README and a Gst-nvinfer config."""

from __future__ import annotations

from types import ModuleType
from typing import Any

_NETWORK_MODE = {"fp32": 0, "int8": 1, "fp16": 2}  # Gst-nvinfer network-mode


# --------------------------------------------------------------------------------------- DeepStream


def deepstream_config(manifest: dict[str, Any]) -> str:
    """A Gst-nvinfer ``[property]`` group running the bundle's model as a primary classifier.

    Gst-nvinfer feeds ``net-scale-factor · (x − offsets[c])`` with x in [0, 255]. A model taking images in
    [0, 1] needs 1/255 and zero offsets; one taking ``(x/255 − mean) / std`` needs offsets 255·mean and
    1/(255·std), which is exact only when std is the same for every channel (the config says so otherwise).
    """
    spec = manifest["input"]
    channels = int(spec["shape"][0])
    notes = []
    if spec["convention"] == "normalised":
        std = [float(s) for s in spec["std"]]
        offsets = [255.0 * float(m) for m in spec["mean"]]
        scale = 1.0 / (255.0 * (sum(std) / len(std)))
        if max(std) - min(std) > 1e-6:
            notes.append(f"# std differs per channel {std}: net-scale-factor uses their mean ({sum(std) / len(std):.6g}),"
                         " an approximation; Gst-nvinfer has one scale for all channels.")
    else:
        offsets = [0.0] * channels
        scale = 1.0 / 255.0
    color = {1: 2, 3: 0}.get(channels, 0)  # 0 RGB, 1 BGR, 2 GRAY
    lines = [
        "# Gst-nvinfer config for the nayer-edge bundle model (a classifier). Paths are relative to this file.",
        "# Build model.engine first (python3 scripts/build_engine.py); nvinfer would otherwise build its own",
        "# from model.onnx with its own settings.",
        *notes,
        "[property]",
        "gpu-id=0",
        f"onnx-file={manifest['model']['file']}",
        f"model-engine-file={manifest['engine']['file']}",
        "labelfile-path=labels_deepstream.txt",
        f"batch-size={manifest['engine']['max_batch']}",
        f"network-mode={_NETWORK_MODE[manifest['model']['precision']]}",
        "network-type=1",
        "process-mode=1",
        f"num-detected-classes={len(manifest['classes'])}",
        f"model-color-format={color}",
        f"net-scale-factor={scale:.10g}",
        f"offsets={';'.join(f'{o:.6g}' for o in offsets)}",
        f"infer-dims={';'.join(str(int(d)) for d in spec['shape'])}",
        "network-input-order=0",
        "maintain-aspect-ratio=0",
        "classifier-threshold=0.0",
        "gie-unique-id=1",
    ]
    if manifest["target"].get("dla_cores"):
        lines += ["# enable-dla=1", "# use-dla-core=0"]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------- README


# Long by its text, not its logic: one template, in the order the person at the device reads it.
def render_readme(manifest: dict[str, Any], build_engine: ModuleType, bundle_name: str) -> str:
    """The bundle's README for the person at the device: what ran where, and the exact commands."""
    target = manifest["target"]
    precision = manifest["model"]["precision"]
    trt_version = target.get("tensorrt") or "10.3"
    engine = manifest["engine"]
    dynamic = not isinstance(manifest["model"]["inputs"][0]["shape"][0], int)
    profile = build_engine.BatchProfile(engine["min_batch"], engine["opt_batch"], engine["max_batch"]) \
        if dynamic else None
    input_name = manifest["model"]["inputs"][0]["name"]
    chw = manifest["input"]["shape"]
    trtexec = build_engine.trtexec_command(trt_version, precision, input_name=input_name, chw=chw, profile=profile)
    dla_lines = ""
    if target.get("dla_cores") and precision != "fp32":
        dla = build_engine.trtexec_command(trt_version, precision, input_name=input_name, chw=chw, profile=profile,
                                           dla_core=0, engine="model.dla0.engine")
        dla_lines = (
            "\nThis module has {n} DLA core(s). To build for DLA core 0 (GPU fallback for what DLA cannot run):\n\n"
            "```bash\npython3 scripts/build_engine.py --dla-core 0 --engine model.dla0.engine\n"
            "python3 scripts/check.py --backend tensorrt --engine model.dla0.engine\n"
            "/usr/src/tensorrt/bin/{dla}\n```\n").format(n=target["dla_cores"], dla=dla)
    reference = manifest["reference"]
    labelled = manifest.get("labelled")
    thresholds = manifest["parity"]["tensorrt"]
    accuracy = manifest["accuracy"]
    return f"""# {bundle_name}: {len(manifest['classes'])}-class classifier for {target['name']}

Made by nayer-edge {manifest['versions']['nayer_edge']} for **{target['name']}** (JetPack {target.get('jetpack')},
TensorRT {target.get('tensorrt')}, {target.get('gpu_arch')}). Precision **{precision}**; input
`{input_name}` N×{'×'.join(str(d) for d in chw)} ({manifest['input']['convention']}: images in [0, 1]
{'then (x − mean) / std' if manifest['input']['convention'] == 'normalised' else 'as they are; normalisation is inside the model'}).

**The TensorRT check runs on the device, and has not run yet.** What ran on the host is the onnxruntime
check (CPU): the reference outputs in `{reference['file']}` were produced by {reference['runtime']} on
`{manifest['model']['file']}`, and `nayer-edge verify BUNDLE` (or `python3 scripts/check.py --backend
onnxruntime`) re-runs the same checks there. Only the commands below prove the engine on this device.

## On the device

Needs what JetPack ships (python3, numpy, TensorRT's Python module) plus `cuda-python` or `pycuda` for the
check's device memory (`pip3 install cuda-python`). Pillow only for `--labelled`.

```bash
tar xzf {bundle_name}.tar.gz && cd {bundle_name}
sudo nvpmodel -q                   # the power mode; pick one with sudo nvpmodel -m N (see your module's table)
sudo jetson_clocks                 # lock clocks, or latency varies run to run
python3 scripts/build_engine.py    # model.onnx -> model.engine + model.engine.json (timing cache: timing.cache)
python3 scripts/check.py --backend tensorrt
python3 scripts/check.py --backend tensorrt --labelled /path/to/images --json > check.json
```

`check.py` verifies every file's sha256 against `manifest.json` first, refuses an engine built for another
TensorRT version or GPU, then gates: parity on {reference['samples']} reference samples (cosine ≥
{thresholds['min_cosine']}, top-1 agreement ≥ {thresholds['min_top1_agreement']}){_accuracy_sentence(labelled, accuracy)}{_release_sentence(labelled, manifest.get('release'))}
and, with `--max-latency-ms MS`{' (or the target budget ' + str(manifest['latency']['max_ms']) + ' ms)' if manifest['latency']['max_ms'] else ''},
p50 latency at batch {manifest['latency']['batch']}. Exit code 0: every gate passed; 1: a gate failed (named);
2: bad input; 3: the runtime failed (TensorRT or onnxruntime raised, out of memory, Ctrl-C). It warns when clocks
are not locked. `build_engine.py` exits 0 when built, 2 on bad input, 3 when the build failed.

The same engine with trtexec (TensorRT {trt_version}):

```bash
/usr/src/tensorrt/bin/{trtexec}
```
{dla_lines}
## Files

- `model.onnx`: the model ({manifest['model']['quantization'] if precision == 'int8' else precision}); `manifest.json`: hashes and settings
- `labels.txt` (one class per line), `labels_deepstream.txt` (';'-separated, as Gst-nvinfer classifiers read it)
- `reference.npz`: `inputs`, `logits`; {'`labelled.npz`: `images` (uint8 N×C×H×W), `labels`' if labelled else 'no labelled subset (no eval data was given)'}
- `deepstream_nvinfer.txt`: Gst-nvinfer `[property]` config (classifier, network-mode for {precision})
- `scripts/`: `build_engine.py`, `check.py` and their helpers (no torch needed)
"""


def _release_sentence(labelled: dict[str, Any] | None, release: dict[str, Any] | None) -> str:
    if not release:
        return ""
    text = ", the gates against the teacher as they stood when the bundle was made (all must have passed)"
    if labelled and release.get("teacher_top1") and release.get("min_teacher_retention"):
        text += (f", top-1 on the labelled samples ≥ {release['min_teacher_retention']:.0%} of the teacher's "
                 f"{release['teacher_top1']:.2%}")
    return text


def _accuracy_sentence(labelled: dict[str, Any] | None, accuracy: dict[str, Any]) -> str:
    if not labelled:
        return ""
    return (f", top-1 on the {labelled['samples']} labelled samples ≥ {labelled['top1']:.2%} − "
            f"{accuracy['max_drop_points']:g} points")
