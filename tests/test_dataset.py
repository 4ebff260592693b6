"""The clip dataset: item layout, buckets, camera stats, outliers, bad shards and rank sharding."""

import json

import numpy as np
import pytest
import torch

from train.dataset import ClipDataset, DatasetConfig, compute_camera_stats, load_camera_stats, make_dataloader
from train.shards import ShardError, ShardInfo, write_manifest, write_shard
from worldmodel.camera import integrate
from worldmodel.config import CameraStats

K = np.array([64.0, 76.8, 63.5, 47.5])  # a 96x128 Doom frame


def _walk(rng, n, teleport_at=None):
    """Smooth level walk: yaw drifts, forward ~4 units per frame (Doom-like), world z up."""
    c2w = np.zeros((n, 4, 4))
    yaw, p = 0.0, np.zeros(3)
    for t in range(n):
        yaw += rng.normal(0, 0.02)
        c, s = np.cos(yaw), np.sin(yaw)
        p = p + 4.0 * np.array([c, s, 0.0]) + rng.normal(0, 0.2, 3) * [1, 1, 0]
        if t == teleport_at:
            p = p + [3000.0, 0, 0]
        c2w[t, :3, 0], c2w[t, :3, 1], c2w[t, :3, 2] = (s, -c, 0), (0, 0, -1), (c, s, 0)
        c2w[t, :3, 3], c2w[t, 3, 3] = p, 1.0
    return c2w


def _root(tmp_path, n_train=4, n_val=1, frames=33, teleport_shard=None):
    rng = np.random.default_rng(0)
    rows = []
    for split, n in (("train", n_train), ("val", n_val)):
        for i in range(n):
            path = f"{split}/MAP{i + 1:02d}_{i:05d}.npz"
            tel = 20 if (split == "train" and i == teleport_shard) else None
            write_shard(tmp_path / path, rng.integers(0, 256, (frames, 96, 128, 3), dtype=np.uint8),
                        _walk(rng, frames, tel), K, "freedoom2", f"MAP{i + 1:02d}", i)
            rows.append(ShardInfo(path, split, frames, 96, 128, "freedoom2", f"MAP{i + 1:02d}", i,
                                  (tmp_path / path).stat().st_size))
    write_manifest(tmp_path, rows)
    return tmp_path


def _cfg(root, **kw):
    return DatasetConfig(**{**dict(root=str(root), steps=[2, 4], resolutions=[[96, 128], [48, 64]], window_stride=2), **kw})


def test_item_layout_and_actions_match_poses(tmp_path):
    """Keys, shapes, dtypes and ranges the trainer relies on; actions integrate back to the poses."""
    ds = ClipDataset(_cfg(_root(tmp_path)))
    i, start = ds.windows[4][0]
    it = ds[(i, start, 4, 1)]
    assert it["video"].shape == (17, 3, 48, 64) and it["video"].dtype == torch.float32
    assert -1.0 <= it["video"].min() and it["video"].max() <= 1.0
    assert it["c2w"].shape == (17, 4, 4) and it["actions"].shape == (4, 6) and it["actions"].dtype == torch.float32
    assert it["camera"].shape == (4, 24, 6, 8) and it["camera"].dtype == torch.float32
    np.testing.assert_allclose(it["intrinsics"].numpy(), [32.0, 38.4, 31.5, 23.5], atol=1e-5)  # scaled by 1/2
    assert isinstance(it["map"], str) and isinstance(it["seed"], int)
    c2w = it["c2w"].numpy()
    pose = c2w[0]
    for k, a in enumerate(it["actions"].numpy()):
        pose = integrate(pose, a.astype(np.float64))
        np.testing.assert_allclose(pose, c2w[4 * (k + 1)], atol=1e-3)
        pose = c2w[4 * (k + 1)]


