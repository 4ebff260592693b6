"""The learned world as one object: transformer + VAE + camera statistics + intrinsics.

A world file is a single safetensors checkpoint holding `dit.*`, `vae.*` and optional
`start_frames` (uint8 (S, H, W, 3)), with metadata: the two configs, camera stats,
`image_hw`, `intrinsics` (fx, fy, cx, cy at image_hw), per-component action bounds and
a free-form model card, and optionally how generated latents are blended with the
reprojected past (`reprojection`, see `worldmodel.reproject`; None: the network alone).
A file may also carry learned heads (`heads.*` tensors and a `heads` settings entry, see
`worldmodel.heads`); a file without them loads as `heads=None`.

    world = World.load("checkpoints/world_tiny.safetensors")
    streams = world.streams(batch=4, seeds=[0, 1, 2, 3])
    frames = streams.reset(images)           # (B, H, W, 3) uint8 -> (B, fps, H, W, 3)
    frames = streams.step(actions)           # (B, 6) -> (B, fps, H, W, 3) uint8

Every step is one transformer evaluation and one streaming VAE decode for the whole batch.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from worldmodel.checkpoint import (
    CheckpointError,
    camera_stats_from_meta,
    config_from_meta,
    dit_config_from_meta,
    load_meta,
    load_modules,
    read_tensor_index,
    save_world_model,
)
from worldmodel.config import CameraStats, DiTConfig, drop_retired
from worldmodel.dit import WorldDiT
from worldmodel.generator import StreamingGenerator
from worldmodel.heads import WorldHeads, heads_builder
from worldmodel.indexing import stream_indices
from worldmodel.reproject import ReprojectionConfig
from worldmodel.reproject_config import RETIRED_REPROJECTION_KEYS
from worldmodel.vae import CausalVAE, DecoderState, StreamDecoder, VAEConfig

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

    def __post_init__(self) -> None:
        # Checked here, not at the first reset or step: zero focal lengths decode to black frames,
        # a string where a number belongs fails deep inside the camera maths.
        self.image_hw = _numbers("image_hw", self.image_hw, 2, "(height, width) in pixels", integer=True)
        if min(self.image_hw) <= 0:
            raise ValueError(f"image_hw {self.image_hw} must be positive (height, width) in pixels")
        self.intrinsics = list(_numbers("intrinsics", self.intrinsics, 4, "[fx, fy, cx, cy] in pixels"))
        if self.intrinsics[0] <= 0 or self.intrinsics[1] <= 0:
            raise ValueError(f"intrinsics {self.intrinsics} need positive focal lengths fx, fy (pixels of image_hw)")
        self.action_low = list(_numbers("action_low", self.action_low, 6, "[tx, ty, tz, rx, ry, rz]"))
        self.action_high = list(_numbers("action_high", self.action_high, 6, "[tx, ty, tz, rx, ry, rz]"))
        if any(lo > hi for lo, hi in zip(self.action_low, self.action_high)):
            raise ValueError(f"action_low {self.action_low} exceeds action_high {self.action_high} somewhere")
        if not isinstance(self.card, dict):
            raise TypeError(f"card is {type(self.card).__name__}, expected a dict (JSON object)")
        if self.reprojection is not None and not isinstance(self.reprojection, ReprojectionConfig):
            raise TypeError(f"reprojection is {type(self.reprojection).__name__}, expected ReprojectionConfig or None")


def _numbers(key: str, value: Any, n: int, what: str, integer: bool = False) -> tuple:
    """`value` as a tuple of n finite Python numbers, else an error naming `key` and the expected type."""
    kind = "integers" if integer else "finite numbers"
    seq = value.tolist() if isinstance(value, (np.ndarray, torch.Tensor)) else value
    if not isinstance(seq, (list, tuple)) or len(seq) != n:
        raise TypeError(f"{key} is {type(value).__name__} {value!r:.80}, expected {n} {kind} {what}")
    out = []
    for v in seq:
        ok = isinstance(v, (int, np.integer)) if integer else isinstance(v, (int, float, np.integer, np.floating))
        if isinstance(v, (bool, np.bool_)) or not ok or (not integer and not np.isfinite(v)):
            raise TypeError(f"{key} is {list(seq)!r:.80}, expected {n} {kind} {what}")
        out.append(int(v) if integer else float(v))
    return tuple(out)


def images_to_video(images: np.ndarray, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """uint8 (B, H, W, 3) -> float (B, 1, 3, H, W) in [-1, 1]."""
    x = torch.as_tensor(np.ascontiguousarray(images), device=device)
    return (x.permute(0, 3, 1, 2).to(dtype) / 127.5 - 1.0)[:, None]


def video_to_uint8(video: torch.Tensor) -> np.ndarray:
    """float (B, T, 3, H, W) in [-1, 1] -> uint8 (B, T, H, W, 3)."""
    x = ((video.float().clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8)
    return x.permute(0, 1, 3, 4, 2).cpu().numpy()


def world_meta_from_dict(meta: dict[str, Any], path: str | Path) -> WorldMeta:
    """The WorldMeta of a world file's metadata; CheckpointError names the file, the key and what was expected."""
    reprojection = meta.get("reprojection")
    if isinstance(reprojection, Mapping):  # older files store keys that no longer configure the memory
        try:
            meta = {**meta, "reprojection": drop_retired(reprojection, "reprojection", RETIRED_REPROJECTION_KEYS)}
        except ValueError as e:
            raise CheckpointError(f"world file {path} cannot be loaded: {e}") from e
    if reprojection is not None:
        reprojection = config_from_meta(meta, "reprojection", ReprojectionConfig, path)
    try:
        return WorldMeta(
            image_hw=meta["image_hw"],
            intrinsics=meta["intrinsics"],
            action_low=meta.get("action_low", [-1.0] * 6),
            action_high=meta.get("action_high", [1.0] * 6),
            card=meta.get("card", {}),
            reprojection=reprojection,
        )
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"world file {path} has invalid metadata: {e}") from e


