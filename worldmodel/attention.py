"""Block-causal attention over latent frames, behind one interface with several backends.

Token layout of a parallel (training) forward, as queries and keys:

    queries: [context (C) | frame 0 | frame 1 | ... | frame F-1]          (N tokens per frame)
    keys:    [context (C) | frame 0 | ... | frame F-1 | sink copies (S frames)]

Rules (`FrameLayout.allowed`):
- context tokens attend only to context tokens;
- frame n attends to the context, to itself and earlier frames, limited to the sliding
  window of the last `window` frames plus the first frame (the sink);
- the sink's temporal distance is capped at `window + 1`, the largest distance the
  window itself can produce, so no query ever sees a position outside the trained
  range (`rope.sink_frame`). A cap that depends on the query cannot be expressed by
  RoPE on one key, so each frame n > window + 1 gets its own copy of the first frame's
  keys, turned for that query (`ClipAttention` builds them; the layout only says who
  sees which copy). The cached step reproduces exactly this by turning its sink each step.

Backends: "sdpa" (explicit boolean mask; the reference), "flex" (FlexAttention block
mask; compiled on CUDA, eager on CPU), "flash" (flash-attn, one call per query frame,
CUDA only). "auto" picks flash > flex on CUDA and sdpa on CPU.

How a block attends: it hands its heads to its `attention` callable together with the
forward's `Attend` object, `ClipAttention` (a whole clip: RoPE, sink copies, the joint
context, block-causal attention) or `StepAttention` (one frame per stream against a
`FrameCache`). Both take their angles from one `rope.PositionPlan`. The callable is
`LocalAttention` (every head here) unless `worldmodel.parallel.parallelize` injects
`UlyssesAttention`, which runs the same `Attend` on this rank's heads of the whole sequence.
"""

from __future__ import annotations

import functools
import importlib.util
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Protocol

import torch
import torch.nn.functional as F

from worldmodel.rope import PositionPlan, apply_rotary

if TYPE_CHECKING:
    from worldmodel.kv_cache import FrameCache

BACKENDS = ("auto", "sdpa", "flex", "flash")
QKV = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class FrameLayout:
    """Shape of a block-causal sequence: context prefix, F frames of N tokens, window."""

    context: int
    frame_tokens: int
    frames: int
    window: int
    """Past frames each frame sees besides the sink; `window >= frames - 1` means all of them."""

    @property
    def sink_copies(self) -> int:
        """Number of query frames (n > window + 1) that need their own re-rotated sink keys."""
        return max(0, self.frames - (self.window + 2))

    @property
    def first_copy_frame(self) -> int:
        """Query frame served by sink copy 0."""
        return self.window + 2

    @property
    def q_len(self) -> int:
        return self.context + self.frames * self.frame_tokens

    @property
    def kv_len(self) -> int:
        return self.q_len + self.sink_copies * self.frame_tokens

    def allowed(self, q_idx: torch.Tensor, kv_idx: torch.Tensor) -> torch.Tensor:
        """Boolean mask for query/key token indices (broadcasting; usable as a flex mask_mod)."""
        C, N = self.context, self.frame_tokens
        q_ctx = q_idx < C
        qf = (q_idx - C) // N  # query frame (garbage for context queries, masked below)
        kv_ctx = kv_idx < C
        kv_frame = (kv_idx >= C) & (kv_idx < self.q_len)
        kf = (kv_idx - C) // N
        causal = kv_frame & (kf <= qf)
        W = self.window
        in_window = kf >= qf - W
        # Until the window slides past it, the first frame is an ordinary past frame.
        sink_direct = (kf == 0) & (qf <= W + 1)
        copy = (kv_idx >= self.q_len) & ((kv_idx - self.q_len) // N + self.first_copy_frame == qf)
        video = (causal & (in_window | sink_direct)) | copy
        return torch.where(q_ctx, kv_ctx, kv_ctx | video)

    def dense_mask(self, device: torch.device | str = "cpu") -> torch.Tensor:
        """(q_len, kv_len) boolean mask."""
        q = torch.arange(self.q_len, device=device)[:, None]
        k = torch.arange(self.kv_len, device=device)[None, :]
        return self.allowed(q, k)


def flash_available() -> bool:
    """flash-attn installed and a CUDA device present."""
    return torch.cuda.is_available() and importlib.util.find_spec("flash_attn") is not None


def resolve_backend(name: str, device: torch.device) -> str:
    """Turn 'auto' into a concrete backend for this device; check explicit choices."""
    if name not in BACKENDS:
        raise ValueError(f"attention backend {name!r}; expected one of {BACKENDS}")
    if name == "auto":
        if device.type == "cuda":
            return "flash" if flash_available() else "flex"
        return "sdpa"
    if name == "flash" and not (device.type == "cuda" and flash_available()):
        raise ValueError("attention backend 'flash' needs CUDA and the flash-attn package (pip install '.[cuda]')")
    return name


def sdpa_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: FrameLayout) -> torch.Tensor:
    """Reference: SDPA with an explicit (q_len, kv_len) boolean mask. q (B,H,Lq,d), k/v (B,H,Lk,d)."""
    mask = _dense_mask_cached(layout, q.device)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


