"""Our inference against simpler ways to generate the same frame.

- KV cache vs recompute: the cached step evaluates one new frame against stored keys/values;
  recompute runs `WorldDiT.forward` over sink + window + the new frame every step and keeps
  the last frame. Measured for several windows so the growing factor shows.
- One step vs the 32-step teacher sampler: the teacher (stage 1/2 of training) needs 32
  evaluations of every frame. Its cost model here: 31 `forward_step(..., advance=False)`
  calls (evaluate the frame without committing it) then one committing call, with an Euler
  update of the latent between them.
- Light vs full VAE decoder: `worldmodel.bench.vae.bench_vae_decode`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from worldmodel.bench.common import Row, median_ms, time_repeats
from worldmodel.bench.vae import bench_vae_decode
from worldmodel.dit import WorldDiT
from worldmodel.kv_cache import KVCache

TEACHER_STEPS = 32
"""Sampling steps of the consistency-distillation teacher (the paper's 32 fixed steps)."""


def frame_inputs(model: WorldDiT, batch: int, latent_hw: tuple[int, int], frames: int | None = None,
                 seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random noisy latent, recycled latent and camera channels: (B, C, h, w) or (B, F, C, h, w)."""
    ref = next(model.parameters())
    g = torch.Generator(device=ref.device).manual_seed(seed)
    lead = (batch,) if frames is None else (batch, frames)
    cfg = model.cfg

    def rand(c: int) -> torch.Tensor:
        return torch.randn(*lead, c, *latent_hw, generator=g, device=ref.device, dtype=ref.dtype)

    return rand(cfg.latent_channels), rand(cfg.latent_channels), rand(cfg.camera_channels)


def filled_cache(model: WorldDiT, batch: int, latent_hw: tuple[int, int], window: int) -> KVCache:
    """A cache whose sink and whole window are occupied, as in the steady state of a long rollout."""
    cache = model.new_cache(batch, latent_hw, window)
    noisy, recycled, camera = frame_inputs(model, batch, latent_hw)
    with torch.no_grad():
        for _ in range(window + 2):
            model.forward_step(noisy, recycled, camera, 1.0, cache)
    return cache


@torch.no_grad()
def kv_vs_recompute(model: WorldDiT, latent_hw: tuple[int, int], windows: Sequence[int], repeats: int,
                    batch: int = 1) -> list[Row]:
    """Transformer time per new frame, cached step vs full-window recompute, for each window."""
    device = next(model.parameters()).device
    rows = []
    for W in windows:
        cache = filled_cache(model, batch, latent_hw, W)
        noisy, recycled, camera = frame_inputs(model, batch, latent_hw)
        kv = time_repeats(lambda: model.forward_step(noisy, recycled, camera, 1.0, cache), device, repeats)  # noqa: B023
        F = W + 2  # sink + window + the new frame
        clip = frame_inputs(model, batch, latent_hw, frames=F)
        recompute = time_repeats(lambda: model(*clip, 1.0, window=W)[:, -1], device, repeats)  # noqa: B023
        kv_ms, re_ms = median_ms(kv), median_ms(recompute)
        rows.append({
            "name": f"window {W}",
            "window": W,
            "frames_attended": F,
            "kv_cache_ms": kv_ms,
            "recompute_ms": re_ms,
            "speedup": re_ms / kv_ms,
        })
    return rows


@torch.no_grad()
def teacher_step(model: WorldDiT, cache: KVCache, x: torch.Tensor, recycled: torch.Tensor, camera: torch.Tensor,
                 steps: int = TEACHER_STEPS) -> torch.Tensor:
    """Sample one frame with `steps` Euler steps from t=1 to 0; only the last evaluation commits it."""
    ts = torch.linspace(1.0, 0.0, steps + 1).tolist()
    for i in range(steps):
        v = model.forward_step(x, recycled, camera, ts[i], cache, advance=i == steps - 1)
        x = x + (ts[i + 1] - ts[i]) * v  # x_t moves along -v towards x0 as t decreases
    return x


@torch.no_grad()
def one_step_vs_teacher(model: WorldDiT, latent_hw: tuple[int, int], frames: int, window: int | None = None,
                        batch: int = 1) -> list[Row]:
    """Transformer time per latent frame: the one-step generator vs the 32-step teacher sampler."""
    device = next(model.parameters()).device
    W = model.cfg.window if window is None else window
    cache = filled_cache(model, batch, latent_hw, W)
    noisy, recycled, camera = frame_inputs(model, batch, latent_hw)
    fps = model.cfg.frames_per_step * batch
    one = median_ms(time_repeats(lambda: model.forward_step(noisy, recycled, camera, 1.0, cache), device, max(3, frames)))
    teacher = median_ms(time_repeats(lambda: teacher_step(model, cache, noisy, recycled, camera), device, frames))
    return [
        {"name": "one step (ours)", "evaluations_per_frame": 1, "ms_per_latent_frame": one,
         "transformer_fps": 1000 * fps / one, "relative_cost": 1.0},
        {"name": f"{TEACHER_STEPS}-step teacher", "evaluations_per_frame": TEACHER_STEPS,
         "ms_per_latent_frame": teacher, "transformer_fps": 1000 * fps / teacher, "relative_cost": teacher / one,
         "note": f"cost model: {TEACHER_STEPS - 1} forward_step(advance=False) + 1 committing call"},
    ]


def vae_decoders(cases: list[tuple[str, str, int, int, int]]) -> list[Row]:
    """Light vs full streaming decoder per latent frame (CPU; from worldmodel.bench.vae)."""
    result = bench_vae_decode(cases)
    return [
        {"name": r["case"], "full_ms": r["full_ms"], "light_ms": r["light_ms"], "speedup": r["speedup"],
         "full_params_m": r["full_params"] / 1e6, "light_params_m": r["light_params"] / 1e6,
         "note": f"{result['device']}, random weights, {r['repeats']} timed steps"}
        for r in result["rows"]
    ]
