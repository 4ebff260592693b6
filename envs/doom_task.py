"""`worldmodel/DoomTask-v0`: a task's real-engine twin, a ViZDoom scenario driven by the camera-action convention.

    env = gymnasium.make("worldmodel/DoomTask-v0")                  # TakeCover: strafe to dodge fireballs
    obs, info = env.reset(seed=0)                                   # obs: uint8 (96, 128, 3)
    obs, reward, terminated, truncated, info = env.step(np.array([0.5], np.float32))  # strafe right 4.5 units

The scenario runs with its monsters (no god mode, no -nomonsters); the camera moves through
`DoomCameraEnv`'s per-tic controller, so a normalised action means the same displacement as in
the learned world (`envs.tasks.ActionMap`). `collect_start_pool` draws real start frames for the
dream from it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from envs.checks import check_seed
from envs.doom import DoomCameraEnv, wad_path
from envs.modes import motion_info, observation_space, observe, resolve_action_map, resolve_obs_mode
from envs.tasks import Task, TakeCover, TaskStep, blocked_labels
from worldmodel.camera import ACTION_LAYOUT, check_action

WORLD_FRAME_SIZE = (96, 128)
"""Frame size (H, W) of the bundled world, the default of the task env."""


def scenario_path(name: str) -> str:
    """Path of a scenario WAD that ships with vizdoom ('take_cover' -> .../scenarios/take_cover.wad)."""
    import vizdoom as vzd

    path = os.path.join(vzd.scenarios_path, f"{name}.wad")
    if not os.path.exists(path):
        known = sorted(f[:-4] for f in os.listdir(vzd.scenarios_path) if f.endswith(".wad"))
        raise ValueError(f"vizdoom ships no scenario {name!r}; it has {', '.join(known)}")
    return path


class DoomTaskEnv(DoomCameraEnv):
    """A task in its ViZDoom scenario, with monsters: reward, termination and actions from the `Task`.

    ## Action space
    `action_mode="normalized"` (default): `Box(-1, 1, (k,), float32)` over the task's components
    (TakeCover: `[tx / 9]`, + = strafe right), 0 = no motion. `"camera"`: `Box(6)` as
    `DoomCameraEnv`. Out-of-range, wrong-shape, NaN or inf actions raise ValueError.

    ## Observation space
    `obs_mode="frame"` (default): uint8 `(H, W, 3)`, the step's last frame; `"frames"`: uint8
    `(frames_per_step, H, W, 3)`, one per tic. `frame_size` defaults to the bundled world's 96x128.

    ## Reward and episode end
    From the task (TakeCover: tics survived in the step, so the return is the survival time in
    tics; terminated on death; truncated after `task.max_steps` steps, 2100 tics).

    ## Info
    `pose` (4, 4) camera-to-world after the step (Doom map frame), `commanded_action` and
    `realised_action` (6,) camera actions, the task's keys (TakeCover: `alive`), `tics` (tics
    survived this episode), `health`, `blocked` (less than half the commanded motion of the task's
    components happened: a wall stopped the player; `envs.tasks.blocked_labels`), and
    `DoomCameraEnv`'s keys (`c2w` per frame, ...).

    ## Reset
    `reset(seed=...)`: the seed sets the engine's (monster and fireball) randomness; no options.
    """

    metadata = {"render_modes": ["rgb_array", "rgb_array_list"], "render_fps": 35}
    game_args = "+movebob 0 +freelook 1"  # DoomCameraEnv's, with monsters and without cheats

    def __init__(
        self,
        task: Task | None = None,
        obs_mode: str | None = None,
        action_mode: str | None = None,
        frame_size: tuple[int, int] = WORLD_FRAME_SIZE,
        resolution: str = "256x192",
        frames_per_step: int = 4,
        render_mode: str | None = None,
        engine_timeout_s: float = 30.0,
    ) -> None:
        task = task if task is not None else TakeCover(frames_per_step=frames_per_step)
        task.check_frames_per_step(frames_per_step, "DoomTask-v0")
        if task.scenario is None:
            raise ValueError(f"{task!r} names no engine scenario (task.scenario); DoomTask-v0 runs one")
        if render_mode not in (None, *self.metadata["render_modes"]):
            modes = self.metadata["render_modes"]
            raise ValueError(f"render_mode={render_mode!r}; DoomTask-v0 supports None or one of {modes}")
        super().__init__(map_name="MAP01", wad=scenario_path(task.scenario), resolution=resolution,
                         frame_size=frame_size, frames_per_step=frames_per_step,
                         max_steps=task.max_steps or 2**62, spawn_yaw_jitter_deg=0.0,
                         engine_timeout_s=engine_timeout_s)
        self.render_mode = render_mode
        self.task = task
        self.obs_mode = resolve_obs_mode(obs_mode, task, ("frames", "frame"))
        self.action_map = resolve_action_map(action_mode, task, self.camera_space, "DoomCameraEnv's action space")
        self.action_space = self.camera_space if self.action_map is None else self.action_map.space
        self.observation_space = observation_space(self.obs_mode, frames_per_step, self.frame_hw)
        self._tics = 0
        self._unrendered: list[np.ndarray] = []

    def _configure(self, game: Any) -> None:
        """The scenario's own settings (take_cover.cfg: skill 4), and the player's health."""
        import vizdoom as vzd

        # A scenario is a PWAD over an IWAD: the game's resources come from freedoom2.
        game.set_doom_game_path(wad_path("freedoom2"))
        game.set_doom_scenario_path(self._wad_path)
        game.set_doom_skill(4)
        game.add_available_game_variable(vzd.GameVariable.HEALTH)

    def _start_episode(self, start: str) -> None:
        """A new scenario episode seeded from `np_random`: monsters on, mortal, no settling tics."""
        with self._engine("starting an episode"):
            self._game.set_seed(int(self.np_random.integers(2**31 - 1)))
            self._game.new_episode()
            self._intrinsics = self._frame_intrinsics(self._vars()[5])
            self._last_frame, self._pose = self._capture()

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        """Start an episode; the seed sets the scenario's randomness. No options are taken."""
        seed = check_seed(seed)
        if options is not None and (not isinstance(options, Mapping) or len(options)):
            raise ValueError(f"options={options!r}: DoomTask-v0 takes no reset options (the scenario fixes the start)")
        frames, info = super().reset(seed=seed)
        self._tics = 0
        zero = np.zeros(6)
        info.update(motion_info(self._pose, zero, zero), tics=0, health=float(self._vars()[10]), blocked=False,
                    **self.task.info(
            TaskStep(frames, self._pose.copy(), zero, zero, 0, True, 0)))
        self._unrendered = [frames[-1].copy()] if self.render_mode == "rgb_array_list" else []
        return observe(self.obs_mode, frames[None])[0], info

    def step(self, action):
        """One step of the task: the camera action over frames_per_step tics; reward and ending from the task."""
        if self._game is None:
            raise RuntimeError("call reset() before step()")
        space = self.action_space
        layout = self.action_map.layout if self.action_map is not None else ACTION_LAYOUT
        a = check_action(action, space.shape, layout, (space.low, space.high))  # raises before any state changes
        camera = a if self.action_map is None else self.action_map.to_camera(a)
        frames, _, _, truncated, info = super().step(camera.astype(np.float32))
        game = self._game
        dead = bool(game.is_player_dead())
        tics = int(info["valid_frames"])
        self._tics += tics
        s = TaskStep(frames, info["c2w"][-1].copy(), info["commanded_action"], info["realised_action"], tics,
                     not dead, self._steps)
        reward, terminated = float(self.task.reward(s)), bool(self.task.terminated(s))
        truncated = bool(truncated) and not terminated
        health = 0.0 if game.is_episode_finished() else float(self._vars()[10])
        amap = self.task.actions
        blocked = bool(blocked_labels(amap.from_camera(s.commanded), amap.from_camera(s.realised))[1])
        info.update(motion_info(s.pose, s.commanded, s.realised), tics=self._tics, health=health, blocked=blocked,
                    **self.task.info(s))
        if self.render_mode == "rgb_array_list":
            self._unrendered.extend(frames[:max(tics, 1)].copy())
        return observe(self.obs_mode, frames[None])[0], reward, terminated, truncated, info

    def render(self) -> np.ndarray | list[np.ndarray] | None:
        """'rgb_array': the last frame; 'rgb_array_list': every frame since the last call (tics lived through)."""
        if self.render_mode == "rgb_array_list":
            frames, self._unrendered = self._unrendered, []
            return frames
        return super().render()


def collect_start_pool(task: Task, n: int, seed: int = 0, max_wait_steps: int = 8,
                       frame_size: tuple[int, int] = WORLD_FRAME_SIZE) -> np.ndarray:
    """`n` real start frames uint8 (n, H, W, 3) from the engine: episode i (seed + i) after 0..max_wait_steps no-ops.

    Waiting a few steps lets the monsters move and fire, so the dream's starts vary as the
    engine's first seconds do; an episode that ends while waiting gives its last frame.
    """
    if n < 1:
        raise ValueError(f"n={n} must be >= 1 start frames")
    fps = getattr(task, "frames_per_step", 4)
    env = DoomTaskEnv(task, obs_mode="frame", frame_size=frame_size, frames_per_step=fps)
    rng = np.random.default_rng(seed)
    frames = []
    try:
        for i in range(n):
            obs, _ = env.reset(seed=seed + i)
            for _ in range(int(rng.integers(max_wait_steps + 1))):
                obs, _, terminated, truncated, _ = env.step(np.zeros(env.action_space.shape, np.float32))
                if terminated or truncated:
                    break
            frames.append(obs)
    finally:
        env.close()
    return np.stack(frames)