@functools.lru_cache(maxsize=32)
def _dense_mask_cached(layout: FrameLayout, device: torch.device) -> torch.Tensor:
    return layout.dense_mask(device)


@functools.lru_cache(maxsize=32)
def _block_mask_cached(layout: FrameLayout, device: torch.device):
    from torch.nn.attention.flex_attention import create_block_mask

    def mask_mod(b, h, q_idx, kv_idx):
        return layout.allowed(q_idx, kv_idx)

    return create_block_mask(mask_mod, None, None, layout.q_len, layout.kv_len, device=device)


@functools.lru_cache(maxsize=1)
def _compiled_flex():
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False)


def flex_attention_blockcausal(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: FrameLayout) -> torch.Tensor:
    """FlexAttention with a block mask built from the same rule as the SDPA reference."""
    from torch.nn.attention.flex_attention import flex_attention

    block_mask = _block_mask_cached(layout, q.device)
    if q.device.type == "cuda":
        return _compiled_flex()(q, k, v, block_mask=block_mask)
    with warnings.catch_warnings():  # eager CPU flex materialises scores; fine for CPU sizes
        warnings.filterwarnings("ignore", message=".*flex_attention called without torch.compile.*")
        return flex_attention(q, k, v, block_mask=block_mask)


def flash_attention_blockcausal(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: FrameLayout) -> torch.Tensor:
    """flash-attn in a loop over query frames (as in the paper), each over its visible key ranges."""
    from flash_attn import flash_attn_func  # type: ignore[import-not-found]

    C, N = layout.context, layout.frame_tokens
    qt, kt, vt = (x.transpose(1, 2) for x in (q, k, v))  # (B, L, H, d) for flash-attn
    outs = []
    if C:
        outs.append(flash_attn_func(qt[:, :C], kt[:, :C], vt[:, :C]))
    for n in range(layout.frames):
        ranges = _visible_ranges(layout, n)
        ks = torch.cat([kt[:, a:b] for a, b in ranges], dim=1)
        vs = torch.cat([vt[:, a:b] for a, b in ranges], dim=1)
        outs.append(flash_attn_func(qt[:, C + n * N : C + (n + 1) * N], ks, vs))
    return torch.cat(outs, dim=1).transpose(1, 2)


def _visible_ranges(layout: FrameLayout, n: int) -> list[tuple[int, int]]:
    """Contiguous key ranges visible to query frame n (same rule as `allowed`)."""
    C, N, W = layout.context, layout.frame_tokens, layout.window
    ranges = [(0, C)] if C else []
    if n <= W + 1:
        return ranges + [(C, C + (n + 1) * N)]
    j = n - layout.first_copy_frame
    copy = (layout.q_len + j * N, layout.q_len + (j + 1) * N)
    return ranges + [copy, (C + (n - W) * N, C + (n + 1) * N)]


def block_causal_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: FrameLayout, backend: str = "auto"
) -> torch.Tensor:
    """Attention for a whole block-causal sequence: q (B,H,Lq,d), k/v (B,H,Lk,d) -> (B,H,Lq,d)."""
    if q.shape[-2] != layout.q_len or k.shape[-2] != layout.kv_len:
        raise ValueError(
            f"attention got {q.shape[-2]} queries / {k.shape[-2]} keys, layout expects {layout.q_len} / {layout.kv_len}"
        )
    name = resolve_backend(backend, q.device)
    if name == "flash":
        return flash_attention_blockcausal(q, k, v, layout)
    if name == "flex":
        return flex_attention_blockcausal(q, k, v, layout)
    return sdpa_attention(q, k, v, layout)


