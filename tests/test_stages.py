"""The training stages: differentiable cache, teacher vs student forcing, discriminator, resume, NaN guard."""

import dataclasses

import numpy as np
import pytest
import torch

from helpers import tiny_dit
from train.common import NonFiniteLossError, load_training_state
from train.rollout import SegmentRollout, disc_logits, student_rollout, teacher_forcing_inputs
from train.shards import ShardInfo, write_manifest, write_shard
from train.stages import build_stage
from train.stages.config import CurriculumPhase, DataConf, ModelConf, StageConf, TrainConfig
from train.stages.diffusion import flow_matching_step
from worldmodel.checkpoint import save_world_model
from worldmodel.config import model_config
from worldmodel.dit import WorldDiT
from worldmodel.kv_cache import GradKVCache
from worldmodel.vae import CausalVAE, save_vae, vae_config

C, HW = 16, (4, 4)
SMALL = dict(dim=64, depth=2, heads=4)


def small_model(window: int = 2, logit_head: bool = False) -> WorldDiT:
    """The seeded tiny model of these tests (SMALL's size)."""
    return tiny_dit(window=window, logit_head=logit_head, **SMALL)


def clip(B=2, F=7):
    g = torch.Generator().manual_seed(1)
    return (torch.randn(B, F + 1, C, *HW, generator=g), torch.randn(B, F, 24, *HW, generator=g),
            torch.randn(B, F, C, *HW, generator=g))


def spy_recycled(model, monkeypatch):
    """Record the recycled input of every transformer call."""
    seen, embed = [], model._embed

    def spy(noisy, recycled, camera):
        seen.append(recycled.detach().clone())
        return embed(noisy, recycled, camera)

    monkeypatch.setattr(model, "_embed", spy)
    return seen


# ---- the differentiable cache --------------------------------------------------------------------


