"""Training clips from collected shards: windows, resolution buckets, actions and camera maps.

A window is `1 + frames_per_step * k` consecutive video frames of one shard, starting on a step
boundary, with k drawn from `steps`; it is resized to one of `resolutions`. Every batch has one
(k, resolution) pair, so clips stack without padding (`BucketBatchSampler`). The camera channels are
relative Plücker maps at latent resolution (H/8, W/8), normalised with statistics measured once on
the training split and saved to `<root>/camera_stats.json` (the model stores them in its checkpoint).
Windows with a camera value more than `outlier_z` standard deviations from the mean (teleporters,
falls, engine glitches) are dropped and counted.
"""

from __future__ import annotations

import json
import logging
import os
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from train.shards import ShardError, ShardInfo, read_manifest, read_shard, read_shard_poses
from worldmodel.camera import (
    camera_stats,
    normalize_camera,
    plucker_maps,
    pose_camera_maps,
    poses_to_actions,
    relative_pose,
    scale_intrinsics,
)
from worldmodel.config import CameraStats

log = logging.getLogger(__name__)
STATS_FILE = "camera_stats.json"
LATENT_STRIDE = 8
"""Spatial compression of the VAE: camera maps live on the (H/8, W/8) latent grid."""


@dataclass
class DatasetConfig:
    """Which clips the loader cuts from a collected root."""

    root: str = "data/doom"
    """Collected root (manifest.json, shards, camera_stats.json)."""
    split: str = "train"
    """'train' or 'val'."""
    frames_per_step: int = 4
    """Video frames per latent frame (step)."""
    steps: list[int] = field(default_factory=lambda: [2, 4, 8])
    """Window durations k in steps; a clip has 1 + frames_per_step * k frames."""
    resolutions: list[list[int]] = field(default_factory=lambda: [[96, 128]])
    """Resolution buckets [H, W], each divisible by 8."""
    window_stride: int = 4
    """Steps between window starts within a shard."""
    outlier_z: float = 8.0
    """Drop windows whose camera values are further than this many std from the training mean."""
    skip_bad_shards: bool = False
    """Log and skip corrupt or truncated shards instead of raising."""
    cache_shards: int = 2
    """Decoded shards kept per loader worker (neighbouring windows share a shard)."""
    camera_reference: str = "rest"
    """Camera normalisation when statistics are measured: 'rest' (directions minus each pixel's ray at
    rest, the default) or 'none' (raw directions, the layout of worlds trained before 'rest' existed)."""


def stats_path(root: str | Path) -> Path:
    """Where a root's camera statistics live."""
    return Path(root) / STATS_FILE


def load_camera_stats(root: str | Path) -> CameraStats:
    """CameraStats saved by `compute_camera_stats`."""
    return _stats_from(json.loads(stats_path(root).read_text()))


def _stats_from(d: dict) -> CameraStats:
    """CameraStats from a parsed camera_stats.json (files from before `reference` existed: 'none')."""
    return CameraStats(mean=d["mean"], std=d["std"], reference=d.get("reference", "none"))


def camera_stats_for(root: str | Path, save: bool = True, reference: str = "rest") -> CameraStats:
    """Saved stats if they were measured on the current training split with `reference`, else measure them.

    A root that grew since the stats were taken (a collection still running or extended) is measured
    again, so the model never stores statistics of a different split.
    """
    p = stats_path(root)
    if p.exists():
        d = json.loads(p.read_text())
        fresh = d.get("manifest_frames") == sum(r.frames for r in read_manifest(root, "train"))
        stats = _stats_from(d)
        if fresh and stats.reference == reference:
            return stats
        log.warning("%s is stale (training split or camera reference changed); measuring again", p)
    return compute_camera_stats(root, save=save, reference=reference)


def frame_motions(c2w: np.ndarray) -> np.ndarray:
    """(T, 4, 4) poses -> (T-1, 4, 4) motion of each frame in the previous frame's camera."""
    return relative_pose(c2w[:-1], c2w[1:])


