"""`worldmodel/World-v0`: the learned world as a Gymnasium env.

    env = gymnasium.make("worldmodel/World-v0", checkpoint="world.safetensors")
    obs, info = env.reset(seed=0)                       # obs: uint8 (frames_per_step, H, W, 3)
    obs, reward, terminated, truncated, info = env.step(env.action_space.sample())

The single env (`WorldEnv`) and the vector env (`envs.world_vector.WorldVectorEnv`) share one
core, `WorldEpisodes`: N episodes over one `World`, stepped with one transformer evaluation and
one streaming VAE decode for all N together. The single env is that core with N = 1.
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces

from envs.checks import check_index, check_seed
from envs.modes import motion_info, observation_space, observe, resolve_action_map, resolve_obs_mode
from envs.rewards import RewardFn, TerminationFn, never_terminate, zero_reward
from envs.tasks import Task, TaskStep
from worldmodel.camera import ACTION_LAYOUT, check_action, step_poses
from worldmodel.threads import use_threads
from worldmodel.world import World

DEFAULT_RENDER_FPS = 35
"""Video frames per second when the world's card names none: the bundled Doom data's tic rate."""


@dataclass(frozen=True)
class StepTiming:
    """Wall-clock time of one step (seconds), in `info["timing"]`.

    Timings are measurements, not part of an episode: two StepTimings always compare equal, so
    infos of the same seeded episode are equal (Gymnasium's determinism check compares infos).
    """

    latency_s: float = field(compare=False)
    """Whole step: transformer evaluation + streaming decode + host copies."""
    transformer_s: float = field(compare=False)
    """The one transformer evaluation (camera maps included)."""
    decode_s: float = field(compare=False)
    """The streaming VAE decode of the new latent frame (at reset: encode + first decode)."""


def load_world(checkpoint: str | Path | None = None, world: World | None = None, device: str = "cpu") -> World:
    """The world an env runs: an already-loaded `world`, else `World.load(checkpoint)` (None = bundled)."""
    if world is not None:
        if checkpoint is not None:
            raise ValueError("pass either checkpoint=PATH or world=World, not both")
        return world
    return World.load(checkpoint, device=device)


def world_action_space(world: World) -> spaces.Box:
    """Box(6) float32 of relative camera poses, symmetric about 0: +-max(|low|, |high|) of the world's bounds.

    The world file stores the data's bounds, which are lopsided (the Doom data walks forward far
    more than back). A symmetric box keeps 0 = "no motion", so RescaleAction's 0 and a zeroed
    policy output stand still; the extra side is the mirror of motion the model has seen.
    """
    low = np.asarray(world.meta.action_low, dtype=np.float64)
    high = np.asarray(world.meta.action_high, dtype=np.float64)
    if low.shape != (6,) or high.shape != (6,) or not (low < high).all():
        raise ValueError(
            f"world file has action bounds low={low.tolist()}, high={high.tolist()}; expected 6 values each "
            f"with low < high for {ACTION_LAYOUT}"
        )
    bound = np.maximum(np.abs(low), np.abs(high)).astype(np.float32)
    return spaces.Box(low=-bound, high=bound, dtype=np.float32)


def world_observation_space(world: World) -> spaces.Box:
    """Box uint8 (frames_per_step, H, W, 3): the decoded video frames of one step."""
    return spaces.Box(0, 255, (world.frames_per_step, *world.meta.image_hw, 3), dtype=np.uint8)


def world_render_fps(world: World) -> int:
    """Video frame rate of a world: its card's `fps`, else the Doom tic rate."""
    return int(world.meta.card.get("fps", DEFAULT_RENDER_FPS))


PRECISIONS = {"float32": None, "bfloat16": torch.bfloat16}
"""`precision` of the learned world's envs -> the transformer step's autocast dtype (None: the weights' own)."""


