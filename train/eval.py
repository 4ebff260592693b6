"""Evaluate a learned world against the real engine: `python -m train.eval --checkpoint PATH --json out.json --report out/`.

Held-out trajectories are rendered fresh by `DoomCamera-v0` on the validation maps (freedoom2
MAP25-MAP32; freedoom1 only with `--test-world`), driven by the scripted explorer exactly as
`train.collect` records data (same code, `record_clip`), at the world's resolution. Each
trajectory's realised camera poses give the actions (`poses_to_actions`), so the model is asked
for exactly the motion the engine performed. Rendering is deterministic per seed, so every run
sees the same trajectories; the stored `data/doom/val` shards are not used (they are 128 steps,
shorter than the 360-step long run).

Measured (docs/eval.md explains each):
- teacher-forced next-step PSNR/SSIM (the recycled input is the VAE latent of the real previous
  frame), plus the VAE's own reconstruction PSNR/SSIM as the ceiling;
- autoregressive PSNR/SSIM at steps 1, 4, 16, 64 (free rollout from the real first frame);
- camera following between consecutive step-end frames (worldmodel.metrics.camera_following);
- long-run stability over `long_steps` steps (360 = 1,440 frames): per-frame statistics against
  the real engine's and the collapse verdict;
- the same for baselines: repeat the last frame, the model with zero actions, the model with
  actions shuffled across steps and trajectories; and the estimator run on the real frames.

One function per measurement (`measure_*`), each driving the world only through its public API:
teacher forcing is `StreamingGenerator.step(actions, recycled=real)`, a what-if decode is wrapped
in `StreamDecoder.snapshot()`/`restore()`, and the memory of a rollout is passed to
`world.streams(reprojection=...)` (the world's own setting is never swapped). Outputs default to
the git-ignored `outputs/eval/`; `--threads` follows `worldmodel.threads`; `--progress` shows bars.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from tqdm.auto import tqdm

from worldmodel.camera import poses_to_actions
from worldmodel.dit import warp_recycled
from worldmodel.metrics import (
    CollapseConfig,
    MotionConfig,
    camera_following,
    detect_collapse,
    frame_stats,
    psnr,
    ssim,
    yaw_response,
)
from worldmodel.reproject import ReprojectionConfig, add_reprojection_argument
from worldmodel.threads import use_threads
from worldmodel.world import World, images_to_video, video_to_uint8

VAL_MAPS = [f"MAP{i:02d}" for i in range(25, 33)]
TEST_MAPS = [f"E1M{i}" for i in range(1, 9)]
METHODS = ("model", "repeat_last_frame", "camera_zeroed", "camera_shuffled")
"""Generated-frame methods compared on the same trajectories."""

Memory = ReprojectionConfig | None | Literal["world"]
RESPONSE_SETTINGS = ("full", "quick", "off")
"""Settings of `EvalConfig.response`: the full or CI-sized `train.eval_response` report, or none."""
"""A rollout's reprojection memory: a config, None (the network alone) or "world" (the world file's)."""


@dataclass
class EvalConfig:
    """Options of `python -m train.eval` (the full setting by default; `--quick` shrinks it for CI)."""

    checkpoint: str | None = None
    """World file (worldmodel.world.World); None = the bundled world."""
    json: str = "outputs/eval/eval.json"
    """Where to write the results (JSON); the default folder is git-ignored."""
    report: str | None = "outputs/eval/report"
    """Folder for the report (PNG curves, frame strips, a GIF, index.html); None = no report."""
    trajectories: int = 8
    """Held-out trajectories (trajectory i uses map i % number of maps)."""
    horizon: int = 64
    """Steps per trajectory for the PSNR/SSIM and camera-following metrics."""
    ar_steps: list[int] = field(default_factory=lambda: [1, 4, 16, 64])
    """Autoregressive steps at which PSNR/SSIM are reported (those <= horizon)."""
    long_steps: int = 360
    """Steps of the long-run stability rollout (360 steps = 1,440 frames at 4 frames per step)."""
    long_trajectories: int = 2
    """Trajectories of the long run."""
    seed: int = 0
    """Base seed of the trajectories (as in train.collect) and of the model's noise."""
    test_world: bool = False
    """Evaluate on freedoom1 (the held-out test world) instead of the freedoom2 validation maps."""
    threads: int | None = None
    """torch CPU threads (None: one per idle core, at most torch's default; `worldmodel.threads`)."""
    device: str = "cpu"
    """Torch device of the model."""
    min_translation: float = 2.0
    """Commanded translation (scene units per step) below which no translation direction is scored."""
    reprojection: str | None = None
    """Override the world's reprojection memory (`worldmodel.reproject`): 'off', 'on' (the defaults),
    or 'key=value,...' of ReprojectionConfig fields; None keeps what the world file says."""
    progress: bool | None = None
    """Progress bars on stderr (tqdm): None = only when stderr is a terminal, True = always, False = never."""
    response: str = "full"
    """What a person notices (`train.eval_response`: turn, walk, idle, return-to-view, start frame):
    'full', 'quick' (the CI setting) or 'off'."""

    def __post_init__(self) -> None:
        if self.response not in RESPONSE_SETTINGS:  # refused before minutes of rendering, not after
            raise ValueError(f"EvalConfig.response must be one of {RESPONSE_SETTINGS}, got {self.response!r}")

    @classmethod
    def quick(cls, **overrides: Any) -> EvalConfig:
        """The CI setting: 2 trajectories, 16 steps, a 64-step long run."""
        return cls(**{"trajectories": 2, "horizon": 16, "long_steps": 64, "long_trajectories": 1, "response": "quick",
                      **overrides})

    def memory(self, world: World) -> ReprojectionConfig | None:
        """The reprojection memory the model rollouts use: the override if given, else the world file's."""
        return world.meta.reprojection if self.reprojection is None else ReprojectionConfig.parse(self.reprojection)


