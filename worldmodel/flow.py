"""The flow-matching schedule shared by training and sampling.

    x_t = (1 - t) x0 + t eps,      v = eps - x0,      x0 = x_t - t v

t = 0 is data, t = 1 is pure noise. Training times are drawn uniformly and passed through
`shift(t, s) = s t / (1 + (s - 1) t)` (s = 24 in the paper), which spends most of the
steps at high noise, where a large model's capacity matters most. The consistency grid is
33 points t_0 = 0 < ... < t_32 = 1: uniform, then shifted with the same function. A
sampler integrates the probability-flow ODE dx/dt = v from t = 1 down to 0 with Euler
steps over any such grid; the one-step generator is the single step 1 -> 0.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

VelocityFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""v(x_t, t): x_t (B, ...), t (B,) -> velocity (B, ...)."""


def shift_time(t: torch.Tensor, s: float) -> torch.Tensor:
    """shift(t, s) = s t / (1 + (s - 1) t); maps [0, 1] onto itself, s > 1 pushes t towards 1."""
    if s <= 0:
        raise ValueError(f"shift factor s={s} must be > 0")
    return s * t / (1 + (s - 1) * t)


def _bcast(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """t (B,) or (B, F) -> broadcastable against x (B, ...)."""
    t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
    return t.reshape(*t.shape, *([1] * (x.ndim - t.ndim)))


def add_noise(x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """x_t = (1 - t) x0 + t eps with t (B,) (one time per clip) or (B, F)."""
    tb = _bcast(t, x0)
    return (1 - tb) * x0 + tb * eps


def velocity_target(x0: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """The flow-matching regression target v = eps - x0."""
    return eps - x0


def denoise(x_t: torch.Tensor, v: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The consistency function f(x, t) = x - t v: the clean sample implied by one velocity; f(x, 0) = x."""
    return x_t - _bcast(t, x_t) * v


def euler_step(x: torch.Tensor, v: torch.Tensor, t_from: torch.Tensor, t_to: torch.Tensor) -> torch.Tensor:
    """x_{t_to} = x_{t_from} + (t_to - t_from) v."""
    return x + (_bcast(t_to, x) - _bcast(t_from, x)) * v


def sample_train_time(batch: int, shift: float, generator: torch.Generator | None = None,
                      device: torch.device | str = "cpu") -> torch.Tensor:
    """One diffusion time per clip: t ~ U(0, 1) then shifted -> (B,)."""
    u = torch.rand(batch, generator=generator, device=device)
    return shift_time(u, shift)


def consistency_grid(steps: int = 32, shift: float = 24.0) -> torch.Tensor:
    """The fixed distillation grid t_0 = 0 < ... < t_steps = 1 (uniform, then shifted) -> (steps + 1,)."""
    if steps < 1:
        raise ValueError(f"steps={steps} must be >= 1")
    return shift_time(torch.linspace(0.0, 1.0, steps + 1, dtype=torch.float64), shift).float()


def euler_sample(velocity: VelocityFn, eps: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """Integrate from t = grid[-1] (noise `eps`) down to grid[0] with one Euler step per interval.

    This is the K-step teacher sampler (K = len(grid) - 1); with grid [0, 1] it is the one-step
    generator x0 = eps - v(eps, 1).
    """
    x = eps
    B = eps.shape[0]
    for i in range(len(grid) - 1, 0, -1):
        t_from = grid[i].to(eps.device).expand(B)
        x = euler_step(x, velocity(x, t_from), t_from, grid[i - 1].to(eps.device).expand(B))
    return x
