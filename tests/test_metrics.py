"""Evaluation metrics: PSNR/SSIM on hand-checkable inputs, relative pose from real Doom frames, collapse verdicts."""

import cv2
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from worldmodel.metrics import (
    PSNR_CAP_DB,
    angle_between_deg,
    camera_following,
    detect_collapse,
    estimate_motion,
    frame_stats,
    horizontal_shift,
    intrinsics_matrix,
    psnr,
    rotation_angle_deg,
    ssim,
    yaw_response,
)


@pytest.fixture(scope="module")
def doom():
    """A DoomCamera-v0 env at the bundled model's resolution (96x128), closed after the module."""
    pytest.importorskip("vizdoom")
    from envs.doom import DoomCameraEnv

    env = DoomCameraEnv(map_name="MAP25", frame_size=(96, 128))
    yield env
    env.close()


def test_psnr_of_a_known_error():
    """A uniform error of 5 grey levels has MSE 25: PSNR = 10 log10(255^2 / 25) = 34.15 dB; identical = cap."""
    a = np.full((2, 8, 8, 3), 100, np.uint8)
    b = a + np.uint8(5)
    np.testing.assert_allclose(psnr(a, b), [34.151] * 2, atol=1e-3)
    assert psnr(a, a).tolist() == [PSNR_CAP_DB] * 2
    with pytest.raises(ValueError, match="equal"):
        psnr(a, b[:1])


def test_ssim_is_one_for_identical_and_falls_with_noise():
    """SSIM(x, x) = 1, and more noise gives a strictly lower SSIM (guards a swapped/mis-scaled formula)."""
    rng = np.random.default_rng(0)
    x = cv2.GaussianBlur(rng.integers(0, 256, (48, 64, 3)).astype(np.uint8), (7, 7), 2)
    noisy = [np.clip(x + rng.normal(0, s, x.shape), 0, 255).astype(np.uint8) for s in (5, 20, 60)]
    assert ssim(x, x) == pytest.approx(1.0, abs=1e-9)
    vals = [float(ssim(x, n)) for n in noisy]
    assert 1.0 > vals[0] > vals[1] > vals[2] > 0.0, vals
    # A constant shift of the mean lowers only the luminance term a little.
    assert float(ssim(x, np.clip(x.astype(int) + 10, 0, 255).astype(np.uint8))) > 0.95


def _doom_frame(env, seed: int) -> tuple[np.ndarray, np.ndarray]:
    obs, info = env.reset(seed=seed, options={"start": "random"})
    return obs[-1], info["intrinsics"]


@pytest.mark.parametrize("rotvec", [(0.0, 0.15, 0.0), (0.0, -0.25, 0.0), (0.05, 0.1, 0.0)])
def test_rotation_recovered_from_a_pure_rotation_warp_of_a_doom_frame(doom, rotvec):
    """Warping a real frame by K R^T K^-1 shows what a camera rotated by R sees; the estimate must be
    within 1.5 degrees of R (guards R vs R^T, sign and intrinsics mistakes, and the pure-rotation
    degeneracy of the essential matrix)."""
    frame, K = _doom_frame(doom, seed=3)
    R = Rotation.from_rotvec(rotvec).as_matrix()
    Km = intrinsics_matrix(K)
    warped = cv2.warpPerspective(frame, Km @ R.T @ np.linalg.inv(Km), (frame.shape[1], frame.shape[0]))
    m = estimate_motion(frame, warped, K)
    assert m.ok, f"estimation failed ({m.matches} matches, {m.inliers} inliers)"
    assert rotation_angle_deg(m.R.T @ R) < 1.5, (m.kind, Rotation.from_matrix(m.R).as_rotvec(), rotvec)


