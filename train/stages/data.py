"""Resumable batches of encoded training clips that follow the curriculum.

A batch is a dict: `latents` (B, 1+k, C, h, w) normalised VAE latents, `camera`
(B, k, Cc, h, w) normalised Plücker maps of the k steps between them (plus the recycled
latent's warp grid when the model has `recycle_warp`), `actions` (B, k, 6),
`intrinsics` (B, 4), `keys` (dataset keys). The stream's position (curriculum phase, epoch,
batch index, extra-clip RNG) is a small JSON dict stored in the training state, so a resumed
run sees exactly the batches an uninterrupted one would.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import numpy as np
import torch

from train.dataset import LATENT_STRIDE, BucketBatchSampler, ClipDataset, DatasetConfig
from train.latents import encode_clips
from train.stages.config import CurriculumPhase, DataConf
from worldmodel.camera import action_to_pose, rotation_warp_grid
from worldmodel.config import CameraStats
from worldmodel.vae import CausalVAE


def warp_grids(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Recycled-latent warp grids (B, k, 2, h, w) of a batch's step actions (B, k, 6) and intrinsics (B, 4)."""
    h, w = batch["latents"].shape[-2:]
    image_hw = (h * LATENT_STRIDE, w * LATENT_STRIDE)
    grids = [rotation_warp_grid(action_to_pose(a.double().cpu().numpy())[:, :3, :3], K.cpu().numpy(), image_hw, (h, w))
             for a, K in zip(batch["actions"], batch["intrinsics"], strict=True)]
    return torch.from_numpy(np.stack(grids))


class ClipStream:
    """Curriculum-driven, exactly resumable stream of encoded clip batches."""

    def __init__(
        self, cfg: DataConf, vae: CausalVAE, frames_per_step: int, seed: int, device: torch.device,
        stats: CameraStats | None = None, rank: int = 0, world_size: int = 1, split: str = "train",
        warp: bool = False,
    ) -> None:
        phases = sorted(cfg.curriculum, key=lambda p: p.start_step)
        if not phases or phases[0].start_step != 0:
            raise ValueError("data.curriculum needs a phase with start_step=0")
        self.cfg, self.phases, self.vae, self.seed, self.device = cfg, phases, vae, seed, device
        self.fps, self.rank, self.world_size, self.split = frames_per_step, rank, world_size, split
        self.stats, self.warp = stats, warp  # warp: append the recycled latent's warp grid (DiTConfig.recycle_warp)
        self._datasets: dict[int, ClipDataset] = {}
        self._cache: OrderedDict[tuple, dict[str, torch.Tensor]] = OrderedDict()
        self.phase, self.epoch, self.index = 0, 0, 0
        self._batches: list | None = None
        self.rng = np.random.default_rng([seed, rank, 7])  # extra clips (long-video cameras, real segments)

    # ---- datasets ---------------------------------------------------------------------

    def dataset(self, phase: int) -> ClipDataset:
        """The ClipDataset of one curriculum phase (built on first use)."""
        if phase not in self._datasets:
            p: CurriculumPhase = self.phases[phase]
            dc = DatasetConfig(root=self.cfg.root, split=self.split, frames_per_step=self.fps, steps=list(p.steps),
                               resolutions=[list(r) for r in p.resolutions], window_stride=self.cfg.window_stride,
                               cache_shards=self.cfg.cache_shards,
                               camera_reference=self.cfg.camera_reference or "rest")
            ds = ClipDataset(dc, self.stats, rank=self.rank, world_size=self.world_size)
            self.stats = ds.stats
            if len(ds) == 0:
                raise ValueError(f"no {self.split!r} windows of {p.steps} steps in {self.cfg.root}; collect longer clips")
            self._datasets[phase] = ds
        return self._datasets[phase]

    def phase_at(self, step: int) -> int:
        """Index of the curriculum phase active at an optimizer step."""
        return max(i for i, p in enumerate(self.phases) if p.start_step <= step)

    # ---- items ------------------------------------------------------------------------

    def items(self, ds: ClipDataset, keys: list[tuple[int, int, int, int]]) -> dict[str, Any]:
        """Encoded, collated clips for dataset keys (cached by key: the VAE is frozen)."""
        tag = id(ds)
        missing = [k for k in keys if (tag, k) not in self._cache]
        if missing:
            raw = [ds[k] for k in missing]
            z = encode_clips(self.vae, torch.stack([r["video"] for r in raw]))  # (m, 1+k, C, h, w)
            for k, r, zi in zip(missing, raw, z, strict=True):
                self._cache[(tag, k)] = {"latents": zi.cpu(), "camera": r["camera"], "actions": r["actions"],
                                         "intrinsics": r["intrinsics"]}
        rows = []
        for k in keys:
            self._cache.move_to_end((tag, k))
            rows.append(self._cache[(tag, k)])
        while len(self._cache) > self.cfg.latent_cache:
            self._cache.popitem(last=False)
        out = {n: torch.stack([r[n] for r in rows]).to(self.device) for n in rows[0]}
        if self.warp:
            out["camera"] = torch.cat([out["camera"], warp_grids(out).to(self.device)], 2)
        out["keys"] = list(keys)
        return out

    def next(self, step: int) -> dict[str, Any]:
        """The batch for optimizer step `step` (advances the stream)."""
        phase = self.phase_at(step)
        if phase != self.phase:
            self.phase, self.epoch, self.index, self._batches = phase, 0, 0, None
        ds = self.dataset(self.phase)
        if self._batches is None:
            sampler = BucketBatchSampler(ds, self.phases[self.phase].batch_size, self.seed)
            sampler.set_epoch(self.epoch)
            self._batches = list(sampler)
            if not self._batches:
                raise ValueError(f"fewer windows than batch_size={self.phases[self.phase].batch_size} in {self.cfg.root}")
        keys = self._batches[self.index]
        self.index += 1
        if self.index == len(self._batches):
            self.epoch, self.index, self._batches = self.epoch + 1, 0, None
        return self.items(ds, keys)

    def sample_like(self, batch: dict[str, Any], steps: int) -> dict[str, Any]:
        """Random other clips of >= `steps` steps at the batch's resolution, cut to `steps` (new cameras, real clips)."""
        ds = self.dataset(self.phase)
        _, _, _, res = batch["keys"][0]
        ks = sorted(k for k in ds.windows if k >= steps and ds.windows[k])
        if not ks:
            raise ValueError(f"no windows of >= {steps} steps for long-video extension; add a longer duration to data.curriculum")
        k = ks[0]
        wins = ds.windows[k]
        keys = [(*wins[int(self.rng.integers(len(wins)))], k, res) for _ in batch["keys"]]
        out = self.items(ds, keys)
        out["latents"], out["camera"], out["actions"] = out["latents"][:, : steps + 1], out["camera"][:, :steps], out["actions"][:, :steps]
        return out

    # ---- resume -----------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        """JSON-ready position of the stream."""
        return {"phase": self.phase, "epoch": self.epoch, "index": self.index, "rng": self.rng.bit_generator.state}

    def load_state(self, state: dict[str, Any]) -> None:
        """Continue from a `state()` snapshot."""
        self.phase, self.epoch, self.index, self._batches = state["phase"], state["epoch"], state["index"], None
        self.rng.bit_generator.state = state["rng"]