@pytest.mark.parametrize("logit_head", [False, True])
def test_grad_cache_matches_static_cache_and_parallel_forward(logit_head):
    """Frame by frame through GradKVCache == through the static KVCache == the parallel block-causal forward,
    past the window (F = 7 > window + 2, so the re-rotated sink is exercised)."""
    m = small_model(window=2, logit_head=logit_head)
    z, cam, noise = clip()
    t = torch.tensor([0.3, 0.9])
    ref = m(noise, z[:, :-1], cam, t)
    static, grad = m.new_cache(2, HW), GradKVCache(2, 2, 2)
    with torch.no_grad():
        a = torch.stack([m.forward_step(noise[:, i], z[:, i], cam[:, i], t, static) for i in range(7)], 1)
    b = torch.stack([m.forward_step(noise[:, i], z[:, i], cam[:, i], t, grad) for i in range(7)], 1)
    torch.testing.assert_close(a, ref, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(b, ref, rtol=1e-4, atol=1e-5)
    assert b.requires_grad


def test_grad_cache_uncommitted_step_is_not_kept():
    """advance=False evaluates a frame without adding it to the cache (multi-step / teacher-forced D)."""
    m = small_model()
    z, cam, noise = clip(F=3)
    cache, ref = GradKVCache(2, 2, 2), GradKVCache(2, 2, 2)
    m.forward_step(noise[:, 0], z[:, 0], cam[:, 0], 1.0, cache)
    m.forward_step(noise[:, 0], z[:, 0], cam[:, 0], 1.0, ref)
    m.forward_step(torch.randn_like(noise[:, 1]), z[:, 1], cam[:, 1], 1.0, cache, advance=False)
    torch.testing.assert_close(m.forward_step(noise[:, 1], z[:, 1], cam[:, 1], 1.0, cache),
                               m.forward_step(noise[:, 1], z[:, 1], cam[:, 1], 1.0, ref))
    assert cache.frames.tolist() == [2, 2]


def test_gradients_flow_through_the_cache_and_stop_at_segment_boundaries():
    """Recycled inputs are detached, so frame 0's noise reaches the last frame only through the KV cache;
    after `detach()` (next long-video segment) it does not reach it at all, though the values still depend on it."""
    m = small_model(window=8)
    z, cam, noise = clip(F=4)
    noise = noise.requires_grad_()
    out = student_rollout(m, z[:, 0], cam, noise)
    (g,) = torch.autograd.grad(out[:, -1].sum(), noise)
    assert g[:, 0].abs().sum() > 0

    roll = SegmentRollout(m, z[:, 0])
    first = roll.run(cam[:, :2], noise[:, :2])
    roll.detach()
    second = roll.run(cam[:, 2:], noise[:, 2:])
    (g,) = torch.autograd.grad(second.sum(), noise)
    assert g[:, :2].abs().sum() == 0 and g[:, 2:].abs().sum() > 0
    torch.testing.assert_close(torch.cat([first, second], 1), out)  # same rollout, only the graph is cut


# ---- what is recycled ----------------------------------------------------------------------------


def test_student_forcing_feeds_back_the_generators_own_outputs(monkeypatch):
    """Frame 0 gets the first latent, frame i > 0 gets the generator's output i-1 (never the ground truth)."""
    m = small_model()
    z, cam, noise = clip(F=4)
    log = spy_recycled(m, monkeypatch)
    out = student_rollout(m, z[:, 0], cam, noise)
    seen = [s[:, 0] for s in log]  # forward_step embeds one frame as (B, 1, C, h, w)
    assert len(seen) == 4
    torch.testing.assert_close(seen[0], z[:, 0])
    for i in range(1, 4):
        torch.testing.assert_close(seen[i], out[:, i - 1].detach())
        assert not torch.allclose(seen[i], z[:, i])
    log.clear()
    student_rollout(m, z[:, 0], cam, noise, recycle=False)  # supplementary G ablation
    assert torch.equal(log[0][:, 0], z[:, 0]) and all(s.abs().sum() == 0 for s in log[1:])


def test_teacher_forcing_feeds_ground_truth_shifted_by_one(monkeypatch):
    """Diffusion/distillation: recycled = x_0..x_{F-1}, targets = x_1..x_F; ablation zeroes all but frame 0."""
    m = small_model()
    z, cam, noise = clip(F=4)
    seen = spy_recycled(m, monkeypatch)
    flow_matching_step(m, z, cam, noise, torch.rand(2))
    torch.testing.assert_close(seen[0], z[:, :-1])
    rec, tgt = teacher_forcing_inputs(z, recycle=False)
    assert torch.equal(rec[:, 0], z[:, 0]) and rec[:, 1:].abs().sum() == 0 and torch.equal(tgt, z[:, 1:])


# ---- discriminator -------------------------------------------------------------------------------


def test_discriminator_emits_one_causal_logit_per_frame():
    """(B, F) logits; changing frame j changes logits >= j only (multi-duration discrimination)."""
    d = small_model(window=8, logit_head=True)
    z, cam, noise = clip(F=5)
    t = torch.rand(2)
    a = disc_logits(d, z, cam, t, noise)
    assert a.shape == (2, 5)
    z2 = z.clone()
    z2[:, 3] += 1.0  # latent frame 3 = model frame 2's target and frame 3's recycled input
    b = disc_logits(d, z2, cam, t, noise)
    torch.testing.assert_close(a[:, :2], b[:, :2])
    assert (a[:, 2:] - b[:, 2:]).abs().min() > 0


# ---- the stage loop: exact resume, NaN guard -----------------------------------------------------


def _walk(rng, n):
    c2w = np.tile(np.eye(4), (n, 1, 1))
    yaw, p = 0.0, np.zeros(3)
    for t in range(n):
        yaw += rng.normal(0, 0.02)
        c, s = np.cos(yaw), np.sin(yaw)
        p = p + 4.0 * np.array([c, s, 0.0])
        c2w[t, :3, 0], c2w[t, :3, 1], c2w[t, :3, 2], c2w[t, :3, 3] = (s, -c, 0), (0, 0, -1), (c, s, 0), p
    return c2w


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory):
    """Shards of smooth frames and walks (2 train, 1 val) plus a random-weight tiny VAE."""
    return make_tiny_root(tmp_path_factory.mktemp("data"))


