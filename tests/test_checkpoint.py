"""The checkpoint keeps both sample memories slot for slot, so that a resumed run draws the same KD batches."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nayer_edge.distill.checkpoint import memory_state, restore_memory
from nayer_edge.synthesis.memory import SampleMemory

SHAPE = (1, 3, 3)


def _memory(capacity: int, total: int, batch: int = 7) -> SampleMemory:
    memory = SampleMemory(capacity, SHAPE)
    gen = torch.Generator().manual_seed(0)
    for first in range(0, total, batch):
        n = min(batch, total - first)
        memory.add(torch.rand(n, *SHAPE, generator=gen), torch.arange(first, first + n))
    return memory


def _draws(memory: SampleMemory) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return [t for _ in range(5) for t in memory.sample(8, gen)]


@pytest.mark.parametrize("capacity,total", [(20, 0), (20, 13), (20, 20), (20, 53), (20, 60), (100, 7)],
                         ids=["empty", "partial", "exactly-full", "wrapped", "wrapped-to-slot-0", "big"])
@pytest.mark.parametrize("into", ["new", "ram", "mmap"])
def test_restored_memory_is_the_same_ring(capacity, total, into, tmp_path):
    memory = _memory(capacity, total)
    target = {"new": None, "ram": SampleMemory(capacity, SHAPE),
              "mmap": SampleMemory(capacity, SHAPE, mmap_path=tmp_path / "ring.npy")}[into]
    restored = restore_memory(memory_state(memory), into=target)
    if target is not None:
        assert restored is target and restored.mmap_path == target.mmap_path  # the run's own storage, not a copy
    assert (restored.capacity, restored.size, restored.next_index, restored.total_added) == (
        memory.capacity, memory.size, memory.next_index, memory.total_added)
    if total:
        for a, b in zip(_draws(memory), _draws(restored)):
            assert torch.equal(a, b)
        # ...and the next samples overwrite the same slots.
        batch = torch.rand(9, *SHAPE), torch.arange(1000, 1009)
        memory.add(*batch)
        restored.add(*batch)
        assert torch.equal(memory.all()[0], restored.all()[0]) and torch.equal(memory.all()[1], restored.all()[1])


def test_samples_npz_alone_would_move_a_wrapped_ring(tmp_path):
    """Why the checkpoint does not use samples.npz: it is stored oldest first, and reloading it puts the
    samples of a wrapped ring in other slots, so the same random indices pick other samples."""
    memory = _memory(20, 53)
    memory.save(tmp_path / "samples.npz")
    reloaded = SampleMemory.load(tmp_path / "samples.npz")
    assert not all(torch.equal(a, b) for a, b in zip(_draws(memory), _draws(reloaded)))
    assert np.array_equal(np.sort(memory.all()[1].numpy()), np.sort(reloaded.all()[1].numpy()))


def test_checkpointed_memory_holds_only_the_filled_slots(tmp_path):
    """torch.save of a slice writes its whole storage: a partly filled ring must not cost its capacity."""
    partial, full = _memory(1000, 10), _memory(1000, 1000)
    torch.save(memory_state(partial), tmp_path / "partial.pt")
    torch.save(memory_state(full), tmp_path / "full.pt")
    per_sample = int(np.prod(SHAPE)) + 8
    assert (tmp_path / "partial.pt").stat().st_size < 10 * per_sample + 4096
    assert (tmp_path / "full.pt").stat().st_size < 1000 * per_sample + 4096
