"""Evaluation metrics for generated video against a real engine: image quality, camera following, stability.

All functions take uint8 RGB frames (..., H, W, 3) as numpy arrays (what `WorldStreams` and
`DoomCamera-v0` return) and return numpy/float values, so they serve any world and any data source.

- `psnr`, `ssim`: per-frame image fidelity against the real frames.
- `estimate_motion`: relative camera pose between two frames from image features (SIFT + essential
  matrix with the known intrinsics, or a rotation-only fit when the matches carry no parallax),
  expressed like an action: the second camera's pose in the first camera's frame (OpenCV axes).
- `camera_following`: RotErr in degrees and translation-direction error per step against the
  commanded motion, and the share of steps where estimation succeeds.
- `horizontal_shift`, `yaw_response`: how far the picture slides sideways (least squares), and that
  slide per commanded turn against the pinhole geometry.
- `frame_stats`, `detect_collapse`: per-frame brightness/contrast/sharpness and a collapse verdict
  with thresholds relative to the real engine's statistics on the same trajectory.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import cv2
import numpy as np

from worldmodel.camera import rotation_angle

# ----------------------------------------------------------------------------- image fidelity

PSNR_CAP_DB = 100.0
"""PSNR of identical frames (infinite) is reported as this cap, so means stay finite."""


def _check_frames(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape or a.ndim < 3 or a.shape[-1] != 3:
        raise ValueError(f"frames have shapes {a.shape} and {b.shape}, expected two equal (..., H, W, 3) arrays")
    return a, b


def psnr(a: np.ndarray, b: np.ndarray, peak: float = 255.0) -> np.ndarray:
    """Per-frame PSNR in dB of (..., H, W, 3) frames -> (...,), capped at PSNR_CAP_DB for identical frames."""
    a, b = _check_frames(a, b)
    mse = ((a.astype(np.float64) - b.astype(np.float64)) ** 2).mean(axis=(-3, -2, -1))  # (...,)
    with np.errstate(divide="ignore"):
        out = 10.0 * np.log10(peak**2 / mse)
    return np.minimum(out, PSNR_CAP_DB)


def _ssim_one(x: np.ndarray, y: np.ndarray, peak: float, sigma: float) -> float:
    """SSIM of two float64 (H, W, 3) images, Gaussian window, averaged over channels and the valid interior."""
    c1, c2 = (0.01 * peak) ** 2, (0.03 * peak) ** 2
    blur = lambda z: cv2.GaussianBlur(z, (11, 11), sigma, borderType=cv2.BORDER_REFLECT)  # noqa: E731
    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx * mx, blur(y * y) - my * my, blur(x * y) - mx * my
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))  # (H, W, 3)
    r = 5  # half the 11-tap window: drop the border the filter had to invent (Wang et al. use 'valid')
    return float(s[r:-r, r:-r].mean()) if min(s.shape[:2]) > 2 * r else float(s.mean())


def ssim(a: np.ndarray, b: np.ndarray, peak: float = 255.0, sigma: float = 1.5) -> np.ndarray:
    """Per-frame SSIM (Wang et al. 2004: 11x11 Gaussian window, sigma 1.5) of (..., H, W, 3) frames -> (...,)."""
    a, b = _check_frames(a, b)
    lead = a.shape[:-3]
    fa = a.reshape(-1, *a.shape[-3:]).astype(np.float64)
    fb = b.reshape(-1, *b.shape[-3:]).astype(np.float64)
    return np.array([_ssim_one(x, y, peak, sigma) for x, y in zip(fa, fb, strict=True)]).reshape(lead)


# ----------------------------------------------------------------------------- camera following


def intrinsics_matrix(intrinsics: Sequence[float]) -> np.ndarray:
    """(fx, fy, cx, cy) -> 3x3 K."""
    fx, fy, cx, cy = (float(v) for v in intrinsics)
    return np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])


def rotation_angle_deg(R: np.ndarray) -> np.ndarray:
    """Geodesic angle of rotation matrices (..., 3, 3) in degrees."""
    return np.rad2deg(rotation_angle(R))


def angle_between_deg(u: np.ndarray, v: np.ndarray) -> float:
    """Angle in degrees between two 3-vectors (any length > 0)."""
    u, v = np.asarray(u, np.float64), np.asarray(v, np.float64)
    c = u @ v / (np.linalg.norm(u) * np.linalg.norm(v))
    return float(np.rad2deg(np.arccos(np.clip(c, -1.0, 1.0))))


@dataclass
class MotionConfig:
    """Knobs of the feature-based relative pose estimator."""

    min_matches: int = 8
    """Fewer ratio-test matches than this and the estimate fails (too little texture to tell)."""
    ratio: float = 0.8
    """Lowe's ratio test threshold for SIFT matches."""
    ransac_px: float = 1.5
    """RANSAC inlier threshold in pixels (essential matrix and rotation-only fits)."""
    static_px: float = 0.25
    """80th-percentile feature displacement below this (pixels) means the frames show no motion: identity
    estimate. (Not the median: walking forward, the features near the centre barely move.)"""
    rotation_only_share: float = 0.9
    """If a pure rotation explains at least this share of the essential matrix's inliers, the frames
    carry no usable parallax: keep the rotation-only fit and leave the translation direction unknown."""
    min_inlier_share: float = 0.3
    """Fewer inliers than this share of the matches and the estimate fails (the matches disagree)."""
    detector: str = "sift"
    """Feature detector: 'sift' or 'orb'."""
    sift_contrast: float = 0.01
    """SIFT contrast threshold; lower than OpenCV's 0.04 because Doom frames are dark and small."""
    orb_features: int = 1000
    """ORB keypoints per frame."""
    clahe: bool = True
    """Equalise local contrast before detection (dark frames otherwise give a handful of keypoints)."""
    upsample: int = 1
    """Upsample frames by this factor before detection (2 finds more matches but is about 8x slower)."""


