"""Vector env throughput: env steps and decoded frames per second for N parallel worlds.

Goes through `gymnasium.make_vec("worldmodel/World-v0", num_envs=N)` when `envs` registers
that id, else straight through `WorldStreams` (the core the vector env wraps); each row says
which. `envs` is imported here, lazily: worldmodel must not import it at module import time.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from worldmodel.bench.common import Row, latency_stats, random_actions, start_images, time_repeats
from worldmodel.bench.variants import error_text
from worldmodel.world import World

ENV_ID = "worldmodel/World-v0"


def registered_env() -> tuple[bool, str]:
    """Whether the learned-world env is registered after `import envs`, and why not if it is not."""
    import gymnasium

    try:
        import envs  # noqa: F401 (registers the ids)
    except Exception as e:  # noqa: BLE001 (a broken envs package means: measure without it)
        return False, f"import envs failed: {error_text(e, 120)}"
    if ENV_ID not in gymnasium.registry:
        return False, f"{ENV_ID} is not registered"
    return True, ""


def _gym_stepper(world: World, checkpoint: str | None, n: int, steps: int) -> tuple[Callable[[], Any], Callable[[], None], str]:
    """A step function over `gymnasium.make_vec`, its close, and a label."""
    import gymnasium

    source = {"checkpoint": checkpoint} if checkpoint else {"world": world}
    env = gymnasium.make_vec(ENV_ID, num_envs=n, **source)
    env.reset(seed=0)
    low, high = env.single_action_space.low, env.single_action_space.high
    actions = iter(np.clip(random_actions(steps, n), low, high).astype(env.single_action_space.dtype))
    return lambda: env.step(next(actions)), env.close, f"gymnasium.make_vec('{ENV_ID}') [{type(env).__name__}]"


def _streams_stepper(world: World, n: int, steps: int, why: str) -> tuple[Callable[[], Any], Callable[[], None], str]:
    """A step function straight over `WorldStreams`, for when the env is not available."""
    streams = world.streams(n, seeds=range(n))
    streams.reset(start_images(world, n))
    actions = iter(random_actions(steps, n))
    return lambda: streams.step(next(actions)), lambda: None, f"WorldStreams ({why})"


def vector_env_rows(world: World, checkpoint: str | None, sizes: Sequence[int], repeats: int,
                    warmup: int = 2) -> list[Row]:
    """Env steps/s and frames/s for each number of parallel envs N."""
    ok, why = registered_env()
    rows = []
    for n in sizes:
        if ok:
            step, close, via = _gym_stepper(world, checkpoint, n, warmup + repeats)
        else:
            step, close, via = _streams_stepper(world, n, warmup + repeats, why)
        try:
            ts = time_repeats(step, world.device, repeats, warmup)
        finally:
            close()
        mean = float(np.mean(ts))
        rows.append({
            "name": f"N={n}",
            "num_envs": n,
            "env_steps_per_s": n / mean,
            "frames_per_s": n * world.frames_per_step / mean,
            **latency_stats(ts, "step_"),
            "via": via,
        })
    return rows
