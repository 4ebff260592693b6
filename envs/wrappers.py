"""Observation wrappers for the camera envs (World-v0, DoomCamera-v0).

A step of these envs returns `frames_per_step` video frames, (fps, H, W, 3). Most RL code wants
one image per step:

    env = SingleFrameObservation(gymnasium.make("worldmodel/World-v0", checkpoint=path))
    obs, info = env.reset(seed=0)            # (H, W, 3) uint8: the last frame of the step

    venv = SingleFrameVectorObservation(gymnasium.make_vec("worldmodel/World-v0", num_envs=8, checkpoint=path))
    obs, info = venv.reset(seed=0)           # (8, H, W, 3)

(`obs_mode="frame"` gives the same without a wrapper.) Gymnasium's `RecordVideo` keeps one frame
per step; `RecordStepVideo` keeps all of them, so the video plays at the world's frame rate:

    env = RecordStepVideo(gymnasium.make("worldmodel/World-v0", render_mode="rgb_array_list"), "videos")
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from gymnasium.wrappers import RecordVideo


def _frame_space(space: gym.Space, batched: bool) -> spaces.Box:
    """The Box of one frame, from a Box of (fps, H, W, 3) (or (N, fps, H, W, 3) when batched)."""
    if not isinstance(space, spaces.Box) or len(space.shape) != 4 + batched or space.shape[-1] != 3:
        want = "(N, frames_per_step, H, W, 3)" if batched else "(frames_per_step, H, W, 3)"
        raise ValueError(f"observation space {space} is not a Box of shape {want}")
    low, high = space.low[..., 0, :, :, :], space.high[..., 0, :, :, :]
    return spaces.Box(low, high, dtype=space.dtype)


def _check_index(index: int, fps: int) -> int:
    """A frame index valid for `fps` frames per step (negative counts from the end)."""
    if not -fps <= index < fps:
        raise ValueError(f"index={index} is out of range for {fps} frames per step")
    return index


class SingleFrameObservation(gym.ObservationWrapper):
    """Keep one frame of each step: (fps, H, W, 3) -> (H, W, 3); `index` picks it (default the last)."""

    def __init__(self, env: gym.Env, index: int = -1) -> None:
        super().__init__(env)
        self.index = _check_index(index, env.observation_space.shape[0])
        self.observation_space = _frame_space(env.observation_space, batched=False)

    def observation(self, observation: np.ndarray) -> np.ndarray:
        """(fps, H, W, 3) -> (H, W, 3)."""
        return observation[self.index]


class SingleFrameVectorObservation(gym.vector.VectorObservationWrapper):
    """The vector-env form: (N, fps, H, W, 3) -> (N, H, W, 3)."""

    def __init__(self, env: gym.vector.VectorEnv, index: int = -1) -> None:
        super().__init__(env)
        self.index = _check_index(index, env.single_observation_space.shape[0])
        self.single_observation_space = _frame_space(env.single_observation_space, batched=False)
        self.observation_space = _frame_space(env.observation_space, batched=True)

    def observations(self, observations: np.ndarray) -> np.ndarray:
        """(N, fps, H, W, 3) -> (N, H, W, 3)."""
        return observations[:, self.index]


class RecordStepVideo(RecordVideo):
    """Gymnasium's `RecordVideo`, recording every frame of each step (not only the last) at `metadata["render_fps"]`.

    The env must render in "rgb_array_list" mode (World-v0 and DoomTask-v0 return the
    frames_per_step frames of each step); `video_length` counts video frames. Writing the file
    needs moviepy (`pip install "gymnasium[other]"`), as for `RecordVideo`.
    """

    def __init__(self, env: gym.Env, video_folder: str, **kwargs) -> None:
        if env.render_mode != "rgb_array_list":
            raise ValueError(f"RecordStepVideo needs render_mode='rgb_array_list' (every frame of a step), got "
                             f"{env.render_mode!r}; make the env with render_mode='rgb_array_list'")
        super().__init__(env, video_folder, **kwargs)

    def _capture_frame(self) -> None:
        """Append every frame rendered since the last capture (a step's frames_per_step; one at reset)."""
        self.recorded_frames.extend(self.env.render())
