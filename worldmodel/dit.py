"""The block-causal MMDiT world model; the generator and the discriminator share this class.

Per latent frame the input is the channel concat of the noisy latent, the recycled
latent of the previous frame (with `recycle_warp`, first resampled by the step's rotation
from the last two camera channels) and the camera (Plücker) channels. Frames are patchified
into N tokens each; blocks are MMDiT (a video stream plus an optional context stream,
joint attention, adaLN-Zero from the per-frame timestep). Attention is block causal
over frames (attention.py); `forward` runs a whole clip in parallel (training) and
`forward_step` runs one frame per stream against a KV cache (inference). Both paths run the
same blocks (`BlockStack`) with a different `attention.Attend` and one `rope.PositionPlan`.

Scale-out is applied beside the model (worldmodel/parallel/parallelize.py): context
parallelism shards the token stream at the `BlockStack`'s entry and exit with module hooks and
swaps each block's `attention` callable; activation checkpointing hooks each block.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from worldmodel.attention import Attend, ClipAttention, FrameLayout, LocalAttention, StepAttention
from worldmodel.config import DiTConfig
from worldmodel.kv_cache import FrameCache, KVCache
from worldmodel.rope import PositionPlan, Rope3D


def warp_recycled(recycled: torch.Tensor, grid: torch.Tensor, mode: str = "bilinear") -> torch.Tensor:
    """Resample recycled latents (B, F, C, h, w) at grid (B, F, 2, h, w) (`camera.rotation_warp_grid`).

    Outside the previous frame the latent is zero: the model sees plainly what it must fill in.
    """
    B, Fr = recycled.shape[:2]
    g = rearrange(grid.to(recycled.dtype), "b f c h w -> (b f) h w c")
    out = F.grid_sample(recycled.flatten(0, 1), g, mode=mode, padding_mode="zeros", align_corners=False)
    return out.unflatten(0, (B, Fr))


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN: x (B, F, N, D), shift/scale (B, F, D) -> x * (1 + scale) + shift."""
    return torch.addcmul(shift[:, :, None], x, 1 + scale[:, :, None])  # one pass over x, not two


def gated_residual(x: torch.Tensor, gate: torch.Tensor, update: torch.Tensor) -> torch.Tensor:
    """adaLN-Zero's residual: x, update (B, F, N, D), gate (B, F, D) -> x + gate * update, in one pass."""
    return torch.addcmul(x, gate[:, :, None], update)


class TimestepEmbedder(nn.Module):
    """Flow time t in [0, 1] -> sinusoidal features -> MLP."""

    def __init__(self, dim: int, freq_dim: int = 256) -> None:
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        half = self.freq_dim // 2
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
        args = (t.float() * 1000.0)[..., None] * freqs  # (..., half); t scaled so low freqs resolve [0, 1]
        emb = torch.cat([args.cos(), args.sin()], dim=-1)
        return self.mlp(emb.to(self.mlp[0].weight.dtype))


class Mlp(nn.Sequential):
    """Linear -> GELU(tanh) -> Linear."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__(nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, dim))


class HeadRMSNorm(nn.RMSNorm):
    """RMSNorm over a head's dims whose weight follows the input's dtype: under bf16 autocast the
    queries and keys arrive in bf16, and a float32 weight would skip the fused kernel (with a warning)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, self.normalized_shape, self.weight.to(x.dtype), self.eps)


