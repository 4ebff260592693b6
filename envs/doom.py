"""`worldmodel/DoomCamera-v0`: the real camera world on ViZDoom, with the learned world's action space.

World frame and units: Doom map coordinates, right-handed, x east, y north, z up, in Doom map
units (the player is 56 units tall, eyes 41 above the floor; 1 unit is roughly 3 cm).
Camera poses are OpenCV camera-to-world (x right, y down, z forward), float64.

What Doom can realise, and how the env treats the rest (docs/data.md has the measurements):
- yaw (ry): exactly, through TURN_LEFT_RIGHT_DELTA (degrees per tic, quantised to 2^-16 turn);
- horizontal translation (tx, tz): through MOVE_FORWARD_BACKWARD_DELTA / MOVE_LEFT_RIGHT_DELTA, which
  set a thrust, not a displacement. The player has momentum (friction 0.90625 per tic) and a thrust
  cap of 50/32 units/tic^2 per axis, so the env runs a per-tic velocity controller towards the
  commanded path; walls stop and deflect the player. The realised pose says what happened.
- vertical translation (ty): not controllable; the camera sits 41 units above the floor and follows
  stairs and lifts. The commanded ty is dropped and reported in `info["dropped_action"]`.
- roll (rz): impossible in Doom; dropped and reported.
- pitch (rx): ZDoom's software renderer (the only one in ViZDoom) implements look up/down as a
  y-shear (a principal-point shift, measured: every column moves by the same fy*tan(pitch)), not a
  rotation. A sheared image is not a pinhole image of the rotated pose, so the env keeps pitch at 0
  and drops rx (reported).
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import struct
import weakref
from collections.abc import Iterator, Mapping
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from envs.checks import check_seed
from envs.spaces import DEFAULT_MAX_ROTATION, DEFAULT_MAX_TRANSLATION, camera_action_space, clip_action
from envs.watchdog import EngineGuard, child_pids
from worldmodel.camera import check_action, interpolate_action

# ZDoom player physics, measured in tests/test_doom_env.py: a delta-move value v adds v/32 units/tic
# of velocity along the (new) heading, |v| is capped at 50, position += velocity, then velocity *= friction.
THRUST_PER_UNIT = 1.0 / 32.0
MAX_MOVE_VALUE = 50.0
FRICTION = 0.90625
# Doom's software renderer draws 320x200 art for a 4:3 screen, so world heights are stretched by 1.2
# relative to widths on square-pixel 4:3 modes: fy = 1.2 * fx (measured from the pitch shear, docs/data.md).
PIXEL_ASPECT = 1.2
REALISABLE = np.array([1.0, 0.0, 1.0, 0.0, 1.0, 0.0])
"""Mask of action components Doom can realise: tx, tz (horizontal motion) and ry (yaw)."""
WADS = ("freedoom1", "freedoom2")
PLAYER_CLEARANCE = 48.0
"""Minimum distance (map units) from any wall for a random start point; the player radius is 16; 48 keeps the first frame off the wall."""
RANDOM_START_TRIES = 3
"""Rounds of random start draws (each up to 500 points, all from the env's np_random) before reset gives up."""
DEFAULT_ENGINE_TIMEOUT_S = 30.0
"""Seconds one reset or step may wait on the engine before it is killed (a healthy one answers in well under 1 s)."""
DEFAULT_SPAWN_YAW_JITTER_DEG = 5.0
"""Half-width of the seeded heading jitter at the map's spawn point, in degrees."""
_MAP_MARKER = re.compile(r"^(MAP\d\d|E\dM\d)$")


@functools.lru_cache(maxsize=8)
def wad_maps(path: str) -> tuple[str, ...]:
    """The maps a WAD holds: its MAPxx / ExMy marker lumps, each followed by THINGS (or TEXTMAP), upper case.

    Read from the WAD directory (12-byte header "IWAD"/"PWAD", lump count, directory offset; then
    16 bytes per lump: offset, size, 8-byte name), so no engine is started.
    """
    with open(path, "rb") as f:
        magic, count, offset = struct.unpack("<4sii", f.read(12))
        if magic not in (b"IWAD", b"PWAD") or count < 0 or offset < 12:
            raise ValueError(f"{path} is not a WAD file (header {magic!r}); pass a Doom IWAD or PWAD")
        f.seek(offset)
        table = f.read(16 * count)
    names = [table[i + 8:i + 16].rstrip(b"\0").decode("ascii", "replace").upper() for i in range(0, len(table), 16)]
    following = names[1:] + [""]
    return tuple(n for n, nxt in zip(names, following, strict=True) if _MAP_MARKER.match(n) and nxt in ("THINGS", "TEXTMAP"))


def check_map(map_name: object, path: str) -> str:
    """A map name the WAD at `path` holds, upper-cased; else ValueError listing the maps there are."""
    maps = wad_maps(path)
    name = map_name.upper() if isinstance(map_name, str) else None
    if name not in maps:
        raise ValueError(f"map {map_name!r} is not in {os.path.basename(path)}, which holds {', '.join(maps)}")
    return name


def wad_path(wad: str) -> str:
    """Path of a WAD shipped inside the vizdoom package ('freedoom1', 'freedoom2') or a user path."""
    import vizdoom as vzd

    if wad in WADS:
        return os.path.join(os.path.dirname(vzd.__file__), f"{wad}.wad")
    if os.path.exists(wad):
        return wad
    raise ValueError(f"unknown WAD {wad!r}: expected one of {WADS} or a path to a .wad file")


def parse_resolution(resolution: str) -> tuple[int, int]:
    """'256x192' -> (height, width); only ViZDoom's 4:3 modes, whose intrinsics we measured."""
    import vizdoom as vzd

    try:
        w, h = (int(s) for s in resolution.lower().split("x"))
    except ValueError as e:
        raise ValueError(f"resolution {resolution!r}: expected 'WIDTHxHEIGHT', e.g. '256x192'") from e
    if 3 * w != 4 * h or not hasattr(vzd.ScreenResolution, f"RES_{w}X{h}"):
        modes = [m[4:].lower() for m in dir(vzd.ScreenResolution) if m.startswith("RES_")]
        ok = [m for m in modes if 3 * int(m.split("x")[0]) == 4 * int(m.split("x")[1])]
        raise ValueError(f"resolution {resolution!r} unsupported: use a 4:3 ViZDoom mode, one of {sorted(ok)}")
    return h, w


def doom_intrinsics(height: int, width: int, fov_deg: float = 90.0) -> np.ndarray:
    """(fx, fy, cx, cy) of a 4:3 ViZDoom frame: the horizontal FOV spans the width, fy = 1.2 fx."""
    fx = (width / 2.0) / np.tan(np.deg2rad(fov_deg) / 2.0)
    return np.array([fx, PIXEL_ASPECT * fx, (width - 1) / 2.0, (height - 1) / 2.0])


def doom_pose(x: float, y: float, z: float, angle_deg: float) -> np.ndarray:
    """Camera-to-world (OpenCV axes) of a level Doom camera at (x, y, z) facing `angle_deg` (CCW from east)."""
    a = np.deg2rad(angle_deg)
    c, s = np.cos(a), np.sin(a)
    T = np.eye(4)
    T[:3, 0] = (s, -c, 0.0)  # camera x: right
    T[:3, 1] = (0.0, 0.0, -1.0)  # camera y: down
    T[:3, 2] = (c, s, 0.0)  # camera z: forward
    T[:3, 3] = (x, y, z)
    return T


def _wrap_deg(a: float) -> float:
    return (a + 180.0) % 360.0 - 180.0


class DoomCameraEnv(gym.Env):
    """A camera walking through a Freedoom map, driven by relative camera poses.

    ## Action space
    `Box(-high, high, (6,), float32)`: `[tx, ty, tz, rx, ry, rz]`, the camera pose at the end of the
    step in the camera at the end of the previous step (OpenCV axes, Doom map units, axis-angle
    radians); `high = [max_translation]*3 + [max_rotation]*3`. Out-of-range actions are clipped
    (`info["clipped"]`); wrong shape/dtype, NaN or inf raise ValueError. Only tx, tz and ry are
    realisable; ty, rx, rz are dropped and reported in `info["dropped_action"]`.

    ## Observation space
    `Box(0, 255, (frames_per_step, H, W, 3), uint8)`: the rendered frames of the step, one per engine
    tic (35 tics/s). At reset every slot holds the start frame.

    ## Info
    `c2w` (frames_per_step, 4, 4) float64 realised camera-to-world pose of every frame (read back
    from the engine); `intrinsics` (4,) fx, fy, cx, cy of the observation frames; `commanded_action`,
    `realised_action`, `dropped_action` (6,); `clipped` bool; `map`, `wad`; `depth` (H, W) uint8 of the
    last frame when `depth=True`; `valid_frames` int (< frames_per_step only when the
    level ended mid-step, e.g. the camera crossed an exit line; the rest repeat the last frame).

    ## Reset
    `reset(seed=..., options={"map": "MAP07", "start": "random"})`. `start="spawn"` (default) is
    the map's player start turned by a seeded yaw in +-`spawn_yaw_jitter_deg` (default 5 degrees;
    0 = the exact map start), so the seed chooses the first view; `start="random"` teleports to a
    seeded open point of the map with a seeded heading (RuntimeError if the map has none). Map
    names are checked against the WAD's directory (MAPxx / ExMy markers), unknown option keys
    and bad starts raise ValueError, all before anything changes.

    ## Engine process
    ViZDoom runs its engine as a child process. Each reset and step must finish within
    `engine_timeout_s` (default 30 s), else a guard process kills the engine and the call raises
    TimeoutError (the next reset starts a fresh engine). The engine stops with `close()`, when the
    env is garbage-collected, at interpreter exit, and (through the guard) when Python is killed.

    ## Episode end
    Never terminates; truncates after `max_steps` steps or when the level ends (exit line).
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 35}
    game_args = "-nomonsters +movebob 0 +sv_cheats 1 +freelook 1"
    """Engine arguments: no monsters; no view bob (it would move the camera without an action); cheats for warp/god."""
    episode_start_tic = 10
    """The first tics of a level ignore input; episodes start after them."""

    def __init__(
        self,
        map_name: str = "MAP01",
        wad: str = "freedoom2",
        resolution: str = "256x192",
        frame_size: tuple[int, int] | None = None,
        frames_per_step: int = 4,
        max_steps: int = 1000,
        start: str = "spawn",
        depth: bool = False,
        max_translation: float = DEFAULT_MAX_TRANSLATION,
        max_rotation: float = DEFAULT_MAX_ROTATION,
        render_mode: str | None = None,
        spawn_yaw_jitter_deg: float = DEFAULT_SPAWN_YAW_JITTER_DEG,
        engine_timeout_s: float = DEFAULT_ENGINE_TIMEOUT_S,
    ) -> None:
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode={render_mode!r}; DoomCamera-v0 supports None or 'rgb_array'")
        if start not in ("spawn", "random"):
            raise ValueError(f"start={start!r}; expected 'spawn' (map start) or 'random' (teleport into the map)")
        if frames_per_step < 1:
            raise ValueError(f"frames_per_step={frames_per_step} must be >= 1")
        if not 0.0 <= spawn_yaw_jitter_deg <= 180.0:
            raise ValueError(f"spawn_yaw_jitter_deg={spawn_yaw_jitter_deg} must be in [0, 180] (0 = the exact map start)")
        if not engine_timeout_s > 0:
            raise ValueError(f"engine_timeout_s={engine_timeout_s} must be > 0 seconds")
        self._wad_path = wad_path(wad)
        self.wad, self.map_name, self.start = wad, check_map(map_name, self._wad_path), start
        self.spawn_yaw_jitter_deg, self.engine_timeout_s = float(spawn_yaw_jitter_deg), float(engine_timeout_s)
        self.render_hw = parse_resolution(resolution)
        self.resolution = resolution
        self.frame_hw = tuple(frame_size) if frame_size is not None else self.render_hw
        self.frames_per_step, self.max_steps, self.depth = frames_per_step, max_steps, depth
        self.render_mode = render_mode
        # The camera Box(6) the engine executes (a task env may expose a normalised action_space over it).
        self.camera_space = self.action_space = camera_action_space(max_translation, max_rotation)
        self.observation_space = spaces.Box(0, 255, (frames_per_step, *self.frame_hw, 3), dtype=np.uint8)
        self._game = None
        self._guard: EngineGuard | None = None
        self._shutdown: weakref.finalize | None = None
        self._loaded_map: str | None = None
        self._steps = 0
        self._last_frame: np.ndarray | None = None
        self._intrinsics = self._frame_intrinsics(90.0)

    # ----------------------------------------------------------------- engine
    def _init_game(self) -> None:
        """Start the engine on first use (so constructing the env is cheap and picklable)."""
        import vizdoom as vzd

        g = vzd.DoomGame()
        g.set_doom_game_path(self._wad_path)
        g.set_doom_map(self.map_name)
        # The engine writes its settings file; keep it out of the working tree (one per process).
        import tempfile

        g.set_doom_config_path(os.path.join(tempfile.gettempdir(), f"worldmodel_vizdoom_{os.getpid()}.ini"))
        h, w = self.render_hw
        g.set_screen_resolution(getattr(vzd.ScreenResolution, f"RES_{w}X{h}"))
        g.set_screen_format(vzd.ScreenFormat.RGB24)
        g.set_window_visible(False)
        g.set_sound_enabled(False)
        for setter in ("hud", "minimal_hud", "weapon", "crosshair", "messages", "screen_flashes", "particles"):
            getattr(g, f"set_render_{setter}")(False)
        g.set_depth_buffer_enabled(True)  # the explorers avoid walls with it
        g.set_sectors_info_enabled(True)  # random start points
        B = vzd.Button
        g.set_available_buttons(
            [B.MOVE_FORWARD_BACKWARD_DELTA, B.MOVE_LEFT_RIGHT_DELTA, B.TURN_LEFT_RIGHT_DELTA, B.LOOK_UP_DOWN_DELTA]
        )
        V = vzd.GameVariable
        g.set_available_game_variables(
            [V.CAMERA_POSITION_X, V.CAMERA_POSITION_Y, V.CAMERA_POSITION_Z, V.CAMERA_ANGLE, V.CAMERA_PITCH,
             V.CAMERA_FOV, V.VELOCITY_X, V.VELOCITY_Y, V.POSITION_X, V.POSITION_Y]
        )
        g.add_game_args(self.game_args)
        g.set_mode(vzd.Mode.PLAYER)
        g.set_episode_start_time(self.episode_start_tic)
        g.set_episode_timeout(0)
        self._configure(g)
        before = child_pids("vizdoom")
        g.init()
        engines = child_pids("vizdoom") - before
        guard = EngineGuard(engines.pop()) if len(engines) == 1 else None
        # Stop the engine with the env: on close(), on garbage collection and at interpreter exit
        # (weakref.finalize runs at exit); the guard covers a SIGKILLed Python.
        self._shutdown = weakref.finalize(self, _stop_engine, g, guard)
        self._game, self._guard = g, guard
        self._loaded_map = self.map_name

    def _configure(self, game: Any) -> None:
        """Hook for subclasses (task scenarios): adjust the game before the engine starts."""

    @contextlib.contextmanager
    def _engine(self, what: str) -> Iterator[None]:
        """Run engine calls under the guard's deadline; an overrun kills the engine and raises TimeoutError."""
        guard = self._guard
        if guard is None:  # the engine's pid was not found: run unguarded
            yield
            return
        try:
            with guard.deadline(self.engine_timeout_s):
                yield
        except Exception as e:
            if not guard.expired:
                raise
            self.close()
            raise TimeoutError(
                f"ViZDoom did not answer within {self.engine_timeout_s:g} s while {what} (map {self.map_name}); the "
                "engine was stopped and the next reset() starts a new one (raise engine_timeout_s on a slow machine)"
            ) from e

    def _vars(self) -> np.ndarray:
        return np.asarray(self._game.get_state().game_variables, dtype=np.float64)

    def _frame_intrinsics(self, fov: float) -> np.ndarray:
        from worldmodel.camera import scale_intrinsics

        k = doom_intrinsics(*self.render_hw, fov_deg=fov)
        return k if self.frame_hw == self.render_hw else scale_intrinsics(k, self.render_hw, self.frame_hw)

    def _capture(self) -> tuple[np.ndarray, np.ndarray]:
        """Current frame (H, W, 3) resized to frame_size, and its realised pose (4, 4)."""
        s = self._game.get_state()
        v = np.asarray(s.game_variables, dtype=np.float64)
        frame = s.screen_buffer
        if self.frame_hw != self.render_hw:
            import cv2

            frame = cv2.resize(frame, self.frame_hw[::-1], interpolation=cv2.INTER_AREA)
        if self.depth:
            self._last_depth = s.depth_buffer
        return np.ascontiguousarray(frame), doom_pose(v[0], v[1], v[2], v[3])

    def _tic(self, fwd: float = 0.0, side: float = 0.0, turn: float = 0.0) -> None:
        self._game.make_action([float(fwd), float(side), float(turn), 0.0], 1)

    def _random_start(self) -> bool:
        """Teleport to a random open point of the map with a random heading; False if none was found."""
        sectors = self._game.get_state().sectors
        segs = np.array([[l.x1, l.y1, l.x2, l.y2] for s in sectors for l in s.lines], dtype=np.float64)
        open_sectors = [s for s in sectors if s.ceiling_height - s.floor_height >= 64 and len(s.lines) >= 3]
        if not open_sectors:
            return False
        polys = [np.array([[l.x1, l.y1, l.x2, l.y2] for l in s.lines]) for s in open_sectors]
        lo = np.array([q.reshape(-1, 2).min(0) for q in polys])
        hi = np.array([q.reshape(-1, 2).max(0) for q in polys])
        area = np.prod(hi - lo, axis=1)
        # Big rooms get most starts (area-weighted); tiny sectors (steps, lights) rarely fit a player.
        for _ in range(500):
            j = self.np_random.choice(len(polys), p=area / area.sum())
            ls = polys[j]
            p = np.round(lo[j] + self.np_random.random(2) * (hi[j] - lo[j]))
            if not _inside(p, ls) or _distance_to_segments(p, segs) < PLAYER_CLEARANCE:
                continue
            self._game.send_game_command(f"warp {int(p[0])} {int(p[1])}")
            self._tic(turn=float(self.np_random.uniform(-180.0, 180.0)))
            v = self._vars()
            if abs(v[8] - p[0]) < 1 and abs(v[9] - p[1]) < 1:
                return True
        return False

    # -------------------------------------------------------------- gym API
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        """Start a new episode; options: `map` (switch map), `start` ('spawn' or 'random').

        Seed and options are checked before anything changes: an unknown key, a map the WAD does
        not hold or a bad start is a ValueError, and the env keeps its current map and episode.
        """
        seed = check_seed(seed)
        options = {} if options is None else options
        if not isinstance(options, Mapping):
            raise ValueError(f"options is {type(options).__name__}, expected a dict or None")
        unknown = [k for k in options if k not in ("map", "start")]
        if unknown:
            raise ValueError(f"unknown reset option(s) {unknown}; DoomCamera-v0 takes 'map' and 'start'")
        map_name = check_map(options["map"], self._wad_path) if "map" in options else self.map_name
        start = options.get("start", self.start)
        if start not in ("spawn", "random"):
            raise ValueError(f"options['start']={start!r}; expected 'spawn' (map start) or 'random' (a random point)")
        super().reset(seed=seed)
        previous_map, self.map_name = self.map_name, map_name
        if self._game is not None and not self._game.is_running():  # the engine died: start a new one
            self.close()
        if self._game is None:
            self._init_game()
        try:
            self._start_episode(start)
        except TimeoutError:
            self.map_name = previous_map  # the next reset must not walk back into what hung
            raise
        self._steps = 0
        obs = np.repeat(self._last_frame[None], self.frames_per_step, axis=0)
        info = self._info(np.repeat(self._pose[None], self.frames_per_step, 0), np.zeros(6), np.zeros(6), False)
        info["valid_frames"] = self.frames_per_step
        return obs, info

    def _start_episode(self, start: str) -> None:
        """New episode on the current map at the (jittered) spawn or a random point; captures the first frame."""
        with self._engine("starting an episode"):
            if self._loaded_map != self.map_name:
                self._game.set_doom_map(self.map_name)
                self._loaded_map = self.map_name
            self._game.set_seed(int(self.np_random.integers(2**31 - 1)))  # flickering lights etc.
            self._game.new_episode()
            self._game.send_game_command("god")  # damaging floors must not kill the camera
            if start == "random":
                self._place_randomly()
            elif self.spawn_yaw_jitter_deg > 0:
                # The map start is one fixed pose; a seeded turn makes the seed choose the first view.
                self._tic(turn=float(self.np_random.uniform(-self.spawn_yaw_jitter_deg, self.spawn_yaw_jitter_deg)))
            for _ in range(8):  # let the view height settle after spawn/warp
                self._tic()
            self._intrinsics = self._frame_intrinsics(self._vars()[5])
            self._last_frame, self._pose = self._capture()

    def _place_randomly(self) -> None:
        """A random start, retried with the env's generator; RuntimeError if the map has no room for one."""
        for _ in range(RANDOM_START_TRIES):
            if self._random_start():
                return
        raise RuntimeError(
            f"start='random' found no open point {PLAYER_CLEARANCE:g} units from every wall on {self.map_name} "
            f"({self.wad}) in {RANDOM_START_TRIES} rounds of draws; use start='spawn' or another map"
        )

    def step(self, action):
        """Execute one relative camera pose over frames_per_step tics; see the class docstring."""
        if self._game is None:
            raise RuntimeError("call reset() before step()")
        a = check_action(action, self.camera_space.shape)
        a, clipped = clip_action(a, self.camera_space)
        target = self._pose @ interpolate_action(a * REALISABLE, self.frames_per_step)  # (fps, 4, 4) world
        frames, poses, valid = [], [], 0
        with self._engine("stepping"):
            for i in range(self.frames_per_step):
                if not self._game.is_episode_finished():
                    self._track(target[i])
                if self._game.is_episode_finished():
                    # The camera walked over an exit line and the level ended: no more real frames. Pad
                    # with the last one so the observation keeps its shape; `valid_frames` says how many
                    # are real, and the episode truncates.
                    frames.append(frames[-1] if frames else self._last_frame)
                    poses.append(poses[-1] if poses else self._pose)
                    continue
                f, p = self._capture()
                frames.append(f)
                poses.append(p)
                valid += 1
            finished = self._game.is_episode_finished()
        c2w = np.stack(poses)
        from worldmodel.camera import pose_to_action, relative_pose

        realised = pose_to_action(relative_pose(self._pose, c2w[-1]))
        self._pose, self._last_frame = c2w[-1], frames[-1]
        self._steps += 1
        truncated = self._steps >= self.max_steps or finished
        info = self._info(c2w, a, realised, clipped)
        info["valid_frames"] = valid
        return np.stack(frames), 0.0, False, truncated, info

    def _track(self, target: np.ndarray) -> None:
        """One tic of the controller: turn to the target heading, thrust towards the target position."""
        v = self._vars()
        x, y, angle, vx, vy = v[0], v[1], v[3], v[6], v[7]
        fwd_t = target[:3, 2]
        target_angle = np.rad2deg(np.arctan2(fwd_t[1], fwd_t[0]))
        turn = -_wrap_deg(target_angle - angle)  # TURN delta > 0 turns right = clockwise = angle decreases
        new = np.deg2rad(angle - turn)
        # position += velocity + thrust this tic, so the thrust that lands on target is (d - v).
        need = np.array([target[0, 3] - x - vx, target[1, 3] - y - vy])
        f = np.array([np.cos(new), np.sin(new)])
        r = np.array([np.sin(new), -np.cos(new)])
        fwd = np.clip(need @ f / THRUST_PER_UNIT, -MAX_MOVE_VALUE, MAX_MOVE_VALUE)
        side = np.clip(need @ r / THRUST_PER_UNIT, -MAX_MOVE_VALUE, MAX_MOVE_VALUE)
        self._tic(fwd, side, turn)

    def _info(self, c2w: np.ndarray, a: np.ndarray, realised: np.ndarray, clipped: bool) -> dict[str, Any]:
        info = {
            "c2w": c2w,
            "intrinsics": self._intrinsics.copy(),
            "commanded_action": a,
            "realised_action": realised,
            "dropped_action": a * (1.0 - REALISABLE),
            "clipped": clipped,
            "map": self.map_name,
            "wad": self.wad,
        }
        if self.depth:
            d = self._last_depth
            if self.frame_hw != self.render_hw:
                import cv2

                d = cv2.resize(d, self.frame_hw[::-1], interpolation=cv2.INTER_NEAREST)
            info["depth"] = d
        return info

    def render(self) -> np.ndarray | None:
        """The last rendered frame (H, W, 3) uint8 in 'rgb_array' mode."""
        if self.render_mode == "rgb_array":
            return None if self._last_frame is None else self._last_frame.copy()
        return None

    def close(self) -> None:
        """Stop the engine process and its guard; the env can be reset again afterwards."""
        if self._shutdown is not None:
            self._shutdown()  # runs _stop_engine once
        self._game, self._guard, self._shutdown = None, None, None
        self._loaded_map = None
        super().close()


def _stop_engine(game: Any, guard: EngineGuard | None) -> None:
    """Close a ViZDoom game, then its guard (which would otherwise kill the engine when Python exits)."""
    with contextlib.suppress(Exception):  # an engine that already died cannot be closed twice
        game.close()
    if guard is not None:
        guard.close()


def _inside(p: np.ndarray, segs: np.ndarray) -> bool:
    """Even-odd point-in-polygon test over a sector's line segments (N, 4)."""
    x1, y1, x2, y2 = segs.T
    crosses = ((y1 > p[1]) != (y2 > p[1])) & (p[0] < (x2 - x1) * (p[1] - y1) / np.where(y2 == y1, 1, y2 - y1) + x1)
    return bool(crosses.sum() % 2)


def _distance_to_segments(p: np.ndarray, segs: np.ndarray) -> float:
    """Smallest distance from point p (2,) to segments (N, 4)."""
    a, b = segs[:, :2], segs[:, 2:]
    ab = b - a
    t = np.clip(((p - a) * ab).sum(1) / np.maximum((ab * ab).sum(1), 1e-9), 0, 1)
    return float(np.linalg.norm(a + t[:, None] * ab - p, axis=1).min())
