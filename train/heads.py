"""Train a world's heads (reward, continue, realised motion / collision) on engine-labelled TakeCover episodes.

    python -m train.heads                # -> outputs/heads/take_cover/world.safetensors (about 17 minutes, 1 thread)
    python -m train.heads resume=true          # continue an interrupted run (collection continues too)

1. Data (`agents.heads_data`): `train_episodes` engine episodes of `worldmodel/DoomTask-v0` (seeds
   train_seed..) and `heldout_episodes` held-out ones (seeds heldout_seed.., never trained on),
   played by an exploring policy, frames encoded by the world's VAE. Episodes are cached under
   `data_dir` (one file each), so a rerun or an interrupted collection only collects what is missing.
2. Training: the heads (`worldmodel.heads.WorldHeads`, about 60k parameters) in the project's training
   loop (train/stages/loop.py: resumable states in `run_dir`, metrics, a progress bar). The
   continue and blocked heads use a class-balanced cross-entropy (each class weighs half), so the
   rare deaths and wall hits count as much as the common steps; the reward head's squared error
   is weighted the same way as the continue head.
3. Export: the world file (`world`, default the bundled one) with the heads and TakeCover start
   frames from the engine, written to `out`; the held-out scores (`agents.heads_eval`) go into its
   card and `<run_dir>/heldout.json`.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from agents.heads_data import MAX_EPISODE_STEPS, collect_split
from agents.heads_eval import heads_metrics
from envs.doom_task import collect_start_pool
from envs.tasks import TakeCover, blocked_labels
from train.common import command_line_exits, help_node, restore_training_state, seed_everything
from train.stages.config import LoopConf, require
from train.stages.loop import TrainingLoop
from worldmodel.heads import HeadsConfig, WorldHeads
from worldmodel.world import World


@dataclass
class TrainHeadsConfig(LoopConf):
    """Options of `python -m train.heads` (hydra: `key=value` on the command line); the loop's are LoopConf's."""

    world: str = ""
    """World file whose VAE encodes the episodes and into which the heads are written ('' = the bundled world)."""
    max_strafe: float = 9.0
    """TakeCover's strafe bound (map units per step): the action's normalisation."""
    data_dir: str = "outputs/heads/take_cover/data"
    """Episode cache: <data_dir>/train and <data_dir>/heldout, one .npz per engine seed."""
    train_seed: int = 0
    """Engine seed of the first training episode."""
    train_episodes: int = 120
    """Training episodes (engine seeds train_seed ..)."""
    heldout_seed: int = 100000
    """Engine seed of the first held-out episode (never trained on)."""
    heldout_episodes: int = 40
    """Held-out episodes measured at every checkpoint and at the end (0: none)."""
    max_episode_steps: int = MAX_EPISODE_STEPS
    """Cap on the steps of one collected episode."""
    width: int = 32
    """Heads: channels of the two convolutions."""
    hidden: int = 64
    """Heads: width of the hidden layers."""
    termination: str = "threshold"
    """How the dream ends an episode from the continue probability: 'threshold' or 'sample' (worldmodel.heads)."""
    continue_threshold: float = 0.5
    """Continue probability below which a 'threshold' episode ends."""
    steps: int = 2000
    """Optimizer steps (chosen on training seeds 90-119 held out of a 90-episode run: the continue head's
    precision and the reward's accuracy still rose up to 2000, its AUC fell slowly after 500)."""
    batch_size: int = 256
    """Steps (latent, action, labels) per optimizer step."""
    lr: float = 2e-3
    """AdamW learning rate (cosine decay to 10%)."""
    weight_decay: float = 1e-2
    """AdamW weight decay."""
    reward_weight: float = 1.0
    """Weight of the reward head's (class-balanced) squared error, in units of (reward / frames per step)^2."""
    continue_weight: float = 1.0
    """Weight of the continue head's class-balanced cross-entropy."""
    blocked_weight: float = 1.0
    """Weight of the blocked head's class-balanced cross-entropy (steps that command motion only)."""
    motion_weight: float = 1.0
    """Weight of the motion head's squared error (normalised units)."""
    start_frames: int = 8
    """TakeCover start frames from the engine stored in the exported world (its dream starts; 0: keep the world's)."""
    run_dir: str = "outputs/heads/take_cover/run"
    """Training states, metrics.jsonl, TensorBoard files and heldout.json."""
    out: str = "outputs/heads/take_cover/world.safetensors"
    """Where the world file with heads is written."""

    FREE: ClassVar[tuple[str, ...]] = (*LoopConf.FREE, "steps", "heldout_seed", "heldout_episodes", "data_dir",
                                       "start_frames", "termination", "continue_threshold", "world")

    def __post_init__(self) -> None:
        super().__post_init__()
        for key in ("steps", "batch_size", "train_episodes", "max_episode_steps", "width", "hidden"):
            require(getattr(self, key) >= 1, key, getattr(self, key), "must be >= 1")
        require(self.heldout_episodes >= 0, "heldout_episodes", self.heldout_episodes, "must be >= 0")
        require(self.start_frames >= 0, "start_frames", self.start_frames, "must be >= 0")
        require(self.max_strafe > 0, "max_strafe", self.max_strafe, "must be > 0 (map units per step)")
        train, held = self.train_seeds, self.heldout_seeds
        require(not set(train) & set(held), "heldout_seed", self.heldout_seed,
                f"makes held-out seeds {held.start}..{held.stop - 1} overlap the training seeds "
                f"{train.start}..{train.stop - 1}")

    @property
    def train_seeds(self) -> range:
        """Engine seeds of the training episodes."""
        return range(self.train_seed, self.train_seed + self.train_episodes)

    @property
    def heldout_seeds(self) -> range:
        """Engine seeds of the held-out episodes."""
        return range(self.heldout_seed, self.heldout_seed + self.heldout_episodes)


def balanced_weights(labels: np.ndarray) -> np.ndarray:
    """Per-sample weights (T,) giving each class of boolean `labels` half the total weight (mean 1)."""
    labels = np.asarray(labels, bool)
    n, pos = len(labels), int(labels.sum())
    if pos in (0, n):
        return np.ones(n)
    return np.where(labels, n / (2 * pos), n / (2 * (n - pos)))


def heads_loss(out: dict[str, Tensor], batch: dict[str, Tensor], cfg: TrainHeadsConfig,
               reward_scale: float) -> dict[str, Tensor]:
    """The four heads' losses on a batch and their weighted sum 'loss'."""
    end_w, blk_w = batch["continue_w"], batch["blocked_w"]
    bce = lambda logit, y: F.binary_cross_entropy_with_logits(logit, y, reduction="none")  # noqa: E731
    losses = {
        "reward": (end_w * ((out["reward"] - batch["reward"]) / reward_scale) ** 2).mean(),
        "continue": (end_w * bce(out["continue_logit"], batch["alive"])).mean(),
        "blocked": (blk_w * bce(out["blocked_logit"], batch["blocked"])).mean(),
        "motion": ((out["motion"] - batch["realised"]) ** 2).mean(),
    }
    losses["loss"] = (cfg.reward_weight * losses["reward"] + cfg.continue_weight * losses["continue"]
                      + cfg.blocked_weight * losses["blocked"] + cfg.motion_weight * losses["motion"])
    return losses


class HeadsPhase(TrainingLoop):
    """The heads' training run in the project's training loop."""

    name = "heads"

    def __init__(self, cfg: TrainHeadsConfig, world: World | None = None) -> None:
        super().__init__(cfg, cfg.run_dir)
        seed_everything(cfg.seed)
        self.world = world if world is not None else World.load(cfg.world or None)
        self.task = TakeCover(max_strafe=cfg.max_strafe, frames_per_step=self.world.frames_per_step)
        root = Path(cfg.data_dir)
        train = collect_split(self.world, self.task, cfg.train_seeds, root / "train", cfg.max_episode_steps,
                              cfg.progress_bar)
        self.heldout = None
        if cfg.heldout_episodes:
            self.heldout = collect_split(self.world, self.task, cfg.heldout_seeds, root / "heldout",
                                         cfg.max_episode_steps, cfg.progress_bar)
        self.data = self.tensors(train)
        self.reward_scale = float(self.world.frames_per_step)
        hcfg = HeadsConfig(latent_channels=self.world.cfg.latent_channels, latent_hw=list(self.world.latent_hw),
                           task=self.task.name, components=list(self.task.components),
                           bounds=[float(b) for b in self.task.bounds], width=cfg.width, hidden=cfg.hidden,
                           termination=cfg.termination, continue_threshold=cfg.continue_threshold,
                           reward_range=[float(train["reward"].min()), float(train["reward"].max())])
        self.heads = WorldHeads(hcfg)
        self.opt = torch.optim.AdamW(self.heads.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.data_gen = torch.Generator().manual_seed(cfg.seed)
        self.models, self.optimizers = {"heads": self.heads}, {"opt": self.opt}

    @staticmethod
    def tensors(data: dict[str, np.ndarray]) -> dict[str, Tensor]:
        """Training tensors of a split: inputs, labels and the class-balanced weights."""
        counted, blocked = blocked_labels(data["actions"], data["realised"])
        blk_w = np.zeros(len(counted))
        blk_w[counted] = balanced_weights(blocked[counted])
        f = lambda x: torch.as_tensor(np.asarray(x), dtype=torch.float32)  # noqa: E731
        return {"latents": f(data["latents"]), "actions": f(data["actions"]), "reward": f(data["reward"]),
                "alive": f(data["alive"]), "realised": f(data["realised"]), "blocked": f(blocked),
                "continue_w": f(balanced_weights(~data["alive"])), "blocked_w": f(blk_w)}

    @property
    def total_steps(self) -> int:
        return self.cfg.steps

    def next_batch(self) -> dict[str, Tensor]:
        idx = torch.randint(len(self.data["actions"]), (self.cfg.batch_size,), generator=self.data_gen)
        return {k: v[idx] for k, v in self.data.items()}

    def batch_size(self, batch: dict[str, Tensor]) -> int:
        return len(batch["actions"])

    def train_step(self, batch: dict[str, Tensor], step: int) -> dict[str, float]:
        cfg = self.cfg
        p = min(step / max(1, cfg.steps), 1.0)
        for g in self.opt.param_groups:
            g["lr"] = cfg.lr * (0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi * p)))
        self.heads.train()
        losses = heads_loss(self.heads(batch["latents"], batch["actions"]), batch, cfg, self.reward_scale)
        self.guard(losses)
        self.opt.zero_grad(set_to_none=True)
        losses["loss"].backward()
        self.opt.step()
        return {k: v.item() for k, v in losses.items()} | {"lr": self.opt.param_groups[0]["lr"]}

    def on_checkpoint(self, step: int) -> dict[str, float]:
        """Held-out scores (logged; the exported heads are the last step's, never chosen by them)."""
        if self.heldout is None:
            return {}
        m = heads_metrics(self.heads, self.heldout)
        return {f"heldout/{k}": v for k, v in m.items() if isinstance(v, float)}

    def state_parts(self) -> tuple[dict, dict, dict[str, torch.Generator], dict[str, Any]]:
        return self.models, self.optimizers, {"data": self.data_gen}, {}

    def restore(self, tensors: dict[str, Tensor], meta: dict[str, Any]) -> None:
        restore_training_state(tensors, meta, self.state_path, self.models, self.optimizers, {"data": self.data_gen})

    def export(self, summary: dict[str, Any]) -> None:
        """The world file with heads (and TakeCover start frames) at `out`, and the held-out scores."""
        cfg, w = self.cfg, self.world
        heldout = heads_metrics(self.heads, self.heldout) if self.heldout is not None else {}
        summary.update(train_steps_data=int(len(self.data["actions"])),
                       train_deaths=int((self.data["alive"] == 0).sum()),
                       train_blocked=int(self.data["blocked"].sum()), heldout=heldout, out=cfg.out)
        starts = w.start_frames
        if cfg.start_frames:
            starts = collect_start_pool(self.task, cfg.start_frames, seed=cfg.train_seed,
                                        frame_size=tuple(w.meta.image_hw))
        card = {**w.meta.card, "heads": {
            "task": self.task.name, "source": cfg.world or "bundled world", "command": "python -m train.heads",
            "train_seeds": [cfg.train_seeds.start, cfg.train_seeds.stop - 1],
            "heldout_seeds": [cfg.heldout_seeds.start, cfg.heldout_seeds.stop - 1], "heldout": heldout,
            "start_frames": "take_cover" if cfg.start_frames else "the world's"}}
        out = World(w.dit, w.vae, dataclasses.replace(w.meta, card=card), w.camera_stats, starts,
                    light_decoder=w.light_decoder, heads=self.heads.eval())
        out.save(cfg.out)
        (self.run_dir / "heldout.json").write_text(json.dumps(heldout, indent=1))


def train_heads(cfg: TrainHeadsConfig) -> dict[str, Any]:
    """Collect what is missing, train, export; returns the run's summary."""
    summary = HeadsPhase(cfg).run()
    print(json.dumps(summary, indent=1, default=str))
    return summary


def main() -> None:
    """Hydra entry point (config: train/conf/heads.yaml)."""
    import hydra
    from hydra.core.config_store import ConfigStore
    from omegaconf import OmegaConf

    ConfigStore.instance().store(name="heads_schema", node=TrainHeadsConfig)
    ConfigStore.instance().store(group="hydra/help", name="heads_help", node=help_node(
        "python -m train.heads", __doc__.split("\n\n")[0], [("", TrainHeadsConfig)],
        "Examples: python -m train.heads | python -m train.heads steps=500 train_episodes=40 | resume=true",
        groups=False))

    @hydra.main(config_path="conf", config_name="heads", version_base="1.3")
    def _run(conf) -> None:
        with command_line_exits():
            train_heads(OmegaConf.to_object(conf))

    _run()


if __name__ == "__main__":
    main()
