"""Variants of the same transformer step: eager, `torch.compile`, and (CUDA) a captured CUDA graph.

Compilation wraps each block's `forward_step` on a copy of the model: the block step is pure
tensor code with fixed shapes, while `WorldDiT.forward_step` around it does host-side cache
bookkeeping (numpy) that would only break the graph.
"""

from __future__ import annotations

import copy
import time
import traceback

import torch

from worldmodel.bench.alternatives import filled_cache, frame_inputs
from worldmodel.bench.common import NO_GPU, Row, median_ms, time_repeats
from worldmodel.bench.generation import rollout, speed_row
from worldmodel.cuda_graph import GraphedStep
from worldmodel.dit import WorldDiT
from worldmodel.world import World


def compiled_copy(model: WorldDiT) -> WorldDiT:
    """A copy of the model whose blocks' streaming steps go through torch.compile (the original is untouched)."""
    model = copy.deepcopy(model)
    for blk in model.blocks:
        # An instance attribute shadows the method on this copy only.
        blk.forward_step = torch.compile(blk.forward_step)
    return model


def error_text(e: BaseException, limit: int = 300) -> str:
    """The last line of an exception, short enough for a table cell."""
    lines = traceback.format_exception_only(type(e), e)
    text = lines[-1].strip() if lines else repr(e)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def compile_row(world: World, steps: int, warmup: int) -> Row:
    """End-to-end speed with the compiled transformer; compilation happens in (and is timed by) the warm-up.

    The warm-up must cover window + 2 steps: the step recompiles once when the window first
    fills (the attention mask disappears).
    """
    warmup = max(warmup, world.cfg.window + 2)
    t0 = time.perf_counter()
    try:
        fast = World(compiled_copy(world.dit), world.vae, world.meta, world.camera_stats, world.start_frames,
                     world.light_decoder)
        r = rollout(fast, batch=1, steps=warmup + steps)
    except Exception as e:  # noqa: BLE001 (a failed compile is a result to report, not a crash)
        return {"name": "torch.compile (per-block step)", "note": f"failed: {error_text(e)}"}
    row = speed_row("torch.compile (per-block step)", r, warmup)
    row["warmup_s"] = time.perf_counter() - t0 - sum(r.transformer_s[warmup:]) - sum(r.decode_s[warmup:])
    row["note"] = f"warm-up of {warmup} steps includes compilation"
    return row


@torch.no_grad()
def cuda_graph_row(model: WorldDiT, latent_hw: tuple[int, int], repeats: int) -> Row:
    """Transformer step time, eager vs replayed as a CUDA graph (worldmodel.cuda_graph), plan updates included."""
    name = "CUDA graph (transformer step)"
    device = next(model.parameters()).device
    if device.type != "cuda":
        return {"name": name, "note": NO_GPU}
    noisy, recycled, camera = frame_inputs(model, 1, latent_hw)
    cache = filled_cache(model, 1, latent_hw, model.cfg.window)
    eager = median_ms(time_repeats(lambda: model.forward_step(noisy, recycled, camera, 1.0, cache), device, repeats))
    try:
        g_cache = model.new_cache(1, latent_hw, graph_safe=True)
        step = GraphedStep(model, g_cache)
        for _ in range(model.cfg.window + 2):  # capture, then fill the window as the eager cache is
            step(noisy, recycled, camera)
    except Exception as e:  # noqa: BLE001 (capture failure is the finding)
        return {"name": name, "eager_ms": eager, "note": f"capture failed: {error_text(e, 160)}"}
    replay = median_ms(time_repeats(lambda: step(noisy, recycled, camera), device, repeats))
    return {"name": name, "eager_ms": eager, "graph_ms": replay, "speedup": eager / replay,
            "note": "both include the host-side cache plan of every step"}


def thread_rows(world: World, counts: list[int], steps: int, warmup: int) -> list[Row]:
    """End-to-end speed with each CPU thread count (restores the current count afterwards).

    On a shared machine, more intra-op threads than free cores makes every op wait for its
    slowest (descheduled) thread; these rows show how much that costs here.
    """
    before = torch.get_num_threads()
    rows = []
    try:
        for n in counts:
            torch.set_num_threads(n)
            r = rollout(world, batch=1, steps=warmup + steps)
            rows.append(speed_row(f"eager, {n} thread{'s' * (n > 1)}", r, warmup, threads=n))
    finally:
        torch.set_num_threads(before)
    return rows