def progress(items: Iterable[Any], desc: str, show: bool | None = None, total: int | None = None) -> Iterable[Any]:
    """`items` with a tqdm bar on stderr that clears when done (`show` as in EvalConfig.progress)."""
    return tqdm(items, desc=desc, total=total, leave=False, disable=None if show is None else not show)


# ----------------------------------------------------------------------------- data


def record_trajectories(
    n: int, steps: int, image_hw: tuple[int, int], frames_per_step: int, seed: int, test_world: bool,
    offset: int = 0, show: bool | None = None,
) -> list[dict[str, Any]]:
    """n explorer trajectories of exactly `steps` steps from DoomCamera-v0 (frames (1 + steps*fps, H, W, 3), c2w)."""
    from train.collect import ClipSpec, CollectConfig, clip_seed, record_clip

    wad, maps = ("freedoom1", TEST_MAPS) if test_world else ("freedoom2", VAL_MAPS)
    cfg = CollectConfig(wad=wad, frame_size=list(image_hw), frames_per_step=frames_per_step,
                        steps_per_clip=steps, start="random")
    out = []
    for i in progress(range(offset, offset + n), f"render {steps}-step trajectories", show):
        m = maps[i % len(maps)]
        for attempt in range(8):
            # A clip that walks over an exit line ends early; draw another start on the same map.
            s = clip_seed(seed, "val", i + 1000 * attempt)
            clip = record_clip(cfg, ClipSpec("val", i, m, s, ""))
            if len(clip["frames"]) == 1 + steps * frames_per_step:
                break
        else:
            raise RuntimeError(f"map {m}: 8 trajectories in a row ended before {steps} steps; use fewer steps")
        clip.update(map=m, seed=s, wad=wad)
        out.append(clip)
    return out


def stack_trajectories(trajs: list[dict[str, Any]], frames_per_step: int) -> tuple[np.ndarray, np.ndarray]:
    """Frames (B, 1 + S*fps, H, W, 3) uint8 and realised actions (B, S, 6) of equal-length trajectories."""
    frames = np.stack([t["frames"] for t in trajs])
    actions = np.stack([poses_to_actions(t["c2w"], frames_per_step) for t in trajs])
    return frames, actions


