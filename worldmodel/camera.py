"""Camera math: SE(3) helpers, actions <-> poses, and relative Plücker maps.

Conventions (ARCHITECTURE.md, public contract):
- OpenCV camera axes: x right, y down, z forward. Poses are camera-to-world 4x4, float64.
- An action `[tx, ty, tz, rx, ry, rz]` is the pose of the camera at the end of a step
  expressed in the camera at the end of the previous step (translation in scene
  units, rotation as an axis-angle vector in radians).
- Inside a step, the motion is spread over `frames_per_step` video frames: rotation by
  Slerp, translation linearly (the decoupled SE(3) interpolation). A caller may instead
  pass one relative motion per video frame, shape (frames_per_step, 6), each relative
  to the previous video frame.
- Camera conditioning per video frame: the rays of the frame expressed in the previous
  video frame's camera, as origin (3) + unit direction (3) per latent pixel.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.spatial.transform import Rotation, Slerp

from worldmodel.config import CameraStats

ACTION_LAYOUT = "[tx, ty, tz, rx, ry, rz]"
ACTION_NAMES = ("tx", "ty", "tz", "rx", "ry", "rz")
"""Names of the six action components, in order."""


def as_pose(T: np.ndarray) -> np.ndarray:
    """Validate a (..., 4, 4) pose array and return it as float64."""
    T = np.asarray(T, dtype=np.float64)
    if T.shape[-2:] != (4, 4):
        raise ValueError(f"pose has shape {T.shape}, expected (..., 4, 4) camera-to-world matrices")
    return T


def compose(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a then b in a's frame: (..., 4, 4) @ (..., 4, 4)."""
    return as_pose(a) @ as_pose(b)


def invert(T: np.ndarray) -> np.ndarray:
    """Inverse of rigid transforms (..., 4, 4), using R^T rather than a general inverse."""
    T = as_pose(T)
    R, t = T[..., :3, :3], T[..., :3, 3:]
    out = np.zeros_like(T)
    Rt = np.swapaxes(R, -1, -2)
    out[..., :3, :3] = Rt
    out[..., :3, 3:] = -Rt @ t
    out[..., 3, 3] = 1.0
    return out


def relative_pose(c2w_prev: np.ndarray, c2w_next: np.ndarray) -> np.ndarray:
    """Pose of `next` expressed in the camera frame of `prev`: inv(prev) @ next."""
    return invert(c2w_prev) @ as_pose(c2w_next)


def check_action(
    action: object,
    shape: tuple[int, ...] | None = None,
    layout: str = ACTION_LAYOUT,
    bounds: tuple[np.ndarray, np.ndarray] | None = None,
) -> np.ndarray:
    """Validate actions: shape (..., 6), or exactly `shape` when given; real numbers; no NaN or inf;
    inside `bounds` = (low, high) (arrays broadcasting to the action, e.g. a Box's) when given.

    Returns a float64 copy. Every error names the problem, the offending indices or component and
    the layout; nothing is changed, so a caller that checks first stays usable after a bad action.
    """
    want = f"{shape}" if shape is not None else "(..., 6)"
    try:
        a = np.asarray(action)
    except Exception as e:  # ragged lists and other junk
        raise ValueError(f"action {action!r} is not array-like; expected shape {want} = {layout}") from e
    if (a.shape != tuple(shape)) if shape is not None else (a.shape[-1:] != (6,)):
        raise ValueError(f"action has shape {a.shape}, expected {want} = {layout}")
    if a.dtype == np.bool_ or not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer)):
        raise ValueError(f"action has dtype {a.dtype}, expected a float array of shape {want} = {layout}")
    a = a.astype(np.float64)
    if np.isnan(a).any():
        raise ValueError(f"action contains NaN at {np.argwhere(np.isnan(a)).tolist()}: {a.tolist()} ({layout})")
    if not np.isfinite(a).all():
        raise ValueError(f"action contains inf at {np.argwhere(~np.isfinite(a)).tolist()}: {a.tolist()} ({layout})")
    if bounds is not None:
        _check_bounds(a, np.asarray(bounds[0], np.float64), np.asarray(bounds[1], np.float64), layout)
    return a


