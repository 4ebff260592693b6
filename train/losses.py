"""Losses of the three post-training stages.

- `flow_matching_loss`: MSE between predicted and true velocity v = eps - x0.
- `consistency_loss`: d(f_theta(x_{t_{n+1}}, t_{n+1}), stopgrad f_theta(x_hat_{t_n}, t_n)), d = MSE.
- Relativistic pairing (R3GAN / AAPT eq. 1): with Delta = D(fake) - D(real) per frame logit, the
  generator maximises f_G(Delta) = -log(1 + e^-Delta) and the discriminator maximises
  f_D(Delta) = -log(1 + e^Delta); as losses to minimise these are softplus(-Delta) and softplus(Delta).
- Approximate R1/R2 (APT, AAPT eqs. 2-3): lambda * ||D(x) - D(x + sigma n)||^2, on real x (R1) and
  on generated x (R2). The discriminator emits one logit per frame; the squared difference is
  averaged over frames and the batch (one logit per video gives exactly lambda ||.||^2).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F


def flow_matching_loss(v_pred: torch.Tensor, v_target: torch.Tensor) -> torch.Tensor:
    """Mean squared error of the velocity, in float32."""
    return F.mse_loss(v_pred.float(), v_target.float())


def consistency_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """MSE between the online consistency output and the stop-gradient target."""
    return F.mse_loss(pred.float(), target.detach().float())


def f_generator(delta: torch.Tensor) -> torch.Tensor:
    """f_G(x) = -log(1 + e^-x) (maximised by the generator)."""
    return -F.softplus(-delta)


def f_discriminator(delta: torch.Tensor) -> torch.Tensor:
    """f_D(x) = -log(1 + e^x) (maximised by the discriminator)."""
    return -F.softplus(delta)


def generator_loss(logits_fake: torch.Tensor, logits_real: torch.Tensor) -> torch.Tensor:
    """-E[f_G(D(fake) - D(real))] over paired per-frame logits (B, F)."""
    return -f_generator(logits_fake.float() - logits_real.float()).mean()


def discriminator_loss(logits_fake: torch.Tensor, logits_real: torch.Tensor) -> torch.Tensor:
    """-E[f_D(D(fake) - D(real))] over paired per-frame logits (B, F)."""
    return -f_discriminator(logits_fake.float() - logits_real.float()).mean()


def approx_r_penalty(
    logits_fn: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    logits: torch.Tensor,
    sigma: float = 0.1,
    weight: float = 1000.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """lambda * mean ||D(x) - D(x + sigma n)||^2 with n ~ N(0, I); `logits` = D(x) already computed (B, F).

    R1 when x is real, R2 when x is generated. `logits_fn` must use the same diffusion time
    and noise as `logits`, so the difference measures only the sigma perturbation.
    """
    n = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    perturbed = logits_fn(x + sigma * n)  # (B, F)
    return weight * (logits.float() - perturbed.float()).pow(2).mean()
