"""The three post-training stages: diffusion adaptation, consistency distillation, adversarial post-training."""

from __future__ import annotations

from train.stages.config import STAGES, TrainConfig


def build_stage(cfg: TrainConfig):
    """The Stage object for `cfg.stage.name`."""
    if cfg.stage.name == "diffusion":
        from train.stages.diffusion import DiffusionStage as cls
    elif cfg.stage.name == "distill":
        from train.stages.distill import DistillStage as cls
    elif cfg.stage.name == "adversarial":
        from train.stages.adversarial import AdversarialStage as cls
    else:
        raise ValueError(f"stage.name={cfg.stage.name!r}; expected one of {STAGES}")
    return cls(cfg)
