"""Consistency distillation learns: the one-step output moves towards the teacher's 32-step solution.

The other stage tests check shapes, resumption and sharding; they pass even when the
distillation target equals the prediction (a loss that is identically 0). This one trains.

Data: eight clips that share one condition (first latent and camera) and end in one of four
next latents, so the flow-matching teacher's ODE paths curve: its one-step output lands near
the modes' mean, its 32-step solution near a mode. The student starts from the teacher (as in
the stage) and is distilled with the stage's own `consistency_step` on the stage's grid.
"""

import copy

import torch

from train.stages.diffusion import flow_matching_step
from train.stages.distill import consistency_step, one_step_gap
from worldmodel.config import model_config
from worldmodel.dit import WorldDiT
from worldmodel.flow import consistency_grid, sample_train_time

CLIPS, MODES, C, HW, CAM = 8, 4, 16, (4, 4), 24
TEACHER_STEPS, TEACHER_LR = 60, 1e-2
DISTILL_STEPS, DISTILL_LR, REPEATS = 60, 5e-4, 2
FACTOR = 0.7
"""Required shrink of the one-step gap. Measured ratio after/before: 0.20 at this seed (0.11-0.54 over
seeds 0-5); with the target equal to the prediction nothing trains and the ratio is exactly 1."""


def multimodal_clips(g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Latents (CLIPS, 2, C, h, w): one shared first latent, then one of MODES next latents; camera (CLIPS, 1, CAM, h, w)."""
    first = torch.randn(1, 1, C, *HW, generator=g).expand(CLIPS, 1, C, *HW)
    modes = torch.randn(MODES, 1, C, *HW, generator=g).repeat(CLIPS // MODES, 1, 1, 1, 1)
    camera = torch.randn(1, 1, CAM, *HW, generator=g).expand(CLIPS, 1, CAM, *HW)
    return torch.cat([first, modes], 1), camera


def test_distillation_moves_the_one_step_output_towards_the_teachers_ode_solution():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    latents, camera = multimodal_clips(g)
    eval_eps = torch.randn(CLIPS, 1, C, *HW, generator=g)
    teacher = WorldDiT(model_config("tiny", dim=32, depth=2, heads=2, window=4))
    opt = torch.optim.AdamW(teacher.parameters(), lr=TEACHER_LR, weight_decay=0.0)
    for _ in range(TEACHER_STEPS):  # a rough diffusion teacher (stage 1) on the fixed clips
        eps = torch.randn(CLIPS, 1, C, *HW, generator=g)
        opt.zero_grad()
        flow_matching_step(teacher, latents, camera, eps, sample_train_time(CLIPS, 1.0, g)).backward()
        opt.step()
    teacher.eval().requires_grad_(False)

    student = copy.deepcopy(teacher).requires_grad_(True)
    grid = consistency_grid(32, 24.0)  # the stage's defaults: 32 steps, shift 24

    def gap() -> float:
        return one_step_gap(student, teacher, latents, camera, eval_eps, grid)["gap_one_step_vs_teacher"]

    before = gap()
    # No weight decay: with a zero loss the weights must not move at all.
    opt = torch.optim.AdamW(student.parameters(), lr=DISTILL_LR, weight_decay=0.0)
    lat, cam = latents.repeat(REPEATS, 1, 1, 1, 1), camera.repeat(REPEATS, 1, 1, 1, 1)
    for _ in range(DISTILL_STEPS):
        eps = torch.randn(REPEATS * CLIPS, 1, C, *HW, generator=g)
        n = torch.randint(0, len(grid) - 1, (REPEATS * CLIPS,), generator=g)
        opt.zero_grad()
        consistency_step(student, teacher, lat, cam, eps, n, grid).backward()
        opt.step()
    after = gap()
    assert after < FACTOR * before, f"one-step vs 32-step teacher MSE {before:.4f} -> {after:.4f}, expected < {FACTOR}x"
