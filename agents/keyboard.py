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

Opposite keys cancel; the result is clipped to the env's bounds.

Speeds come from how the camera moved in the world's training data (`typical_step_motion`, read
from the camera statistics every world file stores), so W walks and the arrows turn the way the
world has seen the camera walk and turn: `KeyboardMapping.for_world`. The action bounds are no
guide: they are the data's extremes and, for a game that never walks backwards, lopsided (the
bundled world file's forward range is [-0.015, 26.8]). `for_bounds` is the fallback for world files
without measured statistics.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

MOVE_KEYS = {"w": (2, 1.0), "s": (2, -1.0), "d": (0, 1.0), "a": (0, -1.0)}
"""Key -> (action component, sign) for translation."""
TURN_KEYS = {"right": (4, 1.0), "left": (4, -1.0), "up": (3, 1.0), "down": (3, -1.0)}
"""Key -> (action component, sign) for rotation."""
MOUSE_PIXELS_PER_KEY_STEP = 40.0
"""A mouse drag of this many pixels in one step turns as far as one step of a held arrow key."""
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
        """Speeds at `fraction` of each component's larger bound; for worlds without training statistics."""
        low, high = np.asarray(low, np.float64), np.asarray(high, np.float64)
        # The larger side: a bound that is ~0 on one side (a game that never walks backwards) must not
        # stall the key in the other direction; `action` still clips to the real bounds.
        return cls.for_speeds(fraction * np.maximum(np.abs(low), np.abs(high)), low, high)

    @classmethod
    def for_speeds(cls, speed: Sequence[float], low: Sequence[float], high: Sequence[float]) -> KeyboardMapping:
        """A mapping with these per-component key speeds, clipped to (low, high)."""
        speed = np.maximum(np.asarray(speed, np.float64), 0.0)
        return cls(
            speed=speed.tolist(),
            mouse_sensitivity=float(speed[4]) / MOUSE_PIXELS_PER_KEY_STEP,
            low=np.asarray(low, np.float64).tolist(),
            high=np.asarray(high, np.float64).tolist(),
        )

    @classmethod
    def for_world(cls, world: Any, low: Sequence[float], high: Sequence[float]) -> KeyboardMapping:
        """Key speeds of a typical step of the world's training data (`typical_step_motion`).

        W/S/A/D move by the typical horizontal speed (strafing as fast as walking, as in the games the
        data comes from), the arrows turn by the typical yaw rate. Falls back to `for_bounds` when the
        world file holds no measured camera statistics.
        """
        typical = typical_step_motion(world.camera_stats, world.meta.intrinsics, world.meta.image_hw,
                                      world.latent_hw, world.frames_per_step)
        if typical is None:
            return cls.for_bounds(low, high)
        walk = float(np.hypot(typical[0], typical[2]))
        turn = float(typical[4])  # yaw: the pitch estimate of a game that never looks up is the stats' floor
        return cls.for_speeds([walk, walk, walk, turn, turn, turn], low, high)

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


def typical_step_motion(
    stats: Any,
    intrinsics: Sequence[float],
    image_hw: tuple[int, int],
    grid_hw: tuple[int, int],
    frames_per_step: int,
) -> np.ndarray | None:
    """Root-mean-square camera motion of one step of the training data, (6,) [tx, ty, tz, rx, ry, rz], or None.

    Read from the world's camera statistics (`worldmodel.config.CameraStats`: per-channel mean and
    std of the relative Plücker maps over every training frame). The origin channels are the
    per-video-frame translation itself, so translation is exact. The direction channels, minus the
    pixel's ray at rest, are `theta x d` for a small turn theta: a yaw moves the x channel by
    `theta_y * d_z`, a pitch the y channel by `-theta_x * d_z`, so the rates follow from those
    channels' second moments over the ray grid. Roll cannot be told apart from them and is 0. One
    step is `frames_per_step` frames of steady motion (the data's explorer changes speed smoothly).
    Returns None for a world file without measured statistics (`CameraStats()` defaults).
    """
    from worldmodel.camera import ray_directions
    from worldmodel.config import CameraStats

    if stats is None or stats == CameraStats():
        return None
    mean, std = np.asarray(stats.mean, np.float64), np.asarray(stats.std, np.float64)
    second = mean**2 + std**2  # E[x^2] per channel over frames and grid cells
    d2 = (ray_directions(intrinsics, image_hw, grid_hw).reshape(-1, 3) ** 2).mean(0)  # E[d^2] over the grid, (3,)
    if stats.reference == "none":
        # Raw rays: a yaw keeps x^2 + z^2 of each ray, so E[x'^2] - E[d_x^2] = E[sin^2 theta] (E[d_z^2] - E[d_x^2]).
        second[3:] = np.maximum(second[3:] - d2, 0.0)
        yaw_gain, pitch_gain = d2[2] - d2[0], d2[2] - d2[1]
    else:  # 'rest': (R - I) d has x = theta_y d_z to first order, its cross terms average out over a centred grid
        yaw_gain = pitch_gain = d2[2]
    rx, ry = np.arcsin(np.sqrt(np.clip([second[4] / pitch_gain, second[3] / yaw_gain], 0.0, 1.0)))
    per_frame = np.array([*np.sqrt(second[:3]), rx, ry, 0.0])
    return frames_per_step * per_frame
