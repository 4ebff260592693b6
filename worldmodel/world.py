"""The learned world as one object: transformer + VAE + camera statistics + intrinsics.

A world file is a single safetensors checkpoint holding `dit.*`, `vae.*` and optional
`start_frames` (uint8 (S, H, W, 3)), with metadata: the two configs, camera stats,
`image_hw`, `intrinsics` (fx, fy, cx, cy at image_hw), per-component action bounds and
a free-form model card, and optionally how generated latents are blended with the
reprojected past (`reprojection`, see `worldmodel.reproject`; None: the network alone).

    world = World.load("checkpoints/world_tiny.safetensors")
    streams = world.streams(batch=4, seeds=[0, 1, 2, 3])
    frames = streams.reset(images)           # (B, H, W, 3) uint8 -> (B, fps, H, W, 3)
    frames = streams.step(actions)           # (B, 6) -> (B, fps, H, W, 3) uint8

Every step is one transformer evaluation and one streaming VAE decode for the whole batch.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from worldmodel.checkpoint import (
    CheckpointError,
    load_checkpoint,
    load_state_strict,
    save_world_model,
    subset,
)
from worldmodel.config import CameraStats, DiTConfig, config_from_dict
from worldmodel.dit import WorldDiT
from worldmodel.generator import StreamingGenerator
from worldmodel.reproject import ReprojectionConfig
from worldmodel.vae import CausalVAE, StreamDecoder, VAEConfig

BUNDLED = Path(__file__).parent / "assets" / "world_tiny.safetensors"


@dataclass
class WorldMeta:
    """What a world file says besides its weights."""

    image_hw: tuple[int, int]
    intrinsics: list[float]
    action_low: list[float] = field(default_factory=lambda: [-1.0] * 6)
    action_high: list[float] = field(default_factory=lambda: [1.0] * 6)
    card: dict[str, Any] = field(default_factory=dict)
    reprojection: ReprojectionConfig | None = None


def images_to_video(images: np.ndarray, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """uint8 (B, H, W, 3) -> float (B, 1, 3, H, W) in [-1, 1]."""
    x = torch.as_tensor(np.ascontiguousarray(images), device=device)
    return (x.permute(0, 3, 1, 2).to(dtype) / 127.5 - 1.0)[:, None]


def video_to_uint8(video: torch.Tensor) -> np.ndarray:
    """float (B, T, 3, H, W) in [-1, 1] -> uint8 (B, T, H, W, 3)."""
    x = ((video.float().clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8)
    return x.permute(0, 1, 3, 4, 2).cpu().numpy()


class World:
    """A loaded learned world: build streams from it, or save it."""

    def __init__(
        self,
        dit: WorldDiT,
        vae: CausalVAE,
        meta: WorldMeta,
        camera_stats: CameraStats | None = None,
        start_frames: np.ndarray | None = None,
        light_decoder: bool = True,
    ) -> None:
        self.dit, self.vae = dit.eval(), vae.eval()
        self.cfg: DiTConfig = dit.cfg
        self.meta = meta
        self.camera_stats = camera_stats or CameraStats()
        self.start_frames = start_frames
        self.light_decoder = light_decoder
        H, W = meta.image_hw
        f = vae.cfg.spatial_factor
        vae.check_size(H, W)
        self.latent_hw = (H // f, W // f)
        if vae.cfg.latent_channels != self.cfg.latent_channels or vae.cfg.temporal_factor != self.cfg.frames_per_step:
            raise ValueError(
                f"VAE ({vae.cfg.latent_channels} channels, {vae.cfg.temporal_factor}x time) does not match the "
                f"transformer ({self.cfg.latent_channels} channels, {self.cfg.frames_per_step} frames per step)"
            )

    @property
    def device(self) -> torch.device:
        return next(self.dit.parameters()).device

    @property
    def frames_per_step(self) -> int:
        return self.cfg.frames_per_step

    # ---- files ------------------------------------------------------------------------

    @classmethod
    def load(cls, path: str | Path | None = None, device: str | torch.device = "cpu") -> World:
        """Load a world file (default: the bundled world); errors name the file and the problem."""
        path = Path(path) if path is not None else BUNDLED
        if path == BUNDLED and not path.exists():
            raise CheckpointError(f"the bundled world {path} is missing; pass checkpoint=PATH to a world file")
        tensors, meta = load_checkpoint(path, device)
        for key in ("dit_config", "vae_config", "image_hw", "intrinsics"):
            if key not in meta:
                raise CheckpointError(f"checkpoint {path} lacks '{key}' in its metadata; not a world file")
        try:
            cfg = config_from_dict(meta["dit_config"])
            vcfg = VAEConfig(**meta["vae_config"])
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointError(f"checkpoint {path} has an invalid config: {e}") from e
        dit, vae = WorldDiT(cfg).to(device), CausalVAE(vcfg).to(device)
        load_state_strict(dit, subset(tensors, "dit"), path)
        load_state_strict(vae, subset(tensors, "vae"), path)
        stats = CameraStats(**meta["camera_stats"]) if meta.get("camera_stats") else None
        wm = WorldMeta(
            image_hw=tuple(meta["image_hw"]),
            intrinsics=list(meta["intrinsics"]),
            action_low=list(meta.get("action_low", [-1.0] * 6)),
            action_high=list(meta.get("action_high", [1.0] * 6)),
            card=dict(meta.get("card", {})),
        )
        if meta.get("reprojection") is not None:
            try:
                wm.reprojection = ReprojectionConfig(**meta["reprojection"])
            except (TypeError, ValueError) as e:
                raise CheckpointError(f"checkpoint {path} has an invalid reprojection config: {e}") from e
        start = tensors.get("start_frames")
        return cls(dit, vae, wm, stats, None if start is None else start.cpu().numpy())

    def save(self, path: str | Path) -> None:
        """Write everything needed to rebuild this world into one safetensors file."""
        meta = {
            "kind": "world",
            "vae_config": asdict(self.vae.cfg),
            "image_hw": list(self.meta.image_hw),
            "intrinsics": list(self.meta.intrinsics),
            "action_low": list(self.meta.action_low),
            "action_high": list(self.meta.action_high),
            "card": self.meta.card,
            "reprojection": None if self.meta.reprojection is None else asdict(self.meta.reprojection),
        }
        start = None if self.start_frames is None else {"start_frames": torch.as_tensor(self.start_frames)}
        save_world_model(path, self.dit, self.cfg, self.camera_stats, {"vae": self.vae}, meta, start)

    # ---- generation -------------------------------------------------------------------

    @torch.no_grad()
    def encode_images(self, images: np.ndarray) -> torch.Tensor:
        """uint8 (B, H, W, 3) start images -> normalised first latents (B, C, h, w)."""
        images = np.asarray(images)
        H, W = self.meta.image_hw
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (H, W, 3):
            raise ValueError(f"start images are {images.dtype}{images.shape}, expected uint8 (B, {H}, {W}, 3)")
        return self.vae.encode(images_to_video(images, self.device, next(self.vae.parameters()).dtype))[:, 0]

    def streams(self, batch: int, seeds: Sequence[int] | None = None, window: int | None = None) -> WorldStreams:
        """A batch of independent streams over this world."""
        return WorldStreams(self, batch, seeds, window)


class WorldStreams:
    """B streams stepping together: one transformer evaluation and one decode per step."""

    def __init__(self, world: World, batch: int, seeds: Sequence[int] | None, window: int | None) -> None:
        self.world, self.batch = world, batch
        m = world.meta
        self.gen = StreamingGenerator(
            world.dit, batch, world.latent_hw, m.intrinsics, m.image_hw, world.camera_stats, window, seeds=seeds,
            reprojection=m.reprojection,
        )
        self.decoder: StreamDecoder = world.vae.stream_decoder(batch, light=world.light_decoder)
        self.last_timing = {"transformer_s": 0.0, "decode_s": 0.0}
        self._started = False

    def reset(self, images: np.ndarray, streams: Sequence[int] | None = None,
              seeds: Sequence[int] | None = None) -> np.ndarray:
        """Start streams from uint8 images (len(streams) or B, H, W, 3); returns each image decoded
        through the VAE, repeated to (n, fps, H, W, 3) so every observation has the same layout."""
        idx = list(range(self.batch)) if streams is None else list(streams)
        z0 = self.world.encode_images(images)
        if seeds is not None:
            self.gen.seed(seeds, idx)
        self.gen.reset(z0, idx)
        if not self._started or len(idx) == self.batch:
            if len(idx) != self.batch:
                raise ValueError("the first reset must start every stream")
            self.decoder.reset()
            first = self.decoder.step(z0)  # (B, 1, 3, H, W): primes every stream's decoder cache
            self._started = True
        else:
            # Prime only these streams: decode their first latent alone, then copy the
            # resulting cache rows into the batched decoder (its buffers never move).
            solo = self.world.vae.stream_decoder(len(idx), light=self.world.light_decoder)
            first = solo.step(z0)
            for big, small in zip(self.decoder.cache.buffers, solo.cache.buffers, strict=True):
                big[idx] = small
        return np.repeat(video_to_uint8(first), self.world.frames_per_step, axis=1)

    def step(self, actions: np.ndarray) -> np.ndarray:
        """Relative camera motions (B, 6) -> decoded frames uint8 (B, fps, H, W, 3)."""
        if not self._started:
            raise RuntimeError("call reset() before step()")
        t0 = time.perf_counter()
        z = self.gen.step(actions)
        if z.is_cuda:  # otherwise queued transformer work would be billed to the decode
            torch.cuda.synchronize()
        t1 = time.perf_counter()
        frames = video_to_uint8(self.decoder.step(z))
        t2 = time.perf_counter()
        self.last_timing = {"transformer_s": t1 - t0, "decode_s": t2 - t1}
        return frames
