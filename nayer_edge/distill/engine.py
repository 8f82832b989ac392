"""The NAYER distillation loop, written to read like the method.

Each epoch: synthesis rounds (noisy layer re-drawn, fresh Adam, g_steps on the generator, the
lowest-loss batch kept in the sample memory), then KD steps of the student on the memory. The
generator is rebuilt every ``g_life`` epochs. Unlike the reference, the student also learns during
warm-up (``kd_during_warmup``), and model selection never looks at labelled evaluation data.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..core.evaluate import accuracy, agreement
from ..core.strict import replace
from ..synthesis.augment import random_crop_flip, random_zoom
from ..synthesis.best_batches import BestBatches, KeptBatches, kept_per_round
from ..synthesis.bn_probe import BNProbe, bn_statistics_loss
from ..synthesis.generator import NayerGenerator, NoiseGenerator, round_targets
from ..synthesis.memory import SampleMemory
from .amp import Amp, backward_and_step
from .config import DistillConfig
from .distributed import SINGLE, DistContext, rank_seed
from .losses import adversarial_loss, kd_divergence
from .performance import channels_last_input, maybe_compile, memory_device, to_channels_last, use_channels_last
from .run_state import EpochReport, RoundReport, RunState, epoch_mean, map_tensors


class Distiller:
    """Holds the teacher, student, generator and sample memory of one run.

    ``teacher`` and ``student`` both take images in [0, 1] (wrap them with
    :class:`~nayer_edge.core.normalize.NormalizedModel`). ``label_embeddings`` is K×D (text or one-hot);
    it is unused by the noise-input generator.

    With a :class:`~nayer_edge.distill.distributed.DistContext` of several ranks, each rank synthesises its own
    contiguous share of every round's batch (its own generator, noisy layers and random stream), the
    shares are all-gathered into every rank's memory, and the student trains under
    DistributedDataParallel on a disjoint share of each KD batch. Everything that must agree across
    ranks (holdout split, KD batch indices, the clock of the time budget) comes from a stream or a value
    shared by all ranks. One process (the default) runs exactly the single-process loop.
    """

    # Nine parameters: the two models, the class codes, the config, the input and label shapes, and where it runs
    # (device, memory file, process group): each is a different thing the loop needs, none relayed.
    def __init__(self, teacher: nn.Module, student: nn.Module, label_embeddings: torch.Tensor | None,
                 config: DistillConfig, input_shape: tuple[int, int, int], num_classes: int,
                 device: torch.device, memory_path: Path | None = None, dist: DistContext | None = None):
        self.cfg = config
        self.device = device
        self.dist = dist or SINGLE
        self.input_shape = tuple(input_shape)
        self.num_classes = num_classes
        self.amp = Amp.for_device(config.amp, device)
        self.channels_last = use_channels_last(config.channels_last, device)
        self.teacher = teacher.to(device).eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.student = student.to(device)
        if self.channels_last:
            to_channels_last(self.teacher)
            to_channels_last(self.student)
        self.probe = BNProbe(self.teacher)
        # Compiled forwards share the modules' parameters; the probe keeps the eager teacher (it instruments it).
        self._student_forward = maybe_compile(self.student, config.compile)
        self._teacher_forward = maybe_compile(self.teacher, config.compile)
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
        holdout_capacity = max(self.num_classes, int(config.memory_capacity * config.holdout_fraction))
        store = torch.device("cpu") if config.memory_backing == "mmap" else memory_device(
            device, SampleMemory.bytes_needed(config.memory_capacity + holdout_capacity, self.input_shape),
            config.memory_device_budget)
        self.memory_device = store
        self.memory = SampleMemory(config.memory_capacity, self.input_shape,
                                   memory_path if config.memory_backing == "mmap" else None, device=store)
        self.holdout = SampleMemory(holdout_capacity, self.input_shape, device=store)
        # Fused: a step with a non-finite loss is skipped on the device (amp.backward_and_step), no host sync.
        self.optimizer = torch.optim.SGD(self.student.parameters(), lr=config.lr, momentum=config.momentum,
                                         weight_decay=config.weight_decay, fused=True)
        self._g_scaler, self._kd_scaler = self.amp.new_scaler(), self.amp.new_scaler()
        kd_epochs = config.epochs if config.kd_during_warmup else max(0, config.epochs - config.warmup_epochs)
        self.total_kd_steps = max(1, kd_epochs * config.kd_steps)
        self.generator: nn.Module | None = None
        # Seconds the loop may run (state.elapsed counts against it): the time budget, or what the caller leaves
        # of it after its own work before and after the loop (see nayer_edge.distill.run).
        self.loop_budget: float | None = config.time_budget
        # A planned epoch count follows the clock (nayer_edge.distill.run sets this when the planner chose it): after
        # each epoch past the warm-up the count is refitted to the time left at the pace of the epochs so far, so
        # a plan made from step costs that were off (bf16's first calls, a busy machine) neither ends early with
        # budget unspent nor runs past it.
        self.fit_epochs_to_clock = False
        self.bn_state: dict[str, Any] | None = None
        self.state = RunState()
        # Steps whose loss was NaN/Inf (skipped, never applied) and generators rebuilt after a round in which
        # no step was finite: reported in metrics.json so a run never turns to garbage silently.
        self._nonfinite = {"generator_steps": 0, "kd_steps": 0, "generator_resets": 0}
        self._kd_nonfinite = torch.zeros((), dtype=torch.int64, device=device)  # counted on the device

    # The sample memories stay where __init__ placed them: one assigned later (a resumed run's) is moved there.
    @property
    def memory(self) -> SampleMemory:
        return self._memory

    @memory.setter
    def memory(self, value: SampleMemory) -> None:
        self._memory = value if value.mmap_path is not None else value.to(self.memory_device)

    @property
    def holdout(self) -> SampleMemory:
        return self._holdout

    @holdout.setter
    def holdout(self, value: SampleMemory) -> None:
        self._holdout = value.to(self.memory_device)

    @property
    def nonfinite(self) -> dict[str, int]:
        """The skipped-step counters (reading them waits for the device: once per epoch, not per step)."""
        pending = int(self._kd_nonfinite)
        if pending:
            self._nonfinite["kd_steps"] += pending
            self._kd_nonfinite.zero_()
        return self._nonfinite

    # -- synthesis ---------------------------------------------------------------------------
    def build_generator(self) -> nn.Module:
        cfg = self.cfg
        if cfg.generator == "nayer":
            assert self.label_embeddings is not None
            gen: nn.Module = NayerGenerator(self.label_embeddings, self.input_shape, self.synth_stop - self.synth_start,
                                            cfg.noisy_dim, cfg.ngf, cfg.decoder_upsamplings, cfg.decoder_taper)
            if not cfg.embedding_norm:
                gen.embedding_norm = nn.Identity()
        else:
            gen = NoiseGenerator(self.input_shape, self.synth_stop - self.synth_start, cfg.noise_dim, cfg.ngf,
                                 cfg.decoder_upsamplings, cfg.decoder_taper)
        gen = gen.to(self.device).train()
        return to_channels_last(gen) if self.channels_last else gen

    def synthesize(self, adversarial: bool, out_of_time: Callable[[], bool] | None = None) -> dict[str, float]:
        """One synthesis round; the lowest-loss batch of the g_steps (of each of their ``batches_per_round``
        segments) goes to the sample memory. ``out_of_time`` is asked after every step but the last: when it
        says so the round ends there, its best batches kept.

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
            kept = self._synthesis_steps(targets, optimizer, adversarial, out_of_time)
        finally:
            for p in frozen:
                p.requires_grad_(True)
        kept_targets = targets.repeat(kept.count) if kept.images is not None else None
        if kept_targets is None:
            # Every step of the round was NaN/Inf: this generator is broken; start the next round from a new one.
            self.generator = self.build_generator()
            self.nonfinite["generator_resets"] += 1
        if self.dist.enabled:
            images, labels = self.dist.all_gather_samples(
                kept.images, kept_targets,
                math.ceil(cfg.synthesis_batch / self.dist.world_size) * kept_per_round(cfg.g_steps, cfg.batches_per_round),
                self.input_shape)
            if len(images):
                self._store(images, labels)
        elif kept_targets is not None:
            self._store(kept.images, kept_targets)
        return {"loss_g": kept.lowest_loss, **kept.parts}

    def _synthesis_steps(self, targets: torch.Tensor, optimizer: torch.optim.Optimizer, adversarial: bool,
                         out_of_time: Callable[[], bool] | None = None) -> KeptBatches:
        """The round's g_steps; what it keeps (:class:`~nayer_edge.synthesis.best_batches.BestBatches`)."""
        cfg = self.cfg
        assert self.generator is not None
        new_bn_state = self.bn_state
        best = BestBatches(cfg.g_steps, cfg.batches_per_round, self.device)
        for step in range(cfg.g_steps):
            if step and out_of_time is not None and out_of_time():
                break
            with self.amp.autocast():
                images = self.generator(targets)
                augmented = random_crop_flip(images, self.pad, cfg.augment_flip, self.local_rng)
                augmented = channels_last_input(augmented, self.channels_last)
                teacher_logits, stats = self.probe(augmented)
                student_logits = self._student_forward(augmented) if adversarial else None
            # Losses in float32, whatever the forwards ran in (the BN statistics are recorded in float32).
            teacher_logits = teacher_logits.float()
            loss_bn, new_bn_state = bn_statistics_loss(stats, self.bn_state, cfg.bn_momentum, cfg.bn_first_weight)
            loss_oh = F.cross_entropy(teacher_logits, targets)
            loss_adv = (adversarial_loss(student_logits.float(), teacher_logits) if student_logits is not None
                        else torch.zeros((), device=self.device))
            loss = cfg.bn_weight * loss_bn + cfg.oh_weight * loss_oh + cfg.adv_weight * loss_adv
            finite = best.offer(step, loss, (loss_bn, loss_oh, loss_adv), images)
            backward_and_step(optimizer, loss, finite, self._g_scaler)
        self.bn_state = new_bn_state
        kept = best.read()
        self._nonfinite["generator_steps"] += kept.skipped
        return kept

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
        if self.loop_budget:
            progress = max(progress, self.state.elapsed / self.loop_budget)
        progress = min(1.0, progress)
        return cfg.lr_min + (cfg.lr - cfg.lr_min) * 0.5 * (1 + math.cos(math.pi * progress))

    def kd_step(self) -> torch.Tensor:
        """One student step on a batch of the memory; returns the KD loss as a 0-dim tensor on the device (read
        once per epoch, so the host runs ahead of the GPU).

        Under DDP the batch indices come from the shared stream and each rank takes its own contiguous share of
        them; DDP averages the gradients. Every rank then calls backward (a rank that skipped it would leave the
        others waiting), and the step is skipped on all ranks alike when the averaged gradients, identical
        everywhere, are not finite. One process checks the loss instead, before its backward."""
        cfg = self.cfg
        if self.dist.enabled:
            indices = self.memory.sample_indices(cfg.kd_batch, self.rng)
            start, stop = self.dist.share(len(indices))
            images, _ = self.memory.get(indices[start:stop], device=self.device)
            augment_rng, model = self.local_rng, self.ddp_student()
            forward = model
        else:
            images, _ = self.memory.sample(cfg.kd_batch, self.rng, device=self.device)
            augment_rng, model, forward = self.rng, self.student, self._student_forward
        images = random_crop_flip(random_zoom(images, cfg.kd_zoom, augment_rng), self.pad, cfg.augment_flip,
                                  augment_rng)
        images = channels_last_input(images, self.channels_last)
        with self.amp.autocast():
            with torch.no_grad():
                teacher_logits = self._teacher_forward(images)
            model.train()
            student_logits = forward(images)
        loss = kd_divergence(student_logits.float(), teacher_logits.float(), cfg.temperature)
        lr = self.learning_rate()
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        finite = backward_and_step(self.optimizer, loss, None if self.dist.enabled else torch.isfinite(loss),
                                   self._kd_scaler)
        self._kd_nonfinite += ~finite
        self.state.kd_step += 1
        return loss.detach()

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
    # The loop in one piece, read top to bottom like the method (STYLE.md: nanoGPT): epochs, synthesis rounds,
    # KD steps, the clock and the checkpoints, with nothing hidden in callbacks.
    def run(self, eval_data: tuple[torch.Tensor, torch.Tensor] | None = None,
            on_epoch: Callable[[EpochReport], None] | None = None,
            on_step: Callable[[str, int, int], None] | None = None,
            checkpoint: Callable[["Distiller"], None] | None = None,
            stop: Callable[[], bool] | None = None,
            on_round: Callable[[RoundReport], None] | None = None) -> RunState:
        """Run (or continue) the schedule; stops early, consistently, when the time budget is spent.

        ``stop`` is polled at every safe point (the start of an epoch, the end of each synthesis round and of
        each KD step); when it returns true the run checkpoints that exact point and returns with
        ``stopped_by == "interrupted"``; resumed from there, it goes on as if never stopped.

        Distributed, every rank calls ``run``; ``checkpoint`` and ``stop`` are called on every rank at the same
        points (``checkpoint`` gathers the ranks' own states, see :meth:`state_dict`; ``stop`` must agree on
        every rank), ``eval_data``, ``on_epoch`` and ``on_round`` are meant for rank 0 only."""
        cfg = self.cfg
        state = self.state
        started = time.perf_counter() - state.elapsed

        budget = self.loop_budget
        epoch_end = 0.0  # what the last epoch's end (evaluation, checkpoint) took: the next one will cost as much

        def tick() -> bool:
            nonlocal epoch_end
            elapsed = time.perf_counter() - started
            if budget is not None and self.dist.enabled:
                # Rank 0's clock decides for every rank, so all run the same rounds and steps.
                elapsed = self.dist.broadcast_float(elapsed)
                epoch_end = self.dist.broadcast_float(epoch_end)
            state.elapsed = elapsed
            return budget is not None and state.elapsed + epoch_end >= budget

        # Within a round only one process reads its clock (the ranks would have to agree at every step).
        def round_out_of_time() -> bool:
            return time.perf_counter() - started + epoch_end >= budget  # type: ignore[operator]
        in_round = round_out_of_time if budget is not None and not self.dist.enabled else None

        def interrupted() -> bool:
            if stop is not None and stop():
                state.stopped_by = "interrupted"
            return state.stopped_by == "interrupted"

        while state.epoch < cfg.epochs and not state.stopped_by:
            epoch = state.epoch
            if interrupted():
                break
            # Resumed inside an epoch, the checkpoint's generator is already this epoch's.
            if self.generator is None or (epoch % cfg.g_life == 0 and not (state.round or state.step)):
                self.generator = self.build_generator()
            warm = epoch < cfg.warmup_epochs
            rounds = cfg.warmup_rounds if warm else cfg.rounds_per_epoch
            train_now = cfg.kd_during_warmup or not warm
            losses = state.losses
            for r in range(state.round, rounds):
                if tick():
                    state.stopped_by = "time_budget"
                    break
                round_started = time.perf_counter()
                kept = self.synthesize(adversarial=cfg.adv_weight > 0 and not warm, out_of_time=in_round)
                for k, v in kept.items():
                    losses.setdefault(k, []).append(v)
                state.round = r + 1
                if on_round:
                    on_round(RoundReport(epoch + 1, r + 1, rounds, kept, time.perf_counter() - round_started))
                if on_step:
                    on_step("synthesis", r + 1, rounds)
                if interrupted():
                    break
            if train_now and len(self.memory) and not state.stopped_by:
                for s in range(state.step, cfg.kd_steps):
                    if s % 10 == 0 and tick():
                        state.stopped_by = "time_budget"
                        break
                    losses.setdefault("loss_kd", []).append(self.kd_step())
                    state.step = s + 1
                    if on_step and (s + 1) % 10 == 0:
                        on_step("kd", s + 1, cfg.kd_steps)
                    if interrupted():
                        break
            if state.stopped_by == "interrupted" or (state.stopped_by and not losses):
                break
            state.epoch += 1
            state.round, state.step, state.losses = 0, 0, {}
            tick()
            epoch_end_started = time.perf_counter()
            if self.fit_epochs_to_clock and budget is not None and not state.stopped_by:
                cfg = self._fit_epochs(budget - state.elapsed - epoch_end, state.elapsed)
            report = EpochReport(
                epoch=state.epoch, wall_seconds=state.elapsed,
                losses={k: epoch_mean(v) for k, v in losses.items()},
                agreement=self.holdout_agreement() if self.dist.is_main else None, lr=self.learning_rate(),
                memory_size=len(self.memory), scheduled_epochs=cfg.epochs)
            if eval_data is not None:
                # Reported, never used to choose a model.
                report.student_accuracy = accuracy(self.student, *eval_data, device=self.device)
            state.history.append(report.as_row())
            if checkpoint:
                checkpoint(self)
            if on_epoch:
                on_epoch(report)
            epoch_end = time.perf_counter() - epoch_end_started
            if budget is None:
                started = time.perf_counter() - state.elapsed  # without a budget, elapsed is training time alone
        if state.stopped_by == "interrupted":
            tick()
            if checkpoint:
                checkpoint(self)
        self.student.eval()
        return state

    def _fit_epochs(self, seconds_left: float, elapsed: float) -> DistillConfig:
        """Set the epoch count to the epochs done plus as many as ``seconds_left`` holds at the mean pace of the
        epochs after the warm-up (every rank gets rank 0's count); the last one may be cut by the budget."""
        cfg, state = self.cfg, self.state
        normal = state.epoch - cfg.warmup_epochs
        if normal < 1:
            return cfg
        warmup_end = state.history[cfg.warmup_epochs - 1]["wall_seconds"] if cfg.warmup_epochs else 0.0
        pace = max(1e-6, (elapsed - warmup_end) / normal)
        epochs = float(state.epoch + max(0, round(seconds_left / pace)))
        if self.dist.enabled:
            epochs = self.dist.broadcast_float(epochs)
        if int(epochs) != cfg.epochs:
            self.cfg = cfg = replace(cfg, epochs=int(epochs))
            kd_epochs = cfg.epochs if cfg.kd_during_warmup else max(0, cfg.epochs - cfg.warmup_epochs)
            self.total_kd_steps = max(1, kd_epochs * cfg.kd_steps)
        return cfg

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
                    "stopped_by": self.state.stopped_by, "round": self.state.round, "step": self.state.step,
                    "losses": {k: [float(v) for v in vs] for k, vs in self.state.losses.items()}},
            "history": self.state.history,
            "nonfinite": dict(self.nonfinite),
            # fp16's loss scales and growth trackers: without them a resumed run skips other overflowing steps.
            "scalers": {"generator": self._g_scaler.state_dict() if self._g_scaler else None,
                        "kd": self._kd_scaler.state_dict() if self._kd_scaler else None},
            # The loop draws only from these (numpy's and Python's global generators are never used).
            "rng": {"engine": self.rng.get_state(), "torch": torch.get_rng_state(),
                    "cuda": torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None},
            "world_size": self.dist.world_size,
        }
        if self.dist.enabled:
            # Collective: every rank's own generator, BN-statistics state and random streams, on rank 0 (the
            # top-level "generator" is rank 0's). None on the other ranks, which write nothing.
            state["ranks"] = self.dist.gather_objects(self._rank_state())
        return state

    def _rank_state(self) -> dict[str, Any]:
        to_cpu = lambda tree: map_tensors(tree, lambda t: t.detach().cpu())
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
                              history=list(checkpoint["history"]), stopped_by=None, round=run.get("round", 0),
                              step=run.get("step", 0), losses={k: list(v) for k, v in run.get("losses", {}).items()})
        self.memory, self.holdout = memory, holdout
        self.nonfinite.update(checkpoint.get("nonfinite", {}))
        scalers = checkpoint.get("scalers") or {}
        for scaler, saved in ((self._g_scaler, scalers.get("generator")), (self._kd_scaler, scalers.get("kd"))):
            if scaler is not None and saved:  # resumed with another --amp: the new scaler starts afresh
                scaler.load_state_dict(saved)
        self.rng.set_state(checkpoint["rng"]["engine"])
        if self.dist.enabled:
            self.local_rng.set_state(own["local_rng"])
            torch.set_rng_state(own["torch"])
            if own.get("cuda") is not None and self.device.type == "cuda":
                torch.cuda.set_rng_state(own["cuda"], self.device)
        else:
            torch.set_rng_state(checkpoint["rng"]["torch"])
            if checkpoint["rng"].get("cuda") is not None and self.device.type == "cuda":
                torch.cuda.set_rng_state(checkpoint["rng"]["cuda"], self.device)
