"""KV caches for streaming: context + first-frame sink + the last `window` frames, one frame per step.

Both caches implement `FrameCache`, the protocol the transformer's cached step uses
(`attention.StepAttention`): `prepare()` before a step (its frame index and sink position per
stream, `rope.sink_frame`), `write` one layer's keys and values, `visible` the keys and values
that frame attends to (plus a mask, or None), `advance()` to commit the step.

Keys arrive rotated at their own frame. Frame 0's keys are kept apart as the sink and, on every
step, turned by the plan's temporal rotation (`rope.PositionPlan.sink`) so that their distance to
the query never exceeds `window + 1` (the rule is in rope.py; attention.py says why).

`KVCache` (inference) has static shapes. Per layer the keys and values live in one buffer

    [context (C) | sink (N) | ring slot 0 (N) | ... | ring slot W (N)]

allocated once. Frame 0 goes to the sink; frame n >= 1 goes to ring slot (n - 1) % (W + 1),
overwriting a frame that has just left the window. Slots not yet written hold stale values:
`visible` returns a validity mask with them, and the attention (`attention.cached_attention`)
applies it. Every stream of the batch has its own frame counter, so streams can be reset
independently (vector envs). All per-step bookkeeping is host-side integers turned into small
index tensors: no device value is ever read back (no host sync), and no buffer is reallocated.

`GradKVCache` (training rollouts) keeps each frame as its own tensor so autograd can follow
them; see its docstring.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import torch

from worldmodel.rope import apply_rotary, sink_frame

Rotation = tuple[torch.Tensor, torch.Tensor]
"""cos, sin of a rotary rotation (`rope.cos_sin`)."""


class FrameCache(Protocol):
    """What the transformer's cached step needs from a KV cache; `KVCache` and `GradKVCache` implement it."""

    depth: int
    """Transformer blocks (one key/value store each)."""
    batch: int
    """Independent streams."""
    window: int
    """Past frames each query sees besides the sink."""
    C: int
    """Context tokens stored before the frames."""
    frames: np.ndarray
    """Frames committed per stream (host integers)."""
    plan: dict[str, torch.Tensor | None] | None
    """The coming step's tensors after `prepare()`: at least "pos" (frame index) and "sink_pos"
    (`rope.sink_frame` of it), float64 (B,); None between steps."""

    @property
    def dtype(self) -> torch.dtype:
        """Storage dtype of keys and values."""
        ...

    def prepare(self) -> dict[str, torch.Tensor | None]:
        """Compute the coming step's plan (one frame per stream); call before the layers run."""
        ...

    def write(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> None:
        """This step's keys (rotated at their own frame) and values (B, H, N, d) of one layer."""
        ...

    def visible(self, layer: int, sink: Rotation) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Keys and values (B, H, L, d) this step attends to, the sink turned by `sink`, and a (B, L)
        validity mask for the attention to apply (None: every key is valid)."""
        ...

    def set_context(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> None:
        """Context keys/values (B, H, C, d) of one layer, computed once per context."""
        ...

    def advance(self) -> None:
        """Commit the step: every stream has one more frame."""
        ...

    def reset(self, streams: np.ndarray | list[int] | None = None) -> None:
        """Forget the frames of some (default: all) streams."""
        ...


class KVCache:
    """Per-layer key/value ring buffers for `batch` independent streams (a static-shape `FrameCache`)."""

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
        # Frame 0's keys as written (rotated at frame 0: spatially only); `visible` turns them in time.
        self.sink_k = torch.zeros(depth, batch, heads, frame_tokens, head_dim, device=device, dtype=dtype)
        self.frames = np.zeros(batch, dtype=np.int64)  # frames written per stream (host)
        self._valid = np.zeros((batch, self.length), dtype=bool)
        self._valid[:, :context_tokens] = True
        self.device = torch.device(device)
        self.plan: dict[str, torch.Tensor | None] | None = None
        # The step's index tensors live in fixed buffers, refilled in place by `prepare`, so a
        # captured CUDA graph of the layers reads each step's plan (KVCache(graph_safe=True)).
        dev = self.device
        self._plan_buffers = {
            "slot": torch.zeros(batch, dtype=torch.int64, device=dev),
            "first": torch.zeros(batch, dtype=torch.bool, device=dev),
            "pos": torch.zeros(batch, dtype=torch.float64, device=dev),
            "sink_pos": torch.zeros(batch, dtype=torch.float64, device=dev),
            "valid": torch.zeros(batch, self.length, dtype=torch.bool, device=dev),
        }
        self._rows = torch.arange(batch, device=dev)
        self._any_first = True  # whether the coming step writes some stream's sink (host copy of plan["first"])

    def reset(self, streams: np.ndarray | list[int] | None = None) -> None:
        """Forget the frames of some (default: all) streams; their context stays."""
        idx = np.arange(self.batch) if streams is None else np.asarray(streams, dtype=np.int64)
        self.frames[idx] = 0
        self._valid[idx, self.C:] = False

    def prepare(self) -> dict[str, torch.Tensor | None]:
        """Index tensors for the coming step (one frame per stream); call before the layers run.

        They are computed on the host and copied into the same buffers every step. The mask is
        None once every slot is valid (lets attention skip masking), except with `graph_safe`,
        where the layers must see the same tensors at every step.
        """
        n = self.frames
        W, N, C = self.window, self.N, self.C
        slot = np.where(n == 0, 0, 1 + (n - 1) % (W + 1))  # (B,) frame slot: 0 the sink, then the ring
        write = C + slot[:, None] * N + np.arange(N)[None]  # (B, N) token indices of that slot
        valid = self._valid.copy()
        valid[np.arange(self.batch)[:, None], write] = True
        host = {"slot": slot, "first": n == 0, "pos": n.astype(np.float64),
                "sink_pos": sink_frame(n, W).astype(np.float64), "valid": valid}
        for k, buf in self._plan_buffers.items():
            buf.copy_(torch.from_numpy(np.ascontiguousarray(host[k])))
        self.plan = dict(self._plan_buffers)
        if valid.all() and not self.graph_safe:
            self.plan["valid"] = None
        self._next_valid = valid
        self._any_first = bool((n == 0).any()) or self.graph_safe
        return self.plan

    def advance(self) -> None:
        """Commit the step: every stream has one more frame."""
        self._valid = self._next_valid
        self.frames += 1
        self.plan = None

    def write(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> None:
        """Store this step's keys (rotated at their own frame) and values (B, H, N, d) in its slot.

        A stream at frame 0 also keeps its keys as the sink (rotated at frame 0: spatially only).
        """
        # One index per stream into the buffer seen as frame slots (a view), not one per token: at
        # 64 streams the per-token scatter cost 3 ms a layer.
        slot = self.plan["slot"]
        self._frame_slots(self.k[layer])[self._rows, :, slot] = k.to(self.k.dtype)  # (B, H, N, d)
        self._frame_slots(self.v[layer])[self._rows, :, slot] = v.to(self.v.dtype)
        if self._any_first:
            first = self.plan["first"][:, None, None, None]
            self.sink_k[layer].copy_(torch.where(first, k.to(self.sink_k.dtype), self.sink_k[layer]))

    def _frame_slots(self, buf: torch.Tensor) -> torch.Tensor:
        """One layer's buffer (B, H, L, d) past the context as (B, H, W + 2, N, d) frame slots (a view)."""
        return buf[:, :, self.C :].unflatten(2, (self.window + 2, self.N))

    def visible(self, layer: int, sink: Rotation) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """The whole buffer (B, H, L, d) with the sink turned by `sink` into its slot, and `plan["valid"]`."""
        self.k[layer][:, :, self.C : self.C + self.N] = apply_rotary(self.sink_k[layer], *sink)
        return self.k[layer], self.v[layer], self.plan["valid"]

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


class GradKVCache:
    """Differentiable KV cache for training rollouts (student forcing); a `FrameCache` like `KVCache`.

    The static cache writes in place into preallocated buffers, which autograd cannot
    differentiate through once a slot is overwritten. This one keeps each committed frame's
    keys/values as separate tensors and concatenates the visible ones (context, sink turned
    in time, the last `window` frames, the current frame) on every step, so gradients flow
    from later frames into earlier ones through attention. Only visible keys are concatenated,
    so there is no mask. All streams advance in lockstep (training batches start together);
    frames that leave the window are dropped on `advance`, so memory is bounded by the window.
    `detach()` cuts the graph (long-video segments). Heads are taken from the keys written,
    so under context parallelism it holds this rank's heads without sizing.
    """

    def __init__(self, depth: int, batch: int, window: int, context_tokens: int = 0,
                 device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> None:
        self.depth, self.batch, self.window, self.C = depth, batch, window, context_tokens
        self.device, self._dtype = torch.device(device), dtype
        self.frames = np.zeros(batch, dtype=np.int64)  # frames committed per stream (host), all equal
        self._k: list[list[torch.Tensor]] = [[] for _ in range(depth)]  # the last `window` frames >= 1
        self._v: list[list[torch.Tensor]] = [[] for _ in range(depth)]
        self._sink: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * depth  # frame 0's keys, values
        self._ctx: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * depth
        self._pending: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * depth
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
            self._k[i], self._v[i], self._sink[i] = [], [], None

    def prepare(self) -> dict[str, torch.Tensor | None]:
        """Positions for the coming step (same keys as `KVCache.prepare`)."""
        self._pending = [None] * self.depth
        n = self.frames.astype(np.float64)
        full = lambda x: torch.from_numpy(x).to(self.device)  # noqa: E731
        self.plan = {
            "first": torch.from_numpy(self.frames == 0).to(self.device),
            "pos": full(n),
            "sink_pos": full(sink_frame(n, self.window)),
            "valid": None,  # only visible keys are concatenated, so nothing is masked
        }
        return self.plan

    def write(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> None:
        """This step's keys (rotated at their own frame) and values (B, H, N, d); committed by `advance`."""
        self._pending[layer] = (k.to(self._dtype), v.to(self._dtype))

    def visible(self, layer: int, sink: Rotation) -> tuple[torch.Tensor, torch.Tensor, None]:
        """Context, the sink turned by `sink`, the last `window` past frames and this frame: (B, H, L, d) each."""
        k_now, v_now = self._pending[layer]
        ks, vs = ([self._ctx[layer][0]], [self._ctx[layer][1]]) if self._ctx[layer] is not None else ([], [])
        if self.frames[0] == 0:  # this frame is the sink itself
            return torch.cat(ks + [apply_rotary(k_now, *sink)], 2), torch.cat(vs + [v_now], 2), None
        sink_k, sink_v = self._sink[layer]
        ks += [apply_rotary(sink_k, *sink), *self._k[layer], k_now]
        vs += [sink_v, *self._v[layer], v_now]
        return torch.cat(ks, 2), torch.cat(vs, 2), None

    def set_context(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> None:
        """Context keys/values (B, H, C, d) of one layer."""
        self._ctx[layer] = (k.to(self._dtype), v.to(self._dtype))

    def advance(self) -> None:
        """Commit the step's keys/values: every stream has one more frame."""
        for i in range(self.depth):
            if self.frames[0] == 0:
                self._sink[i] = self._pending[i]
            else:
                # The frame that leaves the window is never attended again: drop it (the one truncation).
                self._k[i] = (self._k[i] + [self._pending[i][0]])[-self.window:]
                self._v[i] = (self._v[i] + [self._pending[i][1]])[-self.window:]
        self.frames += 1
        self.plan = None

    def detach(self) -> None:
        """Cut the autograd graph of everything cached (the previous long-video segment)."""
        for i in range(self.depth):
            self._k[i] = [k.detach() for k in self._k[i]]
            self._v[i] = [v.detach() for v in self._v[i]]
            if self._sink[i] is not None:
                self._sink[i] = (self._sink[i][0].detach(), self._sink[i][1].detach())