def _check_bounds(a: np.ndarray, low: np.ndarray, high: np.ndarray, layout: str) -> None:
    # Bounds are usually float32 (a Box's); a float64 action equal to the float64 bound it was
    # made from must pass, so the comparison allows one float32 rounding step.
    tol = 1e-6 * np.maximum(1.0, np.maximum(np.abs(low), np.abs(high)))
    bad = (a < low - tol) | (a > high + tol)
    if bad.any():
        idx = tuple(int(i) for i in np.argwhere(bad)[0])
        low, high = np.broadcast_to(low, a.shape), np.broadcast_to(high, a.shape)
        where = f" of env {idx[0]}" if len(idx) > 1 else ""
        name = ACTION_NAMES[idx[-1]] if a.shape[-1] == len(ACTION_NAMES) else f"component {idx[-1]}"
        raise ValueError(
            f"action {name}{where} = {a[idx]:.6g} is outside its bounds "
            f"[{low[idx]:.6g}, {high[idx]:.6g}]; expected {layout} within low={low.reshape(-1, low.shape[-1])[0].tolist()}, "
            f"high={high.reshape(-1, high.shape[-1])[0].tolist()} (the env's action_space)"
        )


def action_to_pose(action: np.ndarray) -> np.ndarray:
    """(..., 6) actions -> (..., 4, 4) relative poses."""
    a = check_action(action)
    T = np.zeros(a.shape[:-1] + (4, 4))
    T[..., :3, :3] = Rotation.from_rotvec(a[..., 3:].reshape(-1, 3)).as_matrix().reshape(a.shape[:-1] + (3, 3))
    T[..., :3, 3] = a[..., :3]
    T[..., 3, 3] = 1.0
    return T


def pose_to_action(T: np.ndarray) -> np.ndarray:
    """(..., 4, 4) relative poses -> (..., 6) actions."""
    T = as_pose(T)
    rv = Rotation.from_matrix(T[..., :3, :3].reshape(-1, 3, 3)).as_rotvec().reshape(T.shape[:-2] + (3,))
    return np.concatenate([T[..., :3, 3], rv], axis=-1)


def interpolate_action(action: np.ndarray, n: int) -> np.ndarray:
    """Poses of the n video frames of one step relative to the step's start camera.

    (6,) -> (n, 4, 4); frame n-1 is exactly the action's pose.
    """
    a = check_action(action)
    if a.shape != (6,):
        raise ValueError(f"interpolate_action takes one action of shape (6,), got {a.shape}")
    fr = np.arange(1, n + 1) / n
    key = Rotation.from_rotvec(np.stack([np.zeros(3), a[3:]]))
    R = Slerp([0.0, 1.0], key)(fr).as_matrix()
    T = np.zeros((n, 4, 4))
    T[:, :3, :3] = R
    T[:, :3, 3] = fr[:, None] * a[None, :3]
    T[:, 3, 3] = 1.0
    return T


def step_frame_motions(action: np.ndarray, frames_per_step: int) -> np.ndarray:
    """Relative motion of each video frame in the previous video frame's camera.

    `action` is (6,) (one motion, interpolated) or (frames_per_step, 6) (one per frame,
    each relative to the previous frame). Returns (frames_per_step, 4, 4).
    """
    a = check_action(action)
    if a.shape == (frames_per_step, 6):
        return action_to_pose(a)
    if a.shape != (6,):
        raise ValueError(
            f"action has shape {a.shape}, expected (6,) or ({frames_per_step}, 6) = {ACTION_LAYOUT}"
        )
    rel_start = interpolate_action(a, frames_per_step)
    prev = np.concatenate([np.eye(4)[None], rel_start[:-1]], axis=0)
    return relative_pose(prev, rel_start)


