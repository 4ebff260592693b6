"""Engine-labelled episodes for a world's heads: an exploring policy in DoomTask-v0, frames encoded by the world's VAE.

    data = collect_split(world, TakeCover(), range(100000, 100040), "outputs/heads/take_cover/data/heldout")

Each episode runs in `worldmodel/DoomTask-v0` with engine seed s and the exploring policy seeded
with s, so a seed fixes the episode. Its frames (the reset frame, then every frame of every step)
are encoded in one causal pass of the world's VAE, giving the latent frames the dream shows: z_0
for the reset image, z_t for step t's frames. Step t is stored as the latent before it, z_{t-1},
with its normalised commanded action and what the engine reports: the reward, whether the player
is alive after it and the realised motion (normalised like the action). One `.npz` per episode
in the split's folder; an episode already there is not collected again (an interrupted
collection continues).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch

from envs.doom_task import DoomTaskEnv
from envs.tasks import Task
from worldmodel.world import World, images_to_video

MAX_EPISODE_STEPS = 200
"""Collection cap on an episode's steps (an exploring player rarely lives that long in TakeCover)."""


class ExploringPolicy:
    """Holding one direction for a while (so walls are reached), random strafes, and standing still.

    Segments: hold a direction at 0.8-1 of the bound for 10-60 steps (60% of segments; 85% of
    them towards the episode's preferred side, drawn once, so the player crosses the room and
    pushes into its walls), uniform random actions for 5-20 steps (25%), or no motion for 3-10
    steps. All randomness comes from the generator passed in.
    """

    def __init__(self, k: int) -> None:
        self.k, self.left, self.mode, self.value = k, 0, "still", np.zeros(k, np.float32)
        self.side: np.ndarray | None = None

    def __call__(self, obs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """The next normalised action (k,) float32 in [-1, 1]."""
        if self.side is None:
            self.side = rng.choice([-1.0, 1.0], self.k)
        if self.left <= 0:
            u = rng.random()
            if u < 0.6:
                self.mode, self.left = "hold", int(rng.integers(10, 61))
                sign = np.where(rng.random(self.k) < 0.85, self.side, -self.side)
                self.value = (sign * rng.uniform(0.8, 1.0, self.k)).astype(np.float32)
            elif u < 0.85:
                self.mode, self.left = "random", int(rng.integers(5, 21))
            else:
                self.mode, self.left, self.value = "still", int(rng.integers(3, 11)), np.zeros(self.k, np.float32)
        self.left -= 1
        if self.mode == "random":
            return rng.uniform(-1.0, 1.0, self.k).astype(np.float32)
        return self.value.copy()


@torch.no_grad()
def encode_video(world: World, frames: np.ndarray) -> np.ndarray:
    """uint8 (1 + 4n, H, W, 3) -> the world's normalised latents float32 (1 + n, C, h, w), one causal pass."""
    dtype = next(world.vae.parameters()).dtype
    video = images_to_video(frames, world.device, dtype)[:, 0][None]  # (1, T, 3, H, W)
    return world.vae.encode(video)[0].float().cpu().numpy()


def collect_episode(env: DoomTaskEnv, world: World, seed: int,
                    max_steps: int = MAX_EPISODE_STEPS) -> dict[str, np.ndarray]:
    """One engine episode with seed `seed` under the exploring policy: per-step arrays (see the module docstring)."""
    rng = np.random.default_rng(seed)
    policy = ExploringPolicy(env.action_space.shape[0])
    obs, _ = env.reset(seed=seed)
    frames, actions, realised, reward, alive = [obs[-1]], [], [], [], []
    amap = env.task.actions
    for _ in range(max_steps):
        a = policy(obs, rng)
        obs, r, terminated, truncated, info = env.step(a)
        frames.extend(obs)
        actions.append(a)
        realised.append(amap.from_camera(info["realised_action"]).astype(np.float32))
        reward.append(r)
        alive.append(not terminated)
        if terminated or truncated:
            break
    n = len(actions)
    latents = encode_video(world, np.stack(frames[: 1 + (n - 1) * env.frames_per_step]))  # z_0 .. z_{n-1}
    return {"latents": latents.astype(np.float16), "actions": np.stack(actions), "realised": np.stack(realised),
            "reward": np.asarray(reward, np.float32), "alive": np.asarray(alive), "seed": np.asarray(seed)}


def collect_split(world: World, task: Task, seeds: Iterable[int], folder: str | Path,
                  max_steps: int = MAX_EPISODE_STEPS, progress: bool = True) -> dict[str, np.ndarray]:
    """Collect the episodes of `seeds` missing from `folder` (one `seed_<s>.npz` each), then load them all."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    seeds = list(seeds)
    todo = [s for s in seeds if not (folder / f"seed_{s:06d}.npz").exists()]
    if todo:
        env = DoomTaskEnv(task, obs_mode="frames", frame_size=tuple(world.meta.image_hw),
                          frames_per_step=world.frames_per_step)
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(todo), desc=f"collect {folder.name}", unit="episode")
        try:
            for s in todo:
                ep = collect_episode(env, world, s, max_steps)
                tmp = folder / f".seed_{s:06d}.tmp.npz"
                np.savez(tmp, **ep)
                tmp.replace(folder / f"seed_{s:06d}.npz")  # a killed collection leaves no half episode
                if bar is not None:
                    bar.update(1)
        finally:
            env.close()
            if bar is not None:
                bar.close()
    return load_split(folder, seeds)


def load_split(folder: str | Path, seeds: Iterable[int]) -> dict[str, np.ndarray]:
    """Concatenate the episodes of `seeds` in `folder`: per-step arrays plus `episode` (T,) the seed of each step."""
    parts: dict[str, list[np.ndarray]] = {}
    for s in seeds:
        path = Path(folder) / f"seed_{s:06d}.npz"
        if not path.exists():
            raise FileNotFoundError(f"{path} is missing; collect it with agents.heads_data.collect_split")
        with np.load(path) as ep:
            n = len(ep["actions"])
            for k in ("latents", "actions", "realised", "reward", "alive"):
                parts.setdefault(k, []).append(ep[k])
            parts.setdefault("episode", []).append(np.full(n, s))
    if not parts:
        raise ValueError(f"no episodes to load from {folder}")
    return {k: np.concatenate(v) for k, v in parts.items()}