def test_camera_stats_saved_once_and_normalise_to_unit_scale(tmp_path):
    """Stats are written to <root>/camera_stats.json, load into CameraStats, and the normalised
    camera channels of the training set have about zero mean and unit std."""
    root = _root(tmp_path)
    ds = ClipDataset(_cfg(root, resolutions=[[96, 128]]))
    d = json.loads((root / "camera_stats.json").read_text())
    assert d["split"] == "train" and d["frames"] == 4 * 32
    st = load_camera_stats(root)
    assert isinstance(st, CameraStats) and st.mean == ds.stats.mean
    cams = torch.cat([ds[(i, s, 2, 0)]["camera"].reshape(2, 4, 6, -1) for i, s in ds.windows[2]])
    x = cams.permute(2, 0, 1, 3).reshape(6, -1)
    assert x.mean(1).abs().max() < 0.5 and torch.isfinite(x).all()
    # Channels the synthetic walk moves (x, z; yaw turns the rays sideways) reach unit scale; the
    # height and the ray's vertical part never change and the depth part barely: their std is floored.
    assert st.reference == "rest"
    moving = torch.tensor([True, False, True, True, False, False])
    assert ((x.std(1)[moving] - 1).abs() < 0.5).all() and x[1].abs().max() == 0 and (x.std(1) < 1.5).all()


def test_batches_share_duration_and_resolution(tmp_path):
    """Every batch has one k and one resolution, with a worker process loading it."""
    ds = ClipDataset(_cfg(_root(tmp_path)))
    dl = make_dataloader(ds, batch_size=2, num_workers=1, seed=0)
    n = 0
    for b in dl:
        assert b["video"].shape[0] == 2 and b["camera"].shape[1] * 4 + 1 == b["video"].shape[1]
        assert b["camera"].shape[-2:] == (b["video"].shape[-2] // 8, b["video"].shape[-1] // 8)
        n += 1
    assert n == len(dl.batch_sampler) > 0
    dl.batch_sampler.set_epoch(1)
    assert list(iter(dl.batch_sampler)) != list(make_dataloader(ds, 2, seed=0).batch_sampler)


def test_outlier_windows_dropped_and_counted(tmp_path):
    """A teleport inside a shard drops exactly the windows that span it, and they are counted."""
    root = _root(tmp_path, teleport_shard=1)
    compute_camera_stats(root)
    ds = ClipDataset(_cfg(root))
    assert ds.outlier_windows > 0
    for k, ws in ds.windows.items():
        for i, s in ws:
            if ds.shards[i].map == "MAP02":
                assert not (s < 20 <= s + 4 * k), (k, s)  # frame 20 jumped: motion 19->20
    clean = ClipDataset(_cfg(_root(tmp_path / "clean")))
    assert clean.outlier_windows == 0 and len(clean) > len(ds)


def test_truncated_shard_named_and_skippable(tmp_path):
    """A truncated shard raises ShardError naming it; skip_bad_shards loads the rest and records it."""
    root = _root(tmp_path)
    bad = root / "train" / "MAP02_00001.npz"
    bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 2])
    with pytest.raises(ShardError, match="MAP02_00001.npz"):
        ClipDataset(_cfg(root))
    ds = ClipDataset(_cfg(root, skip_bad_shards=True))
    assert ds.bad_shards == ["train/MAP02_00001.npz"] and len(ds) > 0
    assert all(ds.shards[i].map != "MAP02" for ws in ds.windows.values() for i, _ in ws)


def test_corrupt_frames_named_at_load_and_skippable(tmp_path):
    """Corrupt frame bytes (poses intact) fail when the clip is read, naming the shard; with
    skip_bad_shards the item comes from another shard instead."""
    root = _root(tmp_path)
    bad = root / "train" / "MAP01_00000.npz"
    raw = bytearray(bad.read_bytes())
    for j in range(2000, 40000, 7):  # frames is the first member: garble its deflate stream
        raw[j] ^= 0xFF
    bad.write_bytes(bytes(raw))
    ds = ClipDataset(_cfg(root))
    i = next(j for j, r in enumerate(ds.shards) if r.map == "MAP01")
    with pytest.raises(ShardError, match="MAP01_00000.npz"):
        ds[(i, 0, 2, 0)]
    ds = ClipDataset(_cfg(root, skip_bad_shards=True))
    it = ds[(i, 0, 2, 0)]
    assert it["map"] != "MAP01" and ds.bad_shards == ["train/MAP01_00000.npz"]


def test_rank_sharding_is_disjoint_and_complete(tmp_path):
    """Each rank sees its own shards; together they cover the split once."""
    root = _root(tmp_path, n_train=5)
    seen = [{r.path for r in ClipDataset(_cfg(root), rank=r, world_size=2).shards} for r in (0, 1)]
    assert not (seen[0] & seen[1]) and len(seen[0] | seen[1]) == 5
    with pytest.raises(ValueError, match="rank"):
        ClipDataset(_cfg(root), rank=2, world_size=2)
