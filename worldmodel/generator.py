"""Streaming one-step generation: first frame in, one latent frame out per action.

    gen = StreamingGenerator(model, batch=2, latent_hw=(12, 16), intrinsics=K, image_hw=(96, 128))
    gen.reset(first_latents)                 # (B, C, h, w): the users' images, encoded
    z = gen.step(actions)                    # (B, 6) relative camera poses -> (B, C, h, w)

Each step is one transformer evaluation at t = 1 (pure noise in, clean latent out:
x0 = eps - v for flow matching x_t = (1 - t) x0 + t eps). The latent it returns is the
recycled input of the next step. The KV cache has static shapes, so memory stays flat
for any number of steps. With a `reprojection` config, each generated latent is first blended
with the stream's reprojected anchor (`worldmodel.reproject`); the blend is what is returned
and recycled.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from worldmodel.camera import action_camera_maps, integrate, normalize_camera, rotation_warp_grid, step_rotation
from worldmodel.config import CameraStats
from worldmodel.cuda_graph import GraphedStep
from worldmodel.dit import WorldDiT
from worldmodel.reproject import ReprojectionConfig, ReprojectionMemory


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
    ) -> None:
        self.model = model.eval()
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
        idx = range(self.batch) if streams is None else streams
        for i, s in zip(idx, seeds, strict=True):
            self.rngs[i].manual_seed(int(s))

    def reset(self, first_latent: torch.Tensor, streams: Sequence[int] | None = None) -> None:
        """Start streams from their first latent frame; first_latent is (len(streams) or B, C, h, w)."""
        idx = list(range(self.batch)) if streams is None else list(streams)
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
        """Normalised camera channels for per-stream actions (B, 6) or (B, fps, 6) -> (B, Cc, h, w)."""
        if self.intrinsics is None or self.image_hw is None:
            raise ValueError("this generator was built without intrinsics/image_hw; pass camera maps to step_camera")
        actions = np.asarray(actions)
        if actions.shape[0] != self.batch:
            raise ValueError(f"got actions for {actions.shape[0]} streams, the generator has {self.batch}")
        maps = np.stack([
            action_camera_maps(a, self.intrinsics, self.image_hw, self.latent_hw, self.cfg.frames_per_step)
            for a in actions
        ])
        maps = normalize_camera(maps, self.camera_stats, self.intrinsics, self.image_hw)
        if self.cfg.recycle_warp:
            R = np.stack([step_rotation(a) for a in actions])
            maps = np.concatenate([maps, rotation_warp_grid(R, self.intrinsics, self.image_hw, self.latent_hw)], 1)
        return torch.from_numpy(maps).to(self.device, self.dtype)

    @torch.no_grad()
    def step_camera(self, camera: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """One transformer evaluation: camera channels (B, Cc, h, w) -> next latent (B, C, h, w).
        Camera maps carry no rotation to reproject by: with a reprojection memory, use `step`."""
        if self.memory is not None:
            raise RuntimeError("this generator reprojects by the commanded rotation: call step(actions)")
        return self._evaluate(camera, noise)

    def _evaluate(self, camera: torch.Tensor, noise: torch.Tensor | None) -> torch.Tensor:
        eps = self.noise() if noise is None else noise.to(self.device, self.dtype)
        camera = camera.to(self.device, self.dtype)
        if self.graphed is not None:
            v = self.graphed(eps, self.recycled, camera)
        else:
            v = self.model.forward_step(eps, self.recycled, camera, 1.0, self.cache)
        x0 = eps - v  # t = 1: x_t = eps, x0 = x_t - t * v
        self.recycled.copy_(x0)
        return x0.clone()

    @torch.no_grad()
    def step(self, actions: np.ndarray, noise: torch.Tensor | None = None) -> torch.Tensor:
        """Relative camera motions (B, 6) or (B, frames_per_step, 6) -> next latent per stream."""
        actions = np.asarray(actions)
        z = self._evaluate(self.camera_maps(actions), noise)
        if self.memory is not None:
            z = self.memory.blend(z, np.stack([integrate(np.eye(4), a) for a in actions]))
            self.recycled.copy_(z)
        return z

    @property
    def frames_generated(self) -> np.ndarray:
        """Latent frames evaluated per stream since its reset."""
        return self.cache.frames.copy()
