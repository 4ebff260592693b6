"""Tasks in the dream and in the engine: one Task object, one info schema, observation and action modes, start pools.

The learned world here is a small random-weight world file (48x64 pixels, so SB3's NatureCNN
fits it); the engine twin is ViZDoom's take_cover scenario.
"""

import sys
import types

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env
from gymnasium.vector import AutoresetMode

import envs  # noqa: F401  (registers the envs)
from envs.modes import PLANAR_COMPONENTS
from envs.tasks import ActionMap, Task, TakeCover
from envs.world import WorldEnv
from envs.world_vector import WorldVectorEnv
from envs.wrappers import RecordStepVideo
from worldmodel.config import model_config
from worldmodel.dit import WorldDiT
from worldmodel.vae import CausalVAE, vae_config
from worldmodel.world import World, WorldMeta

HW = (48, 64)
LOW = [-9.7, -5.5, -0.1, -0.01, -0.27, -0.01]
HIGH = [9.1, 9.0, 26.8, 0.01, 0.32, 0.01]
SCHEMA = ("pose", "commanded_action", "realised_action", "alive")


def build_task_world(path, hw=HW, starts=3) -> None:
    """A random-weight world file at `hw` with the bundled world's lopsided action bounds."""
    torch.manual_seed(0)
    dit = WorldDiT(model_config("tiny", dim=64, depth=2, heads=4, window=8))
    vae = CausalVAE(vae_config("tiny"))
    with torch.no_grad():
        for p in dit.parameters():  # adaLN-Zero starts as the identity: give every block an effect
            p.add_(0.02 * torch.randn_like(p))
    frames = np.random.default_rng(0).integers(0, 256, (starts, *hw, 3), dtype=np.uint8)
    fx = hw[1] / 2
    intrinsics = [fx, 1.2 * fx, (hw[1] - 1) / 2, (hw[0] - 1) / 2]
    meta = WorldMeta(hw, intrinsics, LOW, HIGH, card={"source": "test", "fps": 35})
    World(dit, vae, meta, start_frames=frames).save(path)


@pytest.fixture(scope="module")
def task_world(tmp_path_factory):
    path = tmp_path_factory.mktemp("task_world") / "world.safetensors"
    build_task_world(path)
    return World.load(path)


def pool(n: int = 2, value: int = 0) -> np.ndarray:
    """A start pool of n flat images, (value + 40 i) grey."""
    return np.stack([np.full((*HW, 3), value + 40 * i, np.uint8) for i in range(n)])


def test_action_map_scales_and_zero_is_no_motion():
    """Guards the action semantics: a normalised action is the same camera motion in both worlds; 0 = none."""
    m = ActionMap(("tx", "ry"), (9.0, 0.25))
    np.testing.assert_allclose(m.to_camera(np.array([0.5, -1.0])), [4.5, 0, 0, 0, -0.25, 0])
    np.testing.assert_allclose(m.to_camera(np.zeros(2)), np.zeros(6))
    np.testing.assert_allclose(m.from_camera(m.to_camera(np.array([0.3, 0.7]))), [0.3, 0.7])
    assert m.space.shape == (2,) and m.space.low.min() == -1 and m.space.high.max() == 1
    with pytest.raises(ValueError, match="distinct names"):
        ActionMap(("tx", "yaw"), (1.0, 1.0))
    with pytest.raises(ValueError, match="finite values > 0"):
        ActionMap(("tx",), (0.0,))


def test_world_env_runs_a_task_with_the_shared_info_schema(task_world):
    """Guards World-v0 with task=: frame obs, [-1, 1] actions, task reward/truncation, pose/commanded/realised info."""
    task = TakeCover(max_tics=12)  # 3 steps of 4 tics
    env = WorldEnv(world=task_world, task=task)
    assert env.observation_space.shape == (*HW, 3) and env.action_space.shape == (1,)
    obs, info = env.reset(seed=0)
    assert obs.shape == (*HW, 3) and obs.dtype == np.uint8
    assert set(SCHEMA) <= set(info) and info["alive"] is None
    rewards, steps = [], 0
    while True:
        obs, r, terminated, truncated, info = env.step(np.array([0.5], np.float32))
        rewards.append(r)
        steps += 1
        if terminated or truncated:
            break
    assert steps == 3 and truncated and not terminated, "TakeCover(max_tics=12) truncates after 3 steps in the dream"
    assert rewards == [4.0] * 3, "the dream's reward is the step's tics (no death signal without a continue head)"
    np.testing.assert_allclose(info["commanded_action"], [4.5, 0, 0, 0, 0, 0])
    np.testing.assert_allclose(info["realised_action"], info["commanded_action"])
    np.testing.assert_allclose(info["pose"][:3, 3], [13.5, 0, 0], atol=1e-9)
    with pytest.raises(ValueError, match=r"tx/9"):
        env.step(np.array([1.5], np.float32))


