"""Does the world respond the way a person notices? `python -m train.eval_response [--checkpoint PATH] [--quick]`.

Five measurements, each driven through one function that takes a frame source (a `World`, the real
engine, or any callable `(starts, actions) -> frames`) and the engine, on held-out validation
starts (freedoom2 MAP25-MAP32; freedoom1, the test world, is never used here):

1. turn response: at 0.03, 0.06 and 0.1 rad of yaw per step, the sum of the measured horizontal
   shifts of the picture (on its cylindrical view, where a yaw t is a shift of exactly fx t) over
   the expected ones, over baselines of about 8 px, and the share of frozen steps (steps whose
   shift is under a quarter of the expected one);
2. walk response: the picture's expansion (zoom about the principal point) while walking forward,
   over the engine's expansion for the same realised motion;
3. idle stability: 120 steps of the zero action; PSNR against the engine's (still) frames at the
   last step, drift from the source's own first frame, the collapse verdict, and whether the view
   is lost (the last step scores below a flat frame of the view's mean colour);
4. return to view: turn away and back; PSNR of the final view against the real start view, and of
   the far point of the loop against it (what a source that froze there would score);
5. start-frame reconstruction: PSNR of the source's first frame (the VAE's decoding, for a world).

Turns are driven as commanded (the engine realises a yaw to 0.1%); the walk is driven with the
motion the engine realised (as `train.eval` does), since momentum and walls shape it. The engine
measured as a source gives the ideal scores (docs/eval.md lists them). Every rollout is free (the
model on its own outputs); teacher-forced turn response is not measured here yet.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np

from train.collect import VAL_MAPS, clip_seed
from train.eval import TEST_MAPS, jsonable, progress
from worldmodel.metrics import CollapseConfig, detect_collapse, frame_stats, horizontal_shift, psnr
from worldmodel.reproject import ReprojectionConfig, add_reprojection_argument
from worldmodel.threads import use_threads
from worldmodel.world import World

FrameSource = Callable[[Sequence["Start"], np.ndarray], np.ndarray]
"""Frames of starts under actions: (starts (B), actions (B, S, 6)) -> uint8 (B, 1 + S*fps, H, W, 3);
frame 0 is the source's picture of the start image."""

Memory = ReprojectionConfig | None | Literal["world"]
"""A world's reprojection memory: a config, None (the network alone) or "world" (the world file's)."""

VAL_WAD = "freedoom2"
TEST_WAD = "freedoom1"
FROZEN_SHARE_OF_EXPECTED = 0.25
"""A turning step is frozen when its measured shift is under this share of the expected shift."""


@dataclass
class Start:
    """A held-out start: the engine reproduces it from (wad, map, seed); `image` is its first frame."""

    wad: str
    map: str
    seed: int
    image: np.ndarray
    """uint8 (H, W, 3)."""

    def describe(self) -> dict[str, Any]:
        """The JSON record of this start (no image)."""
        return {"wad": self.wad, "map": self.map, "seed": int(self.seed)}


@dataclass
class ResponseConfig:
    """Sizes of the measurements (`quick()` is the CI setting; the defaults are the full one)."""

    starts: int = 8
    """Held-out starts (start i on validation map i % 8)."""
    rates: tuple[float, ...] = (0.03, 0.06, 0.1)
    """Yaw per step (rad) of the turn-response measurements."""
    turn_steps: int = 24
    """Steps of each turn (start i turns right when i is even, left when odd)."""
    baseline_px: float = 8.0
    """Shifts are measured between step-end frames this many expected pixels apart (rounded to whole steps)."""
    walk_speed: float = 16.0
    """Forward speed of the walk, map units per step (the explorer walks at up to 28)."""
    walk_steps: int = 12
    """Steps of the walk."""
    walk_baseline: int = 3
    """Steps between the two frames whose relative scale is measured."""
    idle_steps: int = 120
    """Steps of the zero action."""
    loop_rate: float = 0.06
    """Yaw per step (rad) of the return-to-view loop."""
    loop_steps: int = 8
    """Steps out (and as many back) of the return-to-view loop."""
    seed: int = 0
    """Base seed of the starts and of the model's noise."""
    test_world: bool = False
    """Start on freedoom1 (the held-out test world) instead of the freedoom2 validation maps."""

    @classmethod
    def quick(cls, **overrides: Any) -> ResponseConfig:
        """The CI setting: 2 starts, short turns, walks and idles."""
        return cls(**{"starts": 2, "turn_steps": 10, "walk_steps": 6, "idle_steps": 24, **overrides})


# ----------------------------------------------------------------------------- sources


