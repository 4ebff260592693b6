"""The bundled world: usable with no arguments right after install, evaluated end to end."""

import json
import os
import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import imageio.v2 as imageio
import numpy as np
import pytest

import envs  # noqa: F401 (registers the envs)
from worldmodel.world import BUNDLED, World

ROOT = Path(__file__).resolve().parents[1]


def test_bundled_world_ships_small_with_a_model_card():
    assert BUNDLED.exists(), f"{BUNDLED} is missing: the default world must ship with the package"
    assert BUNDLED.stat().st_size <= 50 * 2**20
    world = World.load()
    card = world.meta.card
    assert card["source"] == "doom" and "metrics" in card and "training" in card
    assert world.start_frames is not None and len(world.start_frames) >= 1
    assert tuple(world.meta.image_hw) == (96, 128)


def test_world_env_works_with_no_arguments():
    env = gym.make("worldmodel/World-v0")
    obs, info = env.reset(seed=0)
    assert obs.shape == (4, 96, 128, 3) and obs.dtype == np.uint8
    for _ in range(3):
        obs, reward, terminated, truncated, info = env.step(np.zeros(6, np.float32))
    assert obs.shape == (4, 96, 128, 3) and np.isfinite(info["c2w"]).all()
    env.close()


def test_viewer_runs_with_no_checkpoint_argument(tmp_path):
    out = tmp_path / "walk.mp4"
    env = {**os.environ, "SDL_VIDEODRIVER": "dummy", "SDL_AUDIODRIVER": "dummy", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "viewer", "--headless", "--steps", "3", "--record", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert len(imageio.mimread(out)) == (3 + 1) * 4


@pytest.mark.slow
def test_evaluation_runs_on_the_bundled_world_and_a_1440_frame_rollout_does_not_collapse(tmp_path):
    out = tmp_path / "eval.json"
    cmd = [sys.executable, "-m", "train.eval", "--quick", "--long-steps", "360", "--json", str(out),
           "--report", str(tmp_path / "report"), "--threads", "1"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(out.read_text())
    assert res["long_run"]["frames"] == 1440
    assert res["long_run"]["collapsed"] is False
    assert (tmp_path / "report" / "index.html").exists()
    for name in ("model", "repeat_last_frame", "camera_zeroed", "camera_shuffled"):
        assert name in res["methods"], name
