"""SampleMemory: a bounded uint8 ring buffer (RAM or memmap) of synthetic images and their labels."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from nayer_edge.synthesis.memory import SampleMemory

SHAPE = (1, 2, 3)


def labelled_batch(first: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Samples first..first+n-1: the label is the sample's index and every pixel encodes it as (i % 256)/255,
    which uint8 storage keeps exactly, so image ↔ label alignment can be checked after any reordering."""
    labels = torch.arange(first, first + n)
    images = ((labels % 256).float() / 255).view(n, 1, 1, 1).expand(n, *SHAPE).contiguous()
    return images, labels


def fill(memory: SampleMemory, total: int, batch: int, start: int = 0) -> None:
    for first in range(start, start + total, batch):
        memory.add(*labelled_batch(first, min(batch, start + total - first)))


def assert_aligned(images: torch.Tensor, labels: torch.Tensor) -> None:
    expected = ((labels % 256).float() / 255).view(-1, 1, 1, 1).expand_as(images)
    torch.testing.assert_close(images, expected, rtol=0, atol=1e-7)


def ring_expected(total: int, capacity: int) -> list[int]:
    """Slot j of the ring holds the newest sample k < total with k ≡ j (mod capacity)."""
    return [max(k for k in range(total) if k % capacity == j) for j in range(min(total, capacity))]


def oldest_first(memory: SampleMemory, tmp_path) -> np.ndarray:
    path = tmp_path / "probe.npz"
    memory.save(path)
    with np.load(path) as data:
        return data["labels"]


def from_next_index(labels: torch.Tensor, next_index: int) -> list[int]:
    """The ring read from its write position: oldest first."""
    return torch.cat([labels[next_index:], labels[:next_index]]).tolist()


@pytest.mark.parametrize("batch", [1, 4, 10, 25])
def test_capacity_bound_keeps_the_newest_in_ring_order(batch):
    capacity = 10
    memory = SampleMemory(capacity, SHAPE)
    fill(memory, 3 * capacity, batch)

    assert len(memory) == memory.size == capacity
    images, labels = memory.all()
    assert sorted(labels.tolist()) == list(range(20, 30))  # the newest, the oldest overwritten
    assert from_next_index(labels, memory.next_index) == list(range(20, 30))
    if batch <= capacity:  # without truncation, sample k sits in slot k mod capacity
        assert memory.next_index == 0
        assert labels.tolist() == ring_expected(3 * capacity, capacity)
    assert_aligned(images, labels)


def test_a_batch_larger_than_capacity_wraps_from_the_current_position():
    memory = SampleMemory(10, SHAPE)
    fill(memory, 3, 3)  # next_index = 3
    memory.add(*labelled_batch(3, 25))  # only the last 10 of these 25 fit

    assert len(memory) == 10
    images, labels = memory.all()
    assert sorted(labels.tolist()) == list(range(18, 28))
    assert from_next_index(labels, memory.next_index) == list(range(18, 28))
    assert_aligned(images, labels)
    memory.add(*labelled_batch(28, 2))  # the next add overwrites the two oldest
    assert from_next_index(memory.all()[1], memory.next_index) == list(range(20, 30))


@pytest.mark.parametrize("batch", [1, 4, 10])
def test_total_added_counts_every_sample(batch):
    memory = SampleMemory(10, SHAPE)
    fill(memory, 30, batch)
    assert memory.total_added == 30


def test_total_added_counts_the_samples_of_a_batch_larger_than_capacity():
    memory = SampleMemory(10, SHAPE)
    fill(memory, 3, 3)
    memory.add(*labelled_batch(3, 25))
    assert memory.total_added == 28


def test_partial_fill_before_wrapping():
    memory = SampleMemory(10, SHAPE)
    fill(memory, 7, 3)
    assert len(memory) == 7 and memory.next_index == 7
    images, labels = memory.all()
    assert labels.tolist() == list(range(7))
    assert images.shape == (7, *SHAPE)


