"""End-to-end generation: a timed rollout through `WorldStreams`, giving speed and memory rows.

One rollout serves both: its steps after the warm-up give decoded frames per second and the
per-step latency split into the transformer evaluation and the streaming VAE decode; every
step's memory (RSS on CPU, allocated CUDA memory on GPU) gives peak, steady state and the
growth from the first quarter of the rollout to the last.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from worldmodel.bench.common import (
    Row,
    device_memory_bytes,
    latency_stats,
    random_actions,
    start_images,
    timed,
)
from worldmodel.world import World, video_to_uint8

MB = 1024.0**2


@dataclass
class Rollout:
    """Per-step measurements of one rollout."""

    transformer_s: list[float] = field(default_factory=list)
    """Seconds of each step's transformer evaluation (camera maps and noise included)."""
    decode_s: list[float] = field(default_factory=list)
    """Seconds of each step's streaming VAE decode and copy to uint8 host frames."""
    memory_bytes: list[int] = field(default_factory=list)
    """Memory in use after each step (RSS on CPU, allocated CUDA memory on GPU)."""
    peak_bytes: int = 0
    """Peak memory: max of the samples on CPU, torch.cuda.max_memory_allocated on GPU."""
    frames_per_step: int = 4
    """Decoded video frames per stream per step."""
    batch: int = 1
    """Streams stepped together."""


def rollout(world: World, batch: int, steps: int, seed: int = 0) -> Rollout:
    """Reset `batch` streams and step them `steps` times with random camera motions, timing each step.

    The step is `WorldStreams.step` taken apart (generator step, then decoder step) so that the
    device can be synchronised between the two halves: on CUDA, host timers alone would bill
    the transformer's queued kernels to the decode.
    """
    device = world.device
    streams = world.streams(batch, seeds=range(seed, seed + batch))
    streams.reset(start_images(world, batch, seed))
    actions = random_actions(steps, batch, seed)
    out = Rollout(frames_per_step=world.frames_per_step, batch=batch)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for a in actions:
        t_tr, z = timed(lambda: streams.gen.step(a), device)  # noqa: B023 (called at once)
        t_dec, frames = timed(lambda: video_to_uint8(streams.decoder.step(z)), device)  # noqa: B023
        assert frames.shape[:2] == (batch, world.frames_per_step)
        out.transformer_s.append(t_tr)
        out.decode_s.append(t_dec)
        out.memory_bytes.append(device_memory_bytes(device))
    out.peak_bytes = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else max(out.memory_bytes)
    return out


def speed_row(name: str, r: Rollout, warmup: int, **extra) -> Row:
    """Decoded fps and per-step latency (total, transformer, decode) of the steps after `warmup`."""
    if len(r.transformer_s) <= warmup:
        raise ValueError(f"rollout has {len(r.transformer_s)} steps, need more than warmup={warmup} to time any")
    tr, dec = np.asarray(r.transformer_s[warmup:]), np.asarray(r.decode_s[warmup:])
    total = tr + dec
    return {
        "name": name,
        **extra,
        "batch": r.batch,
        "timed_steps": len(total),
        "decoded_fps": r.batch * r.frames_per_step / float(total.mean()),
        **latency_stats(list(total), "step_"),
        **latency_stats(list(tr), "transformer_"),
        **latency_stats(list(dec), "decode_"),
    }


def memory_row(name: str, r: Rollout, kind: str, tolerance_mb: float = 8.0) -> Row:
    """Peak and steady-state memory of a rollout, and the growth from its first quarter to its last.

    Flat means the last quarter's mean is within `tolerance_mb` (or 1 %) of the first quarter's:
    allocator noise, not a buffer that grows with the rollout.
    """
    m = np.asarray(r.memory_bytes, dtype=np.float64) / MB
    q = max(1, len(m) // 4)
    first, last = float(m[:q].mean()), float(m[-q:].mean())
    growth = last - first
    return {
        "name": name,
        "memory": kind,
        "steps": len(m),
        "frames": len(m) * r.frames_per_step * r.batch,
        "peak_mb": r.peak_bytes / MB,
        "steady_mb": float(np.median(m[-q:])),
        "first_quarter_mb": first,
        "last_quarter_mb": last,
        "growth_mb": growth,
        "flat": bool(abs(growth) <= max(tolerance_mb, 0.01 * last)),
    }
