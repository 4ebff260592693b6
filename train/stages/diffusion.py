"""Stage 1, diffusion adaptation: flow matching with teacher forcing on the block-causal model.

Per clip one t ~ U(0, 1), shifted (s = 24); x_t = (1 - t) x0 + t eps; the model predicts
v = eps - x0 with MSE. Model frame i sees the ground-truth x_i as recycled input and the
noised x_{i+1}, so input and target are shifted by one frame (next-frame prediction).
AdamW (paper: lr 1e-5, weight decay 0.01).
"""

from __future__ import annotations

from typing import Any

import torch

from train.losses import flow_matching_loss
from train.rollout import teacher_forcing_inputs
from train.stages.loop import Stage
from worldmodel.dit import WorldDiT
from worldmodel.flow import add_noise, sample_train_time, velocity_target


def flow_matching_step(model: WorldDiT, latents: torch.Tensor, camera: torch.Tensor, eps: torch.Tensor,
                       t: torch.Tensor, recycle: bool = True) -> torch.Tensor:
    """Teacher-forced flow-matching loss of clips latents (B, 1+F, C, h, w), camera (B, F, Cc, h, w)."""
    recycled, x0 = teacher_forcing_inputs(latents, recycle)
    v = model(add_noise(x0, eps, t), recycled, camera, t)  # (B, F, C, h, w)
    return flow_matching_loss(v, velocity_target(x0, eps))


class DiffusionStage(Stage):
    """Diffusion adaptation."""

    name = "diffusion"

    def build(self) -> None:
        self.model = self.new_model(self.cfg.stage.init)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=self.cfg.stage.lr,
                                     weight_decay=self.cfg.stage.weight_decay)
        self.models, self.optimizers = {"model": self.model}, {"opt": self.opt}

    @property
    def generator(self) -> WorldDiT:
        return self.model

    def train_step(self, batch: dict[str, Any], step: int) -> dict[str, float]:
        z = batch["latents"]  # (B, 1+F, C, h, w)
        eps = self.randn(z[:, 1:].shape)
        t = sample_train_time(z.shape[0], self.cfg.stage.shift, self.noise_gen, self.device)
        loss = flow_matching_step(self.model, z, batch["camera"], eps, t, self.cfg.stage.recycle)
        self.guard({"loss": loss})
        loss.backward()
        gnorm = self.update(self.opt, self.model)
        return {"loss": loss.item(), "grad_norm": gnorm, "t_mean": t.mean().item()}
