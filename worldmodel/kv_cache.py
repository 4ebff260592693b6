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
        graph_safe: bool = False,
    ) -> None:
        self.depth, self.batch, self.window = depth, batch, window
        self.graph_safe = graph_safe
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
        # The step's index tensors live in fixed buffers, refilled in place by `prepare`, so a
        # captured CUDA graph of the layers reads each step's plan (KVCache(graph_safe=True)).
        dev = self.device
        self._plan_buffers = {
            "write": torch.zeros(batch, frame_tokens, dtype=torch.int64, device=dev),
            "first": torch.zeros(batch, dtype=torch.bool, device=dev),
            "pos": torch.zeros(batch, dtype=torch.float64, device=dev),
            "sink_pos": torch.zeros(batch, dtype=torch.float64, device=dev),
            "valid": torch.zeros(batch, self.length, dtype=torch.bool, device=dev),
        }

    def reset(self, streams: np.ndarray | list[int] | None = None) -> None:
        """Forget the frames of some (default: all) streams; their context stays."""
        idx = np.arange(self.batch) if streams is None else np.asarray(streams, dtype=np.int64)
        self.frames[idx] = 0
        self._valid[idx, self.C:] = False

    def prepare(self) -> dict[str, torch.Tensor]:
        """Index tensors for the coming step (one frame per stream); call before the layers run.

        They are computed on the host and copied into the same buffers every step. The mask is
        None once every slot is valid (lets attention skip masking), except with `graph_safe`,
        where the layers must see the same tensors at every step.
        """
        n = self.frames
        W, N, C = self.window, self.N, self.C
        slot_start = np.where(n == 0, C, C + N + ((n - 1) % (W + 1)) * N)  # (B,)
        write = slot_start[:, None] + np.arange(N)[None]  # (B, N)
        valid = self._valid.copy()
        valid[np.arange(self.batch)[:, None], write] = True
        host = {"write": write, "first": n == 0, "pos": n.astype(np.float64),
                "sink_pos": np.maximum(n - (W + 1), 0).astype(np.float64), "valid": valid}
        for k, buf in self._plan_buffers.items():
            buf.copy_(torch.from_numpy(np.ascontiguousarray(host[k])))
        self.plan = dict(self._plan_buffers)
        if valid.all() and not self.graph_safe:
            self.plan["valid"] = None
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

    @property
    def dtype(self) -> torch.dtype:
        """Storage dtype of keys and values."""
        return self.k.dtype

    def keys_values(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """One layer's key and value buffers (B, H, L, d), masked by `plan["valid"]`."""
        return self.k[layer], self.v[layer]


class GradKVCache:
    """Differentiable KV cache for training rollouts (student forcing): same interface as `KVCache`.

    The static cache writes in place into preallocated buffers, which autograd cannot
    differentiate through once a slot is overwritten. This one keeps each committed frame's
    keys/values as separate tensors and concatenates the visible ones (context, sink
    re-rotated in time, the last `window` frames, the current frame) on every step, so
    gradients flow from later frames into earlier ones through attention. All streams
    advance in lockstep (training batches start together); memory grows with the window,
    frames that left it are dropped. `detach()` cuts the graph (long-video segments).
    """

    def __init__(self, depth: int, batch: int, window: int, context_tokens: int = 0,
                 device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> None:
        self.depth, self.batch, self.window, self.C = depth, batch, window, context_tokens
        self.device, self._dtype = torch.device(device), dtype
        self.frames = np.zeros(batch, dtype=np.int64)  # frames committed per stream (host), all equal
        self._k: list[list[torch.Tensor]] = [[] for _ in range(depth)]  # frames >= 1, rotated at their frame
        self._v: list[list[torch.Tensor]] = [[] for _ in range(depth)]
        self._sink_k: list[torch.Tensor | None] = [None] * depth  # frame 0, spatial rotation only
        self._sink_v: list[torch.Tensor | None] = [None] * depth
        self._ctx: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * depth
        self._pending: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * depth
        self._pending_sink: list[torch.Tensor | None] = [None] * depth
        self._sink_rot: list[tuple] = [()] * depth
        self.plan: dict[str, torch.Tensor | None] | None = None

    @property
    def dtype(self) -> torch.dtype:
        """Dtype of the cached keys and values."""
        return self._dtype

    def reset(self, streams: np.ndarray | list[int] | None = None) -> None:
        """Forget every stream's frames (streams move in lockstep, so only a full reset exists)."""
        if streams is not None and len(np.unique(np.asarray(streams))) != self.batch:
            raise ValueError("GradKVCache resets all streams together; use KVCache for per-stream resets")
        self.frames[:] = 0
        for i in range(self.depth):
            self._k[i], self._v[i] = [], []
            self._sink_k[i] = self._sink_v[i] = None

    def prepare(self) -> dict[str, torch.Tensor | None]:
        """Positions for the coming step (same keys as `KVCache.prepare`)."""
        n = int(self.frames[0])
        self._pending = [None] * self.depth
        self._pending_sink = [None] * self.depth
        full = lambda x: torch.full((self.batch,), float(x), device=self.device, dtype=torch.float64)  # noqa: E731
        self.plan = {
            "first": torch.full((self.batch,), n == 0, device=self.device),
            "pos": full(n),
            "sink_pos": full(max(n - (self.window + 1), 0)),
            "valid": None,  # only visible keys are concatenated, so nothing is masked
        }
        return self.plan

    def write(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> None:
        """This step's keys (rotated at the absolute frame) and values (B, H, N, d); committed by `advance`."""
        self._pending[layer] = (k.to(self._dtype), v.to(self._dtype))

    def write_sink(self, layer: int, k_spatial: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, rotate) -> None:
        """Remember frame 0's spatially rotated keys; the sink is re-rotated in time at `sink_pos`."""
        if self.frames[0] == 0:
            self._pending_sink[layer] = k_spatial.to(self._dtype)
        self._sink_rot[layer] = (cos, sin, rotate)

    def set_context(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> None:
        """Context keys/values (B, H, C, d) of one layer."""
        self._ctx[layer] = (k.to(self._dtype), v.to(self._dtype))

    def keys_values(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Visible keys/values (B, H, L, d): context, sink, the last `window` past frames, this frame."""
        k_now, v_now = self._pending[layer]
        cos, sin, rotate = self._sink_rot[layer]
        ks, vs = ([self._ctx[layer][0]], [self._ctx[layer][1]]) if self._ctx[layer] is not None else ([], [])
        if self.frames[0] == 0:  # this frame is the sink itself
            return torch.cat(ks + [rotate(self._pending_sink[layer], cos, sin)], 2), torch.cat(vs + [v_now], 2)
        past = slice(-self.window, None)
        ks += [rotate(self._sink_k[layer], cos, sin), *self._k[layer][past], k_now]
        vs += [self._sink_v[layer], *self._v[layer][past], v_now]
        return torch.cat(ks, 2), torch.cat(vs, 2)

    def advance(self) -> None:
        """Commit the step's keys/values: every stream has one more frame."""
        for i in range(self.depth):
            k, v = self._pending[i]
            if self.frames[0] == 0:
                self._sink_k[i], self._sink_v[i] = self._pending_sink[i], v
            else:
                # Frames that left the window are never attended again: drop them.
                self._k[i] = (self._k[i] + [k])[-self.window:]
                self._v[i] = (self._v[i] + [v])[-self.window:]
        self.frames += 1
        self.plan = None

    def detach(self) -> None:
        """Cut the autograd graph of everything cached (the previous long-video segment)."""
        d = lambda x: None if x is None else x.detach()  # noqa: E731
        for i in range(self.depth):
            self._k[i] = [k.detach() for k in self._k[i]]
            self._v[i] = [v.detach() for v in self._v[i]]
            self._sink_k[i], self._sink_v[i] = d(self._sink_k[i]), d(self._sink_v[i])
