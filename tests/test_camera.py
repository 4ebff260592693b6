"""Camera math: SE(3) helpers, actions, interpolation and relative Plücker maps."""

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from worldmodel import camera as cam
from worldmodel.config import CameraStats

K = (40.0, 40.0, 31.5, 23.5)  # fx, fy, cx, cy of a 48x64 frame
IMG, GRID = (48, 64), (6, 8)


def random_pose(rng: np.random.Generator) -> np.ndarray:
    T = np.eye(4)
    T[:3, :3] = Rotation.random(random_state=rng.integers(1 << 31)).as_matrix()
    T[:3, 3] = rng.normal(size=3) * 5
    return T


def test_action_pose_round_trip():
    rng = np.random.default_rng(0)
    a = np.concatenate([rng.normal(size=(20, 3)), rng.uniform(-1, 1, size=(20, 3))], axis=1)
    np.testing.assert_allclose(cam.pose_to_action(cam.action_to_pose(a)), a, atol=1e-12)


def test_invert_and_relative_pose():
    rng = np.random.default_rng(1)
    A, B = random_pose(rng), random_pose(rng)
    np.testing.assert_allclose(cam.compose(A, cam.invert(A)), np.eye(4), atol=1e-12)
    np.testing.assert_allclose(A @ cam.relative_pose(A, B), B, atol=1e-12)


def test_interpolation_ends_at_the_action_and_splits_it_evenly():
    a = np.array([0.4, 0.0, 2.0, 0.0, 0.8, 0.0])
    motions = cam.step_frame_motions(a, 4)
    np.testing.assert_allclose(np.linalg.multi_dot(list(motions)), cam.action_to_pose(a), atol=1e-12)
    # rotation by Slerp: a constant yaw rate, a quarter of the yaw per frame
    for m in motions:
        np.testing.assert_allclose(cam.pose_to_action(m)[3:], [0.0, 0.2, 0.0], atol=1e-12)
    # translation linear in the step's start camera
    rel = cam.interpolate_action(a, 4)
    np.testing.assert_allclose(rel[:, :3, 3], np.outer([0.25, 0.5, 0.75, 1.0], a[:3]), atol=1e-12)


def test_poses_to_actions_inverts_integration():
    rng = np.random.default_rng(2)
    actions = np.concatenate([rng.normal(size=(5, 3)), rng.uniform(-0.3, 0.3, size=(5, 3))], axis=1)
    poses = [random_pose(rng)]
    for a in actions:
        start = poses[-1]
        poses += [start @ p for p in cam.interpolate_action(a, 4)]
    np.testing.assert_allclose(cam.poses_to_actions(np.stack(poses), 4), actions, atol=1e-9)


def test_identity_motion_gives_constant_known_map():
    maps = cam.action_camera_maps(np.zeros(6), K, IMG, GRID, 4)  # (24, 6, 8)
    assert maps.shape == (24, *GRID)
    np.testing.assert_allclose(maps[0:3], 0.0)  # origin stays at the previous camera
    d = maps[3:6]
    np.testing.assert_allclose(np.linalg.norm(d, axis=0), 1.0, atol=1e-6)
    # centre-ish cell (row 2, col 3) covers pixels 24..31 x 32..39 -> centre (27.5, 35.5)
    expect = np.array([(27.5 - 31.5) / 40, (19.5 - 23.5) / 40, 1.0])
    np.testing.assert_allclose(d[:, 2, 3], expect / np.linalg.norm(expect), atol=1e-6)
    for f in range(1, 4):  # every video frame of the step is the same identity map
        np.testing.assert_allclose(maps[6 * f : 6 * f + 6], maps[0:6])


def test_plucker_maps_invariant_to_moving_the_whole_trajectory():
    rng = np.random.default_rng(3)
    traj = [random_pose(rng)]
    for _ in range(8):
        traj.append(traj[-1] @ cam.action_to_pose(np.r_[rng.normal(size=3), rng.uniform(-0.2, 0.2, 3)]))
    traj = np.stack(traj)  # 9 poses = 1 + 2*4
    base = cam.pose_camera_maps(traj, K, IMG, GRID, 4)
    for _ in range(3):
        G = random_pose(rng)
        np.testing.assert_allclose(cam.pose_camera_maps(G @ traj, K, IMG, GRID, 4), base, atol=1e-5)


def test_action_maps_match_pose_maps_of_the_integrated_trajectory():
    a = np.array([0.3, -0.1, 1.0, 0.05, -0.2, 0.0])
    start = random_pose(np.random.default_rng(4))
    poses = np.concatenate([start[None], start @ cam.interpolate_action(a, 4)])
    np.testing.assert_allclose(
        cam.action_camera_maps(a, K, IMG, GRID, 4), cam.pose_camera_maps(poses, K, IMG, GRID, 4)[0], atol=1e-5
    )