def test_uint8_round_trip_error_is_at_most_half_a_level():
    memory = SampleMemory(64, (3, 8, 8))
    images = torch.rand(64, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    memory.add(images, torch.zeros(64, dtype=torch.long))
    stored, _ = memory.all()
    assert stored.dtype == torch.float32
    error = (stored - images).abs().max().item()
    assert error <= 0.5 / 255 + 1e-6
    assert error > 0  # really quantized, not stored as float
    assert memory._images.dtype == torch.uint8


def test_out_of_range_values_are_clamped():
    memory = SampleMemory(2, (1, 1, 2))
    memory.add(torch.tensor([[[[-0.5, 1.5]]], [[[0.0, 1.0]]]]), torch.tensor([0, 1]))
    images, _ = memory.all()
    assert images.flatten().tolist() == [0.0, 1.0, 0.0, 1.0]


def test_labels_stay_aligned_with_images_when_sampled():
    memory = SampleMemory(50, SHAPE)
    fill(memory, 130, 7)
    gen = torch.Generator().manual_seed(0)
    for _ in range(5):
        images, labels = memory.sample(16, generator=gen)
        assert_aligned(images, labels)
        assert set(labels.tolist()) <= set(range(80, 130))


def test_save_load_round_trip_keeps_content_order_and_continues(tmp_path):
    memory = SampleMemory(10, SHAPE)
    fill(memory, 23, 4)  # wrapped: next_index = 3
    path = tmp_path / "memory.npz"
    memory.save(path)
    assert not (tmp_path / "memory.npz.tmp").exists()

    loaded = SampleMemory.load(path)
    assert loaded.capacity == 10 and loaded.image_shape == SHAPE
    assert len(loaded) == 10 and loaded.total_added == 23
    images, labels = loaded.all()
    assert labels.tolist() == list(range(13, 23))  # oldest first
    assert_aligned(images, labels)
    orig_images, orig_labels = memory.all()
    order = np.argsort(orig_labels.numpy())
    torch.testing.assert_close(images, orig_images[order], rtol=0, atol=0)

    # adding 4 more overwrites the 4 oldest, in both the original and the reloaded memory
    fill(memory, 4, 4, start=23)
    fill(loaded, 4, 4, start=23)
    assert loaded.total_added == memory.total_added == 27
    assert oldest_first(loaded, tmp_path).tolist() == list(range(17, 27))
    assert oldest_first(memory, tmp_path).tolist() == list(range(17, 27))
    assert_aligned(*loaded.all())


def test_save_load_of_a_partially_filled_memory(tmp_path):
    memory = SampleMemory(10, SHAPE)
    fill(memory, 6, 6)
    memory.save(tmp_path / "m.npz")
    loaded = SampleMemory.load(tmp_path / "m.npz")
    assert len(loaded) == 6 and loaded.next_index == 6 and loaded.capacity == 10
    fill(loaded, 6, 6, start=6)
    assert oldest_first(loaded, tmp_path).tolist() == list(range(2, 12))


def test_load_with_a_smaller_capacity_keeps_the_newest(tmp_path):
    memory = SampleMemory(10, SHAPE)
    fill(memory, 23, 4)
    memory.save(tmp_path / "m.npz")

    small = SampleMemory.load(tmp_path / "m.npz", capacity=4)
    assert small.capacity == 4 and len(small) == 4
    images, labels = small.all()
    assert labels.tolist() == [19, 20, 21, 22]
    assert_aligned(images, labels)
    fill(small, 1, 1, start=23)  # overwrites the oldest (19)
    assert oldest_first(small, tmp_path).tolist() == [20, 21, 22, 23]

    large = SampleMemory.load(tmp_path / "m.npz", capacity=16)
    assert len(large) == 10 and large.capacity == 16
    assert large.all()[1].tolist() == list(range(13, 23))


def test_memmap_backing_file_is_bounded_by_capacity(tmp_path):
    capacity, shape = 8, (3, 4, 4)
    path = tmp_path / "sub" / "memory.npy"
    memory = SampleMemory(capacity, shape, mmap_path=path)
    assert path.is_file()
    size_empty = path.stat().st_size
    data_bytes = capacity * math.prod(shape)
    assert data_bytes <= size_empty <= data_bytes + 256  # .npy header is small

    gen = torch.Generator().manual_seed(0)
    for _ in range(20):  # 20× the capacity
        memory.add(torch.rand(capacity, *shape, generator=gen), torch.arange(capacity))
    assert path.stat().st_size == size_empty
    assert len(memory) == capacity and memory.total_added == 20 * capacity

    # the file really is the storage: what is on disk matches what the memory returns
    on_disk = np.load(path, mmap_mode="r")
    assert on_disk.shape == (capacity, *shape) and on_disk.dtype == np.uint8
    images, _ = memory.all()
    np.testing.assert_array_equal(np.asarray(on_disk), (images * 255).round().numpy().astype(np.uint8))


def test_memmap_and_ram_memories_hold_the_same_content(tmp_path):
    ram = SampleMemory(10, SHAPE)
    disk = SampleMemory(10, SHAPE, mmap_path=tmp_path / "m.npy")
    fill(ram, 27, 4)
    fill(disk, 27, 4)
    for a, b in zip(ram.all(), disk.all()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    disk.save(tmp_path / "disk.npz")
    reloaded = SampleMemory.load(tmp_path / "disk.npz", mmap_path=tmp_path / "again.npy")
    assert reloaded.all()[1].tolist() == list(range(17, 27))


def test_sample_shapes_and_no_duplicates_when_batch_covers_the_memory():
    memory = SampleMemory(20, SHAPE)
    fill(memory, 12, 5)
    gen = torch.Generator().manual_seed(0)

    images, labels = memory.sample(5, generator=gen)
    assert images.shape == (5, *SHAPE) and labels.shape == (5,)
    assert labels.dtype == torch.int64

    for batch in (12, 30):
        images, labels = memory.sample(batch, generator=gen)
        assert images.shape == (12, *SHAPE)  # never more than the memory holds
        assert sorted(labels.tolist()) == list(range(12))  # a permutation: no duplicates


def test_sample_is_deterministic_given_a_generator():
    memory = SampleMemory(20, SHAPE)
    fill(memory, 20, 20)
    a = memory.sample(8, generator=torch.Generator().manual_seed(3))[1]
    b = memory.sample(8, generator=torch.Generator().manual_seed(3))[1]
    assert torch.equal(a, b)


def test_nbytes_is_the_capacity_bound():
    memory = SampleMemory(100, (3, 32, 32))
    expected = 100 * 3 * 32 * 32 + 100 * 8  # uint8 images + int64 labels
    assert memory.nbytes == expected
    fill_images = torch.rand(250, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    memory.add(fill_images, torch.zeros(250, dtype=torch.long))
    assert memory.nbytes == expected


def test_empty_memory_sample_raises():
    memory = SampleMemory(4, SHAPE)
    with pytest.raises(RuntimeError, match="empty"):
        memory.sample(2)


def test_non_positive_capacity_is_rejected():
    with pytest.raises(ValueError, match="positive"):
        SampleMemory(0, SHAPE)


def _saved(tmp_path, **arrays):
    path = tmp_path / "samples.npz"
    base = dict(images=np.zeros((3, 1, 4, 4), np.uint8), labels=np.arange(3), capacity=np.int64(8),
                total_added=np.int64(3))
    np.savez(path, **{k: v for k, v in {**base, **arrays}.items() if v is not None})
    return path


@pytest.mark.parametrize("damage, words", [
    ("random", "not a sample memory"),
    ("empty", "not a sample memory"),
    ("objects", "pickled Python objects"),
    ("no_labels", "no labels"),
    ("float_images", "uint8 N×C×H×W"),
    ("flat_images", "uint8 N×C×H×W"),
    ("label_count", "labels must be 3 integers"),
    ("float_labels", "labels must be 3 integers"),
    ("negative_label", "labels out of range"),
    ("zero_capacity", "capacity 0"),
    ("capacity_array", "capacity and total_added must be integers"),
])
def test_a_damaged_memory_file_is_one_user_error_naming_it(tmp_path, damage, words):
    """samples.npz / holdout.npz come from a run folder: a damaged or foreign one is refused in words, never
    unpickled, never a numpy or zip traceback."""
    from nayer_edge.core.errors import UserError

    path = tmp_path / "samples.npz"
    if damage == "random":
        path.write_bytes(np.random.default_rng(0).integers(0, 256, 3000, dtype=np.uint8).tobytes())
    elif damage == "empty":
        path.write_bytes(b"")
    elif damage == "objects":
        _saved(tmp_path, images=np.array([None] * 3, dtype=object))
    elif damage == "no_labels":
        _saved(tmp_path, labels=None)
    elif damage == "float_images":
        _saved(tmp_path, images=np.zeros((3, 1, 4, 4), np.float32))
    elif damage == "flat_images":
        _saved(tmp_path, images=np.zeros((3, 16), np.uint8))
    elif damage == "label_count":
        _saved(tmp_path, labels=np.arange(2))
    elif damage == "float_labels":
        _saved(tmp_path, labels=np.zeros(3))
    elif damage == "negative_label":
        _saved(tmp_path, labels=np.array([0, -1, 2]))
    elif damage == "zero_capacity":
        _saved(tmp_path, capacity=np.int64(0))
    elif damage == "capacity_array":
        _saved(tmp_path, capacity=np.arange(2))
    with pytest.raises(UserError) as caught:
        SampleMemory.load(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: ") and words in message and "re-run distill" in message, message
    assert "\n" not in message


def test_a_memory_file_as_written_still_loads(tmp_path):
    memory = SampleMemory.load(_saved(tmp_path))
    assert memory.size == 3 and memory.capacity == 8 and memory.total_added == 3