@dataclass
class Motion:
    """One relative pose estimate: second camera in the first camera's frame (OpenCV axes)."""

    ok: bool
    """The rotation estimate is usable."""
    R: np.ndarray = field(default_factory=lambda: np.eye(3))
    """Rotation (3, 3) of the second camera in the first camera's frame."""
    t_dir: np.ndarray | None = None
    """Unit translation direction (3,) of the second camera in the first camera's frame; None if unknown."""
    kind: str = "failed"
    """'essential', 'rotation' (no parallax), 'static' (no motion) or 'failed'."""
    matches: int = 0
    """Feature matches after the ratio test."""
    inliers: int = 0
    """Matches consistent with the chosen model."""


_DETECTORS: dict[tuple, Any] = {}


def _detector(cfg: MotionConfig) -> Any:
    key = (cfg.detector, cfg.sift_contrast, cfg.orb_features)
    if key not in _DETECTORS:
        if cfg.detector == "sift":
            _DETECTORS[key] = cv2.SIFT_create(contrastThreshold=cfg.sift_contrast)
        elif cfg.detector == "orb":
            _DETECTORS[key] = cv2.ORB_create(nfeatures=cfg.orb_features, edgeThreshold=8, patchSize=15, fastThreshold=5)
        else:
            raise ValueError(f"detector={cfg.detector!r}; expected 'sift' or 'orb'")
    return _DETECTORS[key]


def _prepare(img: np.ndarray, cfg: MotionConfig) -> np.ndarray:
    """RGB uint8 -> equalised, upsampled gray: Doom frames are dark and small, which starves the detector."""
    g = cv2.cvtColor(np.ascontiguousarray(img), cv2.COLOR_RGB2GRAY)
    if cfg.clahe:
        g = cv2.createCLAHE(clipLimit=2.0, tileGridSize=(4, 4)).apply(g)
    if cfg.upsample != 1:
        g = cv2.resize(g, None, fx=cfg.upsample, fy=cfg.upsample, interpolation=cv2.INTER_CUBIC)
    return g


def _match(img1: np.ndarray, img2: np.ndarray, cfg: MotionConfig) -> tuple[np.ndarray, np.ndarray]:
    """Feature matches with Lowe's ratio test and a mutual check: pixel coordinates (N, 2), (N, 2)."""
    det = _detector(cfg)
    k1, d1 = det.detectAndCompute(_prepare(img1, cfg), None)
    k2, d2 = det.detectAndCompute(_prepare(img2, cfg), None)
    if d1 is None or d2 is None or len(k1) < 2 or len(k2) < 2:
        return np.zeros((0, 2)), np.zeros((0, 2))
    bf = cv2.BFMatcher(cv2.NORM_L2 if cfg.detector == "sift" else cv2.NORM_HAMMING)
    fwd = bf.knnMatch(d1, d2, k=2)
    back = {m.queryIdx: m.trainIdx for m in bf.match(d2, d1)}
    good = [p[0] for p in fwd if len(p) == 2 and p[0].distance < cfg.ratio * p[1].distance]
    good = [m for m in good if back.get(m.trainIdx) == m.queryIdx]
    # Keypoints of the upsampled image -> pixel-index coordinates of the original (centres at integers).
    to_px = lambda pt: ((pt[0] + 0.5) / cfg.upsample - 0.5, (pt[1] + 0.5) / cfg.upsample - 0.5)  # noqa: E731
    p1 = np.array([to_px(k1[m.queryIdx].pt) for m in good], dtype=np.float64).reshape(-1, 2)
    p2 = np.array([to_px(k2[m.trainIdx].pt) for m in good], dtype=np.float64).reshape(-1, 2)
    return p1, p2


