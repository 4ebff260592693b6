"""Learnability test (issue 23): can a tiny diffusion transformer learn to move the picture with the camera?

    python -m train.learnability                       # render, encode, train every variant, print the table
    python -m train.learnability --variants step anchor4 --train-steps 300 --json outputs/learnability/r.json

A few minutes on one CPU thread, before any compute is spent at scale:

1. **Data**: pure-yaw clips rendered from the real engine (`envs.doom.DoomCameraEnv`, freedoom2;
   training clips on MAP01-24, held-out clips on MAP25-32, never freedoom1). Every step turns by a
   random |yaw|, its sign kept from the last turn with probability `sign_keep` (0.5: independent, so the
   past alone does not predict the next turn; the VAE itself then loses much of the motion of a step
   that reverses the turn, so `--sign-keep 0.8` is the setting that can pass), a share of steps still.
   Encoded with the bundled world's VAE; camera channels normalised with its camera statistics.
2. **Model**: a small `WorldDiT` trained from scratch with the project's flow-matching objective
   (`flow.sample_train_time` with shift 24, `flow.add_noise`, `flow.velocity_target`,
   `losses.flow_matching_loss`), teacher forcing, next-frame layout as in `train.rollout`.
3. **Measure** the one-step generator (t = 1, x0 = eps - v) on the held-out clips, decoded with the
   VAE's streaming light decoder as the world decodes: the horizontal image shift between the last
   frame of step i and the last frame of step i+1 by least squares on grey frames, against the
   shift the step's rotation gives at the image centre (fx * tan(yaw)).
   gain = sum(measured * sign(expected)) / sum(|expected|) over steps that turn by >= 1 px;
   frozen = share of steps turning by >= 2 px whose picture moves by < 0.5 px.
   Teacher-forced (each step from the real past) and rolled out 16 steps on the model's own outputs.

Recycling variants (how the previous latent reaches the model; no model code is changed):
- `plain`: AAPT's recycling, the previous latent as it is (`recycle_warp=False`).
- `step`: `DiTConfig.recycle_warp`, the previous latent warped by this step's rotation.
- `anchorK`: the recycled input is the latent of an anchor frame (the last frame whose index is a
  multiple of K, counted from the clip's first frame), warped by the rotation accumulated since that
  anchor; `anchor1` == `step`. It runs on a `recycle_warp` model: the anchor latent goes in the
  recycled slot and the accumulated rotation's grid in the 2 warp-grid channels, in training (teacher
  forcing, ground-truth anchors) and in rollouts (the model's own output as the anchor).
- `pixel` / `pixelK`: the warp done in image space: the anchor step's decoded last frame (light streaming
  decoder) warped at full resolution by the rotation since the anchor, encoded again as a single image
  (`pixel_warp_encode`), recycled into a plain model. A latent warp by a fraction of a cell is a
  cross-fade of two cells that the decoder draws as "stay" or "jump 8 px"; the encoder stores a
  sub-pixel shift in channel values instead (docs/training.md, "Learnability test").
Warp-alone baselines (no network): the recycled input itself as the prediction.
Controls: every trained variant is also evaluated with its camera zeroed (Plücker maps of no motion,
identity warp grid), which must not move the picture.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from train.collect import TRAIN_MAPS, VAL_MAPS
from train.losses import flow_matching_loss
from worldmodel.camera import normalize_camera, pose_camera_maps, relative_pose, rotation_warp_grid
from worldmodel.config import CameraStats, model_config
from worldmodel.dit import WorldDiT, warp_recycled
from worldmodel.metrics import horizontal_shift
from worldmodel.flow import add_noise, sample_train_time, velocity_target
from worldmodel.vae import CausalVAE

IMAGE_HW = (96, 128)
LATENT_HW = (12, 16)
FPS = 4


@dataclass
class LearnConfig:
    """What to render, how long to train, what to measure."""

    train_clips: int = 48
    """Pure-yaw clips on the training maps (freedoom2 MAP01-24)."""
    val_clips: int = 8
    """Held-out pure-yaw clips on the validation maps (freedoom2 MAP25-32)."""
    steps_per_clip: int = 16
    """Steps (latent frames after the first) per rendered clip; the rollout length."""
    min_yaw: float = 0.03
    """Smallest |yaw| of a turning step, radians (0.03 rad = 1.9 px at the centre of a 128-wide frame)."""
    max_yaw: float = 0.10
    """Largest |yaw| of a step, radians."""
    still_share: float = 0.15
    """Share of steps that do not turn."""
    sign_keep: float = 0.5
    """Probability that a turning step turns the same way as the last turning step (0.5: independent signs)."""
    train_window: int = 8
    """Steps per training window (cut at a random offset from a training clip)."""
    train_steps: int = 250
    """Optimizer steps per variant."""
    batch: int = 8
    lr: float = 3e-4
    weight_decay: float = 0.01
    shift: float = 24.0
    """Flow-matching time shift (the project's s = 24)."""
    dim: int = 128
    depth: int = 4
    heads: int = 4
    seed: int = 0
    cache: str = "outputs/learnability"
    """Folder for the rendered and encoded clips (reused when the settings match)."""
    variants: list[str] = field(default_factory=lambda: ["plain", "step", "anchor4", "pixel4"])


# ---- data -------------------------------------------------------------------------------------


def yaw_schedule(rng: np.random.Generator, steps: int, cfg: LearnConfig) -> np.ndarray:
    """Per-step yaw (steps,): |yaw| ~ U(min, max), the sign kept from the last turn with prob. `sign_keep`, a share still."""
    mag = rng.uniform(cfg.min_yaw, cfg.max_yaw, steps)
    if cfg.sign_keep == 0.5:
        sign = rng.choice([-1.0, 1.0], steps)
    else:
        first = rng.choice([-1.0, 1.0])
        sign = first * np.cumprod(np.where(rng.random(steps) < cfg.sign_keep, 1.0, -1.0))
    still = rng.random(steps) < cfg.still_share
    return np.where(still, 0.0, mag * sign)


def render_yaw_clips(maps: list[str], n: int, cfg: LearnConfig, seed: int, wad: str = "freedoom2") -> dict[str, np.ndarray]:
    """Pure-yaw clips from the engine: frames (n, 1+4S, H, W, 3) uint8, c2w (n, 1+4S, 4, 4), intrinsics (4,)."""
    if "freedoom1" in wad:
        raise ValueError("freedoom1 is the held-out test world: never train or tune on it")
    from envs.doom import DoomCameraEnv

    env = DoomCameraEnv(wad=wad, resolution="256x192", frame_size=IMAGE_HW, frames_per_step=FPS, max_steps=10**9)
    frames, poses, K = [], [], None
    try:
        for i in range(n):
            rng = np.random.default_rng([seed, i])
            obs, info = env.reset(seed=int(rng.integers(2**31 - 1)), options={"map": maps[i % len(maps)], "start": "random"})
            f, p = [obs[-1:]], [info["c2w"][-1:]]
            for yaw in yaw_schedule(rng, cfg.steps_per_clip, cfg):
                obs, _, _, _, info = env.step(np.array([0, 0, 0, 0, yaw, 0], np.float32))
                f.append(obs)
                p.append(info["c2w"])
            frames.append(np.concatenate(f))
            poses.append(np.concatenate(p))
            K = info["intrinsics"]
    finally:
        env.close()
    return {"frames": np.stack(frames), "c2w": np.stack(poses), "intrinsics": np.asarray(K, np.float64)}


@torch.no_grad()
def encode(vae: CausalVAE, frames: np.ndarray, chunk: int = 4) -> torch.Tensor:
    """uint8 clips (n, T, H, W, 3) -> normalised latents (n, 1+S, C, h, w)."""
    out = []
    for i in range(0, len(frames), chunk):
        v = torch.from_numpy(frames[i:i + chunk]).permute(0, 1, 4, 2, 3).float() / 127.5 - 1.0
        out.append(vae.encode(v))
    return torch.cat(out)


def step_poses(c2w: np.ndarray) -> np.ndarray:
    """Video-frame poses (n, 1+4S, 4, 4) -> the pose at the end of every step (n, 1+S, 4, 4)."""
    return c2w[:, ::FPS]


def expected_shift(c2w: np.ndarray, K: np.ndarray) -> np.ndarray:
    """Horizontal image shift (px) each step's rotation gives at the image centre: (n, 1+4S, 4, 4) -> (n, S).

    The content of the new frame sits at fx * tan(yaw) pixels from where it was (sign: the same as
    `phase_shift`'s, checked on the engine's own frames, whose gain is about 1)."""
    P = step_poses(c2w)
    R = relative_pose(P[:, :-1], P[:, 1:])[..., :3, :3]  # (n, S, 3, 3): step i+1 in step i's camera
    fwd = R[..., :, 2]  # the new optical axis in the old camera
    return -K[0] * fwd[..., 0] / fwd[..., 2]


def image_shift(a: np.ndarray, b: np.ndarray) -> float:
    """Horizontal shift (px) of grey frame b against a (H, W), by least squares (`metrics.horizontal_shift`).

    Not phase correlation: it weighs every frequency alike and read a blurry rollout that moves as
    still (docs/training.md, "Learnability test")."""
    return horizontal_shift(a, b)


def grey(frames: torch.Tensor | np.ndarray) -> np.ndarray:
    """Frames (..., 3, H, W) in [-1, 1] (torch) or (..., H, W, 3) uint8 (numpy) -> grey (..., H, W) in [0, 255]."""
    if isinstance(frames, torch.Tensor):
        return ((frames.float().clamp(-1, 1) + 1) * 127.5).mean(-3).cpu().numpy()
    return frames.astype(np.float32).mean(-1)


def shift_scores(measured: np.ndarray, expected: np.ndarray) -> dict[str, float]:
    """gain = sum(m sign(e)) / sum(|e|) over steps with |e| >= 1 px; frozen = share of |e| >= 2 px steps with |m| < 0.5 px."""
    m, e = np.asarray(measured).ravel(), np.asarray(expected).ravel()
    turn = np.abs(e) >= 1.0
    big = np.abs(e) >= 2.0
    gain = float((m[turn] * np.sign(e[turn])).sum() / max(np.abs(e[turn]).sum(), 1e-9))
    frozen = float((np.abs(m[big]) < 0.5).mean()) if big.any() else float("nan")
    still = ~turn
    return {"gain": gain, "frozen": frozen, "still_motion_px": float(np.abs(m[still]).mean()) if still.any() else float("nan"),
            "steps": int(turn.sum())}


def frame_shifts(greys: np.ndarray) -> np.ndarray:
    """Grey step frames (n, 1+S, H, W) -> shift between consecutive steps (n, S)."""
    n, T = greys.shape[:2]
    return np.array([[image_shift(greys[c, i], greys[c, i + 1]) for i in range(T - 1)] for c in range(n)])


# ---- recycling variants ------------------------------------------------------------------------


def anchor_of(i: int, k: int) -> int:
    """Frame whose latent is recycled (warped) when model frame i predicts frame i + 1; k = 0: plain/step."""
    return i - i % k if k > 0 else i


def parse_variant(name: str) -> tuple[bool, int]:
    """'plain' / 'pixel' -> (no latent warp, 1); 'step' -> (warp, 1); 'anchorK' -> (warp, K); 'pixelK' -> (no latent warp, K)."""
    if name in ("plain", "pixel"):
        return False, 1
    if name.startswith("pixel") and name[5:].isdigit() and int(name[5:]) >= 1:
        return False, int(name[5:])
    if name == "step":
        return True, 1
    if name.startswith("anchor") and name[6:].isdigit() and int(name[6:]) >= 1:
        return True, int(name[6:])
    raise ValueError(f"unknown variant {name!r}: plain, step, anchorK, pixel or pixelK (K >= 1)")


def is_pixel(name: str) -> bool:
    return name.startswith("pixel")


@dataclass
class ClipInputs:
    """Per-clip model inputs of a variant for every model frame: what to recycle and the camera."""

    plucker: torch.Tensor  # (n, S, 24, h, w) normalised
    grids: torch.Tensor  # (n, S, S, 2, h, w): grids[c, a, j] = warp from step-frame a to frame j+1 (a <= j)
    rot: np.ndarray  # (n, S, S, 3, 3): rot[c, a, j] = rotation of step-frame j+1 in frame a
    K: np.ndarray  # intrinsics (4,)

    def subset(self, idx: Any) -> ClipInputs:
        return ClipInputs(self.plucker[idx], self.grids[idx], self.rot[idx], self.K)

    def image_grid(self, a: int, i: int) -> torch.Tensor:
        """Image-resolution warp grid (n, 2, H, W) from step-frame a to frame i + 1 (`pixel` variants)."""
        return torch.from_numpy(rotation_warp_grid(self.rot[:, a, i], self.K, IMAGE_HW, IMAGE_HW))


def clip_inputs(c2w: np.ndarray, K: np.ndarray, stats: CameraStats, zero_camera: bool = False) -> ClipInputs:
    """Plücker maps and every anchor-to-frame warp grid of clips with video-frame poses (n, 1+4S, 4, 4)."""
    if zero_camera:
        c2w = np.broadcast_to(c2w[:, :1], c2w.shape).copy()
    maps = np.stack([pose_camera_maps(c, K, IMAGE_HW, LATENT_HW, FPS) for c in c2w])  # (n, S, 24, h, w)
    maps = normalize_camera(maps, stats, K, IMAGE_HW)
    P = step_poses(c2w)
    n, S = P.shape[0], P.shape[1] - 1
    R = relative_pose(P[:, :, None], P[:, None, 1:])[..., :3, :3]  # (n, 1+S, S, 3, 3): frame j+1 in frame a
    grids = rotation_warp_grid(R[:, :S], K, IMAGE_HW, LATENT_HW)  # (n, S, S, 2, h, w)
    return ClipInputs(torch.from_numpy(maps), torch.from_numpy(grids), R[:, :S], np.asarray(K, np.float64))


def teacher_inputs(latents: torch.Tensor, ci: ClipInputs, warp: bool, k: int, start: int = 0,
                   length: int | None = None, pixel: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(recycled, camera, targets) of a window of model frames [start, start+length) with ground-truth anchors.

    Anchors are counted from the window's first frame (as a rollout from that frame would). `pixel`
    (n, S, C, h, w): the `pixel` variant's recycled latents (`pixel_recycled`), used as they are."""
    S = ci.plucker.shape[1]
    length = S - start if length is None else length
    idx = range(start, start + length)
    anchors = [start + anchor_of(i - start, k) for i in idx]
    if pixel is not None:
        recycled = pixel[:, start:start + length]
    else:
        recycled = torch.stack([latents[:, a] for a in anchors], 1)
    cam = ci.plucker[:, start:start + length]
    if warp:
        g = torch.stack([ci.grids[:, a, i] for a, i in zip(anchors, idx, strict=True)], 1)
        cam = torch.cat([cam, g], 2)
    return recycled, cam, latents[:, start + 1:start + 1 + length]


@torch.no_grad()
def pixel_warp_encode(vae: CausalVAE, frames: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """`pixel` recycling: decoded frames (n, 3, H, W) in [-1, 1], resampled at image resolution by the step's
    rotation grid (n, 2, H, W) (edge pixels repeated where the old view ends), encoded as single images
    (the VAE's first-frame path) -> (n, C, h, w). Sub-pixel motion is then stored the way the encoder
    stores it, not as a cross-fade between latent cells."""
    warped = F.grid_sample(frames, grid.permute(0, 2, 3, 1).to(frames.dtype), mode="bilinear",
                           padding_mode="border", align_corners=False)
    return vae.encode(warped[:, None])[:, 0]


@torch.no_grad()
def pixel_recycled(vae: CausalVAE, latents: torch.Tensor, ci: ClipInputs, k: int = 1, chunk: int = 8) -> torch.Tensor:
    """Teacher-forcing inputs of the `pixel` variants: the real latents stream-decoded (light decoder, as a
    rollout decodes); model frame i recycles the last frame of its anchor step a = i - i % k warped by the
    rotation from a to i + 1, encoded -> (n, S, C, h, w). Anchors count from the clip's first frame."""
    out = []
    for c in range(0, latents.shape[0], chunk):
        z = latents[c:c + chunk]
        sub = ci.subset(slice(c, c + chunk))
        dec = vae.stream_decoder(z.shape[0], light=True)
        dec.reset()
        frames, rows = [], []
        for i in range(z.shape[1] - 1):
            frames.append(dec.step(z[:, i])[:, -1])
            a = anchor_of(i, k)
            rows.append(pixel_warp_encode(vae, frames[a], sub.image_grid(a, i)))
        out.append(torch.stack(rows, 1))
    return torch.cat(out)


def new_model(cfg: LearnConfig, warp: bool) -> WorldDiT:
    mc = model_config("tiny", dim=cfg.dim, depth=cfg.depth, heads=cfg.heads, window=cfg.steps_per_clip,
                      recycle_warp=warp, attention_backend="sdpa")
    return WorldDiT(mc)


def train_variant(cfg: LearnConfig, name: str, latents: torch.Tensor, ci: ClipInputs, log=print,
                  pixel: torch.Tensor | None = None) -> tuple[WorldDiT, dict]:
    """Flow matching, teacher forcing, random windows of `train_window` steps -> (model, stats)."""
    warp, k = parse_variant(name)
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    model = new_model(cfg, warp).train()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    n, S = ci.plucker.shape[:2]
    W = min(cfg.train_window, S)
    t0, losses = time.time(), []
    for step in range(cfg.train_steps):
        clips = rng.choice(n, cfg.batch, replace=n < cfg.batch)
        # one window start per batch (anchor phase is counted from the window's first frame)
        start = int(rng.integers(0, S - W + 1))
        if pixel is not None:  # precomputed anchors count from the clip's first frame: windows start on one
            start = k * int(rng.integers(0, (S - W) // k + 1))
        recycled, cam, x0 = teacher_inputs(latents[clips], ci.subset(clips), warp, k, start, W,
                                           None if pixel is None else pixel[clips])
        eps = torch.randn(x0.shape, generator=gen)
        t = sample_train_time(x0.shape[0], cfg.shift, gen)
        v = model(add_noise(x0, eps, t), recycled, cam, t)
        loss = flow_matching_loss(v, velocity_target(x0, eps))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
        if (step + 1) % 50 == 0:
            log(f"  [{name}] step {step + 1}/{cfg.train_steps} loss {np.mean(losses[-50:]):.4f} ({time.time() - t0:.0f} s)")
    return model.eval(), {"train_s": time.time() - t0, "final_loss": float(np.mean(losses[-50:]))}


# ---- generation and measurement ------------------------------------------------------------------


@torch.no_grad()
def teacher_forced(model: WorldDiT, latents: torch.Tensor, ci: ClipInputs, warp: bool, k: int,
                   gen: torch.Generator, pixel: torch.Tensor | None = None) -> torch.Tensor:
    """One-step predictions of every frame from the real past (parallel forward) -> (n, S, C, h, w).

    With anchors, frame i+1 is predicted from the real anchor latent warped to it."""
    recycled, cam, x0 = teacher_inputs(latents, ci, warp, k, pixel=pixel)
    eps = torch.randn(x0.shape, generator=gen)
    return eps - model(eps, recycled, cam, 1.0)


@torch.no_grad()
def rollout(model: WorldDiT, first: torch.Tensor, ci: ClipInputs, warp: bool, k: int,
            gen: torch.Generator, vae: CausalVAE | None = None) -> torch.Tensor:
    """Free rollout from the first latent (n, C, h, w), recycling (anchoring on) its own outputs -> (n, 1+S, C, h, w).

    With `vae` (the `pixel` variant) each output is decoded, warped in pixels and re-encoded to recycle."""
    n, S = ci.plucker.shape[:2]
    cache = model.new_cache(n, LATENT_HW)
    outs = [first]
    dec, frames = None, []
    if vae is not None:
        dec = vae.stream_decoder(n, light=True)
        dec.reset()
        frames.append(dec.step(first)[:, -1])
    for i in range(S):
        a = anchor_of(i, k)
        cam = ci.plucker[:, i]
        recycled = outs[a]
        if warp:
            cam = torch.cat([cam, ci.grids[:, a, i]], 1)
        if dec is not None:
            recycled = pixel_warp_encode(vae, frames[a], ci.image_grid(a, i))
        eps = torch.randn(first.shape, generator=gen)
        outs.append(eps - model.forward_step(eps, recycled, cam, 1.0, cache))
        if dec is not None:
            frames.append(dec.step(outs[-1])[:, -1])
    return torch.stack(outs, 1)


@torch.no_grad()
def warp_alone(latents: torch.Tensor, ci: ClipInputs, k: int, rolled: bool) -> torch.Tensor:
    """No network: the recycled input itself as the next latent (teacher-forced (n, S, ...) or rolled (n, 1+S, ...))."""
    n, S = ci.plucker.shape[:2]
    if not rolled:
        recycled, cam, _ = teacher_inputs(latents, ci, True, k)
        return warp_recycled(recycled, cam[:, :, -2:])
    outs = [latents[:, 0]]
    for i in range(S):
        a = anchor_of(i, k)
        outs.append(warp_recycled(outs[a][:, None], ci.grids[:, a, i][:, None])[:, 0])
    return torch.stack(outs, 1)


@torch.no_grad()
def decode_steps(vae: CausalVAE, latents: torch.Tensor) -> np.ndarray:
    """Stream-decode latents (n, 1+S, C, h, w) (light decoder) -> grey last frame of every step (n, 1+S, H, W)."""
    dec = vae.stream_decoder(latents.shape[0], light=True)
    dec.reset()
    return np.stack([grey(dec.step(latents[:, i])[:, -1]) for i in range(latents.shape[1])], 1)


@torch.no_grad()
def decode_teacher_forced(vae: CausalVAE, latents: torch.Tensor, preds: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Real past decoded, each prediction decoded after it: (grey real step frames (n, 1+S, H, W),
    grey predicted frames (n, S, H, W)), prediction i decoded with the decoder state after real frames 0..i."""
    n, S = preds.shape[:2]
    dec = vae.stream_decoder(n, light=True)
    dec.reset()
    real = [grey(dec.step(latents[:, 0])[:, -1])]
    pred = []
    for i in range(S):
        state = dec.snapshot()
        pred.append(grey(dec.step(preds[:, i])[:, -1]))
        dec.restore(state)
        real.append(grey(dec.step(latents[:, i + 1])[:, -1]))
    return np.stack(real, 1), np.stack(pred, 1)


def tf_shifts(real: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """Shift from real step frame i to the prediction of step i+1: (n, 1+S, H, W), (n, S, H, W) -> (n, S)."""
    n, S = pred.shape[:2]
    return np.array([[image_shift(real[c, i], pred[c, i]) for i in range(S)] for c in range(n)])


def sharpness(greys: np.ndarray) -> np.ndarray:
    """Laplacian variance of grey frames (..., H, W) -> (...)."""
    import cv2

    flat = greys.reshape(-1, *greys.shape[-2:]).astype(np.float64)
    return np.array([cv2.Laplacian(g, cv2.CV_64F).var() for g in flat]).reshape(greys.shape[:-2])


def evaluate(vae: CausalVAE, latents: torch.Tensor, ci: ClipInputs, ci0: ClipInputs, expected: np.ndarray,
             model: WorldDiT | None, warp: bool, k: int, seed: int = 0, pixel: bool = False,
             engine_grey: np.ndarray | None = None) -> dict[str, Any]:
    """Teacher-forced and rolled-out scores of a model (None: the warp alone), plus the camera-zeroed control.

    With the engine's grey step frames (n, 1+S, H, W), `rollout_sharpness` is the rolled-out frames'
    Laplacian variance over the engine's (mean over steps 1..S): a picture smeared into streaks can
    still slide the right way."""
    out: dict[str, Any] = {}
    runs = [("", ci)] if model is None else [("", ci), ("zero_", ci0)]
    for tag, c in runs:
        gen = torch.Generator().manual_seed(seed)
        if model is None:
            tf = warp_alone(latents, c, k, rolled=False)
            ro = warp_alone(latents, c, k, rolled=True)
        else:
            pix = pixel_recycled(vae, latents, c, k) if pixel else None
            tf = teacher_forced(model, latents, c, warp, k, gen, pix)
            ro = rollout(model, latents[:, 0], c, warp, k, gen, vae if pixel else None)
        real, pred = decode_teacher_forced(vae, latents, tf)
        ro_grey = decode_steps(vae, ro)
        m_tf, m_ro = tf_shifts(real, pred), frame_shifts(ro_grey)
        if engine_grey is not None:
            out[f"{tag}rollout_sharpness"] = float(np.mean(sharpness(ro_grey[:, 1:]) / np.maximum(sharpness(engine_grey[:, 1:]), 1e-6)))
        out[f"{tag}tf"], out[f"{tag}rollout"] = shift_scores(m_tf, expected), shift_scores(m_ro, expected)
        out[f"{tag}tf_shifts"], out[f"{tag}rollout_shifts"] = m_tf.round(2).tolist(), m_ro.round(2).tolist()
        out[f"{tag}tf_mse"] = float((tf - latents[:, 1:]).pow(2).mean())
        out[f"{tag}rollout_mse"] = float((ro[:, 1:] - latents[:, 1:]).pow(2).mean())
    return out


# ---- the experiment ------------------------------------------------------------------------------


def load_data(cfg: LearnConfig, vae: CausalVAE, log=print) -> dict[str, Any]:
    """Render (or reuse) the train/val clips and encode them."""
    names = ["train_clips", "val_clips", "steps_per_clip", "min_yaw", "max_yaw", "still_share", "seed"]
    key = {k: getattr(cfg, k) for k in names + (["sign_keep"] if cfg.sign_keep != 0.5 else [])}
    folder = Path(cfg.cache)
    tag = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:8]
    path = folder / f"clips_{tag}.pt"
    if path.exists():
        try:  # tensors and plain values only: nothing is unpickled
            d = torch.load(path, weights_only=True)
        except Exception as e:  # an older cache layout (numpy arrays) or a broken file: render again
            log(f"not reusing {path}: {type(e).__name__}")
            d = {}
        if d.get("key") == key:
            log(f"reusing {path}")
            return _from_cache(d)
    t0 = time.time()
    d: dict[str, Any] = {"key": key}
    for split, maps, n, s in (("train", TRAIN_MAPS, cfg.train_clips, cfg.seed), ("val", VAL_MAPS, cfg.val_clips, cfg.seed + 10_000)):
        clips = render_yaw_clips(maps, n, cfg, s)
        log(f"rendered {n} {split} clips ({time.time() - t0:.0f} s)")
        d[split] = {"latents": encode(vae, clips["frames"]), "c2w": clips["c2w"], "intrinsics": clips["intrinsics"],
                    "grey": grey(clips["frames"][:, ::FPS])}
        log(f"encoded {n} {split} clips ({time.time() - t0:.0f} s)")
    folder.mkdir(parents=True, exist_ok=True)
    torch.save({"key": key, **{sp: {k: torch.as_tensor(v) for k, v in d[sp].items()} for sp in ("train", "val")}}, path)
    return d


def _from_cache(d: dict[str, Any]) -> dict[str, Any]:
    """A cached data dict (all tensors) -> latents as tensors, poses, intrinsics and grey frames as numpy."""
    return {"key": d["key"], **{sp: {k: v if k == "latents" else v.numpy() for k, v in d[sp].items()}
                                for sp in ("train", "val")}}


def run(cfg: LearnConfig, log=print, baselines: bool = True) -> dict[str, Any]:
    """Everything: data, the no-network references, each variant trained and measured."""
    from worldmodel.world import World

    torch.set_num_threads(1)
    world = World.load()
    vae, stats = world.vae, world.camera_stats
    data = load_data(cfg, vae, log)
    tr, va = data["train"], data["val"]
    K = va["intrinsics"]
    expected = expected_shift(va["c2w"], K)
    ci_val, ci_val0 = clip_inputs(va["c2w"], K, stats), clip_inputs(va["c2w"], K, stats, zero_camera=True)
    results: dict[str, Any] = {"config": asdict(cfg), "rows": {}}
    rows = results["rows"]
    if baselines:
        rows["engine frames"] = {"rollout": shift_scores(frame_shifts(va["grey"]), expected)}
        rows["VAE reconstruction"] = {"rollout": shift_scores(frame_shifts(decode_steps(vae, va["latents"])), expected)}
        for k in sorted({parse_variant(v)[1] for v in cfg.variants if parse_variant(v)[0]} | {1}):
            rows[f"warp alone, {'step' if k == 1 else f'anchor{k}'}"] = evaluate(vae, va["latents"], ci_val, ci_val0, expected, None, True, k)
        log(json.dumps({k: v for k, v in rows.items()}, indent=None)[:2000])
    ci_tr = clip_inputs(tr["c2w"], tr["intrinsics"], stats)
    results["expected_shifts"] = expected.round(2).tolist()
    for name in cfg.variants:
        warp, k = parse_variant(name)
        t0 = time.time()
        pix_tr = None
        if is_pixel(name):
            pix_tr = pixel_recycled(vae, tr["latents"], ci_tr, k)
            log(f"{name} recycling inputs of the training clips ({time.time() - t0:.0f} s)")
        model, info = train_variant(cfg, name, tr["latents"], ci_tr, log, pix_tr)
        info["train_s"] = time.time() - t0  # with the pixel variants' input preparation
        t0 = time.time()
        r = evaluate(vae, va["latents"], ci_val, ci_val0, expected, model, warp, k, cfg.seed, pixel=is_pixel(name),
                     engine_grey=va["grey"])
        r.update(info, eval_s=time.time() - t0)
        rows[name] = r
        log(f"{name}: " + summary_line(r))
    return results


def summary_line(r: dict[str, Any]) -> str:
    def g(key: str) -> str:
        return "-" if key not in r else f"{r[key]['gain']:.2f}/{r[key]['frozen']:.0%}"
    extra = f", rollout sharpness {r['rollout_sharpness']:.2f} of the engine's" if "rollout_sharpness" in r else ""
    extra += f", {r['train_s'] / 60:.1f} min" if "train_s" in r else ""
    return (f"TF gain/frozen {g('tf')}, rollout {g('rollout')}; camera zeroed TF {g('zero_tf')}, "
            f"rollout {g('zero_rollout')}{extra}")


def table(results: dict[str, Any]) -> str:
    """Markdown table of a run's rows."""
    lines = ["| variant | TF gain | rollout gain | rollout frozen | camera-zeroed TF / rollout gain | TF / rollout latent MSE | rollout sharpness | CPU min |",
             "|---|---|---|---|---|---|---|---|"]
    for name, r in results["rows"].items():
        def f(key: str, what: str, fmt: str = "{:.2f}") -> str:
            v = r.get(key, {}).get(what)
            return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else fmt.format(v)
        mse = f"{r['tf_mse']:.3f} / {r['rollout_mse']:.3f}" if "tf_mse" in r else "-"
        zero = f"{f('zero_tf', 'gain')} / {f('zero_rollout', 'gain')}"
        mins = f"{(r['train_s'] + r['eval_s']) / 60:.1f}" if "train_s" in r else "-"
        sharp = f"{r['rollout_sharpness']:.2f}" if "rollout_sharpness" in r else "-"
        lines.append(f"| {name} | {f('tf', 'gain')} | {f('rollout', 'gain')} | {f('rollout', 'frozen', '{:.0%}')} | "
                     f"{zero} | {mse} | {sharp} | {mins} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    d = LearnConfig()
    for f in ("train_clips", "val_clips", "train_steps", "batch", "dim", "depth", "heads", "seed", "train_window"):
        p.add_argument(f"--{f.replace('_', '-')}", type=int, default=getattr(d, f))
    for f in ("lr", "sign_keep", "min_yaw", "max_yaw", "still_share"):
        p.add_argument(f"--{f.replace('_', '-')}", type=float, default=getattr(d, f))
    p.add_argument("--cache", default=d.cache)
    p.add_argument("--variants", nargs="*", default=d.variants)
    p.add_argument("--no-baselines", action="store_true")
    p.add_argument("--json", default=None, help="write the results here")
    a = p.parse_args(argv)
    cfg = LearnConfig(**{k: getattr(a, k) for k in asdict(d) if hasattr(a, k)})
    for v in cfg.variants:
        parse_variant(v)
    res = run(cfg, baselines=not a.no_baselines)
    print(table(res))
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
