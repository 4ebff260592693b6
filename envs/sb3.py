"""Stable-Baselines3 adapter for the batched learned world: N dream envs, one forward per step, as an SB3 VecEnv.

    from stable_baselines3 import PPO
    from envs.sb3 import WorldSB3VecEnv
    venv = WorldSB3VecEnv(num_envs=16, task=TakeCover().with_start_pool(pool))   # frames (16, 96, 128, 3)
    PPO("CnnPolicy", venv, n_steps=64).learn(10_000)

SB3 resets an env inside `step_wait` when it ends and hands the last observation over in
`info["terminal_observation"]` (with `info["TimeLimit.truncated"]`); that is Gymnasium's
SAME_STEP autoreset, which the wrapped `WorldVectorEnv` runs. Autoresets draw their start from
the task's start pool (else the world's bundled start frames) with each env's own generator.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from gymnasium.vector import AutoresetMode
from stable_baselines3.common.vec_env import VecEnv
from stable_baselines3.common.vec_env.base_vec_env import VecEnvIndices, VecEnvObs, VecEnvStepReturn

from envs.world_vector import WorldVectorEnv


def unbatch_infos(infos: dict[str, Any], num_envs: int) -> list[dict[str, Any]]:
    """Gymnasium's vector info (arrays plus `_key` masks) -> one dict per env, as SB3 expects."""
    out: list[dict[str, Any]] = [{} for _ in range(num_envs)]
    for key, values in infos.items():
        if key.startswith("_"):
            continue
        if isinstance(values, dict):  # a nested info (final_info) is batched the same way
            values = unbatch_infos(values, num_envs)
        mask = infos.get(f"_{key}", np.ones(num_envs, dtype=bool))
        for i in np.flatnonzero(mask):
            out[i][key] = values[i]
    return out


class WorldSB3VecEnv(VecEnv):
    """The batched learned world (`WorldVectorEnv`) as an SB3 `VecEnv`: N envs, one transformer evaluation per step.

    ## Spaces
    `observation_space`, `action_space`: one env's (SB3 convention), from `obs_mode` and
    `action_mode` (`envs.modes`; with a task: (H, W, 3) frames and Box(-1, 1, (k,)) actions).

    ## Episodes
    Ended envs are reset in the same step; `infos[i]["terminal_observation"]` is their last
    observation and `infos[i]["TimeLimit.truncated"]` says the episode was cut, not ended.
    `seed(s)` seeds env i with s + i at the next `reset()`.
    """

    def __init__(self, num_envs: int = 1, venv: WorldVectorEnv | None = None, **world_kwargs: Any) -> None:
        if venv is None:
            venv = WorldVectorEnv(num_envs=num_envs, autoreset_mode=AutoresetMode.SAME_STEP, **world_kwargs)
        elif world_kwargs or venv.autoreset_mode != AutoresetMode.SAME_STEP:
            raise ValueError("pass venv=WorldVectorEnv(..., autoreset_mode=AutoresetMode.SAME_STEP) alone, or the "
                             "WorldVectorEnv arguments (num_envs, checkpoint, task, ...) without venv")
        self.venv = venv
        self._actions: np.ndarray | None = None
        super().__init__(venv.num_envs, venv.single_observation_space, venv.single_action_space)

    def reset(self) -> VecEnvObs:
        """Reset every env with the seeds from `seed()` (if any); returns observations (N, ...)."""
        seeds = None if all(s is None for s in self._seeds) else list(self._seeds)
        options = self._options[0] if self._options and self._options[0] else None
        obs, infos = self.venv.reset(seed=seeds, options=options)
        self.reset_infos = unbatch_infos(infos, self.num_envs)
        self._reset_seeds()
        self._reset_options()
        return obs

    def step_async(self, actions: np.ndarray) -> None:
        """Store actions (N, k) for `step_wait` (the world steps synchronously)."""
        self._actions = np.asarray(actions, dtype=self.action_space.dtype).reshape(self.num_envs, -1)

    def step_wait(self) -> VecEnvStepReturn:
        """Step all envs in one forward; ended envs restart and report their last observation."""
        if self._actions is None:
            raise RuntimeError("call step_async(actions) before step_wait()")
        obs, rewards, terminated, truncated, infos = self.venv.step(self._actions)
        self._actions = None
        per_env = unbatch_infos(infos, self.num_envs)
        out: list[dict[str, Any]] = []
        for i, info in enumerate(per_env):
            if terminated[i] or truncated[i]:
                final = dict(info.get("final_info", {}))
                final["terminal_observation"] = info["final_obs"]
                final["TimeLimit.truncated"] = bool(truncated[i] and not terminated[i])
                out.append(final)
            else:
                out.append(info)
        return obs, rewards.astype(np.float32), terminated | truncated, out

    def close(self) -> None:
        """Close the wrapped vector env."""
        self.venv.close()

    def get_images(self) -> Sequence[np.ndarray | None]:
        """The last decoded frame of every env (H, W, 3) uint8."""
        return list(self.venv.core.frames[:, -1].copy())

    def _indices(self, indices: VecEnvIndices) -> list[int]:
        if indices is None:
            return list(range(self.num_envs))
        return [indices] if isinstance(indices, int) else list(indices)

    def get_attr(self, attr_name: str, indices: VecEnvIndices = None) -> list[Any]:
        """An attribute of the envs; all N share one `WorldVectorEnv`, so every index returns the same value."""
        return [getattr(self.venv, attr_name)] * len(self._indices(indices))

    def set_attr(self, attr_name: str, value: Any, indices: VecEnvIndices = None) -> None:
        """Refused: the N envs share one `WorldVectorEnv`, so an attribute cannot differ between them."""
        raise NotImplementedError(f"set_attr({attr_name!r}): the {self.num_envs} world envs share one WorldVectorEnv; "
                                  "rebuild it with the setting instead")

    def env_method(self, method_name: str, *method_args: Any, indices: VecEnvIndices = None,
                   **method_kwargs: Any) -> list[Any]:
        """Refused for the same reason as `set_attr` (no per-env objects exist)."""
        raise NotImplementedError(f"env_method({method_name!r}): the world envs are one batched WorldVectorEnv, not "
                                  "separate env objects; call venv.venv's methods directly")

    def env_is_wrapped(self, wrapper_class: type, indices: VecEnvIndices = None) -> list[bool]:
        """No env is wrapped by a Gymnasium wrapper (they are rows of one batched env)."""
        return [False] * len(self._indices(indices))