def step_poses(actions: np.ndarray) -> np.ndarray:
    """Each stream's pose at the end of its step in the camera at its start, for a whole batch at once:
    actions (B, 6) or (B, fps, 6) -> (B, 4, 4); per stream `integrate(np.eye(4), a)`."""
    a = check_action(actions)
    if a.ndim == 2:
        return action_to_pose(a)
    if a.ndim != 3:
        raise ValueError(f"actions have shape {a.shape}, expected (B, 6) or (B, frames_per_step, 6)")
    T = action_to_pose(a)  # (B, fps, 4, 4), each frame's motion in the previous frame's camera
    out = T[:, 0]
    for k in range(1, T.shape[1]):
        out = out @ T[:, k]
    return out


def frame_motions(actions: np.ndarray, frames_per_step: int) -> np.ndarray:
    """Each video frame's motion in the previous frame's camera, for a whole batch at once:
    actions (B, 6) or (B, fps, 6) -> (B, fps, 4, 4); per stream `step_frame_motions`."""
    a = check_action(actions)
    if a.ndim == 3 and a.shape[1:] == (frames_per_step, 6):
        return action_to_pose(a)
    if a.ndim != 2 or a.shape[1] != 6:
        raise ValueError(f"actions have shape {a.shape}, expected (B, 6) or (B, {frames_per_step}, 6)")
    # `interpolate_action` Slerps from the identity to the step's rotation: at fraction f that is
    # the rotation by f times its rotation vector (taken with angle <= pi, as Slerp takes the short way).
    # One batched scipy call instead of one Slerp per stream (64 streams: 20 ms of a step).
    rotvec = Rotation.from_rotvec(a[:, 3:]).as_rotvec()
    f = np.arange(1, frames_per_step + 1) / frames_per_step  # (fps,)
    at = np.concatenate([a[:, None, :3], rotvec[:, None]], -1) * f[None, :, None]  # (B, fps, 6)
    start = action_to_pose(at)  # (B, fps, 4, 4): frame k in the step's start camera
    prev = np.concatenate([np.broadcast_to(np.eye(4), (len(a), 1, 4, 4)), start[:, :-1]], axis=1)
    return relative_pose(prev, start)


def integrate(c2w: np.ndarray, action: np.ndarray) -> np.ndarray:
    """World pose after applying one step's action to camera `c2w`."""
    a = check_action(action)
    T = action_to_pose(a) if a.shape == (6,) else np.linalg.multi_dot(list(action_to_pose(a)))
    return as_pose(c2w) @ T


def poses_to_actions(c2w: np.ndarray, frames_per_step: int) -> np.ndarray:
    """Per-step actions from video-frame poses (1 + k*frames_per_step, 4, 4) -> (k, 6)."""
    c2w = as_pose(c2w)
    n = c2w.shape[0] - 1
    if n % frames_per_step:
        raise ValueError(f"{c2w.shape[0]} poses: expected 1 + k*{frames_per_step} video frames")
    ends = c2w[frames_per_step::frames_per_step]
    starts = c2w[0:-1:frames_per_step]
    return pose_to_action(relative_pose(starts, ends))


def scale_intrinsics(intrinsics: Sequence[float], src_hw: tuple[int, int], dst_hw: tuple[int, int]) -> np.ndarray:
    """Intrinsics (fx, fy, cx, cy) of a frame resized from src_hw to dst_hw (pixel centres at integers)."""
    fx, fy, cx, cy = np.asarray(intrinsics, dtype=np.float64)
    sy, sx = dst_hw[0] / src_hw[0], dst_hw[1] / src_hw[1]
    return np.array([fx * sx, fy * sy, (cx + 0.5) * sx - 0.5, (cy + 0.5) * sy - 0.5])


