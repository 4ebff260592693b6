"""World-v0: the Gymnasium contract, the batched vector env, validation, long rollouts.

Every test builds a small random-weight world file (32x48 pixels), so none depends on the
bundled world existing.
"""

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env
from gymnasium.vector import AutoresetMode

import envs  # noqa: F401  (registers worldmodel/World-v0)
from envs.rewards import forward_progress_reward, leave_radius_termination
from envs.world import WorldEnv
from envs.wrappers import SingleFrameObservation, SingleFrameVectorObservation
from worldmodel.bench.common import perturb_, rss_bytes
from worldmodel.camera import integrate
from worldmodel.checkpoint import CheckpointError
from worldmodel.config import model_config
from worldmodel.dit import WorldDiT
from worldmodel.vae import CausalVAE, vae_config
from worldmodel.world import World, WorldMeta

HW = (32, 48)
LOW = [-8.0, -8.0, -8.0, -0.3, -0.3, -0.3]
HIGH = [8.0, 8.0, 8.0, 0.3, 0.3, 0.3]
FPS = 4


def build_world(path, card=None) -> None:
    """A random-weight world file; parameters are perturbed so the output depends on the past and the camera."""
    torch.manual_seed(0)
    dit = WorldDiT(model_config("tiny", dim=64, depth=2, heads=4, window=8))
    vae = CausalVAE(vae_config("tiny"))
    perturb_(dit, 0.02, seed=None)  # adaLN-Zero starts as the identity: give every block an effect
    starts = np.random.default_rng(0).integers(0, 256, (3, *HW, 3), dtype=np.uint8)
    meta = WorldMeta(HW, [24.0, 24.0, 23.5, 15.5], LOW, HIGH, card=card or {"source": "test"})
    World(dit, vae, meta, start_frames=starts).save(path)


@pytest.fixture(scope="module")
def world_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("world") / "world.safetensors"
    build_world(path)
    return path


@pytest.fixture(scope="module")
def world(world_file):
    return World.load(world_file)


