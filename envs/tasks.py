"""Tasks: one object that defines reward, termination, start states and actions in the dream and in the engine.

A task runs unchanged in the learned world (`worldmodel/World-v0`, `task=...`) and in its real
engine twin (`worldmodel/DoomTask-v0`), so a policy trained in the dream is scored on the same
task in the engine:

    task = TakeCover()
    real = gymnasium.make("worldmodel/DoomTask-v0", task=task)         # ViZDoom take_cover.wad
    dream = gymnasium.make("worldmodel/World-v0", task=task.with_start_pool(frames))

Both envs hand the task a `TaskStep` after every step; the task answers with a reward, whether
the episode ended, and its own info keys. Actions are the task's components of the camera action
(`[tx, ty, tz, rx, ry, rz]`, scene units and radians per step), normalised to [-1, 1] by the
task's bounds, so an action means the same motion in both worlds (`ActionMap`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from gymnasium import spaces

from worldmodel.camera import ACTION_NAMES

PLANAR_COMPONENTS = ("tx", "tz", "ry")
"""The camera components Doom can realise (strafe, walk, yaw): the default normalised action."""
BLOCKED_MIN_COMMAND = 0.1
"""A step can be blocked only if it commands at least this much normalised motion (TakeCover: 0.9 units)."""
BLOCKED_RATIO = 0.5
"""A step is blocked (a wall stopped the player) when less than this share of its commanded motion happens."""


def blocked_labels(commanded: np.ndarray, realised: np.ndarray, min_command: float = BLOCKED_MIN_COMMAND,
                   ratio: float = BLOCKED_RATIO) -> tuple[np.ndarray, np.ndarray]:
    """(counted, blocked) bool (...,) from normalised commanded and realised motion (..., k): a step counts when
    it commands >= min_command, and is blocked when the realised motion along the command is < ratio of it."""
    commanded, realised = np.asarray(commanded, np.float64), np.asarray(realised, np.float64)
    norm2 = (commanded**2).sum(-1)
    counted = np.sqrt(norm2) >= min_command
    along = (commanded * realised).sum(-1) / np.maximum(norm2, 1e-12)
    return counted, counted & (along < ratio)


class ActionMap:
    """Normalised task actions in [-1, 1]^k <-> camera actions (6,): component i = a[j] * bound[j], 0 = no motion."""

    def __init__(self, components: Sequence[str], bounds: Sequence[float]) -> None:
        components, bounds = tuple(components), np.asarray(bounds, dtype=np.float64)
        unknown = [c for c in components if c not in ACTION_NAMES]
        if not components or unknown or len(set(components)) != len(components):
            raise ValueError(f"action components {components} must be distinct names among {ACTION_NAMES}")
        if bounds.shape != (len(components),) or not (np.isfinite(bounds) & (bounds > 0)).all():
            raise ValueError(f"bounds {bounds.tolist()} must be {len(components)} finite values > 0, one per "
                             f"component {components} (the largest |motion| per step, scene units or radians)")
        self.components, self.bounds = components, bounds
        self.index = np.array([ACTION_NAMES.index(c) for c in components])

    @property
    def space(self) -> spaces.Box:
        """Box(-1, 1, (k,), float32) over the components; 0 is no motion."""
        return spaces.Box(-1.0, 1.0, (len(self.components),), dtype=np.float32)

    @property
    def layout(self) -> str:
        """The normalised action's layout, for error messages: '[tx/9] in [-1, 1]'."""
        return "[" + ", ".join(f"{c}/{b:g}" for c, b in zip(self.components, self.bounds, strict=True)) + "] in [-1, 1]"

    def to_camera(self, a: np.ndarray) -> np.ndarray:
        """Normalised (..., k) -> camera action (..., 6) float64; the other components are 0."""
        a = np.asarray(a, dtype=np.float64)
        out = np.zeros((*a.shape[:-1], len(ACTION_NAMES)))
        out[..., self.index] = a * self.bounds
        return out

    def from_camera(self, action: np.ndarray) -> np.ndarray:
        """Camera action (..., 6) -> normalised (..., k) (not clipped: realised motion may exceed the bound)."""
        return np.asarray(action, dtype=np.float64)[..., self.index] / self.bounds

    def check_within(self, space: spaces.Box, what: str) -> None:
        """Raise ValueError if a component's bound exceeds a camera Box(6) `space` (e.g. a world's action space)."""
        high = np.minimum(np.abs(space.low), np.abs(space.high)).astype(np.float64)[self.index]
        over = self.bounds > high * (1 + 1e-6)
        if over.any():
            j = int(np.flatnonzero(over)[0])
            raise ValueError(f"the task's bound on {self.components[j]} ({self.bounds[j]:g} per step) exceeds {what}'s "
                             f"({high[j]:g}); lower the task's bound so an action means the same motion in both worlds")


@dataclass(frozen=True)
class TaskStep:
    """What a task sees of one step, in either world (the engine fills everything; the dream what it can)."""

    frames: np.ndarray | None
    """uint8 (frames_per_step, H, W, 3), the step's frames; None in the dream's latent mode."""
    pose: np.ndarray
    """float64 (4, 4) camera-to-world at the end of the step (engine: map frame; dream: start camera's frame)."""
    commanded: np.ndarray
    """float64 (6,) camera action the env received."""
    realised: np.ndarray
    """float64 (6,) camera motion that happened (the dream: the command, or the heads' where they say blocked)."""
    tics: int
    """Video frames (engine tics) of this step the agent lived through: frames_per_step unless it died."""
    alive: bool | None
    """Engine: the player is alive after the step. Dream: the continue head's verdict; None without heads."""
    step: int
    """Steps since reset, this one included."""