def ray_directions(intrinsics: Sequence[float], image_hw: tuple[int, int], grid_hw: tuple[int, int]) -> np.ndarray:
    """Unit ray directions in camera coordinates at the centres of a (h, w) grid laid over the image.

    Returns (h, w, 3). Grid cell (i, j) covers image pixels [i*s, (i+1)*s); its centre in
    pixel-index coordinates is (i + 0.5) * s - 0.5.
    """
    fx, fy, cx, cy = np.asarray(intrinsics, dtype=np.float64)
    H, W = image_hw
    h, w = grid_hw
    v = (np.arange(h) + 0.5) * (H / h) - 0.5
    u = (np.arange(w) + 0.5) * (W / w) - 0.5
    uu, vv = np.meshgrid(u, v)  # (h, w)
    d = np.stack([(uu - cx) / fx, (vv - cy) / fy, np.ones_like(uu)], axis=-1)
    return d / np.linalg.norm(d, axis=-1, keepdims=True)


def plucker_maps(
    motions: np.ndarray, intrinsics: Sequence[float], image_hw: tuple[int, int], grid_hw: tuple[int, int]
) -> np.ndarray:
    """Relative Plücker maps (origin + unit direction) for frame motions (..., 4, 4) -> (..., 6, h, w).

    Each motion is a frame's pose in the previous frame's camera; the rays of the frame
    are expressed in that previous camera.
    """
    T = as_pose(motions)
    d = ray_directions(intrinsics, image_hw, grid_hw)  # (h, w, 3)
    R, t = T[..., :3, :3], T[..., :3, 3]
    dirs = np.einsum("...ij,hwj->...ihw", R, d)  # (..., 3, h, w)
    origin = np.broadcast_to(t[..., :, None, None], dirs.shape)
    return np.concatenate([origin, dirs], axis=-3).astype(np.float32)


def action_camera_maps(
    action: np.ndarray,
    intrinsics: Sequence[float],
    image_hw: tuple[int, int],
    grid_hw: tuple[int, int],
    frames_per_step: int,
) -> np.ndarray:
    """Camera channels of one step: (6,) or (frames_per_step, 6) action -> (6*frames_per_step, h, w)."""
    maps = plucker_maps(step_frame_motions(action, frames_per_step), intrinsics, image_hw, grid_hw)
    return maps.reshape(-1, *grid_hw)


