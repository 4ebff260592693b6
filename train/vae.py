"""Train the causal video VAE on real ViZDoom frames: `python -m train.vae phase=recon`, then `phase=light`.

- `phase=recon`: encoder + full decoder, L1 + MSE reconstruction + a small KL. At the end the
  per-channel latent statistics are measured on training clips and stored in the model, and
  the VAE is written to `out` (default `checkpoints/vae_<size>.safetensors`).
- `phase=light`: loads `init` (the recon output), freezes the encoder and the full decoder, and
  trains the lightweight decoder to match the full decoder's output (plus the ground truth),
  then overwrites `out` with all three parts.
- `phase=full`: loads `init`, freezes the encoder and the light decoder, and trains the full
  decoder again on the ground truth (the latent space, and every transformer trained on it, stays).

Data: shards of `train/shards.py` under `data_root` (`data/doom`, written by
`python -m train.collect`): split `train` (freedoom2 MAP01-24) for training, `val`
(MAP25-32) for the held-out PSNR. Frames are resized (area) to `height` x `width`; training
uses random crops of short clips (the model is fully convolutional, crops are cheaper).

A phase runs in the one training loop of the stages (train/stages/loop.py): every
`ckpt_every` steps and when the run stops (end, `stop_after`, SIGINT/SIGTERM at a step
boundary) the full training state (weights, optimizer, step, RNG and data-sampler state)
goes to `<run_dir>/<phase>/state.safetensors`; `resume=true` continues exactly where it stopped.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from train.common import command_line_exits, help_node, restore_training_state, seed_everything
from train.losses import approx_r_penalty, discriminator_loss, generator_loss
from train.shards import read_manifest, read_shard, write_manifest, write_shard, ShardInfo
from train.stages.config import LoopConf, require
from train.stages.loop import TrainingLoop
from train.vae_disc import PatchDiscriminator
from worldmodel.threads import use_threads
from worldmodel.vae import CausalVAE, load_vae, save_vae, vae_config

PHASES = ("recon", "light", "full", "eval")


@dataclass
class TrainVAEConfig(LoopConf):
    """Options of `python -m train.vae` (hydra: `key=value` on the command line); the loop's are LoopConf's."""

    phase: str = "recon"
    """'recon' (encoder + full decoder), 'light' (light decoder distilled from the full one), 'full' (the full decoder
    retrained on the ground truth, encoder frozen) or 'eval' (held-out PSNR and sharpness of `init`)."""
    size: str = "tiny"
    """VAE registry name (worldmodel.vae.vae_config)."""
    vae: dict[str, Any] = field(default_factory=dict)
    """VAEConfig field overrides, e.g. `+vae.latent_channels=8`."""
    data_root: str = "data/doom"
    """Shard root with manifest.json (train/shards.py format)."""
    val_root: str = ""
    """Shard root of the held-out 'val' split; empty = data_root."""
    height: int = 96
    """Frame height after resizing."""
    width: int = 128
    """Frame width after resizing."""
    clip_frames: int = 13
    """Video frames per training clip (1 + 4k). At least 9, so the causal convs see a real 4-frame latent in
    their past, as they do when streaming (with 5 they only ever see the single-image first latent)."""
    crop_h: int = 48
    """Training crop height (multiple of the VAE's spatial factor; <= height)."""
    crop_w: int = 64
    """Training crop width (multiple of the VAE's spatial factor; <= width)."""
    batch_size: int = 4
    """Clips per step."""
    steps: int = 300
    """Total optimizer steps of this phase."""
    lr: float = 5e-4
    """AdamW peak learning rate (cosine decay to 10% after a short warm-up)."""
    warmup: int = 20
    """Linear learning-rate warm-up steps."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    grad_clip: float = 1.0
    """Global gradient-norm clip."""
    kl_weight: float = 1e-4
    """Weight of the per-element mean KL to N(0, 1) (recon phase)."""
    mse_weight: float = 1.0
    """Weight of the MSE term added to L1 in every reconstruction loss."""
    first_weight: float = 1.0
    """Weight of video frame 0 (the single-image first latent, decoded with no past: the world's start frame)
    relative to every other frame in the reconstruction losses. 1 = a plain mean over frames; a 13-frame clip
    then gives the start frame 1/13 of the loss."""
    distill_weight: float = 1.0
    """Light phase: weight of matching the full decoder's output."""
    gt_weight: float = 0.5
    """Light and full phases: weight of matching the ground-truth frames."""
    adv_weight: float = 0.0
    """Light phase: weight of a patch discriminator's relativistic loss on the decoded frames (0 = off).
    Sharpens the textures that L1/MSE average away (train/vae_disc.py); the latent space is untouched."""
    disc_channels: int = 32
    """Light phase, adv_weight > 0: width of the patch discriminator's first layer."""
    disc_downsamples: int = 2
    """Light phase, adv_weight > 0: stride-2 layers of the discriminator (patch size 7 * 2**n pixels)."""
    disc_lr: float = 2e-4
    """Light phase, adv_weight > 0: discriminator AdamW learning rate (constant)."""
    disc_r_sigma: float = 0.05
    """Light phase, adv_weight > 0: pixel noise of the approximate R1/R2 penalties."""
    disc_r_weight: float = 100.0
    """Light phase, adv_weight > 0: weight of the approximate R1/R2 penalties (0 = off)."""
    max_train_frames: int = 12000
    """Cap on training frames held in memory (shards are taken in manifest order, evenly thinned)."""
    eval_frames: int = 9
    """Video frames per held-out clip (1 + 4k)."""
    eval_clips: int = 64
    """Held-out clips (eval_frames each, full frames) for the PSNR and sharpness at the end of a phase."""
    stats_clips: int = 64
    """Training clips used to measure latent mean/std (recon phase)."""
    run_dir: str = "runs/vae_tiny"
    """Training states, metrics.jsonl and TensorBoard files go to <run_dir>/<phase>/."""
    out: str = "checkpoints/vae_tiny.safetensors"
    """Where the trained VAE is written at the end of the phase."""
    init: str = "checkpoints/vae_tiny.safetensors"
    """Light and full phases: the VAE to start from (its encoder stays frozen); eval: the VAE measured."""

    FREE: ClassVar[tuple[str, ...]] = (*LoopConf.FREE, "steps", "val_root", "eval_frames", "eval_clips", "stats_clips")

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.phase in PHASES, "phase", self.phase, f"is not one of {PHASES}")
        for key in ("steps", "batch_size", "clip_frames", "height", "width", "crop_h", "crop_w"):
            require(getattr(self, key) >= 1, key, getattr(self, key), "must be >= 1")
        require(self.warmup >= 0, "warmup", self.warmup, "must be >= 0")
        require(self.first_weight >= 0, "first_weight", self.first_weight, "must be >= 0")


# ----------------------------------------------------------------------------- data


def resize_frames(frames: np.ndarray, height: int, width: int) -> np.ndarray:
    """(T, H, W, 3) uint8 -> (T, height, width, 3) uint8, area interpolation when shrinking."""
    import cv2

    if frames.shape[1:3] == (height, width):
        return frames
    shrink = frames.shape[1] >= height and frames.shape[2] >= width
    interp = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
    return np.stack([cv2.resize(f, (width, height), interpolation=interp) for f in frames])


class FrameClips:
    """Real frames of one split held in memory as uint8; samples random (cropped) clips."""

    def __init__(self, root: str | Path, split: str, height: int, width: int, max_frames: int | None = None) -> None:
        rows = read_manifest(root, split)
        if not rows:
            raise FileNotFoundError(f"no '{split}' shards in {root}/manifest.json; collect data first (python -m train.collect)")
        total = sum(r.frames for r in rows)
        if max_frames is not None and total > max_frames:  # thin evenly so every map stays represented
            keep = max(1, round(len(rows) * max_frames / total))
            rows = [rows[i] for i in np.linspace(0, len(rows) - 1, keep).round().astype(int)]
        self.videos = [torch.from_numpy(resize_frames(read_shard(Path(root) / r.path)["frames"], height, width)) for r in rows]
        self.maps = sorted({f"{r.wad}:{r.map}" for r in rows})
        self.height, self.width = height, width

    @property
    def num_frames(self) -> int:
        return sum(v.shape[0] for v in self.videos)

    @staticmethod
    def to_float(x: Tensor) -> Tensor:
        """uint8 (..., T, H, W, 3) -> float (..., T, 3, H, W) in [-1, 1]."""
        return x.permute(*range(x.ndim - 3), -1, -3, -2).float() / 127.5 - 1.0

    def sample(self, gen: torch.Generator, batch: int, frames: int, crop_h: int, crop_w: int) -> Tensor:
        """Random clips (B, frames, 3, crop_h, crop_w) in [-1, 1], drawn with `gen` only (resumable)."""
        videos = [v for v in self.videos if v.shape[0] >= frames]
        if not videos:
            raise ValueError(f"no shard has {frames} frames; lower clip_frames")
        out = []
        for _ in range(batch):
            v = videos[int(torch.randint(len(videos), (1,), generator=gen))]
            t = int(torch.randint(v.shape[0] - frames + 1, (1,), generator=gen))
            y = int(torch.randint(self.height - crop_h + 1, (1,), generator=gen))
            x = int(torch.randint(self.width - crop_w + 1, (1,), generator=gen))
            clip = v[t : t + frames, y : y + crop_h, x : x + crop_w]
            if int(torch.randint(2, (1,), generator=gen)):  # mirror: doubles the scenery
                clip = clip.flip(2)
            out.append(clip)
        return self.to_float(torch.stack(out))

    def fixed_clips(self, n: int, frames: int) -> Tensor:
        """n full-frame clips at evenly spaced positions (deterministic): (n, frames, 3, H, W)."""
        spots = [(i, t) for i, v in enumerate(self.videos) for t in range(0, v.shape[0] - frames + 1, frames)]
        if not spots:
            raise ValueError(f"no shard has {frames} frames for evaluation")
        pick = np.linspace(0, len(spots) - 1, min(n, len(spots))).round().astype(int)
        return self.to_float(torch.stack([self.videos[i][t : t + frames] for i, t in (spots[j] for j in pick)]))


def render_doom_shards(
    root: str | Path, maps: dict[str, list[str]], frames_per_map: int = 200, resolution: str = "RES_160X120", seed: int = 0
) -> None:
    """Render real freedoom2 frames with a simple wandering camera into the shard format (fallback/test data).

    `maps` is {split: [map names]}, e.g. {"train": ["MAP01"], "val": ["MAP25"]}. Monsters off,
    HUD and weapon hidden. Poses are not tracked (identity), so these shards are for the VAE only.
    """
    import vizdoom as vzd

    wad = os.path.join(os.path.dirname(vzd.__file__), "freedoom2.wad")
    rng = np.random.default_rng(seed)
    rows = []
    for split, names in maps.items():
        for m in names:
            g = vzd.DoomGame()
            g.set_doom_game_path(wad)
            g.set_doom_map(m)
            g.set_screen_resolution(getattr(vzd.ScreenResolution, resolution))
            g.set_screen_format(vzd.ScreenFormat.RGB24)
            g.set_render_hud(False)
            g.set_render_weapon(False)
            g.set_render_crosshair(False)
            g.set_window_visible(False)
            g.set_sound_enabled(False)
            g.add_game_args("-nomonsters")
            g.set_available_buttons([vzd.Button.TURN_LEFT_RIGHT_DELTA, vzd.Button.MOVE_FORWARD_BACKWARD_DELTA])
            g.set_mode(vzd.Mode.PLAYER)
            g.set_seed(int(rng.integers(2**31)))
            g.init()
            g.new_episode()
            frames, turn = [], 0.0
            for _ in range(frames_per_map):
                frames.append(g.get_state().screen_buffer.copy())
                turn = 0.8 * turn + rng.normal(0.0, 2.0)  # smooth random turning
                g.make_action([float(turn), 12.0 if rng.random() < 0.8 else -6.0])
                if g.is_episode_finished():
                    g.new_episode()
            g.close()
            f = np.stack(frames)
            rel = f"{split}/freedoom2_{m}.npz"
            write_shard(Path(root) / rel, f, np.tile(np.eye(4), (len(f), 1, 1)), np.array([80.0, 80.0, 79.5, 59.5]),
                        "freedoom2", m, seed)
            rows.append(ShardInfo(rel, split, len(f), f.shape[1], f.shape[2], "freedoom2", m, seed,
                                  (Path(root) / rel).stat().st_size))
    write_manifest(root, rows)


# ----------------------------------------------------------------------------- losses, metrics


def recon_loss(pred: Tensor, target: Tensor, mse_weight: float, first_weight: float = 1.0) -> Tensor:
    """L1 (sharp edges) + weighted MSE (what PSNR measures) of videos (B, T, 3, H, W); frame 0 weighs `first_weight`."""
    if first_weight == 1.0:
        return F.l1_loss(pred, target) + mse_weight * F.mse_loss(pred, target)
    err = pred - target
    return frame_weighted(err.abs().mean((0, 2, 3, 4)) + mse_weight * err.pow(2).mean((0, 2, 3, 4)), first_weight)


def frame_weighted(per_frame: Tensor, first_weight: float) -> Tensor:
    """Weighted mean of per-frame losses (T,), frame 0 weighing `first_weight` and every other frame 1."""
    w = torch.ones_like(per_frame)
    w[0] = first_weight
    return (w * per_frame).sum() / w.sum()


def kl_loss(mean: Tensor, logvar: Tensor) -> Tensor:
    """Per-element mean KL(N(mean, exp(logvar)) || N(0, 1))."""
    return 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).mean()


