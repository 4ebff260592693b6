"""The learnability test (issue 23) and the experiment's mechanics (train/learnability.py).

The slow test renders pure-yaw clips from the engine (training maps; held-out clips on the
validation maps), trains a tiny WorldDiT for 500 steps with the diffusion stage's objective and
pixel-space anchored recycling (`pixel4`), and asks the one-step generator to move the picture with
the camera at a gain >= 0.8, teacher-forced and rolled out 16 steps on its own outputs
(docs/training.md, "Learnability test": seeds 0, 1, 2 scored 1.00, 0.92, 0.97 rolled out).
"""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from train import learnability as L
from train.rollout import teacher_forcing_inputs
from worldmodel.camera import rotation_warp_grid
from worldmodel.config import CameraStats
from worldmodel.dit import warp_recycled

K = np.array([64.0, 76.8, 63.5, 47.5])


def yaw_pose(theta: float) -> np.ndarray:
    """Camera-to-world pose of a camera turned by theta about its y axis (OpenCV: y down)."""
    c, s = np.cos(theta), np.sin(theta)
    T = np.eye(4)
    T[:3, :3] = [[c, 0, s], [0, 1, 0], [-s, 0, c]]
    return T


def yaw_clip(yaws: list[float]) -> np.ndarray:
    """Video-frame poses (1, 1 + 4 S, 4, 4) of a clip turning by yaws[i] over step i (evenly per frame)."""
    angles = [0.0]
    for y in yaws:
        angles += [angles[-1] + y * (j + 1) / 4 for j in range(4)]
    return np.stack([yaw_pose(a) for a in angles])[None]


def texture(seed: int = 0) -> torch.Tensor:
    """A smooth random grey image (1, 1, H, W) in [-1, 1]."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, 1, 24, 32, generator=g)
    return F.interpolate(x, size=L.IMAGE_HW, mode="bicubic", align_corners=False).clamp(-1, 1)


def test_anchor_of():
    assert [L.anchor_of(i, 1) for i in range(6)] == list(range(6))
    assert [L.anchor_of(i, 4) for i in range(9)] == [0, 0, 0, 0, 4, 4, 4, 4, 8]
    assert L.parse_variant("plain") == (False, 1) and L.parse_variant("step") == (True, 1)
    assert L.parse_variant("anchor3") == (True, 3) and L.parse_variant("pixel2") == (False, 2)
    with pytest.raises(ValueError):
        L.parse_variant("anchor0")


def test_step_variant_inputs_are_the_projects_teacher_forcing():
    """anchor1 == step: recycled = the previous latent, the grid = the step's own rotation."""
    c2w = yaw_clip([0.05, -0.08, 0.0, 0.1])
    ci = L.clip_inputs(c2w, K, CameraStats())
    z = torch.randn(1, 5, 16, *L.LATENT_HW)
    rec, cam, tgt = L.teacher_inputs(z, ci, True, 1)
    ref_rec, ref_tgt = teacher_forcing_inputs(z)
    assert torch.equal(rec, ref_rec) and torch.equal(tgt, ref_tgt)
    assert cam.shape == (1, 4, 24 + 2, *L.LATENT_HW)
    for i, y in enumerate([0.05, -0.08, 0.0, 0.1]):
        R = yaw_pose(y)[:3, :3]
        want = rotation_warp_grid(R, K, L.IMAGE_HW, L.LATENT_HW)
        assert np.allclose(cam[0, i, -2:].numpy(), want, atol=1e-5)