def pose_camera_maps(
    c2w: np.ndarray,
    intrinsics: Sequence[float],
    image_hw: tuple[int, int],
    grid_hw: tuple[int, int],
    frames_per_step: int,
) -> np.ndarray:
    """Camera channels of every step of a clip with video-frame poses (1 + k*fps, 4, 4) -> (k, 6*fps, h, w)."""
    c2w = as_pose(c2w)
    n = c2w.shape[0] - 1
    if n % frames_per_step:
        raise ValueError(f"{c2w.shape[0]} poses: expected 1 + k*{frames_per_step} video frames")
    motions = relative_pose(c2w[:-1], c2w[1:])  # (n, 4, 4)
    maps = plucker_maps(motions, intrinsics, image_hw, grid_hw)  # (n, 6, h, w)
    return maps.reshape(n // frames_per_step, frames_per_step * 6, *grid_hw)


def rotation_angle(R: np.ndarray) -> np.ndarray:
    """Geodesic angle of rotation matrices (..., 3, 3) in radians."""
    tr = np.trace(np.asarray(R), axis1=-2, axis2=-1)
    return np.arccos(np.clip((tr - 1.0) / 2.0, -1.0, 1.0))


def step_rotation(action: np.ndarray) -> np.ndarray:
    """Rotation (3, 3) of the camera at the end of a step in the camera at its start: one action (6,)
    or one per video frame (n, 6), composed as `integrate` does."""
    return integrate(np.eye(4), action)[:3, :3]


def rotation_warp_grid(
    R: np.ndarray, intrinsics: Sequence[float], image_hw: tuple[int, int], grid_hw: tuple[int, int]
) -> np.ndarray:
    """Where each cell of a (h, w) grid over the new frame was in the previous frame, under rotation R alone.

    R (..., 3, 3) is the new camera's rotation in the previous camera (an action's rotation).
    Returns (..., 2, h, w): x then y in `torch.nn.functional.grid_sample` coordinates
    (align_corners=False, -1 and 1 at the image's outer edges). A ray that turns behind the
    previous camera gets 2, which samples as outside the image. Translation is ignored: it
    needs depth, and the model fills in the parallax and the newly visible border itself.
    """
    fx, fy, cx, cy = np.asarray(intrinsics, dtype=np.float64)
    H, W = image_hw
    d = np.einsum("...ij,hwj->...hwi", np.asarray(R, np.float64), ray_directions(intrinsics, image_hw, grid_hw))
    z = d[..., 2]
    ahead = z > 1e-6
    z = np.where(ahead, z, 1.0)
    x = ((fx * d[..., 0] / z + cx) + 0.5) / W * 2 - 1
    y = ((fy * d[..., 1] / z + cy) + 0.5) / H * 2 - 1
    grid = np.stack([np.where(ahead, x, 2.0), np.where(ahead, y, 2.0)], axis=-3)
    return np.clip(grid, -2.0, 2.0).astype(np.float32)


def _from_reference(
    maps: np.ndarray, reference: str, intrinsics: Sequence[float] | None, image_hw: tuple[int, int] | None
) -> np.ndarray:
    """Maps (..., 6*k, h, w) -> (..., k, 6, h, w), direction channels measured from `reference` (CameraStats)."""
    x = np.asarray(maps, dtype=np.float64)
    x = x.reshape(*x.shape[:-3], -1, 6, *x.shape[-2:])
    if reference == "rest":
        if intrinsics is None or image_hw is None:
            raise ValueError("camera stats with reference='rest' need the intrinsics and image_hw of the maps")
        rest = np.moveaxis(ray_directions(intrinsics, image_hw, x.shape[-2:]), -1, 0)  # (3, h, w)
        x = x.copy()
        x[..., 3:, :, :] -= rest
    return x


def normalize_camera(
    maps: np.ndarray,
    stats: CameraStats,
    intrinsics: Sequence[float] | None = None,
    image_hw: tuple[int, int] | None = None,
) -> np.ndarray:
    """Scale camera channels (..., 6*k, h, w) to about unit std with stored per-channel stats.

    Stats with reference='rest' first subtract each pixel's ray at rest, which needs the maps'
    intrinsics and image size.
    """
    mean = np.asarray(stats.mean, dtype=np.float64)[:, None, None]
    std = np.asarray(stats.std, dtype=np.float64)[:, None, None]
    x = _from_reference(maps, stats.reference, intrinsics, image_hw)
    return ((x - mean) / std).reshape(np.shape(maps)).astype(np.float32)


def camera_stats(
    maps: np.ndarray,
    min_std: float = 1e-3,
    reference: str = "none",
    intrinsics: Sequence[float] | None = None,
    image_hw: tuple[int, int] | None = None,
) -> CameraStats:
    """Per-channel mean/std of camera maps (..., 6*k, h, w); std floored so constant channels stay finite.

    With reference='rest' the direction channels are measured from each pixel's ray at rest, and
    their floor is at least 0.01 (about 0.6 degrees), so an axis the data never turns about
    (pitch in ViZDoom) does not blow up to hundreds of std when a user commands it.
    """
    x = _from_reference(maps, reference, intrinsics, image_hw)
    x = np.moveaxis(x, -3, 0).reshape(6, -1)
    floor = np.full(6, min_std)
    if reference == "rest":
        floor[3:] = max(min_std, 1e-2)
    return CameraStats(mean=x.mean(1).tolist(), std=np.maximum(x.std(1), floor).tolist(), reference=reference)
