"""Streaming one-step generation: first frame in, one latent frame out per action.

    gen = StreamingGenerator(model, batch=2, latent_hw=(12, 16), intrinsics=K, image_hw=(96, 128))
    gen.reset(first_latents)                 # (B, C, h, w): the users' images, encoded
    z = gen.step(actions)                    # (B, 6) relative camera poses -> (B, C, h, w)
    z = gen.step(actions, recycled=z_real)   # teacher forcing: condition on a given previous latent

Each step is one transformer evaluation at t = 1 (pure noise in, clean latent out:
x0 = eps - v for flow matching x_t = (1 - t) x0 + t eps). The latent it returns is the
recycled input of the next step. The KV cache has static shapes, so memory stays flat
for any number of steps. With a `reprojection` config, each generated latent is first blended
with the stream's reprojected anchor (`worldmodel.reproject`); the blend is what is returned
and recycled.

`autocast=torch.bfloat16` runs the transformer's linear layers in bfloat16 (`torch.autocast`; the
weights, the KV cache and the attention stay float32): on a CPU with AVX512-BF16 a batch of 64
streams steps about 1.5x faster, with rollouts within ~1e-3 of the latent variance of float32 over
32 steps (BENCHMARKS.md, "Throughput of the dream"). Off by default.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import numpy as np
import torch
from worldmodel.camera import frame_motions, normalize_camera, plucker_maps, rotation_warp_grid, step_poses
from worldmodel.config import CameraStats
from worldmodel.cuda_graph import GraphedStep
from worldmodel.dit import WorldDiT
from worldmodel.indexing import stream_indices
from worldmodel.reproject import ReprojectionConfig, ReprojectionMemory


def warp_grids(
    actions: np.ndarray, intrinsics: Sequence[float], image_hw: tuple[int, int], latent_hw: tuple[int, int]
) -> np.ndarray:
    """Where each latent cell of the new view was in the last one, per stream: actions (B, 6) or
    (B, fps, 6) -> sampling grids (B, 2, h, w) of the step's whole rotation (`camera.rotation_warp_grid`)."""
    R = step_poses(actions)[:, :3, :3]  # (B, 3, 3)
    return rotation_warp_grid(R, intrinsics, image_hw, latent_hw)