def test_forward_translation_direction_from_real_doom_motion(doom):
    """Walking forward at speed past nearby walls (parallax): the estimated direction is within 30 degrees
    of the realised one in the median, and the rotation within 6 degrees (the camera does not turn).
    96x128 frames give 10-50 matches, so this is the estimator's real accuracy, not a loose bound."""
    errs = []
    for seed in (5, 6, 7, 8):  # random starts on MAP25 facing walls 50-300 units away
        doom.reset(seed=seed, options={"start": "random"})
        obs, *_ = doom.step(np.array([0, 0, 24.0, 0, 0, 0], np.float32))  # reach walking speed
        obs2, _, _, _, info = doom.step(np.array([0, 0, 24.0, 0, 0, 0], np.float32))
        m = estimate_motion(obs[-1], obs2[-1], info["intrinsics"])
        if m.ok and m.t_dir is not None:
            errs.append((angle_between_deg(m.t_dir, info["realised_action"][:3]), float(rotation_angle_deg(m.R))))
    assert len(errs) >= 3, f"the direction was estimated on only {len(errs)} of 4 forward steps"
    assert np.median([e[0] for e in errs]) < 30.0, errs
    assert np.median([e[1] for e in errs]) < 6.0, errs


def test_identical_frames_count_as_no_motion_never_as_success_at_following(doom):
    """The repeat-last-frame baseline: identical frames estimate identity, so RotErr equals the commanded
    turn and no translation direction is credited."""
    frame, K = _doom_frame(doom, seed=3)
    actions = np.array([[0, 0, 10.0, 0, 0.2, 0], [0, 0, 0, 0, -0.1, 0]])
    r = camera_following(np.stack([frame] * 3), actions, K)
    np.testing.assert_allclose(r.rot_err_deg, np.rad2deg([0.2, 0.1]), atol=1e-6)
    assert r.kinds == ["static", "static"]
    assert r.trans_ok == [False, None] and r.trans_err_deg[0] == 90.0


def _real_run(env, steps: int = 20) -> np.ndarray:
    obs, _ = env.reset(seed=5, options={"start": "random"})
    frames = [obs[-1:]]
    for i in range(steps):
        obs, *_ = env.step(np.array([0, 0, 8.0, 0, 0.2 if i % 10 < 5 else -0.2, 0], np.float32))
        frames.append(obs)
    return np.concatenate(frames)[1:]  # (steps * 4, H, W, 3)


def test_collapse_detector_flags_flat_and_frozen_and_passes_real(doom):
    """Real frames judged against themselves pass; a flat grey run and a frozen frame while the real
    camera turns are flagged as sustained collapse (guards thresholds inverted or runs miscounted)."""
    real = _real_run(doom)
    ok = detect_collapse(real, real, 4)
    assert not ok["collapsed"], ok
    flat = np.full_like(real, 40)
    bad = detect_collapse(flat, real, 4)
    assert bad["collapsed"] and bad["longest_run"]["flat"] == len(real)
    frozen = np.repeat(real[:1], len(real), axis=0)
    fz = detect_collapse(frozen, real, 4)
    assert fz["collapsed"] and fz["longest_run"]["frozen"] >= 48, fz["longest_run"]
    # A short glitch is not a collapse.
    glitch = real.copy()
    glitch[10:20] = 255
    g = detect_collapse(glitch, real, 4)
    assert not g["collapsed"] and g["longest_run"]["saturated"] == 10


def test_frame_stats_match_hand_computed_values():
    """Brightness and contrast of a half-black, half-white frame are 127.5 and 127.5; a flat frame has zero sharpness."""
    f = np.zeros((1, 8, 8, 3), np.uint8)
    f[0, :, 4:] = 255
    s = frame_stats(f)
    assert s["brightness"][0] == pytest.approx(127.5) and s["contrast"][0] == pytest.approx(127.5)
    assert frame_stats(np.full((1, 8, 8, 3), 90, np.uint8))["sharpness"][0] == 0.0


@pytest.fixture(scope="module")
def engine_turns(doom):
    """Real ViZDoom turns in place, 2 starts x 4 steps: step-end frames (2, 5, 96, 128, 3), actions (2, 4, 6), fx."""
    frames, actions = [], []
    for seed, yaws in ((11, (0.1, -0.08, 0.12, -0.1)), (12, (-0.12, 0.06, 0.1, -0.05))):
        obs, info = doom.reset(seed=seed, options={"start": "random"})
        seq = [obs[-1]]
        for y in yaws:
            obs, _, _, _, info = doom.step(np.array([0, 0, 0, 0, y, 0], np.float32))
            seq.append(obs[-1])
        frames.append(np.stack(seq))
        actions.append([[0, 0, 0, 0, y, 0] for y in yaws])
    return np.stack(frames), np.asarray(actions, float), float(info["intrinsics"][0])