def compute_camera_stats(
    root: str | Path,
    split: str = "train",
    grid_hw: tuple[int, int] | None = None,
    save: bool = True,
    skip_bad_shards: bool = True,
    reference: str = "rest",
) -> CameraStats:
    """Per-channel mean/std of relative Plücker maps over a split's frames; saved to <root>/camera_stats.json.

    Robust to rare jumps (teleporters): frames whose translation exceeds 20 median-absolute-deviations
    above the median are left out before the moments are taken.
    """
    rows = read_manifest(root, split)
    if not rows:
        raise ValueError(f"no {split!r} shards in {root}; collect data first (python -m train.collect)")
    motions, ks, hws = [], [], []
    for r in rows:
        try:
            s = read_shard_poses(Path(root) / r.path)
        except ShardError as e:
            if not skip_bad_shards:
                raise
            log.warning("camera stats: skipping %s", e)
            continue
        m = frame_motions(s["c2w"])
        motions.append(m)
        ks.append(np.repeat(s["intrinsics"][None], len(m), 0))
        hws.append((r.height, r.width))
    m, k = np.concatenate(motions), np.concatenate(ks)
    step = np.linalg.norm(m[:, :3, 3], axis=1)
    med = np.median(step)
    mad = np.median(np.abs(step - med)) + 1e-6
    keep = step <= med + 20 * mad
    h, w = hws[0]
    grid = tuple(grid_hw) if grid_hw else (h // LATENT_STRIDE, w // LATENT_STRIDE)
    # All shards of a root share one resolution and intrinsics (one collect config); one call suffices.
    maps = plucker_maps(m[keep], k[0], (h, w), grid)  # (N, 6, gh, gw)
    stats = camera_stats(maps, reference=reference, intrinsics=k[0], image_hw=(h, w))
    if save:
        p = stats_path(root)
        # A name of our own: under context parallelism several ranks are data rank 0 and all save.
        tmp = p.with_name(f"{p.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({**asdict(stats), "split": split, "frames": int(keep.sum()),
                                   "manifest_frames": sum(r.frames for r in rows),
                                   "dropped_frames": int((~keep).sum()), "grid": list(grid)}, indent=1))
        os.replace(tmp, p)
    return stats


def dist_rank_world(rank: int | None, world_size: int | None) -> tuple[int, int]:
    """(rank, world_size), defaulting to torch.distributed's when initialised, else (0, 1)."""
    if rank is None or world_size is None:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            r, w = torch.distributed.get_rank(), torch.distributed.get_world_size()
        else:
            r, w = 0, 1
        rank = r if rank is None else rank
        world_size = w if world_size is None else world_size
    if not 0 <= rank < world_size:
        raise ValueError(f"rank={rank} must be in [0, world_size={world_size})")
    return rank, world_size


