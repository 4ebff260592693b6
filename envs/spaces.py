"""Action-space helpers shared by the camera envs (the learned world and DoomCamera-v0)."""

from __future__ import annotations

import numpy as np
from gymnasium import spaces

from worldmodel.camera import ACTION_LAYOUT, check_action

DEFAULT_MAX_TRANSLATION = 32.0
"""Default bound on |tx|, |ty|, |tz| per step, in scene units (Doom map units for the bundled data)."""
DEFAULT_MAX_ROTATION = 0.5
"""Default bound on |rx|, |ry|, |rz| per step, in radians (0.5 rad per 4 tics is a brisk turn)."""


def camera_action_space(
    max_translation: float = DEFAULT_MAX_TRANSLATION, max_rotation: float = DEFAULT_MAX_ROTATION
) -> spaces.Box:
    """Box(6) of relative camera poses [tx, ty, tz, rx, ry, rz] (scene units, axis-angle radians)."""
    high = np.array([max_translation] * 3 + [max_rotation] * 3, dtype=np.float32)
    return spaces.Box(low=-high, high=high, dtype=np.float32)


def validate_action(action: object, space: spaces.Box, layout: str = ACTION_LAYOUT) -> np.ndarray:
    """Check shape (the space's), dtype and finiteness of an action; return it as float64.

    Raises ValueError naming the problem and the expected layout; never mutates env state,
    so an env that validates first stays usable after a bad action.
    """
    return check_action(action, shape=space.shape, layout=layout)


ACTION_NAMES = ("tx", "ty", "tz", "rx", "ry", "rz")
"""Names of the six action components, in order."""


def check_action_bounds(action: np.ndarray, space: spaces.Box, layout: str = ACTION_LAYOUT) -> None:
    """Raise ValueError if a validated action (..., 6) leaves the space's bounds, naming the component.

    The bounds are float32; a float64 action equal to the float64 bound it was made from must
    pass, so the comparison allows one float32 rounding step.
    """
    low, high = space.low.astype(np.float64), space.high.astype(np.float64)
    tol = 1e-6 * np.maximum(1.0, np.maximum(np.abs(low), np.abs(high)))
    bad = (action < low - tol) | (action > high + tol)
    if bad.any():
        idx = tuple(int(i) for i in np.argwhere(bad)[0])
        where = f" of env {idx[0]}" if len(idx) > 1 else ""
        name = ACTION_NAMES[idx[-1]] if action.shape[-1] == len(ACTION_NAMES) else f"component {idx[-1]}"
        raise ValueError(
            f"action {name}{where} = {action[idx]:.6g} is outside its bounds "
            f"[{low[idx]:.6g}, {high[idx]:.6g}]; expected {layout} within low={low.reshape(-1, low.shape[-1])[0].tolist()}, "
            f"high={high.reshape(-1, high.shape[-1])[0].tolist()} (the env's action_space)"
        )


def clip_action(action: np.ndarray, space: spaces.Box) -> tuple[np.ndarray, bool]:
    """Clip a validated action into the space's bounds; returns (clipped, whether anything changed)."""
    c = np.clip(action, space.low.astype(np.float64), space.high.astype(np.float64))
    return c, bool((c != action).any())
