"""The on-disk trajectory format: one trajectory per `.npz` shard, plus `manifest.json`.

A shard (`<root>/<split>/<name>.npz`, written with `numpy.savez_compressed`, read without pickle) holds:

| key          | dtype   | shape          | meaning                                             |
|--------------|---------|----------------|-----------------------------------------------------|
| `frames`     | uint8   | (T, H, W, 3)   | rendered RGB frames                                 |
| `c2w`        | float64 | (T, 4, 4)      | realised camera-to-world pose of every frame (OpenCV axes) |
| `intrinsics` | float64 | (4,)           | fx, fy, cx, cy in pixels of these frames            |
| `wad`        | str     | ()             | WAD name, e.g. "freedoom2"                          |
| `map`        | str     | ()             | map name, e.g. "MAP03"                              |
| `seed`       | int64   | ()             | seed the trajectory was collected with              |

`manifest.json` at the root lists every shard: path (relative), split, frames, height,
width, wad, map, seed and byte size, so a loader can plan without opening shards.
"""

from __future__ import annotations

import json
import os
import tempfile
import zipfile
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

SHARD_KEYS = ("frames", "c2w", "intrinsics", "wad", "map", "seed")


class ShardError(ValueError):
    """A shard file is missing, truncated, corrupt or malformed."""


@dataclass
class ShardInfo:
    """One manifest row."""

    path: str
    split: str
    frames: int
    height: int
    width: int
    wad: str
    map: str
    seed: int
    bytes: int


def write_shard(
    path: str | Path,
    frames: np.ndarray,
    c2w: np.ndarray,
    intrinsics: np.ndarray,
    wad: str,
    map_name: str,
    seed: int,
) -> None:
    """Write one trajectory atomically (temp file + rename): a crash never leaves half a shard."""
    path = Path(path)
    frames = np.asarray(frames)
    c2w = np.asarray(c2w, dtype=np.float64)
    _check(path, frames, c2w, np.asarray(intrinsics, dtype=np.float64))
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npz.tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez_compressed(
                f,
                frames=frames,
                c2w=c2w,
                intrinsics=np.asarray(intrinsics, dtype=np.float64),
                wad=np.array(wad),
                map=np.array(map_name),
                seed=np.array(seed, dtype=np.int64),
            )
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; shards are shared data
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _load(path: str | Path, keys: tuple[str, ...]) -> tuple[Path, dict[str, Any]]:
    """Open a shard without pickle, check it has every key, return `keys`; ShardError names the file."""
    path = Path(path)
    if not path.exists():
        raise ShardError(f"shard {path} does not exist")
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = [k for k in SHARD_KEYS if k not in z.files]
            if missing:
                raise ShardError(f"shard {path} lacks keys {missing}; expected {list(SHARD_KEYS)}")
            return path, {k: z[k] for k in keys}
    except ShardError:
        raise
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError, KeyError) as e:
        raise ShardError(f"shard {path} is corrupt or truncated ({type(e).__name__}: {e})") from e


def read_shard(path: str | Path) -> dict[str, Any]:
    """Load and validate one shard; raises ShardError naming the file and the problem."""
    path, out = _load(path, SHARD_KEYS)
    out["wad"], out["map"], out["seed"] = str(out["wad"]), str(out["map"]), int(out["seed"])
    _check(path, out["frames"], out["c2w"], out["intrinsics"])
    return out


def read_shard_poses(path: str | Path) -> dict[str, Any]:
    """Load only c2w, intrinsics, map and seed (no frame decompression); ShardError on a bad file."""
    path, out = _load(path, ("c2w", "intrinsics", "map", "seed"))
    out["map"], out["seed"] = str(out["map"]), int(out["seed"])
    c2w, k = np.asarray(out["c2w"], dtype=np.float64), np.asarray(out["intrinsics"], dtype=np.float64)
    if c2w.ndim != 3 or c2w.shape[1:] != (4, 4) or not np.isfinite(c2w).all():
        raise ShardError(f"shard {path}: c2w {c2w.shape}, expected finite (T, 4, 4)")
    if k.shape != (4,) or not np.isfinite(k).all():
        raise ShardError(f"shard {path}: intrinsics {k.shape}, expected 4 finite values fx, fy, cx, cy")
    out["c2w"], out["intrinsics"] = c2w, k
    return out


def _check(path: Path, frames: np.ndarray, c2w: np.ndarray, intrinsics: np.ndarray) -> None:
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ShardError(f"shard {path}: frames {frames.dtype}{frames.shape}, expected uint8 (T, H, W, 3)")
    if c2w.shape != (frames.shape[0], 4, 4):
        raise ShardError(f"shard {path}: c2w shape {c2w.shape}, expected ({frames.shape[0]}, 4, 4)")
    if not np.isfinite(c2w).all():
        raise ShardError(f"shard {path}: c2w has non-finite values")
    if intrinsics.shape != (4,) or not np.isfinite(intrinsics).all():
        raise ShardError(f"shard {path}: intrinsics {intrinsics.shape}, expected 4 finite values fx, fy, cx, cy")


def write_manifest(root: str | Path, rows: list[ShardInfo]) -> None:
    """Write `manifest.json` atomically."""
    root = Path(root)
    tmp = root / "manifest.json.tmp"
    tmp.write_text(json.dumps({"version": 1, "shards": [asdict(r) for r in rows]}, indent=1))
    os.replace(tmp, root / "manifest.json")


def read_manifest(root: str | Path, split: str | None = None) -> list[ShardInfo]:
    """Manifest rows, optionally only one split ('train' or 'val')."""
    p = Path(root) / "manifest.json"
    if not p.exists():
        raise FileNotFoundError(f"no manifest.json in {root}; collect data first (python -m train.collect)")
    try:
        rows = [ShardInfo(**r) for r in json.loads(p.read_text())["shards"]]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise ShardError(f"manifest {p} is malformed ({e})") from e
    return [r for r in rows if split is None or r.split == split]