class ClipDataset(Dataset):
    """Map-style dataset keyed by (shard index, start frame, k, resolution index) tuples.

    Use with `BucketBatchSampler` (or `make_dataloader`). Item keys: `video` float32 (T, 3, H, W) in
    [-1, 1]; `c2w` float64 (T, 4, 4); `actions` float32 (k, 6); `camera` float32
    (k, 6*frames_per_step, H/8, W/8) normalised; `intrinsics` float32 (4,) of the resized frames;
    `map` str; `seed` int; `shard` str; `start` int.
    """

    def __init__(
        self,
        cfg: DatasetConfig,
        stats: CameraStats | None = None,
        rank: int | None = None,
        world_size: int | None = None,
    ) -> None:
        self.cfg = cfg
        self.rank, self.world_size = dist_rank_world(rank, world_size)
        for h, w in cfg.resolutions:
            if h % LATENT_STRIDE or w % LATENT_STRIDE:
                raise ValueError(f"resolution {h}x{w} must be divisible by {LATENT_STRIDE} (the VAE stride)")
        if stats is None:
            stats = camera_stats_for(cfg.root, save=self.rank == 0, reference=cfg.camera_reference)
        self.stats = stats
        rows = sorted(read_manifest(cfg.root, cfg.split), key=lambda r: r.path)
        if len(rows) < self.world_size:
            raise ValueError(f"{len(rows)} {cfg.split!r} shards in {cfg.root} cannot be split over {self.world_size} ranks")
        self.shards: list[ShardInfo] = rows[self.rank :: self.world_size]
        self.bad_shards: list[str] = []
        self.outlier_windows = 0
        self.intrinsics: dict[int, np.ndarray] = {}
        self.windows: dict[int, list[tuple[int, int]]] = {k: [] for k in cfg.steps}
        self._cache: OrderedDict[int, dict[str, Any]] = OrderedDict()
        self._index()

    def _index(self) -> None:
        """Plan every window from poses only (no frame decoding); count outliers and bad shards."""
        fps, cfg = self.cfg.frames_per_step, self.cfg
        for i, r in enumerate(self.shards):
            try:
                s = read_shard_poses(Path(cfg.root) / r.path)
            except ShardError as e:
                if not cfg.skip_bad_shards:
                    raise
                self._mark_bad(i, e)
                continue
            self.intrinsics[i] = s["intrinsics"]
            m = frame_motions(s["c2w"])  # (T-1, 4, 4)
            # Outlier test on the coarse grid corners and centre: enough to catch a jump.
            hw = (r.height, r.width)
            z = normalize_camera(plucker_maps(m, s["intrinsics"], hw, (3, 3)), self.stats, s["intrinsics"], hw)
            bad = (np.abs(z) > cfg.outlier_z).reshape(len(m), -1).any(1)  # z: (T-1, 6, 3, 3)
            bad_cum = np.concatenate([[0], np.cumsum(bad)])
            n = len(s["c2w"])
            for k in cfg.steps:
                for start in range(0, n - fps * k, cfg.window_stride * fps):
                    if bad_cum[start + fps * k] - bad_cum[start]:
                        self.outlier_windows += 1
                    else:
                        self.windows[k].append((i, start))
        if self.outlier_windows:
            log.info("dropped %d outlier windows (|z| > %.1f)", self.outlier_windows, cfg.outlier_z)

    def _mark_bad(self, i: int, err: Exception) -> None:
        path = self.shards[i].path
        if path not in self.bad_shards:
            self.bad_shards.append(path)
            log.warning("skipping bad shard (%d so far): %s", len(self.bad_shards), err)
        for k in self.windows:
            self.windows[k] = [w for w in self.windows[k] if w[0] != i]

    def __len__(self) -> int:
        return sum(len(v) for v in self.windows.values())

    def _shard(self, i: int) -> dict[str, Any]:
        if i in self._cache:
            self._cache.move_to_end(i)
            return self._cache[i]
        s = read_shard(Path(self.cfg.root) / self.shards[i].path)
        s["path"] = self.shards[i].path
        self._cache[i] = s
        while len(self._cache) > self.cfg.cache_shards:
            self._cache.popitem(last=False)
        return s

    def __getitem__(self, key: tuple[int, int, int, int]) -> dict[str, Any]:
        i, start, k, res = key
        try:
            s = self._shard(i)
        except ShardError as e:
            if not self.cfg.skip_bad_shards:
                raise
            self._mark_bad(i, e)
            if not self.windows[k]:
                raise ShardError(f"no readable shards left with {k}-step windows (bad: {self.bad_shards})") from e
            # Deterministic stand-in from a readable shard so the batch keeps its shape.
            j, start = self.windows[k][(i * 7919 + start) % len(self.windows[k])]
            return self[(j, start, k, res)]
        return self.make_item(s, start, k, tuple(self.cfg.resolutions[res]))

    def make_item(self, s: dict[str, Any], start: int, k: int, hw: tuple[int, int]) -> dict[str, Any]:
        """Cut, resize and condition one window of a decoded shard."""
        fps = self.cfg.frames_per_step
        frames = s["frames"][start : start + fps * k + 1]  # (T, H0, W0, 3)
        c2w = s["c2w"][start : start + fps * k + 1]
        src = frames.shape[1:3]
        if tuple(src) != hw:
            import cv2

            interp = cv2.INTER_AREA if hw[0] < src[0] else cv2.INTER_LINEAR
            frames = np.stack([cv2.resize(f, hw[::-1], interpolation=interp) for f in frames])
        K = scale_intrinsics(s["intrinsics"], src, hw)
        video = torch.from_numpy(frames).permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)  # (T, 3, H, W)
        grid = (hw[0] // LATENT_STRIDE, hw[1] // LATENT_STRIDE)
        cam = normalize_camera(pose_camera_maps(c2w, K, hw, grid, fps), self.stats, K, hw)  # (k, 6*fps, h, w)
        return {
            "video": video,
            "c2w": torch.from_numpy(np.ascontiguousarray(c2w)),
            "actions": torch.from_numpy(poses_to_actions(c2w, fps).astype(np.float32)),
            "camera": torch.from_numpy(cam),
            "intrinsics": torch.from_numpy(K.astype(np.float32)),
            "map": s["map"],
            "seed": s["seed"],
            "shard": s["path"],
            "start": start,
        }


class BucketBatchSampler(Sampler[list[tuple[int, int, int, int]]]):
    """Batches of dataset keys sharing one duration k and one resolution; reshuffled per epoch.

    An epoch visits every window start once: each start gets a random k (among those it fits)
    and a random resolution, starts are grouped by (k, resolution) and cut into batches.
    """

    def __init__(self, dataset: ClipDataset, batch_size: int, seed: int = 0, drop_last: bool = True) -> None:
        self.ds, self.batch_size, self.seed, self.drop_last = dataset, batch_size, seed, drop_last
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Reshuffle for a new epoch (call it like DistributedSampler.set_epoch)."""
        self.epoch = epoch

    def _batches(self) -> list[list[tuple[int, int, int, int]]]:
        rng = np.random.default_rng([self.seed, self.epoch, self.ds.rank])
        starts = sorted({w for ws in self.ds.windows.values() for w in ws})
        fits = {k: set(ws) for k, ws in self.ds.windows.items()}
        groups: dict[tuple[int, int], list[tuple[int, int, int, int]]] = {}
        n_res = len(self.ds.cfg.resolutions)
        for w in starts:
            ks = [k for k in sorted(fits) if w in fits[k]]
            k = ks[rng.integers(len(ks))]
            r = int(rng.integers(n_res))
            groups.setdefault((k, r), []).append((w[0], w[1], k, r))
        batches = []
        for key in sorted(groups):
            g = groups[key]
            order = rng.permutation(len(g))
            for b in range(0, len(g), self.batch_size):
                chunk = [g[j] for j in order[b : b + self.batch_size]]
                if len(chunk) == self.batch_size or not self.drop_last:
                    batches.append(chunk)
        return [batches[j] for j in rng.permutation(len(batches))]

    def __iter__(self) -> Iterator[list[tuple[int, int, int, int]]]:
        return iter(self._batches())

    def __len__(self) -> int:
        return len(self._batches())


def make_dataloader(
    dataset: ClipDataset, batch_size: int, num_workers: int = 0, seed: int = 0, drop_last: bool = True
) -> DataLoader:
    """DataLoader with one duration and resolution per batch; call `.batch_sampler.set_epoch(e)` per epoch."""
    return DataLoader(
        dataset,
        batch_sampler=BucketBatchSampler(dataset, batch_size, seed, drop_last),
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
        pin_memory=torch.cuda.is_available(),
    )