def make_tiny_root(root):
    """Write the `tiny_root` data (also used by the torchrun stage tests) under `root`."""
    rng, rows = np.random.default_rng(0), []
    for split, n in (("train", 2), ("val", 1)):
        for i in range(n):
            path = f"{split}/MAP{i + 1:02d}_{i:05d}.npz"
            frames = np.clip(rng.normal(128, 40, (1, 48, 64, 3)) + np.arange(33)[:, None, None, None] * 3, 0, 255)
            write_shard(root / path, frames.astype(np.uint8), _walk(rng, 33), np.array([32.0, 38.4, 31.5, 23.5]),
                        "freedoom2", f"MAP{i + 1:02d}", i)
            rows.append(ShardInfo(path, split, 33, 48, 64, "freedoom2", f"MAP{i + 1:02d}", i, (root / path).stat().st_size))
    write_manifest(root, rows)
    torch.manual_seed(0)
    save_vae(root / "vae.safetensors", CausalVAE(vae_config("tiny")))
    return root


def stage_config(root, tmp, name="diffusion", steps=4, **kw) -> TrainConfig:
    data = DataConf(root=str(root), vae=str(root / "vae.safetensors"), window_stride=1,
                    curriculum=[CurriculumPhase(0, [2], [[48, 64]], 2), CurriculumPhase(3, [3], [[48, 64]], 2)])
    return TrainConfig(stage=StageConf(name=name, steps=steps, lr=1e-3, **kw), data=data,
                       model=ModelConf("tiny", {**SMALL, "window": 4}), run_dir=str(tmp / "run"),
                       out=str(tmp / "out.safetensors"), ckpt_every=2, log_every=1, sample_frames=2, sample_steps=2,
                       progress_bar=False, threads=1)


def weights(stage):
    return {f"{n}.{k}": v.clone() for n, m in stage.models.items() for k, v in m.state_dict().items()}


def adversarial_inits(tmp, write: bool = True):
    """Stage kwargs starting generator and discriminator from tmp/init.safetensors (written unless write=False)."""
    if write:
        m = WorldDiT(model_config("tiny", window=4, **SMALL))
        save_world_model(tmp / "init.safetensors", m, m.cfg)
    adv = StageConf().adversarial
    return dict(init=str(tmp / "init.safetensors"),
                adversarial=dataclasses.replace(adv, disc_init=str(tmp / "init.safetensors"), extensions=1, overlap=1))


@pytest.mark.parametrize("name", ["diffusion", "adversarial"])
def test_n_steps_equal_half_then_resume_half(tiny_root, tmp_path, name):
    """Training 4 steps == 2 steps, a fresh process object resuming from the state file, 2 more
    (weights bit-identical; crosses a curriculum phase change and, for adversarial, long-video extension)."""
    kw = adversarial_inits(tmp_path) if name == "adversarial" else {}
    full = build_stage(stage_config(tiny_root, tmp_path / "a", name, **kw))
    full.run()
    half = build_stage(dataclasses.replace(stage_config(tiny_root, tmp_path / "b", name, **kw), stop_after=2))
    assert half.run()["steps"] == 2
    del half  # "killed": only the state file survives
    resumed = build_stage(dataclasses.replace(stage_config(tiny_root, tmp_path / "b", name, **kw), resume=True))
    assert resumed.run()["steps"] == 4
    a, b = weights(full), weights(resumed)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs after resume"
    assert (tmp_path / "b" / "run" / "samples" / "final.mp4").stat().st_size > 0


def test_sample_frames_zero_writes_no_sample_video(tiny_root, tmp_path):
    """sample_frames=0 turns the mp4 samples off (machines whose imageio has no ffmpeg), not the training."""
    summary = build_stage(dataclasses.replace(stage_config(tiny_root, tmp_path, steps=2), sample_frames=0)).run()
    assert summary["steps"] == 2 and "sample" not in summary
    assert (tmp_path / "out.safetensors").is_file()
    assert not (tmp_path / "run" / "samples").exists()


def test_nan_guard_stops_and_keeps_the_last_good_checkpoint(tiny_root, tmp_path):
    """A non-finite loss raises a clear error; the state file still holds the last good, finite weights."""
    st = build_stage(dataclasses.replace(stage_config(tiny_root, tmp_path, steps=2), sample_frames=0))
    st.run()
    good = weights(st)
    st = build_stage(dataclasses.replace(stage_config(tiny_root, tmp_path, steps=4), sample_frames=0, resume=True))
    clean = st.stream.next
    st.stream.next = lambda step: {**clean(step), "latents": clean(step)["latents"] * float("nan")}
    with pytest.raises(NonFiniteLossError, match="step 2.*last good checkpoint"):
        st.run()
    fresh = build_stage(stage_config(tiny_root, tmp_path / "x", steps=2))
    step, _ = load_training_state(tmp_path / "run" / "state.safetensors", fresh.models)
    assert step == 2
    for k, v in weights(fresh).items():
        assert torch.equal(v, good[k])


