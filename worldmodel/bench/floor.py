"""The compute floor: FLOPs of one step (counted by torch, not by hand) over the machine's matmul rate.

The floor is the time one step would take if every FLOP ran at the speed of a large dense
matmul; `achieved / floor` says how far the real step is from that, i.e. how much of the step
is overhead (Python, small kernels, memory traffic) rather than arithmetic.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from worldmodel.bench.alternatives import frame_inputs
from worldmodel.bench.common import Row, sync
from worldmodel.world import World


def _cpu_sdpa_flop(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    """Attention FLOPs of the CPU fused kernel (torch's counter has formulas for the CUDA ones only)."""
    return sdpa_flop_count(query_shape, key_shape, value_shape)


# Without this the CPU count would silently leave attention out.
EXTRA_FORMULAS = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa_flop}


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs torch's counter sees in one call of fn (matmuls, convolutions, attention)."""
    with FlopCounterMode(display=False, custom_mapping=EXTRA_FORMULAS) as counter:
        fn()
    return int(counter.get_total_flops())


@torch.no_grad()
def step_flops(world: World, batch: int = 1) -> dict[str, int]:
    """FLOPs of one transformer step (full static KV buffer) and one streaming decode step (4 frames)."""
    model = world.dit
    cache = model.new_cache(batch, world.latent_hw)
    noisy, recycled, camera = frame_inputs(model, batch, world.latent_hw)
    transformer = count_flops(lambda: model.forward_step(noisy, recycled, camera, 1.0, cache))
    decoder = world.vae.stream_decoder(batch, light=world.light_decoder)
    decoder.step(noisy)  # the first latent frame decodes to one video frame; steady steps give four
    decode = count_flops(lambda: decoder.step(noisy))
    return {"transformer": transformer, "decode": decode}


@torch.no_grad()
def matmul_rate(device: torch.device, dtype: torch.dtype, n: int, repeats: int = 5) -> float:
    """Best FLOP/s of an (n x n) @ (n x n) matmul in `dtype` on `device` over `repeats` timed calls."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b  # warm-up: thread pool, kernel selection
    best = float("inf")
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        a @ b
        sync(device)
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


def floor_rows(name: str, flops: dict[str, int], rate: float, achieved_ms: dict[str, float]) -> list[Row]:
    """One row per part (transformer, decode, step): GFLOPs, floor ms at `rate`, achieved ms, ratio."""
    parts = {**flops, "step": flops["transformer"] + flops["decode"]}
    achieved = {**achieved_ms, "step": achieved_ms["transformer"] + achieved_ms["decode"]}
    rows = []
    for part, f in parts.items():
        floor_ms = 1000 * f / rate
        rows.append({
            "name": f"{name} {part}",
            "gflops": f / 1e9,
            "floor_ms": floor_ms,
            "achieved_ms": achieved[part],
            "achieved_over_floor": achieved[part] / floor_ms if floor_ms > 0 else float("nan"),
        })
    return rows
