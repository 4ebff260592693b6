"""Fuzz World-v0 and its vector env (issue 20): 2,000 random and adversarial steps and resets.

Every input is built valid or broken on purpose (one defect each: shape, dtype, NaN/inf, huge or
out-of-bounds values, bad seeds, bad or misspelled options), so the test knows which calls must
pass. It counts exceptions that are not ValueError, broken inputs that were accepted, non-finite
poses or latents, and rejected calls that changed the env (a state snapshot before and after).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch

import envs  # noqa: F401  (registers worldmodel/World-v0)
from envs.world import WorldEnv
from tests.test_env_reset_options import assert_same_state, snapshot
from tests.test_world_env import HW, world, world_file  # noqa: F401 (fixtures)

CALLS = 2000
N = 2
"""Envs in the fuzzed vector env."""
STARTS = 3
"""Bundled start frames of the test world."""

Call = tuple[str, Callable[[Any], Any], bool]
"""(description, the call on an env, whether the input is valid)."""


def valid_action(rng: np.random.Generator, space: gym.spaces.Box) -> Any:
    """An in-bounds action in one of the accepted forms: float32/float64/float16 array, integer zeros, list."""
    a = rng.uniform(space.low, space.high) * 0.9
    form = rng.integers(5)
    if form == 0:
        return a.astype(np.float32)
    if form == 1:
        return a.astype(np.float64)
    if form == 2:
        return (a * 0.5).astype(np.float16)
    if form == 3:
        return np.zeros(space.shape, dtype=rng.choice([np.int8, np.int64, np.uint8]))
    return a.tolist()


def broken_action(rng: np.random.Generator, space: gym.spaces.Box, high: np.ndarray) -> tuple[str, Any]:
    """An action for `space` with exactly one defect, and what the defect is; `high` (6,) is one env's bound."""
    a = (rng.uniform(space.low, space.high) * 0.5).astype(np.float32)
    idx = tuple(int(rng.integers(s)) for s in a.shape)
    kind = rng.choice(["shape", "nan", "inf", "huge", "over", "dtype", "junk"])
    if kind == "shape":
        shape = list(a.shape)
        shape[rng.integers(len(shape))] += int(rng.choice([-1, 1, 5]))
        shapes = [tuple(shape), (*a.shape, 1), (1, *a.shape), (), a.shape[:-1]]
        return kind, np.zeros(shapes[rng.integers(len(shapes))], np.float32)
    if kind == "nan":
        a[idx] = np.nan
    elif kind == "inf":
        a[idx] = rng.choice([np.inf, -np.inf])
    elif kind == "huge":
        a = a.astype(np.float64)
        a[idx] = rng.choice([1e30, -1e300, 3.4e38, np.finfo(np.float64).max])
    elif kind == "over":  # just outside the box, on either side
        side = rng.choice([-1.0, 1.0])
        a[idx] = side * high[idx[-1]] * rng.uniform(1.01, 3.0)
    elif kind == "dtype":
        options = [a.astype(bool), a.astype(np.complex64), a.astype(str), a.astype(object),
                   np.full(a.shape, np.datetime64("2020-01-01"))]
        return kind, options[rng.integers(len(options))]
    else:
        junk = [None, "forward", {"tz": 1.0}, [1.0, 2.0, [3.0]], object(), 1.0, [[0.0] * 6, [0.0] * 5]]
        return kind, junk[rng.integers(len(junk))]
    return kind, a


def image(rng: np.random.Generator, shape: tuple[int, ...], dtype: Any = np.uint8) -> np.ndarray:
    """A random image array of any shape and dtype."""
    return rng.integers(0, 256, shape).astype(dtype)


def valid_reset(rng: np.random.Generator, n: int | None) -> tuple[Any, Any]:
    """(seed, options) a single env (n None) or a vector env of n accepts."""
    seed = [None, int(rng.integers(2**32)), np.int64(rng.integers(1000)), 0][rng.integers(4)]
    if n is not None and rng.random() < 0.2:
        seed = [int(rng.integers(100)) if rng.random() < 0.7 else None for _ in range(n)]
    form = rng.integers(4)
    if form == 0:
        options = None
    elif form == 1:
        options = {"start": int(rng.integers(STARTS))}
    elif form == 2:
        options = {"image": image(rng, (*HW, 3))}
    elif n is None:
        options = {"start": np.int32(rng.integers(STARTS))}
    else:
        options = {"start": rng.integers(STARTS, size=n).tolist(), "reset_mask": rng.random(n) < 0.5}
        options["reset_mask"][rng.integers(n)] = True
    return seed, options