def test_anchored_inputs_warp_the_anchor_by_the_accumulated_rotation():
    yaws = [0.05, 0.03, -0.02, 0.07, 0.04]
    c2w = yaw_clip(yaws)
    ci = L.clip_inputs(c2w, K, CameraStats())
    z = torch.randn(1, 6, 16, *L.LATENT_HW)
    rec, cam, _ = L.teacher_inputs(z, ci, True, 4)
    for i in range(5):
        a = L.anchor_of(i, 4)
        assert torch.equal(rec[:, i], z[:, a])
        R = yaw_pose(sum(yaws[a:i + 1]))[:3, :3]
        assert np.allclose(cam[0, i, -2:].numpy(), rotation_warp_grid(R, K, L.IMAGE_HW, L.LATENT_HW), atol=1e-5)
    # the warp-alone rollout with one anchor is the first latent warped by the whole rotation so far
    ro = L.warp_alone(z, ci, 16, rolled=True)
    whole = torch.from_numpy(rotation_warp_grid(yaw_pose(sum(yaws))[:3, :3], K, L.IMAGE_HW, L.LATENT_HW))
    assert torch.allclose(ci.grids[0, 0, 4], whole, atol=1e-5)
    want = warp_recycled(z[:, :1], whole[None, None])[:, 0]
    assert torch.allclose(ro[:, 5], want, atol=1e-5)


def test_zeroed_camera_has_no_motion():
    ci0 = L.clip_inputs(yaw_clip([0.1, -0.1]), K, CameraStats(), zero_camera=True)
    ident = rotation_warp_grid(np.eye(3), K, L.IMAGE_HW, L.LATENT_HW)
    assert np.allclose(ci0.grids[0, 0, 0].numpy(), ident) and np.allclose(ci0.grids[0, 1, 1].numpy(), ident)
    assert torch.equal(ci0.plucker[0, 0], ci0.plucker[0, 1])


@pytest.mark.parametrize("yaw", [0.03, -0.06, 0.1])
def test_expected_shift_matches_the_measured_shift_of_a_rotated_image(yaw):
    """The sign and size conventions agree: an image warped by a yaw's rotation grid moves by expected_shift."""
    img = texture()
    c2w = yaw_clip([yaw])
    e = L.expected_shift(c2w, K)[0, 0]
    grid = torch.from_numpy(rotation_warp_grid(yaw_pose(yaw)[:3, :3], K, L.IMAGE_HW, L.IMAGE_HW))[None]
    moved = F.grid_sample(img, grid.permute(0, 2, 3, 1), mode="bicubic", padding_mode="border", align_corners=False)
    a, b = (((x[0, 0] + 1) * 127.5).numpy() for x in (img, moved))
    m = L.image_shift(a, b)
    assert abs(e - (-K[0] * np.tan(yaw))) < 1e-6
    assert 1.0 <= m / e <= 1.25, (m, e)  # the centre's shift; the whole picture's is larger (edges move more)


def test_shift_scores():
    e = np.array([[4.0, -4.0, 0.0, 3.0]])
    assert L.shift_scores(e, e)["gain"] == pytest.approx(1.0)
    s = L.shift_scores(np.array([[4.0, 0.1, 0.3, 0.0]]), e)
    assert s["gain"] == pytest.approx(3.9 / 11) and s["frozen"] == pytest.approx(2 / 3)
    assert s["still_motion_px"] == pytest.approx(0.3)
    assert L.shift_scores(-e, e)["gain"] == pytest.approx(-1.0)



@pytest.mark.slow
def test_a_tiny_model_learns_to_move_the_picture_with_the_camera(tmp_path):
    """The bar of issue 23 on held-out clips: gain >= 0.8 teacher-forced and over 16 rolled-out steps,
    at most 1 turning step in 5 frozen; with the camera zeroed the same model must not turn
    (so a model that slides the picture whatever the command fails). About 8 CPU-minutes, 1 thread."""
    cfg = L.LearnConfig(sign_keep=0.8, variants=["pixel4"], train_steps=500, cache=str(tmp_path))
    threads = torch.get_num_threads()
    try:
        r = L.run(cfg, log=lambda *a: None, baselines=False)["rows"]["pixel4"]  # runs on 1 thread
    finally:
        torch.set_num_threads(threads)
    summary = L.summary_line(r)
    assert r["tf"]["gain"] >= 0.8 and r["rollout"]["gain"] >= 0.8, summary
    assert r["rollout"]["frozen"] <= 0.2, summary
    assert abs(r["zero_rollout"]["gain"]) < 0.2, summary
