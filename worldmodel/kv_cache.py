"""Static-shape KV cache for streaming generation: context + first-frame sink + ring of frames.

Per layer the keys and values live in one buffer of fixed length

    [context (C) | sink (N) | ring slot 0 (N) | ... | ring slot W (N)]

allocated once. Frame 0 goes to the sink; frame n >= 1 goes to ring slot (n - 1) % (W + 1),
overwriting a frame that has just left the window. Keys are stored rotated at their
absolute frame index (RoPE depends only on the query-key distance, so window distances
are exact); the sink keeps its spatially rotated keys and is re-rotated in time each step
so its distance to the query never exceeds W + 1 (see attention.py). Every stream of the
batch has its own frame counter, so streams can be reset independently (vector envs).

All per-step bookkeeping is host-side integers turned into small index tensors: no
device value is ever read back (no host sync), and no buffer is reallocated.
"""

from __future__ import annotations

import numpy as np
import torch


class KVCache:
    """Per-layer key/value ring buffers for `batch` independent streams."""

    def __init__(
        self,
        depth: int,
        batch: int,
        heads: int,
        head_dim: int,
        frame_tokens: int,
        window: int,
        context_tokens: int = 0,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        self.depth, self.batch, self.window = depth, batch, window
        self.N, self.C = frame_tokens, context_tokens
        self.length = context_tokens + frame_tokens * (window + 2)
        shape = (depth, batch, heads, self.length, head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        # Sink keys with spatial rotation only; re-rotated in time every step.
        self.sink_k = torch.zeros(depth, batch, heads, frame_tokens, head_dim, device=device, dtype=dtype)
        self.frames = np.zeros(batch, dtype=np.int64)  # frames written per stream (host)
        self._valid = np.zeros((batch, self.length), dtype=bool)
        self._valid[:, :context_tokens] = True
        self.device = torch.device(device)
        self.plan: dict[str, torch.Tensor] | None = None

    def reset(self, streams: np.ndarray | list[int] | None = None) -> None:
        """Forget the frames of some (default: all) streams; their context stays."""
        idx = np.arange(self.batch) if streams is None else np.asarray(streams, dtype=np.int64)
        self.frames[idx] = 0
        self._valid[idx, self.C:] = False

    def prepare(self) -> dict[str, torch.Tensor]:
        """Index tensors for the coming step (one frame per stream); call before the layers run."""
        n = self.frames
        W, N, C = self.window, self.N, self.C
        slot_start = np.where(n == 0, C, C + N + ((n - 1) % (W + 1)) * N)  # (B,)
        write = slot_start[:, None] + np.arange(N)[None]  # (B, N)
        valid = self._valid.copy()
        valid[np.arange(self.batch)[:, None], write] = True
        dev = self.device
        self.plan = {
            "write": torch.as_tensor(write, device=dev),
            "first": torch.as_tensor(n == 0, device=dev),
            "pos": torch.as_tensor(n, device=dev, dtype=torch.float64),
            "sink_pos": torch.as_tensor(np.maximum(n - (W + 1), 0), device=dev, dtype=torch.float64),
            "valid": None if valid.all() else torch.as_tensor(valid, device=dev),
        }
        self._next_valid = valid
        return self.plan

    def advance(self) -> None:
        """Commit the step: every stream has one more frame."""
        self._valid = self._next_valid
        self.frames += 1
        self.plan = None

    def write(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> None:
        """Store this step's keys (rotated at the absolute frame) and values: (B, H, N, d)."""
        b = torch.arange(self.batch, device=k.device)[:, None]
        w = self.plan["write"]
        self.k[layer][b, :, w] = k.transpose(1, 2).to(self.k.dtype)  # advanced dims first: (B, N, H, d)
        self.v[layer][b, :, w] = v.transpose(1, 2).to(self.v.dtype)

    def write_sink(self, layer: int, k_spatial: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, rotate) -> None:
        """Keep frame-0 keys of new streams, then place the sink rotated at `sink_pos` into the buffer."""
        first = self.plan["first"][:, None, None, None]
        self.sink_k[layer].copy_(torch.where(first, k_spatial.to(self.sink_k.dtype), self.sink_k[layer]))
        self.k[layer][:, :, self.C : self.C + self.N] = rotate(self.sink_k[layer], cos, sin)

    def set_context(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> None:
        """Context keys/values (B, H, C, d) of one layer, computed once per context."""
        self.k[layer][:, :, : self.C] = k.to(self.k.dtype)
        self.v[layer][:, :, : self.C] = v.to(self.v.dtype)

    def buffers(self) -> list[torch.Tensor]:
        """The static tensors (for checking that storage never moves)."""
        return [self.k, self.v, self.sink_k]