def broken_reset(rng: np.random.Generator, n: int | None) -> tuple[str, Any, Any]:
    """(defect, seed, options) with exactly one defect for a single env (n None) or a vector env of n."""
    seeds = [-1, -(2**40), 1.5, float("nan"), "3", True, np.float64(2.0), b"1", {"seed": 1}]
    if n is not None:
        seeds += [[0] * (n - 1), [0] * (n + 1), [0] * (n - 1) + [0.5], [0] * (n - 1) + [-1], [None] * (n - 1) + ["x"]]
    else:
        seeds += [[1], (1,)]
    if rng.random() < 0.3:
        return "seed", seeds[rng.integers(len(seeds))], None
    bad: list[Any] = [
        {"start": 2.7}, {"start": "1"}, {"start": True}, {"start": STARTS}, {"start": -1}, {"start": None, "strat": 1},
        {"Start": 0}, {"image": image(rng, (*HW, 3)), "start": 0}, {"image": image(rng, (*HW, 3), np.float32)},
        {"image": image(rng, (HW[0] + 1, HW[1], 3))}, {"image": image(rng, (*HW, 4))}, {"image": image(rng, HW)},
        {"image": image(rng, (*HW, 3)).tolist()}, {"image": "frame.png"}, {"start": {"k": 1}},
        {"start": np.float64(1.0)},
        [("start", 1)], "start=1", 3,
    ]
    if n is None:
        bad += [{"start": [1]}, {"start": np.array([1])}, {"reset_mask": np.ones(1, bool)},
                {"image": image(rng, (2, *HW, 3))}]
    else:
        bad += [
            {"image": image(rng, (n - 1, *HW, 3))}, {"image": image(rng, (n + 1, *HW, 3))},
            {"image": image(rng, (1, n, *HW, 3))}, {"start": [0] * (n - 1)}, {"start": [0] * (n + 1)},
            {"start": np.zeros((n, 1), int)}, {"start": [0] * (n - 1) + [1.0]}, {"start": [True] * n},
            {"start": np.zeros(n)}, {"start": [0] * (n - 1) + [STARTS]}, {"reset_mask": np.ones(n, int)},
            {"reset_mask": np.zeros(n, bool)}, {"reset_mask": np.ones(n + 1, bool)}, {"mask": np.ones(n, bool)},
        ]
    return "options", None, bad[rng.integers(len(bad))]


def calls(rng: np.random.Generator, env: Any, n: int | None) -> Call:
    """One random call on `env`: a valid or broken step or reset (about 35% of them valid, to keep it fast)."""
    space = env.action_space
    r = rng.random()
    if r < 0.25:
        a = valid_action(rng, env.single_action_space) if n is None else np.stack(
            [np.asarray(valid_action(rng, env.single_action_space), np.float64) for _ in range(n)])
        return "valid step", lambda e: e.step(a), True
    if r < 0.35:
        seed, options = valid_reset(rng, n)
        return f"valid reset seed={seed!r} options={options!r:.80}", lambda e: e.reset(seed=seed, options=options), True
    if r < 0.7:
        kind, a = broken_action(rng, space, env.single_action_space.high)
        return f"step with {kind} action {a!r:.80}", lambda e: e.step(a), False
    kind, seed, options = broken_reset(rng, n)
    what = f"reset with bad {kind}: seed={seed!r} options={options!r:.80}"
    return what, lambda e: e.reset(seed=seed, options=options), False


@pytest.mark.slow
def test_fuzz_2000_calls_raise_only_value_errors_and_never_corrupt_state(world):
    """2,000 calls over World-v0 and its vector env: 0 non-ValueError exceptions, 0 broken inputs accepted,
    0 non-finite poses or latents, 0 rejected calls that changed the env."""
    rng = np.random.default_rng(20)
    single = WorldEnv(world=world, max_episode_steps=25)
    single.single_action_space = single.action_space  # one name for both kinds in `calls`
    vector = gym.make_vec("worldmodel/World-v0", num_envs=N, world=world, max_episode_steps=25)
    single.reset(seed=0)
    vector.reset(seed=0)
    problems: list[str] = []
    tally: Counter[str] = Counter()
    for i in range(CALLS):
        env, n = (single, None) if i % 2 == 0 else (vector, N)
        what, call, valid = calls(rng, env, n)
        before = None if valid else snapshot(env)
        try:
            out = call(env)
        except ValueError as e:
            tally["rejected"] += 1
            if valid:
                problems.append(f"call {i}: valid {what} raised {e}")
            else:
                try:
                    assert_same_state(before, snapshot(env), what)
                except AssertionError as changed:
                    problems.append(f"call {i}: {changed}")
            continue
        except Exception as e:  # noqa: BLE001 (counting exactly these)
            problems.append(f"call {i}: {what} raised {type(e).__name__}: {e}")
            continue
        tally["accepted"] += 1
        if not valid:
            problems.append(f"call {i}: accepted {what}")
        info = out[-1]
        if not np.isfinite(np.asarray(info["c2w"], dtype=np.float64)).all():
            problems.append(f"call {i}: non-finite pose after {what}")
        if not torch.isfinite(env.unwrapped.core.streams.gen.recycled).all():
            problems.append(f"call {i}: non-finite latent after {what}")
        if out[0].dtype != np.uint8 or out[0].shape != env.observation_space.shape:
            problems.append(f"call {i}: observation {out[0].dtype}{out[0].shape} after {what}")
    assert not problems, f"{len(problems)} problems in {CALLS} calls ({dict(tally)}):\n" + "\n".join(problems[:20])
    assert tally["accepted"] > 500 and tally["rejected"] > 1000, dict(tally)
