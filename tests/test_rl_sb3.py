"""SB3 in the dream and the engine: PPO's CnnPolicy takes both envs as they are; the batched world as a VecEnv."""

import re
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

import envs  # noqa: F401  (registers the envs)
from envs.sb3 import WorldSB3VecEnv
from envs.tasks import TakeCover
from envs.world import WorldEnv
from tests.test_tasks import HW, build_task_world
from worldmodel.world import World

sb3 = pytest.importorskip("stable_baselines3")
ROOT = Path(__file__).resolve().parents[1]
PPO_SMALL = {"n_steps": 32, "batch_size": 32, "n_epochs": 1, "seed": 0, "device": "cpu"}


@pytest.fixture(scope="module")
def task_world(tmp_path_factory):
    path = tmp_path_factory.mktemp("rl_world") / "world.safetensors"
    build_task_world(path)
    return World.load(path)


def test_ppo_cnn_policy_trains_on_world_env_unmodified(task_world):
    """Guards RL readiness of World-v0: PPO('CnnPolicy', env) learns a few hundred dream steps, no wrapper."""
    env = WorldEnv(world=task_world, task=TakeCover(max_tics=64))
    model = sb3.PPO("CnnPolicy", env, **PPO_SMALL).learn(total_timesteps=192)
    assert model.num_timesteps >= 192
    action, _ = model.predict(env.reset(seed=0)[0], deterministic=True)
    assert action.shape == (1,) and -1 <= action[0] <= 1


def test_ppo_on_the_latent_observation(task_world):
    """Guards obs_mode='latent': PPO's MlpPolicy trains on the undecoded latent."""
    env = WorldEnv(world=task_world, task=TakeCover(max_tics=64), obs_mode="latent")
    assert sb3.PPO("MlpPolicy", env, **PPO_SMALL).learn(total_timesteps=64).num_timesteps >= 64


def test_ppo_cnn_policy_trains_on_the_real_task_env():
    """Guards RL readiness of DoomTask-v0: PPO('CnnPolicy', env) runs a few hundred engine steps; episodes end."""
    pytest.importorskip("vizdoom")
    env = gym.make("worldmodel/DoomTask-v0")
    try:
        model = sb3.PPO("CnnPolicy", env, **PPO_SMALL).learn(total_timesteps=192)
        assert model.num_timesteps >= 192 and len(model.ep_info_buffer) >= 1, "no take_cover episode ended"
        assert all(0 < e["r"] <= 4 * e["l"] for e in model.ep_info_buffer), "return = tics survived, 4 per step at most"
    finally:
        env.close()


def test_vecenv_adapter_resets_in_step_and_reports_terminal_observations(task_world):
    """Guards WorldSB3VecEnv: SB3's autoreset contract (terminal_observation, TimeLimit.truncated), seeding, PPO."""
    task = TakeCover(max_tics=8)  # 2 steps
    venv = WorldSB3VecEnv(num_envs=3, world=task_world, task=task)
    assert venv.observation_space.shape == (*HW, 3) and venv.action_space.shape == (1,)
    venv.seed(5)
    obs = venv.reset()
    assert obs.shape == (3, *HW, 3) and obs.dtype == np.uint8
    again = WorldSB3VecEnv(num_envs=3, world=task_world, task=task)
    again.seed(5)
    np.testing.assert_array_equal(again.reset(), obs)  # env i seeded 5 + i
    zero = np.zeros((3, 1), np.float32)
    _, rewards, dones, infos = venv.step(zero)
    assert not dones.any() and rewards.dtype == np.float32 and np.all(rewards == 4)
    obs, _, dones, infos = venv.step(zero)
    assert dones.all()
    for info in infos:
        assert info["terminal_observation"].shape == (*HW, 3) and info["TimeLimit.truncated"] is True
        assert "pose" in info and "commanded_action" in info
    with pytest.raises(NotImplementedError, match="share one WorldVectorEnv"):
        venv.set_attr("task", None)
    model = sb3.PPO("CnnPolicy", venv, n_steps=16, batch_size=48, n_epochs=1, seed=0, device="cpu")
    assert model.learn(total_timesteps=96).num_timesteps >= 96


def agents_doc_example() -> str:
    """The first Python block of docs/agents.md (the SB3-in-the-dream example)."""
    text = (ROOT / "docs/agents.md").read_text()
    return re.search(r"```python\n(.*?)```", text, re.S).group(1)


def run_example(code: str) -> None:
    """Execute the example, then close the envs it made (their engines must not outlive the test)."""
    namespace: dict = {}
    try:
        exec(compile(code, "docs/agents.md", "exec"), namespace)
        assert namespace["info"]["tics"] > 0
    finally:
        for name in ("real", "dream"):
            if name in namespace:
                namespace[name].close()


def test_docs_example_runs_on_a_small_world(task_world, monkeypatch):
    """Guards docs/agents.md: its training example runs as written, on a small world and a 1-frame pool for speed."""
    import envs.doom_task
    import envs.world

    code = agents_doc_example()
    body = [line for line in code.splitlines() if line.strip() and not line.startswith(("import ", "from "))]
    assert "PPO(\"CnnPolicy\"" in code and len(body) <= 10, f"the example is {len(body)} lines past its imports"
    monkeypatch.setattr(envs.world, "load_world", lambda checkpoint=None, world=None, device="cpu": task_world)
    real_pool = envs.doom_task.collect_start_pool
    monkeypatch.setattr(envs.doom_task, "collect_start_pool",
                        lambda task, n, **kw: real_pool(task, 1, frame_size=HW, **kw))
    code = code.replace("total_timesteps=512", "total_timesteps=64").replace("n_steps=128", "n_steps=32")
    run_example(code)


@pytest.mark.slow
def test_docs_example_runs_verbatim():
    """The docs/agents.md example as written: the bundled world, a 16-frame start pool, PPO, a real episode."""
    pytest.importorskip("vizdoom")
    run_example(agents_doc_example())