@pytest.mark.parametrize("reference", ["none", "rest"])
def test_normalisation_gives_unit_std_on_the_data_it_was_measured_on(reference):
    rng = np.random.default_rng(5)
    maps = np.stack([
        cam.action_camera_maps(np.r_[rng.normal(size=3) * 3, rng.uniform(-0.3, 0.3, 3)], K, IMG, GRID, 4)
        for _ in range(32)
    ])
    stats = cam.camera_stats(maps, reference=reference, intrinsics=K, image_hw=IMG)
    z = cam.normalize_camera(maps, stats, K, IMG).reshape(32, 4, 6, -1)
    np.testing.assert_allclose(z.transpose(2, 0, 1, 3).reshape(6, -1).std(1), 1.0, atol=1e-3)
    with pytest.raises(ValueError, match="std"):
        CameraStats(mean=[0] * 6, std=[0] * 6)


@pytest.mark.parametrize("bad,match", [(np.zeros(5), "shape"), (np.array([0, 0, np.nan, 0, 0, 0]), "NaN"),
                                       (np.array([0, 0, np.inf, 0, 0, 0]), "inf")])
def test_bad_actions_are_named(bad, match):
    with pytest.raises(ValueError, match=match):
        cam.action_camera_maps(bad, K, IMG, GRID, 4)


def _yaw_maps(deg: float) -> np.ndarray:
    return cam.action_camera_maps(np.r_[0.0, 0.0, 1.0, 0.0, np.radians(deg), 0.0], K, IMG, GRID, 4)


@pytest.mark.parametrize("reference,least", [("none", 0.0), ("rest", 1.0)])
def test_rest_reference_lifts_small_turns_to_unit_scale(reference, least):
    """Turns of about a degree per frame (ViZDoom's explorer) must not drown in the field-of-view pattern."""
    rng = np.random.default_rng(0)
    data = np.stack([_yaw_maps(d) for d in rng.normal(0, 4, 64)])  # ~1 degree per video frame
    stats = cam.camera_stats(data, reference=reference, intrinsics=K, image_hw=IMG)
    left, right = (cam.normalize_camera(_yaw_maps(d), stats, K, IMG) for d in (-4.0, 4.0))
    gap = np.abs(left - right).reshape(4, 6, -1)[:, 3:].max()  # direction channels
    if reference == "none":
        assert gap < 0.5  # the raw directions leave a 4-degree turn a small fraction of one std
    else:
        assert gap > least


def test_rest_reference_needs_intrinsics_and_floors_unseen_axes():
    maps = np.stack([_yaw_maps(d) for d in np.linspace(-3, 3, 8)])
    stats = cam.camera_stats(maps, reference="rest", intrinsics=K, image_hw=IMG)
    assert stats.reference == "rest" and stats.std[4] >= 1e-2  # no pitch in the data: floored, not ~0
    with pytest.raises(ValueError, match="intrinsics"):
        cam.normalize_camera(maps, stats)
    with pytest.raises(ValueError, match="reference"):
        CameraStats(reference="moment")


# ---- the recycled latent's warp grid (DiTConfig.recycle_warp) ------------------------------------

K_WARP, HW_WARP, GRID_WARP = [64.0, 64.0, 63.5, 47.5], (96, 128), (12, 16)


def test_warp_grid_at_rest_samples_each_cell_at_its_own_centre():
    g = cam.rotation_warp_grid(np.eye(3), K_WARP, HW_WARP, GRID_WARP)
    assert g.shape == (2, 12, 16) and g.dtype == np.float32
    np.testing.assert_allclose(g[0, 0], (np.arange(16) + 0.5) / 16 * 2 - 1, atol=1e-6)
    np.testing.assert_allclose(g[1, :, 0], (np.arange(12) + 0.5) / 12 * 2 - 1, atol=1e-6)


@pytest.mark.parametrize("yaw", [-0.12, 0.05, 0.2])
def test_warp_grid_of_a_turn_looks_where_the_new_view_was_in_the_old_one(yaw):
    """Turning right (+yaw about the down axis) brings in what was right of centre: the centre
    ray samples the previous frame fx*tan(yaw) pixels to the right, on the same row."""
    R = cam.step_rotation(np.array([0, 0, 0, 0, yaw, 0.0]))
    g = cam.rotation_warp_grid(R, K_WARP, HW_WARP, (HW_WARP[0], HW_WARP[1]))  # one cell per pixel
    r, c = 47, 63  # the principal point's pixel (cx, cy) = (63.5, 47.5) lies between 63 and 64
    x_px = (g[0, r, c] + 1) / 2 * HW_WARP[1] - 0.5
    expect = 64.0 * np.tan(np.arctan((c - 63.5) / 64.0) + yaw) + 63.5
    assert abs(x_px - expect) < 1e-3, (x_px, expect)
    assert abs(g[1, r, c] - ((r + 0.5) / HW_WARP[0] * 2 - 1)) < 0.02


def test_warp_grid_of_a_half_turn_points_outside_and_steps_compose():
    R = cam.step_rotation(np.array([0, 0, 0, 0, np.pi, 0.0]))
    assert (cam.rotation_warp_grid(R, K_WARP, HW_WARP, GRID_WARP) == 2.0).all()  # everything was behind the camera
    per_frame = np.tile([0, 0, 0, 0.01, 0.03, 0.0], (4, 1))
    whole = np.linalg.multi_dot([Rotation.from_rotvec(a[3:]).as_matrix() for a in per_frame])
    np.testing.assert_allclose(cam.step_rotation(per_frame), whole, atol=1e-12)
