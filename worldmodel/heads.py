"""Learned heads of a world: reward, continue and realised motion / collision from one latent frame and the action.

A world file may carry heads trained on engine-labelled episodes of one task (`train/heads.py`).
They read what the agent sees before a step, the latent frame z_{t-1} (C, h, w) the dream shows
(the VAE's normalised latent; the reset image's latent on the first step), and the step's action,
and predict what that step does:

- `reward`: the task's reward of the step (TakeCover: tics survived, 4 on a step the player lives);
- `continue`: the probability that the episode goes on after the step (TakeCover: the player is alive);
- `motion`: the realised motion of the controlled components, normalised like the action;
- `blocked`: the probability that the commanded motion does not happen (a wall stops the player).

    heads = WorldHeads(HeadsConfig(latent_channels=16, latent_hw=[12, 16]))
    out = heads(latent, action)        # (B, C, h, w), (B, k) in [-1, 1] -> dict of (B,) / (B, k) tensors
    pred = heads.predict(latent, camera_actions)   # numpy: reward, continue_prob, blocked_prob, realised (B, 6)

The action enters as the camera action's controlled components (`components`) divided by their
`bounds`, as `envs.tasks.ActionMap` normalises a task's action, so the heads need no task object.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from worldmodel.camera import ACTION_NAMES
from worldmodel.checkpoint import CheckpointError, check_state_shapes, config_from_meta, subset

TERMINATION_RULES = ("threshold", "sample")
"""How a continue probability ends an episode: below `continue_threshold`, or a Bernoulli draw."""


@dataclass
class HeadsConfig:
    """Shape and meaning of a world's heads; stored in the world file's metadata under `heads`."""

    latent_channels: int = 16
    """Channels C of the latent frame the heads read (the world's VAE latent)."""
    latent_hw: list[int] = field(default_factory=lambda: [12, 16])
    """Latent height and width (h, w)."""
    task: str = "take_cover"
    """Name of the task whose reward and ending the heads learned (`envs.tasks.Task.name`)."""
    components: list[str] = field(default_factory=lambda: ["tx"])
    """Camera components of the action the heads read and whose realised motion they predict."""
    bounds: list[float] = field(default_factory=lambda: [9.0])
    """Largest |motion| per step of each component: the action's normalisation (the task's bounds)."""
    width: int = 32
    """Channels of the two stride-2 convolutions."""
    hidden: int = 64
    """Width of the hidden layer that mixes the latent's features with the action."""
    termination: str = "threshold"
    """'threshold': the episode ends when the continue probability < continue_threshold; 'sample': it ends
    with probability 1 - continue (drawn with the episode's generator)."""
    continue_threshold: float = 0.5
    """Continue probability below which a 'threshold' episode ends."""
    blocked_threshold: float = 0.5
    """Blocked probability at or above which the realised motion is the motion head's instead of the command."""
    reward_range: list[float] | None = None
    """[low, high] the predicted reward is clipped to (the training data's range); None: not clipped."""

    def __post_init__(self) -> None:
        if self.latent_channels < 1 or len(self.latent_hw) != 2 or min(self.latent_hw) < 1:
            raise ValueError(f"heads read a latent (C, h, w) = ({self.latent_channels}, {self.latent_hw}); "
                             "expected C >= 1 and two sizes >= 1")
        unknown = [c for c in self.components if c not in ACTION_NAMES]
        if not self.components or unknown or len(set(self.components)) != len(self.components):
            raise ValueError(f"heads components {self.components} must be distinct names among {ACTION_NAMES}")
        if len(self.bounds) != len(self.components) or not all(np.isfinite(b) and b > 0 for b in self.bounds):
            raise ValueError(f"heads bounds {self.bounds} must be {len(self.components)} finite values > 0, one per "
                             f"component {self.components}")
        if self.width < 1 or self.hidden < 1:
            raise ValueError(f"heads width={self.width} and hidden={self.hidden} must be >= 1")
        if self.termination not in TERMINATION_RULES:
            raise ValueError(f"heads termination={self.termination!r}; expected one of {TERMINATION_RULES}")
        if self.reward_range is not None and (len(self.reward_range) != 2 or not all(np.isfinite(self.reward_range))
                                              or self.reward_range[0] > self.reward_range[1]):
            raise ValueError(f"heads reward_range={self.reward_range} must be [low, high], finite, low <= high")
        for key in ("continue_threshold", "blocked_threshold"):
            if not 0.0 <= getattr(self, key) <= 1.0:
                raise ValueError(f"heads {key}={getattr(self, key)} must be a probability in [0, 1]")

    @property
    def index(self) -> np.ndarray:
        """Positions of `components` in the camera action (6,)."""
        return np.array([ACTION_NAMES.index(c) for c in self.components])


class WorldHeads(nn.Module):
    """Reward, continue, realised-motion and blocked heads on one latent frame plus the normalised action."""

    def __init__(self, cfg: HeadsConfig) -> None:
        super().__init__()
        self.cfg = cfg
        C, (h, w), k = cfg.latent_channels, cfg.latent_hw, len(cfg.components)
        self.features = nn.Sequential(
            nn.Conv2d(C, cfg.width, 3, stride=2, padding=1), nn.SiLU(),
            nn.Conv2d(cfg.width, cfg.width, 3, stride=2, padding=1), nn.SiLU(),
            nn.Flatten(),
        )
        n = cfg.width * _halved(h, 2) * _halved(w, 2)
        self.mix = nn.Sequential(nn.Linear(n + k, cfg.hidden), nn.SiLU(), nn.Linear(cfg.hidden, cfg.hidden), nn.SiLU())
        self.out = nn.Linear(cfg.hidden, 3 + k)  # reward, continue logit, blocked logit, motion (k)

    def forward(self, latent: Tensor, action: Tensor) -> dict[str, Tensor]:
        """latent (B, C, h, w), normalised action (B, k) -> reward, continue_logit, blocked_logit (B,), motion (B, k)"""
        self.check_inputs(latent, action)
        f = self.features(latent)  # (B, width * h/4 * w/4)
        y = self.out(self.mix(torch.cat([f, action.to(f.dtype)], dim=1)))  # (B, 3 + k)
        return {"reward": y[:, 0], "continue_logit": y[:, 1], "blocked_logit": y[:, 2], "motion": y[:, 3:]}

    def check_inputs(self, latent: Tensor, action: Tensor) -> None:
        """Raise ValueError naming the problem unless latent is (B, C, h, w) and action (B, k), finite."""
        cfg = self.cfg
        C, (h, w), k = cfg.latent_channels, cfg.latent_hw, len(cfg.components)
        if latent.ndim != 4 or tuple(latent.shape[1:]) != (C, h, w):
            raise ValueError(f"heads got a latent of shape {tuple(latent.shape)}, expected (B, {C}, {h}, {w}): "
                             "the world's latent frame the heads were trained on")
        if action.shape != (latent.shape[0], k):
            raise ValueError(f"heads got an action of shape {tuple(action.shape)}, expected ({latent.shape[0]}, {k}) "
                             f"= {cfg.components} divided by {cfg.bounds}")
        if not (torch.isfinite(latent).all() and torch.isfinite(action).all()):
            raise ValueError("heads got NaN or inf in the latent or the action")

    def normalise(self, camera: np.ndarray) -> np.ndarray:
        """Camera actions (B, 6) -> the heads' normalised action (B, k)."""
        camera = np.asarray(camera, dtype=np.float64)
        if camera.ndim != 2 or camera.shape[1] != len(ACTION_NAMES):
            raise ValueError(f"camera actions have shape {camera.shape}, expected (B, 6) = [tx, ty, tz, rx, ry, rz]")
        return camera[:, self.cfg.index] / np.asarray(self.cfg.bounds)

    @torch.no_grad()
    def predict(self, latent: Tensor, camera: np.ndarray) -> dict[str, np.ndarray]:
        """What each of B steps does, from the latent before it (B, C, h, w) and its camera action (B, 6):
        `reward`, `continue_prob`, `blocked_prob` (B,) and `realised` (B, 6), the camera motion that happens
        (the command, with the motion head's components where blocked_prob >= blocked_threshold); the reward is
        clipped to `reward_range`."""
        p = next(self.parameters())
        a = torch.as_tensor(self.normalise(camera), dtype=p.dtype, device=p.device)
        out = self(latent.to(p.device, p.dtype), a)
        blocked = torch.sigmoid(out["blocked_logit"]).float().cpu().numpy().astype(np.float64)
        realised = np.array(camera, dtype=np.float64, copy=True)
        motion = out["motion"].float().cpu().numpy().astype(np.float64) * np.asarray(self.cfg.bounds)  # (B, k)
        hit = blocked >= self.cfg.blocked_threshold
        realised[np.ix_(hit, self.cfg.index)] = motion[hit]
        reward = out["reward"].float().cpu().numpy().astype(np.float64)
        if self.cfg.reward_range is not None:
            reward = np.clip(reward, *self.cfg.reward_range)
        return {"reward": reward,
                "continue_prob": torch.sigmoid(out["continue_logit"]).float().cpu().numpy().astype(np.float64),
                "blocked_prob": blocked, "realised": realised}

    def ends(self, continue_prob: np.ndarray, rngs: list[np.random.Generator] | None = None) -> np.ndarray:
        """Whether each episode ends (B,) bool: continue_prob < threshold, or (termination='sample') a draw
        from each episode's generator in `rngs`."""
        if self.cfg.termination == "threshold":
            return np.asarray(continue_prob) < self.cfg.continue_threshold
        if rngs is None or len(rngs) != len(continue_prob):
            raise ValueError(f"termination='sample' needs one generator per episode ({len(continue_prob)})")
        return np.array([rng.random() >= p for rng, p in zip(rngs, continue_prob, strict=True)], dtype=bool)


def _halved(n: int, times: int) -> int:
    """Size after `times` stride-2, padding-1, 3x3 convolutions: ceil(n / 2) each time."""
    for _ in range(times):
        n = (n + 1) // 2
    return n


def heads_builder(meta: dict, index: dict[str, tuple[int, ...]], path: str | Path) -> Callable[[], WorldHeads] | None:
    """How `World.load` builds a world file's heads (for `load_modules`), or None when the file has none.

    Raises CheckpointError naming the file when the heads are broken: invalid settings, or
    `heads.*` tensors missing or of the wrong shape for those settings.
    """
    if meta.get("heads") is None:
        return None
    cfg = config_from_meta(meta, "heads", HeadsConfig, path)
    with torch.device("meta"):
        skeleton = WorldHeads(cfg)
    found = subset(index, "heads")
    if not found:
        raise CheckpointError(f"world file {path} declares heads in its metadata but holds no heads.* tensors; "
                              "rebuild it (python -m train.heads) or delete its 'heads' metadata")
    check_state_shapes(skeleton.state_dict(), found, f"{path} (its heads)")
    return lambda: WorldHeads(cfg)
