"""Keys move the world as a player expects: speeds come from the training data's typical step, not its extremes."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from agents.keyboard import KeyboardMapping, typical_step_motion
from worldmodel.camera import action_to_pose, camera_stats, integrate, plucker_maps, rotation_angle
from worldmodel.config import CameraStats

K, HW, GRID = [64.0, 76.8, 63.5, 47.5], (96, 128), (12, 16)


@pytest.mark.parametrize("reference", ["rest", "none"])
def test_typical_step_motion_recovers_the_data_motion_from_camera_stats(reference):
    """The per-step RMS of forward, strafe, yaw and pitch read back from a world's camera statistics
    equals the RMS of the motions the statistics were measured on (both direction references)."""
    rng = np.random.default_rng(0)
    a = np.zeros((3000, 6))
    a[:, 0], a[:, 2] = rng.normal(0, 0.5, 3000), rng.normal(2.0, 1.5, 3000)  # strafe, walk (per video frame)
    a[:, 3], a[:, 4] = rng.normal(0, 0.02, 3000), rng.normal(0.01, 0.05, 3000)  # pitch, yaw
    maps = plucker_maps(np.stack([action_to_pose(x) for x in a]), K, HW, GRID)
    stats = camera_stats(maps, reference=reference, intrinsics=K, image_hw=HW)
    got = typical_step_motion(stats, K, HW, GRID, frames_per_step=4)
    want = 4 * np.sqrt((a**2).mean(0))
    np.testing.assert_allclose(got[[0, 2, 3, 4]], want[[0, 2, 3, 4]], rtol=0.02)


def test_world_without_statistics_falls_back_to_the_larger_bound():
    """No measured stats: half the larger side of each bound, so a lopsided bound (a game that never walks
    backwards: tz in [-0.015, 26.8]) still walks forward at a useful speed, and S is clipped by the env."""
    low, high = [-9.7, -5.5, -0.015, -0.001, -0.27, -0.001], [9.1, 9.0, 26.8, 0.001, 0.32, 0.001]
    assert typical_step_motion(CameraStats(), K, HW, GRID, 4) is None
    m = KeyboardMapping.for_bounds(low, high)
    assert m.action({"w"})[2] == pytest.approx(13.4) and m.action({"s"})[2] == pytest.approx(-0.015)
    assert m.action({"right"})[4] == pytest.approx(0.16)


MOVEMENT_KEYS = {"w": 2, "s": 2, "a": 0, "d": 0, "left": 4, "right": 4}
"""Movement key -> the action component whose typical motion it must reach. The arrows up/down pitch,
which the Doom data never does (its pitch bounds are +-0.001), so they have no typical motion to reach."""


def test_every_movement_key_moves_the_bundled_world_by_a_typical_step(tmp_path):
    """Drive the viewer's keys (a headless key script on the bundled world): one step of each movement key
    moves the recorded pose by at least 1/4 of the training data's typical per-step motion on its axis."""
    from worldmodel.world import World

    world = World.load()
    typical = typical_step_motion(world.camera_stats, world.meta.intrinsics, world.meta.image_hw, world.latent_hw,
                                  world.frames_per_step)
    script = tmp_path / "each.keys"
    script.write_text("".join(f"1 {key}\n1 r\n" for key in MOVEMENT_KEYS))
    video = tmp_path / "each.mp4"
    env = {**os.environ, "SDL_VIDEODRIVER": "dummy", "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "viewer", "--keys", str(script), "--record", str(video)],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    log = [json.loads(line) for line in (tmp_path / "each.actions.jsonl").read_text().splitlines()]
    steps = [rec for rec in log if not rec["reset"]]
    assert [rec["keys"] for rec in steps] == [[k] for k in MOVEMENT_KEYS]
    for key, rec in zip(MOVEMENT_KEYS, steps, strict=True):
        i = MOVEMENT_KEYS[key]
        pose = np.asarray(rec["c2w"])  # every key starts from a reset, i.e. the identity
        np.testing.assert_allclose(pose, integrate(np.eye(4), np.asarray(rec["action"])), atol=1e-5)
        moved = rotation_angle(pose[:3, :3]) if i >= 3 else abs(pose[i, 3])
        # S relies on World-v0's symmetric action space: the data never walked backwards.
        assert moved >= typical[i] / 4, f"{key}: moved {moved:.4f}, typical step on its axis {typical[i]:.4f}"
