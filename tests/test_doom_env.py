"""DoomCamera-v0: the Gymnasium contract, realised motion, measured intrinsics, action validation."""

import cv2
import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import envs  # noqa: F401  (registers worldmodel/DoomCamera-v0)
from envs.doom import DoomCameraEnv
from worldmodel.camera import relative_pose

pytest.importorskip("vizdoom")


def _yaw_of(rel: np.ndarray) -> float:
    """Yaw (degrees, + = turn right) of a relative pose; OpenCV camera, rotation about +y."""
    return float(np.rad2deg(np.arctan2(rel[0, 2], rel[2, 2])))


@pytest.fixture(scope="module")
def env():
    e = DoomCameraEnv()  # MAP01 spawn faces an open corridor east
    yield e
    e.close()


def test_check_env_passes():
    """Guards the Gymnasium contract: spaces, seeding determinism, reset/step signatures, render."""
    e = gym.make("worldmodel/DoomCamera-v0", frame_size=(48, 64), render_mode="rgb_array").unwrapped
    try:
        check_env(e, skip_render_check=False)
    finally:
        e.close()


def test_yaw_command_realises_10_degrees(env):
    """A commanded +10 degree yaw (ry > 0 = turn right) must be realised to within 1 degree."""
    env.reset(seed=0)
    _, _, _, _, info = env.step(np.array([0, 0, 0, 0, np.deg2rad(10.0), 0], np.float32))
    prev = env._pose  # noqa: SLF001
    first = info["c2w"]
    _, _, _, _, info = env.step(np.array([0, 0, 0, 0, np.deg2rad(10.0), 0], np.float32))
    assert abs(_yaw_of(relative_pose(prev, info["c2w"][-1])) - 10.0) < 1.0
    assert abs(np.rad2deg(info["realised_action"][4]) - 10.0) < 1.0
    # Interpolated over the step: each of the 4 frames turns about 2.5 degrees.
    per_frame = [_yaw_of(relative_pose(a, b)) for a, b in zip(first[-1:].tolist() + info["c2w"][:-1].tolist(), info["c2w"])]
    np.testing.assert_allclose(per_frame, 2.5, atol=0.3)


def test_forward_move_realises_camera_z_translation(env):
    """Forward motion must show up as +z translation in the camera (momentum lag bounded)."""
    env.reset(seed=0)
    total = np.zeros(3)
    for _ in range(4):
        _, _, _, _, info = env.step(np.array([0, 0, 12.0, 0, 0, 0], np.float32))
        r = info["realised_action"]
        total += r[:3]
        assert abs(r[0]) < 0.5 and abs(r[1]) < 0.5 and abs(r[3:]).max() < 1e-3
    assert 44.0 < total[2] <= 48.5, total  # 4 x 12 commanded; the first step lags by the thrust cap


def test_collision_is_reported_honestly(env):
    """Walking into a wall: the realised pose stops at the wall instead of echoing the command."""
    env.reset(seed=0)
    for _ in range(60):
        _, _, _, _, info = env.step(np.array([0, 0, 32.0, 0, 0, 0], np.float32))
    assert info["realised_action"][2] < 1.0  # blocked: commanded 32


def test_unrealisable_components_dropped_and_reported(env):
    """ty, rx (pitch), rz (roll) cannot be realised: reported in info, camera stays level."""
    env.reset(seed=0)
    a = np.array([0, 3.0, 0, 0.1, 0, 0.2], np.float32)
    _, _, _, _, info = env.step(a)
    np.testing.assert_allclose(info["dropped_action"], [0, 3.0, 0, 0.1, 0, 0.2], atol=1e-6)
    np.testing.assert_allclose(info["c2w"][:, :3, 1], [[0, 0, -1]] * 4, atol=1e-9)  # camera y = world down
    assert np.abs(info["realised_action"]).max() < 0.5


def test_intrinsics_measured_by_yaw_shift():
    """Warping the frame by the predicted rotation homography K R K^-1 must match the engine's render
    best at the reported fx; this pins fx (and the 90 degree FOV) by measurement."""
    e = DoomCameraEnv()  # render 256x192, no resize
    try:
        obs0, info0 = e.reset(seed=0)
        _, _, _, _, info1 = e.step(np.array([0, 0, 0, 0, np.deg2rad(10.0), 0], np.float32))
        frames, *_ = e.step(np.zeros(6, np.float32))  # settle: frames of a still camera
        f0, f1 = obs0[0].astype(np.float32), frames[-1].astype(np.float32)
        rel = relative_pose(info0["c2w"][0], info1["c2w"][-1])
        fx, fy, cx, cy = info0["intrinsics"]
        errs = {}
        for s in (0.9, 0.95, 1.0, 1.05, 1.1):
            K = np.array([[fx * s, 0, cx], [0, fy * s, cy], [0, 0, 1]])
            H = K @ rel[:3, :3] @ np.linalg.inv(K)  # new pixel -> old pixel
            warped = cv2.warpPerspective(f0, H, (f0.shape[1], f0.shape[0]), flags=cv2.WARP_INVERSE_MAP | cv2.INTER_LINEAR)
            valid = cv2.warpPerspective(np.ones_like(f0[..., 0]), H, (f0.shape[1], f0.shape[0]),
                                        flags=cv2.WARP_INVERSE_MAP | cv2.INTER_NEAREST) > 0
            errs[s] = float(np.abs(warped - f1)[valid].mean())
        assert min(errs, key=errs.get) == 1.0, errs
        # The centre column moves by fx * tan(10 deg) = 22.6 px at 256 wide.
        assert abs(fx * np.tan(np.deg2rad(10.0)) - 22.57) < 0.1
    finally:
        e.close()


@pytest.mark.parametrize(
    "bad, words",
    [
        (np.zeros(5, np.float32), ["shape (5,)", "(6,)", "tx, ty, tz"]),
        (np.zeros((2, 6), np.float32), ["shape (2, 6)"]),
        (np.array([0, 0, np.nan, 0, 0, 0]), ["NaN"]),
        (np.array([0, 0, np.inf, 0, 0, 0]), ["inf"]),
        (np.array(["a"] * 6), ["dtype"]),
    ],
)
def test_bad_action_raises_and_env_stays_usable(env, bad, words):
    """A malformed action is a ValueError naming the problem and layout; the next good step works."""
    env.reset(seed=0)
    with pytest.raises(ValueError) as ei:
        env.step(bad)
    for w in words:
        assert w in str(ei.value)
    obs, _, _, _, info = env.step(np.array([0, 0, 4.0, 0, 0, 0], np.float32))
    assert obs.shape == env.observation_space.shape and info["realised_action"][2] > 0


def test_reset_seed_is_deterministic_with_random_start():
    """Same seed, same random start pose and first frame (collection and replay rely on it)."""
    e = DoomCameraEnv(frame_size=(48, 64), start="random", map_name="MAP03")
    try:
        o1, i1 = e.reset(seed=5)
        o2, i2 = e.reset(seed=5)
        o3, i3 = e.reset(seed=6)
        np.testing.assert_array_equal(o1, o2)
        np.testing.assert_allclose(i1["c2w"], i2["c2w"])
        assert not np.allclose(i1["c2w"], i3["c2w"])
    finally:
        e.close()


def test_close_then_reset_restarts_engine(env):
    """close() stops the engine; a later reset starts a fresh one."""
    env.close()
    obs, _ = env.reset(seed=0)
    assert obs.shape == env.observation_space.shape