@torch.no_grad()
def encode_real(world: World, frames: np.ndarray) -> torch.Tensor:
    """Real frames (B, 1 + S*fps, H, W, 3) -> their VAE latents (B, 1 + S, C, h, w), streamed step by step."""
    B, fps = frames.shape[0], world.frames_per_step
    enc = world.vae.stream_encoder(B)
    dtype = next(world.vae.parameters()).dtype
    video = lambda f: images_to_video(f, world.device, dtype)[:, 0]  # noqa: E731  (B, 3, H, W)
    zs = [enc.step(video(frames[:, 0])[:, None])]
    for k in range((frames.shape[1] - 1) // fps):
        group = torch.stack([video(frames[:, 1 + k * fps + j]) for j in range(fps)], dim=1)  # (B, fps, 3, H, W)
        zs.append(enc.step(group))
    return torch.stack(zs, dim=1)


# ----------------------------------------------------------------------------- generation


def seeds_for(cfg: EvalConfig, batch: int) -> list[int]:
    """Noise seeds of the streams (fixed, so a rerun generates the same frames)."""
    return [cfg.seed * 1000 + i for i in range(batch)]


def rollout(
    world: World, first: np.ndarray, actions: np.ndarray, seeds: list[int], reprojection: Memory = "world",
    show: bool | None = False, desc: str = "rollout",
) -> tuple[np.ndarray, float]:
    """Free rollout: first images (B, H, W, 3), actions (B, S, 6) -> frames (B, 1 + S*fps, H, W, 3), s per step."""
    streams = world.streams(len(first), seeds, reprojection=reprojection)
    out = [streams.reset(first)[:, :1]]
    t0 = time.perf_counter()
    for k in progress(range(actions.shape[1]), desc, show):
        out.append(streams.step(actions[:, k]))
    return np.concatenate(out, axis=1), (time.perf_counter() - t0) / max(actions.shape[1], 1)


@torch.no_grad()
def warp_rollout(world: World, first: np.ndarray, actions: np.ndarray, show: bool | None = False) -> np.ndarray:
    """The warp alone, no transformer: each step's latent is the last one resampled by the commanded
    rotation, as the model's own input warp does (`recycle_warp` worlds only) -> frames (B, 1 + S*fps, H, W, 3).
    Shows what the transformer adds to the geometry it is handed."""
    streams = world.streams(len(first), reprojection=None)
    out = [streams.reset(first)[:, :1]]
    z = world.encode_images(first)  # (B, C, h, w): the latent the streams started from
    for k in progress(range(actions.shape[1]), "warp the last latent", show):
        grid = streams.gen.warp_grid(actions[:, k])  # (B, 2, h, w)
        z = warp_recycled(z[:, None], grid[:, None])[:, 0]
        out.append(video_to_uint8(streams.decoder.step(z)))
    return np.concatenate(out, axis=1)


@torch.no_grad()
def teacher_forced(
    world: World, frames: np.ndarray, z_real: torch.Tensor, actions: np.ndarray, seeds: list[int],
    reprojection: Memory = "world", show: bool | None = False, desc: str = "teacher forced",
) -> tuple[np.ndarray, np.ndarray]:
    """Next-step predictions given the real past: (predicted, VAE-reconstructed) frames (B, S, fps, H, W, 3).

    Each step the generator is teacher-forced with the real previous latent; its prediction is decoded
    from the decoder cache of the real past (snapshot, decode, restore), then the real latent advances
    the decoder, whose output is the VAE reconstruction of the real step (the ceiling for any model).
    """
    streams = world.streams(len(frames), seeds, reprojection=reprojection)
    streams.reset(frames[:, 0])
    dec = streams.decoder
    preds, recons = [], []
    for k in progress(range(actions.shape[1]), desc, show):
        z_hat = streams.gen.step(actions[:, k], recycled=z_real[:, k])  # (B, C, h, w)
        real_past = dec.snapshot()
        preds.append(video_to_uint8(dec.step(z_hat)))
        dec.restore(real_past)
        recons.append(video_to_uint8(dec.step(z_real[:, k + 1])))
    return np.stack(preds, axis=1), np.stack(recons, axis=1)


def shuffled(actions: np.ndarray, seed: int) -> np.ndarray:
    """Actions (B, S, 6) permuted across steps and trajectories (same marginal motion, wrong order)."""
    flat = actions.reshape(-1, actions.shape[-1])
    perm = np.random.default_rng(seed).permutation(len(flat))
    return flat[perm].reshape(actions.shape)


def method_actions(actions: np.ndarray, seed: int) -> dict[str, np.ndarray]:
    """The actions each model variant is driven with."""
    return {"model": actions, "camera_zeroed": np.zeros_like(actions), "camera_shuffled": shuffled(actions, seed)}


# ----------------------------------------------------------------------------- scoring


def per_step(metric: Callable[[np.ndarray, np.ndarray], np.ndarray], pred: np.ndarray, real: np.ndarray,
             fps: int) -> np.ndarray:
    """Metric of generated vs real video (B, 1 + S*fps, ...) per step (mean over its fps frames) -> (B, S)."""
    B, S = pred.shape[0], (pred.shape[1] - 1) // fps
    v = metric(pred[:, 1:], real[:, 1:])  # (B, S*fps)
    return v.reshape(B, S, fps).mean(-1)


def quality(pred: np.ndarray, real: np.ndarray, fps: int) -> dict[str, np.ndarray]:
    """PSNR and SSIM per step (B, S) of a video (B, 1 + S*fps, H, W, 3) against the real one."""
    return {"psnr": per_step(psnr, pred, real, fps), "ssim": per_step(ssim, pred, real, fps)}


def at_steps(curve: np.ndarray, steps: list[int]) -> dict[str, float]:
    """Means over trajectories of a (B, S) curve at 1-based steps that exist."""
    return {str(s): float(curve[:, s - 1].mean()) for s in steps if s <= curve.shape[1]}


def following(frames: np.ndarray, actions: np.ndarray, K: list[float], fps: int, cfg: EvalConfig) -> dict[str, Any]:
    """Camera following of videos (B, 1 + S*fps, ...) against actions (B, S, 6), pooled over trajectories:
    the feature-based pose errors and the yaw response (how far the picture slides per commanded turn)."""
    res = [camera_following(f[::fps], a, K, cfg.min_translation, MotionConfig()) for f, a in zip(frames, actions)]
    pooled = type(res[0])(*([x for r in res for x in getattr(r, n)] for n in
                           ("rot_err_deg", "rot_ok", "trans_err_deg", "trans_ok", "kinds")))
    S = actions.shape[1]
    return {
        **pooled.summary(),
        "rot_err_deg_per_step": np.asarray(pooled.rot_err_deg).reshape(len(res), S).mean(0).tolist(),
        "kinds": {k: pooled.kinds.count(k) for k in sorted(set(pooled.kinds))},
        **yaw_response(frames[:, ::fps], actions, float(K[0])),
    }


def summarize_stats(stats: dict[str, np.ndarray]) -> dict[str, float]:
    """Mean of each per-frame statistic, and its mean over the last quarter (drift shows there)."""
    out = {}
    for k, v in stats.items():
        out[k] = float(v.mean())
        out[f"{k}_last_quarter"] = float(v[-max(len(v) // 4, 1):].mean())
    return out


def jsonable(x: Any) -> Any:
    """Numpy scalars/arrays and NaN -> plain JSON values (NaN and inf become null)."""
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return jsonable(x.tolist())
    if isinstance(x, (np.floating, float)):
        return float(x) if np.isfinite(x) else None
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, np.bool_):
        return bool(x)
    return x


# ----------------------------------------------------------------------------- measurements


@dataclass
class Held:
    """The held-out trajectories every measurement scores against, and how to roll the model out on them."""

    frames: np.ndarray
    """Real frames (B, 1 + S*fps, H, W, 3) uint8."""
    actions: np.ndarray
    """Realised actions (B, S, 6)."""
    drive: dict[str, np.ndarray]
    """The actions each model method is driven with (`method_actions`)."""
    seeds: list[int]
    """Noise seeds of the streams."""
    memory: ReprojectionConfig | None
    """The reprojection memory of the model's rollouts."""
    fps: int
    """Video frames per step."""


def measure_teacher_forced(
    world: World, held: Held, cfg: EvalConfig
) -> tuple[dict[str, dict[str, np.ndarray]], np.ndarray]:
    """Teacher forcing, one step ahead of the real past, per method -> ({method: PSNR/SSIM (B, S)},
    the VAE reconstruction of the real video (B, 1 + S*fps, H, W, 3))."""
    frames, fps = held.frames, held.fps
    B, S, hw = held.actions.shape[0], held.actions.shape[1], frames.shape[2:4]
    z_real = encode_real(world, frames)
    tf: dict[str, dict[str, np.ndarray]] = {}
    recon = None
    for name, acts in held.drive.items():
        pred, rec = teacher_forced(world, frames, z_real, acts, held.seeds, held.memory, cfg.progress,
                                   f"teacher forced ({name})")
        tf[name] = quality(np.concatenate([frames[:, :1], pred.reshape(B, S * fps, *hw, 3)], axis=1), frames, fps)
        recon = rec if recon is None else recon  # the real latents decode the same whatever the method
    recon = np.concatenate([frames[:, :1], recon.reshape(B, S * fps, *hw, 3)], axis=1)
    # Repeat the last frame: the real last frame of the previous step stands for the whole next step.
    tf["repeat_last_frame"] = quality(np.concatenate([frames[:, :1], np.repeat(frames[:, 0:-1:fps], fps, axis=1)], 1),
                                      frames, fps)
    return tf, recon


def measure_autoregressive(
    world: World, held: Held, cfg: EvalConfig
) -> tuple[dict[str, np.ndarray], dict[str, dict[str, np.ndarray]], float]:
    """Free rollouts from the real first frame per method -> ({method: frames}, {method: PSNR/SSIM (B, S)},
    seconds per model step)."""
    gen, step_s = {}, 0.0
    for name, acts in held.drive.items():
        gen[name], s = rollout(world, held.frames[:, 0], acts, held.seeds, held.memory, cfg.progress,
                               f"autoregressive ({name})")
        step_s = s if name == "model" else step_s
    gen["repeat_last_frame"] = np.repeat(held.frames[:, :1], held.frames.shape[1], axis=1)  # the start frame, forever
    return gen, {name: quality(v, held.frames, held.fps) for name, v in gen.items()}, step_s


def reference_videos(world: World, held: Held, cfg: EvalConfig) -> dict[str, np.ndarray | None]:
    """The reference rows' rollouts: the warp of the last latent alone (`recycle_warp` worlds) and the
    network without its reprojection memory (worlds that have one); None where it does not apply."""
    first = held.frames[:, 0]
    warped = warp_rollout(world, first, held.actions, cfg.progress) if world.cfg.recycle_warp else None
    network = None
    if held.memory is not None:
        network, _ = rollout(world, first, held.actions, held.seeds, None, cfg.progress, "network without memory")
    return {"warp_last_latent": warped, "network_without_reprojection": network}


def reference_row(video: np.ndarray | None, held: Held, K: list[float], cfg: EvalConfig) -> dict[str, Any] | None:
    """A reference row, not one of the baselines: autoregressive PSNR and camera following."""
    if video is None:
        return None
    curve = per_step(psnr, video, held.frames, held.fps)
    return {"autoregressive": {"psnr": at_steps(curve, cfg.ar_steps), "psnr_per_step": curve.mean(0)},
            "camera": following(video, held.actions, K, held.fps, cfg)}


def measure_camera(
    gen: dict[str, np.ndarray], recon: np.ndarray, held: Held, K: list[float], env_K: list[float], cfg: EvalConfig
) -> tuple[dict[str, dict[str, Any]], dict[str, Any], dict[str, Any]]:
    """Camera following of each method's rollout, of the real engine's frames (the estimator's floor,
    with the engine's intrinsics) and of the VAE's decoding of the real latents (what a perfect
    transformer would score) -> (per method, real, VAE reconstruction)."""
    camera = {name: following(v, held.actions, K, held.fps, cfg) for name, v in gen.items()}
    return (camera, following(held.frames, held.actions, env_K, held.fps, cfg),
            following(recon, held.actions, K, held.fps, cfg))


def measure_long_run(
    world: World, long_trajs: list[dict[str, Any]], memory: ReprojectionConfig | None, cfg: EvalConfig
) -> tuple[list[dict[str, Any]], np.ndarray, np.ndarray, np.ndarray]:
    """Stability over `long_steps` steps -> (per trajectory: statistics and collapse verdict,
    PSNR (B, S), generated frames, real frames)."""
    fps = world.frames_per_step
    lf, la = stack_trajectories(long_trajs, fps)
    lg, _ = rollout(world, lf[:, 0], la, seeds_for(cfg, len(lf)), memory, cfg.progress, "long run")
    long = []
    for g, r, tr in zip(lg, lf, long_trajs, strict=True):
        gs, rs = frame_stats(g[1:]), frame_stats(r[1:])
        long.append({
            "map": tr["map"], "generated": summarize_stats(gs), "real": summarize_stats(rs),
            "collapse": detect_collapse(g[1:], r[1:], fps, CollapseConfig()),
            "stats_generated": gs, "stats_real": rs,
        })
    return long, per_step(psnr, lg, lf, fps), lg, lf


def method_rows(
    tf: dict[str, dict[str, np.ndarray]], ar: dict[str, dict[str, np.ndarray]], camera: dict[str, dict[str, Any]],
    cfg: EvalConfig,
) -> dict[str, dict[str, Any]]:
    """The JSON rows of the compared methods: teacher-forced and autoregressive quality, camera following."""
    mean = lambda a: float(np.mean(a))  # noqa: E731
    return {name: {
        "teacher_forced": {"psnr": mean(tf[name]["psnr"]), "ssim": mean(tf[name]["ssim"]),
                           "psnr_per_step": tf[name]["psnr"].mean(0)},
        "autoregressive": {
            "psnr": at_steps(ar[name]["psnr"], cfg.ar_steps), "ssim": at_steps(ar[name]["ssim"], cfg.ar_steps),
            "psnr_per_step": ar[name]["psnr"].mean(0), "ssim_per_step": ar[name]["ssim"].mean(0),
        },
        "camera": camera[name],
    } for name in METHODS}


# ----------------------------------------------------------------------------- the run


class Stopwatch:
    """Wall seconds per named phase, into one dict."""

    def __init__(self) -> None:
        self.timing: dict[str, float] = {}
        self._t = time.perf_counter()

    def lap(self, name: str) -> None:
        """Record the time since the last lap (or the start) as `name`."""
        now = time.perf_counter()
        self.timing[name] = now - self._t
        self._t = now


def measure_response(world: World, memory: Memory, cfg: EvalConfig) -> dict[str, Any] | None:
    """`train.eval_response`'s report (the engine, the world, the network alone), or None when off."""
    if cfg.response == "off":
        return None
    from train.eval_response import ResponseConfig, response_report  # it imports this module

    setting = ResponseConfig.quick if cfg.response == "quick" else ResponseConfig
    return response_report(world, cfg=setting(seed=cfg.seed, test_world=cfg.test_world), memory=memory,
                           show=cfg.progress)


def evaluate(cfg: EvalConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """Run every measurement; returns (results for JSON, arrays for the report)."""
    t_start = time.perf_counter()
    use_threads(cfg.threads)
    world = World.load(cfg.checkpoint, device=cfg.device)
    memory = cfg.memory(world)
    fps, hw, K = world.frames_per_step, tuple(world.meta.image_hw), list(world.meta.intrinsics)
    clock = Stopwatch()

    trajs = record_trajectories(cfg.trajectories, cfg.horizon, hw, fps, cfg.seed, cfg.test_world, show=cfg.progress)
    long_trajs = record_trajectories(cfg.long_trajectories, cfg.long_steps, hw, fps, cfg.seed, cfg.test_world,
                                     offset=cfg.trajectories, show=cfg.progress)
    clock.lap("render_s")
    env_K = list(np.asarray(trajs[0]["intrinsics"]))
    k_mismatch = float(np.max(np.abs(np.asarray(env_K) - np.asarray(K)) / np.abs(env_K)))

    frames, actions = stack_trajectories(trajs, fps)  # (B, 1+S*fps, H, W, 3), (B, S, 6)
    held = Held(frames, actions, method_actions(actions, cfg.seed), seeds_for(cfg, len(frames)), memory, fps)

    tf, recon = measure_teacher_forced(world, held, cfg)
    clock.lap("teacher_forced_s")
    gen, ar, step_s = measure_autoregressive(world, held, cfg)
    refs = reference_videos(world, held, cfg)
    clock.lap("autoregressive_s")
    camera, camera_real, camera_recon = measure_camera(gen, recon, held, K, env_K, cfg)
    clock.lap("camera_following_s")
    long, long_psnr, lg, lf = measure_long_run(world, long_trajs, memory, cfg)
    clock.lap("long_run_s")
    ref_rows = {name: reference_row(v, held, K, cfg) for name, v in refs.items()}
    response = measure_response(world, memory, cfg)
    clock.lap("response_s")

    timing = clock.timing
    timing["total_s"] = time.perf_counter() - t_start
    timing["model_step_ms"] = 1000.0 * step_s
    vae_recon = quality(recon, frames, fps)
    results = {
        "checkpoint": str(cfg.checkpoint) if cfg.checkpoint else "bundled",
        "config": asdict(cfg),
        "world": {"image_hw": list(hw), "intrinsics": K, "frames_per_step": fps, "card": world.meta.card,
                  "reprojection": None if memory is None else asdict(memory),
                  "intrinsics_mismatch_vs_engine": k_mismatch},
        "data": {
            "source": "DoomCamera-v0 + scripted explorer (train.collect.record_clip), rendered fresh",
            "wad": trajs[0]["wad"], "split": "test" if cfg.test_world else "validation",
            "trajectories": [{"map": t["map"], "seed": int(t["seed"]), "steps": actions.shape[1]} for t in trajs],
            "long_trajectories": [{"map": t["map"], "seed": int(t["seed"]), "steps": cfg.long_steps} for t in long_trajs],
            "mean_abs_action": np.abs(actions).mean((0, 1)),
        },
        "methods": method_rows(tf, ar, camera, cfg),
        "vae_reconstruction": {"psnr": float(np.mean(vae_recon["psnr"])), "ssim": float(np.mean(vae_recon["ssim"])),
                               "camera": camera_recon},
        "real_engine_camera": camera_real,
        "warp_last_latent": ref_rows["warp_last_latent"],  # what the transformer adds to its warp
        "network_without_reprojection": ref_rows["network_without_reprojection"],  # the world minus its memory
        "long_run": {
            "steps": cfg.long_steps, "frames": cfg.long_steps * fps,
            "collapsed": any(e["collapse"]["collapsed"] for e in long),
            "psnr_per_step": long_psnr.mean(0),
            "trajectories": [{k: v for k, v in e.items() if not k.startswith("stats_")} for e in long],
        },
        "response": response,
        "timing": timing,
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "torch_threads": torch.get_num_threads(), "device": cfg.device},
    }
    arrays = {"real": frames, "actions": actions, "fps": fps, "generated": gen,
              "long_generated": lg, "long_real": lf, "long": long}
    return jsonable(results), arrays


def parse_args(argv: list[str] | None = None) -> EvalConfig:
    """Command line -> EvalConfig (`--quick` starts from the CI setting; explicit flags override it)."""
    p = argparse.ArgumentParser(prog="python -m train.eval", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", default=None, help="world file (default: the bundled world)")
    p.add_argument("--json", default=None, help=f"output JSON path (default {EvalConfig.json})")
    p.add_argument("--report", default=None, help=f"report folder, '' for none (default {EvalConfig.report})")
    p.add_argument("--quick", action="store_true", help="CI setting: 2 trajectories, 16 steps, 64-step long run")
    p.add_argument("--trajectories", type=int)
    p.add_argument("--horizon", type=int)
    p.add_argument("--long-steps", type=int)
    p.add_argument("--long-trajectories", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--threads", type=int, help="torch CPU threads (default: one per idle core, at most torch's)")
    p.add_argument("--device")
    p.add_argument("--test-world", action="store_true", help="evaluate on freedoom1 (held-out test world)")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bars on stderr (default: only when stderr is a terminal)")
    p.add_argument("--response", choices=RESPONSE_SETTINGS,
                   help="what a person notices: turn, walk, idle, return-to-view, start frame (default: full; "
                        "quick with --quick)")
    add_reprojection_argument(p, "Overrides the world's for the model rollouts; default: as the world file says.")
    a = p.parse_args(argv)
    given = {k: v for k, v in vars(a).items() if k not in ("quick", "report") and v is not None}
    given["test_world"] = a.test_world
    if a.report is not None:
        given["report"] = a.report or None
    cfg = EvalConfig.quick(**given) if a.quick else EvalConfig(**given)
    counts = ["trajectories", "horizon", "long_steps", "long_trajectories"]
    if cfg.threads is not None:  # None: the machine-load rule of worldmodel.threads
        counts.append("threads")
    for name in counts:
        if getattr(cfg, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(cfg, name)}")
    return cfg


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Evaluate, write the JSON and the report, print the headline numbers."""
    cfg = parse_args(argv)
    results, arrays = evaluate(cfg)
    Path(cfg.json).parent.mkdir(parents=True, exist_ok=True)
    Path(cfg.json).write_text(json.dumps(results, indent=2))
    if cfg.report:
        from train.eval_report import write_report

        write_report(results, arrays, cfg.report)
    print(headline(results))
    if results.get("response"):
        from train.eval_response import headline as response_headline

        print(response_headline(results["response"]))
    return results


def headline(results: dict[str, Any]) -> str:
    """A small text table of the main numbers."""
    gain = lambda c: "-" if c.get("yaw_gain") is None else f"{c['yaw_gain']:.2f}"  # noqa: E731
    frozen = lambda c: "-" if c.get("yaw_frozen_share") is None else f"{c['yaw_frozen_share']:.2f}"  # noqa: E731
    lines = [f"{'method':<18} {'TF PSNR':>8} {'TF SSIM':>8} {'AR PSNR@last':>13} {'RotErr deg':>11} {'est. ok':>8}"
             f" {'yaw gain':>9} {'frozen':>7}"]
    for name, m in results["methods"].items():
        ar = m["autoregressive"]["psnr"]
        last = ar[max(ar, key=int)] if ar else float("nan")
        lines.append(f"{name:<18} {m['teacher_forced']['psnr']:>8.2f} {m['teacher_forced']['ssim']:>8.3f} "
                     f"{last:>13.2f} {m['camera']['rot_err_deg']:>11.2f} {m['camera']['success_share']:>8.2f}"
                     f" {gain(m['camera']):>9} {frozen(m['camera']):>7}")
    vr, w = results["vae_reconstruction"], results.get("warp_last_latent")
    refs = [("VAE recon", f"{vr['psnr']:>8.2f} {vr['ssim']:>8.3f}", "", vr["camera"]),
            ("real engine", f"{'':>8} {'':>8}", "", results["real_engine_camera"])]
    for label, ref in (("warp last latent", w), ("network alone", results.get("network_without_reprojection"))):
        if ref:
            ar = ref["autoregressive"]["psnr"]
            refs.append((label, f"{'':>8} {'':>8}", f"{ar[max(ar, key=int)]:.2f}", ref["camera"]))
    for label, tf_cols, ar_col, cr in refs:
        lines.append(f"{label:<18} {tf_cols} {ar_col:>13} {cr['rot_err_deg']:>11.2f} {cr['success_share']:>8.2f} {gain(cr):>9}"
                     f" {frozen(cr):>7}")
    lr = results["long_run"]
    lines.append(f"long run: {lr['frames']} frames, collapsed={lr['collapsed']}; "
                 f"total {results['timing']['total_s']:.1f} s")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