def random_actions(steps: int, n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.uniform(np.array(LOW) / 2, np.array(HIGH) / 2, (steps, n, 6)).astype(np.float32)


def assert_frames_match(a: np.ndarray, b: np.ndarray, what: str) -> None:
    """Frames from a batch of N vs N batches of 1: equal up to float rounding (a few pixels off by 1)."""
    diff = np.abs(a.astype(np.int16) - b.astype(np.int16))
    assert diff.max() <= 1, f"{what}: frames differ by up to {diff.max()} (expected batched == single)"
    assert (diff > 0).mean() < 0.005, f"{what}: {100 * (diff > 0).mean():.2f}% of pixel values differ"


def test_check_env_passes(world_file):
    """Guards the Gymnasium contract: spaces, reset/step signatures, seeded determinism (infos included), render."""
    env = gym.make("worldmodel/World-v0", checkpoint=world_file, render_mode="rgb_array")
    check_env(env.unwrapped, skip_render_check=False)
    assert env.action_space.shape == (6,) and env.action_space.dtype == np.float32
    np.testing.assert_allclose(env.action_space.low, LOW)  # bounds come from the world file
    np.testing.assert_allclose(env.action_space.high, HIGH)
    assert env.observation_space.shape == (FPS, *HW, 3) and env.observation_space.dtype == np.uint8
    env.reset(seed=0)
    assert env.render().shape == (*HW, 3)


def test_make_vec_returns_batched_observations(world_file):
    """make_vec builds our batched env (not a SyncVectorEnv of copies) with the Gymnasium 1.x vector layout."""
    venv = gym.make_vec("worldmodel/World-v0", num_envs=4, checkpoint=world_file)
    assert type(venv.unwrapped).__name__ == "WorldVectorEnv"
    assert venv.metadata["autoreset_mode"] == AutoresetMode.NEXT_STEP
    obs, info = venv.reset(seed=0)
    assert obs.shape == (4, FPS, *HW, 3) and obs.dtype == np.uint8
    assert info["c2w"].shape == (4, 4, 4) and info["_c2w"].all()
    obs, rew, term, trunc, info = venv.step(random_actions(1, 4)[0])
    assert obs.shape == (4, FPS, *HW, 3) and rew.shape == term.shape == trunc.shape == (4,)
    assert venv.observation_space.contains(obs)
    assert (info["step"] == 1).all()


def test_missing_bundled_world_names_the_file(monkeypatch, tmp_path):
    """With no checkpoint and no bundled world, make() must say which file is missing and what to pass."""
    import worldmodel.world

    missing = tmp_path / "world_tiny.safetensors"
    monkeypatch.setattr(worldmodel.world, "BUNDLED", missing)
    with pytest.raises(CheckpointError, match="world_tiny.safetensors.*checkpoint=PATH"):
        gym.make("worldmodel/World-v0")


def count_forwards(monkeypatch) -> list[int]:
    """Count WorldDiT.forward_step calls (one per transformer evaluation of the whole batch)."""
    calls = [0]
    original = WorldDiT.forward_step

    def counted(self, *args, **kwargs):
        calls[0] += 1
        return original(self, *args, **kwargs)

    monkeypatch.setattr(WorldDiT, "forward_step", counted)
    return calls


def test_vector_env_equals_single_envs_with_one_forward_per_step(world, monkeypatch):
    """N batched envs == N single envs (seeds s+i, same actions), across autoresets, with ONE forward per step.

    Env 1 walks fast and terminates early (leaves a radius), every env truncates at step 7: the
    vector env must autoreset them on the next step (NEXT_STEP) exactly as a single env reset
    there would, and still use one transformer evaluation for the whole batch (none when all reset).
    """
    N, seed, steps = 3, 11, 12
    hooks = dict(max_episode_steps=7, reward_fn=forward_progress_reward, termination_fn=leave_radius_termination(10.0))
    venv = gym.make_vec("worldmodel/World-v0", num_envs=N, world=world, **hooks)
    singles = [WorldEnv(world=world, **hooks) for _ in range(N)]
    actions = random_actions(steps, N, seed=3) / 4
    actions[:, 1, 2] = 3.9  # env 1 moves forward 3.9 units a step: leaves the 10-unit radius on step 3

    obs, vinfo = venv.reset(seed=seed)
    for i, env in enumerate(singles):
        o, info = env.reset(seed=seed + i)
        assert_frames_match(obs[i], o, f"reset env {i}")
        assert vinfo["start"][i] == info["start"]
    calls = count_forwards(monkeypatch)
    single_done = [False] * N
    resets_seen = 0
    for t in range(steps):
        before = calls[0]
        obs, rew, term, trunc, vinfo = venv.step(actions[t])
        vector_calls = calls[0] - before
        stepped = 0
        for i, env in enumerate(singles):
            if single_done[i]:  # next-step autoreset, as Gymnasium's SyncVectorEnv does it
                o, info = env.reset()
                r, te, tr = 0.0, False, False
                resets_seen += 1
            else:
                o, r, te, tr, info = env.step(actions[t, i])
                stepped += 1
            single_done[i] = te or tr
            assert_frames_match(obs[i], o, f"step {t} env {i}")
            assert (rew[i], term[i], trunc[i]) == (r, te, tr), f"step {t} env {i}"
            assert vinfo["step"][i] == info["step"]
            np.testing.assert_allclose(vinfo["c2w"][i], info["c2w"], atol=1e-12)
        assert vector_calls == (1 if stepped else 0), f"step {t}: {vector_calls} transformer evaluations"
    assert resets_seen >= N + 1, "the test must cross an early termination and a truncation of every env"


def test_reset_seeds_and_options(world_file, world):
    """Seeds choose the start frame and the noise; options pick a bundled start or a user image."""
    env = WorldEnv(world=world)
    a = random_actions(3, 1)[:, 0]
    runs = []
    for seed in (4, 4, 5):
        env.reset(seed=seed, options={"start": 1})
        runs.append(np.stack([env.step(x)[0] for x in a]))
    np.testing.assert_array_equal(runs[0], runs[1])  # same seed, same actions -> same frames
    assert np.abs(runs[0].astype(int) - runs[2]).mean() > 1.0, "a different seed must change the noise"

    img = np.random.default_rng(1).integers(0, 256, (*HW, 3), dtype=np.uint8)
    o1, info = env.reset(seed=0, options={"image": img})
    o2, _ = env.reset(seed=9, options={"image": img})
    assert info["start"] == -1
    np.testing.assert_array_equal(o1, o2)  # the reset frame is the image through the VAE, seed-free
    _, info = env.reset(options={"start": 2})
    assert info["start"] == 2 and info["step"] == 0
    np.testing.assert_array_equal(info["c2w"], np.eye(4))
    with pytest.raises(ValueError, match=r"out of range.*3 start frames"):
        env.reset(options={"start": 3})
    with pytest.raises(ValueError, match=r"expected uint8 \(32, 48, 3\)"):
        env.reset(options={"image": img[:16]})


BAD_ACTIONS = [
    (np.zeros(5, np.float32), "shape"),
    (np.zeros((1, 6), np.float32), "shape"),
    (np.array(["a"] * 6), "dtype"),
    (np.zeros(6, bool), "dtype"),
    (np.array([0, 0, np.nan, 0, 0, 0], np.float32), "NaN"),
    (np.array([0, 0, 0, 0, np.inf, 0], np.float32), "inf"),
    (np.array([0, 0, 8.5, 0, 0, 0], np.float32), "tz .*outside its bounds"),
    (np.array([0, 0, 0, 0, 0, -0.31]), "rz .*outside its bounds"),
]


@pytest.mark.parametrize("bad, words", BAD_ACTIONS, ids=lambda x: x if isinstance(x, str) else None)
def test_invalid_action_raises_and_env_stays_usable(world, bad, words):
    """Each bad action kind raises ValueError naming the problem and the layout; the episode is untouched."""
    env = WorldEnv(world=world)
    env.reset(seed=0)
    env.step(np.zeros(6, np.float32))
    with pytest.raises(ValueError, match=words) as e:
        env.step(bad)
    assert "[tx, ty, tz, rx, ry, rz]" in str(e.value)
    obs, _, _, _, info = env.step(np.array([0, 0, 1, 0, 0.1, 0], np.float32))
    assert info["step"] == 2, "the bad action must not have advanced the episode"
    assert obs.shape == (FPS, *HW, 3)
    np.testing.assert_allclose(info["c2w"], integrate(np.eye(4), np.array([0, 0, 1, 0, 0.1, 0], np.float32)), atol=1e-6)


def test_vector_env_rejects_bad_rows_and_stays_usable(world):
    """A bad row in the (N, 6) batch names the env and the component; the next good step works."""
    venv = gym.make_vec("worldmodel/World-v0", num_envs=2, world=world)
    venv.reset(seed=0)
    a = np.zeros((2, 6), np.float32)
    a[1, 3] = 1.0
    with pytest.raises(ValueError, match=r"rx of env 1 .*outside its bounds"):
        venv.step(a)
    with pytest.raises(ValueError, match=r"shape \(6,\), expected \(2, 6\)"):
        venv.step(np.zeros(6, np.float32))
    _, _, _, _, info = venv.step(np.zeros((2, 6), np.float32))
    assert (info["step"] == 1).all()


def test_same_step_autoreset_returns_final_observation(world):
    """SAME_STEP mode: the ending env restarts in the same call and its last frames are in info['final_obs']."""
    venv = gym.make_vec("worldmodel/World-v0", num_envs=2, world=world, max_episode_steps=2,
                        autoreset_mode=AutoresetMode.SAME_STEP)
    venv.reset(seed=0)
    venv.step(np.zeros((2, 6), np.float32))
    obs, _, _, trunc, info = venv.step(np.zeros((2, 6), np.float32))
    assert trunc.all() and info["_final_obs"].all()
    assert info["final_obs"][0].shape == (FPS, *HW, 3)
    assert (info["step"] == 0).all(), "the returned info is the reset's"
    assert (obs[:, 0] == obs[:, -1]).all(), "a reset observation repeats the start frame"


def test_reset_mask_resets_only_selected_envs(world):
    """reset(options={'reset_mask': m}) restarts only those envs; the others keep their episode."""
    venv = gym.make_vec("worldmodel/World-v0", num_envs=2, world=world)
    venv.reset(seed=0)
    venv.step(np.tile(np.array([0, 0, 2, 0, 0, 0], np.float32), (2, 1)))
    _, info = venv.reset(options={"reset_mask": np.array([True, False])})
    assert info["_step"].tolist() == [True, False]
    _, _, _, _, info = venv.step(np.zeros((2, 6), np.float32))
    assert info["step"].tolist() == [1, 2]
    assert info["c2w"][0, 2, 3] == 0.0 and info["c2w"][1, 2, 3] == 2.0


def test_single_frame_wrappers(world):
    """The documented wrappers keep the last frame of each step, for single and vector envs."""
    env = SingleFrameObservation(WorldEnv(world=world))
    obs, _ = env.reset(seed=0)
    assert obs.shape == (*HW, 3) and env.observation_space.shape == (*HW, 3)
    obs, *_ = env.step(np.zeros(6, np.float32))
    np.testing.assert_array_equal(obs, env.unwrapped.core.frames[0, -1])  # the last of the step's frames
    venv = SingleFrameVectorObservation(gym.make_vec("worldmodel/World-v0", num_envs=3, world=world))
    obs, _ = venv.reset(seed=0)
    assert obs.shape == (3, *HW, 3) and venv.single_observation_space.shape == (*HW, 3)
    assert venv.observation_space.contains(obs)


def test_human_render_mode_draws_without_error(world):
    """'human' mode opens a pygame window lazily (SDL dummy driver in tests) and keeps stepping."""
    env = WorldEnv(world=world, render_mode="human")
    env.reset(seed=0)
    assert env.step(np.zeros(6, np.float32))[0].shape == (FPS, *HW, 3)
    assert env.render() is None
    env.close()


def test_1440_frame_rollout_has_flat_memory_and_no_nan(world):
    """360 steps (1,440 frames) well past the attention window: resident memory flat, frames finite and alive."""
    env = WorldEnv(world=world)
    env.reset(seed=0)
    acts = random_actions(360, 1, seed=7)[:, 0]
    rss_warm = None
    for t in range(360):
        obs, _, _, _, info = env.step(acts[t])
        z = env.core.streams.gen.recycled
        assert torch.isfinite(z).all(), f"non-finite latent at step {t}"
        if t == 59:
            rss_warm = rss_bytes()
    growth = rss_bytes() - rss_warm
    assert growth < 16 * 2**20, f"resident memory grew by {growth / 2**20:.1f} MiB over 300 steps"
    assert info["step"] == 360 and obs.std() > 1.0, "the stream must still produce varying frames"
    assert np.isfinite(info["c2w"]).all()


# ---- issues 19 and 21: reference worlds, vector seeding, action bounds, threads, async make_vec ----------


def test_vector_env_equals_independently_built_worlds(world_file):
    """Reference for the shared core: N World-v0 envs, each over its own World loaded from the file, stepped
    with the same actions, give the vector env's observations (a core bug shared by both front ends cannot hide)."""
    N, seed = 3, 5
    venv = gym.make_vec("worldmodel/World-v0", num_envs=N, checkpoint=world_file)
    singles = [gym.make("worldmodel/World-v0", checkpoint=world_file).unwrapped for _ in range(N)]
    assert len({id(env.world) for env in singles} | {id(venv.unwrapped.world)}) == N + 1
    obs, vinfo = venv.reset(seed=seed)
    for i, env in enumerate(singles):
        o, info = env.reset(seed=seed + i)
        assert_frames_match(obs[i], o, f"reset env {i}")
        assert vinfo["start"][i] == info["start"]
    for t, a in enumerate(random_actions(6, N, seed=9)):
        obs, *_, vinfo = venv.step(a)
        for i, env in enumerate(singles):
            o, *_, info = env.step(a[i])
            assert_frames_match(obs[i], o, f"step {t} env {i}")
            np.testing.assert_allclose(vinfo["c2w"][i], info["c2w"], atol=1e-12)


def test_vector_reset_seeds_its_own_np_random(world):
    """WorldVectorEnv.reset calls super().reset(seed): the vector env's np_random follows an int seed."""
    venv = gym.make_vec("worldmodel/World-v0", num_envs=2, world=world)
    venv.reset(seed=7)
    assert venv.unwrapped.np_random_seed == 7
    first = venv.unwrapped.np_random.integers(1 << 30, size=4)
    venv.reset(seed=7)
    np.testing.assert_array_equal(venv.unwrapped.np_random.integers(1 << 30, size=4), first)


def test_action_space_is_symmetric_so_zero_means_no_motion(world):
    """Data bounds are lopsided (forward [-0.015, 26.8], yaw [-0.27, 0.32]); the env's box is +-max(|low|, |high|)
    per component, so RescaleAction's 0 is a camera that stays put, not a walk forward."""
    import copy
    import dataclasses

    from gymnasium.wrappers import RescaleAction

    lopsided = copy.copy(world)
    lopsided.meta = dataclasses.replace(world.meta, action_low=[-1.0, -0.5, -0.015, -0.001, -0.27, -0.001],
                                        action_high=[1.0, 0.5, 26.8, 0.001, 0.32, 0.001])
    env = WorldEnv(world=lopsided)
    np.testing.assert_allclose(env.action_space.high, [1.0, 0.5, 26.8, 0.001, 0.32, 0.001], rtol=1e-6)
    np.testing.assert_array_equal(env.action_space.low, -env.action_space.high)
    rescaled = RescaleAction(env, np.full(6, -1.0, np.float32), np.full(6, 1.0, np.float32))
    rescaled.reset(seed=0)
    *_, info = rescaled.step(np.zeros(6, np.float32))
    np.testing.assert_allclose(info["action"], 0.0, atol=1e-6)
    np.testing.assert_allclose(info["c2w"], np.eye(4), atol=1e-6)
    venv = gym.make_vec("worldmodel/World-v0", num_envs=2, world=lopsided)
    np.testing.assert_array_equal(venv.single_action_space.low, env.action_space.low)


def test_threads_is_an_env_argument(world, monkeypatch):
    """threads=n sets torch's CPU threads for World-v0 and its vector env; None asks worldmodel.threads."""
    import envs.world

    try:
        assert WorldEnv(world=world, threads=2).threads == 2 and torch.get_num_threads() == 2
        venv = gym.make_vec("worldmodel/World-v0", num_envs=2, world=world, threads=1)
        assert venv.unwrapped.threads == 1 and torch.get_num_threads() == 1
        with pytest.raises(ValueError, match="threads"):
            WorldEnv(world=world, threads=0)
        asked = []
        monkeypatch.setattr(envs.world, "use_threads", lambda n: asked.append(n) or 1)
        WorldEnv(world=world)
        gym.make_vec("worldmodel/World-v0", num_envs=2, world=world)
        assert asked == [None, None], "threads=None must defer to worldmodel.threads.use_threads"
    finally:
        torch.set_num_threads(1)


@pytest.mark.timeout(180)
def test_async_make_vec_returns_observations(world_file):
    """make_vec(..., vectorization_mode='async') used to hang: workers forked after the parent had run torch's
    thread pool deadlocked in their first op. It must reset and step."""
    torch.set_num_threads(2)  # the parent's pool is live, as in a user's process on an idle machine
    torch.randn(256, 256) @ torch.randn(256, 256)
    try:
        venv = gym.make_vec("worldmodel/World-v0", num_envs=2, vectorization_mode="async", checkpoint=world_file)
        try:
            obs, _ = venv.reset(seed=0)
            assert obs.shape == (2, FPS, *HW, 3)
            obs, *_ = venv.step(np.zeros((2, 6), np.float32))
            assert obs.shape == (2, FPS, *HW, 3) and obs.dtype == np.uint8
        finally:
            venv.close()
    finally:
        torch.set_num_threads(1)


# ---- issue 22: batching in latent mode, bfloat16 -------------------------------------------------


def test_latent_vector_env_equals_single_envs_past_the_window_and_a_reset(world):
    """Batched latent steps (one forward, per-stream KV slots, batched camera maps and poses) == N single envs
    within float32 rounding, over 14 steps (the window of 8 fills and its ring wraps) and with env 1 reset
    mid-way, so the streams write different cache slots on every later step."""
    N, seed = 3, 21
    venv = gym.make_vec("worldmodel/World-v0", num_envs=N, world=world, obs_mode="latent")
    singles = [WorldEnv(world=world, obs_mode="latent") for _ in range(N)]
    obs, _ = venv.reset(seed=seed)
    for i, env in enumerate(singles):
        np.testing.assert_allclose(obs[i], env.reset(seed=seed + i)[0], rtol=0, atol=1e-5)
    for t, a in enumerate(random_actions(14, N, seed=4)):
        if t == 5:
            obs, _ = venv.reset(options={"reset_mask": np.array([False, True, False])})
            np.testing.assert_allclose(obs[1], singles[1].reset()[0], rtol=0, atol=1e-5)
        obs, *_, vinfo = venv.step(a)
        for i, env in enumerate(singles):
            o, *_, info = env.step(a[i])
            np.testing.assert_allclose(obs[i], o, rtol=0, atol=1e-4, err_msg=f"step {t} env {i}")
            np.testing.assert_allclose(vinfo["c2w"][i], info["c2w"], atol=1e-12)


def test_bfloat16_precision_stays_close_to_float32(world):
    """precision='bfloat16' (autocast of the linear layers) changes the numbers but not the dream: over 12 steps
    the latents stay within 1% of their variance (mean squared difference) of the float32 rollout's."""
    N, acts = 2, random_actions(12, 2, seed=5)
    rollouts = {}
    for precision in ("float32", "bfloat16"):
        venv = gym.make_vec("worldmodel/World-v0", num_envs=N, world=world, obs_mode="latent", precision=precision)
        venv.reset(seed=3)
        rollouts[precision] = np.stack([venv.step(a)[0] for a in acts])
    a, b = rollouts["float32"], rollouts["bfloat16"]
    assert not np.array_equal(a, b), "bfloat16 must actually run in bfloat16"
    assert ((a - b) ** 2).mean() < 0.01 * a.var(), ((a - b) ** 2).mean() / a.var()
    with pytest.raises(ValueError, match="precision"):
        WorldEnv(world=world, precision="float16")
