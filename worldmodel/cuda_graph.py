"""The streaming transformer step replayed as one captured CUDA graph.

At batch 1 a step of a small model is hundreds of short kernels, and launching them costs
more than running them; a CUDA graph launches them all at once. What makes the step
capturable: `WorldDiT.forward_step` is split into host bookkeeping (`cache.prepare()`
computes the step's write slots, positions and mask with numpy and copies them into fixed
device buffers; `cache.advance()` commits the step) and `WorldDiT.step_prepared`, pure
tensor work with fixed shapes, which is what gets captured. A `graph_safe` cache keeps the
attention mask tensor on every step, so every replay reads the same buffers.

    cache = model.new_cache(batch, latent_hw, graph_safe=True)
    step = GraphedStep(model, cache)
    v = step(noisy, recycled, camera)        # == model.forward_step(noisy, recycled, camera, 1.0, cache)
"""

from __future__ import annotations

import torch

from worldmodel.dit import WorldDiT
from worldmodel.kv_cache import KVCache


class GraphedStep:
    """`model.forward_step(noisy, recycled, camera, t, cache)` for a fixed t, captured on its first call."""

    def __init__(self, model: WorldDiT, cache: KVCache, t: float = 1.0, warmup: int = 2) -> None:
        if not isinstance(cache, KVCache) or not cache.graph_safe:
            raise ValueError("GraphedStep needs a static cache made with model.new_cache(..., graph_safe=True)")
        if cache.device.type != "cuda":
            raise ValueError(f"CUDA graphs need a CUDA cache; this one is on {cache.device}")
        self.model, self.cache, self.t, self.warmup = model, cache, float(t), warmup
        self.graph: torch.cuda.CUDAGraph | None = None
        self.inputs: tuple[torch.Tensor, ...] | None = None
        self.out: torch.Tensor | None = None

    @torch.no_grad()
    def __call__(self, noisy: torch.Tensor, recycled: torch.Tensor, camera: torch.Tensor,
                 advance: bool = True) -> torch.Tensor:
        """One step for every stream; returns the velocity (B, C, h, w) (a fresh tensor)."""
        if self.inputs is None:
            self.inputs = tuple(x.detach().clone() for x in (noisy, recycled, camera))
        else:
            for buf, x in zip(self.inputs, (noisy, recycled, camera), strict=True):
                if buf.shape != x.shape:
                    raise ValueError(f"input shape {tuple(x.shape)} differs from the captured {tuple(buf.shape)}")
                buf.copy_(x)
        self.cache.prepare()
        if self.graph is None:
            self._capture()
        self.graph.replay()
        if advance:
            self.cache.advance()
        return self.out.clone()

    def _capture(self) -> None:
        """Warm up on a side stream (allocator, kernels), then capture `step_prepared` once.

        The warm-up steps run on the real inputs of the first step and write the same keys into
        the same (uncommitted) slot that the replay writes, so they leave no trace.
        """
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(self.warmup):
                self.model.step_prepared(*self.inputs, self.t, self.cache)
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.out = self.model.step_prepared(*self.inputs, self.t, self.cache)