class EngineSource:
    """The real engine as a frame source: `DoomCamera-v0` started at each Start and driven by the actions.

    Renders are cached per (start, actions), so measuring several sources against it renders once.
    """

    def __init__(self, image_hw: Sequence[int], frames_per_step: int = 4, wad: str = VAL_WAD) -> None:
        from envs.doom import DoomCameraEnv

        self.env = DoomCameraEnv(wad=wad, frame_size=tuple(image_hw), frames_per_step=frames_per_step,
                                 max_steps=10**9, start="random")
        self.wad, self.frames_per_step = wad, frames_per_step
        self.intrinsics: np.ndarray | None = None
        """(fx, fy, cx, cy) of the rendered frames, known after the first start."""
        self._cache: dict[tuple, tuple[np.ndarray, np.ndarray, bool]] = {}

    def start(self, map_name: str, seed: int) -> Start:
        """The start the engine reaches from a random placement on `map_name` with `seed`."""
        obs, info = self.env.reset(seed=seed, options={"map": map_name, "start": "random"})
        self.intrinsics = np.asarray(info["intrinsics"], np.float64)
        return Start(self.wad, map_name, seed, obs[-1].copy())

    def rollout_one(self, start: Start, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, bool]:
        """One start under actions (S, 6) -> (frames (1 + S*fps, H, W, 3), realised actions (S, 6),
        whether every step was fully rendered (False: the camera crossed an exit line))."""
        actions = np.asarray(actions, np.float32)
        key = (start.wad, start.map, start.seed, actions.tobytes())
        if key not in self._cache:
            obs, info = self.env.reset(seed=start.seed, options={"map": start.map, "start": "random"})
            self.intrinsics = np.asarray(info["intrinsics"], np.float64)
            frames, realised, complete = [obs[-1:]], [], True
            for a in actions:
                obs, _, _, _, info = self.env.step(a)
                complete &= info["valid_frames"] == self.frames_per_step
                frames.append(obs)
                realised.append(info["realised_action"])
            self._cache[key] = (np.concatenate(frames), np.asarray(realised, np.float64).reshape(-1, 6), complete)
        return self._cache[key]

    def rollout(self, starts: Sequence[Start], actions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Starts under actions (B, S, 6) -> (frames (B, 1 + S*fps, H, W, 3), realised actions (B, S, 6))."""
        out = [self.rollout_one(s, a) for s, a in zip(starts, actions, strict=True)]
        return np.stack([o[0] for o in out]), np.stack([o[1] for o in out])

    def __call__(self, starts: Sequence[Start], actions: np.ndarray) -> np.ndarray:
        """The FrameSource interface: the engine's frames."""
        return self.rollout(starts, actions)[0]

    def close(self) -> None:
        """Stop the engine process."""
        self.env.close()


class WorldSource:
    """A learned world as a frame source: one batch of streams per call, started from the start images."""

    def __init__(self, world: World, reprojection: Memory = "world", seed: int = 0, show: bool | None = False) -> None:
        self.world, self.reprojection, self.seed, self.show = world, reprojection, seed, show

    def __call__(self, starts: Sequence[Start], actions: np.ndarray) -> np.ndarray:
        """Free rollout (the model on its own outputs): -> frames (B, 1 + S*fps, H, W, 3)."""
        B = len(starts)
        streams = self.world.streams(B, [self.seed * 1000 + i for i in range(B)], reprojection=self.reprojection)
        out = [streams.reset(np.stack([s.image for s in starts]))[:, :1]]
        for k in progress(range(actions.shape[1]), f"world, {actions.shape[1]} steps", self.show):
            out.append(streams.step(actions[:, k]))
        return np.concatenate(out, axis=1)


def as_source(source: World | FrameSource, reprojection: Memory = "world", seed: int = 0) -> FrameSource:
    """A World becomes a WorldSource (with that memory); a callable is used as it is."""
    return WorldSource(source, reprojection, seed) if isinstance(source, World) else source


def drive(source: World | FrameSource, engine: EngineSource, starts: Sequence[Start], actions: np.ndarray,
          memory: Memory = "world", seed: int = 0, realised: bool = False) -> np.ndarray:
    """The source's frames (B, 1 + S*fps, H, W, 3) under actions (B, S, 6), or under the motion the
    engine realised from them (`realised`). Turns are driven as commanded: the engine realises a yaw
    to 0.1% (angle quantisation), and a memory that acts from a turn threshold must see the command."""
    if realised:
        actions = engine.rollout(starts, actions)[1].astype(np.float32)
    frames = as_source(source, memory, seed)(starts, actions)
    B, S = actions.shape[:2]
    ok = (isinstance(frames, np.ndarray) and frames.dtype == np.uint8 and frames.ndim == 5 and frames.shape[0] == B
          and frames.shape[-1] == 3 and (frames.shape[1] - 1) % max(S, 1) == 0 and (S > 0 or frames.shape[1] == 1))
    if not ok:
        raise ValueError(f"the source returned {getattr(frames, 'dtype', type(frames))}{getattr(frames, 'shape', '')} "
                         f"for {B} starts x {S} steps; expected uint8 (B, 1 + S * frames_per_step, H, W, 3)")
    return frames


def step_ends(frames: np.ndarray, steps: int) -> np.ndarray:
    """Frames (B, 1 + S*fps, ...) -> the start and every step's last frame (B, S + 1, ...)."""
    fps = (frames.shape[1] - 1) // max(steps, 1)
    if frames.shape[1] != 1 + steps * fps:
        raise ValueError(f"{frames.shape[1]} frames for {steps} steps: expected 1 + steps * frames_per_step")
    return frames[:, ::fps] if steps else frames[:, :1]


def validation_starts(engine: EngineSource, n: int, seed: int = 0, offset: int = 0) -> list[Start]:
    """n held-out starts: random placements on the validation maps (start i on map i % 8), seeded as
    `train.collect` seeds validation clips."""
    maps = engine_maps(engine)
    return [engine.start(maps[i % len(maps)], clip_seed(seed, "val", i)) for i in range(offset, offset + n)]


def engine_maps(engine: EngineSource) -> list[str]:
    """The held-out maps of the engine's WAD: the validation maps, or the test world's with freedoom1."""
    return TEST_MAPS if engine.wad == TEST_WAD else VAL_MAPS


def walk_actions(n: int, speed: float, steps: int) -> np.ndarray:
    """Straight-ahead walking: (n, steps, 6) with tz = speed."""
    a = np.zeros((n, steps, 6), np.float32)
    a[..., 2] = speed
    return a


def walk_starts(engine: EngineSource, n: int, speed: float, steps: int, seed: int = 0,
                tries: int = 24, min_expansion: float = 0.1) -> list[Start]:
    """n held-out starts to walk from: the engine realises at least 80% of the commanded distance without
    crossing an exit line, and its picture expands by at least `min_expansion` over the walk (facing a
    far wall, the picture hardly grows and the ratio would be noise over noise). Start i is on map
    i % 8; its candidate seeds are drawn in a fixed order."""
    out = []
    for i in range(n):
        maps = engine_maps(engine)
        m = maps[i % len(maps)]
        for t in range(tries):
            s = engine.start(m, clip_seed(seed, "val", 100_000 + 1000 * t + i))
            frames, realised, complete = engine.rollout_one(s, walk_actions(1, speed, steps)[0])
            if not complete or realised[:, 2].sum() < 0.8 * speed * steps:
                continue
            if image_scale(frames[0], frames[-1], engine.intrinsics[2:4]) >= 1.0 + min_expansion:
                out.append(s)
                break
        else:
            raise RuntimeError(f"{m}: no start among {tries} lets the camera walk {speed * steps:g} units "
                               f"towards something {min_expansion:.0%} closer")
    return out


# ----------------------------------------------------------------------------- estimators


def image_scale(a: np.ndarray, b: np.ndarray, center: Sequence[float], max_log: float = 0.8,
                resolution: float = 0.005, crop: float = 0.8) -> float:
    """The zoom s about `center` (cx, cy) that best maps image a (H, W, 3) onto b: b ~ a magnified by s.

    Forward motion expands the picture about the principal point (the focus of expansion), so the
    best single zoom is the picture's expansion. Searched over log s in [-max_log / 2, max_log] by
    normalised cross-correlation on the central `crop` of the frame, refined by a parabola: it needs
    no features, so it still works on the smooth frames of a small model.
    """
    g = [cv2.GaussianBlur(cv2.cvtColor(np.ascontiguousarray(x), cv2.COLOR_RGB2GRAY).astype(np.float32), (0, 0), 1.0)
         for x in (a, b)]
    H, W = g[0].shape
    cx, cy = float(center[0]), float(center[1])
    y0, x0 = int(H * (1 - crop) / 2), int(W * (1 - crop) / 2)
    target = g[1][y0:H - y0, x0:W - x0]
    target = (target - target.mean()) / (target.std() + 1e-6)
    logs = np.arange(-max_log / 2, max_log + resolution / 2, resolution)
    score = np.empty(len(logs))
    for i, ls in enumerate(logs):
        s = np.exp(ls)
        M = np.array([[s, 0.0, cx * (1 - s)], [0.0, s, cy * (1 - s)]], np.float32)
        w = cv2.warpAffine(g[0], M, (W, H), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)[y0:H - y0, x0:W - x0]
        score[i] = float(((w - w.mean()) / (w.std() + 1e-6) * target).mean())
    i = int(np.argmax(score))
    if 0 < i < len(logs) - 1:  # parabola through the best score and its neighbours
        l, c, r = score[i - 1:i + 2]
        den = l - 2 * c + r
        return float(np.exp(logs[i] + (0.5 * (l - r) / den * resolution if den < 0 else 0.0)))
    return float(np.exp(logs[i]))


def cylinder_maps(image_hw: Sequence[int], intrinsics: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """cv2.remap maps from a pinhole frame to a cylinder around its vertical axis, `fx` pixels per radian.

    A pure yaw moves every point of the cylinder by the same fx * yaw pixels, where the pinhole picture
    moves its edges twice as far as its centre at 90 degrees of FOV (so a pinhole-shift expectation
    is 12% short of what phase correlation measures on the engine). Only the part of the cylinder
    every column of the frame covers is kept (width 2 fx atan(cx / fx), height H cos of that angle).
    """
    H, W = int(image_hw[0]), int(image_hw[1])
    fx, fy, cx, cy = (float(v) for v in intrinsics)
    phi_max = min(np.arctan(cx / fx), np.arctan((W - 1 - cx) / fx))
    w, h = int(2 * fx * phi_max), int(H * np.cos(phi_max))
    phi = (np.arange(w) - (w - 1) / 2) / fx  # (w,) radians
    height = (np.arange(h) - (h - 1) / 2) / fy  # (h,) Y / sqrt(X^2 + Z^2)
    map_x = np.broadcast_to(cx + fx * np.tan(phi), (h, w))
    map_y = cy + fy * height[:, None] / np.cos(phi)[None, :]
    return np.ascontiguousarray(map_x, np.float32), np.ascontiguousarray(map_y, np.float32)


def yaw_shift(a: np.ndarray, b: np.ndarray, maps: tuple[np.ndarray, np.ndarray]) -> float:
    """Horizontal shift (pixels of the cylinder, fx per radian) that moves frame a (H, W, 3) onto b, by
    least squares on the grey cylindrical views (`cylinder_maps`, `worldmodel.metrics.horizontal_shift`:
    phase correlation read blurry generated frames that move as still); a yaw of +t (turning right)
    gives -fx t."""
    cyl = [cv2.remap(np.ascontiguousarray(x), maps[0], maps[1], cv2.INTER_LINEAR) for x in (a, b)]
    grey = [cv2.cvtColor(c, cv2.COLOR_RGB2GRAY).astype(np.float32) for c in cyl]
    return horizontal_shift(grey[0], grey[1])


def baseline_steps(rate: float, fx: float, baseline_px: float) -> int:
    """Whole steps over which a turn of `rate` rad per step slides the picture by about `baseline_px`."""
    return max(1, int(round(baseline_px / (fx * np.tan(abs(rate))))))


# ----------------------------------------------------------------------------- measurements


def turn_actions(n: int, rate: float, steps: int) -> np.ndarray:
    """Turning in place: (n, steps, 6) with ry = +rate for even starts (right), -rate for odd ones (left)."""
    a = np.zeros((n, steps, 6), np.float32)
    a[..., 4] = np.where(np.arange(n) % 2 == 0, rate, -rate)[:, None]
    return a


def turn_response(source: World | FrameSource, engine: EngineSource, starts: Sequence[Start], rate: float,
                  steps: int, baseline_px: float = 8.0, memory: Memory = "world", seed: int = 0) -> dict[str, Any]:
    """How far the picture slides under a steady turn, against the geometry: a yaw of t slides the
    picture's cylindrical view (`cylinder_maps`) by exactly fx t pixels, against the turn.

    `ratio` = sum of measured shifts / sum of expected ones over windows of `baseline` steps (about
    `baseline_px` expected pixels; signed, so a picture sliding the wrong way scores negative);
    `frozen_share` = share of single steps whose shift is under a quarter of the expected one.
    A picture smeared into horizontal streaks can still slide the right way, so two numbers say
    whether it is the engine's picture that moves: `sharpness_ratio`, the Laplacian variance of the
    step frames over the engine's on the same turn (mean over steps and starts), and `psnr_last`,
    the last step's frame against the engine's.
    """
    actions = turn_actions(len(starts), rate, steps)
    f = step_ends(drive(source, engine, starts, actions, memory, seed), steps)  # (B, S + 1, H, W, 3)
    eng = step_ends(engine(starts, actions), steps)
    sharp = [frame_stats(g[1:])["sharpness"] / np.maximum(frame_stats(r[1:])["sharpness"], 1e-6)
             for g, r in zip(f, eng, strict=True)]
    fx = float(engine.intrinsics[0])
    maps = cylinder_maps(f.shape[2:4], engine.intrinsics)
    k = baseline_steps(rate, fx, baseline_px)
    yaw_to = np.concatenate([np.zeros((len(starts), 1)), np.cumsum(actions[..., 4], axis=1)], axis=1)  # (B, S + 1)
    along, expected, steps_along, per_start = [], [], [], []
    for b in range(len(starts)):
        e = -fx * (yaw_to[b, k:] - yaw_to[b, :-k])  # (S - k + 1,) expected shift of each window
        m = np.array([yaw_shift(f[b, j], f[b, j + k], maps) for j in range(steps - k + 1)]) * np.sign(e)
        e1 = -fx * actions[b, :, 4]
        one = np.array([yaw_shift(f[b, j], f[b, j + 1], maps) for j in range(steps)]) * np.sign(e1)
        steps_along += list(one / np.abs(e1))
        along += list(m)
        expected += list(np.abs(e))
        per_start.append(float(m.sum() / np.abs(e).sum()))
    steps_along = np.asarray(steps_along)
    return {
        "rate_rad": rate, "steps": steps, "baseline_steps": k, "expected_px_per_step": fx * rate,
        "ratio": float(np.sum(along) / np.sum(expected)),
        "frozen_share": float(np.mean(steps_along < FROZEN_SHARE_OF_EXPECTED)),
        "step_ratio_quartiles": np.percentile(steps_along, [25, 50, 75]).tolist(),
        "ratio_per_start": per_start,
        "sharpness_ratio": float(np.mean(sharp)),
        "psnr_last": float(psnr(f[:, -1], eng[:, -1]).mean()),
    }


def turn_response_teacher_forced(world: World, engine: EngineSource, starts: Sequence[Start], rate: float,
                                 steps: int, memory: Memory = None, seed: int = 0) -> dict[str, Any]:
    """The turn response with the real past: each step the generator gets the engine's previous latent
    (`train.eval.teacher_forced`), so "the network does not turn" is told apart from "its own outputs drift".

    `ratio` = sum over steps of the shift from the VAE's decoding of the real previous step to the
    prediction (along the expected direction) / the sum of the expected `fx * rate`; `frozen_share` as in
    `turn_response`; `vae_ratio` the same from one real step to the next through the VAE (the ceiling).
    Steps from the second on (the first has no real previous step).
    """
    import torch

    from train.eval import encode_real, teacher_forced  # train.eval imports this module

    actions = turn_actions(len(starts), rate, steps)
    real = engine(starts, actions)
    with torch.no_grad():
        pred, rec = teacher_forced(world, real, encode_real(world, real), actions,
                                   [seed * 1000 + i for i in range(len(starts))], memory)
    maps = cylinder_maps(real.shape[2:4], engine.intrinsics)
    sign = -np.sign(actions[:, :, 4])  # a right turn slides the picture left
    expected = float(engine.intrinsics[0]) * rate

    def slides(after: np.ndarray) -> np.ndarray:  # (B, steps - 1): each step's slide from the real previous one
        return np.array([[yaw_shift(rec[b, j - 1, -1], after[b, j, -1], maps) * sign[b, j] for j in range(1, steps)]
                         for b in range(len(starts))]) / expected

    tf, vae = slides(pred), slides(rec)
    return {"rate_rad": rate, "steps": steps, "ratio": float(tf.mean()),
            "frozen_share": float(np.mean(tf < FROZEN_SHARE_OF_EXPECTED)),
            "step_ratio_quartiles": np.percentile(tf, [25, 50, 75]).tolist(), "vae_ratio": float(vae.mean())}


def walk_response(source: World | FrameSource, engine: EngineSource, starts: Sequence[Start], speed: float,
                  steps: int, baseline: int = 3, memory: Memory = "world", seed: int = 0) -> dict[str, Any]:
    """How much the picture expands while walking forward, against the engine over the same realised motion.

    `ratio` = sum over frame pairs `baseline` steps apart of log(zoom) of the source / the same for
    the engine (1: expands like the engine, 0: does not expand, < 0: shrinks).
    `expansion_per_step` is the source's mean zoom per step minus 1 (the engine's beside it). The
    source gets the engine's realised motion (its momentum and walls shape the walk).
    """
    eng, realised = engine.rollout(starts, walk_actions(len(starts), speed, steps))
    f = step_ends(drive(source, engine, starts, walk_actions(len(starts), speed, steps), memory, seed, True), steps)
    e = step_ends(eng, steps)
    center = engine.intrinsics[2:4]
    pairs = [(j, j + baseline) for j in range(steps - baseline + 1)]
    log_s = np.array([[np.log(image_scale(x[b, i], x[b, j], center)) for i, j in pairs]
                      for x in (f, e) for b in range(len(starts))]).reshape(2, len(starts), len(pairs))
    return {
        "speed": speed, "steps": steps, "baseline_steps": baseline,
        "realised_units_per_step": float(realised[..., 2].mean()),
        "ratio": float(log_s[0].sum() / log_s[1].sum()),
        "expansion_per_step": float(np.expm1(log_s[0].mean() / baseline)),
        "engine_expansion_per_step": float(np.expm1(log_s[1].mean() / baseline)),
        "ratio_per_start": (log_s[0].sum(1) / log_s[1].sum(1)).tolist(),
    }


def idle_stability(source: World | FrameSource, engine: EngineSource, starts: Sequence[Start], steps: int = 120,
                   memory: Memory = "world", seed: int = 0) -> dict[str, Any]:
    """The zero action held for `steps` steps: the engine's view stays still (only its lights flicker).

    `psnr_last` = PSNR of the last step's frames against the engine's; `drift_psnr` = PSNR of the
    last frame against the source's own first frame (a still source: the cap, 100);
    `collapsed` = `worldmodel.metrics.detect_collapse` against the engine's frames (flat or saturated
    for 12 steps); `sharpness_ratio` = Laplacian variance of the last frame over the engine's.
    `lost_view_share` = share of starts whose last step scores below `flat_frame_psnr`, a flat frame of
    the engine view's mean colour (a picture that says less about the view than its mean colour;
    `detect_collapse` does not flag a view dissolved into texture that is neither flat nor saturated);
    `lost_view_at_step` = per start, the first step below that line (None: never).
    """
    actions = np.zeros((len(starts), steps, 6), np.float32)
    eng, f = engine(starts, actions), drive(source, engine, starts, actions, memory, seed)
    fps = (f.shape[1] - 1) // steps
    curve = psnr(f[:, 1:], eng[:, 1:]).reshape(len(starts), steps, fps).mean(-1)  # (B, S)
    collapse = [detect_collapse(g[1:], r[1:], fps, CollapseConfig()) for g, r in zip(f, eng, strict=True)]
    sharp = [frame_stats(np.stack([g[-1], r[-1]]))["sharpness"] for g, r in zip(f, eng, strict=True)]
    # A flat frame of the view's mean colour knows nothing of the view: scoring below it, a source has lost it.
    flat = np.broadcast_to(eng[:, -1].mean(axis=(1, 2), keepdims=True).round().astype(np.uint8), eng[:, -1].shape)
    flat_psnr = psnr(flat, eng[:, -1])  # (B,)
    below = curve < flat_psnr[:, None]  # (B, S)
    lost_at = [int(np.argmax(b)) + 1 if b.any() else None for b in below]
    at = sorted({1, steps // 4, steps // 2, steps} - {0})
    return {
        "steps": steps,
        "psnr_last": float(curve[:, -1].mean()),
        "psnr_at_step": {str(s): float(curve[:, s - 1].mean()) for s in at},
        "flat_frame_psnr": float(flat_psnr.mean()),
        "lost_view_share": float(below[:, -1].mean()),
        "lost_view_at_step": lost_at,
        "drift_psnr": float(psnr(f[:, -1], f[:, 0]).mean()),
        "engine_drift_psnr": float(psnr(eng[:, -1], eng[:, 0]).mean()),
        "collapsed": any(c["collapsed"] for c in collapse),
        "flagged_share": {k: float(np.mean([c["flagged_share"][k] for c in collapse]))
                          for k in collapse[0]["flagged_share"]},
        "sharpness_ratio": float(np.mean([s[0] / max(s[1], 1e-6) for s in sharp])),
    }


def loop_actions(n: int, rate: float, steps: int) -> np.ndarray:
    """Turn away and back: `steps` steps of +rate then `steps` of -rate (mirrored for odd starts), (n, 2 steps, 6)."""
    out = turn_actions(n, rate, steps)
    return np.concatenate([out, -out], axis=1)


def return_to_view(source: World | FrameSource, engine: EngineSource, starts: Sequence[Start], rate: float = 0.06,
                   steps: int = 8, memory: Memory = "world", seed: int = 0) -> dict[str, Any]:
    """Turn away by `steps` x `rate` and back: does the start view come back?

    `psnr_final` = PSNR of the source's final frame against the real start view; `psnr_far` = PSNR
    of its far-point frame against the start view, i.e. what a source that froze at the far point
    (repeat-last from there) would score at the end; `gain_db` = the difference (> 0: it came back).
    `engine_psnr_far` is the engine's far view against its start view (how different the far view is).
    """
    actions = loop_actions(len(starts), rate, steps)
    f = step_ends(drive(source, engine, starts, actions, memory, seed), 2 * steps)
    e = step_ends(engine(starts, actions), 2 * steps)
    real = np.stack([s.image for s in starts])
    final, far = psnr(f[:, -1], real), psnr(f[:, steps], real)
    return {
        "rate_rad": rate, "steps_each_way": steps,
        "psnr_final": float(final.mean()), "psnr_far": float(far.mean()), "gain_db": float((final - far).mean()),
        "psnr_first": float(psnr(f[:, 0], real).mean()),
        "engine_psnr_far": float(psnr(e[:, steps], real).mean()),
    }


def start_reconstruction(source: World | FrameSource, starts: Sequence[Start], memory: Memory = "world",
                         seed: int = 0) -> dict[str, Any]:
    """PSNR of the source's first frame (a world: the VAE's encoding and streaming decode) against the start image.

    For a World (or WorldSource) the full decoder's reconstruction (`vae.decode`) is reported beside the
    streams' one (the light decoder, what a user sees).
    """
    real = np.stack([s.image for s in starts])
    first = as_source(source, memory, seed)(starts, np.zeros((len(starts), 0, 6), np.float32))[:, 0]
    out = {"psnr": float(psnr(first, real).mean())}
    world = source.world if isinstance(source, WorldSource) else source
    if isinstance(world, World):
        import torch

        from worldmodel.world import video_to_uint8

        with torch.no_grad():
            full = video_to_uint8(world.vae.decode(world.encode_images(real)[:, None], light=False))[:, 0]
        out["psnr_full_decoder"] = float(psnr(full, real).mean())
    return out


# ----------------------------------------------------------------------------- the report


def measure_all(source: World | FrameSource, engine: EngineSource, starts: Sequence[Start], walkers: Sequence[Start],
                cfg: ResponseConfig, memory: Memory = "world", show: bool | None = False) -> dict[str, Any]:
    """Every measurement of one source -> {name: dict}, plus the seconds each took."""
    timing, out = {}, {}
    world = source if isinstance(source, World) else None
    if world is not None:
        source = WorldSource(world, memory, cfg.seed, show)
    jobs = [(f"turn_{r:g}", lambda r=r: turn_response(source, engine, starts, r, cfg.turn_steps, cfg.baseline_px))
            for r in cfg.rates]
    if world is not None and memory is None:  # the network given the real past (a memory has no forced past)
        jobs += [(f"tf_{r:g}", lambda r=r: turn_response_teacher_forced(world, engine, starts, r, cfg.turn_steps,
                                                                          None, cfg.seed)) for r in cfg.rates]
    jobs += [
        ("walk", lambda: walk_response(source, engine, walkers, cfg.walk_speed, cfg.walk_steps, cfg.walk_baseline)),
        ("idle", lambda: idle_stability(source, engine, starts, cfg.idle_steps)),
        ("return_to_view", lambda: return_to_view(source, engine, starts, cfg.loop_rate, cfg.loop_steps)),
        ("start_reconstruction", lambda: start_reconstruction(source, starts)),
    ]
    for name, job in progress(jobs, "measurements", show):
        t0 = time.perf_counter()
        out[name] = job()
        timing[name] = time.perf_counter() - t0
    out["turn"] = {k[5:]: out.pop(k) for k in list(out) if k.startswith("turn_")}
    tf = {k[3:]: out.pop(k) for k in list(out) if k.startswith("tf_")}
    if tf:
        out["turn_teacher_forced"] = tf
    out["timing_s"] = timing
    return out


def response_report(world: World | None = None, quick: bool = False, cfg: ResponseConfig | None = None,
                    engine: EngineSource | None = None, network_alone: bool = True,
                    show: bool | None = False, memory: ReprojectionConfig | None | str = "world") -> dict[str, Any]:
    """All measurements for the engine itself (the ideal scores), the world with `memory` (default: the
    world file's setting), and (if that has a memory) the network alone -> a JSON-ready dict.
    `world=None` loads the bundled world."""
    t0 = time.perf_counter()
    world = World.load() if world is None else world
    cfg = cfg or (ResponseConfig.quick() if quick else ResponseConfig())
    own = engine is None
    engine = engine or EngineSource(world.meta.image_hw, world.frames_per_step,
                                    TEST_WAD if cfg.test_world else VAL_WAD)
    memory = world.meta.reprojection if memory == "world" else memory
    try:
        starts = validation_starts(engine, cfg.starts, cfg.seed)
        walkers = walk_starts(engine, cfg.starts, cfg.walk_speed, cfg.walk_steps, cfg.seed)
        rows = {"engine": measure_all(engine, engine, starts, walkers, cfg, show=show)}
        rows["world"] = measure_all(world, engine, starts, walkers, cfg, memory, show)
        if network_alone and memory is not None:
            rows["network_alone"] = measure_all(world, engine, starts, walkers, cfg, None, show)
        k_mismatch = float(np.max(np.abs(engine.intrinsics - np.asarray(world.meta.intrinsics)) / engine.intrinsics))
    finally:
        if own:
            engine.close()
    return jsonable({
        "config": asdict(cfg), "quick": quick,
        "world": {"image_hw": list(world.meta.image_hw), "intrinsics": list(world.meta.intrinsics),
                  "reprojection": None if memory is None else asdict(memory),
                  "intrinsics_mismatch_vs_engine": k_mismatch},
        "starts": [s.describe() for s in starts], "walk_starts": [s.describe() for s in walkers],
        "rows": rows, "total_s": time.perf_counter() - t0,
    })


def headline(report: dict[str, Any]) -> str:
    """A text table of the main numbers, one column per row of the report."""
    rows = report["rows"]
    names = list(rows)
    lines = [f"{'':<30}" + "".join(f"{n:>15}" for n in names)]

    def line(label: str, get: Callable[[dict[str, Any]], Any], fmt: str = "{:.2f}") -> None:
        vals = [get(rows[n]) for n in names]
        lines.append(f"{label:<30}" + "".join(f"{'-' if v is None else fmt.format(v):>15}" for v in vals))

    for r in rows[names[0]]["turn"]:
        line(f"turn {r} rad: ratio", lambda x, r=r: x["turn"][r]["ratio"])
        line(f"turn {r} rad: frozen share", lambda x, r=r: x["turn"][r]["frozen_share"])
        line(f"turn {r} rad: sharpness ratio", lambda x, r=r: x["turn"][r].get("sharpness_ratio"))
        line(f"turn {r} rad: PSNR at the end", lambda x, r=r: x["turn"][r].get("psnr_last"), "{:.1f}")
        line(f"turn {r} rad: teacher-forced", lambda x, r=r: x.get("turn_teacher_forced", {}).get(r, {}).get("ratio"))
    line("walk: expansion ratio", lambda x: x["walk"]["ratio"])
    line("idle: PSNR at last step", lambda x: x["idle"]["psnr_last"], "{:.1f}")
    line("idle: flat-frame PSNR", lambda x: x["idle"]["flat_frame_psnr"], "{:.1f}")
    line("idle: lost-view share", lambda x: x["idle"]["lost_view_share"])
    line("idle: collapsed (detector)", lambda x: x["idle"]["collapsed"], "{}")
    line("return: PSNR final vs start", lambda x: x["return_to_view"]["psnr_final"], "{:.1f}")
    line("return: PSNR far vs start", lambda x: x["return_to_view"]["psnr_far"], "{:.1f}")
    line("start reconstruction PSNR", lambda x: x["start_reconstruction"]["psnr"], "{:.1f}")
    lines.append(f"total {report['total_s']:.0f} s")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line of `python -m train.eval_response`."""
    p = argparse.ArgumentParser(
        prog="python -m train.eval_response",
        description="Measure what a person notices in a learned world, against the real engine: turn response "
                    "(0.03, 0.06, 0.1 rad per step; rolled out, and for the network alone also teacher-forced), expansion while walking, idle stability (120 zero steps), "
                    "return to view, start-frame reconstruction. Rows: the engine itself (the ideal), the world "
                    "with its memory, the network alone.",
        epilog="Measured on held-out validation starts (freedoom2 MAP25-MAP32); docs/eval.md explains every "
               "number. On a shared 2-core CPU with 1 thread the full setting takes about 5.5 minutes, "
               "--quick about 35 s.")
    p.add_argument("--checkpoint", default=None, help="world file (default: the bundled world)")
    p.add_argument("--quick", action="store_true",
                   help="CI setting: 2 starts, 10-step turns, 6-step walks, 24 idle steps "
                        "(default, the full setting: 8 starts, 24, 12, 120)")
    p.add_argument("--starts", type=int, default=None, help="held-out starts (overrides the setting)")
    p.add_argument("--seed", type=int, default=0, help="base seed of the starts and the model's noise (default 0)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: one per idle core, at most torch's)")
    p.add_argument("--no-network-alone", action="store_true", help="skip the row of the world with its memory off")
    p.add_argument("--json", default="outputs/eval_response/response.json", help="output JSON (default %(default)s)")
    add_reprojection_argument(p, "Overrides the world's for the 'world' row; default: as the world file says.")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bars on stderr (default: only when stderr is a terminal)")
    a = p.parse_args(argv)
    if a.starts is not None and a.starts < 1:
        p.error(f"--starts must be >= 1, got {a.starts}")
    return a


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Measure, write the JSON, print the table."""
    a = parse_args(argv)
    use_threads(a.threads)
    overrides = {"seed": a.seed, **({"starts": a.starts} if a.starts else {})}
    cfg = ResponseConfig.quick(**overrides) if a.quick else ResponseConfig(**overrides)
    world = World.load(a.checkpoint)
    memory = "world" if a.reprojection is None else ReprojectionConfig.parse(a.reprojection)
    report = response_report(world, a.quick, cfg, network_alone=not a.no_network_alone, show=a.progress,
                             memory=memory)
    report["checkpoint"] = a.checkpoint or "bundled"
    Path(a.json).parent.mkdir(parents=True, exist_ok=True)
    Path(a.json).write_text(json.dumps(report, indent=2))
    print(headline(report))
    print(f"wrote {a.json}")
    return report


if __name__ == "__main__":
    main()
