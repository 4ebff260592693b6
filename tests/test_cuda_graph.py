"""The CUDA-graph step: a static cache plan (checked on CPU) and graph replay == eager (on CUDA)."""

import numpy as np
import pytest
import torch

from helpers import tiny_dit
from worldmodel.cuda_graph import GraphedStep
from worldmodel.dit import WorldDiT

LATENT, W = (4, 4), 3


def model(device: str = "cpu") -> WorldDiT:
    """The seeded tiny model of these tests, on `device`."""
    return tiny_dit(window=W, device=device).eval()


def inputs(steps: int, device: str = "cpu"):
    g = torch.Generator().manual_seed(1)
    return [tuple(torch.randn(2, c, *LATENT, generator=g).to(device) for c in (16, 16, 24)) for _ in range(steps)]


def run(step, cache, frames, reset_at: int) -> list[torch.Tensor]:
    """Stream frames for 2 streams; stream 1 restarts at `reset_at` (the mask then changes)."""
    out = []
    for i, x in enumerate(frames):
        if i == reset_at:
            cache.reset([1])
        out.append(step(*x, cache))
    return out


@torch.no_grad()
def test_graph_safe_cache_keeps_its_plan_buffers_and_gives_the_same_steps():
    """Every step's plan lands in the same tensors (what a captured graph reads), the mask is
    kept even when all slots are valid, and the outputs equal the default cache's."""
    m = model()
    frames = inputs(2 * W + 4)
    plain, safe = m.new_cache(2, LATENT), m.new_cache(2, LATENT, graph_safe=True)
    a = run(lambda *x: m.forward_step(*x[:3], 1.0, x[3]), plain, frames, reset_at=W + 3)
    ptrs, masks = set(), []

    def step(noisy, recycled, camera, cache):
        plan = cache.prepare()
        ptrs.add(tuple(v.data_ptr() for v in plan.values()))
        masks.append(plan["valid"] is not None)
        out = m.step_prepared(noisy, recycled, camera, 1.0, cache)
        cache.advance()
        return out

    b = run(step, safe, frames, reset_at=W + 3)
    assert len(ptrs) == 1 and all(masks)
    for x, y in zip(a, b, strict=True):
        torch.testing.assert_close(x, y, rtol=0, atol=1e-6)


def test_graphed_step_refuses_caches_it_cannot_capture():
    m = model()
    with pytest.raises(ValueError, match="graph_safe"):
        GraphedStep(m, m.new_cache(2, LATENT))
    with pytest.raises(ValueError, match="CUDA"):
        GraphedStep(m, m.new_cache(2, LATENT, graph_safe=True))


@pytest.mark.gpu
@torch.no_grad()
def test_graph_replay_equals_eager_steps_across_the_window_and_a_reset():
    m = model("cuda")
    frames = inputs(2 * W + 4, "cuda")
    eager = run(lambda *x: m.forward_step(*x[:3], 1.0, x[3]), m.new_cache(2, LATENT), frames, reset_at=W + 3)
    cache = m.new_cache(2, LATENT, graph_safe=True)
    graphed = GraphedStep(m, cache)
    replayed = run(lambda *x: graphed(*x[:3]), cache, frames, reset_at=W + 3)
    assert graphed.graph is not None
    for x, y in zip(eager, replayed, strict=True):
        torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(cache.frames, [2 * W + 4, W + 1])
