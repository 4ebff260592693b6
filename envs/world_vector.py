"""The batched learned world: `gymnasium.make_vec("worldmodel/World-v0", num_envs=N)`.

All N envs advance in one transformer evaluation and one streaming VAE decode per step (not N).
Env i behaves exactly like a `WorldEnv` given the same seed and actions (both run on
`envs.world.WorldEpisodes`); `reset(seed=s)` seeds env i with s + i, as Gymnasium's own
vector envs do.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.utils import seeding
from gymnasium.vector import AutoresetMode
from gymnasium.vector.utils import batch_space

from envs.checks import check_seed
from envs.rewards import RewardFn, TerminationFn
from envs.tasks import Task
from envs.world import (
    DEFAULT_RENDER_FPS,
    WorldEpisodes,
    env_threads,
    load_world,
    world_render_fps,
)
from worldmodel.camera import check_action
from worldmodel.world import World


class WorldVectorEnv(gym.vector.VectorEnv):
    """N learned-world episodes stepped as one batch; spaces, reset options and info as `WorldEnv`.

    ## Spaces
    `single_action_space` Box(6) float32 `[tx, ty, tz, rx, ry, rz]` with the world's bounds;
    `action_space` Box (N, 6). `observation_space` uint8 (N, frames_per_step, H, W, 3).
    `task`, `obs_mode` and `action_mode` as for `WorldEnv` (e.g. a task gives Box(-1, 1, (N, k))
    actions and (N, H, W, 3) frames); autoresets draw from the task's start pool. A world file's
    heads decide reward, ending and realised motion per env as in `WorldEnv` ("Heads"), in one
    batched evaluation per step.

    ## Autoreset (Gymnasium 1.x)
    `autoreset_mode` (default `AutoresetMode.NEXT_STEP`, in `metadata["autoreset_mode"]`):
    - NEXT_STEP: an env that ended on step t is reset on step t+1; its action there is ignored,
      and it returns the reset frames with reward 0, terminated = truncated = False.
    - SAME_STEP: an env that ends is reset at once; the returned observation is the reset one and
      `info["final_obs"]`, `info["final_info"]` hold the last step's.
    - DISABLED: no autoreset; reset ended envs with `reset(options={"reset_mask": mask})`.
    The batch keeps its static shape: an env being reset is still carried through the shared
    forward (with a zero action) and then restarted, so every step is one forward however many
    envs reset.

    ## Reset options
    `{"image": uint8 (H, W, 3) or (N, H, W, 3)}`, `{"start": k or [k_0, ..., k_{N-1}]}`,
    `{"reset_mask": bool (N,)}` (reset only those envs; the others keep their state). `seed` is
    None, an int s (env i gets s + i) or a list of N ints/None. Anything else (short or long
    batches and lists, a 2-D start, floats, bools, strings, unknown keys) is a ValueError raised
    before any env or generator changes.

    ## Threads and precision
    `threads`: torch's CPU threads; `precision`: "float32" (default) or "bfloat16" autocast of the
    transformer's linear layers; both as for `WorldEnv`. bfloat16 pays at large N (BENCHMARKS.md).

    ## Info
    Gymnasium's vector layout: each key of the single env's info as an array over envs plus a
    boolean `_key` mask. `info["timing"][i]` (a `StepTiming`) is the whole batch's step time.
    """

    metadata = {
        "render_modes": ["rgb_array"],
        "render_fps": DEFAULT_RENDER_FPS,
        "autoreset_mode": AutoresetMode.NEXT_STEP,
    }

    def __init__(
        self,
        num_envs: int = 1,
        checkpoint: str | Path | None = None,
        world: World | None = None,
        max_episode_steps: int | None = None,
        reward_fn: RewardFn | None = None,
        termination_fn: TerminationFn | None = None,
        render_mode: str | None = None,
        autoreset_mode: AutoresetMode | str = AutoresetMode.NEXT_STEP,
        device: str = "cpu",
        window: int | None = None,
        threads: int | None = None,
        task: Task | None = None,
        obs_mode: str | None = None,
        action_mode: str | None = None,
        precision: str = "float32",
    ) -> None:
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode={render_mode!r}; the World-v0 vector env supports None or 'rgb_array'")
        if render_mode is not None and obs_mode == "latent":
            raise ValueError(f"render_mode={render_mode!r} needs decoded frames; obs_mode='latent' never decodes")
        try:
            mode = AutoresetMode(autoreset_mode)
        except ValueError as e:
            raise ValueError(f"autoreset_mode={autoreset_mode!r}; expected one of {[m.value for m in AutoresetMode]}") from e
        self.threads = env_threads(threads)
        self.world = load_world(checkpoint, world, device)
        self.core = WorldEpisodes(self.world, num_envs, max_episode_steps, reward_fn, termination_fn, window,
                                  task, obs_mode, action_mode, precision)
        self.task = task
        self.num_envs = num_envs
        self.single_action_space = self.core.action_space
        self.single_observation_space = self.core.observation_space
        self.action_space = batch_space(self.single_action_space, num_envs)
        self.observation_space = batch_space(self.single_observation_space, num_envs)
        self.metadata = {**self.metadata, "render_fps": world_render_fps(self.world), "autoreset_mode": mode}
        self.render_mode = render_mode
        self.autoreset_mode = mode
        k = self.single_action_space.shape[0]
        self._layout = f"({num_envs}, {k}): one row {self.core.layout} per env"
        self._rngs = [seeding.np_random()[0] for _ in range(num_envs)]
        self._needs_reset = np.zeros(num_envs, dtype=bool)

    def reset(self, *, seed: int | list[int | None] | None = None, options: dict[str, Any] | None = None):
        """Reset every env (or those in `options["reset_mask"]`); `seed=s` seeds env i with s + i.

        Everything (seed, mask, image, start) is validated before anything changes: a bad call is
        a ValueError that leaves every episode and every generator as it was.
        """
        seeds = self._check_seeds(seed)
        plan = self.core.parse_options(options, batched=True, extra_keys=("reset_mask",))
        mask = None if options is None else options.get("reset_mask")
        if mask is None:
            mask = np.ones(self.num_envs, dtype=bool)
        mask = np.asarray(mask)
        if mask.dtype != np.bool_ or mask.shape != (self.num_envs,) or not mask.any():
            raise ValueError(
                f"options['reset_mask'] is {mask.dtype}{mask.shape}, expected bool ({self.num_envs},) with a True"
            )
        # The vector env's own np_random follows an int seed (a list seeds only the envs).
        super().reset(seed=None if isinstance(seed, (list, tuple, np.ndarray)) else seeds[0])
        idx = np.flatnonzero(mask)
        for i in idx:
            if seeds[i] is not None:
                self._rngs[i] = seeding.np_random(seeds[i])[0]
        _, infos = self.core.reset(idx, [self._rngs[i] for i in idx], plan)
        self._needs_reset[idx] = False
        return self.core.obs.copy(), self._gather(infos, idx)

    def _check_seeds(self, seed: object) -> list[int | None]:
        """One seed (or None) per env from None, an int s (env i gets s + i) or a list of N; else ValueError."""
        if seed is None or not isinstance(seed, (list, tuple, np.ndarray)):
            base = check_seed(seed)
            return [None if base is None else base + i for i in range(self.num_envs)]
        seeds = list(seed)
        if len(seeds) != self.num_envs:
            raise ValueError(f"got {len(seeds)} seeds for {self.num_envs} envs; pass one int or one per env")
        return [check_seed(s, f"seed[{i}]") for i, s in enumerate(seeds)]

    def step(self, actions):
        """Step every env in one forward; ended envs restart as `autoreset_mode` says."""
        space = self.action_space
        a = check_action(actions, space.shape, self._layout, (space.low, space.high))  # raises before any state changes
        if self.autoreset_mode == AutoresetMode.DISABLED and self._needs_reset.any():
            raise RuntimeError(
                f"envs {np.flatnonzero(self._needs_reset).tolist()} ended; with autoreset_mode=DISABLED reset them "
                f"with reset(options={{'reset_mask': mask}}) before stepping"
            )
        resetting = self._needs_reset.copy() if self.autoreset_mode == AutoresetMode.NEXT_STEP else np.zeros_like(
            self._needs_reset
        )
        obs, rewards, terminated, truncated, step_infos = self.core.step(a, active=~resetting)
        infos: dict[str, Any] = {}
        done = terminated | truncated
        if self.autoreset_mode == AutoresetMode.SAME_STEP and done.any():
            ended = np.flatnonzero(done)
            for i in ended:
                infos = self._add_info(infos, {"final_obs": obs[i].copy(), "final_info": step_infos[i]}, int(i))
            _, reset_infos = self.core.reset(ended, [self._rngs[i] for i in ended], None)
            for i, info in zip(ended, reset_infos, strict=True):
                step_infos[i] = info
        if resetting.any():
            idx = np.flatnonzero(resetting)
            _, reset_infos = self.core.reset(idx, [self._rngs[i] for i in idx], None)
            for i, info in zip(idx, reset_infos, strict=True):
                step_infos[i] = info
        for i, info in enumerate(step_infos):
            infos = self._add_info(infos, info, i)
        self._needs_reset = done if self.autoreset_mode != AutoresetMode.SAME_STEP else np.zeros_like(done)
        return self.core.obs.copy(), rewards, terminated, truncated, infos

    def _gather(self, infos: list[dict[str, Any]], idx: np.ndarray) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for i, info in zip(idx, infos, strict=True):
            out = self._add_info(out, info, int(i))
        return out

    def render(self) -> np.ndarray | None:
        """'rgb_array': the last frame of every env, (N, H, W, 3) uint8."""
        if self.render_mode == "rgb_array":
            return self.core.frames[:, -1].copy()
        return None