class StreamingGenerator:
    """A batch of independent streams over one model and one KV cache."""

    def __init__(
        self,
        model: WorldDiT,
        batch: int,
        latent_hw: tuple[int, int],
        intrinsics: Sequence[float] | None = None,
        image_hw: tuple[int, int] | None = None,
        camera_stats: CameraStats | None = None,
        window: int | None = None,
        context: torch.Tensor | None = None,
        seeds: Sequence[int] | None = None,
        cuda_graph: bool = False,
        reprojection: ReprojectionConfig | None = None,
        autocast: torch.dtype | None = None,
    ) -> None:
        self.model = model.eval()
        self.autocast = autocast
        """Lower-precision dtype for the eager transformer step (`torch.autocast`; not applied to a CUDA
        graph), or None: the weights' dtype."""
        self.cfg = model.cfg
        self.batch, self.latent_hw = batch, tuple(latent_hw)
        ref = next(model.parameters())
        self.device, self.dtype = ref.device, ref.dtype
        self.intrinsics, self.image_hw = intrinsics, image_hw
        self.camera_stats = camera_stats or CameraStats()
        self.cache = model.new_cache(batch, self.latent_hw, window, 0 if context is None else context.shape[1],
                                     graph_safe=cuda_graph)
        if context is not None:
            model.prefill_context(self.cache, context.to(self.device, self.dtype))
        # The transformer step replayed as one CUDA graph (captured on the first step).
        self.graphed = GraphedStep(model, self.cache) if cuda_graph else None
        C, (h, w) = self.cfg.latent_channels, self.latent_hw
        self.recycled = torch.zeros(batch, C, h, w, device=self.device, dtype=self.dtype)  # static
        self.rngs = [torch.Generator(device=self.device) for _ in range(batch)]
        self.seed(seeds if seeds is not None else range(batch))
        self.memory = None
        if reprojection is not None:
            if intrinsics is None or image_hw is None:
                raise ValueError("reprojection needs the generator's intrinsics and image_hw")
            self.memory = ReprojectionMemory(reprojection, batch, intrinsics, image_hw, self.latent_hw, C,
                                             self.device, self.dtype)

    def seed(self, seeds: Sequence[int], streams: Sequence[int] | None = None) -> None:
        """Seed the noise of some (default: all) streams."""
        for i, s in zip(stream_indices(streams, self.batch), seeds, strict=True):
            self.rngs[i].manual_seed(int(s))

    def reset(self, first_latent: torch.Tensor, streams: Sequence[int] | None = None) -> None:
        """Start streams from their first latent frame; first_latent is (len(streams) or B, C, h, w)."""
        idx = stream_indices(streams, self.batch)
        expect = (len(idx), self.cfg.latent_channels, *self.latent_hw)
        if tuple(first_latent.shape) != expect:
            raise ValueError(f"first latent has shape {tuple(first_latent.shape)}, expected {expect}")
        if not torch.isfinite(first_latent).all():
            raise ValueError("first latent contains NaN or inf")
        self.cache.reset(np.asarray(idx))
        self.recycled[idx] = first_latent.to(self.device, self.dtype)
        if self.memory is not None:
            self.memory.reset(first_latent, idx)

    def noise(self) -> torch.Tensor:
        """One standard-normal latent per stream, each from its own generator."""
        shape = (self.cfg.latent_channels, *self.latent_hw)
        return torch.stack([torch.randn(shape, generator=g, device=self.device, dtype=self.dtype) for g in self.rngs])

    def camera_maps(self, actions: np.ndarray) -> torch.Tensor:
        """Normalised camera channels for per-stream actions (B, 6) or (B, fps, 6) -> (B, Cc, h, w);
        with `recycle_warp` the model's input layout ends with the step's `warp_grid` (2 channels)."""
        if self.intrinsics is None or self.image_hw is None:
            raise ValueError("this generator was built without intrinsics/image_hw; pass camera maps to step_camera")
        actions = np.asarray(actions)
        if actions.shape[0] != self.batch:
            raise ValueError(f"got actions for {actions.shape[0]} streams, the generator has {self.batch}")
        motions = frame_motions(actions, self.cfg.frames_per_step)  # (B, fps, 4, 4)
        maps = plucker_maps(motions, self.intrinsics, self.image_hw, self.latent_hw)  # (B, fps, 6, h, w)
        maps = maps.reshape(len(actions), -1, *self.latent_hw)  # (B, 6*fps, h, w), as `camera.action_camera_maps`
        maps = normalize_camera(maps, self.camera_stats, self.intrinsics, self.image_hw)
        if self.cfg.recycle_warp:
            maps = np.concatenate([maps, warp_grids(actions, self.intrinsics, self.image_hw, self.latent_hw)], 1)
        return torch.from_numpy(maps).to(self.device, self.dtype)

    def warp_grid(self, actions: np.ndarray) -> torch.Tensor:
        """The sampling grid of each stream's step rotation (what `recycle_warp` resamples the recycled
        latent by): actions (B, 6) or (B, fps, 6) -> (B, 2, h, w) for `dit.warp_recycled`."""
        if self.intrinsics is None or self.image_hw is None:
            raise ValueError("this generator was built without intrinsics/image_hw, so it has no warp grid")
        grid = warp_grids(actions, self.intrinsics, self.image_hw, self.latent_hw)
        return torch.from_numpy(grid).to(self.device, self.dtype)

    @torch.no_grad()
    def step_camera(
        self, camera: torch.Tensor, noise: torch.Tensor | None = None, recycled: torch.Tensor | None = None
    ) -> torch.Tensor:
        """One transformer evaluation: camera channels (B, Cc, h, w) -> next latent (B, C, h, w).
        Camera maps carry no rotation to reproject by: with a reprojection memory, use `step`.
        `recycled` teacher-forces the step as in `step`."""
        if self.memory is not None:
            raise RuntimeError("this generator reprojects by the commanded rotation: call step(actions)")
        self._teacher_force(recycled)
        return self._check_finite(self._evaluate(camera, noise), camera)

    def _teacher_force(self, recycled: torch.Tensor | None) -> None:
        """Condition the coming step on a given previous latent (B, C, h, w) instead of the stream's own output."""
        if recycled is None:
            return
        if tuple(recycled.shape) != tuple(self.recycled.shape):
            raise ValueError(f"teacher-forced recycled latent has shape {tuple(recycled.shape)}, "
                             f"expected {tuple(self.recycled.shape)}")
        if not torch.isfinite(recycled).all():
            raise ValueError("teacher-forced recycled latent contains NaN or inf")
        self.recycled.copy_(recycled)
        if self.memory is not None:  # the given past is also what gets reprojected
            self.memory.reset(recycled)

    def _check_finite(self, z: torch.Tensor, camera: torch.Tensor) -> torch.Tensor:
        """Refuse a non-finite generated latent (B, C, h, w): decoded, it would be a silently black frame.
        One reduction per step; the diagnosis (camera input, then weights) runs only on failure."""
        if torch.isfinite(z).all():
            return z
        bad = (~torch.isfinite(z)).flatten(1).any(1).nonzero().flatten().tolist()
        steps = self.frames_generated[bad].tolist()
        where = f"the generated latent of streams {bad} contains NaN or inf at step {steps}"
        if not torch.isfinite(camera).all():
            raise FloatingPointError(
                f"{where}: its camera channels are non-finite. Check the intrinsics (fx, fy must be > 0, got "
                f"{self.intrinsics}) and the camera statistics (std > 0, got {self.camera_stats})")
        nan_weights = [n for n, p in self.model.named_parameters() if not torch.isfinite(p).all()]
        if nan_weights:
            raise FloatingPointError(
                f"{where}: the model has non-finite weights in {len(nan_weights)} tensors, e.g. {nan_weights[:3]}; "
                f"the checkpoint is broken (a diverged run or an overflowing float16 cast): retrain or re-export it")
        raise FloatingPointError(
            f"{where}: inputs and weights are finite, so the network overflowed; run in float32 and check the "
            f"recycled latents' scale (the VAE's latent statistics)")

    def _precision(self) -> contextlib.AbstractContextManager:
        """`torch.autocast` to `self.autocast` for the transformer step, or nothing."""
        if self.autocast is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast)

    def _evaluate(self, camera: torch.Tensor, noise: torch.Tensor | None) -> torch.Tensor:
        eps = self.noise() if noise is None else noise.to(self.device, self.dtype)
        camera = camera.to(self.device, self.dtype)
        if self.graphed is not None:
            v = self.graphed(eps, self.recycled, camera)
        else:
            with self._precision():
                v = self.model.forward_step(eps, self.recycled, camera, 1.0, self.cache)
        x0 = eps - v  # t = 1: x_t = eps, x0 = x_t - t * v
        self.recycled.copy_(x0)
        return x0.clone()

    @torch.no_grad()
    def step(
        self, actions: np.ndarray, noise: torch.Tensor | None = None, recycled: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Relative camera motions (B, 6) or (B, frames_per_step, 6) -> next latent per stream (B, C, h, w).

        `recycled` (B, C, h, w) teacher-forces the step: the model is conditioned on this previous
        latent (e.g. the real one) instead of its own last output, and the memory re-anchors on it.
        """
        actions = np.asarray(actions)
        camera = self.camera_maps(actions)
        self._teacher_force(recycled)
        z = self._evaluate(camera, noise)
        if self.memory is not None:
            z = self.memory.blend(z, step_poses(actions))
            self.recycled.copy_(z)
        return self._check_finite(z, camera)

    @property
    def held(self) -> np.ndarray:
        """(B,) bool: streams whose last step stood still and showed their previous latent again (memory only)."""
        if self.memory is None:
            return np.zeros(self.recycled.shape[0], bool)
        return self.memory.held.copy()

    @property
    def frames_generated(self) -> np.ndarray:
        """Latent frames evaluated per stream since its reset."""
        return self.cache.frames.copy()