class Task:
    """Reward, termination, start states and actions of one task; the same object drives the dream and the engine.

    Subclasses override `reward`, `terminated` and `info`; `components`/`bounds` say which camera
    components the agent controls and their largest motion per step. `scenario` names the
    engine twin (a ViZDoom scenario), `max_steps` the step limit in both worlds, and
    `start_pool` (uint8 (S, H, W, 3), real start frames from the engine) what the dream starts
    from (`sample_start` draws an index; None: the world file's bundled start frames).
    """

    name = "task"
    scenario: str | None = None

    def __init__(self, components: Sequence[str], bounds: Sequence[float], max_steps: int | None = None,
                 start_pool: np.ndarray | None = None) -> None:
        self.actions = ActionMap(components, bounds)
        if max_steps is not None and max_steps < 1:
            raise ValueError(f"max_steps={max_steps} must be >= 1 or None (no limit)")
        self.max_steps = max_steps
        if start_pool is not None:
            pool = np.asarray(start_pool)
            if pool.dtype != np.uint8 or pool.ndim != 4 or pool.shape[-1] != 3 or len(pool) == 0:
                raise ValueError(f"start_pool is {pool.dtype}{pool.shape}, expected uint8 (S, H, W, 3) with S >= 1")
        self.start_pool = start_pool

    @property
    def components(self) -> tuple[str, ...]:
        """The camera components the agent controls, e.g. ('tx',)."""
        return self.actions.components

    @property
    def bounds(self) -> np.ndarray:
        """Largest |motion| per step of each component (scene units or radians)."""
        return self.actions.bounds

    def check_frames_per_step(self, frames_per_step: int, what: str) -> None:
        """Raise ValueError if the task counts a different number of frames (tics) per step than the env `what`."""
        mine = getattr(self, "frames_per_step", None)
        if mine is not None and mine != frames_per_step:
            raise ValueError(f"{type(self).__name__} counts {mine} frames per step but {what} makes {frames_per_step}; "
                             f"build the task with frames_per_step={frames_per_step}")

    def with_start_pool(self, frames: np.ndarray) -> Task:
        """A copy of this task whose dream episodes start from `frames` (uint8 (S, H, W, 3))."""
        clone = object.__new__(type(self))
        clone.__dict__.update(self.__dict__)
        Task.__init__(clone, self.components, self.bounds, self.max_steps, frames)
        return clone

    def sample_start(self, rng: np.random.Generator, n_starts: int) -> int:
        """Index of the start frame of a new dream episode, drawn with the episode's generator (uniform)."""
        return int(rng.integers(n_starts))

    def reward(self, s: TaskStep) -> float:
        """Reward of one step (default 0)."""
        return 0.0

    def terminated(self, s: TaskStep) -> bool:
        """Whether the episode ended in a terminal state (default never)."""
        return False

    def info(self, s: TaskStep) -> dict[str, Any]:
        """Task-specific info keys for this step (default none)."""
        return {}

    def __repr__(self) -> str:
        pool = "none" if self.start_pool is None else f"{len(self.start_pool)} frames"
        return (f"{type(self).__name__}(components={self.components}, bounds={self.bounds.tolist()}, "
                f"max_steps={self.max_steps}, start_pool={pool})")


TAKE_COVER_MAX_TICS = 2100
"""Episode cap in tics, as in World Models' TakeCover runs (a survival of 2100 is the maximum score)."""
TAKE_COVER_STRAFE = 9.0
"""Default strafe bound, map units per 4-tic step: inside the bundled world's trained tx range (about +-9.7)."""


class TakeCover(Task):
    """ViZDoom's take_cover: strafe (tx) to dodge fireballs; +1 per tic survived; ends on death or after 2100 tics.

    The reward of a step is the number of its tics the player lived through (`TaskStep.tics`),
    so an episode's return is its survival in tics, the number World Models reports. In the
    dream the death signal comes from the world file's heads (`python -m train.heads`); a world
    without heads never ends an episode but by truncation.
    """

    name = "take_cover"
    scenario = "take_cover"

    def __init__(self, max_strafe: float = TAKE_COVER_STRAFE, frames_per_step: int = 4,
                 max_tics: int = TAKE_COVER_MAX_TICS, start_pool: np.ndarray | None = None) -> None:
        if frames_per_step < 1 or max_tics < frames_per_step:
            raise ValueError(f"frames_per_step={frames_per_step} must be >= 1 and max_tics={max_tics} >= it")
        self.frames_per_step, self.max_tics = frames_per_step, max_tics
        super().__init__(("tx",), (max_strafe,), -(-max_tics // frames_per_step), start_pool)

    def reward(self, s: TaskStep) -> float:
        """Tics survived this step."""
        return float(s.tics)

    def terminated(self, s: TaskStep) -> bool:
        """The player died (known in the engine; the dream needs a continue head)."""
        return s.alive is False

    def info(self, s: TaskStep) -> dict[str, Any]:
        """`alive`: the player's state after the step (None in the dream)."""
        return {"alive": s.alive}
