"""World-v0 reset arguments (issue 20, item 7): every malformed seed or option is a clear ValueError, nothing
is coerced silently, and a rejected reset leaves the env exactly as it was (checked by a state snapshot)."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch

import envs  # noqa: F401  (registers worldmodel/World-v0)
from envs.world import WorldEnv
from tests.test_world_env import HW, world, world_file  # noqa: F401 (fixtures)

N = 3
"""Envs in the vector env under test (the test world has 3 bundled start frames)."""


def snapshot(env: Any) -> dict[str, Any]:
    """Everything a reset may change, for a single or vector World-v0: poses, steps, frames, every generator."""
    core = env.unwrapped.core
    gen = core.streams.gen
    u = env.unwrapped
    state = {
        "c2w": core.c2w.copy(), "steps": core.steps.copy(), "frames": core.frames.copy(), "started": core.started,
        "recycled": gen.recycled.clone(), "torch_rngs": [g.get_state() for g in gen.rngs],
        "cache_frames": np.array(gen.cache.frames),
        "np_random": u.np_random.bit_generator.state, "np_random_seed": u.np_random_seed,
    }
    if hasattr(u, "_rngs"):
        state["rngs"] = [r.bit_generator.state for r in u._rngs]  # noqa: SLF001
        state["needs_reset"] = u._needs_reset.copy()  # noqa: SLF001
    return state


def assert_same_state(a: dict[str, Any], b: dict[str, Any], what: str) -> None:
    """Two snapshots are equal, key by key."""
    for k in a:
        x, y = a[k], b[k]
        if isinstance(x, torch.Tensor):
            same = torch.equal(x, y)
        elif isinstance(x, np.ndarray):
            same = np.array_equal(x, y)
        elif isinstance(x, list) and x and isinstance(x[0], torch.Tensor):
            same = all(torch.equal(p, q) for p, q in zip(x, y, strict=True))
        else:
            same = x == y
        assert same, f"{what}: {k} changed"


def image(shape: tuple[int, ...] = (*HW, 3), dtype: Any = np.uint8) -> np.ndarray:
    """A random image batch of any shape and dtype."""
    return np.random.default_rng(0).integers(0, 256, shape).astype(dtype)


# (seed, options, words the message must hold)
SINGLE_BAD: list[tuple[Any, Any, str]] = [
    (None, {"start": 2.7}, "expected an int"),
    (None, {"start": "1"}, "expected an int"),
    (None, {"start": True}, "expected an int"),
    (None, {"start": [1]}, "expected an int"),
    (None, {"start": {"k": 1}}, "expected an int"),
    (None, {"start": np.array([1, 2])}, "expected an int"),
    (None, {"start": 3}, "out of range"),
    (None, {"start": -1}, "out of range"),
    (None, {"strat": 1}, "unknown reset option"),
    (None, {"reset_mask": np.ones(1, bool)}, "unknown reset option"),
    (None, {"image": image(), "start": 1}, "not both"),
    (None, {"image": image((2, *HW, 3))}, r"expected a numpy array uint8|expected uint8"),
    (None, {"image": image(dtype=np.float32)}, "numpy array uint8"),
    (None, {"image": image().tolist()}, "numpy array uint8"),
    (None, {"image": image((HW[0], HW[1] + 1, 3))}, "image_hw"),
    (None, [("start", 1)], "expected a dict"),
    (5, {"start": 2.7}, "expected an int"),  # a valid seed must not be applied when the options are bad
    (5, {"strat": 1}, "unknown reset option"),
    (1.5, None, "seed"),
    (-1, None, "seed"),
    (True, None, "seed"),
    ("3", None, "seed"),
    ([1], None, "seed"),
]

VECTOR_BAD: list[tuple[Any, Any, str]] = [
    (None, {"image": image((N - 1, *HW, 3))}, "exactly one per env"),
    (None, {"image": image((N + 1, *HW, 3))}, "exactly one per env"),
    (None, {"image": image((1, N, *HW, 3))}, "exactly one per env"),
    (None, {"start": [0, 1]}, "2 entries for 3 envs"),
    (None, {"start": [0, 1, 2, 0]}, "4 entries for 3 envs"),
    (None, {"start": np.zeros((N, 1), int)}, r"ints \(3,\)"),
    (None, {"start": [0, 1, 2.0]}, r"start'\]\[2\].*expected an int"),
    (None, {"start": [0, True, 1]}, "expected an int"),
    (None, {"start": np.array([0.0, 1.0, 2.0])}, r"ints \(3,\)"),
    (None, {"start": 2.7}, "expected an int"),
    (None, {"start": [0, 1, 5]}, "out of range"),
    (None, {"reset_mask": np.array([1, 0, 1])}, "reset_mask"),
    (None, {"reset_mask": np.zeros(N, bool)}, "reset_mask"),
    (None, {"mask": np.ones(N, bool)}, "unknown reset option"),
    (5, {"start": [0, 1]}, "2 entries for 3 envs"),  # a valid seed must not re-seed any env when the rest is bad
    ([5, 6, 7], {"image": image((N - 1, *HW, 3))}, "exactly one per env"),
    (5, {"reset_mask": np.zeros(N, bool)}, "reset_mask"),
    (1.5, None, "seed"),
    (-3, None, "seed"),
    ([0, 1], None, "2 seeds for 3 envs"),
    ([0, 1, 2.5], None, r"seed\[2\]"),
    ([0, 1, -2], None, r"seed\[2\]"),
]


@pytest.mark.parametrize("seed, options, words", SINGLE_BAD)
def test_single_env_rejects_bad_reset_and_keeps_state(world, seed, options, words):
    """Each malformed reset of World-v0 is a ValueError naming the problem; the running episode is untouched."""
    env = WorldEnv(world=world)
    env.reset(seed=0)
    env.step(np.array([0, 0, 1.0, 0, 0.05, 0], np.float32))
    before = snapshot(env)
    with pytest.raises(ValueError, match=words):
        env.reset(seed=seed, options=options)
    assert_same_state(before, snapshot(env), f"reset(seed={seed!r}, options={options!r:.60})")
    _, _, _, _, info = env.step(np.zeros(6, np.float32))
    assert info["step"] == 2


@pytest.mark.parametrize("seed, options, words", VECTOR_BAD)
def test_vector_env_rejects_bad_reset_and_keeps_state(world, seed, options, words):
    """Each malformed vector reset is a ValueError (not IndexError/TypeError, no truncation); no env and no
    generator (the per-env RNGs included) changes."""
    venv = gym.make_vec("worldmodel/World-v0", num_envs=N, world=world)
    venv.reset(seed=0)
    venv.step(np.zeros((N, 6), np.float32))
    before = snapshot(venv)
    with pytest.raises(ValueError, match=words):
        venv.reset(seed=seed, options=options)
    assert_same_state(before, snapshot(venv), f"reset(seed={seed!r}, options={options!r:.60})")
    _, _, _, _, info = venv.step(np.zeros((N, 6), np.float32))
    assert (info["step"] == 2).all()


def test_valid_reset_options_still_work(world):
    """The accepted forms: numpy ints, one start or image for all envs, one per env, seeds per env."""
    env = WorldEnv(world=world)
    _, info = env.reset(seed=np.int64(3), options={"start": np.int64(2)})
    assert info["start"] == 2
    venv = gym.make_vec("worldmodel/World-v0", num_envs=N, world=world)
    _, info = venv.reset(seed=[1, None, 2], options={"start": np.array([2, 0, 1])})
    assert info["start"].tolist() == [2, 0, 1]
    _, info = venv.reset(options={"start": 1})
    assert info["start"].tolist() == [1, 1, 1]
    _, info = venv.reset(options={"image": image((N, *HW, 3)), "reset_mask": np.array([True, False, True])})
    assert info["_start"].tolist() == [True, False, True] and info["start"][0] == -1
