"""Observation and action modes shared by the learned world and the real task env, and their common info schema.

Observation modes (`obs_mode`):
- "frames": uint8 (frames_per_step, H, W, 3), every video frame of the step (the default without a task);
- "frame": uint8 (H, W, 3), the step's last frame (the default with a task: what CNN policies take);
- "latent": float32 (C, h, w), the step's latent, never decoded (learned world only; cheaper).

Action modes (`action_mode`):
- "camera": Box(6) `[tx, ty, tz, rx, ry, rz]` in scene units and radians (the default without a task);
- "normalized": Box(-1, 1, (k,)) over the task's components (no task: tx, tz, ry), scaled by the
  task's bounds (no task: the env's own), so 0 is no motion (the default with a task).

Every step's info carries `pose` (4, 4) camera-to-world after the step, `commanded_action` (6,)
the camera action the env executed and `realised_action` (6,) the motion that happened.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from gymnasium import spaces

from envs.tasks import PLANAR_COMPONENTS, ActionMap, Task
from worldmodel.camera import ACTION_NAMES

OBS_MODES = ("frames", "frame", "latent")
"""Observation modes: all frames of the step, its last frame, or its latent."""
ACTION_MODES = ("camera", "normalized")
"""Action modes: the camera Box(6), or [-1, 1] over the task's components."""


def resolve_obs_mode(obs_mode: str | None, task: Task | None, allowed: tuple[str, ...] = OBS_MODES) -> str:
    """The observation mode: as given, else "frame" with a task and "frames" without; ValueError if unknown."""
    mode = obs_mode if obs_mode is not None else ("frame" if task is not None else "frames")
    if mode not in allowed:
        raise ValueError(f"obs_mode={obs_mode!r}; this env supports {list(allowed)}")
    return mode


def resolve_action_map(action_mode: str | None, task: Task | None, camera_space: spaces.Box,
                       what: str) -> ActionMap | None:
    """The normalised action map, or None for camera actions; checks the task's bounds fit `camera_space`."""
    mode = action_mode if action_mode is not None else ("normalized" if task is not None else "camera")
    if mode not in ACTION_MODES:
        raise ValueError(f"action_mode={action_mode!r}; expected one of {list(ACTION_MODES)}")
    if task is not None:
        task.actions.check_within(camera_space, what)
    if mode == "camera":
        return None
    if task is not None:
        return task.actions
    high = np.minimum(np.abs(camera_space.low), np.abs(camera_space.high)).astype(np.float64)
    return ActionMap(PLANAR_COMPONENTS, [high[ACTION_NAMES.index(c)] for c in PLANAR_COMPONENTS])


def observation_space(mode: str, frames_per_step: int, image_hw: tuple[int, int],
                      latent_shape: tuple[int, ...] | None = None) -> spaces.Box:
    """The Box of one observation in `mode`."""
    if mode == "frames":
        return spaces.Box(0, 255, (frames_per_step, *image_hw, 3), dtype=np.uint8)
    if mode == "frame":
        return spaces.Box(0, 255, (*image_hw, 3), dtype=np.uint8)
    if latent_shape is None:
        raise ValueError("obs_mode='latent' needs a learned world: the engine has no latent to observe")
    return spaces.Box(-np.inf, np.inf, latent_shape, dtype=np.float32)


def observe(mode: str, frames: np.ndarray) -> np.ndarray:
    """Frames (n, fps, H, W, 3) -> observations (n, ...) in a frame mode ('frames' or 'frame')."""
    return frames if mode == "frames" else frames[:, -1]


def motion_info(pose: np.ndarray, commanded: np.ndarray, realised: np.ndarray) -> dict[str, Any]:
    """The info keys both worlds report: `pose` (4, 4), `commanded_action` (6,), `realised_action` (6,)."""
    return {"pose": pose.copy(), "commanded_action": commanded.copy(), "realised_action": realised.copy()}