def psnr(pred: Tensor, target: Tensor) -> Tensor:
    """Per-frame PSNR in dB of videos (..., T, 3, H, W) in [-1, 1] (data range 1 after mapping to [0, 1])."""
    mse = ((pred.clamp(-1, 1) - target) / 2).pow(2).flatten(-3).mean(-1)
    return -10.0 * torch.log10(mse.clamp_min(1e-10))


def sharpness(video: Tensor, border: int = 0) -> Tensor:
    """Per-frame Laplacian variance (0-255 gray, worldmodel.metrics.frame_stats) of videos (..., T, 3, H, W) in [-1, 1],
    `border` pixels cut off each side first (a decoder's edge artifacts can dominate the whole-frame figure)."""
    from worldmodel.metrics import frame_stats

    if border:
        video = video[..., border:-border, border:-border]
    frames = ((video.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).flatten(0, -4).permute(0, 2, 3, 1).numpy()
    return torch.from_numpy(frame_stats(frames)["sharpness"]).float().view(video.shape[:-3])


@torch.no_grad()
def evaluate(vae: CausalVAE, clips: Tensor, batch: int = 8) -> dict[str, float]:
    """Encode -> decode quality of clips (N, T, 3, H, W), full and light decoder: mean per-frame PSNR over whole
    clips (`psnr_*`), PSNR of frame 0 alone (`psnr_start_*`: the single-image first latent decoded with no past,
    the world's start frame; the VAE is causal, so it equals encoding and decoding that frame alone) and
    sharpness (Laplacian variance) of all frames and of frame 0 (`sharp_*`, `sharp_start_*`; `*_real`: the truth),
    and of frame 0 without its outer 8 pixels (`sharp_start_inner_*`: a line along the frame edge is an artifact, not
    detail, yet it alone can double the whole-frame figure of these blurry decodings)."""
    vae.eval()
    out: dict[str, list[Tensor]] = {}
    for i in range(0, len(clips), batch):
        x = clips[i : i + batch]
        z = vae.encode(x)
        for name, video in (("real", x), ("full", vae.decode(z, light=False)), ("light", vae.decode(z, light=True))):
            s = sharpness(video)  # (b, T)
            parts = {f"sharp_{name}": s, f"sharp_start_{name}": s[:, 0],
                     f"sharp_start_inner_{name}": sharpness(video[:, :1], border=8)[:, 0]}
            if name != "real":
                p = psnr(video, x)  # (b, T)
                parts.update({f"psnr_{name}": p, f"psnr_start_{name}": p[:, 0]})
            for k, v in parts.items():
                out.setdefault(k, []).append(v.flatten())
    return {k: float(torch.cat(v).mean()) for k, v in sorted(out.items())}


@torch.no_grad()
def latent_stats(vae: CausalVAE, clips: Tensor, batch: int = 8) -> tuple[Tensor, Tensor]:
    """Per-channel mean and std (C,) of un-normalised posterior means over clips."""
    zs = [vae.encode_posterior(clips[i : i + batch])[0] for i in range(0, len(clips), batch)]
    z = torch.cat(zs).transpose(0, 2).flatten(1)  # (C, everything)
    return z.mean(1), z.std(1).clamp_min(1e-4)


def lr_at(step: int, cfg: TrainVAEConfig) -> float:
    """Linear warm-up then cosine decay to 10% of the peak."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    p = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(p, 1.0))))


# ----------------------------------------------------------------------------- the loop


def build(cfg: TrainVAEConfig) -> tuple[CausalVAE, list[torch.nn.Parameter]]:
    """The VAE for this phase and the parameters it trains (light / full: that decoder only, the rest frozen)."""
    if cfg.phase == "recon":
        vae = CausalVAE(vae_config(cfg.size, **cfg.vae))
        params = list(vae.encoder.parameters()) + list(vae.decoder.parameters())
    elif cfg.phase in ("light", "full"):
        vae = light_phase_vae(cfg)
        for p in vae.parameters():
            p.requires_grad_(False)
        params = list((vae.light_decoder if cfg.phase == "light" else vae.decoder).parameters())
        for p in params:
            p.requires_grad_(True)
    else:
        raise ValueError(f"phase={cfg.phase!r}; expected 'recon', 'light' or 'full'")
    return vae, params


def build_disc(cfg: TrainVAEConfig) -> PatchDiscriminator | None:
    """The light phase's patch discriminator when adv_weight > 0, else None."""
    if cfg.adv_weight < 0:
        raise ValueError(f"adv_weight={cfg.adv_weight} must be >= 0")
    if not cfg.adv_weight:
        return None
    if cfg.phase != "light":
        raise ValueError(f"adv_weight={cfg.adv_weight} applies to phase=light only (got phase={cfg.phase!r})")
    return PatchDiscriminator(cfg.disc_channels, cfg.disc_downsamples).train()


LIGHT_FIELDS = ("name", "light_decoder_channels", "light_decoder_blocks")


def light_phase_vae(cfg: TrainVAEConfig) -> CausalVAE:
    """The VAE for `phase=light` / `full`: encoder, full decoder and latent stats from `init`, light decoder per this config.

    The light decoder's shape comes from the current config (it is what this phase trains);
    its weights are carried over from `init` only when the shapes agree.
    """
    init = load_vae(cfg.init)
    want = vae_config(cfg.size, **cfg.vae)
    diff = {f.name: (getattr(init.cfg, f.name), getattr(want, f.name)) for f in dataclasses.fields(want)
            if f.name not in LIGHT_FIELDS and getattr(init.cfg, f.name) != getattr(want, f.name)}
    if diff:
        raise ValueError(f"{cfg.init} was trained with a different encoder/decoder config (init, asked): {diff}; "
                         f"use the same size/overrides as the recon phase")
    vae = CausalVAE(want)
    vae.encoder.load_state_dict(init.encoder.state_dict())
    vae.decoder.load_state_dict(init.decoder.state_dict())
    vae.set_latent_stats(init.latent_mean, init.latent_std)
    if [init.cfg.light_decoder_channels, init.cfg.light_decoder_blocks] == [want.light_decoder_channels, want.light_decoder_blocks]:
        vae.light_decoder.load_state_dict(init.light_decoder.state_dict())
    return vae


def phase_losses(
    vae: CausalVAE, x: Tensor, cfg: TrainVAEConfig, disc: PatchDiscriminator | None = None,
    real_logits: Tensor | None = None,
) -> tuple[dict[str, Tensor], Tensor]:
    """Losses of one batch of clips x (B, T, 3, h, w) and the decoded clips; 'loss' is what gets minimised.
    With a discriminator, `real_logits` are its detached scores of x (the caller's, reused by `disc_step`)."""
    if cfg.phase == "recon":
        mean, logvar = vae.encode_posterior(x)
        z = mean + torch.randn_like(mean) * (0.5 * logvar).exp()  # reparameterised sample
        pred = vae.decode_raw(z)
        rec = recon_loss(pred, x, cfg.mse_weight, cfg.first_weight)
        kl = kl_loss(mean, logvar)
        return {"loss": rec + cfg.kl_weight * kl, "recon": rec, "kl": kl}, pred
    light = cfg.phase == "light"
    with torch.no_grad():
        mean, logvar = vae.encode_posterior(x)
        z = mean + torch.randn_like(mean) * (0.5 * logvar).exp()
        target = vae.decode_raw(z) if light and cfg.distill_weight else None
    pred = vae.decode_raw(z, light=light)
    gt = recon_loss(pred, x, cfg.mse_weight, cfg.first_weight)
    losses = {"gt": gt, "loss": cfg.gt_weight * gt}
    if target is not None:
        losses["distill"] = recon_loss(pred, target, cfg.mse_weight, cfg.first_weight)
        losses["loss"] = losses["loss"] + cfg.distill_weight * losses["distill"]
    if disc is not None:
        losses["adv"] = generator_loss(disc(pred.flatten(0, 1)), real_logits)
        losses["loss"] = losses["loss"] + cfg.adv_weight * losses["adv"]
    return losses, pred


def disc_step(
    disc: PatchDiscriminator, fake: Tensor, real: Tensor, l_real: Tensor, cfg: TrainVAEConfig, gen: torch.Generator
) -> dict[str, Tensor]:
    """Discriminator losses on decoded (fake) and true (real) clips (B, T, 3, h, w); 'd_loss' is minimised.
    `l_real`: the discriminator's scores of real this step, with their graph."""
    fake, real = fake.detach().flatten(0, 1), real.flatten(0, 1)
    l_fake = disc(fake)
    out = {"d_adv": discriminator_loss(l_fake, l_real)}
    out["d_loss"] = out["d_adv"]
    if cfg.disc_r_weight:
        out["d_r1"] = approx_r_penalty(disc, real, l_real, cfg.disc_r_sigma, cfg.disc_r_weight, gen)
        out["d_r2"] = approx_r_penalty(disc, fake, l_fake, cfg.disc_r_sigma, cfg.disc_r_weight, gen)
        out["d_loss"] = out["d_loss"] + out["d_r1"] + out["d_r2"]
    return out


class VAEPhase(TrainingLoop):
    """One training phase of the VAE ('recon', 'light' or 'full'): a run of the stages' training loop."""

    def __init__(self, cfg: TrainVAEConfig) -> None:
        super().__init__(cfg, Path(cfg.run_dir) / cfg.phase)
        self.name = f"vae_{cfg.phase}"
        seed_everything(cfg.seed)
        self.disc = build_disc(cfg)  # checks the adversarial options before anything is loaded
        self.vae, self.params = build(cfg)
        for key, n in (("crop_h", cfg.crop_h), ("crop_w", cfg.crop_w)):
            if n % self.vae.cfg.spatial_factor:
                raise ValueError(f"{key}={n} must be a multiple of the VAE's spatial factor {self.vae.cfg.spatial_factor}")
        self.clips = FrameClips(cfg.data_root, "train", cfg.height, cfg.width, cfg.max_train_frames)
        self.opt = torch.optim.AdamW(self.params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.data_gen = torch.Generator().manual_seed(cfg.seed)
        self.models, self.optimizers = {"vae": self.vae}, {"opt": self.opt}
        self.generators = {"data": self.data_gen}
        if self.disc is not None:
            self.models["disc"] = self.disc
            self.optimizers["disc_opt"] = self.d_opt = torch.optim.AdamW(self.disc.parameters(), lr=cfg.disc_lr,
                                                                         betas=(0.0, 0.99))
            self.generators["disc_noise"] = self.d_gen = torch.Generator().manual_seed(cfg.seed + 1)
        self.vae.train()

    @property
    def total_steps(self) -> int:
        return self.cfg.steps

    def next_batch(self) -> Tensor:
        cfg = self.cfg
        return self.clips.sample(self.data_gen, cfg.batch_size, cfg.clip_frames, cfg.crop_h, cfg.crop_w)  # (B, T, 3, h, w)

    def batch_size(self, batch: Tensor) -> int:
        return batch.shape[0]

    def train_step(self, x: Tensor, step: int) -> dict[str, float]:
        cfg, disc = self.cfg, self.disc
        for g in self.opt.param_groups:
            g["lr"] = lr_at(step, cfg)
        real_logits = None
        if disc is not None:
            # Scored once per step, with the graph: the decoder's loss uses the values, the
            # discriminator's loss (after the decoder's update, which leaves it unchanged) the graph.
            real_logits = disc(x.flatten(0, 1))
            disc.requires_grad_(False)  # the decoder's update must not fill the discriminator's gradients
        losses, pred = phase_losses(self.vae, x, cfg, disc, None if real_logits is None else real_logits.detach())
        self.guard(losses)
        self.opt.zero_grad(set_to_none=True)
        losses["loss"].backward()
        gnorm = torch.nn.utils.clip_grad_norm_(self.params, cfg.grad_clip)
        self.opt.step()
        if disc is not None:
            disc.requires_grad_(True)
            d_losses = disc_step(disc, pred, x, real_logits, cfg, self.d_gen)
            self.guard(d_losses)
            self.d_opt.zero_grad(set_to_none=True)
            d_losses["d_loss"].backward()
            self.d_opt.step()
            losses.update(d_losses)
        return {"loss": losses["loss"].item(), **{k: v.item() for k, v in losses.items()},
                "grad_norm": gnorm.item(), "lr": self.opt.param_groups[0]["lr"]}

    def state_parts(self) -> tuple[dict, dict, dict[str, torch.Generator], dict[str, Any]]:
        return self.models, self.optimizers, self.generators, {"phase": self.cfg.phase}

    def restore(self, tensors: dict[str, Tensor], meta: dict[str, Any]) -> None:
        restore_training_state(tensors, meta, self.state_path, self.models, self.optimizers, self.generators)

    def export(self, summary: dict[str, Any]) -> None:
        """Latent statistics (recon), the VAE file at `out`, and its held-out PSNR when there is a val split."""
        cfg, vae = self.cfg, self.vae
        summary.update(phase=cfg.phase, train_frames=self.clips.num_frames, train_maps=self.clips.maps, out=cfg.out)
        if cfg.phase == "recon":
            clips = self.clips.sample(torch.Generator().manual_seed(1), cfg.stats_clips, cfg.clip_frames, cfg.height,
                                      cfg.width)
            vae.set_latent_stats(*latent_stats(vae.eval(), clips))
        save_vae(cfg.out, vae.eval(), extra_meta={f"train_{cfg.phase}": summary})
        try:
            summary.update(evaluate_split(vae, cfg))
            save_vae(cfg.out, vae.eval(), extra_meta={f"train_{cfg.phase}": summary})
            self.logger.log(self.step, {f"val/{k}": v for k, v in summary.items() if k.startswith("psnr")})
        except FileNotFoundError as e:  # data still being collected: evaluate later with phase=eval
            print(f"warning: no held-out evaluation ({e}); run `python -m train.vae phase=eval` later")


def train_vae(cfg: TrainVAEConfig) -> dict[str, Any]:
    """Run one phase (or `phase=eval`); returns a summary (steps, wall time, held-out PSNRs, output path)."""
    if cfg.phase == "eval":
        return eval_vae(cfg)
    summary = VAEPhase(cfg).run()
    print(json.dumps(summary, indent=1, default=str))
    return summary


def evaluate_split(vae: CausalVAE, cfg: TrainVAEConfig) -> dict[str, Any]:
    """Held-out PSNR (full and light decoder) on the 'val' split's fixed clips."""
    val = FrameClips(cfg.val_root or cfg.data_root, "val", cfg.height, cfg.width)
    clips = val.fixed_clips(cfg.eval_clips, cfg.eval_frames)
    return {"val_maps": val.maps, "val_clips": len(clips), "val_frames": clips.shape[0] * clips.shape[1],
            **evaluate(vae, clips)}


def eval_vae(cfg: TrainVAEConfig) -> dict[str, Any]:
    """`phase=eval`: held-out PSNR and sharpness of the VAE at `init`."""
    use_threads(cfg.threads)
    out = {"checkpoint": cfg.init, **evaluate_split(load_vae(cfg.init), cfg)}
    print(json.dumps(out, indent=1))
    return out


def main() -> None:
    """Hydra entry point (config: train/conf/vae.yaml)."""
    import hydra
    from hydra.core.config_store import ConfigStore
    from omegaconf import OmegaConf

    ConfigStore.instance().store(name="vae_schema", node=TrainVAEConfig)
    ConfigStore.instance().store(group="hydra/help", name="vae_help", node=help_node(
        "python -m train.vae", __doc__.split("\n\n")[0], [("", TrainVAEConfig)],
        "Examples: python -m train.vae phase=recon steps=300 | phase=light | phase=recon resume=true", groups=False))

    @hydra.main(config_path="conf", config_name="vae", version_base="1.3")
    def _run(conf) -> None:
        with command_line_exits():
            train_vae(OmegaConf.to_object(conf))

    _run()


if __name__ == "__main__":
    main()
