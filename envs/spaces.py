"""Action-space helpers shared by the camera envs (the learned world and DoomCamera-v0)."""

from __future__ import annotations

import numpy as np
from gymnasium import spaces

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


def clip_action(action: np.ndarray, space: spaces.Box) -> tuple[np.ndarray, bool]:
    """Clip a validated action into the space's bounds; returns (clipped, whether anything changed)."""
    c = np.clip(action, space.low.astype(np.float64), space.high.astype(np.float64))
    return c, bool((c != action).any())
