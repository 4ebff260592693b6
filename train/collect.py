"""Collect ViZDoom camera trajectories into shards: `python -m train.collect [key=value ...]`.

Each clip is one scripted-explorer trajectory on one map, written as one shard
(`<root>/<split>/<map>_<index>.npz`, format in train/shards.py) and listed in `<root>/manifest.json`.
Clip i of a split uses map `maps[i % len(maps)]` and a seed derived from (seed, split, i), so a run
is deterministic per seed, and a rerun with more clips resumes: shards already in the manifest are
skipped and new ones are appended. Map split: freedoom2 MAP01-MAP24 train, MAP25-MAP32 validation;
freedoom1 is the held-out test world and is refused.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from agents.explorer import Explorer, ExplorerConfig
from train.shards import ShardInfo, read_manifest, write_manifest, write_shard

TRAIN_MAPS = [f"MAP{i:02d}" for i in range(1, 25)]
VAL_MAPS = [f"MAP{i:02d}" for i in range(25, 33)]
SPLIT_IDS = {"train": 0, "val": 1}


@dataclass
class CollectConfig:
    """Where, what and how much to collect."""

    root: str = "data/doom"
    """Output folder (shards under <root>/<split>/, plus manifest.json)."""
    wad: str = "freedoom2"
    """WAD to collect from; freedoom1 is the held-out test world and is refused."""
    train_maps: list[str] = field(default_factory=lambda: list(TRAIN_MAPS))
    """Maps of the training split."""
    val_maps: list[str] = field(default_factory=lambda: list(VAL_MAPS))
    """Maps of the validation split (must not overlap train_maps)."""
    train_clips: int = 24
    """Number of training trajectories (clip i uses train_maps[i % len]); raise it to extend a root."""
    val_clips: int = 8
    """Number of validation trajectories."""
    steps_per_clip: int = 128
    """Recorded steps per trajectory; a shard holds 1 + steps_per_clip * frames_per_step frames."""
    frames_per_step: int = 4
    """Engine tics (video frames) per step."""
    resolution: str = "256x192"
    """Engine render resolution (a 4:3 ViZDoom mode)."""
    frame_size: list[int] = field(default_factory=lambda: [96, 128])
    """Stored frame size [H, W] (area-resized from the render; intrinsics scaled to match)."""
    start: str = "random"
    """'random' teleports to a random open point of the map; 'spawn' starts at the player start."""
    warmup_steps: int = 16
    """Up to this many unrecorded explorer steps before recording (a random walk-out from the start)."""
    seed: int = 0
    """Base seed; every clip's seed derives from (seed, split, clip index)."""
    workers: int = 1
    """Worker processes (each runs its own engine); 1 collects in this process."""
    explorer: ExplorerConfig = field(default_factory=ExplorerConfig)
    """Scripted explorer settings."""


@dataclass
class ClipSpec:
    """One planned trajectory."""

    split: str
    index: int
    map: str
    seed: int
    path: str


def clip_seed(seed: int, split: str, index: int) -> int:
    """Deterministic per-clip seed from (base seed, split, clip index)."""
    return int(np.random.SeedSequence([seed, SPLIT_IDS[split], index]).generate_state(1)[0])


def check_config(cfg: CollectConfig) -> None:
    """Refuse the held-out world and overlapping splits before any work starts."""
    if "freedoom1" in os.path.basename(str(cfg.wad)).lower():
        raise ValueError("freedoom1 is the held-out test world: never collect from it (use wad=freedoom2)")
    overlap = set(cfg.train_maps) & set(cfg.val_maps)
    if overlap:
        raise ValueError(f"maps {sorted(overlap)} are in both train_maps and val_maps; the split is by map")
    if cfg.train_clips and not cfg.train_maps or cfg.val_clips and not cfg.val_maps:
        raise ValueError("clips requested for a split with no maps")


def plan(cfg: CollectConfig) -> list[ClipSpec]:
    """Every clip of the run, in a fixed order."""
    out = []
    for split, maps, n in (("train", cfg.train_maps, cfg.train_clips), ("val", cfg.val_maps, cfg.val_clips)):
        for i in range(n):
            m = maps[i % len(maps)]
            out.append(ClipSpec(split, i, m, clip_seed(cfg.seed, split, i), f"{split}/{m}_{i:05d}.npz"))
    return out


_ENV = None  # one engine per worker process, reused across clips


def _env(cfg: CollectConfig):
    global _ENV
    if _ENV is None:
        from envs.doom import DoomCameraEnv

        _ENV = DoomCameraEnv(
            wad=cfg.wad, resolution=cfg.resolution, frame_size=tuple(cfg.frame_size),
            frames_per_step=cfg.frames_per_step, max_steps=10**9, depth=True,
        )
    return _ENV


