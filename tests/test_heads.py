"""A world's learned heads: their shapes and errors, the world file with and without them, World-v0 taking
reward, termination and realised motion from them, their resumable training, and their measurement.

Everything here runs on a small random-weight world and fake engine episodes (no engine), except
the last test, which checks the engine task env's `blocked` label in ViZDoom.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from agents.heads_data import load_split
from agents.heads_eval import auc, dream_survival, heads_metrics
from agents.heads_eval import main as heads_eval_main
from envs.tasks import TakeCover, blocked_labels
from envs.world import WorldEnv
from envs.world_vector import WorldVectorEnv
from test_tasks import Still, build_task_world
from train.common import ConfigError
from train.heads import HeadsPhase, TrainHeadsConfig, balanced_weights
from worldmodel.checkpoint import CheckpointError, load_checkpoint, load_meta, save_checkpoint
from worldmodel.heads import HeadsConfig, WorldHeads
from worldmodel.world import World


@pytest.fixture(scope="module")
def plain_world(tmp_path_factory):
    path = tmp_path_factory.mktemp("heads_world") / "world.safetensors"
    build_task_world(path)
    return World.load(path)


def heads_for(world: World, **kw) -> WorldHeads:
    """Random heads that fit `world`'s latents (TakeCover's tx, bound 9)."""
    torch.manual_seed(0)
    cfg = HeadsConfig(latent_channels=world.cfg.latent_channels, latent_hw=list(world.latent_hw), **kw)
    return WorldHeads(cfg)


def forced(world: World, reward: float, alive: bool, blocked: bool, motion: float = 0.0, **kw) -> World:
    """`world` with heads whose outputs ignore the input: a fixed reward, continue, blocked and motion."""
    heads = heads_for(world, **kw)
    with torch.no_grad():
        heads.out.weight.zero_()
        heads.out.bias.copy_(torch.tensor([reward, 20.0 if alive else -20.0, 20.0 if blocked else -20.0, motion]))
    return World(world.dit, world.vae, world.meta, world.camera_stats, world.start_frames, heads=heads)


def fake_episodes(folder, seeds, latent_shape, steps: int = 12) -> None:
    """Engine-like episodes without the engine: random latents and strafes, a wall stop at step 3, death at the end."""
    folder.mkdir(parents=True, exist_ok=True)
    for s in seeds:
        rng = np.random.default_rng(s)
        actions = rng.uniform(-1, 1, (steps, 1)).astype(np.float32)
        realised = actions.copy()
        actions[3], realised[3] = 0.8, 0.0  # blocked
        reward = np.full(steps, 4.0, np.float32)
        reward[-1] = 2.0
        alive = np.ones(steps, bool)
        alive[-1] = False
        latents = rng.normal(size=(steps, *latent_shape)).astype(np.float16)
        np.savez(folder / f"seed_{s:06d}.npz", latents=latents, actions=actions, realised=realised, reward=reward,
                 alive=alive, seed=np.asarray(s))


# ---- the module ---------------------------------------------------------------------------------


def test_heads_shapes_size_and_bad_inputs():
    """Guards the heads' contract: (B, C, h, w) + (B, k) in, one value per head out; bad input named; tiny."""
    heads = WorldHeads(HeadsConfig())  # the bundled world's latent: 16 x 12 x 16
    out = heads(torch.randn(5, 16, 12, 16), torch.rand(5, 1))
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "reward": (5,), "continue_logit": (5,), "blocked_logit": (5,), "motion": (5, 1)}
    assert 4 * sum(p.numel() for p in heads.parameters()) < 1_000_000 / 4, "heads should stay tiny (< 250 kB)"
    with pytest.raises(ValueError, match=r"latent of shape \(5, 16, 6, 8\), expected \(B, 16, 12, 16\)"):
        heads(torch.randn(5, 16, 6, 8), torch.rand(5, 1))
    with pytest.raises(ValueError, match=r"action of shape \(5, 2\), expected \(5, 1\)"):
        heads(torch.randn(5, 16, 12, 16), torch.rand(5, 2))
    with pytest.raises(ValueError, match="NaN or inf"):
        heads(torch.full((1, 16, 12, 16), float("nan")), torch.zeros(1, 1))
    with pytest.raises(ValueError, match=r"\(B, 6\)"):
        heads.predict(torch.randn(1, 16, 12, 16), np.zeros((1, 5)))
    for bad in (dict(bounds=[0.0]), dict(components=["yaw"]), dict(termination="never"), dict(continue_threshold=2.0),
                dict(reward_range=[4.0, 0.0])):
        with pytest.raises(ValueError):
            HeadsConfig(**bad)