def autocast_dtype(precision: str) -> torch.dtype | None:
    """The autocast dtype of an env's `precision`; ValueError naming the choices for anything else."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision={precision!r}; expected one of {list(PRECISIONS)}")
    return PRECISIONS[precision]


def env_threads(threads: int | None) -> int:
    """Set torch's CPU threads for an env (`worldmodel.threads.use_threads`); 1 in a forked worker.

    torch's OpenMP pool does not survive fork: a worker forked from a process that already ran a
    parallel op (AsyncVectorEnv's default context does exactly that) deadlocks in its first
    multi-threaded op. One thread never enters the pool, so a forked worker always uses one.
    """
    if os.getpid() != _IMPORT_PID:
        if threads not in (None, 1):
            warnings.warn(f"threads={threads} ignored in a forked worker (torch's thread pool deadlocks after "
                          "fork): using 1; pass vector_kwargs={'context': 'spawn'} for more", stacklevel=3)
        return use_threads(1)
    return use_threads(threads)


_IMPORT_PID = os.getpid()
"""The process that imported this module; a different pid means we run in a forked child."""


class WorldEpisodes:
    """N episodes over one world, advanced together: the shared core of the single and vector envs.

    Holds everything per episode (pose, step count, random generator, last frames) and applies the
    env contract: validation, start frames, pose integration, hooks, truncation. Each `step` is one
    transformer evaluation and one decode for all N streams.
    """

    def __init__(
        self,
        world: World,
        num_envs: int,
        max_episode_steps: int | None = None,
        reward_fn: RewardFn | None = None,
        termination_fn: TerminationFn | None = None,
        window: int | None = None,
        task: Task | None = None,
        obs_mode: str | None = None,
        action_mode: str | None = None,
        precision: str = "float32",
    ) -> None:
        if num_envs < 1:
            raise ValueError(f"num_envs={num_envs} must be >= 1")
        if task is not None and (reward_fn is not None or termination_fn is not None):
            raise ValueError("pass task=... or reward_fn/termination_fn, not both: the task defines reward and ending")
        if max_episode_steps is None and task is not None:
            max_episode_steps = task.max_steps
        if max_episode_steps is not None and max_episode_steps < 1:
            raise ValueError(f"max_episode_steps={max_episode_steps} must be >= 1 or None (never truncate)")
        if task is not None:
            task.check_frames_per_step(world.frames_per_step, "the world")
        self.world, self.num_envs, self.task = world, num_envs, task
        # The world's learned heads decide reward, ending and realised motion for the task they were trained on.
        self.heads = world.heads if task is not None and world.heads is not None and world.heads.cfg.task == task.name \
            else None
        self.rngs: list[np.random.Generator | None] = [None] * num_envs  # each episode's generator ('sample' ends)
        self.max_episode_steps = max_episode_steps
        self.reward_fn = reward_fn or zero_reward
        self.termination_fn = termination_fn or never_terminate
        self.camera_space = world_action_space(world)
        self.obs_mode = resolve_obs_mode(obs_mode, task)
        self.action_map = resolve_action_map(action_mode, task, self.camera_space, "the world's action space")
        self.action_space = self.camera_space if self.action_map is None else self.action_map.space
        self.layout = ACTION_LAYOUT if self.action_map is None else self.action_map.layout
        latent_shape = (world.cfg.latent_channels, *world.latent_hw)
        self.observation_space = observation_space(self.obs_mode, world.frames_per_step, world.meta.image_hw,
                                                   latent_shape)
        self.start_frames = world.start_frames if task is None or task.start_pool is None else task.start_pool
        pool_hw = None if task is None or task.start_pool is None else task.start_pool.shape[1:3]
        if pool_hw is not None and pool_hw != tuple(world.meta.image_hw):
            raise ValueError(f"the task's start_pool frames are {task.start_pool.shape[1:3]}, the world's images "
                             f"{tuple(world.meta.image_hw)}; collect the pool at the world's resolution")
        self.streams = world.streams(num_envs, seeds=list(range(num_envs)), window=window)
        self.streams.gen.autocast = autocast_dtype(precision)
        self.c2w = np.tile(np.eye(4), (num_envs, 1, 1))  # (N, 4, 4) float64
        self.steps = np.zeros(num_envs, dtype=np.int64)
        fps_hw = (world.frames_per_step, *world.meta.image_hw, 3)
        self.frames = np.zeros((num_envs, *fps_hw), dtype=np.uint8)  # (N, fps, H, W, 3): the last decoded step
        self.obs = np.zeros((num_envs, *self.observation_space.shape), dtype=self.observation_space.dtype)
        self.started = False

    # ---- reset -----------------------------------------------------------------------

    def parse_options(
        self, options: object, batched: bool, extra_keys: Sequence[str] = ()
    ) -> list[tuple[np.ndarray | None, int | None]]:
        """Validate reset options without touching any state; returns (image or None, start or None) per env.

        A single env (`batched=False`) takes `image` (H, W, 3) and `start` k; a vector env also
        takes (N, H, W, 3) images and N starts (exactly N). None left to draw means "draw a
        bundled start with the episode's generator".
        """
        n = self.num_envs if batched else 1
        if options is None:
            self._require_start_frames()
            return [(None, None)] * n
        if not isinstance(options, Mapping):
            raise ValueError(f"options is {type(options).__name__}, expected a dict or None")
        known = ("image", "start", *extra_keys)
        unknown = [k for k in options if k not in known]
        if unknown:
            raise ValueError(f"unknown reset option(s) {unknown}; expected keys among {list(known)}")
        image, start = options.get("image"), options.get("start")
        if image is not None and start is not None:
            raise ValueError("pass options['image'] or options['start'], not both")
        if image is not None:
            return [(img, -1) for img in self._check_images(image, batched)]
        if start is not None:
            return [(None, k) for k in self._check_starts(start, batched)]
        self._require_start_frames()
        return [(None, None)] * n

    def _require_start_frames(self) -> None:
        if self.start_frames is None or len(self.start_frames) == 0:
            raise ValueError("this world file has no bundled start frames; pass options={'image': uint8 (H, W, 3)}")

    def _check_images(self, image: object, batched: bool) -> list[np.ndarray]:
        H, W = self.world.meta.image_hw
        n = self.num_envs
        want = f"uint8 ({H}, {W}, 3)" + (f" or ({n}, {H}, {W}, 3)" if batched else "")
        if not isinstance(image, np.ndarray) or image.dtype != np.uint8:
            got = f"{image.dtype}{image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
            raise ValueError(f"options['image'] is {got}, expected a numpy array {want}")
        if image.shape == (H, W, 3):
            return [image] * (n if batched else 1)
        if batched and image.shape == (n, H, W, 3):
            return list(image)
        raise ValueError(f"options['image'] is {image.dtype}{image.shape}, expected {want}; resize it to the world's "
                         "image_hw" + (" and pass one image or exactly one per env" if batched else ""))

    def _check_starts(self, start: object, batched: bool) -> list[int]:
        self._require_start_frames()
        n_starts, n = len(self.start_frames), self.num_envs
        if not batched or not isinstance(start, (list, tuple, np.ndarray)):
            ks = [check_index(start, "options['start']")] * (n if batched else 1)
        else:
            if isinstance(start, np.ndarray) and (start.ndim != 1 or start.dtype.kind not in "iu"):
                raise ValueError(f"options['start'] is {start.dtype}{start.shape}, expected one int or ints ({n},)")
            if len(start) != n:
                raise ValueError(f"options['start'] has {len(start)} entries for {n} envs; "
                                 "pass one int or exactly one per env")
            ks = [check_index(k, f"options['start'][{i}]") for i, k in enumerate(start)]
        for k in ks:
            if not 0 <= k < n_starts:
                raise ValueError(f"options['start']={k} is out of range: the world has {n_starts} start frames "
                                 f"(0..{n_starts - 1})")
        return ks

    def reset(
        self, idx: Sequence[int], rngs: Sequence[np.random.Generator],
        plan: Sequence[tuple[np.ndarray | None, int | None]] | None = None,
    ) -> tuple[np.ndarray, list[dict[str, Any]]]:
        """Start episodes `idx` (all of them on the first call) as `plan` (from `parse_options`, one entry
        per env; None: draw every start) says; returns their frames and infos.

        Each episode draws its start frame (unless given) and then its noise seed from its own
        generator, in that order, so a seeded episode is the same in the single and vector env.
        """
        idx = list(idx)
        if not self.started and len(idx) != self.num_envs:
            raise RuntimeError("the first reset must start every env")
        plan = plan if plan is not None else [(None, None)] * self.num_envs
        images, starts, seeds = [], [], []
        for i, rng in zip(idx, rngs, strict=True):
            self.rngs[i] = rng
            image, start = plan[i]
            if image is None:
                self._require_start_frames()
                if start is None:
                    n_starts = len(self.start_frames)
                    start = int(rng.integers(n_starts)) if self.task is None else self.task.sample_start(rng, n_starts)
                image = self.start_frames[start]
            images.append(image)
            starts.append(start)
            seeds.append(int(rng.integers(2**63 - 1)))
        t0 = time.perf_counter()
        frames = self.streams.reset(np.stack(images), streams=idx, seeds=seeds)  # (n, fps, H, W, 3)
        latency = time.perf_counter() - t0
        self.started = True
        self.frames[idx] = frames
        if self.obs_mode == "latent":  # the first latent, as the generator recycles it
            self.obs[idx] = self.streams.gen.recycled[idx].float().cpu().numpy()
        else:
            self.obs[idx] = observe(self.obs_mode, frames)
        self.c2w[idx] = np.eye(4)
        self.steps[idx] = 0
        zero = np.zeros(6)
        infos = [
            {"c2w": np.eye(4), "step": 0, "start": starts[k], "timing": StepTiming(latency, 0.0, latency),
             **motion_info(np.eye(4), zero, zero), **self._task_info_at_reset(frames[k]),
             **({"blocked": False, "blocked_prob": 0.0, "continue_prob": 1.0} if self.heads is not None else {})}
            for k in range(len(idx))
        ]
        return self.obs[idx].copy(), infos

    def _task_info_at_reset(self, frames: np.ndarray) -> dict[str, Any]:
        """The task's info keys at the start of an episode (none without a task)."""
        if self.task is None:
            return {}
        zero = np.zeros(6)
        return self.task.info(TaskStep(frames, np.eye(4), zero, zero, 0, None if self.heads is None else True, 0))

    # ---- step ------------------------------------------------------------------------

    def step(self, actions: np.ndarray, active: np.ndarray | None = None) -> tuple[
        np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[dict[str, Any] | None]
    ]:
        """Advance the `active` episodes (default: all) by validated actions (N, k) of `action_space`, in one forward.

        Inactive streams are stepped too (the batch has a static shape) with a zero action; the
        caller resets them right after, which discards that step (no forward at all when
        none is active). Returns observations (N, ...) in `obs_mode`,
        rewards, terminated, truncated (N,) and one info per episode (None when inactive).
        """
        if not self.started:
            raise RuntimeError("call reset() before step()")
        active = np.ones(self.num_envs, dtype=bool) if active is None else np.asarray(active, dtype=bool)
        actions = np.where(active[:, None], actions, 0.0)
        camera = actions if self.action_map is None else self.action_map.to_camera(actions)  # (N, 6)
        realised, heads = camera, None
        if self.heads is not None and active.any():
            # From the latent the agent sees before the step: the generator then moves by the realised motion.
            heads = self.heads.predict(self.streams.gen.recycled, camera)
            realised = heads["realised"]
            ends, on = np.zeros(self.num_envs, dtype=bool), np.flatnonzero(active)
            ends[on] = self.heads.ends(heads["continue_prob"][on], [self.rngs[i] for i in on])
        frames = None
        if active.any():
            t0 = time.perf_counter()
            if self.obs_mode == "latent":
                obs = self.streams.step_latent(realised).float().cpu().numpy()  # (N, C, h, w)
            else:
                frames = self.streams.step(realised)  # (N, fps, H, W, 3) uint8
                obs = observe(self.obs_mode, frames)
            latency = time.perf_counter() - t0
            t = self.streams.last_timing
            timing = StepTiming(latency, t["transformer_s"], t["decode_s"])
        else:  # every episode is about to be reset: skip the forward
            obs, timing = self.obs.copy(), StepTiming(0.0, 0.0, 0.0)
        rewards = np.zeros(self.num_envs)
        terminated = np.zeros(self.num_envs, dtype=bool)
        truncated = np.zeros(self.num_envs, dtype=bool)
        infos: list[dict[str, Any] | None] = [None] * self.num_envs
        on = np.flatnonzero(active)
        if len(on):  # every pose in one batched product (`camera.integrate` per env)
            self.c2w[on] = self.c2w[on] @ step_poses(realised[on])
        for i in on:
            self.steps[i] += 1
            self.obs[i] = obs[i]
            if frames is not None:
                self.frames[i] = frames[i]
            extra: dict[str, Any] = {}
            if self.task is not None:
                # Without heads the realised motion is the command and death is unknown (alive None); with
                # heads, alive, realised motion and reward are the heads' predictions.
                alive = None if heads is None else not bool(ends[i])
                s = TaskStep(None if frames is None else frames[i], self.c2w[i].copy(), camera[i].copy(),
                             realised[i].copy(), self.world.frames_per_step, alive, int(self.steps[i]))
                rewards[i], terminated[i] = float(self.task.reward(s)), bool(self.task.terminated(s))
                extra = self.task.info(s)
                if heads is not None:
                    rewards[i] = float(heads["reward"][i])
                    extra.update(blocked=bool(heads["blocked_prob"][i] >= self.heads.cfg.blocked_threshold),
                                 blocked_prob=float(heads["blocked_prob"][i]),
                                 continue_prob=float(heads["continue_prob"][i]))
            else:
                seen = frames[i] if frames is not None else obs[i]
                rewards[i] = float(self.reward_fn(seen, self.c2w[i].copy(), camera[i].copy()))
                terminated[i] = bool(self.termination_fn(seen, self.c2w[i].copy(), camera[i].copy()))
            truncated[i] = self.max_episode_steps is not None and self.steps[i] >= self.max_episode_steps
            infos[i] = {
                "c2w": self.c2w[i].copy(), "step": int(self.steps[i]), "action": actions[i].copy(), "timing": timing,
                **motion_info(self.c2w[i], camera[i], realised[i]), **extra,
            }
        return obs, rewards, terminated, truncated, infos


class WorldEnv(gym.Env):
    """A camera moving through a learned world: each step, one network evaluation answers a relative pose.

    ## Action space
    `Box(-bound, bound, (6,), float32)`: `[tx, ty, tz, rx, ry, rz]`, the camera pose at the end of
    the step in the camera at the end of the previous step (OpenCV axes: x right, y down, z
    forward; translation in scene units, rotation as an axis-angle vector in radians; `ry > 0`
    turns right, `rx > 0` looks up). The box is symmetric, so 0 is "no motion" (also after
    `RescaleAction`): `bound = max(|low|, |high|)` per component of the world file's bounds
    (`world.meta.action_low/high`), which whoever trains the world sets from the actions of the
    training data. Those are often lopsided (the bundled Doom world walks forward up to 26.8
    units but back only 0.015); the mirrored side is motion the model has seen only the other
    way round. Actions of the wrong shape or dtype, with NaN or inf, or outside the box raise
    `ValueError` (nothing is clipped) and leave the env usable. `action_mode="normalized"` (the
    default with a `task`) takes `Box(-1, 1, (k,))` over the task's components instead (no task:
    tx, tz, ry), scaled by the task's bounds; 0 is no motion (`envs.modes`).

    ## Observation space
    `obs_mode="frames"` (default without a task): `Box(0, 255, (frames_per_step, H, W, 3), uint8)`,
    the decoded video frames of the step; at reset every slot holds the start image as the VAE
    reconstructs it. `"frame"` (default with a task): `(H, W, 3)` uint8, the step's last frame.
    `"latent"`: `Box(-inf, inf, (C, h, w), float32)`, the step's latent, never decoded (cheaper;
    no rendering).

    ## Task
    `task=envs.tasks.Task` sets reward, termination, truncation (`task.max_steps`), the start
    frames (`task.start_pool`, else the world's) and the normalised action components; without
    heads in the world file the realised motion is the command and death is unknown (None).

    ## Heads
    When the world file carries heads (`worldmodel.heads`) trained for the task (`heads.cfg.task ==
    task.name`; for any other task, or none, they are unused), they read the latent the agent sees
    before each step and its action, and decide: the reward (the reward head's value), the end
    (`alive` False, so TakeCover terminates, when the continue probability is below
    `heads.cfg.continue_threshold`, 0.5; with `termination='sample'` an end drawn with the episode's
    generator) and the realised motion (the command, or where the blocked head says a wall stops it
    the motion head's; the generator is stepped with it and the pose integrates it).

    ## Reset
    `reset(seed=..., options=...)`: `options={"image": uint8 (H, W, 3)}` starts from your image,
    `options={"start": k}` from the world's bundled start frame k; otherwise a bundled start
    frame is drawn with `self.np_random`. The seed fixes the start choice and the noise of every
    step (a per-episode torch generator seeded from `self.np_random`), so the same seed and
    actions give the same frames. A seed that is not None or an int >= 0, an unknown option key,
    both `image` and `start`, a `start` that is not an int (no float, str, bool or list) or out
    of range, or an image that is not uint8 (H, W, 3) raise `ValueError` before anything changes.

    ## Threads and precision
    `threads` sets torch's CPU threads (None: `worldmodel.threads.use_threads`, one per idle core,
    at most torch's default; always 1 in a forked worker, where more would deadlock).
    `precision="bfloat16"` runs the transformer's linear layers under bfloat16 autocast (weights,
    KV cache and attention stay float32): faster for large batches on a CPU with AVX512-BF16, and
    close to float32 but not equal (BENCHMARKS.md); the default `"float32"` computes in float32.

    ## Rewards and episode end
    `reward_fn(obs, c2w, action) -> float` (default: 0) and `termination_fn(obs, c2w, action)
    -> bool` (default: never); see `envs.rewards`. Truncates after `max_episode_steps` steps
    (default: never; `gymnasium.make(..., max_episode_steps=n)` adds a TimeLimit instead).

    ## Info
    `c2w` (4, 4) float64 camera-to-world pose integrated from the actions (identity at reset), also
    as `pose`; `commanded_action`, `realised_action` (6,) camera actions (the schema of the real
    task env); a task's own keys; with heads also `blocked` (bool, as the engine task env reports it),
    `blocked_prob` and `continue_prob` (the heads' probabilities); `step` int; `action` float64 the
    action received (steps only); `start` (reset) the bundled start index or -1; `timing` a
    `StepTiming` (`latency_s` wall time of the step, split into `transformer_s` and `decode_s`).
    """

    metadata = {"render_modes": ["rgb_array", "rgb_array_list", "human"], "render_fps": DEFAULT_RENDER_FPS}

    def __init__(
        self,
        checkpoint: str | Path | None = None,
        world: World | None = None,
        max_episode_steps: int | None = None,
        reward_fn: RewardFn | None = None,
        termination_fn: TerminationFn | None = None,
        render_mode: str | None = None,
        device: str = "cpu",
        window: int | None = None,
        threads: int | None = None,
        task: Task | None = None,
        obs_mode: str | None = None,
        action_mode: str | None = None,
        precision: str = "float32",
    ) -> None:
        if render_mode not in (None, *self.metadata["render_modes"]):
            modes = self.metadata["render_modes"]
            raise ValueError(f"render_mode={render_mode!r}; World-v0 supports None or one of {modes}")
        if render_mode is not None and obs_mode == "latent":
            raise ValueError(f"render_mode={render_mode!r} needs decoded frames; obs_mode='latent' never decodes")
        self.threads = env_threads(threads)
        self.world = load_world(checkpoint, world, device)
        self.core = WorldEpisodes(self.world, 1, max_episode_steps, reward_fn, termination_fn, window,
                                  task, obs_mode, action_mode, precision)
        self.task = task
        self.action_space = self.core.action_space
        self.observation_space = self.core.observation_space
        self.metadata = {**self.metadata, "render_fps": world_render_fps(self.world)}
        self.render_mode = render_mode
        self._window = None
        self._clock = None
        self._unrendered: list[np.ndarray] = []  # 'rgb_array_list': frames since the last render()

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        """Start an episode from `options["image"]`, bundled start `options["start"]`, or a seeded draw.

        Every argument is checked before anything changes: a bad seed or option is a ValueError
        and leaves the current episode (and the generator) as it was.
        """
        seed = check_seed(seed)
        plan = self.core.parse_options(options, batched=False)
        super().reset(seed=seed)
        obs, infos = self.core.reset([0], [self.np_random], plan)
        self._unrendered = [self.core.frames[0, -1].copy()] if self.render_mode == "rgb_array_list" else []
        if self.render_mode == "human":
            self._show(self.core.frames[0][:1])
        return obs[0].copy(), infos[0]

    def step(self, action):
        """Move the camera by one relative pose; one transformer evaluation and one decode."""
        space = self.action_space
        a = check_action(action, space.shape, self.core.layout, (space.low, space.high))  # raises before any change
        obs, rewards, terminated, truncated, infos = self.core.step(a[None])
        if self.render_mode == "rgb_array_list":
            self._unrendered.extend(self.core.frames[0].copy())
        if self.render_mode == "human":
            self._show(self.core.frames[0])
        return obs[0].copy(), float(rewards[0]), bool(terminated[0]), bool(truncated[0]), infos[0]

    def render(self) -> np.ndarray | list[np.ndarray] | None:
        """'rgb_array': the last frame (H, W, 3) uint8; 'rgb_array_list': every frame since the last call (a
        step's frames_per_step, `envs.wrappers.RecordStepVideo` records them all); 'human' draws in step/reset."""
        if self.render_mode == "rgb_array":
            return self.core.frames[0, -1].copy()
        if self.render_mode == "rgb_array_list":
            frames, self._unrendered = self._unrendered, []
            return frames
        return None

    def _show(self, frames: np.ndarray) -> None:
        """Play frames (n, H, W, 3) in a pygame window at the world's frame rate."""
        import pygame  # lazy: only 'human' mode needs a display

        H, W = self.world.meta.image_hw
        scale = max(1, 512 // W)
        if self._window is None:
            pygame.init()
            pygame.display.init()
            self._window = pygame.display.set_mode((W * scale, H * scale))
            pygame.display.set_caption("worldmodel/World-v0")
            self._clock = pygame.time.Clock()
        for f in frames:
            pygame.event.pump()
            surf = pygame.surfarray.make_surface(np.ascontiguousarray(f.transpose(1, 0, 2)))
            self._window.blit(pygame.transform.scale(surf, self._window.get_size()), (0, 0))
            pygame.display.flip()
            self._clock.tick(self.metadata["render_fps"])

    def close(self) -> None:
        """Close the human-mode window, if any."""
        if self._window is not None:
            import pygame

            pygame.display.quit()
            self._window = None
        super().close()
