"""Stage 2, consistency distillation into a one-step generator (supplementary D).

Fixed grid t_0 = 0 < ... < t_32 = 1 (uniform, then shifted, s = 24). Per clip pick n:
x_{t_{n+1}} = (1 - t_{n+1}) x0 + t_{n+1} eps; the frozen diffusion teacher takes one Euler step
x_hat = x_{t_{n+1}} + (t_n - t_{n+1}) v_T(x_{t_{n+1}}); the student starts from the diffusion
weights and minimises || f(x_{t_{n+1}}, t_{n+1}) - sg f(x_hat, t_n) ||^2 with f(x, t) = x - t v(x, t),
the target from the current weights (no EMA), no CFG, teacher forcing as in stage 1.

`one_step_gap` is the check that distillation works: the one-step output (t = 1 -> 0) against
the teacher's 32-step Euler ODE solution from the same noise, on fixed validation clips.
"""

from __future__ import annotations

from typing import Any

import torch

from train.losses import consistency_loss
from train.rollout import teacher_forcing_inputs
from train.stages.loop import Stage
from worldmodel.dit import WorldDiT
from worldmodel.flow import add_noise, consistency_grid, denoise, euler_sample, euler_step


def consistency_step(student: WorldDiT, teacher: WorldDiT, latents: torch.Tensor, camera: torch.Tensor,
                     eps: torch.Tensor, n: torch.Tensor, grid: torch.Tensor, recycle: bool = True) -> torch.Tensor:
    """Consistency-distillation loss for clips (B, 1+F, ...) with grid indices n (B,) in [0, len(grid) - 1)."""
    recycled, x0 = teacher_forcing_inputs(latents, recycle)
    t_next, t_cur = grid[n + 1], grid[n]  # (B,)
    x_next = add_noise(x0, eps, t_next)
    with torch.no_grad():
        x_hat = euler_step(x_next, teacher(x_next, recycled, camera, t_next), t_next, t_cur)
        target = denoise(x_hat, student(x_hat, recycled, camera, t_cur), t_cur)  # f(x, 0) = x holds by construction
    pred = denoise(x_next, student(x_next, recycled, camera, t_next), t_next)
    return consistency_loss(pred, target)


@torch.no_grad()
def one_step_gap(student: WorldDiT, teacher: WorldDiT, latents: torch.Tensor, camera: torch.Tensor,
                 eps: torch.Tensor, grid: torch.Tensor, recycle: bool = True) -> dict[str, float]:
    """MSE of the student's one-step output and of the ground truth to the teacher's len(grid)-1-step ODE solution."""
    recycled, x0 = teacher_forcing_inputs(latents, recycle)
    ode = euler_sample(lambda x, t: teacher(x, recycled, camera, t), eps, grid.to(eps.device))
    one = eps - student(eps, recycled, camera, 1.0)  # f(eps, 1)
    return {"gap_one_step_vs_teacher": torch.mean((one - ode) ** 2).item(),
            "gap_teacher_vs_data": torch.mean((ode - x0) ** 2).item()}


class DistillStage(Stage):
    """Consistency distillation."""

    name = "distill"

    def build(self) -> None:
        st = self.cfg.stage
        if not st.init:
            raise ValueError("stage.init must point to the diffusion-adaptation weights (python -m train stage=diffusion)")
        self.student = self.new_model(st.init)
        self.teacher = self.new_model(st.distill.teacher or st.init).eval().requires_grad_(False)
        self.grid = consistency_grid(st.distill.grid_steps, st.shift).to(self.device)
        self.opt = torch.optim.AdamW(self.student.parameters(), lr=st.lr, weight_decay=st.weight_decay)
        self.models, self.optimizers = {"student": self.student}, {"opt": self.opt}
        self._eval: dict[str, Any] | None = None

    @property
    def generator(self) -> WorldDiT:
        return self.student

    def train_step(self, batch: dict[str, Any], step: int) -> dict[str, float]:
        z = batch["latents"]
        eps = self.randn(z[:, 1:].shape)
        n = torch.randint(0, len(self.grid) - 1, (z.shape[0],), generator=self.noise_gen, device=self.device)
        loss = consistency_step(self.student, self.teacher, z, batch["camera"], eps, n, self.grid, self.cfg.stage.recycle)
        self.guard({"loss": loss})
        loss.backward()
        return {"loss": loss.item(), "grad_norm": self.update(self.opt, self.student)}

    def on_checkpoint(self, step: int) -> dict[str, float]:
        if self._eval is None:
            clips = self.fixed_clips(self.cfg.stage.distill.eval_clips)
            eps = torch.randn(clips["latents"][:, 1:].shape, generator=torch.Generator().manual_seed(99)).to(self.device)
            self._eval = {**clips, "eps": eps}
        e = self._eval
        self.student.eval()
        return one_step_gap(self.student, self.teacher, e["latents"], e["camera"], e["eps"], self.grid,
                            self.cfg.stage.recycle)
