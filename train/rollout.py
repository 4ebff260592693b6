"""How the generator is fed during training: teacher forcing, student forcing, long-video segments.

Layout (one model frame per step between latent frames x_0 .. x_F of a clip):
model frame i gets recycled = x_i, noisy = x_{i+1} (noised), camera = the maps of step i+1,
and predicts x_{i+1}: "noisy input and target shifted by one frame".

- Teacher forcing (diffusion, distillation): recycled = ground truth, all frames in parallel.
- Student forcing (adversarial): from x_0 only, one frame per `forward_step`, recycling the
  generator's own (detached) output; keys/values go to a `GradKVCache`, so gradients of later
  frames reach earlier frames through attention.
- Long video: `SegmentRollout.run` continues the same cache; `detach()` between segments
  cuts the graph so each segment is back-propagated on its own.
- `recycle=False` is the supplementary-G ablation: the recycled input is zero after frame 0.
"""

from __future__ import annotations

import torch

from worldmodel.dit import WorldDiT
from worldmodel.flow import add_noise, euler_sample
from worldmodel.kv_cache import GradKVCache, KVCache


def teacher_forcing_inputs(latents: torch.Tensor, recycle: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Clip latents (B, 1+F, C, h, w) -> (recycled (B, F, ...) = x_0..x_{F-1}, targets x_1..x_F)."""
    if latents.ndim != 5 or latents.shape[1] < 2:
        raise ValueError(f"latents have shape {tuple(latents.shape)}, expected (B, 1+F, C, h, w) with F >= 1")
    recycled, targets = latents[:, :-1], latents[:, 1:]
    if not recycle:
        recycled = torch.cat([recycled[:, :1], torch.zeros_like(recycled[:, 1:])], 1)
    return recycled, targets


def grad_cache(model: WorldDiT, batch: int, device: torch.device | None = None) -> GradKVCache:
    """A differentiable KV cache for this model's depth and window."""
    ref = next(model.parameters())
    return GradKVCache(model.cfg.depth, batch, model.cfg.window, device=device or ref.device, dtype=ref.dtype)


class SegmentRollout:
    """Student-forcing rollout that can be continued segment by segment (long-video training)."""

    def __init__(self, model: WorldDiT, first: torch.Tensor, recycle: bool = True) -> None:
        self.model, self.recycle = model, recycle
        self.cache = grad_cache(model, first.shape[0], first.device)
        self.recycled = first.detach()  # (B, C, h, w): the user's image latent
        self.frames = 0

    def run(self, camera: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Generate len(camera) frames, camera (B, n, Cc, h, w), noise (B, n, C, h, w) -> latents (B, n, C, h, w).

        Each frame is one evaluation at t = 1 (x0 = eps - v). The recycled input is the previous
        output, detached; gradients still connect the frames through the cached keys/values.
        """
        outs = []
        for i in range(camera.shape[1]):
            v = self.model.forward_step(noise[:, i], self.recycled, camera[:, i], 1.0, self.cache)
            x = noise[:, i] - v  # (B, C, h, w)
            outs.append(x)
            self.recycled = x.detach() if self.recycle else torch.zeros_like(x)
            self.frames += 1
        return torch.stack(outs, 1)

    def detach(self) -> None:
        """End a segment: what is cached stays visible but carries no gradient."""
        self.cache.detach()


def student_rollout(model: WorldDiT, first: torch.Tensor, camera: torch.Tensor, noise: torch.Tensor,
                    recycle: bool = True) -> torch.Tensor:
    """One-segment student forcing from the first latent (B, C, h, w) -> generated latents (B, F, C, h, w)."""
    return SegmentRollout(model, first, recycle).run(camera, noise)


def teacher_forced_generate(model: WorldDiT, latents: torch.Tensor, camera: torch.Tensor, noise: torch.Tensor,
                            recycle: bool = True) -> torch.Tensor:
    """One-step generation of every frame in parallel from ground-truth recycled frames -> (B, F, C, h, w)."""
    recycled, _ = teacher_forcing_inputs(latents, recycle)
    return noise - model(noise, recycled, camera, 1.0)


def disc_logits(disc: WorldDiT, video: torch.Tensor, camera: torch.Tensor, t: torch.Tensor,
                noise: torch.Tensor) -> torch.Tensor:
    """Per-frame logits (B, F) of a clip (B, 1+F, C, h, w): its frames, noised at t, in the noisy slot."""
    recycled, frames = video[:, :-1], video[:, 1:]
    return disc(add_noise(frames, noise, t), recycled, camera, t)


def disc_logits_teacher_forced(disc: WorldDiT, real: torch.Tensor, fake: torch.Tensor, camera: torch.Tensor,
                               t: torch.Tensor, noise: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Supplementary F: score each generated frame against the real past via the discriminator's cache.

    real (B, 1+F, ...), fake (B, F, ...) where fake frame i was predicted from real frames <= i.
    Returns (fake logits, real logits), each (B, F).
    """
    cache = grad_cache(disc, real.shape[0], real.device)
    lf, lr = [], []
    for i in range(fake.shape[1]):
        x = real[:, i]
        lf.append(disc.forward_step(add_noise(fake[:, i], noise[:, i], t), x, camera[:, i], t, cache, advance=False))
        lr.append(disc.forward_step(add_noise(real[:, i + 1], noise[:, i], t), x, camera[:, i], t, cache))
    return torch.stack(lf, 1), torch.stack(lr, 1)


@torch.no_grad()
def sample_rollout(model: WorldDiT, first: torch.Tensor, camera: torch.Tensor, grid: torch.Tensor,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """Inference-style autoregressive sampling with the static KV cache: (B, C, h, w) -> (B, 1+F, C, h, w).

    Each frame integrates its own ODE over `grid` (one evaluation for grid [0, 1]); only the last
    evaluation of a frame is committed to the cache.
    """
    B = first.shape[0]
    cache: KVCache = model.new_cache(B, tuple(first.shape[-2:]))
    recycled, out = first, [first]
    for i in range(camera.shape[1]):
        eps = torch.randn(first.shape, generator=generator, device=first.device, dtype=first.dtype)
        evals = [0]

        def velocity(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            evals[0] += 1
            last = evals[0] == len(grid) - 1
            return model.forward_step(x, recycled, camera[:, i], t, cache, advance=last)

        recycled = euler_sample(velocity, eps, grid)
        out.append(recycled)
    return torch.stack(out, 1)