def test_predict_realised_motion_is_the_command_unless_blocked(plain_world):
    """Guards the realised-motion rule: the command when free; the motion head's components where blocked."""
    free = forced(plain_world, 4.0, True, False).heads
    stuck = forced(plain_world, 4.0, True, True, motion=0.1).heads
    z = torch.randn(2, plain_world.cfg.latent_channels, *plain_world.latent_hw)
    cmd = np.array([[4.5, 0, 0, 0, 0, 0], [-9.0, 0, 0, 0, 0.1, 0]])
    np.testing.assert_allclose(free.predict(z, cmd)["realised"], cmd)
    clipped = forced(plain_world, 7.0, True, False, reward_range=[0.0, 4.0]).heads
    assert clipped.predict(z, cmd)["reward"].tolist() == [4.0, 4.0], "reward clipped to the training data's range"
    p = stuck.predict(z, cmd)
    np.testing.assert_allclose(p["realised"][:, 0], [0.9, 0.9], rtol=1e-5)  # 0.1 of the bound 9
    np.testing.assert_allclose(p["realised"][:, 1:], cmd[:, 1:])
    assert (p["blocked_prob"] > 0.99).all() and (p["continue_prob"] > 0.99).all()


# ---- the world file -----------------------------------------------------------------------------


def test_world_file_round_trip_with_and_without_heads(plain_world, tmp_path):
    """Guards the optional `heads` entry: absent -> loads as before (no key written); present -> identical heads."""
    plain = tmp_path / "plain.safetensors"
    plain_world.save(plain)
    assert "heads" not in load_meta(plain) and World.load(plain).heads is None
    assert not any(k.startswith("heads.") for k in load_checkpoint(plain)[0])
    with_heads = forced(plain_world, 3.0, True, False, termination="sample", continue_threshold=0.3)
    path = tmp_path / "heads.safetensors"
    with_heads.save(path)
    loaded = World.load(path)
    assert loaded.heads is not None and loaded.heads.cfg == with_heads.heads.cfg
    for k, v in with_heads.heads.state_dict().items():
        torch.testing.assert_close(loaded.heads.state_dict()[k], v)
    assert not loaded.heads.training


def test_broken_heads_give_a_clear_error(plain_world, tmp_path):
    """Guards loading: heads settings without tensors, invalid settings, wrong shapes, another latent size."""
    path = tmp_path / "heads.safetensors"
    forced(plain_world, 3.0, True, False).save(path)
    tensors, meta = load_checkpoint(path)
    no_tensors = {k: v for k, v in tensors.items() if not k.startswith("heads.")}

    def write(name, t, m):
        p = tmp_path / name
        save_checkpoint(p, t, m)
        return p

    with pytest.raises(CheckpointError, match="declares heads .* no heads.\\* tensors"):
        World.load(write("a.safetensors", no_tensors, meta))
    with pytest.raises(CheckpointError, match="invalid heads.*termination"):
        World.load(write("b.safetensors", tensors, {**meta, "heads": {**meta["heads"], "termination": "never"}}))
    with pytest.raises(CheckpointError, match=r"\(its heads\) does not match the model: shape mismatch"):
        World.load(write("c.safetensors", tensors, {**meta, "heads": {**meta["heads"], "width": 16}}))
    with pytest.raises(CheckpointError, match="heads read latents"):
        # [7, 8] gives the same weight shapes as the world's [6, 8]: only the world-level check can catch it
        World.load(write("d.safetensors", tensors, {**meta, "heads": {**meta["heads"], "latent_hw": [7, 8]}}))


# ---- World-v0 -----------------------------------------------------------------------------------


def test_world_env_ends_and_rewards_from_the_heads(plain_world):
    """Guards World-v0 with heads: a head that predicts death terminates at once, reward is the head's,
    and info carries alive / continue_prob / blocked like the engine task env."""
    env = WorldEnv(world=forced(plain_world, 2.5, alive=False, blocked=False), task=TakeCover())
    _, info = env.reset(seed=0)
    assert info["alive"] is True and info["continue_prob"] == 1.0 and info["blocked"] is False
    _, r, terminated, truncated, info = env.step(np.array([0.5], np.float32))
    assert terminated and not truncated and info["alive"] is False, "a head that predicts death must terminate"
    assert r == pytest.approx(2.5) and info["continue_prob"] < 0.01
    env = WorldEnv(world=forced(plain_world, 4.0, alive=True, blocked=False), task=TakeCover(max_tics=12))
    env.reset(seed=0)
    for _ in range(3):
        _, r, terminated, truncated, info = env.step(np.array([0.5], np.float32))
    assert truncated and not terminated and r == pytest.approx(4.0) and info["alive"] is True


