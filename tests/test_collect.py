"""Trajectory collection: split rules, determinism, resume, the hydra entry point, and the replay round trip."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from train.collect import CollectConfig, check_config, collect
from train.dataset import ClipDataset, DatasetConfig
from train.shards import read_manifest, read_shard

pytest.importorskip("vizdoom")


def _cfg(root: Path, **kw) -> CollectConfig:
    base = dict(root=str(root), train_maps=["MAP01", "MAP02"], val_maps=["MAP25"], train_clips=2, val_clips=1,
                steps_per_clip=6, frame_size=[48, 64], warmup_steps=0)
    return CollectConfig(**{**base, **kw})


def test_refuses_freedoom1_and_overlapping_splits(tmp_path):
    """freedoom1 is the held-out world; a map in both splits would leak validation into training."""
    with pytest.raises(ValueError, match="freedoom1"):
        check_config(_cfg(tmp_path, wad="freedoom1"))
    with pytest.raises(ValueError, match="freedoom1"):
        collect(_cfg(tmp_path, wad="/some/where/FREEDOOM1.wad"), progress=False)
    with pytest.raises(ValueError, match="both"):
        check_config(_cfg(tmp_path, val_maps=["MAP02"]))


def test_collect_is_deterministic_and_resumes(tmp_path):
    """Same seed -> identical shards; a rerun with more clips only adds the missing ones."""
    rows = collect(_cfg(tmp_path / "a"), progress=False)
    assert sorted(r.split for r in rows) == ["train", "train", "val"]
    assert {r.map for r in rows} == {"MAP01", "MAP02", "MAP25"}
    assert all(r.frames == 1 + 6 * 4 and (r.height, r.width) == (48, 64) for r in rows)
    first = tmp_path / "a" / rows[0].path
    mtime = first.stat().st_mtime_ns
    rows2 = collect(_cfg(tmp_path / "a", train_clips=3), progress=False)
    assert len(rows2) == 4 and first.stat().st_mtime_ns == mtime  # old shard untouched
    assert len(read_manifest(tmp_path / "a", "train")) == 3
    collect(_cfg(tmp_path / "b", train_clips=1, val_clips=0), progress=False)
    a, b = read_shard(first), read_shard(tmp_path / "b" / rows[0].path)
    np.testing.assert_array_equal(a["frames"], b["frames"])
    np.testing.assert_array_equal(a["c2w"], b["c2w"])


def test_round_trip_replay_matches_recorded_poses(tmp_path):
    """Collect two clips, load them through the dataset, replay the dataset's actions in the env from
    the same start: the realised poses must match the recorded ones."""
    from envs.doom import DoomCameraEnv
    from worldmodel.camera import relative_pose

    cfg = _cfg(tmp_path, train_clips=2, val_clips=0, steps_per_clip=8)
    rows = collect(cfg, progress=False)
    ds = ClipDataset(DatasetConfig(root=str(tmp_path), steps=[8], resolutions=[[48, 64]], window_stride=8))
    assert len(ds) == 2
    env = DoomCameraEnv(frame_size=(48, 64), start=cfg.start)
    try:
        for i, (si, start) in enumerate(ds.windows[8]):
            item = ds[(si, start, 8, 0)]
            row = ds.shards[si]
            _, info = env.reset(seed=row.seed, options={"map": row.map})
            c2w = item["c2w"].numpy()
            np.testing.assert_allclose(info["c2w"][0], c2w[0], atol=1e-6)  # same start
            for step, a in enumerate(item["actions"].numpy()):
                _, _, _, _, info = env.step(a)
                rec = c2w[4 * (step + 1)]
                err = relative_pose(rec, info["c2w"][-1])
                assert np.linalg.norm(err[:3, 3]) < 2.0, (i, step, err[:3, 3])  # map units
                assert np.rad2deg(np.arccos(np.clip(err[0, 0], -1, 1))) < 1.0
    finally:
        env.close()


def test_hydra_entry_point_runs(tmp_path):
    """`python -m train.collect` works with overrides and writes a manifest."""
    root = tmp_path / "d"
    cmd = [sys.executable, "-m", "train.collect", f"root={root}", "train_clips=1", "val_clips=1",
           "steps_per_clip=2", "frame_size=[48,64]", f"hydra.run.dir={tmp_path / 'h'}"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120,
                         cwd=Path(__file__).resolve().parents[1], env={**os.environ, "PYTHONPATH": "."})
    assert out.returncode == 0, out.stderr[-2000:]
    assert len(read_manifest(root)) == 2
