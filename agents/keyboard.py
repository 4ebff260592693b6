"""Keyboard and mouse -> relative camera action, shared by the viewer, its key scripts and the tests.

Keys are pygame key names (`pygame.key.name`): "w", "a", "s", "d", "up", "down", "left", "right".
Camera axes are OpenCV (x right, y down, z forward), so:

| input | action component |
|---|---|
| W / S | tz = +speed[2] / -speed[2] (forward / back) |
| D / A | tx = +speed[0] / -speed[0] (strafe right / left) |
| right / left arrow | ry = +speed[4] / -speed[4] (yaw right / left) |
| up / down arrow | rx = +speed[3] / -speed[3] (pitch up / down) |
| mouse dx, dy (pixels) | ry += dx * sensitivity, rx -= dy * sensitivity |

Opposite keys cancel; the result is clipped to the env's bounds. `KeyboardMapping.for_bounds`
sets each speed to half of that component's bound.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

MOVE_KEYS = {"w": (2, 1.0), "s": (2, -1.0), "d": (0, 1.0), "a": (0, -1.0)}
"""Key -> (action component, sign) for translation."""
TURN_KEYS = {"right": (4, 1.0), "left": (4, -1.0), "up": (3, 1.0), "down": (3, -1.0)}
"""Key -> (action component, sign) for rotation."""
COMMAND_KEYS = {"r": "reset", "p": "pause", "h": "help", "v": "record", "escape": "quit", "q": "quit"}
"""Keys that are commands to the viewer rather than motion."""


@dataclass
class KeyboardMapping:
    """How far one step of held keys moves the camera."""

    speed: Sequence[float] = (8.0, 8.0, 8.0, 0.1, 0.1, 0.1)
    """Per-component step while a key is held: [tx, ty, tz] in scene units, [rx, ry, rz] in radians."""
    mouse_sensitivity: float = 0.005
    """Rotation per pixel of mouse motion (radians)."""
    low: Sequence[float] | None = None
    """Lower action bounds to clip to (the env's action_space.low); None = no clipping."""
    high: Sequence[float] | None = None
    """Upper action bounds to clip to (the env's action_space.high); None = no clipping."""

    @classmethod
    def for_bounds(cls, low: Sequence[float], high: Sequence[float], fraction: float = 0.5) -> KeyboardMapping:
        """Speeds at `fraction` of each component's bound (the smaller side when they are asymmetric)."""
        low, high = np.asarray(low, np.float64), np.asarray(high, np.float64)
        speed = fraction * np.maximum(np.minimum(-low, high), 0.0)
        return cls(
            speed=speed.tolist(),
            mouse_sensitivity=float(min(speed[3], speed[4])) / 40.0,  # a 40-pixel flick = one held-key step
            low=low.tolist(),
            high=high.tolist(),
        )

    def action(self, keys: Iterable[str], mouse: tuple[float, float] = (0.0, 0.0)) -> np.ndarray:
        """Held keys and mouse motion since the last step -> action (6,) float32 [tx, ty, tz, rx, ry, rz]."""
        a = np.zeros(6, dtype=np.float64)
        for key in set(keys):
            if key in MOVE_KEYS or key in TURN_KEYS:
                i, sign = MOVE_KEYS.get(key) or TURN_KEYS[key]
                a[i] += sign * self.speed[i]
        dx, dy = mouse
        a[4] += dx * self.mouse_sensitivity  # mouse right = yaw right
        a[3] -= dy * self.mouse_sensitivity  # screen y grows downwards; mouse up = look up
        if self.low is not None and self.high is not None:
            a = np.clip(a, self.low, self.high)
        return a.astype(np.float32)


def commands(keys: Iterable[str]) -> set[str]:
    """The viewer commands among pressed keys ("reset", "pause", ...)."""
    return {COMMAND_KEYS[k] for k in keys if k in COMMAND_KEYS}
