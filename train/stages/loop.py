"""The one training loop, and the base of the three post-training stages.

`TrainingLoop` is the loop the VAE phases (train/vae.py) and the stages run in: the run_dir
lock and the refusal to overwrite a run, exact resume (refused when the settings changed),
the step loop, metrics (JSONL + TensorBoard), a tqdm bar, atomic training states every
`ckpt_every` steps and when the run stops, `stop_after`, and stopping on SIGINT/SIGTERM.
A state is only ever saved at a step boundary: a signal is acted on between steps, and an
exception inside a step saves nothing (the last saved state is an exact one).

A stage subclasses `Stage`, builds its models/optimizers in `build()` and implements
`train_step(batch, step) -> metrics`, calling `self.update(...)` for each optimizer step.
`Stage` adds distributed init (rank 0 logs), seeds, the curriculum data stream, bf16
autocast on CUDA, the NaN/inf guard (raises before the optimizer touches the weights) and
mp4 samples.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import signal
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from train.common import (
    ConfigError,
    Interrupted,
    MetricsLogger,
    StopSignals,
    check_finite,
    claim_run_dir,
    config_changes,
    previous_path,
    progress,
    read_training_state,
    restore_training_state,
    save_training_state,
    seed_everything,
)
from train.distributed import DistInfo, init_distributed
from train.sharded_state import gather_states, scatter_states, unsharded_copy
from train.latents import load_frozen_vae
from train.rollout import sample_rollout
from train.stages.config import LoopConf, TrainConfig, retired_settings
from train.stages.data import ClipStream
from worldmodel.checkpoint import CheckpointError, load_meta, load_modules, save_world_model
from worldmodel.config import CameraStats, DiTConfig, model_config
from worldmodel.dit import WorldDiT
from worldmodel.flow import consistency_grid
from worldmodel.parallel import build_mesh, data_parallel_rank, parallelize, reshard
from worldmodel.threads import use_threads
from worldmodel.world import video_to_uint8

log = logging.getLogger(__name__)


class TrainingLoop:
    """The one training loop. A subclass builds its models, optimizers and data in `__init__`
    and implements `total_steps`, `next_batch`, `batch_size`, `train_step`, `state_parts` and `restore`."""

    name = "loop"

    def __init__(self, cfg: LoopConf, run_dir: str | Path) -> None:
        self.cfg = cfg
        use_threads(cfg.threads)
        self.run_dir = Path(run_dir)
        self.state_path = self.run_dir / "state.safetensors"
        self.models: dict[str, nn.Module] = {}
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        self.step = 0
        self.saved_step: int | None = None  # the step the state file holds: never written twice
        self.evals: dict[int, dict[str, float]] = {}  # on_checkpoint metrics by step
        self.logger: MetricsLogger | None = None  # open while `run` runs, on the main rank
        self.is_main = True  # the rank that logs and writes files
        self.evaluates = True  # this rank takes part in evaluations, samples and exports

    # ---- to implement ---------------------------------------------------------------------

    @property
    def total_steps(self) -> int:
        """The step this run trains to."""
        raise NotImplementedError

    def next_batch(self) -> Any:
        """The batch of step `self.step` (advances the data stream)."""
        raise NotImplementedError

    def batch_size(self, batch: Any) -> int:
        """Clips in a batch (for the clips/s on the progress bar)."""
        raise NotImplementedError

    def train_step(self, batch: Any, step: int) -> dict[str, float]:
        """One training iteration; returns scalar metrics."""
        raise NotImplementedError

    def state_parts(self) -> tuple[dict, dict, dict[str, torch.Generator], dict[str, Any]] | None:
        """(models, optimizers, generators, JSON extra) to save; None on ranks that do not write."""
        raise NotImplementedError

    def restore(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        """Load a read training state into the models, optimizers, generators and data position."""
        raise NotImplementedError

    def export(self, summary: dict[str, Any]) -> None:
        """What a run leaves behind once every step is done (weights, evaluations); may add to `summary`."""

    def iteration(self, batch: Any) -> dict[str, float]:
        """`train_step` in the training context (model modes, autocast)."""
        return self.train_step(batch, self.step)

    def on_checkpoint(self, step: int) -> dict[str, float]:
        """Extra metrics at each checkpoint (e.g. distillation gap); default none."""
        return {}

    def after_step(self) -> None:
        """Anything due after a step on its own schedule (e.g. sample videos); default nothing."""

    def any_rank(self, flag: bool) -> bool:
        """True when `flag` is set on any rank (a collective when distributed)."""
        return flag

    # ---- the loop -------------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        """Train to `total_steps` (or `stop_after` more steps); returns a summary.

        SIGINT/SIGTERM stop the run at the next step boundary, save its state and raise
        `Interrupted`; a second signal aborts at once. Any other exception saves nothing.
        """
        with self.claimed_run_dir():
            self.resume()
            start, t0 = self.step, time.perf_counter()
            self.logger = MetricsLogger(self.run_dir, resume_step=start if self.cfg.resume else None) if self.is_main else None
            try:
                first, last, signum = self.train_steps(start, t0)
                if signum is not None:
                    raise Interrupted(signum, f"{signal.Signals(signum).name}: stopped after step {self.step}, saved "
                                              f"to {self.state_path}; continue with resume=true")
                summary: dict[str, Any] = {"stage": self.name, "steps": self.step, "steps_this_run": self.step - start,
                                           "stopped_early": self.step < self.total_steps,
                                           "wall_s": time.perf_counter() - t0, "first": first, "last": last}
                if not summary["stopped_early"]:
                    self.export(summary)
            finally:
                if self.logger is not None:
                    self.logger.close()
        if self.is_main:
            (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
        return summary

    def train_steps(self, start: int, t0: float) -> tuple[dict[str, float], dict[str, float], int | None]:
        """Steps until the end, `stop_after` or a signal, then save the state; returns the first and
        last step's metrics and the signal that stopped the run (None if none did)."""
        cfg, stopped_by = self.cfg, None
        first: dict[str, float] = {}
        last: dict[str, float] = {}
        bar = progress(self.total_steps, start, desc=self.name) if self.is_main and cfg.progress_bar else None
        with StopSignals() as signals:
            try:
                if self.evaluates and start == 0:
                    self.evaluate()
                while self.step < self.total_steps:
                    batch = self.next_batch()
                    last = self.iteration(batch)
                    self.step += 1  # a step boundary: from here on the state is whole again
                    first = first or last
                    self.report(last, self.batch_size(batch), start, t0, bar)
                    if self.step % cfg.ckpt_every == 0:
                        self.save_state()
                        if self.evaluates:
                            self.evaluate()
                    self.after_step()
                    if self.any_rank(signals.received is not None):  # every rank stops after the same step
                        stopped_by = signals.received or signal.SIGTERM
                        break
                    if self.step - start == cfg.stop_after:
                        break
                self.save_state()
            finally:
                if bar is not None:
                    bar.close()
        return first, last, stopped_by

    def report(self, metrics: dict[str, float], clips: int, start: int, t0: float, bar: Any) -> None:
        """Log a step's metrics every `log_every` steps (and the last) and move the progress bar."""
        rate = (self.step - start) / (time.perf_counter() - t0)
        if self.logger is not None and (self.step % self.cfg.log_every == 0 or self.step == self.total_steps):
            self.logger.log(self.step, {**metrics, "steps_per_s": rate})
        if bar is not None:
            bar.update(1)
            key = next(iter(metrics))
            bar.set_postfix({key: f"{metrics[key]:.4f}", "clips/s": f"{rate * clips:.2f}"})

    def evaluate(self) -> None:
        """Run `on_checkpoint` at the current step, log (main rank) and remember its metrics."""
        metrics = self.on_checkpoint(self.step)
        if metrics:
            self.evals[self.step] = metrics
            if self.logger is not None:
                self.logger.log(self.step, metrics)

    def guard(self, losses: dict[str, torch.Tensor]) -> None:
        """NaN/inf guard: raise before any weight changes; the last good checkpoint stays."""
        check_finite(self.step, losses, self.state_path if self.state_path.exists() else None)

    # ---- run_dir and state -----------------------------------------------------------------------

    @contextlib.contextmanager
    def claimed_run_dir(self) -> Iterator[None]:
        """Hold run_dir for this run; refuse one another run holds, or a used one without resume=true.
        The main rank holds the lock; when it refuses, every rank stops."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with contextlib.ExitStack() as hold:
            refused = None
            if self.is_main:
                run_files = (self.state_path.name, previous_path(self.state_path).name, "metrics.jsonl")
                try:
                    hold.enter_context(claim_run_dir(self.run_dir, self.cfg.resume, run_files))
                except ConfigError as e:
                    refused = e
            if self.any_rank(refused is not None):
                raise refused or ConfigError(f"rank 0 refused run_dir={self.run_dir}; see its error")
            yield

    def save_state(self) -> None:
        """Write the training state of this step boundary (atomic; the previous file is kept)."""
        if self.saved_step == self.step:
            return
        parts = self.state_parts()
        if parts is not None:
            models, optimizers, generators, extra = parts
            save_training_state(self.state_path, self.step, models, optimizers, generators,
                                extra={**extra, "stage": self.name, "config": dataclasses.asdict(self.cfg)})
        self.saved_step = self.step

    def resume(self) -> None:
        """With resume=true, continue from <run_dir>/state.safetensors (or its previous copy) if there is one."""
        if not (self.cfg.resume and (self.state_path.exists() or previous_path(self.state_path).exists())):
            return
        tensors, meta = read_training_state(self.state_path)
        extra = meta["extra"]
        if extra.get("stage", self.name) != self.name:
            raise CheckpointError(f"{self.state_path} holds a {extra.get('stage')!r} run, not {self.name!r}; "
                                  f"use another run_dir")
        retired = retired_settings(extra.get("config") or {})
        if retired:
            raise ConfigError(f"{self.state_path} was trained with options retired on 2026-12-02 "
                              f"({', '.join(retired)}; docs/design.md, 'Retired options') and would train differently "
                              f"without them; start a new run_dir, or resume it from a checkout before the retirement")
        allowed = (*self.cfg.FREE, *self.cfg.resume_changes)
        changed = config_changes(extra.get("config") or {}, self.cfg, allowed)
        if changed:
            diff = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in changed.items())
            raise ConfigError(f"{self.state_path} was trained with other settings ({diff}); resume with the saved "
                              f"values, or accept the change with resume_changes=[{','.join(changed)}]")
        self.restore(tensors, meta)
        self.step = self.saved_step = int(meta["step"])
        if self.is_main:
            print(f"resumed {self.name} from {self.state_path} at step {self.step}")


class Stage(TrainingLoop):
    """Base class of the three post-training stages."""

    name = "stage"

    def __init__(self, cfg: TrainConfig) -> None:
        super().__init__(cfg, cfg.run_dir)
        self.dist: DistInfo = init_distributed(device=None if cfg.device == "auto" else cfg.device)
        self.device = self.dist.device
        # FSDP2 / context parallelism over a (dp_shard, cp) mesh; None = one process or plain data parallel.
        self.mesh = build_mesh(cfg.parallel.dp_shard, cfg.parallel.cp, self.device.type) if cfg.parallel.fsdp else None
        self.sharded = self.mesh is not None
        # Ranks of one context-parallel group see the same clips and the same noise.
        self.data_rank, self.data_world = (data_parallel_rank(self.mesh) if self.sharded
                                           else (self.dist.rank, self.dist.world_size))
        self.is_main = self.dist.is_main
        self.evaluates = self.dist.is_main or self.sharded  # sharded models need every rank in each forward
        seed_everything(cfg.seed, deterministic=cfg.deterministic)  # same init on every rank
        self.vae = load_frozen_vae(cfg.data.vae, self.device)
        self.model_cfg = model_config(cfg.model.size, **dict(cfg.model.overrides))
        if self.vae.cfg.latent_channels != self.model_cfg.latent_channels:
            raise ValueError(f"VAE has {self.vae.cfg.latent_channels} latent channels, model expects "
                             f"{self.model_cfg.latent_channels}; set model.overrides.latent_channels")
        # Later stages keep the camera normalisation the model was trained with, even if the data grew since.
        stats = None
        if cfg.stage.init:
            saved = load_meta(cfg.stage.init).get("camera_stats")  # the weights are read by new_model
            stats = CameraStats(**saved) if saved else None
            if stats is not None and cfg.data.camera_reference not in (None, stats.reference):
                log.warning("data.camera_reference=%s but %s was trained with %r: measuring new camera statistics",
                            cfg.data.camera_reference, cfg.stage.init, stats.reference)
                stats = None
        self.stream = ClipStream(cfg.data, self.vae, self.model_cfg.frames_per_step, cfg.seed, self.device,
                                 stats=stats, rank=self.data_rank, world_size=self.data_world,
                                 warp=self.model_cfg.recycle_warp)
        self.camera_stats = self.stream.dataset(0).stats
        # Noise and timesteps differ per rank; the global RNG (model init) does not.
        self.noise_gen = torch.Generator(self.device).manual_seed(cfg.seed * 1009 + self.data_rank)
        self.build()

    # ---- to implement ---------------------------------------------------------------------

    def build(self) -> None:
        """Create `self.models` / `self.optimizers` (and anything else the stage needs)."""
        raise NotImplementedError

    @property
    def generator(self) -> WorldDiT:
        """The model whose weights are the stage's output."""
        raise NotImplementedError

    def finish(self, summary: dict[str, Any]) -> None:
        """Stage-specific exports after the last step."""

    # ---- helpers ----------------------------------------------------------------------------

    def new_model(
        self, init: str = "", logit_head: bool = False, allow_missing: tuple[str, ...] = (), zero: int | None = None
    ) -> WorldDiT:
        """A WorldDiT of the configured size on this device, optionally loaded from a checkpoint.

        With `parallel.fsdp` it is sharded (ZeRO stage `zero`, default `parallel.zero`), with
        context parallelism when `parallel.cp > 1`; activation checkpointing and compile apply
        in one process too.
        """
        cfg: DiTConfig = dataclasses.replace(self.model_cfg, logit_head=logit_head)
        if init:  # parameters under `allow_missing` may be absent from the file and stay fresh
            model = load_modules(init, {"dit": lambda: WorldDiT(cfg)}, self.device, allow_missing)[0]["dit"]
        else:
            model = WorldDiT(cfg).to(self.device)
        pc = self.cfg.parallel
        if self.sharded or pc.activation_checkpointing or pc.compile:
            parallelize(model, pc.for_model(zero), self.mesh)
        return model

    def exportable(self, model: WorldDiT) -> WorldDiT | None:
        """The model as a plain module for single-file exports: itself, or (sharded, a collective)
        an unsharded CPU copy on rank 0 and None on the other ranks."""
        if not self.sharded:
            return model
        return unsharded_copy(model, lambda: WorldDiT(model.cfg))

    def randn(self, shape: torch.Size | tuple[int, ...]) -> torch.Tensor:
        """Standard normal noise from the stage's (checkpointed) generator."""
        return torch.randn(shape, generator=self.noise_gen, device=self.device)

    def rand(self, n: int) -> torch.Tensor:
        """U(0, 1) samples from the stage's generator."""
        return torch.rand(n, generator=self.noise_gen, device=self.device)

    def autocast(self):
        """bf16 autocast on CUDA when enabled; nothing on CPU."""
        if self.device.type == "cuda" and self.cfg.bf16:
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def update(self, opt: torch.optim.Optimizer, model: nn.Module) -> float:
        """Average gradients over ranks, clip, step and clear; returns the gradient norm."""
        params = [p for p in model.parameters() if p.grad is not None]
        if self.dist.world_size > 1 and not self.sharded:
            # Plain data parallel; under FSDP2 backward already reduce-scattered (averaged) the gradients.
            for p in params:
                torch.distributed.all_reduce(p.grad, op=torch.distributed.ReduceOp.AVG)
        clip = self.cfg.stage.grad_clip
        norm = torch.nn.utils.clip_grad_norm_(params, clip if clip > 0 else float("inf"))
        norm = norm.full_tensor() if hasattr(norm, "full_tensor") else norm  # a DTensor under FSDP2
        if not torch.isfinite(norm):
            self.guard({"grad_norm": norm})
        opt.step()
        opt.zero_grad(set_to_none=True)
        return float(norm)

    # ---- state --------------------------------------------------------------------------------

    def noise_key(self, rank: int) -> str:
        """Name of a rank's noise generator in the training state ('noise' on rank 0, as in one process)."""
        return "noise" if rank == 0 else f"noise.rank{rank}"

    def state_parts(self) -> tuple[dict, dict, dict[str, torch.Generator], dict[str, Any]] | None:
        """Models, optimizers, every rank's noise generator and data position (a collective when distributed).

        Rank 0 writes one file; under FSDP2 the ranks first gather full state dicts to it.
        """
        models, optimizers = gather_states(self.models, self.optimizers) if self.sharded else (self.models, self.optimizers)
        mine = (self.noise_gen.get_state(), self.stream.state())
        per_rank = [mine]
        if self.dist.world_size > 1:
            per_rank = [None] * self.dist.world_size
            torch.distributed.all_gather_object(per_rank, mine)
        if not self.dist.is_main:
            return None
        gens = {}
        for r, (noise, _) in enumerate(per_rank):
            gens[self.noise_key(r)] = g = torch.Generator(self.device)
            g.set_state(noise)
        extra = {"data_ranks": [d for _, d in per_rank], "world_size": self.dist.world_size, "sharded": self.sharded}
        return models, optimizers, gens, extra

    def restore(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        """This rank's part of a stage's training state (FSDP2: every rank keeps its own shards)."""
        extra = meta["extra"]
        saved = (extra.get("world_size", 1), extra.get("sharded", False))
        if saved != (self.dist.world_size, self.sharded):
            raise CheckpointError(
                f"{self.state_path} was saved by {saved[0]} rank(s) with parallel.fsdp={saved[1]}; resume with "
                f"the same torchrun --nproc_per_node and parallel.fsdp (this job: {self.dist.world_size}, "
                f"{self.sharded}), or start a new run from its exported weights with stage.init")
        load_full = partial(scatter_states, self.models, self.optimizers) if self.sharded else None
        restore_training_state(tensors, meta, self.state_path, self.models, self.optimizers,
                               {self.noise_key(self.dist.rank): self.noise_gen}, load_full=load_full)
        # States written before "data_ranks" existed hold one data position, "data".
        self.stream.load_state(extra.get("data_ranks", [extra.get("data")])[self.dist.rank])

    # ---- samples --------------------------------------------------------------------------------

    def fixed_clips(self, n: int) -> dict[str, Any]:
        """n deterministic validation clips (training clips when there is no validation split)."""
        for split in ("val", "train"):
            try:
                s = ClipStream(self.cfg.data, self.vae, self.model_cfg.frames_per_step, 0, self.device,
                               stats=self.camera_stats, split=split, warp=self.model_cfg.recycle_warp)
                ds = s.dataset(0)
            except ValueError:
                continue
            k = min(k for k, w in ds.windows.items() if w)
            wins = ds.windows[k]
            pick = np.linspace(0, len(wins) - 1, min(n, len(wins))).round().astype(int)
            return s.items(ds, [(*wins[j], k, 0) for j in pick])
        raise ValueError(f"no clips in {self.cfg.data.root} for samples/evaluation")

    @torch.no_grad()
    def write_sample(self, tag: str) -> Path | None:
        """mp4 of ground truth (left) next to an autoregressive rollout (right) from validation first frames."""
        if not (self.dist.is_main or self.sharded) or not self.cfg.sample_frames:  # sharded: every rank forwards
            return None
        import imageio.v2 as imageio

        clips = self.fixed_clips(2)
        z, cam = clips["latents"], clips["camera"]
        n = min(self.cfg.sample_frames, cam.shape[1])
        steps = self.cfg.sample_steps if self.name == "diffusion" else 1
        grid = consistency_grid(steps, self.cfg.stage.shift)
        gen = torch.Generator(self.device).manual_seed(1234)
        model = self.generator
        was_training = model.training
        fake = sample_rollout(model.eval(), z[:, 0], cam[:, :n], grid, gen)  # (B, 1+n, C, h, w)
        model.train(was_training)
        if not self.dist.is_main:
            return None
        real = self.vae.decode(z[:, : n + 1], light=True)
        video = torch.cat([real, self.vae.decode(fake, light=True)], dim=-1)  # side by side
        frames = video_to_uint8(video)  # (B, T, H, 2W, 3)
        frames = np.concatenate(list(frames), axis=1)  # streams stacked vertically
        path = self.run_dir / "samples" / f"{tag}.mp4"
        path.parent.mkdir(parents=True, exist_ok=True)
        imageio.mimwrite(path, list(frames), fps=8, macro_block_size=1)
        return path

    # ---- outputs -----------------------------------------------------------------------------------

    def save_weights(self) -> None:
        """The stage's output weights (DiT + camera stats) for the next stage; rank 0 writes."""
        model = self.exportable(self.generator)
        if self.dist.is_main:
            save_world_model(self.cfg.out, model, model.cfg, self.camera_stats,
                             extra_meta={"stage": self.name, "steps": self.step})

    # ---- the stage in the loop ------------------------------------------------------------------

    @property
    def total_steps(self) -> int:
        return self.cfg.stage.steps

    def next_batch(self) -> dict[str, Any]:
        return self.stream.next(self.step)

    def batch_size(self, batch: dict[str, Any]) -> int:
        return len(batch["keys"])

    def iteration(self, batch: dict[str, Any]) -> dict[str, float]:
        for m in self.models.values():
            m.train()
            reshard(m)  # parameters gathered by a no_grad eval must not serve training (FSDP2)
        with self.autocast():
            return self.train_step(batch, self.step)

    def after_step(self) -> None:
        if self.evaluates and self.cfg.sample_every and self.step % self.cfg.sample_every == 0:
            self.write_sample(f"step{self.step:07d}")

    def any_rank(self, flag: bool) -> bool:
        if self.dist.world_size == 1:
            return flag
        t = torch.tensor(float(flag), device=self.device)
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
        return bool(t.item())

    def export(self, summary: dict[str, Any]) -> None:
        """Output weights, final evaluation, sample video and the stage's own exports (`finish`)."""
        self.save_weights()
        if not self.evaluates:
            return
        if self.step not in self.evals:
            self.evaluate()
        summary["evals"] = self.evals
        sample = self.write_sample("final")
        if sample is not None:
            summary["sample"] = str(sample)
        self.finish(summary)
        summary["out"] = self.cfg.out
