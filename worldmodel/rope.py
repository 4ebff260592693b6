"""3D rotary position embedding: time, rows, cols.

- Spatial positions are stretched onto a fixed reference grid, so a token at the centre
  of a 13x23 grid and one at the centre of a 26x46 grid get the same angle: one model
  serves several resolutions.
- Temporal positions are `frame_index * temporal_interval`, computed on the fly in
  float64 (no table that can run out; angles stay precise for billions of frames).
- Each head's dims are split into three disjoint groups of rotation pairs (time, rows,
  cols). Rotations on disjoint pairs commute and angles add, so a key rotated at its own
  frame can be moved to another frame by a temporal rotation alone.
- The sink rule (the trained range) lives here once: `sink_frame` says where the first
  frame's keys sit for a query, and `PositionPlan` turns it into the angles that both the
  parallel (training) and the cached (streaming) attention apply.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import torch

Frames = TypeVar("Frames", np.ndarray, torch.Tensor)


def split_dims(head_dim: int, temporal_fraction: float) -> tuple[int, int, int]:
    """Rotation pairs per axis (time, rows, cols) for a head of `head_dim` dims."""
    pairs = head_dim // 2
    t = max(1, round(pairs * temporal_fraction))
    rows = (pairs - t) // 2
    return t, rows, pairs - t - rows


class Rope3D:
    """Angles for (frame, row, col) positions; no learned state, no length limit."""

    def __init__(
        self,
        head_dim: int,
        ref_grid: tuple[int, int],
        theta: float = 10000.0,
        temporal_fraction: float = 0.25,
        temporal_interval: float = 1.0,
    ) -> None:
        self.pairs = head_dim // 2
        self.t_pairs, self.h_pairs, self.w_pairs = split_dims(head_dim, temporal_fraction)
        self.ref_grid = ref_grid
        self.temporal_interval = temporal_interval

        # Host tables, whatever default device is active: a model built under `with torch.device("cuda")`
        # must still mix them with the host-built spatial angles (each is moved to the tokens' device).
        def freqs(n: int) -> torch.Tensor:
            return theta ** (-torch.arange(n, dtype=torch.float64, device="cpu") / max(n, 1))

        self.f_t, self.f_h, self.f_w = freqs(self.t_pairs), freqs(self.h_pairs), freqs(self.w_pairs)
        self._spatial: dict[tuple, torch.Tensor] = {}
        self._f_t: dict[str, torch.Tensor] = {}

    def spatial_angles(self, grid: tuple[int, int], device: torch.device | str = "cpu") -> torch.Tensor:
        """(h*w, pairs) float64 angles of a token grid, zero on the temporal pairs (memoised per grid and
        device: no host-to-device copy after the first call, as a captured CUDA graph requires)."""
        key = (tuple(grid), str(torch.device(device)))
        if key not in self._spatial:
            self._spatial[key] = self._spatial_angles(grid).to(device)
        return self._spatial[key]

    def _spatial_angles(self, grid: tuple[int, int]) -> torch.Tensor:
        h, w = grid
        rh, rw = self.ref_grid
        ys = (torch.arange(h, dtype=torch.float64, device="cpu") + 0.5) * (rh / h)  # stretched to the reference grid
        xs = (torch.arange(w, dtype=torch.float64, device="cpu") + 0.5) * (rw / w)
        a_h = (ys[:, None] * self.f_h[None]).repeat_interleave(w, 0)  # (h*w, h_pairs)
        a_w = (xs[:, None] * self.f_w[None]).repeat(h, 1)  # (h*w, w_pairs)
        a_t = torch.zeros(h * w, self.t_pairs, dtype=torch.float64, device="cpu")
        return torch.cat([a_t, a_h, a_w], dim=1)

    def temporal_angles(self, frames: torch.Tensor) -> torch.Tensor:
        """(..., pairs) float64 angles for frame indices (...,), zero on the spatial pairs."""
        pos = frames.to(torch.float64) * self.temporal_interval
        key = str(pos.device)
        if key not in self._f_t:
            self._f_t[key] = self.f_t.to(pos.device)
        a_t = pos[..., None] * self._f_t[key]
        zeros = torch.zeros(*pos.shape, self.h_pairs + self.w_pairs, dtype=torch.float64, device=pos.device)
        return torch.cat([a_t, zeros], dim=-1)

    def video_angles(self, frames: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """(F*h*w, pairs) angles for frames (F,) x grid, frame-major token order."""
        sp = self.spatial_angles(grid, frames.device)  # (N, P)
        tm = self.temporal_angles(frames)  # (F, P)
        return (tm[:, None, :] + sp[None]).reshape(-1, self.pairs)


def cos_sin(angles: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin of float64 angles, reduced mod 2*pi first so large positions keep precision."""
    a = torch.remainder(angles, 2 * math.pi)
    return a.cos().to(dtype), a.sin().to(dtype)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate consecutive pairs of the last dim: x (..., L, D), cos/sin broadcastable to (..., L, D/2).

    Each pair is a complex number times e^(i angle): one complex multiply, where four real products
    and a stack of strided halves cost far more on CPU (0.24 against 8.5 ms for a 64-stream step's
    queries, 1 thread). Complex tensors have no bfloat16, so it runs in float32 and returns x's dtype.
    """
    pairs = torch.view_as_complex(x.float().unflatten(-1, (-1, 2)).contiguous())  # (..., L, D/2)
    return torch.view_as_real(pairs * torch.complex(cos.float(), sin.float())).flatten(-2).type_as(x)


def sink_frame(query_frame: Frames, window: int) -> Frames:
    """Frame (counted from the first) at which a query at `query_frame` sees the first-frame sink.

    The window itself puts keys at most `window` frames behind the query; the sink is kept at most
    `window + 1` behind, so no query ever sees a temporal distance it was not trained on, however
    long the rollout. Works elementwise on numpy arrays (cache bookkeeping) and tensors.
    """
    return (query_frame - (window + 1)).clip(min=0)


@dataclass(frozen=True)
class PositionPlan:
    """The rotary angles of one forward, for the parallel and the cached path alike.

    Queries and keys rotate at their own frame (`qk`). The sink is frame 0's keys, already
    rotated at frame 0, turned further by the temporal rotation `sink` so that it sits at
    `sink_frame(n, window)` for query frame n: the one place the trained-range rule is applied.
    """

    qk: tuple[torch.Tensor, torch.Tensor]
    """cos, sin of queries' and keys' angles: (F*N, P) for a clip, (B, 1, N, P) for a cached step."""
    sink: tuple[torch.Tensor, torch.Tensor]
    """cos, sin of the sink's extra temporal rotation: (F, 1, P), one per query frame of a clip;
    (B, 1, 1, P), one per stream of a cached step."""

    @classmethod
    def clip(cls, rope: Rope3D, frames: int, grid: tuple[int, int], window: int, frame_offset: int,
             dtype: torch.dtype, device: torch.device) -> PositionPlan:
        """A whole clip of `frames` frames whose first frame sits at `frame_offset` (long-video segments)."""
        n = torch.arange(frames, device=device)
        qk = cos_sin(rope.video_angles(n + frame_offset, grid), dtype)  # (F*N, P)
        sink = cos_sin(rope.temporal_angles(sink_frame(n, window))[:, None], dtype)  # (F, 1, P)
        return cls(qk, sink)

    @classmethod
    def step(cls, rope: Rope3D, grid: tuple[int, int], frame: torch.Tensor, sink_at: torch.Tensor,
             dtype: torch.dtype, sink_dtype: torch.dtype) -> PositionPlan:
        """One frame per stream: stream b's frame index `frame[b]`, its sink at `sink_at[b]` (= sink_frame)."""
        sp = rope.spatial_angles(grid, frame.device)  # (N, P)
        qk = cos_sin(rope.temporal_angles(frame)[:, None, None] + sp, dtype)  # (B, 1, N, P)
        sink = cos_sin(rope.temporal_angles(sink_at)[:, None, None], sink_dtype)  # (B, 1, 1, P)
        return cls(qk, sink)
