"""Reward and termination hooks for the learned world (`worldmodel/World-v0`).

A hook is a pure function of one transition, called once per env per step:

    reward = reward_fn(observation, c2w, action)        # -> float
    done = termination_fn(observation, c2w, action)     # -> bool

- `observation`: uint8 (frames_per_step, H, W, 3), the frames this step produced;
- `c2w`: float64 (4, 4), the integrated camera-to-world pose after the step (identity at reset);
- `action`: float64 (6,), the relative pose `[tx, ty, tz, rx, ry, rz]` the env received.

Hooks must not keep state between calls: the vector env calls the same hook for every env, and
determinism (same seed + same actions = same episode) relies on it. Use the pose for
geometric tasks and the frames for visual ones.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

RewardFn = Callable[[np.ndarray, np.ndarray, np.ndarray], float]
"""reward_fn(observation (fps, H, W, 3) uint8, c2w (4, 4), action (6,)) -> float."""
TerminationFn = Callable[[np.ndarray, np.ndarray, np.ndarray], bool]
"""termination_fn(observation (fps, H, W, 3) uint8, c2w (4, 4), action (6,)) -> bool."""


def zero_reward(observation: np.ndarray, c2w: np.ndarray, action: np.ndarray) -> float:
    """The default reward: 0 on every step (the learned world has no task of its own)."""
    return 0.0


def never_terminate(observation: np.ndarray, c2w: np.ndarray, action: np.ndarray) -> bool:
    """The default termination: never (episodes end only by truncation, `max_episode_steps`)."""
    return False


def forward_progress_reward(observation: np.ndarray, c2w: np.ndarray, action: np.ndarray) -> float:
    """Distance moved along the camera's forward axis this step (tz, scene units); walking back is negative."""
    return float(action[2])


def goal_distance_reward(goal: np.ndarray) -> RewardFn:
    """A reward of minus the camera's distance to `goal` (3,) in the start camera's frame."""
    goal = np.asarray(goal, dtype=np.float64)
    if goal.shape != (3,):
        raise ValueError(f"goal has shape {goal.shape}, expected (3,) = [x, y, z] in the start camera's frame")

    def reward(observation: np.ndarray, c2w: np.ndarray, action: np.ndarray) -> float:
        return -float(np.linalg.norm(c2w[:3, 3] - goal))

    return reward


def leave_radius_termination(radius: float) -> TerminationFn:
    """Terminate once the camera is farther than `radius` scene units from where the episode started."""
    if not radius > 0:
        raise ValueError(f"radius={radius} must be > 0 (scene units from the start position)")

    def done(observation: np.ndarray, c2w: np.ndarray, action: np.ndarray) -> bool:
        return bool(np.linalg.norm(c2w[:3, 3]) > radius)

    return done
