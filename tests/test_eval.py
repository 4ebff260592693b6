"""`python -m train.eval`: teacher forcing keeps the real past, baselines are what they claim, the CLI runs end to end."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from train.eval import EvalConfig, encode_real, parse_args, rollout, shuffled, teacher_forced, warp_rollout
from worldmodel.config import model_config
from worldmodel.dit import WorldDiT
from worldmodel.vae import CausalVAE, vae_config
from worldmodel.world import World, WorldMeta, images_to_video, video_to_uint8

DOOM_K_96x128 = [64.0, 76.8, 63.5, 47.5]  # DoomCamera-v0 (256x192 render, 90 deg FOV) resized to 96x128


def tiny_world(hw=(96, 128), **dit) -> World:
    torch.manual_seed(0)
    k = DOOM_K_96x128 if hw == (96, 128) else [hw[1] / 2, 1.2 * hw[1] / 2, (hw[1] - 1) / 2, (hw[0] - 1) / 2]
    return World(WorldDiT(model_config("tiny", dim=64, depth=2, heads=4, **dit)), CausalVAE(vae_config("tiny")),
                 WorldMeta(hw, k, [-32.0] * 3 + [-0.5] * 3, [32.0] * 3 + [0.5] * 3))


def test_warp_reference_resamples_each_latent_by_the_grid_the_worlds_model_is_handed(monkeypatch):
    """The eval's "warp the last latent" row claims to be the model's own input warp alone: each step
    it must resample by exactly the grid the world's transformer gets for that step (same function,
    same bilinear mode), and a turn must move the frames (a warp that ignored the grid would repeat
    the first frame)."""
    import train.eval as ev

    world = tiny_world((32, 32), recycle_warp=True)
    rng = np.random.default_rng(0)
    first = rng.integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    actions = np.zeros((2, 3, 6))
    actions[:, :, 4] = [[0.2, 0.2, -0.1], [0.0, 0.3, 0.3]]  # yaw (rad per step)
    seen, handed = [], []
    warp = ev.warp_recycled
    monkeypatch.setattr(ev, "warp_recycled", lambda z, grid, *a: seen.append((grid, a)) or warp(z, grid, *a))
    ref = warp_rollout(world, first, actions)
    model_warp = world.dit._warp
    world.dit._warp = lambda noisy, rec, cam: handed.append(cam[:, :, -2:]) or model_warp(noisy, rec, cam)
    rollout(world, first, actions, [0, 1])
    assert len(seen) == len(handed) == 3
    for (grid, extra), model_grid in zip(seen, handed):
        assert extra == ()  # the model's mode: warp_recycled's default
        torch.testing.assert_close(grid, model_grid.to(grid.dtype))
    assert ref.shape == (2, 1 + 3 * 4, 32, 32, 3)
    assert np.abs(ref[:, -1].astype(int) - ref[:, 1].astype(int)).mean() > 1.0


def test_teacher_forcing_reconstruction_equals_full_decode_of_real_latents():
    """The teacher-forced pass decodes each prediction, then restores the decoder cache and advances it
    with the real latent: its reconstructions must equal a full decode of the real latents (a cache not
    restored would leak the predictions into the real past). The streamed real latents must equal a
    full encode."""
    world = tiny_world((32, 32))
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (1, 1 + 4 * 2, 32, 32, 3), dtype=np.uint8)
    z = encode_real(world, frames)  # (1, 3, C, 4, 4)
    video = torch.cat([images_to_video(frames[:, i], world.device, torch.float32) for i in range(frames.shape[1])], 1)
    with torch.no_grad():
        torch.testing.assert_close(z, world.vae.encode(video), atol=1e-4, rtol=1e-4)
        full = video_to_uint8(world.vae.decode(z, light=world.light_decoder))[:, 1:]  # (1, 8, H, W, 3)
    actions = rng.normal(0, 0.1, (1, 2, 6))
    pred, recon = teacher_forced(world, frames, z, actions, [0])
    assert pred.shape == recon.shape == (1, 2, 4, 32, 32, 3)
    assert np.abs(recon.reshape(full.shape).astype(int) - full).max() <= 1
    assert not np.array_equal(pred, recon)  # predictions come from the generator, not the real latents


def test_decoder_snapshot_restore_forgets_a_what_if_decode():
    """The eval decodes each teacher-forced prediction from the real past, then restores the decoder:
    after `restore` the next frames must be exactly those of a decoder that never saw the prediction.
    Restoring some streams from a lone decoder sets only their rows (how streams restart one by one)."""
    world = tiny_world((32, 32))
    z = torch.randn(2, 3, 16, 4, 4, generator=torch.Generator().manual_seed(1))
    plain, probe = (world.vae.stream_decoder(2, light=world.light_decoder) for _ in range(2))
    for d in (plain, probe):
        d.step(z[:, 0])
    state = probe.snapshot()
    probe.step(torch.randn(2, 16, 4, 4))  # the what-if latent
    probe.restore(state)
    assert probe.t == plain.t == 1
    torch.testing.assert_close(probe.step(z[:, 1]), plain.step(z[:, 1]), rtol=0, atol=0)
    solo = world.vae.stream_decoder(1, light=world.light_decoder)
    solo.step(z[1:, 0])
    solo.step(z[1:, 1])
    probe.restore(solo.snapshot(), streams=[0])  # stream 0 now holds stream 1's past
    out = probe.step(z[[1, 1], 2])  # both streams now have stream 1's past and input
    torch.testing.assert_close(out[0], solo.step(z[1:, 2])[0], rtol=0, atol=1e-5)  # batch sizes round apart
    torch.testing.assert_close(out[1], plain.step(z[:, 2])[1], rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="decoder state buffer has shape"):
        probe.restore(solo.snapshot())


def test_rollouts_set_their_own_memory_and_leave_the_world_alone():
    """The eval's "network without its memory" row passes the setting to its streams: the rollout equals
    that of a world saved without a memory, and the world keeps its own setting afterwards."""
    from worldmodel.reproject import ReprojectionConfig

    world, bare = tiny_world((32, 32)), tiny_world((32, 32))
    world.meta.reprojection = ReprojectionConfig(min_turn=0.0)
    first = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    actions = np.zeros((2, 3, 6))
    actions[:, :, 4] = 0.2
    off, _ = rollout(world, first, actions, [0, 1], reprojection=None)
    np.testing.assert_array_equal(off, rollout(bare, first, actions, [0, 1])[0])
    assert world.meta.reprojection == ReprojectionConfig(min_turn=0.0)
    assert not np.array_equal(rollout(world, first, actions, [0, 1])[0], off), "the world's memory is used by default"


def test_shuffled_actions_are_a_permutation_across_steps_and_trajectories():
    """The shuffled-camera baseline keeps the same set of motions but breaks their order (and pairing)."""
    a = np.arange(2 * 5 * 6, dtype=float).reshape(2, 5, 6)
    s = shuffled(a, seed=0)
    assert s.shape == a.shape and not np.array_equal(s, a)
    assert sorted(map(tuple, s.reshape(-1, 6))) == sorted(map(tuple, a.reshape(-1, 6)))
    np.testing.assert_array_equal(s, shuffled(a, seed=0))


def test_quick_flag_is_the_ci_setting_and_flags_override_it():
    """--quick shrinks every size; an explicit flag wins; sizes below 1 are refused."""
    q = parse_args(["--quick", "--horizon", "8"])
    assert (q.trajectories, q.horizon, q.long_steps) == (2, 8, 64)
    full = parse_args([])
    assert (full.trajectories, full.horizon, full.long_steps, full.test_world) == (8, 64, 360, False)
    with pytest.raises(SystemExit):
        parse_args(["--horizon", "0"])
    with pytest.raises(SystemExit):
        parse_args(["--threads", "0"])
    # Outputs land in a git-ignored folder by default; '' turns the report off; threads follow worldmodel.threads.
    assert full.json.startswith("outputs/") and full.report.startswith("outputs/") and full.threads is None
    assert parse_args(["--report", ""]).report is None and parse_args(["--threads", "2"]).threads == 2
    # What a person notices runs in full by default, in its CI setting with --quick, and can be turned off.
    assert (full.response, q.response, parse_args(["--quick", "--response", "off"]).response) == ("full", "quick", "off")
    with pytest.raises(ValueError, match="response"):
        EvalConfig(response="fast")


@pytest.mark.slow
def test_quick_eval_end_to_end_on_a_random_world(tmp_path):
    """(15 s idle, 60 s on the loaded CI box.) `python -m train.eval --quick` on a random-weight world writes the JSON with every metric and the report files."""
    pytest.importorskip("vizdoom")
    path = tmp_path / "world.safetensors"
    tiny_world().save(path)
    out, report = tmp_path / "eval.json", tmp_path / "report"
    cmd = [sys.executable, "-m", "train.eval", "--checkpoint", str(path), "--json", str(out),
           "--report", str(report), "--quick", "--threads", "1", "--horizon", "4", "--long-steps", "16"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(out.read_text())
    assert set(r["methods"]) == {"model", "repeat_last_frame", "camera_zeroed", "camera_shuffled"}
    for m in r["methods"].values():
        assert set(m["autoregressive"]["psnr"]) == {"1", "4"} and len(m["autoregressive"]["psnr_per_step"]) == 4
        assert {"rot_err_deg", "success_share", "trans_dir_err_deg", "rot_err_deg_per_step"} <= set(m["camera"])
        assert m["teacher_forced"]["psnr"] is not None and m["teacher_forced"]["ssim"] is not None
    # The repeat baseline's frames never move: every estimate is 'static' (identity), never a success at turning.
    assert set(r["methods"]["repeat_last_frame"]["camera"]["kinds"]) == {"static"}
    # The estimator also scores the VAE's decoding of the real latents (what a perfect transformer would get).
    assert len(r["vae_reconstruction"]["camera"]["rot_err_deg_per_step"]) == 4
    assert r["data"]["wad"] == "freedoom2" and all(t["map"] >= "MAP25" for t in r["data"]["trajectories"])
    assert r["long_run"]["frames"] == 64 and isinstance(r["long_run"]["collapsed"], bool)
    for f in ("index.html", "psnr_vs_step.png", "rot_err_per_step.png", "long_run_stats.png",
              "strip_autoregressive.png", "strip_long_run.png", "rollout.gif"):
        assert (report / f).stat().st_size > 0, f
    assert "psnr_vs_step.png" in (report / "index.html").read_text()
    # The response section measures the engine (ideal scores) and the world on the same starts.
    rows = r["response"]["rows"]
    assert {"engine", "world"} <= set(rows) and abs(rows["engine"]["turn"]["0.06"]["ratio"] - 1.0) < 0.15