def test_action_bounds_of_unmoved_components_get_a_sliver_of_range():
    """Doom never pitches or rolls: those bounds must still satisfy low < high, and stay tiny."""
    from train.stages.adversarial import MIN_HALF_WIDTH, widen_bounds

    low, high = widen_bounds([-9.0, 0.0, -0.5], [9.0, 0.0, 26.0])
    assert low == [-9.0, -MIN_HALF_WIDTH, -0.5] and high == [9.0, MIN_HALF_WIDTH, 26.0]


def test_recycle_warp_models_train_through_diffusion_and_distillation(tiny_root, tmp_path):
    """The model flag reaches the data: batches carry the warp grid of their own step actions,
    and a warp model trains, exports and initialises the next stage."""
    from scipy.spatial.transform import Rotation

    from worldmodel.camera import rotation_warp_grid
    from worldmodel.checkpoint import load_meta

    def cfg(name, tmp, **kw):
        c = stage_config(tiny_root, tmp, name, steps=2, **kw)
        return dataclasses.replace(c, model=ModelConf("tiny", {**SMALL, "window": 4, "recycle_warp": True}))

    diff = build_stage(cfg("diffusion", tmp_path / "d"))
    batch = diff.stream.next(0)
    B, k = batch["actions"].shape[:2]
    assert batch["camera"].shape[2] == 4 * 6 + 2
    a, K = batch["actions"][1, -1].double().numpy(), batch["intrinsics"][1].numpy()
    want = rotation_warp_grid(Rotation.from_rotvec(a[3:]).as_matrix(), K, (48, 64), (6, 8))
    np.testing.assert_allclose(batch["camera"][1, -1, -2:].numpy(), want, atol=1e-6)
    assert diff.run()["steps"] == 2
    assert load_meta(tmp_path / "d" / "out.safetensors")["dit_config"]["recycle_warp"] is True
    dist = build_stage(cfg("distill", tmp_path / "s", init=str(tmp_path / "d" / "out.safetensors")))
    assert dist.run()["steps"] == 2


@pytest.mark.parametrize("key", ["stage.adversarial.regression_weight", "stage.reset_output"])
def test_a_retired_stage_option_is_refused_not_silently_ignored(key):
    """Hydra refuses `key=value` for a field the schema lacks, but `+key=value` adds it and
    OmegaConf.to_object keeps it as an attribute nothing reads: `python -m train` must refuse it."""
    from omegaconf import OmegaConf

    from train.common import ConfigError
    from train.stages.config import TrainConfig, check_declared

    check_declared(OmegaConf.to_object(OmegaConf.structured(TrainConfig)))  # the schema itself passes
    conf = OmegaConf.structured(TrainConfig)
    OmegaConf.update(conf, key, 1.0, force_add=True)
    with pytest.raises(ConfigError, match=rf"unknown config key\(s\) \['{key}'\]"):
        check_declared(OmegaConf.to_object(conf))


def test_a_run_saved_with_a_retired_option_refuses_to_resume_and_one_at_the_remaining_value_resumes():
    """A training state stores its config: resuming a run that trained with a retired option would
    silently train on without it (the key is no longer compared), so it must be refused by name;
    states of ordinary runs, which store the retired keys at their old defaults, still resume."""
    from train.stages.config import retired_settings

    old = {"stage": {"reset_output": False, "adversarial": {"regression_weight": 0.0}},
           "model": {"size": "tiny", "overrides": {"recycle_warp": True, "warp_mode": "bilinear"}}}
    assert retired_settings(old) == []
    old["stage"]["adversarial"]["regression_weight"] = 1.0
    old["model"]["overrides"]["warp_residual"] = True
    assert retired_settings(old) == ["stage.adversarial.regression_weight=1.0", "model.overrides.warp_residual=True"]