def test_task_envs_pass_check_env(task_world):
    """Guards the Gymnasium contract in every observation mode with a task (determinism included)."""
    for mode in ("frame", "frames", "latent"):
        env = WorldEnv(world=task_world, task=TakeCover(), obs_mode=mode)
        check_env(env, skip_render_check=True)


def test_task_bounds_must_fit_the_world(task_world):
    """Guards action semantics: a task that asks for more motion than the world knows is refused by name."""
    with pytest.raises(ValueError, match="bound on tx .* exceeds"):
        WorldEnv(world=task_world, task=TakeCover(max_strafe=20.0))
    with pytest.raises(ValueError, match="not both"):
        WorldEnv(world=task_world, task=TakeCover(), reward_fn=lambda o, c, a: 0.0)
    with pytest.raises(ValueError, match="obs_mode"):
        WorldEnv(world=task_world, task=TakeCover(), obs_mode="pixels")
    with pytest.raises(ValueError, match="counts 2 frames per step but the world makes 4"):
        WorldEnv(world=task_world, task=TakeCover(frames_per_step=2))


def test_default_behaviour_without_task_is_unchanged(task_world):
    """Guards today's API: no task = all frames of the step and camera Box(6) actions."""
    env = WorldEnv(world=task_world)
    assert env.observation_space.shape == (4, *HW, 3) and env.action_space.shape == (6,)
    planar = WorldEnv(world=task_world, action_mode="normalized")
    assert planar.action_space.shape == (3,) and planar.core.action_map.components == PLANAR_COMPONENTS
    np.testing.assert_allclose(planar.core.action_map.bounds, [9.7, 26.8, 0.32], rtol=1e-6)


def test_latent_mode_is_the_same_dream_without_decoding(task_world, monkeypatch):
    """Guards obs_mode='latent': the latents equal those the frame mode generates, and nothing is decoded per step."""
    actions = [np.array([v], np.float32) for v in (0.5, -0.2, 1.0)]
    frames_env = WorldEnv(world=task_world, task=TakeCover())
    frames_env.reset(seed=3)
    latent_env = WorldEnv(world=task_world, task=TakeCover(), obs_mode="latent")
    z, _ = latent_env.reset(seed=3)
    assert z.shape == (task_world.cfg.latent_channels, *task_world.latent_hw) and z.dtype == np.float32
    monkeypatch.setattr(latent_env.core.streams.decoder, "step", lambda *a: pytest.fail("latent mode decoded"))
    for a in actions:
        frames_env.step(a)
        z, *_ = latent_env.step(a)
        expected = frames_env.core.streams.gen.recycled[0].float().numpy()
        np.testing.assert_allclose(z, expected, atol=1e-5)
    with pytest.raises(ValueError, match="never decodes"):
        WorldEnv(world=task_world, obs_mode="latent", render_mode="rgb_array")


def test_vector_autoreset_draws_from_the_task_start_pool(task_world):
    """Guards dream starts: a task's start pool replaces the world's starts, at reset and at autoreset."""
    starts = pool(2, value=10)
    task = TakeCover(max_tics=8).with_start_pool(starts)
    assert task.max_steps == 2 and len(task.start_pool) == 2
    venv = WorldVectorEnv(num_envs=3, world=task_world, task=task, autoreset_mode=AutoresetMode.SAME_STEP)
    obs, info = venv.reset(seed=0)
    assert obs.shape == (3, *HW, 3) and set(info["start"]) <= {0, 1}
    for _ in range(2):
        obs, r, term, trunc, info = venv.step(np.zeros((3, 1), np.float32))
    assert trunc.all() and "final_obs" in info
    assert set(info["start"]) <= {0, 1}, "autoreset drew outside the task's start pool"
    for i, k in enumerate(info["start"]):  # the reset frame is pool image k through the VAE
        single, _ = WorldEnv(world=task_world, task=task).reset(options={"start": int(k)})
        assert np.abs(single.astype(int) - obs[i]).max() <= 1, f"env {i} did not restart from pool frame {k}"
    with pytest.raises(ValueError, match="out of range: the world has 2 start frames"):
        venv.reset(options={"start": 2})
    with pytest.raises(ValueError, match="world's resolution"):
        WorldEnv(world=task_world, task=TakeCover().with_start_pool(np.zeros((1, 8, 8, 3), np.uint8)))