def _bearings(p: np.ndarray, K: np.ndarray) -> np.ndarray:
    """Pixels (N, 2) -> unit rays (N, 3) in camera coordinates."""
    d = np.linalg.solve(K, np.concatenate([p, np.ones((len(p), 1))], axis=1).T).T
    return d / np.linalg.norm(d, axis=1, keepdims=True)


def _kabsch(b1: np.ndarray, b2: np.ndarray) -> np.ndarray:
    """Rotation R minimising sum |R b2 - b1|^2 (rays of camera 2 rotated into camera 1)."""
    U, _, Vt = np.linalg.svd(b1.T @ b2)
    D = np.diag([1.0, 1.0, np.sign(np.linalg.det(U @ Vt))])
    return U @ D @ Vt


def _rotation_only(b1: np.ndarray, b2: np.ndarray, tol: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """RANSAC fit of a pure rotation b1 ~ R b2 (2-point samples); returns R and the inlier mask."""
    best = np.zeros(len(b1), dtype=bool)
    for _ in range(64):
        i = rng.choice(len(b1), 2, replace=False)
        R = _kabsch(b1[i], b2[i])
        inl = np.linalg.norm(b2 @ R.T - b1, axis=1) < tol
        if inl.sum() > best.sum():
            best = inl
    if best.sum() < 2:
        return np.eye(3), best
    R = _kabsch(b1[best], b2[best])
    return R, np.linalg.norm(b2 @ R.T - b1, axis=1) < tol


def estimate_motion(
    img1: np.ndarray, img2: np.ndarray, intrinsics: Sequence[float], cfg: MotionConfig | None = None
) -> Motion:
    """Relative pose of the camera of img2 in the camera of img1 from SIFT matches (uint8 (H, W, 3) each).

    Essential matrix (`cv2.findEssentialMat` + `cv2.recoverPose`, RANSAC, known K) when the matches
    carry parallax; a rotation-only fit when a pure rotation explains them as well (the essential
    matrix is degenerate for pure rotation, and Doom turns in place often); identity when nothing moved.
    """
    cfg = cfg or MotionConfig()
    K = intrinsics_matrix(intrinsics)
    p1, p2 = _match(img1, img2, cfg)
    n = len(p1)
    if n < cfg.min_matches:
        return Motion(False, matches=n)
    if np.percentile(np.linalg.norm(p2 - p1, axis=1), 80) < cfg.static_px:
        return Motion(True, np.eye(3), None, "static", n, n)
    rng = np.random.default_rng(0)  # deterministic RANSAC: the same frames always give the same estimate
    tol = cfg.ransac_px / float(K[0, 0])  # pixels -> radians on the unit sphere
    R_rot, inl_rot = _rotation_only(_bearings(p1, K), _bearings(p2, K), tol, rng)
    n_rot = int(inl_rot.sum())
    try:
        E, mask = cv2.findEssentialMat(p1, p2, K, method=cv2.RANSAC, prob=0.999, threshold=cfg.ransac_px)
    except cv2.error:  # a degenerate sample (e.g. matches along one line) fails OpenCV's polynomial solver
        E, mask = None, None
    n_ess = 0
    if E is not None and E.shape == (3, 3):
        n_ess, R_cv, t_cv, _ = cv2.recoverPose(E, p1, p2, K, mask=mask)
    if n_ess == 0 or n_rot >= cfg.rotation_only_share * n_ess:
        if n_rot < max(cfg.min_matches, cfg.min_inlier_share * n):
            return Motion(False, matches=n, inliers=n_rot)
        return Motion(True, R_rot, None, "rotation", n, n_rot)
    if n_ess < max(cfg.min_matches, cfg.min_inlier_share * n):
        return Motion(False, matches=n, inliers=int(n_ess))
    # OpenCV's (R, t) maps camera-1 points into camera 2: X2 = R X1 + t. The action convention is the
    # second camera's pose in the first: rotation R^T, position -R^T t.
    R = R_cv.T
    t = -R_cv.T @ t_cv.ravel()
    return Motion(True, R, t / np.linalg.norm(t), "essential", n, int(n_ess))


def action_rotation(action: np.ndarray) -> np.ndarray:
    """Rotation matrix (3, 3) of an action [tx, ty, tz, rx, ry, rz]."""
    from scipy.spatial.transform import Rotation

    return Rotation.from_rotvec(np.asarray(action, np.float64)[3:6]).as_matrix()


@dataclass
class FollowingResult:
    """Camera-following errors of one frame sequence against its commanded motions."""

    rot_err_deg: list[float]
    """Per step: angle between estimated and commanded rotation; a failed estimate counts as identity
    (the error is then the commanded turn), so a method cannot gain by failing."""
    rot_ok: list[bool]
    """Per step: whether the rotation estimate succeeded."""
    trans_err_deg: list[float | None]
    """Per step: angle between estimated and commanded translation direction; None where the
    commanded translation is too small to have a direction."""
    trans_ok: list[bool | None]
    """Per step: whether a translation direction was estimated (None where none was commanded)."""
    kinds: list[str]
    """Per step: the estimate's kind (essential, rotation, static, failed)."""

    def summary(self) -> dict[str, float | int | None]:
        """Means and success shares over the steps."""
        rot = np.asarray(self.rot_err_deg)
        ok = np.asarray(self.rot_ok)
        tr = [e for e in self.trans_err_deg if e is not None]
        tr_ok = [o for o in self.trans_ok if o is not None]
        mean = lambda x: float(np.mean(x)) if len(x) else None  # noqa: E731
        return {
            "steps": len(rot),
            "rot_err_deg": mean(rot),
            "rot_err_deg_median": float(np.median(rot)) if len(rot) else None,
            "rot_err_deg_success_only": mean(rot[ok]),
            "success_share": mean(ok.astype(float)),
            "trans_dir_err_deg": mean(tr),
            "trans_steps": len(tr_ok),
            "trans_success_share": mean(np.asarray(tr_ok, float)),
        }


def camera_following(
    frames: np.ndarray,
    actions: np.ndarray,
    intrinsics: Sequence[float],
    min_translation: float = 2.0,
    cfg: MotionConfig | None = None,
) -> FollowingResult:
    """Compare the motion between consecutive step-end frames (S+1, H, W, 3) with actions (S, 6).

    Translation-direction errors are measured on steps whose commanded translation exceeds
    `min_translation` scene units; a step with no estimated direction counts as a failure there and
    as 90 degrees (chance level) in the mean, so failing is never rewarded.
    """
    frames, actions = np.asarray(frames), np.asarray(actions, np.float64)
    if frames.shape[0] != actions.shape[0] + 1:
        raise ValueError(f"{frames.shape[0]} frames for {actions.shape[0]} actions: expected steps + 1 frames")
    out = FollowingResult([], [], [], [], [])
    for k, a in enumerate(actions):
        m = estimate_motion(frames[k], frames[k + 1], intrinsics, cfg)
        R_cmd = action_rotation(a)
        out.rot_err_deg.append(float(rotation_angle_deg(m.R.T @ R_cmd)))  # m.R is identity when failed
        out.rot_ok.append(m.ok)
        out.kinds.append(m.kind)
        if np.linalg.norm(a[:3]) <= min_translation:
            out.trans_err_deg.append(None)
            out.trans_ok.append(None)
        elif m.t_dir is None:
            out.trans_err_deg.append(90.0)
            out.trans_ok.append(False)
        else:
            out.trans_err_deg.append(angle_between_deg(m.t_dir, a[:3]))
            out.trans_ok.append(True)
    return out


def horizontal_shift(a: np.ndarray, b: np.ndarray, max_shift: int = 16, refine: float = 0.125) -> float:
    """Horizontal shift dx (px) that moves grey image a (H, W) onto b (b(x) ~ a(x - dx)), by least squares.

    Picture b is compared with a shifted by every whole pixel in [-max_shift,
    max_shift], then by `refine`-pixel steps (linear interpolation) around the best one; a margin of
    max_shift columns keeps the compared region inside both frames, and the error is the variance of
    the difference, so a change of brightness does not pull the estimate. Unlike phase correlation, which
    weighs every frequency alike, this follows the picture's energy, so a blurry frame that moves
    reads as moving: on engine frames blurred by a 4 px Gaussian, phase correlation measured
    0.11-0.85 of the true yaw shift and this measures 1.08-1.18 (1.06-1.14 unblurred; docs/eval.md).
    A shift beyond max_shift reads as max_shift.
    """
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape or a.ndim != 2 or a.shape[1] <= 2 * max_shift + 8:
        raise ValueError(f"grey frames have shapes {a.shape} and {b.shape}; expected two equal (H, W) arrays "
                         f"with W > {2 * max_shift + 8}")
    m = max_shift
    target = b[:, m:-m]

    def err(dx: float) -> float:
        lo = int(np.floor(dx))
        f = dx - lo  # a(x - dx) = (1 - f) a(x - lo) + f a(x - lo - 1)
        W = a.shape[1]
        s0 = a[:, m - lo:W - m - lo]
        s1 = a[:, m - lo - 1:W - m - lo - 1]
        return float(np.var(target - ((1 - f) * s0 + f * s1)))  # a brightness offset does not count

    whole = np.arange(-m + 1, m)  # whole-pixel candidates keep one column spare for interpolation
    best = float(whole[int(np.argmin([err(d) for d in whole]))])
    fine = np.clip(np.arange(best - 1, best + 1 + refine / 2, refine), -m + 1, m - 1)
    return float(fine[int(np.argmin([err(d) for d in fine]))])


def yaw_response(
    frames: np.ndarray, actions: np.ndarray, fx: float, min_yaw: float = 0.02, max_yaw: float = 0.35
) -> dict[str, float | int | None]:
    """How far the picture slides sideways per commanded yaw, over step-end frames (S+1, H, W, 3) or (B, S+1, ...).

    Under a pure yaw θ a pinhole picture slides by about `-fx·tan θ` px. On every step with
    `min_yaw < |θ| <= max_yaw` (larger turns leave too little of the view to compare) the grey
    frames' shift is measured by least squares (`horizontal_shift`, searching 1.5x the expected shift,
    at least 16 px) and taken along the expected direction. `yaw_gain` is the sum of these shifts
    over the sum of the expected ones (1: turns like the engine; 0: ignores the turn; negative: turns
    the wrong way), `yaw_frozen_share` the share of steps under a quarter of their expected shift.
    Least squares, not phase correlation: phase correlation weighs every frequency alike, so on a
    blurry picture a faint pattern that stays still outweighs the content that slides (an engine turn
    blurred by 4 px with a fixed 1-grey-level pattern: 0.03 by phase correlation, 1.09 by least squares).
    """
    frames, actions = np.asarray(frames), np.asarray(actions, np.float64)
    if frames.ndim == 4:
        frames, actions = frames[None], actions[None]
    if frames.shape[1] != actions.shape[1] + 1:
        raise ValueError(f"{frames.shape[1]} frames for {actions.shape[1]} actions: expected steps + 1 frames")
    grey = lambda x: cv2.cvtColor(np.ascontiguousarray(x), cv2.COLOR_RGB2GRAY).astype(np.float32)  # noqa: E731
    yaw, measured, expected = [], [], []
    for f, a in zip(frames, actions, strict=True):
        for k in np.flatnonzero((np.abs(a[:, 4]) > min_yaw) & (np.abs(a[:, 4]) <= max_yaw)):
            e = -fx * np.tan(a[k, 4])  # the picture slides against the turn
            yaw.append(a[k, 4])
            expected.append(e)
            measured.append(horizontal_shift(grey(f[k]), grey(f[k + 1]), max_shift=max(16, int(np.ceil(1.5 * abs(e))))))
    if len(yaw) < 2:
        return {"yaw_gain": None, "yaw_frozen_share": None, "yaw_corr": None, "yaw_steps": len(yaw)}
    y, x, e = np.asarray(yaw), np.asarray(measured), np.asarray(expected)  # (N,) each
    along = x * np.sign(e)  # measured shift along the expected direction
    return {"yaw_gain": float(along.sum() / np.abs(e).sum()),
            "yaw_frozen_share": float(np.mean(along < 0.25 * np.abs(e))),
            "yaw_corr": -float(np.corrcoef(y, x)[0, 1]) if x.std() > 0 else 0.0, "yaw_steps": len(yaw)}


# ----------------------------------------------------------------------------- stability


def frame_stats(frames: np.ndarray) -> dict[str, np.ndarray]:
    """Per-frame brightness (mean gray), contrast (gray std) and sharpness (Laplacian variance) of (N, H, W, 3)."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames have shape {frames.shape}, expected (N, H, W, 3)")
    b, c, s = (np.zeros(len(frames)) for _ in range(3))
    for i, f in enumerate(frames):
        g = cv2.cvtColor(np.ascontiguousarray(f), cv2.COLOR_RGB2GRAY)
        b[i], c[i] = g.mean(), g.std()
        s[i] = cv2.Laplacian(g, cv2.CV_64F).var()
    return {"brightness": b, "contrast": c, "sharpness": s}


def frame_change(frames: np.ndarray, stride: int) -> np.ndarray:
    """Mean absolute change (0-255) between frames `stride` apart: (N, H, W, 3) -> (N,), first `stride` are NaN."""
    f = np.asarray(frames, dtype=np.float32)
    out = np.full(len(f), np.nan)
    out[stride:] = np.abs(f[stride:] - f[:-stride]).mean(axis=(1, 2, 3))
    return out


@dataclass
class CollapseConfig:
    """Thresholds of the collapse detector, relative to the real engine's frames of the same trajectory."""

    flat_contrast: float = 0.25
    """A frame is flat when its contrast is below this share of the real frames' 5th-percentile contrast."""
    dark_share: float = 0.5
    """A frame is saturated dark when its brightness is below this share of the real 1st-percentile brightness."""
    bright_share: float = 0.5
    """A frame is saturated bright when its brightness exceeds the real 99th percentile by this share
    of the remaining headroom to 255."""
    frozen_change: float = 0.1
    """A frame is frozen when its change over one step is below this share of the real change at the
    same frame, while the real camera view changed by more than `moving_change`."""
    moving_change: float = 2.0
    """Real change over one step (mean |diff|, 0-255) above which the real view counts as moving."""
    min_run: int = 48
    """A sustained run: this many consecutive flagged frames (48 = 12 steps, about 1.4 s at 35 fps)."""


def detect_collapse(
    frames: np.ndarray, real: np.ndarray, frames_per_step: int, cfg: CollapseConfig | None = None
) -> dict[str, Any]:
    """Verdict on generated frames (N, H, W, 3) against the real frames (N, H, W, 3) of the same trajectory.

    A frame is flagged flat, saturated (dark or bright) or frozen by thresholds relative to the real
    frames' statistics; the rollout has collapsed if any flag holds for `min_run` consecutive frames.
    """
    cfg = cfg or CollapseConfig()
    frames, real = np.asarray(frames), np.asarray(real)
    if frames.shape != real.shape:
        raise ValueError(f"generated frames {frames.shape} and real frames {real.shape} must have the same shape")
    g, r = frame_stats(frames), frame_stats(real)
    thr = {
        "flat_contrast": cfg.flat_contrast * float(np.percentile(r["contrast"], 5)),
        "dark_brightness": cfg.dark_share * float(np.percentile(r["brightness"], 1)),
        "bright_brightness": (p99 := float(np.percentile(r["brightness"], 99))) + cfg.bright_share * (255.0 - p99),
    }
    gc, rc = frame_change(frames, frames_per_step), frame_change(real, frames_per_step)
    moving = np.nan_to_num(rc) > cfg.moving_change
    flags = {
        "flat": g["contrast"] < thr["flat_contrast"],
        "saturated": (g["brightness"] < thr["dark_brightness"]) | (g["brightness"] > thr["bright_brightness"]),
        "frozen": moving & (np.nan_to_num(gc, nan=np.inf) < cfg.frozen_change * np.nan_to_num(rc)),
    }
    runs = {k: _longest_run(v) for k, v in flags.items()}
    starts = [_first_run_start(v, cfg.min_run) for v in flags.values()]
    starts = [s for s in starts if s is not None]
    return {
        "collapsed": any(n >= cfg.min_run for n in runs.values()),
        "first_collapse_frame": min(starts) if starts else None,
        "longest_run": runs,
        "flagged_share": {k: float(v.mean()) for k, v in flags.items()},
        "thresholds": thr,
        "config": asdict(cfg),
    }


def _longest_run(flags: np.ndarray) -> int:
    best = cur = 0
    for f in flags:
        cur = cur + 1 if f else 0
        best = max(best, cur)
    return best


def _first_run_start(flags: np.ndarray, n: int) -> int | None:
    cur = 0
    for i, f in enumerate(flags):
        cur = cur + 1 if f else 0
        if cur >= n:
            return i - n + 1
    return None
