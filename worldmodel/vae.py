"""The causal video VAE: 4x temporal, 8x spatial compression, streaming encode and decode.

Layout (read top to bottom): config + registry, building blocks (norm, causal conv,
residual block, up/down sampling), encoder, decoder, the `CausalVAE` wrapper, the
streaming encoder/decoder, and save/load.

Time. A clip of T = 1 + 4k video frames maps to 1 + k latent frames. The first frame is
encoded alone (the user's image must have a latent of its own); every later latent frame
covers 4 video frames. The network runs at the *latent* frame rate: the 4 video frames
of one latent frame are folded into channels at the pixel level ("time-to-channel",
as a temporal patch), and the first frame is padded to a full group by repeating it
(so its group is a still clip). Causal convolutions over latent frames (kernel
`temporal_kernel`, zero-padded on the past side) mix information forward in time only.
The decoder unfolds channels back to 4 frames and drops the 3 padding frames of the
first group. Because every layer is per-frame or causal over latent frames, decoding
latent frame i needs only latents 0..i, and streaming with a fixed-size cache of the
last `temporal_kernel - 1` inputs of each causal conv reproduces the full decode.

Space. Each scale halves H and W (stride-2 conv in the encoder, nearest x2 + conv in the
decoder); `spatial_factor` = 2 ** (number of scales - 1). H and W must divide by it:
other sizes raise ValueError (no implicit padding: the caller crops or resizes).

Latents handed out by `encode` are normalised with stored per-channel `latent_mean` /
`latent_std` (measured on training data after training), so the world model sees about
zero-mean, unit-std latents; `decode` undoes it.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from worldmodel.config import from_registry
from worldmodel.indexing import stream_indices

# ----------------------------------------------------------------------------- config


@dataclass
class VAEConfig:
    """The causal video VAE (encoder, full decoder, lightweight decoder)."""

    name: str = "tiny"
    """Registry name this config came from (informational)."""
    image_channels: int = 3
    """Channels of a video frame (RGB)."""
    latent_channels: int = 16
    """Channels of one latent frame."""
    temporal_factor: int = 4
    """Video frames per latent frame (after the first, which is encoded alone)."""
    spatial_factor: int = 8
    """Spatial downsampling; must equal 2 ** (len(channels) - 1) for every channel list."""
    encoder_channels: list[int] = field(default_factory=lambda: [32, 64, 96, 96])
    """Encoder width per scale, full resolution first."""
    encoder_blocks: int = 1
    """Residual blocks per encoder scale."""
    decoder_channels: list[int] = field(default_factory=lambda: [32, 64, 96, 96])
    """Full decoder width per scale, full resolution first (paper: 128/256/512/512)."""
    decoder_blocks: int = 2
    """Residual blocks per full-decoder scale (paper: 3)."""
    light_decoder_channels: list[int] = field(default_factory=lambda: [16, 32, 64, 96])
    """Lightweight decoder width per scale, full resolution first (paper: 64/128/256/512)."""
    light_decoder_blocks: int = 1
    """Residual blocks per lightweight-decoder scale (paper: 2)."""
    temporal_kernel: int = 2
    """Causal kernel size over latent frames of the first conv of each residual block."""
    logvar_init: float = -6.0
    """Initial posterior log-variance (bias of the encoder's log-variance channels)."""
    logvar_min: float = -30.0
    """Lower clamp of the posterior log-variance (keeps exp() finite)."""
    logvar_max: float = 20.0
    """Upper clamp of the posterior log-variance."""

    def __post_init__(self) -> None:
        for key in ("encoder_channels", "decoder_channels", "light_decoder_channels"):
            chans = list(getattr(self, key))
            setattr(self, key, chans)  # hydra hands ListConfig
            if 2 ** (len(chans) - 1) != self.spatial_factor:
                raise ValueError(
                    f"{key}={chans} gives {2 ** (len(chans) - 1)}x spatial downsampling but "
                    f"spatial_factor={self.spatial_factor}; use {int(math.log2(self.spatial_factor)) + 1} scales"
                )
        if self.temporal_factor < 1 or self.temporal_kernel < 1:
            raise ValueError(
                f"temporal_factor={self.temporal_factor} and temporal_kernel={self.temporal_kernel} must be >= 1"
            )
        if min(self.encoder_blocks, self.decoder_blocks, self.light_decoder_blocks) < 1:
            raise ValueError("encoder_blocks, decoder_blocks and light_decoder_blocks must be >= 1")


_SIZES: dict[str, dict[str, Any]] = {
    # The bundled CPU model at 96x128: the light decoder streams a latent frame in a few ms.
    "tiny": dict(),
    # Paper scale (supplementary E): full decoder 3 blocks x 128/256/512/512, light 2 x 64/128/256/512.
    "paper": dict(
        encoder_channels=[128, 256, 512, 512],
        encoder_blocks=2,
        decoder_channels=[128, 256, 512, 512],
        decoder_blocks=3,
        light_decoder_channels=[64, 128, 256, 512],
        light_decoder_blocks=2,
        temporal_kernel=3,
    ),
}


def vae_config(name: str, **overrides: Any) -> VAEConfig:
    """A fresh VAE config from the registry ('tiny', 'paper'), with field overrides."""
    return from_registry(VAEConfig, _SIZES, name, overrides, kind="VAE")


def vae_sizes() -> list[str]:
    """Names in the VAE registry."""
    return list(_SIZES)


# ----------------------------------------------------------------------------- streaming cache


class FeatureCache:
    """Past-frame buffers of every causal conv, handed out in call order.

    The buffers are allocated on the first step (when the feature sizes are known) and
    then only written in place, so their shapes and storage never change.
    """

    def __init__(self) -> None:
        self.buffers: list[Tensor] = []
        self._next = 0

    def begin_step(self) -> None:
        """Rewind to the first conv; call before each forward pass."""
        self._next = 0

    def get(self, x: Tensor, frames: int) -> Tensor:
        """The buffer for the next causal conv given its input x (B, T, C, H, W)."""
        B, _, C, H, W = x.shape
        if self._next == len(self.buffers):
            self.buffers.append(x.new_zeros(B, frames, C, H, W))
        buf = self.buffers[self._next]
        if buf.shape != (B, frames, C, H, W):
            raise ValueError(
                f"streaming input changed size: cache holds {tuple(buf.shape)}, got features "
                f"{(B, frames, C, H, W)}; call reset() with a new stream for a new size"
            )
        self._next += 1
        return buf

    def reset(self) -> None:
        """Forget the past (zero every buffer in place)."""
        for b in self.buffers:
            b.zero_()
        self._next = 0


# ----------------------------------------------------------------------------- building blocks


def per_frame(fn, x: Tensor) -> Tensor:
    """Apply a 2D op to every frame: (B, T, C, H, W) -> (B, T, C', H', W')."""
    B, T = x.shape[:2]
    return fn(x.flatten(0, 1)).unflatten(0, (B, T))


class ChannelNorm(nn.Module):
    """RMS norm over channels at each pixel: per-frame and per-pixel, so it can never leak the future."""

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:  # (B, T, C, H, W)
        x = x * torch.rsqrt(x.pow(2).mean(dim=2, keepdim=True) + self.eps)
        return x * self.weight[:, None, None] + self.bias[:, None, None]


class CausalConv(nn.Module):
    """3x3 spatial conv over a causal window of `kt` latent frames (current + kt-1 past).

    The window is folded into input channels, ordered oldest frame first, so the op is a
    plain conv2d (fast on CPU) and the full and streaming paths run the same kernel.
    The past before frame 0 is zeros.
    """

    def __init__(self, cin: int, cout: int, kt: int = 1, kernel: int = 3, stride: int = 1) -> None:
        super().__init__()
        self.kt = kt
        self.conv = nn.Conv2d(kt * cin, cout, kernel, stride=stride, padding=kernel // 2)

    def forward(self, x: Tensor, cache: FeatureCache | None = None) -> Tensor:  # (B, T, Cin, H, W)
        if self.kt > 1:
            B, T = x.shape[:2]
            past = x.new_zeros(B, self.kt - 1, *x.shape[2:]) if cache is None else cache.get(x, self.kt - 1)
            padded = torch.cat([past, x], dim=1)  # (B, kt-1+T, Cin, H, W)
            if cache is not None:
                past.copy_(padded[:, -(self.kt - 1):])
            x = torch.cat([padded[:, i : i + T] for i in range(self.kt)], dim=2)  # (B, T, kt*Cin, H, W)
        return per_frame(self.conv, x)  # (B, T, Cout, H', W')


class ResBlock(nn.Module):
    """norm-SiLU-causal conv (temporal kernel kt), norm-SiLU-conv (per frame), plus skip."""

    def __init__(self, cin: int, cout: int, kt: int) -> None:
        super().__init__()
        self.norm1 = ChannelNorm(cin)
        self.conv1 = CausalConv(cin, cout, kt)
        self.norm2 = ChannelNorm(cout)
        self.conv2 = CausalConv(cout, cout, 1)
        self.skip = CausalConv(cin, cout, 1, kernel=1) if cin != cout else None

    def forward(self, x: Tensor, cache: FeatureCache | None = None) -> Tensor:  # (B, T, C, H, W)
        h = self.conv1(F.silu(self.norm1(x)), cache)
        h = self.conv2(F.silu(self.norm2(h)))
        return (x if self.skip is None else self.skip(x)) + h


class Downsample(nn.Module):
    """Halve H and W with a stride-2 3x3 conv (per frame)."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = CausalConv(cin, cout, 1, stride=2)

    def forward(self, x: Tensor) -> Tensor:  # (B, T, C, H, W) -> (B, T, C', H/2, W/2)
        return self.conv(x)


class Upsample(nn.Module):
    """Double H and W: nearest-neighbour x2 then a 3x3 conv (per frame; no checkerboard of transposed convs)."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = CausalConv(cin, cout, 1)

    def forward(self, x: Tensor) -> Tensor:  # (B, T, C, H, W) -> (B, T, C', 2H, 2W)
        return self.conv(per_frame(lambda f: F.interpolate(f, scale_factor=2.0, mode="nearest"), x))


# ----------------------------------------------------------------------------- encoder / decoder


class Encoder(nn.Module):
    """Time-to-channel groups (B, n, tf*3, H, W) -> posterior mean and log-variance (B, n, C, h, w) each."""

    def __init__(self, cfg: VAEConfig) -> None:
        super().__init__()
        ch, kt = cfg.encoder_channels, cfg.temporal_kernel
        self.conv_in = CausalConv(cfg.temporal_factor * cfg.image_channels, ch[0], 1)
        self.blocks = nn.ModuleList()
        self.downs = nn.ModuleList()
        for s, c in enumerate(ch):
            cin = ch[max(s - 1, 0)]
            self.blocks.append(nn.ModuleList(ResBlock(cin if b == 0 else c, c, kt) for b in range(cfg.encoder_blocks)))
            if s < len(ch) - 1:
                self.downs.append(Downsample(c, c))
        self.norm_out = ChannelNorm(ch[-1])
        self.conv_out = CausalConv(ch[-1], 2 * cfg.latent_channels, 1)
        # Start with a small posterior std: with logvar = 0 the sampling noise (std 1) drowns
        # the still-small means and the decoder learns to ignore the latents (seen: collapse).
        nn.init.constant_(self.conv_out.conv.bias[cfg.latent_channels :], cfg.logvar_init)

    def forward(self, x: Tensor, cache: FeatureCache | None = None) -> tuple[Tensor, Tensor]:
        h = self.conv_in(x)  # (B, n, ch0, H, W)
        for s, blocks in enumerate(self.blocks):
            for block in blocks:
                h = block(h, cache)
            if s < len(self.downs):
                h = self.downs[s](h)  # (B, n, c, H/2^(s+1), W/2^(s+1))
        mean, logvar = self.conv_out(F.silu(self.norm_out(h))).chunk(2, dim=2)  # (B, n, C, h, w) each
        return mean, logvar


class Decoder(nn.Module):
    """Latents (B, n, C, h, w) -> time-to-channel groups (B, n, tf*3, H, W). Used for full and light decoders."""

    def __init__(self, cfg: VAEConfig, channels: list[int], blocks: int) -> None:
        super().__init__()
        ch, kt = list(reversed(channels)), cfg.temporal_kernel  # deepest scale first
        self.conv_in = CausalConv(cfg.latent_channels, ch[0], 1)
        self.blocks = nn.ModuleList()
        self.ups = nn.ModuleList()
        for s, c in enumerate(ch):
            cin = ch[max(s - 1, 0)]
            self.blocks.append(nn.ModuleList(ResBlock(cin if b == 0 else c, c, kt) for b in range(blocks)))
            if s < len(ch) - 1:
                self.ups.append(Upsample(c, c))
        self.norm_out = ChannelNorm(ch[-1])
        self.conv_out = CausalConv(ch[-1], cfg.temporal_factor * cfg.image_channels, 1)

    def forward(self, z: Tensor, cache: FeatureCache | None = None) -> Tensor:
        h = self.conv_in(z)  # (B, n, c, h, w)
        for s, blocks in enumerate(self.blocks):
            for block in blocks:
                h = block(h, cache)
            if s < len(self.ups):
                h = self.ups[s](h)  # (B, n, c, 2x, 2x)
        return self.conv_out(F.silu(self.norm_out(h)))  # (B, n, tf*3, H, W)


# ----------------------------------------------------------------------------- the VAE


class CausalVAE(nn.Module):
    """Causal video VAE: `encode` (B, 1+4k, 3, H, W) -> (B, 1+k, C, H/8, W/8) normalised latents; `decode` back."""

    def __init__(self, cfg: VAEConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg, cfg.decoder_channels, cfg.decoder_blocks)
        self.light_decoder = Decoder(cfg, cfg.light_decoder_channels, cfg.light_decoder_blocks)
        # Latent normalisation, measured on training data after training (identity until then).
        self.register_buffer("latent_mean", torch.zeros(cfg.latent_channels))
        self.register_buffer("latent_std", torch.ones(cfg.latent_channels))

    # -- shape checks and time <-> channel folding

    def check_video(self, video: Tensor) -> None:
        """Raise ValueError unless video is (B, 1 + tf*k, 3, H, W) with H, W divisible by spatial_factor."""
        c = self.cfg
        if video.ndim != 5 or video.shape[2] != c.image_channels:
            raise ValueError(f"video has shape {tuple(video.shape)}, expected (B, T, {c.image_channels}, H, W)")
        T, H, W = video.shape[1], video.shape[3], video.shape[4]
        if T < 1 or (T - 1) % c.temporal_factor:
            raise ValueError(
                f"video has T={T} frames, expected 1 + {c.temporal_factor}k (1, {1 + c.temporal_factor}, "
                f"{1 + 2 * c.temporal_factor}, ...); trim the clip"
            )
        self.check_size(H, W)

    def check_size(self, H: int, W: int) -> None:
        """Raise ValueError unless H and W divide by spatial_factor."""
        f = self.cfg.spatial_factor
        if H % f or W % f:
            raise ValueError(
                f"frame size {H}x{W} (HxW) is not divisible by {f}; crop or resize to "
                f"{H // f * f}x{W // f * f} or {-(-H // f) * f}x{-(-W // f) * f}"
            )

    def check_latents(self, z: Tensor) -> None:
        """Raise ValueError unless z is (B, n, latent_channels, h, w)."""
        if z.ndim != 5 or z.shape[2] != self.cfg.latent_channels:
            raise ValueError(
                f"latents have shape {tuple(z.shape)}, expected (B, n, {self.cfg.latent_channels}, h, w)"
            )

    def group_frames(self, video: Tensor) -> Tensor:
        """(B, 1 + tf*k, 3, H, W) -> (B, 1 + k, tf*3, H, W); the first frame is repeated to a full group."""
        tf = self.cfg.temporal_factor
        first = video[:, :1].expand(-1, tf, -1, -1, -1)  # still clip of the first image
        x = torch.cat([first, video[:, 1:]], dim=1)  # (B, tf*(1+k), 3, H, W)
        return x.unflatten(1, (-1, tf)).flatten(2, 3)  # (B, 1+k, tf*3, H, W)

    def ungroup_frames(self, x: Tensor, first: bool = True) -> Tensor:
        """(B, n, tf*3, H, W) -> (B, tf*n, 3, H, W), dropping the tf-1 padding frames if `first` group included."""
        tf = self.cfg.temporal_factor
        video = x.unflatten(2, (tf, -1)).flatten(1, 2)  # (B, n*tf, 3, H, W)
        return video[:, tf - 1 :] if first else video

    # -- posterior

    def encode_posterior(self, video: Tensor, cache: FeatureCache | None = None) -> tuple[Tensor, Tensor]:
        """Un-normalised posterior mean and log-variance (B, 1+k, C, h, w) of a video in [-1, 1]."""
        self.check_video(video)
        mean, logvar = self.encoder(self.group_frames(video), cache)
        return mean, logvar.clamp(self.cfg.logvar_min, self.cfg.logvar_max)

    def normalize(self, z: Tensor) -> Tensor:
        """Raw latents -> about zero-mean, unit-std latents (per channel)."""
        return (z - self.latent_mean[:, None, None]) / self.latent_std[:, None, None]

    def denormalize(self, z: Tensor) -> Tensor:
        """Normalised latents -> raw decoder input."""
        return z * self.latent_std[:, None, None] + self.latent_mean[:, None, None]

    def encode(self, video: Tensor) -> Tensor:
        """(B, 1+4k, 3, H, W) in [-1, 1] -> normalised latents (B, 1+k, C, H/8, W/8) (posterior mean)."""
        mean, _ = self.encode_posterior(video)
        return self.normalize(mean)

    def decode_raw(self, z: Tensor, light: bool = False) -> Tensor:
        """Un-normalised latents (B, n, C, h, w) -> unclamped video (B, 1+tf*(n-1), 3, H, W) (training path)."""
        self.check_latents(z)
        return self.ungroup_frames((self.light_decoder if light else self.decoder)(z))

    def decode(self, latents: Tensor, light: bool = False) -> Tensor:
        """Normalised latents (B, 1+k, C, h, w) -> video (B, 1+4k, 3, 8h, 8w) clamped to [-1, 1]."""
        self.check_latents(latents)
        return self.decode_raw(self.denormalize(latents), light).clamp(-1.0, 1.0)

    def set_latent_stats(self, mean: Tensor, std: Tensor) -> None:
        """Store per-channel latent statistics (C,) measured on training data."""
        if mean.shape != (self.cfg.latent_channels,) or std.shape != (self.cfg.latent_channels,):
            raise ValueError(f"latent stats must be ({self.cfg.latent_channels},), got {tuple(mean.shape)}, {tuple(std.shape)}")
        if not (std > 0).all():
            raise ValueError(f"latent std must be > 0, got {std.tolist()}")
        self.latent_mean.copy_(mean)
        self.latent_std.copy_(std)

    # -- streaming

    def stream_decoder(self, batch_size: int, light: bool = True) -> StreamDecoder:
        """A frame-by-frame decoder: step((B, C, h, w) latent) -> (B, 1 or 4, 3, H, W) frames."""
        return StreamDecoder(self, batch_size, light)

    def stream_encoder(self, batch_size: int) -> StreamEncoder:
        """A frame-group-by-group encoder: step((B, 1 or 4, 3, H, W) frames) -> (B, C, h, w) latent."""
        return StreamEncoder(self, batch_size)


@dataclass
class DecoderState:
    """A copy of a `StreamDecoder`'s cache (one tensor per causal conv) and its step count."""

    buffers: list[Tensor]
    """Past-frame features of every causal conv, (B, frames, C, H, W) each."""
    t: int
    """Latent frames decoded since reset."""


class StreamDecoder:
    """Decodes one latent frame per `step`, exactly as `CausalVAE.decode` would, with a fixed-shape cache."""

    def __init__(self, vae: CausalVAE, batch_size: int, light: bool = True) -> None:
        self.vae, self.batch_size, self.light = vae, batch_size, light
        self.cache = FeatureCache()
        self.t = 0  # latent frames decoded since reset

    def reset(self) -> None:
        """Start a new video (zero the cache in place)."""
        self.cache.reset()
        self.t = 0

    def snapshot(self) -> DecoderState:
        """A copy of where every stream's decode stands, to `restore` after decoding a what-if latent."""
        return DecoderState([b.clone() for b in self.cache.buffers], self.t)

    def restore(self, state: DecoderState, streams: Sequence[int] | None = None) -> None:
        """Put the cache back to `state` in place (its buffers never move).

        With `streams`, only those rows are set, from a state of a decoder with one row per named
        stream (e.g. a lone decoder that decoded their first latents); the step count stays.
        """
        if len(state.buffers) != len(self.cache.buffers):
            raise ValueError(f"decoder state holds {len(state.buffers)} cache buffers, this decoder has "
                             f"{len(self.cache.buffers)}; restore only a snapshot of the same decoder after a step")
        idx = slice(None) if streams is None else stream_indices(streams, self.batch_size)
        for mine, saved in zip(self.cache.buffers, state.buffers, strict=True):
            want = mine[idx].shape
            if saved.shape != want:
                raise ValueError(f"decoder state buffer has shape {tuple(saved.shape)}, expected {tuple(want)}")
            mine[idx] = saved
        if streams is None:
            self.t = state.t

    @torch.no_grad()
    def step(self, latent: Tensor) -> Tensor:
        """Normalised latent (B, C, h, w) -> frames (B, n, 3, H, W), n = 1 on the first step, else temporal_factor."""
        if latent.ndim != 4 or latent.shape[0] != self.batch_size:
            raise ValueError(
                f"latent has shape {tuple(latent.shape)}, expected ({self.batch_size}, "
                f"{self.vae.cfg.latent_channels}, h, w) (one latent frame per step)"
            )
        z = self.vae.denormalize(latent[:, None])  # (B, 1, C, h, w)
        self.vae.check_latents(z)
        self.cache.begin_step()
        dec = self.vae.light_decoder if self.light else self.vae.decoder
        frames = self.vae.ungroup_frames(dec(z, self.cache), first=self.t == 0)  # (B, n, 3, H, W)
        self.t += 1
        return frames.clamp(-1.0, 1.0)


class StreamEncoder:
    """Encodes the first frame, then one group of temporal_factor frames per `step`, like `CausalVAE.encode`."""

    def __init__(self, vae: CausalVAE, batch_size: int) -> None:
        self.vae, self.batch_size = vae, batch_size
        self.cache = FeatureCache()
        self.t = 0

    def reset(self) -> None:
        """Start a new video (zero the cache in place)."""
        self.cache.reset()
        self.t = 0

    @torch.no_grad()
    def step(self, frames: Tensor) -> Tensor:
        """Frames (B, n, 3, H, W) (n = 1 on the first step, else temporal_factor) -> normalised latent (B, C, h, w)."""
        n = 1 if self.t == 0 else self.vae.cfg.temporal_factor
        if frames.ndim != 5 or frames.shape[0] != self.batch_size or frames.shape[1] != n:
            raise ValueError(
                f"frames have shape {tuple(frames.shape)}, expected ({self.batch_size}, {n}, 3, H, W) "
                f"on step {self.t} (1 frame first, then {self.vae.cfg.temporal_factor} per step)"
            )
        # A later group is laid out as frames 1.. of a clip; prepend a stand-in first frame and keep the last group.
        video = frames if self.t == 0 else torch.cat([frames[:, :1], frames], dim=1)
        self.vae.check_video(video)
        groups = self.vae.group_frames(video)[:, -1:]  # (B, 1, tf*3, H, W)
        self.cache.begin_step()
        mean, _ = self.vae.encoder(groups, self.cache)  # (B, 1, C, h, w)
        self.t += 1
        return self.vae.normalize(mean[:, 0])


# ----------------------------------------------------------------------------- save / load


def save_vae(path: str | Path, vae: CausalVAE, extra_meta: dict[str, Any] | None = None) -> None:
    """Write the VAE (weights + latent stats) and its config to a safetensors checkpoint."""
    from worldmodel.checkpoint import save_checkpoint

    meta = {"kind": "vae", "vae_config": dataclasses.asdict(vae.cfg), **(extra_meta or {})}
    save_checkpoint(path, dict(vae.state_dict()), meta)


def load_vae(path: str | Path, device: str | torch.device = "cpu") -> CausalVAE:
    """Rebuild a VAE from a `save_vae` file; raises CheckpointError naming the file if it is not one."""
    from worldmodel.checkpoint import config_from_meta, load_meta, load_modules

    cfg = config_from_meta(load_meta(path), "vae_config", VAEConfig, path, kind="VAE file")
    return load_modules(path, {"": lambda: CausalVAE(cfg)}, device)[0][""].eval()
