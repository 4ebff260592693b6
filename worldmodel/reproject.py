"""Reprojection memory: keep what the camera still sees where the commanded rotation puts it.

Our small one-step generator turns the picture less than it is told and smears it; the
commanded rotation, though, says exactly where every cell of an earlier latent lands in the new
view (translation would need depth, which a latent does not carry). This memory keeps an
*anchor* latent per stream and the camera motion since it. Each step that turns the camera by
`min_turn` or more, it resamples the anchor into the new view once (`camera.rotation_warp_grid`;
once from the anchor, not once per step, so resampling blur does not pile up) and blends it
with the network's latent:

    m = coverage ** mask_power * keep            # coverage: how much of a cell the anchor still sees
    z = m * reprojected_anchor + (1 - m) * generated

The network paints what comes into view; the rest turns with the camera. A stream's first step,
and a step that turns by less than `min_turn` (walking, mostly), show the network's latent as it
is, and that latent becomes the anchor: the first image's latent encodes one frame where a step's
encodes four (reprojected, it decodes darker), and rotation says nothing about walking, so there
the network draws the change. The anchor is also renewed (from the blend) once it covers
`refresh_coverage` of the view or less.
A step with no motion at all (`still_tolerance`) shows the stream's last picture again, as
the engine does when the camera stands still; the network's own idle steps drift into noise.

Why `min_turn` and bicubic resampling (docs/training.md, "Reprojection memory"): holding the
anchor on every step froze the picture while the camera walked straight (reprojecting walking
too, over a floor-and-ceiling depth prior, grew the picture like the engine's but washed long
runs out); with bilinear resampling the anchors lost their texture over a 1,440-frame run until
turning barely changed the picture.

    mem = ReprojectionMemory(ReprojectionConfig(), batch, intrinsics, image_hw, latent_hw, channels)
    mem.reset(first_latents)                  # (B, C, h, w)
    z = mem.blend(generated, step_poses)      # (B, C, h, w), (B, 4, 4) -> (B, C, h, w)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from worldmodel.camera import rotation_angle, rotation_warp_grid
from worldmodel.dit import warp_recycled
from worldmodel.indexing import stream_indices
from worldmodel.reproject_config import (  # noqa: F401 (re-exported: the memory's public settings)
    TURN_TOLERANCE,
    ReprojectionConfig,
    add_reprojection_argument,
    reprojection_spec,
)

class ReprojectionMemory:
    """Per-stream anchor latents and the rotation of each stream's camera since its anchor."""

    def __init__(
        self,
        cfg: ReprojectionConfig,
        batch: int,
        intrinsics: Sequence[float],
        image_hw: tuple[int, int],
        latent_hw: tuple[int, int],
        channels: int,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        self.cfg, self.batch = cfg, batch
        self.intrinsics, self.image_hw, self.latent_hw = list(intrinsics), tuple(image_hw), tuple(latent_hw)
        self.anchor = torch.zeros(batch, channels, *latent_hw, device=device, dtype=dtype)
        self.pose = np.stack([np.eye(4)] * batch)  # camera now, in the anchor's camera
        self.last = torch.zeros_like(self.anchor)  # what each stream showed last
        self.shown = np.zeros(batch, bool)  # whether `last` is a step's picture (not the first image's latent)
        self.held = np.zeros(batch, bool)
        """Streams whose last step stood still and showed their previous picture again."""
        self._ones = torch.ones(batch, 1, 1, *latent_hw, device=device, dtype=dtype)

    def reset(self, latents: torch.Tensor, streams: Sequence[int] | None = None) -> None:
        """Anchor streams (default: all) on their first latents (len(streams) or B, C, h, w)."""
        idx = stream_indices(streams, self.batch)
        self.anchor_on(latents, idx)
        self.shown[idx] = False
        self.held[idx] = False

    def anchor_on(self, latents: torch.Tensor, idx: Sequence[int] | slice) -> None:
        """Make `latents` the anchor of streams `idx`, with no motion since."""
        self.anchor[idx] = latents.to(self.anchor.device, self.anchor.dtype)
        self.pose[idx] = np.eye(4)

    def blend(self, generated: torch.Tensor, steps: np.ndarray) -> torch.Tensor:
        """Generated latents (B, C, h, w) and each stream's step pose (B, 4, 4) -> blended latents."""
        if generated.shape != self.anchor.shape:
            raise ValueError(f"generated latents have shape {tuple(generated.shape)}, expected {tuple(self.anchor.shape)}")
        steps = np.asarray(steps, dtype=np.float64)
        if steps.shape != (self.batch, 4, 4):
            raise ValueError(f"step poses have shape {steps.shape}, expected ({self.batch}, 4, 4)")
        if not np.isfinite(steps).all():
            raise ValueError("step poses contain NaN or inf")
        self.pose = self.pose @ steps
        grid = rotation_warp_grid(self.pose[:, :3, :3], self.intrinsics, self.image_hw, self.latent_hw)
        grid = torch.from_numpy(grid).to(self.anchor.device)[:, None]  # (B, 1, 2, h, w)
        seen = warp_recycled(self.anchor[:, None], grid, self.cfg.warp_mode)[:, 0]
        coverage = warp_recycled(self._ones, grid)[:, 0]  # (B, 1, h, w) in [0, 1]
        m = coverage.clamp(0, 1) ** self.cfg.mask_power * self.cfg.keep
        z = m * seen + (1 - m) * generated.to(self.anchor.dtype)
        refresh = (coverage.mean((1, 2, 3)) <= self.cfg.refresh_coverage).cpu().numpy()
        # The network draws this step on its own and it becomes the anchor: a stream's first step (the
        # first image's latent encodes one frame, not a step's: reprojected, it decodes darker and
        # smeared), and a step that turns less than min_turn (walking; a turn of exactly min_turn, up
        # to float32 rounding, reprojects).
        turn = rotation_angle(steps[:, :3, :3])  # (B,) radians this step
        walk = ~self.shown | (turn < self.cfg.min_turn - TURN_TOLERANCE)
        if walk.any():
            z[walk] = generated[walk].to(z.dtype)
            refresh |= walk
        # A camera that does not move sees what it saw: the last picture, unchanged (no drift when idle).
        # Not the first image's latent, though: it encodes one frame where a step's latent encodes
        # frames_per_step, so the first still step is the network's and is held from then on.
        tol = self.cfg.still_tolerance
        still = (turn < tol) & (np.linalg.norm(steps[:, :3, 3], axis=-1) < tol)
        still &= self.shown
        self.held = still
        if still.any():
            z[still] = self.last[still]
            refresh &= ~still
        if refresh.any():
            self.anchor_on(z[refresh], np.flatnonzero(refresh).tolist())
        self.last.copy_(z)
        self.shown[:] = True
        return z
