"""Scripted exploration policies that drive DoomCamera-v0 like a curious player.

The explorer switches between behaviours (walk, curve, pause, look around, strafe), each lasting a
random number of steps, and moves its commands towards the behaviour's targets with rate limits,
so speed and turn rate change smoothly. Walls are avoided with the engine's depth buffer: the
forward speed shrinks as the free distance ahead shrinks and the camera turns to the freer side.
All randomness comes from the generator passed in, so a trajectory is a function of the seed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# ViZDoom's uint8 depth buffer is linear in distance: about 7 map units per level (measured, docs/data.md).
DEPTH_UNITS_PER_LEVEL = 7.0


@dataclass
class ExplorerConfig:
    """Knobs of the scripted explorer (units: Doom map units and radians per step)."""

    max_speed: float = 28.0
    """Top forward speed, map units per step (4 tics); Doom's run speed is about 60."""
    max_turn: float = 0.25
    """Top yaw rate, radians per step, when looking around."""
    speed_slew: float = 3.0
    """Largest change of forward/side speed per step (smooth acceleration)."""
    turn_slew: float = 0.04
    """Largest change of yaw rate per step (smooth turning)."""
    safe_distance: float = 128.0
    """Free distance ahead (map units) below which the explorer slows and turns away."""
    min_mode_steps: int = 8
    """Shortest behaviour duration in steps."""
    max_mode_steps: int = 48
    """Longest behaviour duration in steps."""
    mode_weights: tuple[float, float, float, float, float] = (0.45, 0.2, 0.1, 0.15, 0.1)
    """Probabilities of walk, curve, pause, look-around and strafe."""


MODES = ("walk", "curve", "pause", "look", "strafe")


class Explorer:
    """Smooth random exploration with depth-based wall avoidance; `act(depth)` -> action (6,)."""

    def __init__(self, rng: np.random.Generator, cfg: ExplorerConfig | None = None) -> None:
        self.rng, self.cfg = rng, cfg or ExplorerConfig()
        self.speed = self.side = self.turn = 0.0
        self._mode, self._left = "pause", 0
        self._target = (0.0, 0.0, 0.0)
        self._escape = 0

    def _new_mode(self) -> None:
        c, r = self.cfg, self.rng
        w = np.asarray(c.mode_weights, dtype=np.float64)
        self._mode = MODES[r.choice(len(MODES), p=w / w.sum())]
        self._left = int(r.integers(c.min_mode_steps, c.max_mode_steps + 1))
        sign = float(r.choice([-1.0, 1.0]))
        if self._mode == "walk":
            self._target = (r.uniform(0.3, 1.0) * c.max_speed, 0.0, r.normal(0.0, 0.02))
        elif self._mode == "curve":
            self._target = (r.uniform(0.3, 0.8) * c.max_speed, 0.0, sign * r.uniform(0.03, 0.12))
        elif self._mode == "pause":
            self._target = (0.0, 0.0, r.normal(0.0, 0.01))
        elif self._mode == "look":
            self._target = (r.uniform(0.0, 0.2) * c.max_speed, 0.0, sign * r.uniform(0.3, 1.0) * c.max_turn)
        else:  # strafe
            self._target = (r.uniform(0.0, 0.4) * c.max_speed, sign * r.uniform(0.2, 0.5) * c.max_speed, 0.0)

    def act(self, depth: np.ndarray | None, realised: np.ndarray | None = None) -> np.ndarray:
        """Next action [tx, ty, tz, rx, ry, rz] from the last frame's depth (H, W) and realised action (6,)."""
        c = self.cfg
        if self._left <= 0:
            self._new_mode()
        self._left -= 1
        speed_t, side_t, turn_t = self._target
        if depth is not None:
            h, w = depth.shape
            band = depth[int(0.35 * h) : int(0.65 * h)].astype(np.float64) * DEPTH_UNITS_PER_LEVEL
            left, mid, right = (np.percentile(band[:, s], 10) for s in np.array_split(np.arange(w), 3))
            # Stuck against a wall (commanded motion not realised): turn away for a while.
            if realised is not None and self.speed > 4.0 and realised[2] < 0.3 * self.speed:
                self._escape = int(self.rng.integers(6, 14))
            if mid < c.safe_distance or self._escape > 0:
                self._escape = max(self._escape - 1, 0)
                away = 1.0 if right >= left else -1.0  # ry > 0 turns right
                closeness = 1.0 - min(mid / c.safe_distance, 1.0)
                speed_t = speed_t * (1.0 - closeness) if self._escape == 0 else 0.0
                turn_t = away * max(abs(turn_t), c.max_turn * (0.5 + closeness))
            # Strafe only towards open space.
            if (side_t > 0 and right < c.safe_distance / 2) or (side_t < 0 and left < c.safe_distance / 2):
                side_t = 0.0
        self.speed += np.clip(speed_t - self.speed, -c.speed_slew, c.speed_slew)
        self.side += np.clip(side_t - self.side, -c.speed_slew, c.speed_slew)
        self.turn += np.clip(turn_t - self.turn, -c.turn_slew, c.turn_slew)
        return np.array([self.side, 0.0, self.speed, 0.0, self.turn, 0.0], dtype=np.float32)
