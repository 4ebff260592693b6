"""PPO agents for TakeCover: the train command (dream and engine), the engine evaluation with the dream's prediction.

The world is a small random-weight world file (48x64) with heads whose continue probability is
fixed at sigmoid(1) = 0.73, so dream episodes never end at the 0.5 threshold and end after about 4
steps with `termination="sample"`; the engine twin is ViZDoom's take_cover.
"""

import json
import subprocess
import sys
from pathlib import Path

import imageio
import numpy as np
import pytest
import torch

from agents.heads_data import encode_video
from agents.policy_envs import dream_env, engine_env, load_task_world, set_termination
from agents.task_eval import random_policy
from tests.test_tasks import build_task_world
from worldmodel.heads import HeadsConfig, WorldHeads
from worldmodel.world import World

sb3 = pytest.importorskip("stable_baselines3")
ROOT = Path(__file__).resolve().parents[1]
CONTINUE_LOGIT = 1.0
"""The test heads' continue logit: probability 0.73, above the 0.5 threshold."""


@pytest.fixture(scope="module")
def heads_world_file(tmp_path_factory) -> Path:
    """A small world file with TakeCover heads: reward 4, continue 0.73, never blocked; 'sample' termination."""
    path = tmp_path_factory.mktemp("ppo_world") / "world.safetensors"
    build_task_world(path)
    world = World.load(path)
    torch.manual_seed(0)
    cfg = HeadsConfig(latent_channels=world.cfg.latent_channels, latent_hw=list(world.latent_hw),
                      termination="sample", reward_range=[0.0, 4.0])
    heads = WorldHeads(cfg)
    with torch.no_grad():
        heads.out.weight.zero_()
        heads.out.bias.copy_(torch.tensor([4.0, CONTINUE_LOGIT, -20.0, 0.0]))
    World(world.dit, world.vae, world.meta, world.camera_stats, world.start_frames, heads=heads).save(path)
    return path


@pytest.fixture(scope="module")
def trained_run(heads_world_file, tmp_path_factory) -> Path:
    """`python -m agents.train_ppo` for 256 dream steps (4 envs), as a subprocess; returns the run folder."""
    out = tmp_path_factory.mktemp("agents")
    cmd = [sys.executable, "-m", "agents.train_ppo", "--env", "dream", "--world", str(heads_world_file),
           "--steps", "256", "--n-envs", "4", "--n-steps", "32", "--batch-size", "64", "--n-epochs", "1",
           "--start-pool", "0", "--videos", "0", "--out", str(out), "--run", "tiny"]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300,
                       env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    assert "ppo: 100%" in r.stderr, "no progress bar"
    return out / "tiny"


def test_train_command_writes_policy_tensorboard_and_summary(trained_run):
    """Guards `python -m agents.train_ppo --env dream`: a policy zip SB3 loads, TensorBoard events with episode
    returns, and a train.json with the steps and times (dream episodes ended, so the heads drove the episodes)."""
    model = sb3.PPO.load(trained_run / "policy.zip", device="cpu")
    assert model.observation_space.shape == (16, 6, 8) and model.action_space.shape == (1,)
    events = list((trained_run / "tb").rglob("events.out.tfevents.*"))
    assert events, "no TensorBoard events"
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(events[0].parent)).Reload()
    assert "rollout/ep_rew_mean" in acc.Tags()["scalars"], acc.Tags()["scalars"]
    summary = json.loads((trained_run / "train.json").read_text())
    assert summary["steps"] >= 256 and summary["train_episodes"] > 0 and summary["termination"] == "sample"
    assert summary["cpu_min"] > 0 and json.loads((trained_run / "args.json").read_text())["env"] == "dream"


def test_train_help_lists_every_setting():
    """Guards `python -m agents.train_ppo --help`: every Args field is a documented flag."""
    r = subprocess.run([sys.executable, "-m", "agents.train_ppo", "--help"], cwd=ROOT, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    for flag in ("--env {dream,real}", "--world", "--steps", "--n-envs", "--obs {latent,frame}", "--termination",
                 "--max-minutes", "--videos"):
        assert flag in r.stdout, flag


def test_termination_knob_sets_how_the_dream_ends(heads_world_file):
    """Guards the knob against dream exploitation: at continue 0.73 'threshold' never ends an episode, 'sample'
    ends it with probability 0.27 per step (seeded episodes stay reproducible)."""
    world = load_task_world(heads_world_file, termination="threshold")
    env = dream_env(world, "latent")
    lengths = {}
    for rule in ("threshold", "sample"):
        set_termination(world, rule)
        env.reset(seed=0)
        n, done = 0, False
        while not done and n < 30:
            _, _, done, _, _ = env.step(np.zeros(1, np.float32))
            n += 1
        lengths[rule] = n
    assert lengths["threshold"] == 30 and lengths["sample"] < 30, lengths
    with pytest.raises(ValueError, match="termination"):
        set_termination(world, "greedy")


def test_engine_latents_are_the_vae_encoding_of_the_episode(heads_world_file):
    """Guards the latent policy's engine observation: streamed per step, equal to encoding the episode in one pass
    (the latents the heads were trained on)."""
    pytest.importorskip("vizdoom")
    world = load_task_world(heads_world_file)
    env = engine_env(world, "latent")
    try:
        obs, _ = env.reset(seed=0)
        latents, frames = [obs], [env.last_frames[-1]]
        for _ in range(3):
            obs, _, terminated, _, _ = env.step(np.array([0.5], np.float32))
            latents.append(obs)
            frames.extend(env.last_frames)
            assert not terminated
    finally:
        env.close()
    whole = encode_video(world, np.stack(frames))  # (4, C, h, w)
    np.testing.assert_allclose(np.stack(latents), whole, atol=1e-4)


def test_policy_eval_prints_real_dream_and_world_models_numbers(trained_run, heads_world_file, capsys, tmp_path):
    """Guards `python -m agents.policy_eval`: the trained policy and random play in the engine (2 episodes),
    the dream's survival from the same start frames, and World Models' rows in the printed table."""
    pytest.importorskip("vizdoom")
    from agents.policy_eval import main

    out = main(["--policy", str(trained_run / "policy.zip"), "--world", str(heads_world_file), "--episodes", "2",
                "--json", str(tmp_path / "eval.json")])
    text = capsys.readouterr().out
    assert "World Models: controller trained in its dream" in text and "1092 ± 556" in text and "> 750" in text
    assert "| PPO tiny (latent) | dream |" in text and "| random" in text
    names = [r["name"] for r in out["rows"]]
    assert names == ["PPO tiny (latent)", "random (uniform strafe each step)"]
    for row in out["rows"]:
        assert 0 < row["real"]["mean"] <= 2100 and 0 < row["dream"]["mean"] <= 2100, row
    detail = json.loads((tmp_path / "eval.json").read_text())["episodes_detail"]
    assert detail["policy"]["seeds"] == [0, 1] and len(detail["random"]["dream"]) == 2


def test_videos_show_the_engine_and_the_dream_episode(heads_world_file, tmp_path):
    """Guards the run's videos: an engine episode (every tic) and the dream's from the same start frame, as mp4."""
    pytest.importorskip("vizdoom")
    from agents.policy_eval import record_videos

    world = load_task_world(heads_world_file)
    paths = record_videos(random_policy(1), world, "latent", 1, tmp_path)
    assert [Path(p).name.split("_")[0] for p in paths] == ["real", "dream"]
    for p in paths:
        frames = list(imageio.get_reader(p, format="FFMPEG").iter_data())
        assert len(frames) > 1 and frames[0].shape == (48, 64, 3)
