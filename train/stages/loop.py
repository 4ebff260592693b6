"""The loop every stage shares: setup, exact resume, guarded updates, logging, samples, final weights.

A stage subclasses `Stage`, builds its models/optimizers in `build()` and implements
`train_step(batch, step) -> metrics`, calling `self.update(...)` for each optimizer step.
Everything else lives here: distributed init (rank 0 logs), seeds, the curriculum data
stream, bf16 autocast on CUDA, the NaN/inf guard (raises before the optimizer touches the
weights, leaving the last good checkpoint as it is), atomic training states every
`ckpt_every` steps and at exit, metrics (JSONL + TensorBoard), a tqdm bar, and mp4 samples.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import time
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from train.common import (
    MetricsLogger,
    NonFiniteLossError,
    check_finite,
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
from train.stages.config import TrainConfig
from train.stages.data import ClipStream
from worldmodel.checkpoint import CheckpointError, load_checkpoint, load_meta, save_world_model, subset
from worldmodel.config import CameraStats, DiTConfig, model_config
from worldmodel.dit import WorldDiT
from worldmodel.flow import consistency_grid
from worldmodel.parallel import build_mesh, data_parallel_rank, parallelize, reshard
from worldmodel.world import video_to_uint8

log = logging.getLogger(__name__)


def load_dit_weights(model: WorldDiT, path: str | Path, allow_missing: tuple[str, ...] = ()) -> None:
    """Load `dit.*` weights of a stage checkpoint; keys under `allow_missing` prefixes may stay fresh."""
    tensors, _ = load_checkpoint(path, next(model.parameters()).device)
    state = subset(tensors, "dit")
    own = model.state_dict()
    missing = sorted(k for k in set(own) - set(state) if not k.startswith(allow_missing))
    unexpected = sorted(set(state) - set(own))
    shapes = [k for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        raise CheckpointError(
            f"{path} does not fit this model: missing {missing[:6]}, unexpected {unexpected[:6]}, shape mismatch "
            f"{shapes[:6]}; was it trained with the same model= config?"
        )
    model.load_state_dict(state, strict=False)


class Stage:
    """Base class of the three post-training stages."""

    name = "stage"

    def __init__(self, cfg: TrainConfig) -> None:
        self.cfg = cfg
        torch.set_num_threads(cfg.threads)
        self.dist: DistInfo = init_distributed(device=None if cfg.device == "auto" else cfg.device)
        self.device = self.dist.device
        # FSDP2 / context parallelism over a (dp_shard, cp) mesh; None = one process or plain data parallel.
        self.mesh = build_mesh(cfg.parallel.dp_shard, cfg.parallel.cp, self.device.type) if cfg.parallel.fsdp else None
        self.sharded = self.mesh is not None
        # Ranks of one context-parallel group see the same clips and the same noise.
        self.data_rank, self.data_world = (data_parallel_rank(self.mesh) if self.sharded
                                           else (self.dist.rank, self.dist.world_size))
        seed_everything(cfg.seed, deterministic=cfg.deterministic)  # same init on every rank
        self.run_dir = Path(cfg.run_dir)
        self.state_path = self.run_dir / "state.safetensors"
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
        self.models: dict[str, nn.Module] = {}
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        self.build()
        self.step = 0

    # ---- to implement ---------------------------------------------------------------------

    def build(self) -> None:
        """Create `self.models` / `self.optimizers` (and anything else the stage needs)."""
        raise NotImplementedError

    def train_step(self, batch: dict[str, Any], step: int) -> dict[str, float]:
        """One training iteration; returns scalar metrics."""
        raise NotImplementedError

    @property
    def generator(self) -> WorldDiT:
        """The model whose weights are the stage's output."""
        raise NotImplementedError

    def on_checkpoint(self, step: int) -> dict[str, float]:
        """Extra metrics at each checkpoint (e.g. distillation gap); default none."""
        return {}

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
        model = WorldDiT(cfg).to(self.device)
        if init:
            load_dit_weights(model, init, allow_missing)
        pc = self.cfg.parallel
        if self.sharded or pc.activation_checkpointing or pc.compile:
            parallelize(model, pc.for_model(zero), self.mesh)
        return model

    def exportable(self, model: WorldDiT) -> WorldDiT | None:
        """The model as a plain module for single-file exports: itself, or (sharded, a collective)
        an unsharded CPU copy on rank 0 and None on the other ranks."""
        if not self.sharded:
            return model
        cfg = dataclasses.replace(model.cfg, checkpoint_activations=self.model_cfg.checkpoint_activations)
        return unsharded_copy(model, lambda: WorldDiT(cfg))

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

    def guard(self, losses: dict[str, torch.Tensor]) -> None:
        """NaN/inf guard: raise before any weight changes; the last good checkpoint stays."""
        check_finite(self.step, losses, self.state_path if self.state_path.exists() else None)

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

    def save_state(self) -> None:
        """Atomic training state (models, optimizers, step, RNGs, every rank's noise and data position).

        Rank 0 writes one file; under FSDP2 the ranks first gather full state dicts to it.
        """
        models, optimizers = gather_states(self.models, self.optimizers) if self.sharded else (self.models, self.optimizers)
        mine = (self.noise_gen.get_state(), self.stream.state())
        per_rank = [mine]
        if self.dist.world_size > 1:
            per_rank = [None] * self.dist.world_size
            torch.distributed.all_gather_object(per_rank, mine)
        if self.dist.is_main:
            gens = {}
            for r, (noise, _) in enumerate(per_rank):
                gens[self.noise_key(r)] = g = torch.Generator(self.device)
                g.set_state(noise)
            save_training_state(self.state_path, self.step, models, optimizers, gens,
                                extra={"data_ranks": [d for _, d in per_rank], "world_size": self.dist.world_size,
                                       "sharded": self.sharded, "stage": self.name,
                                       "config": dataclasses.asdict(self.cfg)})

    def resume(self) -> None:
        """Load <run_dir>/state.safetensors (or its previous copy) when resuming."""
        if self.cfg.resume and (self.state_path.exists() or previous_path(self.state_path).exists()):
            tensors, meta = read_training_state(self.state_path)
            extra = meta["extra"]
            if extra.get("stage") != self.name:
                raise CheckpointError(f"{self.state_path} holds a {extra.get('stage')!r} run, not {self.name!r}; "
                                      f"use another run_dir")
            saved = (extra.get("world_size", 1), extra.get("sharded", False))
            if saved != (self.dist.world_size, self.sharded):
                raise CheckpointError(
                    f"{self.state_path} was saved by {saved[0]} rank(s) with parallel.fsdp={saved[1]}; resume with "
                    f"the same torchrun --nproc_per_node and parallel.fsdp (this job: {self.dist.world_size}, "
                    f"{self.sharded}), or start a new run from its exported weights with stage.init")
            load_full = partial(scatter_states, self.models, self.optimizers) if self.sharded else None
            restore_training_state(tensors, meta, self.state_path, self.models, self.optimizers,
                                   {self.noise_key(self.dist.rank): self.noise_gen}, load_full=load_full)
            self.step = int(meta["step"])
            # States written before "data_ranks" existed hold one data position, "data".
            self.stream.load_state(extra.get("data_ranks", [extra.get("data")])[self.dist.rank])
            if self.dist.is_main:
                print(f"resumed {self.name} from {self.state_path} at step {self.step}")

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

    # ---- the loop -------------------------------------------------------------------------------

    def save_weights(self) -> None:
        """The stage's output weights (DiT + camera stats) for the next stage; rank 0 writes."""
        model = self.exportable(self.generator)
        if self.dist.is_main:
            save_world_model(self.cfg.out, model, model.cfg, self.camera_stats,
                             extra_meta={"stage": self.name, "steps": self.step})

    def evaluate(self, logger: MetricsLogger | None) -> None:
        """Run `on_checkpoint` at the current step, log (rank 0) and remember its metrics."""
        metrics = self.on_checkpoint(self.step)
        if metrics:
            self.evals[self.step] = metrics
            if logger is not None:
                logger.log(self.step, metrics)

    def run(self) -> dict[str, Any]:
        """Train to `stage.steps` (or `stop_after` more steps); returns a summary."""
        cfg = self.cfg
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.resume()
        start = self.step
        main = self.dist.is_main
        every = main or self.sharded  # sharded models need every rank in each forward (evals, samples, exports)
        logger = MetricsLogger(self.run_dir, resume_step=self.step if cfg.resume else None) if main else None
        self.evals: dict[int, dict[str, float]] = {}
        if every and start == 0:
            self.evaluate(logger)
        bar = progress(cfg.stage.steps, self.step, desc=self.name) if main and cfg.progress_bar else None
        t0, first_loss, last = time.perf_counter(), None, {}
        try:
            while self.step < cfg.stage.steps:
                batch = self.stream.next(self.step)
                for m in self.models.values():
                    m.train()
                    reshard(m)  # parameters gathered by a no_grad eval must not serve training (FSDP2)
                with self.autocast():
                    metrics = self.train_step(batch, self.step)
                self.step += 1
                first_loss = metrics if first_loss is None else first_loss
                last = metrics
                if main and (self.step % cfg.log_every == 0 or self.step == cfg.stage.steps):
                    logger.log(self.step, {**metrics, "steps_per_s": (self.step - start) / (time.perf_counter() - t0)})
                if bar is not None:
                    bar.update(1)
                    key = next(iter(metrics))
                    bar.set_postfix({key: f"{metrics[key]:.4f}",
                                     "clips/s": f"{(self.step - start) * len(batch['keys']) / (time.perf_counter() - t0):.2f}"})
                if self.step % cfg.ckpt_every == 0:
                    self.save_state()
                    if every:
                        self.evaluate(logger)
                if every and cfg.sample_every and self.step % cfg.sample_every == 0:
                    self.write_sample(f"step{self.step:07d}")
                if cfg.stop_after and self.step - start >= cfg.stop_after:
                    break
        except NonFiniteLossError:
            raise  # the last good training state stays untouched
        except BaseException:
            self.save_state()  # interrupted: keep what was learned, resumable
            raise
        finally:
            if bar is not None:
                bar.close()
        self.save_state()
        summary: dict[str, Any] = {"stage": self.name, "steps": self.step, "steps_this_run": self.step - start,
                                   "wall_s": time.perf_counter() - t0, "first": first_loss, "last": last}
        if self.step >= cfg.stage.steps:
            self.save_weights()
            if every:
                if self.step not in self.evals:
                    self.evaluate(logger)
                summary["evals"] = self.evals
                sample = self.write_sample("final")
                if sample is not None:
                    summary["sample"] = str(sample)
                self.finish(summary)
                summary["out"] = cfg.out
        if logger is not None:
            logger.close()
            (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
        return summary