def test_world_env_moves_by_the_realised_motion(plain_world):
    """Guards the motion heads in the dream: blocked -> realised tx is the motion head's, the pose does not move."""
    env = WorldEnv(world=forced(plain_world, 4.0, alive=True, blocked=True, motion=0.0), task=TakeCover())
    env.reset(seed=0)
    _, _, _, _, info = env.step(np.array([1.0], np.float32))
    assert info["blocked"] is True and info["blocked_prob"] > 0.99
    np.testing.assert_allclose(info["commanded_action"], [9, 0, 0, 0, 0, 0])
    np.testing.assert_allclose(info["realised_action"], np.zeros(6), atol=1e-6)
    np.testing.assert_allclose(info["pose"], np.eye(4), atol=1e-6)


def test_heads_are_unused_for_another_task_and_in_the_vector_env_agree(plain_world):
    """Guards scope and batching: heads of take_cover leave other tasks alone; the vector env ends per head."""
    world = forced(plain_world, 2.5, alive=False, blocked=False)
    env = WorldEnv(world=world, task=Still())
    env.reset(seed=0)
    _, _, terminated, _, info = env.step(np.array([0.5], np.float32))
    assert not terminated and "continue_prob" not in info
    venv = WorldVectorEnv(num_envs=2, world=world, task=TakeCover(), obs_mode="latent")
    venv.reset(seed=0)
    _, r, terminated, _, info = venv.step(np.full((2, 1), 0.3, np.float32))
    assert terminated.all() and np.allclose(r, 2.5) and not info["alive"].any()


def test_sampled_termination_follows_the_episode_seed(plain_world):
    """Guards termination='sample': ends are drawn with the episode's generator (same seed, same ending)."""
    world = forced(plain_world, 4.0, alive=True, blocked=False, termination="sample")
    with torch.no_grad():
        world.heads.out.bias[1] = 0.0  # continue probability 0.5
    lengths = []
    for seed in (3, 3, 4, 5, 6):
        env = WorldEnv(world=world, task=TakeCover(), obs_mode="latent")
        env.reset(seed=seed)
        n, done = 0, False
        while not done and n < 50:
            _, _, done, _, _ = env.step(np.zeros(1, np.float32))
            n += 1
        lengths.append(n)
    assert lengths[0] == lengths[1] and len(set(lengths)) > 1 and max(lengths) < 50


# ---- labels, metrics, training ------------------------------------------------------------------


def test_labels_weights_and_auc():
    """Guards the definitions behind the reported numbers: blocked steps, class-balanced weights, AUC."""
    counted, blocked = blocked_labels(np.array([[1.0], [1.0], [0.05], [-0.5]]), np.array([[0.9], [0.2], [0.0], [0.0]]))
    assert counted.tolist() == [True, True, False, True] and blocked.tolist() == [False, True, False, True]
    w = balanced_weights(np.array([True, False, False, False]))
    assert w.sum() == pytest.approx(4) and w[0] == pytest.approx(3 * w[1])
    assert auc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([False, False, True, True])) == pytest.approx(0.75)
    assert auc(np.array([1.0, 1.0]), np.array([True, False])) == pytest.approx(0.5)


def heads_config(tmp, data, **kw) -> TrainHeadsConfig:
    base = dict(data_dir=str(data), train_episodes=3, heldout_episodes=2, steps=4, batch_size=8, ckpt_every=2,
                log_every=1, width=4, hidden=8, start_frames=0, run_dir=str(tmp / "run"),
                out=str(tmp / "world.safetensors"), threads=1, progress_bar=False)
    return TrainHeadsConfig(**{**base, **kw})


@pytest.fixture()
def heads_data(plain_world, tmp_path):
    shape = (plain_world.cfg.latent_channels, *plain_world.latent_hw)
    fake_episodes(tmp_path / "data" / "train", range(3), shape)
    fake_episodes(tmp_path / "data" / "heldout", range(100000, 100002), shape)
    return tmp_path / "data"