def test_rgb_array_list_renders_every_frame_and_record_step_video_keeps_them(task_world, monkeypatch, tmp_path):
    """Guards video: render() hands over all frames of a step, and RecordStepVideo records them at the world's fps."""
    monkeypatch.setitem(sys.modules, "moviepy", types.ModuleType("moviepy"))  # encoding is moviepy's job
    env = WorldEnv(world=task_world, task=TakeCover(), render_mode="rgb_array_list")
    rec = RecordStepVideo(env, str(tmp_path), episode_trigger=lambda e: True)
    rec.reset(seed=0)
    for _ in range(3):
        rec.step(np.array([0.2], np.float32))
    assert len(rec.recorded_frames) == 1 + 3 * 4, "expected the start frame and every frame of 3 steps"
    assert rec.frames_per_sec == 35 == env.metadata["render_fps"]
    np.testing.assert_array_equal(rec.recorded_frames[-1], env.core.frames[0, -1])
    rec.recording = False  # nothing to encode
    with pytest.raises(ValueError, match="rgb_array_list"):
        RecordStepVideo(WorldEnv(world=task_world, render_mode="rgb_array"), str(tmp_path))


class Still(Task):
    """A task with one yaw component and a reward for not moving (tests the base class)."""

    def __init__(self):
        super().__init__(("ry",), (0.2,), max_steps=5)

    def reward(self, s):
        return -float(np.abs(s.commanded).sum())


def test_custom_task_drives_the_dream(task_world):
    """Guards the Task API: a subclass sets components, bounds, reward and the step limit."""
    env = WorldEnv(world=task_world, task=Still())
    env.reset(seed=0)
    _, r, _, _, info = env.step(np.array([-0.5], np.float32))
    assert r == pytest.approx(-0.1) and info["commanded_action"][4] == pytest.approx(-0.1)


# ---- the engine twin ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def take_cover():
    pytest.importorskip("vizdoom")
    env = gym.make("worldmodel/DoomTask-v0").unwrapped
    yield env
    env.close()


def test_take_cover_engine_reports_survival_death_and_the_shared_schema(take_cover):
    """Guards DoomTask-v0: (96, 128, 3) frames, +1 per tic survived, terminated on death, the shared info schema."""
    obs, info = take_cover.reset(seed=1)
    assert obs.shape == (96, 128, 3) and take_cover.action_space.shape == (1,)
    assert set(SCHEMA) <= set(info) and info["alive"] is True
    ret, steps = 0.0, 0
    while True:
        obs, r, terminated, truncated, info = take_cover.step(np.array([0.0], np.float32))
        ret, steps = ret + r, steps + 1
        if terminated or truncated:
            break
    assert terminated and not truncated and info["alive"] is False, "standing still in take_cover ends in death"
    assert ret == info["tics"] and 4 * (steps - 1) <= ret < 4 * steps, "reward is tics survived"
    assert set(SCHEMA) <= set(info) and info["pose"].shape == (4, 4)


def test_take_cover_strafe_is_the_commanded_motion(take_cover):
    """Guards action semantics in the engine: a strafe command realises about that tx (the world's unit)."""
    take_cover.reset(seed=2)
    errors = []
    for k in range(8):
        _, _, terminated, _, info = take_cover.step(np.array([0.6 if k < 4 else -0.6], np.float32))
        if info["alive"]:
            errors.append(info["realised_action"][0] - info["commanded_action"][0])
        if terminated:
            break
    assert errors and np.abs(errors).max() < 1.5, f"strafe realised with errors {errors} (commanded 5.4 units/step)"


def test_take_cover_check_env_and_bad_input():
    """Guards the Gymnasium contract (seeded determinism of the scenario) and named errors."""
    pytest.importorskip("vizdoom")
    env = gym.make("worldmodel/DoomTask-v0", frame_size=(48, 64), render_mode="rgb_array").unwrapped
    try:
        check_env(env, skip_render_check=False)
        env.reset(seed=0)
        with pytest.raises(ValueError, match="no reset options"):
            env.reset(options={"map": "MAP01"})
        with pytest.raises(ValueError, match="outside its bounds"):
            env.step(np.array([2.0], np.float32))
        with pytest.raises(ValueError, match="obs_mode"):
            gym.make("worldmodel/DoomTask-v0", obs_mode="latent")
    finally:
        env.close()


def test_task_eval_cli_prints_survival():
    """Guards the docs' baseline numbers: `python -m agents.task_eval` runs and prints survival statistics as JSON."""
    pytest.importorskip("vizdoom")
    import json
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    r = subprocess.run([sys.executable, "-m", "agents.task_eval", "--policy", "still", "--episodes", "1"],
                       cwd=root, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["episodes"] == 1 and 0 < out["mean"] <= 2100