def record_clip(cfg: CollectConfig, spec: ClipSpec) -> dict[str, Any]:
    """Run the explorer for one clip; returns frames (T, H, W, 3), c2w (T, 4, 4), intrinsics and actions."""
    env = _env(cfg)
    obs, info = env.reset(seed=spec.seed, options={"map": spec.map, "start": cfg.start})
    rng = np.random.default_rng(spec.seed)
    explorer = Explorer(rng, cfg.explorer)
    depth, realised = info["depth"], None
    for _ in range(int(rng.integers(0, cfg.warmup_steps + 1))):
        obs, _, _, truncated, info = env.step(explorer.act(depth, realised))
        if truncated:  # the walk-out left the level: start again from the start point
            obs, info = env.reset(seed=spec.seed, options={"map": spec.map, "start": cfg.start})
            break
        depth, realised = info["depth"], info["realised_action"]
    frames, poses, actions = [obs[-1:]], [info["c2w"][-1:]], []
    for _ in range(cfg.steps_per_clip):
        a = explorer.act(depth, realised)
        obs, _, _, truncated, info = env.step(a)
        if info["valid_frames"] < cfg.frames_per_step:
            break  # the level ended (exit line): keep only whole steps, the shard is shorter
        depth, realised = info["depth"], info["realised_action"]
        frames.append(obs)
        poses.append(info["c2w"])
        actions.append(a)
    return dict(frames=np.concatenate(frames), c2w=np.concatenate(poses), intrinsics=info["intrinsics"],
                actions=np.stack(actions) if actions else np.zeros((0, 6), np.float32))


def collect_one(cfg: CollectConfig, spec: ClipSpec) -> ShardInfo:
    """Record and write one shard (atomically); returns its manifest row."""
    clip = record_clip(cfg, spec)
    path = Path(cfg.root) / spec.path
    write_shard(path, clip["frames"], clip["c2w"], clip["intrinsics"], cfg.wad, spec.map, spec.seed)
    t, h, w, _ = clip["frames"].shape
    return ShardInfo(spec.path, spec.split, t, h, w, cfg.wad, spec.map, spec.seed, path.stat().st_size)


def _worker(args: tuple[CollectConfig, ClipSpec]) -> ShardInfo:
    return collect_one(*args)


def collect(cfg: CollectConfig, progress: bool = True) -> list[ShardInfo]:
    """Collect every planned clip not yet in the manifest; returns the full manifest."""
    from tqdm import tqdm

    check_config(cfg)
    root = Path(cfg.root)
    root.mkdir(parents=True, exist_ok=True)
    try:
        rows = read_manifest(root)
    except FileNotFoundError:
        rows = []
    done = {r.path for r in rows if (root / r.path).exists()}
    rows = [r for r in rows if r.path in done]  # forget rows whose file was deleted
    todo = [s for s in plan(cfg) if s.path not in done]
    t0, frames = time.time(), 0
    bar = tqdm(total=len(todo), desc="collect", unit="clip", disable=not progress)
    if cfg.workers <= 1:
        results = (collect_one(cfg, s) for s in todo)
        pool = None
    else:
        pool = mp.get_context("spawn").Pool(cfg.workers)
        results = pool.imap_unordered(_worker, [(cfg, s) for s in todo])
    try:
        for row in results:
            rows.append(row)
            rows.sort(key=lambda r: r.path)
            write_manifest(root, rows)  # after every shard, so an interrupted run resumes from here
            frames += row.frames
            bar.update(1)
            bar.set_postfix(fps=f"{frames / max(time.time() - t0, 1e-9):.0f}", map=row.map)
    finally:
        bar.close()
        if pool is not None:
            pool.terminate()
    return rows


def main() -> None:
    """Hydra entry point."""
    import hydra
    from hydra.core.config_store import ConfigStore
    from omegaconf import OmegaConf

    ConfigStore.instance().store(name="collect_schema", node=CollectConfig)

    @hydra.main(version_base="1.3", config_path="conf", config_name="collect")
    def _run(c) -> None:
        cfg: CollectConfig = OmegaConf.to_object(c)
        cfg.explorer = ExplorerConfig(**vars(cfg.explorer)) if not isinstance(cfg.explorer, ExplorerConfig) else cfg.explorer
        t0 = time.time()
        rows = collect(cfg)
        n = {s: sum(r.frames for r in rows if r.split == s) for s in ("train", "val")}
        size = sum(r.bytes for r in rows)
        print(f"{cfg.root}: {len(rows)} shards, train {n['train']} frames, val {n['val']} frames, "
              f"{size / 2**20:.1f} MiB, {time.time() - t0:.0f} s")

    _run()


if __name__ == "__main__":
    main()