class StreamAttnParams(nn.Module):
    """QKV projection with per-head RMS query/key norm, and the output projection, of one stream."""

    def __init__(self, dim: int, heads: int, qk_norm: bool) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.q_norm = HeadRMSNorm(dim // heads, eps=1e-6) if qk_norm else nn.Identity()
        self.k_norm = HeadRMSNorm(dim // heads, eps=1e-6) if qk_norm else nn.Identity()
        self.out = nn.Linear(dim, dim)

    def qkv_heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, L, D) -> q, k, v each (B, H, L, d)."""
        q, k, v = rearrange(self.qkv(x), "b l (three h d) -> three b h l d", three=3, h=self.heads)
        return self.q_norm(q), self.k_norm(k), v


class MMDiTBlock(nn.Module):
    """Video stream with adaLN-Zero, optional context stream, joint block-causal attention."""

    def __init__(self, cfg: DiTConfig, layer: int = 0) -> None:
        super().__init__()
        D, hidden = cfg.dim, int(cfg.dim * cfg.mlp_ratio)
        self.layer = layer  # index in the stack: which KV-cache layer a cached step writes
        self.norm1 = nn.LayerNorm(D, elementwise_affine=False, eps=1e-6)
        self.attn = StreamAttnParams(D, cfg.heads, cfg.qk_norm)
        self.norm2 = nn.LayerNorm(D, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(D, hidden)
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(D, 6 * D))
        self.has_context = cfg.context_dim > 0
        if self.has_context:
            # The context attends only to itself and is not modulated by t, so at inference
            # its keys/values are computed once per context and cached.
            self.c_norm1 = nn.LayerNorm(D, eps=1e-6)
            self.c_attn = StreamAttnParams(D, cfg.heads, cfg.qk_norm)
            self.c_norm2 = nn.LayerNorm(D, eps=1e-6)
            self.c_mlp = Mlp(D, hidden)
        # Runs an `Attend` on this block's heads; `parallelize` swaps in UlyssesAttention for CP.
        self.attention = LocalAttention()

    def context_qkv(self, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Context tokens (B, C, D) -> q, k, v (B, H, C, d)."""
        return self.c_attn.qkv_heads(self.c_norm1(c))

    def context_out(self, c: torch.Tensor, attn_out: torch.Tensor) -> torch.Tensor:
        """Residual updates of the context stream given its attention output (B, H, C, d)."""
        c = c + self.c_attn.out(rearrange(attn_out, "b h l d -> b l (h d)"))
        return c + self.c_mlp(self.c_norm2(c))

    def forward(
        self, x: torch.Tensor, temb: torch.Tensor, c: torch.Tensor | None, attend: Attend
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x (B, L, D): whole frames, or part of one frame's tokens; temb (B, F, D), one row per frame of x;
        c (B, C, D) or None. Returns the updated (x, c)."""
        B, L, D = x.shape
        Fr = temb.shape[1]
        sh1, sc1, g1, sh2, sc2, g2 = self.ada(temb).chunk(6, dim=-1)  # each (B, F, D)
        h = modulate(self.norm1(x).view(B, Fr, -1, D), sh1, sc1).view(B, L, D)
        q, k, v = self.attn.qkv_heads(h)  # (B, H, L, d)
        ctx = None if c is None else self.context_qkv(c)
        o, oc = self.attention(attend, q, k, v, ctx, self.layer)  # (B, H, L, d), (B, H, C, d) or None
        if c is not None:
            c = self.context_out(c, oc)
        o = self.attn.out(rearrange(o, "b h l d -> b l (h d)").to(x.dtype))
        x = gated_residual(x.view(B, Fr, -1, D), g1, o.view(B, Fr, -1, D))  # (B, F, N, D)
        h = modulate(self.norm2(x), sh2, sc2)
        return gated_residual(x, g2, self.mlp(h)).view(B, L, D), c

    def step(self, x: torch.Tensor, temb: torch.Tensor, attend: Attend) -> torch.Tensor:
        """`forward` for a cached step, called as a method, not as a module: a step writes the KV cache,
        so module hooks (activation checkpointing) must never run it a second time."""
        return self.forward(x, temb, None, attend)[0]


class BlockStack(nn.ModuleList):
    """The transformer blocks, run in order over the token stream (what context parallelism shards)."""

    def forward(
        self, x: torch.Tensor, temb: torch.Tensor, c: torch.Tensor | None, attend: Attend
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x (B, L, D) tokens, temb (B, F, D), c (B, C, D) or None -> (x, c) after every block."""
        for blk in self:
            if attend.writes_cache:
                x = blk.step(x, temb, attend)
            else:
                x, c = blk(x, temb, c, attend)
        return x, c


class FinalLayer(nn.Module):
    """adaLN then a zero-initialised projection to patch velocities."""

    def __init__(self, dim: int, out: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))
        self.linear = nn.Linear(dim, out)

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        """x (B, F, N, D), temb (B, F, D) -> (B, F, N, out)."""
        shift, scale = self.ada(temb).chunk(2, dim=-1)
        return self.linear(modulate(self.norm(x), shift, scale))


class FrameLogitHead(nn.Module):
    """Discriminator head: a learned query attends over each frame's tokens -> one logit per frame."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.query = nn.Parameter(torch.randn(dim) / math.sqrt(dim))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.proj = nn.Sequential(nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, F, N, D) -> (B, F)."""
        x = self.norm(x)
        w = torch.softmax(x @ self.query / math.sqrt(x.shape[-1]), dim=-1)  # (B, F, N)
        pooled = (w[..., None] * x).sum(2)  # (B, F, D)
        return self.proj(pooled)[..., 0]


class WorldDiT(nn.Module):
    """Block-causal camera-conditioned MMDiT; `logit_head=True` makes it a discriminator."""

    def __init__(self, cfg: DiTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        p, C, D = cfg.patch_size, cfg.latent_channels, cfg.dim
        self.latent_proj = nn.Linear(2 * C * p * p, D)
        # Camera channels get their own randomly initialised projection (not zeroed): the
        # paper finds random init adapts to the new input much faster.
        self.camera_proj = nn.Linear(cfg.plucker_channels * p * p, D)
        self.t_embed = TimestepEmbedder(D)
        self.context_proj = nn.Linear(cfg.context_dim, D) if cfg.context_dim else None
        self.blocks = BlockStack(MMDiTBlock(cfg, i) for i in range(cfg.depth))
        self.final = FinalLayer(D, C * p * p)
        self.logit_head = FrameLogitHead(D) if cfg.logit_head else None
        self.rope = Rope3D(cfg.head_dim, cfg.rope_ref_grid, cfg.rope_theta, cfg.rope_temporal_fraction, cfg.temporal_interval)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """DiT init: xavier linears, adaLN-Zero (modulation and output projection start at zero)."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.t_embed.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embed.mlp[2].weight, std=0.02)
        for blk in self.blocks:
            nn.init.zeros_(blk.ada[-1].weight)
            nn.init.zeros_(blk.ada[-1].bias)
        nn.init.zeros_(self.final.ada[-1].weight)
        nn.init.zeros_(self.final.ada[-1].bias)
        nn.init.zeros_(self.final.linear.weight)
        nn.init.zeros_(self.final.linear.bias)

    # ---- shapes -------------------------------------------------------------------------

    def token_grid(self, latent_hw: tuple[int, int]) -> tuple[int, int]:
        """Token rows/cols for a latent grid; raises if it does not divide by the patch size."""
        h, w = latent_hw
        p = self.cfg.patch_size
        if h % p or w % p:
            raise ValueError(f"latent size {h}x{w} is not divisible by patch_size={p}")
        return h // p, w // p

    def _embed(self, noisy: torch.Tensor, recycled: torch.Tensor, camera: torch.Tensor) -> torch.Tensor:
        """(B, F, C, h, w) x2 + (B, F, Cc, h, w) -> tokens (B, F, N, D); recycled already warped (`_warp`)."""
        p = self.cfg.patch_size
        lat = rearrange(torch.cat([noisy, recycled], 2), "b f c (h p) (w q) -> b f (h w) (c p q)", p=p, q=p)
        cam = rearrange(camera, "b f c (h p) (w q) -> b f (h w) (c p q)", p=p, q=p)
        return self.latent_proj(lat) + self.camera_proj(cam.to(lat.dtype))

    def _warp(
        self, noisy: torch.Tensor, recycled: torch.Tensor, camera: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Check shapes; with `recycle_warp`, resample recycled by the grid in camera's last 2 channels.

        Returns (recycled as the model sees it, camera without the grid)."""
        cfg = self.cfg
        for name, x, ch in (("noisy", noisy, cfg.latent_channels), ("recycled", recycled, cfg.latent_channels),
                            ("camera", camera, cfg.camera_channels)):
            if x.ndim != 5 or x.shape[2] != ch:
                raise ValueError(f"{name} has shape {tuple(x.shape)}, expected (B, F, {ch}, h, w)")
        if cfg.recycle_warp:
            return warp_recycled(recycled, camera[:, :, -2:]), camera[:, :, :-2]
        return recycled, camera

    def _unpatchify(self, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        p = self.cfg.patch_size
        return rearrange(x, "b f (h w) (c p q) -> b f c (h p) (w q)", h=grid[0], w=grid[1], p=p, q=p)

    @staticmethod
    def _frame_t(t: torch.Tensor | float, B: int, Fr: int, device: torch.device) -> torch.Tensor:
        if isinstance(t, (int, float)):  # a fill kernel, not a host-to-device copy (CUDA-graph safe)
            return torch.full((B, Fr), float(t), dtype=torch.float32, device=device)
        t = torch.as_tensor(t, dtype=torch.float32, device=device)
        if t.ndim == 0:
            t = t.expand(B)
        if t.ndim == 1:
            t = t[:, None].expand(B, Fr)
        if t.shape != (B, Fr):
            raise ValueError(f"t has shape {tuple(t.shape)}, expected (), (B,) or (B, F) = ({B}, {Fr})")
        return t

    # ---- parallel (training) forward ----------------------------------------------------

    def forward(
        self,
        noisy: torch.Tensor,
        recycled: torch.Tensor,
        camera: torch.Tensor,
        t: torch.Tensor | float,
        context: torch.Tensor | None = None,
        window: int | None = None,
        frame_offset: int = 0,
    ) -> torch.Tensor:
        """Whole clip at once. noisy/recycled (B, F, C, h, w), camera (B, F, Cc, h, w), t (B,) or (B, F).

        Returns the velocity (B, F, C, h, w), or per-frame logits (B, F) with the logit head.
        `window` overrides the config's window (None: the config's). `frame_offset` shifts
        temporal positions (long-video segments).
        """
        B, Fr = noisy.shape[:2]
        grid = self.token_grid(noisy.shape[-2:])
        N = grid[0] * grid[1]
        win = self.cfg.window if window is None else window
        warped, camera = self._warp(noisy, recycled, camera)
        tf = self._frame_t(t, B, Fr, noisy.device)  # (B, F)
        x = self._embed(noisy, warped, camera).flatten(1, 2)  # (B, F*N, D)
        temb = self.t_embed(tf)  # (B, F, D)
        c = self._embed_context(context, B)
        layout = FrameLayout(0 if c is None else c.shape[1], N, Fr, win)
        positions = PositionPlan.clip(self.rope, Fr, grid, win, frame_offset, x.dtype, x.device)
        x, _ = self.blocks(x, temb, c, ClipAttention(layout, positions, self.cfg.attention_backend))
        x = x.view(B, Fr, N, x.shape[-1])  # (B, F, N, D)
        if self.logit_head is not None:
            return self.logit_head(x)
        return self._unpatchify(self.final(x, temb), grid)

    def _embed_context(self, context: torch.Tensor | None, B: int) -> torch.Tensor | None:
        if context is None:
            return None
        if self.context_proj is None:
            raise ValueError("this model has no context stream (context_dim=0) but a context was given")
        if context.ndim != 3 or context.shape[0] != B or context.shape[2] != self.cfg.context_dim:
            raise ValueError(f"context has shape {tuple(context.shape)}, expected ({B}, C, {self.cfg.context_dim})")
        return self.context_proj(context)

    # ---- streaming (inference) ----------------------------------------------------------

    def new_cache(
        self, batch: int, latent_hw: tuple[int, int], window: int | None = None, context_tokens: int = 0,
        device: torch.device | str | None = None, dtype: torch.dtype | None = None, graph_safe: bool = False,
    ) -> KVCache:
        """An empty KV cache sized for this model, a latent grid and a window (None: the config's).

        It holds the heads this process attends over (all of them without context parallelism).
        `graph_safe=True` keeps the attention mask tensor on every step, so `step_prepared` can be
        captured once as a CUDA graph (worldmodel.cuda_graph)."""
        grid = self.token_grid(latent_hw)
        ref = next(self.parameters())
        return KVCache(
            self.cfg.depth, batch, self.blocks[0].attention.local_heads(self.cfg.heads), self.cfg.head_dim,
            grid[0] * grid[1],
            self.cfg.window if window is None else window, context_tokens,
            device=device or ref.device, dtype=dtype or ref.dtype, graph_safe=graph_safe,
        )

    @torch.no_grad()
    def prefill_context(self, cache: FrameCache, context: torch.Tensor) -> None:
        """Run the context stream through every block once and cache its keys/values."""
        c = self._embed_context(context, cache.batch)
        if c.shape[1] != cache.C:
            raise ValueError(f"context has {c.shape[1]} tokens, the cache was made for {cache.C}")
        for blk in self.blocks:
            q, k, v = blk.context_qkv(c)  # (B, H, C, d), the same on every rank
            cache.set_context(blk.layer, *blk.attention.cache_heads(k, v))
            c = blk.context_out(c, F.scaled_dot_product_attention(q, k, v))

    def forward_step(
        self, noisy: torch.Tensor, recycled: torch.Tensor, camera: torch.Tensor, t: torch.Tensor | float,
        cache: FrameCache, advance: bool = True,
    ) -> torch.Tensor:
        """One latent frame per stream. noisy/recycled (B, C, h, w), camera (B, Cc, h, w) -> velocity (B, C, h, w).

        `advance=False` evaluates the frame without committing it (its keys stay in the
        slot and are overwritten by the next call for the same frame): multi-step samplers.
        Host bookkeeping (`cache.prepare`, `cache.advance`) wraps the device work, `step_prepared`.
        """
        cache.prepare()
        out = self.step_prepared(noisy, recycled, camera, t, cache)
        if advance:
            cache.advance()
        return out

    def step_prepared(
        self, noisy: torch.Tensor, recycled: torch.Tensor, camera: torch.Tensor, t: torch.Tensor | float,
        cache: FrameCache,
    ) -> torch.Tensor:
        """The device part of `forward_step` for a cache whose `prepare()` has run: tensor code with
        fixed shapes and no host synchronisation, so a CUDA graph can capture it."""
        B = noisy.shape[0]
        grid = self.token_grid(noisy.shape[-2:])
        warped, cam = self._warp(noisy[:, None], recycled[:, None], camera[:, None])
        x = self._embed(noisy[:, None], warped, cam)[:, 0]  # (B, N, D)
        tf = self._frame_t(t, B, 1, x.device)  # (B, 1)
        temb = self.t_embed(tf)  # (B, 1, D)
        plan = cache.plan
        positions = PositionPlan.step(self.rope, grid, plan["pos"], plan["sink_pos"], x.dtype, cache.dtype)
        x, _ = self.blocks(x, temb, None, StepAttention(cache, positions))
        x = x[:, None]  # (B, 1, N, D)
        if self.logit_head is not None:
            return self.logit_head(x)[:, 0]
        return self._unpatchify(self.final(x, temb), grid)[:, 0]