def test_yaw_response_is_near_one_for_the_engine_turning_and_zero_for_a_frozen_world(engine_turns):
    """Real turns slide the picture by about fx*tan(yaw): gain near 1, no frozen step, and the shift
    follows the sign of the command; the same commands over a frozen picture give gain 0, every step
    frozen; a turn too large to compare (the explorer's about-turns, 2.9 rad) is left out."""
    frames, actions, fx = engine_turns
    real = yaw_response(frames, actions, fx)
    assert real["yaw_steps"] == 8 and 0.9 < real["yaw_gain"] < 1.15 and real["yaw_corr"] > 0.9, real
    assert real["yaw_frozen_share"] == 0.0, real
    frozen = yaw_response(np.repeat(frames[:, :1], 5, axis=1), actions, fx)
    assert frozen["yaw_gain"] == pytest.approx(0.0, abs=0.02) and frozen["yaw_frozen_share"] == 1.0, frozen
    about_turn = actions.copy()
    about_turn[0, 1, 4] = 2.9
    assert yaw_response(frames, about_turn, fx)["yaw_steps"] == 7
    with pytest.raises(ValueError, match="steps \\+ 1"):
        yaw_response(frames[:, :4], actions, fx)


def test_yaw_response_reads_a_blurred_turn_as_turning(engine_turns):
    """The engine's turn blurred by a 4 px Gaussian (generated frames are that smooth) with a faint pattern
    that stays on the screen (1 grey level of fixed noise, invisible) still reads as turning: gain >= 0.8.
    Phase correlation, the measure until 2026-12-02, weighs every frequency alike, so once blur has removed
    the content's fine detail the still pattern wins: it read this turn as 0.03 (median of step ratios)."""
    frames, actions, fx = engine_turns
    pattern = np.random.default_rng(0).normal(0.0, 1.0, frames.shape[-3:-1] + (1,))  # (H, W, 1), fixed
    blurred = np.stack([[np.clip(cv2.GaussianBlur(f, (0, 0), 4.0) + pattern, 0, 255).astype(np.uint8) for f in clip]
                        for clip in frames])
    r = yaw_response(blurred, actions, fx)
    assert r["yaw_gain"] >= 0.8 and r["yaw_frozen_share"] == 0.0, r


@pytest.mark.parametrize("dx", [-5.5, -2.0, 0.0, 1.25, 3.0, 7.75])
def test_horizontal_shift_reads_a_blurry_picture_that_moves(doom, dx):
    """A real frame shifted by dx px reads dx (within 0.2 px), sharp or blurred by a 4 px Gaussian (as
    generated frames are). Both are cropped 24 columns in from each side after blurring, so the columns
    the shift fills by repeating the edge stay out of the comparison."""
    obs, _ = doom.reset(seed=5, options={"start": "random"})
    grey = cv2.cvtColor(obs[-1], cv2.COLOR_RGB2GRAY).astype(np.float32)
    moved = cv2.warpAffine(grey, np.float32([[1, 0, dx], [0, 1, 0]]), grey.shape[::-1], flags=cv2.INTER_CUBIC,
                           borderMode=cv2.BORDER_REPLICATE)
    for sigma in (0.0, 4.0):
        a, b = ((cv2.GaussianBlur(x, (0, 0), sigma) if sigma else x)[:, 24:-24] for x in (grey, moved))
        assert horizontal_shift(a, b) == pytest.approx(dx, abs=0.2), sigma
    assert horizontal_shift(moved, grey) == pytest.approx(-dx, abs=0.2)
    with pytest.raises(ValueError, match="equal"):
        horizontal_shift(grey, grey[:, :-1])
