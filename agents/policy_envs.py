"""The envs a TakeCover policy trains and plays in: the dream (World-v0 with heads) and the engine, in one obs mode.

    world = load_task_world("outputs/heads/take_cover/world.safetensors", termination="sample")
    dream = dream_env(world, obs_mode="latent")              # World-v0, TakeCover, the heads end episodes
    real = engine_env(world, obs_mode="latent")              # DoomTask-v0, its frames encoded by the world's VAE

A policy sees the same kind of observation in both: `"frame"` is the step's last frame (H, W, 3)
uint8 (the dream's decoded frame, the engine's rendered one), `"latent"` the world's normalised
latent (C, h, w) float32 (the dream's own; in the engine `EncodedObservation` encodes the frames
with the world's causal VAE, one group of 4 frames per step, exactly as the heads' training data
was encoded). The dream's knob against exploitation is its termination rule (`set_termination`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces

from envs.doom_task import DoomTaskEnv
from envs.tasks import TakeCover
from envs.world import WorldEnv
from worldmodel.heads import TERMINATION_RULES
from worldmodel.world import World, images_to_video

OBS_MODES = ("latent", "frame")
"""Observation modes a policy can use in both worlds."""
DEFAULT_WORLD = "outputs/heads/take_cover/world.safetensors"
"""The TakeCover world with heads that `python -m train.heads` writes."""


def load_task_world(path: str | Path = DEFAULT_WORLD, termination: str | None = None,
                    continue_threshold: float | None = None) -> World:
    """A world file with TakeCover heads, its termination rule set (None: the file's); SystemExit names a bad file."""
    if not Path(path).exists():
        raise SystemExit(f"{path} does not exist; build the TakeCover world with `python -m train.heads`")
    world = World.load(path)
    if world.heads is None or world.heads.cfg.task != TakeCover.name:
        raise SystemExit(f"{path} has no TakeCover heads, so its dream never ends an episode; build one with "
                         "`python -m train.heads`")
    set_termination(world, termination, continue_threshold)
    return world


def set_termination(world: World, termination: str | None = None, continue_threshold: float | None = None) -> None:
    """Set how the heads end a dream episode: 'threshold' (continue < continue_threshold) or 'sample'
    (a Bernoulli draw of the continue probability); None keeps the world file's setting."""
    cfg = world.heads.cfg
    if termination is not None:
        if termination not in TERMINATION_RULES:
            raise ValueError(f"termination={termination!r}; expected one of {TERMINATION_RULES}")
        cfg.termination = termination
    if continue_threshold is not None:
        if not 0.0 <= continue_threshold <= 1.0:
            raise ValueError(f"continue_threshold={continue_threshold} must be a probability in [0, 1]")
        cfg.continue_threshold = continue_threshold


def task_for(world: World, start_pool: np.ndarray | None = None) -> TakeCover:
    """TakeCover with the heads' strafe bound and the world's frames per step (and optionally a start pool)."""
    task = TakeCover(max_strafe=world.heads.cfg.bounds[0], frames_per_step=world.frames_per_step)
    return task if start_pool is None else task.with_start_pool(start_pool)


def check_obs_mode(obs_mode: str) -> str:
    """`obs_mode` if a policy can use it in both worlds, else ValueError."""
    if obs_mode not in OBS_MODES:
        raise ValueError(f"obs_mode={obs_mode!r}; a policy that plays in the dream and the engine uses one of "
                         f"{OBS_MODES}")
    return obs_mode


def dream_env(world: World, obs_mode: str = "latent", task: TakeCover | None = None) -> WorldEnv:
    """One dream env of TakeCover (World-v0) in `obs_mode`, one torch thread."""
    return WorldEnv(world=world, task=task or task_for(world), obs_mode=check_obs_mode(obs_mode),
                    threads=torch.get_num_threads())


def engine_env(world: World, obs_mode: str = "latent", render_mode: str | None = None) -> gym.Env:
    """TakeCover in the engine (DoomTask-v0) at the world's resolution, observed in `obs_mode`."""
    task = task_for(world)
    if check_obs_mode(obs_mode) == "frame":
        return DoomTaskEnv(task, obs_mode="frame", frame_size=tuple(world.meta.image_hw),
                           frames_per_step=world.frames_per_step, render_mode=render_mode)
    env = DoomTaskEnv(task, obs_mode="frames", frame_size=tuple(world.meta.image_hw),
                      frames_per_step=world.frames_per_step, render_mode=render_mode)
    return EncodedObservation(env, world)


class EncodedObservation(gym.ObservationWrapper):
    """The engine's frames as the world's latents: the reset frame, then each step's frames, through the causal VAE.

    ## Observation space
    `Box(-inf, inf, (C, h, w), float32)`, the world's normalised latent: at reset the encoding of
    the reset frame (as the dream encodes its start image), then one latent per step from the
    step's `frames_per_step` frames, streamed with the VAE's feature cache (`StreamEncoder`), so
    step t's latent is what `CausalVAE.encode` gives for the whole episode so far.
    `last_frames` holds the step's frames (fps, H, W, 3) for videos.
    """

    def __init__(self, env: DoomTaskEnv, world: World) -> None:
        super().__init__(env)
        self.world = world
        self.encoder = world.vae.stream_encoder(1)
        self.observation_space = spaces.Box(-np.inf, np.inf, (world.cfg.latent_channels, *world.latent_hw),
                                            np.float32)
        self.last_frames: np.ndarray | None = None

    def reset(self, **kwargs: Any):
        """Reset the engine and the encoder's cache; the observation is the reset frame's latent."""
        self.encoder.reset()
        return super().reset(**kwargs)

    def observation(self, frames: np.ndarray) -> np.ndarray:
        """Frames (fps, H, W, 3) -> latent (C, h, w): the last frame at reset, all of them on a step."""
        self.last_frames = frames
        group = frames[-1:] if self.encoder.t == 0 else frames
        dtype = next(self.world.vae.parameters()).dtype
        video = images_to_video(group, self.world.device, dtype)[:, 0][None]  # (1, n, 3, H, W)
        return self.encoder.step(video)[0].float().cpu().numpy()
