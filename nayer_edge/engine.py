"""The NAYER distillation loop, written to read like the method.

Each epoch: synthesis rounds (noisy layer re-drawn, fresh Adam, g_steps on the generator, the
lowest-loss batch kept in the sample memory), then KD steps of the student on the memory. The
generator is rebuilt every ``g_life`` epochs. Unlike the reference, the student also learns during
warm-up (``kd_during_warmup``), and model selection never looks at labelled evaluation data.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F

from .augment import random_crop_flip
from .bn_probe import BNProbe, bn_statistics_loss
from .config import DistillConfig
from .distributed import SINGLE, DistContext, rank_seed
from .evaluate import accuracy, agreement
from .generator import NayerGenerator, NoiseGenerator, round_targets
from .losses import adversarial_loss, kd_divergence
from .memory import SampleMemory


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        from .errors import UserError

        raise UserError("--device cuda asked for, but no CUDA GPU is available; use --device cpu or auto")
    return torch.device(name)


@dataclass
class EpochReport:
    epoch: int
    wall_seconds: float
    losses: dict[str, float]
    agreement: float | None = None
    student_accuracy: float | None = None
    lr: float = 0.0
    memory_size: int = 0

    def as_row(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "wall_seconds": round(self.wall_seconds, 3), **self.losses,
                "agreement": self.agreement, "student_accuracy": self.student_accuracy, "lr": self.lr,
                "memory_size": self.memory_size}


@dataclass
class RunState:
    epoch: int = 0  # epochs completed
    kd_step: int = 0
    elapsed: float = 0.0
    history: list[dict[str, Any]] = field(default_factory=list)
    stopped_by: str | None = None


class Distiller:
    """Holds the teacher, student, generator and sample memory of one run.

    ``teacher`` and ``student`` both take images in [0, 1] (wrap them with
    :class:`~nayer_edge.normalize.NormalizedModel`). ``label_embeddings`` is K×D (text or one-hot);
    it is unused by the noise-input generator.

    With a :class:`~nayer_edge.distributed.DistContext` of several ranks, each rank synthesises its own
    contiguous share of every round's batch (its own generator, noisy layers and random stream), the
    shares are all-gathered into every rank's memory, and the student trains under
    DistributedDataParallel on a disjoint share of each KD batch. Everything that must agree across
    ranks (holdout split, KD batch indices, the clock of the time budget) comes from a stream or a value
    shared by all ranks. One process (the default) runs exactly the single-process loop.
    """

    def __init__(self, teacher: nn.Module, student: nn.Module, label_embeddings: torch.Tensor | None,
                 config: DistillConfig, input_shape: tuple[int, int, int], num_classes: int,
                 device: torch.device, memory_path: Path | None = None, dist: DistContext | None = None):
        self.cfg = config
        self.device = device
        self.dist = dist or SINGLE
        self.input_shape = tuple(input_shape)
        self.num_classes = num_classes
        self.teacher = teacher.to(device).eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.probe = BNProbe(self.teacher)
        self.student = student.to(device)
        self.label_embeddings = label_embeddings
        # The shared stream (same on every rank): holdout split and KD batch indices. Each rank's own stream:
        # augmentation of what it alone computes. With one process they are the same stream.
        self.rng = torch.Generator().manual_seed(config.seed)
        self.local_rng = (torch.Generator().manual_seed(rank_seed(config.seed, self.dist.rank))
                          if self.dist.enabled else self.rng)
        # This rank's slice of each synthesis round (the whole round for one process).
        self.synth_start, self.synth_stop = self.dist.share(config.synthesis_batch)
        self._ddp: nn.Module | None = None
        self.pad = config.augment_pad if config.augment_pad >= 0 else max(1, self.input_shape[1] // 8)
        self.memory = SampleMemory(config.memory_capacity, self.input_shape,
                                   memory_path if config.memory_backing == "mmap" else None)
        holdout_capacity = max(self.num_classes, int(config.memory_capacity * config.holdout_fraction))
        self.holdout = SampleMemory(holdout_capacity, self.input_shape)
        self.optimizer = torch.optim.SGD(self.student.parameters(), lr=config.lr, momentum=config.momentum,
                                         weight_decay=config.weight_decay)
        kd_epochs = config.epochs if config.kd_during_warmup else max(0, config.epochs - config.warmup_epochs)
        self.total_kd_steps = max(1, kd_epochs * config.kd_steps)
        self.generator: nn.Module | None = None
        self.bn_state: dict[str, Any] | None = None
        self.state = RunState()
        # Steps whose loss was NaN/Inf (skipped, never applied) and generators rebuilt after a round in which
        # no step was finite: reported in metrics.json so a run never turns to garbage silently.
        self.nonfinite = {"generator_steps": 0, "kd_steps": 0, "generator_resets": 0}

    # -- synthesis ---------------------------------------------------------------------------
    def build_generator(self) -> nn.Module:
        cfg = self.cfg
        if cfg.generator == "nayer":
            assert self.label_embeddings is not None
            gen: nn.Module = NayerGenerator(self.label_embeddings, self.input_shape, self.synth_stop - self.synth_start,
                                            cfg.noisy_dim, cfg.ngf)
            if not cfg.embedding_norm:
                gen.embedding_norm = nn.Identity()
        else:
            gen = NoiseGenerator(self.input_shape, self.synth_stop - self.synth_start, cfg.noise_dim, cfg.ngf)
        return gen.to(self.device).train()

    def synthesize(self, adversarial: bool) -> dict[str, float]:
        """One synthesis round; the lowest-loss batch of the g_steps goes to the sample memory.

        Distributed, this rank optimises its share of the round and the kept batches of all ranks are
        gathered into every rank's memory; the losses returned are this rank's."""
        cfg = self.cfg
        assert self.generator is not None
        self.generator.new_round()
        # A fresh Adam every round, as in the paper; fused kernels where torch has them for this device.
        optimizer = torch.optim.Adam(self.generator.parameters(), lr=cfg.lr_g, betas=(0.5, 0.999), fused=True)
        targets = round_targets(self.num_classes, cfg.synthesis_batch, self.device)[self.synth_start:self.synth_stop]
        self.student.eval()
        # Distributed, the adversarial term must not leave gradients on the student's parameters for DDP to see.
        frozen = [p for p in self.student.parameters() if p.requires_grad] if self.dist.enabled else []
        for p in frozen:
            p.requires_grad_(False)
        try:
            best_loss, best_images, best_parts = self._synthesis_steps(targets, optimizer, adversarial)
        finally:
            for p in frozen:
                p.requires_grad_(True)
        if best_images is None:
            # Every step of the round was NaN/Inf: this generator is broken; start the next round from a new one.
            self.generator = self.build_generator()
            self.nonfinite["generator_resets"] += 1
        if self.dist.enabled:
            images, labels = self.dist.all_gather_samples(
                best_images, targets if best_images is not None else None,
                math.ceil(cfg.synthesis_batch / self.dist.world_size), self.input_shape)
            if len(images):
                self._store(images, labels)
        elif best_images is not None:
            self._store(best_images, targets)
        return {"loss_g": best_loss, **best_parts}

    def _synthesis_steps(self, targets: torch.Tensor, optimizer: torch.optim.Optimizer, adversarial: bool
                         ) -> tuple[float, torch.Tensor | None, dict[str, float]]:
        cfg = self.cfg
        assert self.generator is not None
        best_loss, best_images, best_parts = math.inf, None, {}
        new_bn_state = self.bn_state
        for _ in range(cfg.g_steps):
            images = self.generator(targets)
            augmented = random_crop_flip(images, self.pad, cfg.augment_flip, self.local_rng)
            teacher_logits, stats = self.probe(augmented)
            loss_bn, new_bn_state = bn_statistics_loss(stats, self.bn_state, cfg.bn_momentum)
            loss_oh = F.cross_entropy(teacher_logits, targets)
            loss_adv = torch.zeros((), device=self.device)
            if adversarial:
                loss_adv = adversarial_loss(self.student(augmented), teacher_logits)
            loss = cfg.bn_weight * loss_bn + cfg.oh_weight * loss_oh + cfg.adv_weight * loss_adv
            loss_value = loss.item()
            if not math.isfinite(loss_value):
                self.nonfinite["generator_steps"] += 1
                continue
            if loss_value < best_loss:
                best_loss, best_images = loss_value, images.detach().clone()
                best_parts = {"loss_bn": loss_bn.item(), "loss_oh": loss_oh.item(), "loss_adv": loss_adv.item()}
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        self.bn_state = new_bn_state
        return best_loss, best_images, best_parts

    def _store(self, images: torch.Tensor, targets: torch.Tensor) -> None:
        """Most of each batch trains the student; a fixed share is held out to measure agreement."""
        n_holdout = int(round(len(images) * self.cfg.holdout_fraction))
        perm = torch.randperm(len(images), generator=self.rng)
        held, kept = perm[:n_holdout], perm[n_holdout:]
        if n_holdout:
            self.holdout.add(images[held], targets[held])
        self.memory.add(images[kept], targets[kept])

    # -- knowledge distillation ------------------------------------------------------------------
    def learning_rate(self) -> float:
        cfg = self.cfg
        progress = self.state.kd_step / self.total_kd_steps
        if cfg.time_budget:
            progress = max(progress, self.state.elapsed / cfg.time_budget)
        progress = min(1.0, progress)
        return cfg.lr_min + (cfg.lr - cfg.lr_min) * 0.5 * (1 + math.cos(math.pi * progress))

    def kd_step(self) -> float:
        if self.dist.enabled:
            return self._kd_step_distributed()
        cfg = self.cfg
        images, _ = self.memory.sample(cfg.kd_batch, self.rng)
        images = random_crop_flip(images.to(self.device), self.pad, cfg.augment_flip, self.rng)
        with torch.no_grad():
            teacher_logits = self.teacher(images)
        self.student.train()
        loss = kd_divergence(self.student(images), teacher_logits, cfg.temperature)
        lr = self.learning_rate()
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.zero_grad(set_to_none=True)
        if torch.isfinite(loss):
            loss.backward()
            self.optimizer.step()
        else:
            self.nonfinite["kd_steps"] += 1
        self.state.kd_step += 1
        return loss.item()

    def _kd_step_distributed(self) -> float:
        """One KD step under DDP: the batch indices come from the shared stream, each rank takes its own
        contiguous share of them; gradients are averaged by DDP. Every rank calls backward (a rank that
        skipped it would leave the others waiting) and the step is skipped on all ranks alike when the
        averaged gradients, identical everywhere, are not finite."""
        cfg = self.cfg
        indices = self.memory.sample_indices(cfg.kd_batch, self.rng)
        start, stop = self.dist.share(len(indices))
        images, _ = self.memory.get(indices[start:stop])
        images = random_crop_flip(images.to(self.device), self.pad, cfg.augment_flip, self.local_rng)
        with torch.no_grad():
            teacher_logits = self.teacher(images)
        model = self.ddp_student()
        model.train()
        loss = kd_divergence(model(images), teacher_logits, cfg.temperature)
        lr = self.learning_rate()
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grads = [p.grad for p in self.student.parameters() if p.grad is not None]
        if grads and bool(torch.stack([g.isfinite().all() for g in grads]).all()):
            self.optimizer.step()
        else:
            self.nonfinite["kd_steps"] += 1
        self.state.kd_step += 1
        return loss.item()

    def release(self) -> None:
        """Drop the DDP wrapper (and with it the reducer's hold on the process group) once training is over."""
        self._ddp = None

    def ddp_student(self) -> nn.Module:
        """The student wrapped in DistributedDataParallel (built on first use, on every rank at the same step)."""
        if self._ddp is None:
            from torch.nn.parallel import DistributedDataParallel

            device_ids = [self.device.index] if self.device.type == "cuda" else None
            self._ddp = DistributedDataParallel(self.student, device_ids=device_ids)
        return self._ddp

    # -- the loop ----------------------------------------------------------------------------
    def run(self, eval_data: tuple[torch.Tensor, torch.Tensor] | None = None,
            on_epoch: Callable[[EpochReport], None] | None = None,
            on_step: Callable[[str, int, int], None] | None = None,
            checkpoint: Callable[["Distiller"], None] | None = None) -> RunState:
        """Run (or continue) the schedule; stops early, consistently, when the time budget is spent.

        Distributed, every rank calls ``run``; ``checkpoint`` is called on every rank (it gathers the ranks'
        own states, see :meth:`state_dict`), ``eval_data`` and ``on_epoch`` are meant for rank 0 only."""
        cfg = self.cfg
        state = self.state
        started = time.perf_counter() - state.elapsed

        def tick() -> bool:
            elapsed = time.perf_counter() - started
            if cfg.time_budget is not None:
                # Rank 0's clock decides for every rank, so all run the same rounds and steps.
                elapsed = self.dist.broadcast_float(elapsed)
            state.elapsed = elapsed
            return cfg.time_budget is not None and state.elapsed >= cfg.time_budget

        while state.epoch < cfg.epochs and not state.stopped_by:
            epoch = state.epoch
            if self.generator is None or epoch % cfg.g_life == 0:
                self.generator = self.build_generator()
            warm = epoch < cfg.warmup_epochs
            rounds = cfg.warmup_rounds if warm else cfg.rounds_per_epoch
            train_now = cfg.kd_during_warmup or not warm
            losses: dict[str, list[float]] = {}
            for r in range(rounds):
                if tick():
                    state.stopped_by = "time_budget"
                    break
                for k, v in self.synthesize(adversarial=cfg.adv_weight > 0 and not warm).items():
                    losses.setdefault(k, []).append(v)
                if on_step:
                    on_step("synthesis", r + 1, rounds)
            if train_now and len(self.memory) and not state.stopped_by:
                for s in range(cfg.kd_steps):
                    if s % 10 == 0 and tick():
                        state.stopped_by = "time_budget"
                        break
                    losses.setdefault("loss_kd", []).append(self.kd_step())
                    if on_step and (s + 1) % 10 == 0:
                        on_step("kd", s + 1, cfg.kd_steps)
            if state.stopped_by and not losses:
                break
            state.epoch += 1
            tick()
            report = EpochReport(
                epoch=state.epoch, wall_seconds=state.elapsed,
                losses={k: float(np.mean(v)) for k, v in losses.items()},
                agreement=self.holdout_agreement() if self.dist.is_main else None, lr=self.learning_rate(),
                memory_size=len(self.memory))
            if eval_data is not None:
                # Reported, never used to choose a model.
                report.student_accuracy = accuracy(self.student, *eval_data, device=self.device)
            state.history.append(report.as_row())
            if checkpoint:
                checkpoint(self)
            if on_epoch:
                on_epoch(report)
            started = time.perf_counter() - state.elapsed  # evaluation/checkpoint time is not charged twice
        self.student.eval()
        return state

    def holdout_agreement(self) -> float | None:
        if len(self.holdout) == 0:
            return None
        images, _ = self.holdout.all()
        return agreement(self.student, self.teacher, images, device=self.device)

    # -- checkpoints -------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        state = {
            "student": self.student.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            # The noisy layers are re-drawn at the start of every round: saving them would only bloat the file.
            "generator": ({k: v for k, v in self.generator.state_dict().items() if not k.startswith("noisy.")}
                          if self.generator is not None else None),
            "bn_state": self.bn_state,
            "run": {"epoch": self.state.epoch, "kd_step": self.state.kd_step, "elapsed": self.state.elapsed,
                    "stopped_by": self.state.stopped_by},
            "history": self.state.history,
            "nonfinite": dict(self.nonfinite),
            "memory": self.memory.state_dict(),
            "rng": {"engine": self.rng.get_state(), "torch": torch.get_rng_state(),
                    "numpy": _numpy_state(), "python": list(random.getstate()[1])},
            "world_size": self.dist.world_size,
        }
        if self.dist.enabled:
            # Collective: every rank's own generator, BN-statistics state and random streams, on rank 0 (the
            # top-level "generator" is rank 0's). None on the other ranks, which write nothing.
            state["ranks"] = self.dist.gather_objects(self._rank_state())
        return state

    def _rank_state(self) -> dict[str, Any]:
        to_cpu = lambda tree: _map_tensors(tree, lambda t: t.detach().cpu())  # noqa: E731
        generator = (to_cpu({k: v for k, v in self.generator.state_dict().items() if not k.startswith("noisy.")})
                     if self.generator is not None else None)
        return {"generator": generator, "bn_state": to_cpu(self.bn_state), "local_rng": self.local_rng.get_state(),
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None}

    def load_state_dict(self, checkpoint: dict[str, Any], memory: SampleMemory, holdout: SampleMemory) -> None:
        saved_world = checkpoint.get("world_size", 1)
        if saved_world != self.dist.world_size:
            raise ValueError(f"checkpoint of a {saved_world}-process run, resumed with {self.dist.world_size}")
        own = checkpoint["ranks"][self.dist.rank] if self.dist.enabled else checkpoint
        self.student.load_state_dict(checkpoint["student"])
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        if own["generator"] is not None:
            self.generator = self.build_generator()
            missing, unexpected = self.generator.load_state_dict(own["generator"], strict=False)
            if unexpected or any(not k.startswith("noisy.") for k in missing):
                raise RuntimeError(f"checkpoint generator does not match: missing {missing}, unexpected {unexpected}")
        self.bn_state = own["bn_state"]
        run = checkpoint["run"]
        self.state = RunState(epoch=run["epoch"], kd_step=run["kd_step"], elapsed=run["elapsed"],
                              history=list(checkpoint["history"]), stopped_by=None)
        self.memory, self.holdout = memory, holdout
        self.nonfinite.update(checkpoint.get("nonfinite", {}))
        self.rng.set_state(checkpoint["rng"]["engine"])
        if self.dist.enabled:
            self.local_rng.set_state(own["local_rng"])
            torch.set_rng_state(own["torch"])
            if own.get("cuda") is not None and self.device.type == "cuda":
                torch.cuda.set_rng_state(own["cuda"], self.device)
        else:
            torch.set_rng_state(checkpoint["rng"]["torch"])


def _numpy_state() -> list[int]:
    return np.random.get_state()[1].tolist()


def _map_tensors(tree: Any, fn: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    if isinstance(tree, torch.Tensor):
        return fn(tree)
    if isinstance(tree, dict):
        return {k: _map_tensors(v, fn) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(_map_tensors(v, fn) for v in tree)
    return tree