def cached_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
    """One frame's queries against a static KV buffer: q (B,H,N,d), k/v (B,H,Lk,d), valid (B,Lk) or None.

    Runs in the buffer's dtype even under autocast: on CPU, bf16 SDPA at these shapes (48 queries per
    stream, 480 keys) was slower than float32 (197 vs 125 ms of a 64-stream step), so a bf16-autocast
    step keeps a float32 cache and attends in float32."""
    mask = None if valid is None else valid[:, None, None, :]
    with torch.autocast(q.device.type, enabled=False):
        return F.scaled_dot_product_attention(q.to(k.dtype), k, v, attn_mask=mask)


# ---- how one forward attends ---------------------------------------------------------------


class Attend(Protocol):
    """One forward's attention over whole-sequence heads: q, k, v (B, h, L, d) + context q, k, v or None
    -> (video output (B, h, L, d), context output (B, h, C, d) or None)."""

    writes_cache: ClassVar[bool]
    """True when attending writes a KV cache (a step that must never be recomputed)."""

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, ctx: QKV | None,
                 layer: int) -> tuple[torch.Tensor, torch.Tensor | None]: ...


@dataclass(frozen=True)
class ClipAttention:
    """A whole clip at once (training): RoPE, the sink's copies, the joint context, block-causal attention."""

    layout: FrameLayout
    """The clip's frames, window and context length."""
    positions: PositionPlan
    """Angles of every token (F*N) and the sink's turn per query frame (F)."""
    backend: str = "auto"
    """Attention backend (`BACKENDS`)."""
    writes_cache: ClassVar[bool] = False

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, ctx: QKV | None,
                 layer: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """q, k, v (B, h, F*N, d) of every frame; ctx (B, h, C, d) each or None."""
        lay = self.layout
        q, k = apply_rotary(q, *self.positions.qk), apply_rotary(k, *self.positions.qk)
        if lay.sink_copies:  # frame 0's keys, turned once for each query frame past window + 1
            N, S = lay.frame_tokens, lay.sink_copies
            cos, sin = (z[lay.first_copy_frame :] for z in self.positions.sink)  # (S, 1, P)
            k = torch.cat([k, apply_rotary(k[:, :, None, :N], cos, sin).flatten(2, 3)], dim=2)  # + (B, h, S*N, d)
            v = torch.cat([v, v[:, :, :N].repeat(1, 1, S, 1)], dim=2)
        if ctx is not None:
            q, k, v = (torch.cat([c, z], 2) for c, z in zip(ctx, (q, k, v)))
        o = block_causal_attention(q, k, v, lay, self.backend)  # (B, h, C + F*N, d)
        C = lay.context
        return o[:, :, C:], (o[:, :, :C] if ctx is not None else None)


@dataclass(frozen=True)
class StepAttention:
    """One frame per stream against a KV cache (inference, student forcing)."""

    cache: FrameCache
    """The cache, already `prepare()`d for this step."""
    positions: PositionPlan
    """Angles of this frame's tokens per stream and the sink's turn per stream."""
    writes_cache: ClassVar[bool] = True

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, ctx: QKV | None,
                 layer: int) -> tuple[torch.Tensor, None]:
        """q, k, v (B, h, N, d) of this frame; the context, if any, is already in the cache."""
        self.cache.write(layer, apply_rotary(k, *self.positions.qk), v)
        keys, values, valid = self.cache.visible(layer, self.positions.sink)
        return cached_attention(apply_rotary(q, *self.positions.qk).to(keys.dtype), keys, values, valid), None


class LocalAttention:
    """Every head on this process: a block's attention callable unless `parallelize` injects another."""

    def __call__(self, attend: Attend, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, ctx: QKV | None,
                 layer: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Run `attend` on q, k, v (B, H, L, d) as they are."""
        return attend(q, k, v, ctx, layer)

    def local_heads(self, heads: int) -> int:
        """Heads this process attends over (and its KV cache holds)."""
        return heads

    def cache_heads(self, *xs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """This process's heads of replicated (B, H, C, d) tensors, for its KV cache."""
        return xs
