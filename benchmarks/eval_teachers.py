"""Build evaluation teachers trained on real images that ship offline (no model zoo, no downloads).

Command::

    .venv/bin/python benchmarks/eval_teachers.py --out runs/teachers [--only NAME ...] [--seed 0]

Teachers (one folder each under ``--out``):

* ``photo32``       3×32×32, 10 photo classes, residual CNN with BatchNorm
* ``photo64``       3×64×64, the same 10 classes, VGG-style CNN with BatchNorm and a strided stem
* ``digits28``      1×28×28, sklearn ``load_digits`` upsampled bilinearly, VGG-style CNN with BatchNorm
* ``photo32_nobn``  3×32×32, the photo classes, plain conv-ReLU CNN without any normalisation layer

Photo classes: one class is one photo from ``skimage.data`` or ``sklearn.datasets.load_sample_images``.
Every photo is split by columns: the left 70 % gives training crops, the right 30 % gives the
held-out crops, so no held-out pixel was ever seen in training. Crop sides are drawn from the same
pixel range in both regions (25–60 % of the held-out region's shorter side), resized with
antialiasing; training crops are generated on the fly with flips and brightness/contrast jitter,
and near-constant crops are rejected.

Each folder holds ``teacher.pt`` (TorchScript, eval mode, takes ``(x - mean) / std``),
``teacher.pt.json`` (classes, input_shape, mean, std), ``classes.txt``, ``heldout.npz``
(``nayer_edge.inputs.evaldata.save_npz``) and ``info.json``. After saving, the script reloads
``teacher.pt`` and ``heldout.npz`` through ``nayer_edge.inputs.evaldata.load_eval_data`` and checks that the
held-out top-1 is reproduced.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from nayer_edge.inputs.evaldata import load_eval_data, save_npz  # noqa: E402 - after the repository is put on sys.path

TRAIN_FRACTION = 0.70  # left part of every photo's columns; the rest is held out
CROP_FRACTION = (0.25, 0.60)  # crop side, as a fraction of the held-out region's shorter side
MIN_CROP_STD = 0.04  # reject near-constant crops (std over all channels, values in [0, 1])
HELDOUT_PER_CLASS = 80
DIGIT_NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


# ----------------------------------------------------------------------------------------- photos


@dataclass(frozen=True)
class Photo:
    """One class: a photo as float 3×H×W in [0, 1] and its train / held-out column ranges."""

    name: str
    source: str
    image: Tensor
    train_cols: tuple[int, int]
    heldout_cols: tuple[int, int]

    @property
    def height(self) -> int:
        return int(self.image.shape[1])

    def region(self, split: str) -> Tensor:
        c0, c1 = self.train_cols if split == "train" else self.heldout_cols
        return self.image[:, :, c0:c1]

    def crop_range(self) -> tuple[int, int]:
        """Crop side range in pixels, shared by both splits so they see the same scales."""
        short = min(self.height, self.heldout_cols[1] - self.heldout_cols[0])
        return max(8, round(CROP_FRACTION[0] * short)), round(CROP_FRACTION[1] * short)

    def describe(self) -> dict[str, object]:
        lo, hi = self.crop_range()
        return {
            "class": self.name, "source": self.source, "height": self.height, "width": int(self.image.shape[2]),
            "train_region": {"rows": [0, self.height], "cols": list(self.train_cols)},
            "heldout_region": {"rows": [0, self.height], "cols": list(self.heldout_cols)},
            "crop_side_px": [lo, hi],
        }


def _skimage(name: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        import skimage.data

        return getattr(skimage.data, name)()
    return load


def _sklearn_sample(filename: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        from sklearn.datasets import load_sample_images

        bunch = load_sample_images()
        index = [Path(f).name for f in bunch.filenames].index(filename)
        return bunch.images[index]
    return load


# class name, source description, loader (all bundled with the installed packages)
PHOTO_SOURCES: list[tuple[str, str, Callable[[], np.ndarray]]] = [
    ("astronaut", "skimage.data.astronaut", _skimage("astronaut")),
    ("coffee cup", "skimage.data.coffee", _skimage("coffee")),
    ("cat", "skimage.data.chelsea", _skimage("chelsea")),
    ("rocket", "skimage.data.rocket", _skimage("rocket")),
    ("galaxy", "skimage.data.hubble_deep_field", _skimage("hubble_deep_field")),
    ("stained tissue", "skimage.data.immunohistochemistry", _skimage("immunohistochemistry")),
    ("temple", "sklearn load_sample_images china.jpg", _sklearn_sample("china.jpg")),
    ("flower", "sklearn load_sample_images flower.jpg", _sklearn_sample("flower.jpg")),
    ("coins", "skimage.data.coins (grayscale)", _skimage("coins")),
    ("brick wall", "skimage.data.brick (grayscale)", _skimage("brick")),
]


def _to_rgb_tensor(array: np.ndarray) -> Tensor:
    image = torch.from_numpy(np.array(array, dtype=np.float32)) / 255.0
    if image.ndim == 2:
        image = image.unsqueeze(-1).expand(-1, -1, 3)
    return image[..., :3].permute(2, 0, 1).contiguous()


def load_photos() -> list[Photo]:
    photos = []
    for name, source, loader in PHOTO_SOURCES:
        image = _to_rgb_tensor(loader())
        width = int(image.shape[2])
        split = int(round(TRAIN_FRACTION * width))
        photos.append(Photo(name, source, image, (0, split), (split, width)))
    return photos


def _random_crop(region: Tensor, lo: int, hi: int, size: int, rng: torch.Generator) -> Tensor:
    """A square crop of random side in [lo, hi] lying inside ``region``, resized to size×size."""
    _, h, w = region.shape
    hi = min(hi, h, w)
    for _ in range(50):
        side = int(torch.randint(lo, hi + 1, (1,), generator=rng))
        top = int(torch.randint(0, h - side + 1, (1,), generator=rng))
        left = int(torch.randint(0, w - side + 1, (1,), generator=rng))
        crop = region[:, top:top + side, left:left + side]
        if float(crop[:, ::2, ::2].std()) >= MIN_CROP_STD:
            break
    return F.interpolate(crop.unsqueeze(0), size=(size, size), mode="bilinear", align_corners=False,
                         antialias=True)[0]


def _jitter(x: Tensor, rng: torch.Generator) -> Tensor:
    """Random horizontal flip and mild brightness / contrast jitter of one C×H×W image."""
    if float(torch.rand((), generator=rng)) < 0.5:
        x = x.flip(-1)
    brightness = 0.8 + 0.4 * float(torch.rand((), generator=rng))
    contrast = 0.8 + 0.4 * float(torch.rand((), generator=rng))
    mean = x.mean()
    return ((x - mean) * contrast + mean * brightness).clamp(0, 1)


def photo_batch(photos: Sequence[Photo], size: int, batch: int, rng: torch.Generator,
                split: str = "train", augment: bool = True) -> tuple[Tensor, Tensor]:
    """A class-balanced batch of crops (labels cycle over the classes)."""
    labels = torch.arange(batch) % len(photos)
    images = []
    for label in labels.tolist():
        photo = photos[label]
        crop = _random_crop(photo.region(split), *photo.crop_range(), size, rng)
        images.append(_jitter(crop, rng) if augment else crop)
    return torch.stack(images), labels


def _quantise(x: Tensor) -> Tensor:
    """Round to uint8 levels, as ``save_npz`` stores them, so the reported top-1 is the stored one."""
    return (x.clamp(0, 1) * 255).round() / 255


# ------------------------------------------------------------------------------------ architectures


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Sequential()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNetSmall(nn.Module):
    """Stem conv-BN-ReLU, one basic block per stage (stride 1, 2, 2, ...), global average pool, linear."""

    def __init__(self, in_channels: int, num_classes: int, widths: Sequence[int]) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False),
                                  nn.BatchNorm2d(widths[0]), nn.ReLU(inplace=True))
        blocks, c_in = [], widths[0]
        for i, width in enumerate(widths):
            blocks.append(BasicBlock(c_in, width, 1 if i == 0 else 2))
            c_in = width
        self.stages = nn.Sequential(*blocks)
        self.fc = nn.Linear(c_in, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stages(self.stem(x))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def _conv(c_in: int, c_out: int, bn: bool, stride: int = 1) -> list[nn.Module]:
    layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, 3, stride, 1, bias=not bn)]
    if bn:
        layers.append(nn.BatchNorm2d(c_out))
    layers.append(nn.ReLU(inplace=True))
    return layers


class VGGSmall(nn.Module):
    """VGG-style: per stage ``convs`` × conv(-BN)-ReLU then 2×2 max pool; head avg-pool+linear or flatten+linear."""

    def __init__(self, in_channels: int, num_classes: int, widths: Sequence[int], convs: int, bn: bool,
                 stem_stride: int = 1, flatten_side: int | None = None) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = in_channels
        for i, width in enumerate(widths):
            for j in range(convs):
                layers += _conv(c_in, width, bn, stem_stride if i == 0 and j == 0 else 1)
                c_in = width
            layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1) if flatten_side is None else nn.Identity()
        self.fc = nn.Linear(c_in * (flatten_side or 1) ** 2, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


def _init(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=0.01)
            nn.init.zeros_(m.bias)


# ------------------------------------------------------------------------------------------ teachers


@dataclass(frozen=True)
class TeacherSpec:
    name: str
    kind: str  # "photo" or "digits"
    input_shape: tuple[int, int, int]
    build: Callable[[int, int], nn.Module]  # (in_channels, num_classes) -> model
    arch: str
    steps: int
    batch: int
    lr: float
    optimizer: str  # "sgd" or "adam"


TEACHERS: dict[str, TeacherSpec] = {spec.name: spec for spec in [
    TeacherSpec("photo32", "photo", (3, 32, 32), lambda c, k: ResNetSmall(c, k, (32, 64, 128)),
                "ResNet: stem conv3x3(32)-BN-ReLU, 3 stages x 1 BasicBlock, widths 32-64-128, strides 1-2-2, "
                "global avg pool, linear", steps=250, batch=64, lr=0.05, optimizer="sgd"),
    TeacherSpec("photo64", "photo", (3, 64, 64),
                lambda c, k: VGGSmall(c, k, (32, 64, 128, 128), convs=1, bn=True, stem_stride=2),
                "VGG-style: 4 stages of conv3x3-BN-ReLU + maxpool2, widths 32-64-128-128, first conv stride 2, "
                "global avg pool, linear", steps=140, batch=64, lr=0.05, optimizer="sgd"),
    TeacherSpec("digits28", "digits", (1, 28, 28),
                lambda c, k: VGGSmall(c, k, (32, 64), convs=2, bn=True, flatten_side=7),
                "VGG-style: [conv3x3(32)-BN-ReLU x2, maxpool2], [conv3x3(64)-BN-ReLU x2, maxpool2], flatten "
                "64x7x7, linear", steps=400, batch=64, lr=0.05, optimizer="sgd"),
    TeacherSpec("photo32_nobn", "photo", (3, 32, 32),
                lambda c, k: VGGSmall(c, k, (32, 64, 128), convs=2, bn=False),
                "plain CNN, no normalisation: 3 stages of [conv3x3-ReLU x2, maxpool2], widths 32-64-128, "
                "global avg pool, linear", steps=400, batch=64, lr=2e-3, optimizer="adam"),
]}


def cosine_lr(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def accuracy(model: nn.Module, x: Tensor, y: Tensor, batch: int = 256) -> float:
    model.eval()
    with torch.no_grad():
        hits = sum(int((model(x[i:i + batch]).argmax(1) == y[i:i + batch]).sum()) for i in range(0, len(x), batch))
    return hits / len(x)


def normalise(x: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    return (x - torch.tensor(mean).view(1, -1, 1, 1)) / torch.tensor(std).view(1, -1, 1, 1)


@dataclass
class Task:
    """What a teacher trains on: a batch sampler, held-out data, class names and region notes."""

    classes: list[str]
    sample: Callable[[torch.Generator], tuple[Tensor, Tensor]]
    x_heldout: Tensor
    y_heldout: Tensor
    mean: list[float]
    std: list[float]
    train_size: str
    regions: object


def _channel_stats(x: Tensor) -> tuple[list[float], list[float]]:
    return x.mean(dim=(0, 2, 3)).tolist(), x.std(dim=(0, 2, 3)).tolist()


def photo_task(spec: TeacherSpec, photos: list[Photo], seed: int) -> Task:
    size = spec.input_shape[1]
    held_rng = torch.Generator().manual_seed(seed + 1_000)
    x_held, y_held = photo_batch(photos, size, HELDOUT_PER_CLASS * len(photos), held_rng, split="heldout",
                                 augment=False)
    stats_rng = torch.Generator().manual_seed(seed + 2_000)
    x_stats, _ = photo_batch(photos, size, 2_000, stats_rng, split="train", augment=False)
    mean, std = _channel_stats(x_stats)

    def sample(rng: torch.Generator) -> tuple[Tensor, Tensor]:
        return photo_batch(photos, size, spec.batch, rng, split="train", augment=True)

    return Task([p.name for p in photos], sample, _quantise(x_held), y_held, mean, std,
                "random crops of the training regions, generated on the fly", [p.describe() for p in photos])


def digits_task(spec: TeacherSpec, seed: int) -> Task:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = torch.from_numpy(digits.images).float().unsqueeze(1) / 16.0
    x = F.interpolate(x, size=spec.input_shape[1:], mode="bilinear", align_corners=False).clamp(0, 1)
    x = _quantise(x)
    y = torch.from_numpy(digits.target).long()
    idx_train, idx_held = train_test_split(np.arange(len(y)), test_size=0.25, stratify=digits.target,
                                           random_state=seed)
    x_train, y_train = x[idx_train], y[idx_train]
    mean, std = _channel_stats(x_train)

    def sample(rng: torch.Generator) -> tuple[Tensor, Tensor]:
        idx = torch.randint(0, len(x_train), (spec.batch,), generator=rng)
        padded = F.pad(x_train[idx], (2, 2, 2, 2))
        dy, dx = (int(v) for v in torch.randint(0, 5, (2,), generator=rng))
        return padded[:, :, dy:dy + 28, dx:dx + 28], y_train[idx]

    regions = {"source": "sklearn.datasets.load_digits (8x8, /16, bilinear to 28x28)",
               "split": f"train_test_split(test_size=0.25, stratify=y, random_state={seed})",
               "train_indices_count": len(idx_train), "heldout_indices_count": len(idx_held)}
    return Task(list(DIGIT_NAMES), sample, x[idx_held], y[idx_held], mean, std,
                f"{len(idx_train)} images (random shifts of up to 2 px)", regions)


def train(spec: TeacherSpec, task: Task, seed: int, steps: int) -> tuple[nn.Module, float]:
    torch.manual_seed(seed)
    rng = torch.Generator().manual_seed(seed + 3_000)
    model = spec.build(spec.input_shape[0], len(task.classes))
    _init(model)
    if spec.optimizer == "sgd":
        optimizer: torch.optim.Optimizer = torch.optim.SGD(model.parameters(), lr=spec.lr, momentum=0.9,
                                                           nesterov=True, weight_decay=5e-4)
    else:
        optimizer = torch.optim.Adam(model.parameters(), lr=spec.lr, weight_decay=0.0)
    warmup = max(1, steps // 20)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: cosine_lr(s, steps, warmup))
    x_held = normalise(task.x_heldout, task.mean, task.std)
    start = time.perf_counter()
    for step in range(steps):
        model.train()
        x, y = task.sample(rng)
        loss = F.cross_entropy(model(normalise(x, task.mean, task.std)), y, label_smoothing=0.1)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        if (step + 1) % max(1, steps // 4) == 0 or step + 1 == steps:
            acc = accuracy(model, x_held, task.y_heldout)
            print(f"  [{spec.name}] step {step + 1}/{steps} loss {loss.item():.3f} held-out top-1 {acc:.3f} "
                  f"({time.perf_counter() - start:.0f}s)", flush=True)
    return model.eval(), time.perf_counter() - start


# --------------------------------------------------------------------------------------------- output


def count_bn(model: nn.Module) -> int:
    return sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def count_norm(model: nn.Module) -> int:
    kinds = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm, nn.modules.instancenorm._InstanceNorm)
    return sum(isinstance(m, kinds) for m in model.modules())


def save_teacher(folder: Path, spec: TeacherSpec, task: Task, model: nn.Module, seconds: float, seed: int,
                 steps: int) -> float:
    folder.mkdir(parents=True, exist_ok=True)
    top1 = accuracy(model, normalise(task.x_heldout, task.mean, task.std), task.y_heldout)
    scripted = torch.jit.script(model.eval())
    buffer = io.BytesIO()
    torch.jit.save(scripted, buffer)
    (folder / "teacher.pt").write_bytes(buffer.getvalue())
    meta = {"classes": task.classes, "input_shape": list(spec.input_shape), "mean": task.mean, "std": task.std}
    (folder / "teacher.pt.json").write_text(json.dumps(meta, indent=2) + "\n")
    (folder / "classes.txt").write_text("\n".join(task.classes) + "\n")
    save_npz(folder / "heldout.npz", task.x_heldout, task.y_heldout)
    info = {
        "name": spec.name, "architecture": spec.arch, "input_shape": list(spec.input_shape),
        "params": sum(p.numel() for p in model.parameters()), "batchnorm_layers": count_bn(model),
        "normalisation_layers": count_norm(model), "train_size": task.train_size,
        "train_steps": steps, "batch_size": spec.batch, "train_samples_seen": steps * spec.batch,
        "heldout_size": len(task.y_heldout), "heldout_top1": top1, "train_seconds": round(seconds, 1),
        "seed": seed, "optimizer": f"{spec.optimizer} lr {spec.lr} cosine, label smoothing 0.1",
        "mean": task.mean, "std": task.std, "classes": task.classes, "regions": task.regions,
    }
    if spec.kind == "photo":
        info["split_rule"] = (f"per photo: columns [0, {TRAIN_FRACTION:.0%} of width) train, the rest held out; "
                              f"square crops of side {CROP_FRACTION[0]:.0%}-{CROP_FRACTION[1]:.0%} of the held-out "
                              f"region's shorter side, inside their region, std >= {MIN_CROP_STD}, "
                              f"resized with antialias; {HELDOUT_PER_CLASS} held-out crops per class")
    (folder / "info.json").write_text(json.dumps(info, indent=2) + "\n")
    return top1


def verify(folder: Path, expected: float) -> float:
    """Reload the TorchScript teacher and held-out set as the project would; check the top-1 matches."""
    meta = json.loads((folder / "teacher.pt.json").read_text())
    model = torch.jit.load(str(folder / "teacher.pt"))
    x, y = load_eval_data(folder / "heldout.npz", input_shape=meta["input_shape"], classes=meta["classes"])
    top1 = accuracy(model, normalise(x, meta["mean"], meta["std"]), y)
    assert abs(top1 - expected) <= 1.0 / len(y), f"{folder}: reloaded top-1 {top1} != {expected}"
    odd = model(torch.zeros(3, *meta["input_shape"]))
    assert tuple(odd.shape) == (3, len(meta["classes"])), odd.shape
    return top1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/teachers"))
    parser.add_argument("--only", nargs="+", choices=sorted(TEACHERS), default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps-scale", type=float, default=1.0, help="Scale training steps (quick checks).")
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    names = args.only or list(TEACHERS)
    photos = load_photos() if any(TEACHERS[n].kind == "photo" for n in names) else []
    summary = {}
    for name in names:
        spec = TEACHERS[name]
        task = photo_task(spec, photos, args.seed) if spec.kind == "photo" else digits_task(spec, args.seed)
        steps = max(1, round(spec.steps * args.steps_scale))
        print(f"{name}: {spec.arch}", flush=True)
        model, seconds = train(spec, task, args.seed, steps)
        top1 = save_teacher(args.out / name, spec, task, model, seconds, args.seed, steps)
        reloaded = verify(args.out / name, top1)
        summary[name] = top1
        print(f"{name}: held-out top-1 {top1:.4f} (reloaded {reloaded:.4f}), {len(task.y_heldout)} held-out, "
              f"{seconds:.0f}s -> {args.out / name}", flush=True)
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