def test_heads_training_resumes_exactly_and_exports_a_world(plain_world, heads_data, tmp_path):
    """Guards train.heads: stopped after 2 steps and resumed = 4 steps straight; the export carries the heads."""
    straight = HeadsPhase(heads_config(tmp_path / "a", heads_data), world=plain_world)
    summary = straight.run()
    assert summary["steps"] == 4 and summary["heldout"]["episodes"] == 2
    first = HeadsPhase(heads_config(tmp_path / "b", heads_data, stop_after=2), world=plain_world)
    assert first.run()["stopped_early"]
    resumed = HeadsPhase(heads_config(tmp_path / "b", heads_data, resume=True), world=plain_world)
    assert resumed.run()["steps"] == 4
    for k, v in straight.heads.state_dict().items():
        torch.testing.assert_close(resumed.heads.state_dict()[k], v, msg=f"resumed heads differ at {k}")
    out = World.load(tmp_path / "a" / "world.safetensors")
    assert out.heads is not None and out.heads.cfg.task == "take_cover" and out.heads.cfg.width == 4
    assert out.meta.card["heads"]["heldout"]["episodes"] == 2
    assert json.loads((tmp_path / "a" / "run" / "heldout.json").read_text())["steps"] == 24
    with pytest.raises(ConfigError, match="overlap"):
        heads_config(tmp_path, heads_data, heldout_seed=2)
    with pytest.raises(ConfigError, match="other settings"):
        HeadsPhase(heads_config(tmp_path / "b", heads_data, resume=True, lr=1.0, steps=6), world=plain_world).run()


def test_heads_eval_cli_reports_reward_termination_and_collision(plain_world, heads_data, tmp_path, capsys):
    """Guards `python -m agents.heads_eval`: held-out reward, termination and collision scores as JSON."""
    path = tmp_path / "w.safetensors"
    forced(plain_world, 4.0, alive=True, blocked=False).save(path)
    out = heads_eval_main(["--world", str(path), "--episodes", "2", "--data", str(heads_data / "heldout")])
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed.keys() == out.keys()
    for k, v in out.items():  # key by key: pytest.approx refuses dicts holding lists
        assert printed[k] == (pytest.approx(v, nan_ok=True) if isinstance(v, float) else v), k
    assert out["steps"] == 24 and out["ending_steps"] == 2 and out["blocked_steps"] == 2
    assert out["termination_recall"] == 0.0 and out["termination_accuracy"] == pytest.approx(22 / 24)
    assert out["collision_recall"] == 0.0 and out["reward_accuracy"] == pytest.approx(22 / 24)
    dead = forced(plain_world, 2.0, alive=False, blocked=True)
    m = heads_metrics(dead.heads, _load(heads_data))
    assert m["termination_recall"] == 1.0 and m["collision_recall"] == 1.0 and m["episodes_ended_early"] == 1.0
    assert dream_survival(dead, 2) == [2.0, 2.0], "a dream episode under heads that predict death lasts one step"


def test_train_heads_command_runs_from_its_hydra_config(plain_world, heads_data, tmp_path):
    """Guards `python -m train.heads` (train/conf/heads.yaml + the hydra entry point) on cached episodes, no engine."""
    world = tmp_path / "plain.safetensors"
    plain_world.save(world)
    args = [f"world={world}", f"data_dir={heads_data}", "train_episodes=3", "heldout_episodes=2", "steps=2",
            "width=4", "hidden=8", "start_frames=0", f"run_dir={tmp_path / 'run'}", f"out={tmp_path / 'w.safetensors'}",
            "progress_bar=false"]
    root = Path(__file__).resolve().parents[1]
    r = subprocess.run([sys.executable, "-m", "train.heads", *args], cwd=root, capture_output=True, text=True,
                       timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-2000:]
    assert World.load(tmp_path / "w.safetensors").heads.cfg.hidden == 8


def _load(data):
    return load_split(data / "heldout", range(100000, 100002))


# ---- the engine ---------------------------------------------------------------------------------


def test_engine_reports_blocked_at_the_wall():
    """Guards the collision label: DoomTask-v0 says `blocked` once a held strafe pushes into take_cover's wall."""
    pytest.importorskip("vizdoom")
    import gymnasium as gym

    env = gym.make("worldmodel/DoomTask-v0", frame_size=(48, 64)).unwrapped
    try:
        _, info = env.reset(seed=0)
        assert info["blocked"] is False
        seen = []
        for _ in range(60):  # the room is about 736 units wide, the start in its middle: 41 steps of 9 units
            _, _, terminated, _, info = env.step(np.array([1.0], np.float32))
            seen.append(info["blocked"])
            if terminated:
                break
        assert not any(seen[:30]) and any(seen), f"no wall reached while holding right: {seen}"
    finally:
        env.close()
