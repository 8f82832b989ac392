"""Bounded memory of synthetic samples: a uint8 ring buffer in RAM, in a memory-mapped file, or on a GPU.

The reference implementation writes every synthetic batch as PNGs to an ever-growing folder; here the
memory holds at most ``capacity`` samples (the oldest are overwritten) and is saved with the run so later
stages (quantization-aware fine-tuning) train on the same samples.
"""

from __future__ import annotations

from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch

from ..core.atomic import atomic_write
from ..core.errors import UserError, first_line


class SampleMemory:
    """Ring buffer of images (stored as uint8, like the reference's PNGs) with their target labels."""

    def __init__(self, capacity: int, image_shape: tuple[int, int, int], mmap_path: str | Path | None = None,
                 device: torch.device | str = "cpu"):
        if capacity <= 0:
            raise ValueError("memory capacity must be positive")
        self.capacity = capacity
        self.image_shape = tuple(image_shape)
        self.mmap_path = Path(mmap_path) if mmap_path is not None else None
        self.device = torch.device(device)
        if self.device.type == "cuda" and self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        if self.mmap_path is not None and self.device.type != "cpu":
            raise ValueError("a memory-mapped sample memory lives on the host")
        shape = (capacity, *self.image_shape)
        if self.mmap_path is None:
            self._images = torch.zeros(shape, dtype=torch.uint8, device=self.device)
        else:
            self.mmap_path.parent.mkdir(parents=True, exist_ok=True)
            self._images = torch.from_numpy(
                np.lib.format.open_memmap(self.mmap_path, mode="w+", dtype=np.uint8, shape=shape))
        self._labels = torch.zeros(capacity, dtype=torch.int64, device=self.device)
        self.size = 0
        self.next_index = 0
        self.total_added = 0

    def __len__(self) -> int:
        return self.size

    @property
    def nbytes(self) -> int:
        return self._images.nbytes + self._labels.nbytes

    def to(self, device: torch.device | str) -> "SampleMemory":
        """This memory with its storage on ``device``: itself when already there, else a copy (in RAM on the host)."""
        device = torch.device(device)
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        if device == self.device:
            return self
        moved = SampleMemory(self.capacity, self.image_shape, device=device)
        moved._images.copy_(self._images)
        moved._labels.copy_(self._labels)
        moved.size, moved.next_index, moved.total_added = self.size, self.next_index, self.total_added
        return moved

    @staticmethod
    def bytes_needed(capacity: int, image_shape: tuple[int, ...]) -> int:
        return capacity * (int(np.prod(image_shape)) + 8)

    def add(self, images01: torch.Tensor, labels: torch.Tensor) -> None:
        """Store a batch of images in [0, 1] (N×C×H×W) with their labels, overwriting the oldest."""
        images = (images01.detach().clamp(0, 1) * 255).round().to(torch.uint8).to(self.device)
        labels = labels.detach().to(self.device, torch.int64)
        n = added = images.shape[0]
        if n > self.capacity:
            images, labels, n = images[-self.capacity:], labels[-self.capacity:], self.capacity
        first = min(n, self.capacity - self.next_index)
        self._images[self.next_index:self.next_index + first] = images[:first]
        self._labels[self.next_index:self.next_index + first] = labels[:first]
        if first < n:
            self._images[: n - first] = images[first:]
            self._labels[: n - first] = labels[first:]
        self.next_index = (self.next_index + n) % self.capacity
        self.size = min(self.capacity, self.size + n)
        self.total_added += added

    def get(self, indices: torch.Tensor | np.ndarray, device: torch.device | str = "cpu"
            ) -> tuple[torch.Tensor, torch.Tensor]:
        """Images in [0, 1] (float32) and labels of ``indices``, on ``device``. From host memory to a GPU the
        uint8 pixels travel (a quarter of the float bytes) from pinned memory without blocking the host."""
        device = torch.device(device)
        idx = torch.as_tensor(np.asarray(indices), dtype=torch.int64)
        if self.device.type != "cpu":
            idx = idx.to(self.device, non_blocking=True)
        pixels, labels = self._images[idx], self._labels[idx]
        if device.type == "cuda" and self.device.type == "cpu":
            pixels, labels = pixels.pin_memory(), labels.pin_memory()
        # Only copies towards a GPU may run ahead of the host; one to the host must be complete when it returns.
        ahead = device.type == "cuda"
        return pixels.to(device, non_blocking=ahead).float().div_(255), labels.to(device, non_blocking=ahead)

    def sample(self, batch_size: int, generator: torch.Generator | None = None, device: torch.device | str = "cpu"
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """A random batch (with replacement across calls, without within one batch when possible)."""
        return self.get(self.sample_indices(batch_size, generator), device)

    def sample_indices(self, batch_size: int, generator: torch.Generator | None = None) -> np.ndarray:
        """The indices :meth:`sample` would read: ranks that share ``generator``'s state draw the same batch
        and each reads only its own share of it."""
        if self.size == 0:
            raise RuntimeError("the sample memory is empty")
        if batch_size >= self.size:
            indices = torch.randperm(self.size, generator=generator)
        else:
            indices = torch.randint(0, self.size, (batch_size,), generator=generator)
        return indices.numpy()

    def all(self, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        return self.get(np.arange(self.size), device)

    def slots(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The filled slots as they lie (uint8 pixels, labels), on the host. A full ring on the host is returned
        without a copy (for a memory-mapped one, a view of the file); a partly filled one is copied, since
        ``torch.save`` of a slice would write the whole storage."""
        pixels, labels = self._images[: self.size], self._labels[: self.size]
        if self.size < self.capacity and self.device.type == "cpu":
            pixels, labels = pixels.clone(), labels.clone()
        return pixels.cpu(), labels.cpu()

    def restore_slots(self, pixels: torch.Tensor, labels: torch.Tensor, next_index: int, total_added: int) -> None:
        """Put back what :meth:`slots` returned, slot for slot, into this memory's own storage (RAM, file or
        device), with the ring's write position."""
        size = len(pixels)
        if size > self.capacity or tuple(pixels.shape[1:]) != self.image_shape or not 0 <= next_index < self.capacity:
            raise ValueError(f"slots of shape {tuple(pixels.shape)} (next write at {next_index}) do not fit a memory "
                             f"of {self.capacity} × {self.image_shape}")
        self._images[:size] = pixels.to(self.device, torch.uint8)
        self._labels[:size] = labels.to(self.device, torch.int64)
        self.size, self.next_index, self.total_added = size, next_index, total_added

    def save(self, path: str | Path) -> None:
        """Write the filled part as an .npz (images uint8 N×C×H×W, labels), atomically."""
        images, labels = self._ordered(self._images), self._ordered(self._labels)
        atomic_write(path, lambda handle: np.savez(handle, images=images, labels=labels,
                                                   capacity=np.int64(self.capacity),
                                                   total_added=np.int64(self.total_added)))

    def _ordered(self, tensor: torch.Tensor) -> np.ndarray:
        """Oldest first, so that reloading and adding continues the ring in the same order."""
        if self.size < self.capacity:
            return tensor[: self.size].cpu().numpy()
        return torch.cat([tensor[self.next_index:], tensor[: self.next_index]]).cpu().numpy()

    @classmethod
    def load(cls, path: str | Path | BinaryIO, capacity: int | None = None, mmap_path: str | Path | None = None,
             device: torch.device | str = "cpu") -> "SampleMemory":
        """A memory saved by :meth:`save`, from a path or an open binary file; anything else (a damaged or
        foreign file) raises UserError naming the file."""
        images, labels, saved_capacity, total_added = _read_memory_file(path)
        memory = cls(capacity or saved_capacity, tuple(images.shape[1:]), mmap_path, device)
        keep = min(len(images), memory.capacity)
        memory._images[:keep] = torch.from_numpy(images[len(images) - keep:]).to(memory.device)
        memory._labels[:keep] = torch.from_numpy(labels[len(labels) - keep:].astype(np.int64)).to(memory.device)
        memory.size = keep
        memory.next_index = keep % memory.capacity
        memory.total_added = total_added
        return memory


def _read_memory_file(path: str | Path | BinaryIO) -> tuple[np.ndarray, np.ndarray, int, int]:
    name = str(path) if isinstance(path, (str, Path)) else str(getattr(path, "name", "the sample memory"))

    def refuse(problem: str) -> UserError:
        return UserError(f"{name}: not a sample memory written by nayer-edge ({problem}); "
                         "re-run distill to write it again")

    try:
        with np.load(path, allow_pickle=False) as data:
            if not hasattr(data, "files"):
                raise refuse("a single array, not an .npz archive")
            missing = [k for k in ("images", "labels", "capacity", "total_added") if k not in data.files]
            if missing:
                raise refuse(f"no {', '.join(missing)}")
            images, labels = data["images"], data["labels"]
            capacity, total_added = data["capacity"], data["total_added"]
    except UserError:
        raise
    except OSError as err:
        raise UserError(f"{name}: cannot read ({err.strerror or err}); re-run distill to write it again") from None
    except Exception as err:  # noqa: BLE001 - zip, pickle and format errors of a damaged file
        if "pickle" in str(err) or "Object arrays" in str(err):
            raise refuse("it holds pickled Python objects, which are never loaded") from None
        raise refuse(f"{type(err).__name__}: {first_line(err, 'unreadable')}") from None
    if images.dtype != np.uint8 or images.ndim != 4 or 0 in images.shape[1:]:
        raise refuse(f"images must be uint8 N×C×H×W, got {images.dtype} {images.shape}")
    if labels.ndim != 1 or labels.dtype.kind not in "iu" or len(labels) != len(images):
        raise refuse(f"labels must be {len(images)} integers, got {labels.dtype} {labels.shape}")
    if len(labels) and (labels.min() < 0 or labels.max() > np.iinfo(np.int64).max):
        raise refuse("labels out of range")
    if capacity.shape != () or capacity.dtype.kind not in "iu" or total_added.shape != () \
            or total_added.dtype.kind not in "iu":
        raise refuse("capacity and total_added must be integers")
    if not 1 <= int(capacity) <= 2**31 or int(total_added) < 0:
        raise refuse(f"capacity {int(capacity)}, total_added {int(total_added)}")
    return images, labels, int(capacity), int(total_added)