def check_world_parts(
    meta: WorldMeta, cfg: DiTConfig, vcfg: VAEConfig, start_shape: Sequence[int] | None = None
) -> None:
    """Raise ValueError unless the frame size, the VAE, the transformer and the start frames fit together."""
    H, W = meta.image_hw
    f = vcfg.spatial_factor
    if H % f or W % f:
        raise ValueError(f"image_hw {H}x{W} is not divisible by the VAE's spatial factor {f}")
    if vcfg.latent_channels != cfg.latent_channels or vcfg.temporal_factor != cfg.frames_per_step:
        raise ValueError(
            f"VAE ({vcfg.latent_channels} channels, {vcfg.temporal_factor}x time) does not match the "
            f"transformer ({cfg.latent_channels} channels, {cfg.frames_per_step} frames per step)"
        )
    if start_shape is not None and (len(start_shape) != 4 or tuple(start_shape[1:]) != (H, W, 3)):
        raise ValueError(
            f"start_frames have shape {tuple(start_shape)}, expected (S, {H}, {W}, 3) to match image_hw {H}x{W}"
        )


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
        heads: WorldHeads | None = None,
    ) -> None:
        self.dit, self.vae = dit.eval(), vae.eval()
        self.heads = None if heads is None else heads.eval()  # reward / continue / motion heads, if trained
        self.cfg: DiTConfig = dit.cfg
        self.meta = meta
        self.camera_stats = camera_stats or CameraStats()
        self.start_frames = start_frames
        self.light_decoder = light_decoder
        check_world_parts(meta, self.cfg, vae.cfg, None if start_frames is None else np.shape(start_frames))
        if start_frames is not None and np.asarray(start_frames).dtype != np.uint8:
            raise ValueError(f"start_frames are {np.asarray(start_frames).dtype}, expected uint8 (S, H, W, 3)")
        f = vae.cfg.spatial_factor
        self.latent_hw = (meta.image_hw[0] // f, meta.image_hw[1] // f)
        latent = [vae.cfg.latent_channels, *self.latent_hw]
        if heads is not None and [heads.cfg.latent_channels, *heads.cfg.latent_hw] != latent:
            raise ValueError(f"heads read latents {[heads.cfg.latent_channels, *heads.cfg.latent_hw]}, the world "
                             f"makes {latent}; train heads on this world's latents")

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
        # Everything below the weights is checked first, from the header alone, so a bad or
        # hostile file is rejected before a model of the size it declares is allocated.
        meta = load_meta(path)
        for key in ("dit_config", "vae_config", "image_hw", "intrinsics"):
            if key not in meta:
                raise CheckpointError(f"checkpoint {path} lacks '{key}' in its metadata; not a world file")
        cfg = dit_config_from_meta(meta, path)
        vcfg = config_from_meta(meta, "vae_config", VAEConfig, path)
        stats = camera_stats_from_meta(meta, path)
        wm = world_meta_from_dict(meta, path)
        index = read_tensor_index(path)
        try:
            check_world_parts(wm, cfg, vcfg, index.get("start_frames"))
        except ValueError as e:
            raise CheckpointError(f"world file {path} is inconsistent: {e}") from e
        builders = {"dit": lambda: WorldDiT(cfg), "vae": lambda: CausalVAE(vcfg)}
        heads = heads_builder(meta, index, path)
        if heads is not None:
            builders["heads"] = heads
        modules, tensors = load_modules(path, builders, device)
        start = tensors.get("start_frames")
        try:
            return cls(modules["dit"], modules["vae"], wm, stats, None if start is None else start.cpu().numpy(),
                       heads=modules.get("heads"))
        except ValueError as e:
            raise CheckpointError(f"world file {path} is inconsistent: {e}") from e

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
        modules = {"vae": self.vae}
        if self.heads is not None:  # a world without heads writes exactly what it did before heads existed
            modules["heads"] = self.heads
            meta["heads"] = asdict(self.heads.cfg)
        start = None if self.start_frames is None else {"start_frames": torch.as_tensor(self.start_frames)}
        save_world_model(path, self.dit, self.cfg, self.camera_stats, modules, meta, start)

    # ---- generation -------------------------------------------------------------------

    @torch.no_grad()
    def encode_images(self, images: np.ndarray) -> torch.Tensor:
        """uint8 (B, H, W, 3) start images -> normalised first latents (B, C, h, w)."""
        images = np.asarray(images)
        H, W = self.meta.image_hw
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (H, W, 3):
            raise ValueError(f"start images are {images.dtype}{images.shape}, expected uint8 (B, {H}, {W}, 3)")
        return self.vae.encode(images_to_video(images, self.device, next(self.vae.parameters()).dtype))[:, 0]

    def streams(
        self, batch: int, seeds: Sequence[int] | None = None, window: int | None = None,
        reprojection: ReprojectionConfig | None | Literal["world"] = "world",
    ) -> WorldStreams:
        """A batch of independent streams over this world; `reprojection` sets their memory for them alone
        (None: the network alone; "world": what the world file says), leaving `meta` untouched."""
        return WorldStreams(self, batch, seeds, window, reprojection)


class WorldStreams:
    """B streams stepping together: one transformer evaluation and one decode per step."""

    def __init__(
        self, world: World, batch: int, seeds: Sequence[int] | None, window: int | None,
        reprojection: ReprojectionConfig | None | Literal["world"] = "world",
    ) -> None:
        self.world, self.batch = world, batch
        m = world.meta
        if isinstance(reprojection, str) and reprojection != "world":
            raise ValueError(f"reprojection is {reprojection!r}: pass a ReprojectionConfig, None (off) or 'world' "
                             f"(the world file's); parse a command-line setting with ReprojectionConfig.parse")
        # The memory these streams blend with (None: the network alone); set per batch of streams, so
        # a caller comparing settings never has to swap the world's shared `meta`.
        self.reprojection: ReprojectionConfig | None = m.reprojection if isinstance(reprojection, str) else reprojection
        self.gen = StreamingGenerator(
            world.dit, batch, world.latent_hw, m.intrinsics, m.image_hw, world.camera_stats, window, seeds=seeds,
            reprojection=self.reprojection,
        )
        self.decoder: StreamDecoder = world.vae.stream_decoder(batch, light=world.light_decoder)
        self.last_timing = {"transformer_s": 0.0, "decode_s": 0.0}
        self.last_frames: np.ndarray | None = None  # (B, fps, H, W, 3) what each stream showed last
        self._started = False

    def reset(self, images: np.ndarray, streams: Sequence[int] | None = None,
              seeds: Sequence[int] | None = None) -> np.ndarray:
        """Start streams from uint8 images (len(streams) or B, H, W, 3); returns each image decoded
        through the VAE, repeated to (n, fps, H, W, 3) so every observation has the same layout."""
        idx = stream_indices(streams, self.batch)
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
            # Prime only these streams: decode their first latent alone, then put the
            # resulting cache rows into the batched decoder (its buffers never move).
            solo = self.world.vae.stream_decoder(len(idx), light=self.world.light_decoder)
            first = solo.step(z0)
            self.decoder.restore(solo.snapshot(), idx)
        shown = np.repeat(video_to_uint8(first), self.world.frames_per_step, axis=1)
        if self.last_frames is None:
            self.last_frames = np.zeros((self.batch, *shown.shape[1:]), np.uint8)
        self.last_frames[idx] = shown
        return shown

    def step(self, actions: np.ndarray) -> np.ndarray:
        """Relative camera motions (B, 6) -> decoded frames uint8 (B, fps, H, W, 3)."""
        z = self.step_latent(actions)
        t1 = time.perf_counter()
        held = np.flatnonzero(self.gen.held)
        # A stream the memory held still shows its last frame again: decoding the same latent once more
        # would drift (the causal decoder's context keeps changing), and its decoder skips the step.
        before = self.decoder.snapshot() if len(held) else None
        frames = video_to_uint8(self.decoder.step(z))
        if before is not None:
            self.decoder.restore(DecoderState([b[held] for b in before.buffers], before.t), held)
            frames[held] = self.last_frames[held, -1:]
        self.last_frames = frames
        self.last_timing["decode_s"] = time.perf_counter() - t1
        return frames

    def step_latent(self, actions: np.ndarray) -> torch.Tensor:
        """Relative camera motions (B, 6) -> next latents (B, C, h, w), not decoded (cheaper: agents in latent space).
        Run a batch of streams in one mode: `step` after `step_latent` decodes without the skipped frames' past."""
        if not self._started:
            raise RuntimeError("call reset() before step()")
        t0 = time.perf_counter()
        z = self.gen.step(actions)
        if z.is_cuda:  # otherwise queued transformer work would be billed to the decode
            torch.cuda.synchronize()
        self.last_timing = {"transformer_s": time.perf_counter() - t0, "decode_s": 0.0}
        return z
