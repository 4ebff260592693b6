"""The causal video VAE: streaming == full, causality, shapes and errors, checkpoints, training on real frames."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from worldmodel.vae import CausalVAE, FeatureCache, VAEConfig, load_vae, save_vae, vae_config

# Small widths so the equivalence tests run in a blink; temporal_kernel=3 so each causal conv
# caches two past frames (the harder case for the streaming cache).
SMALL = dict(encoder_channels=[8, 8, 16, 16], decoder_channels=[8, 16, 16, 16],
             light_decoder_channels=[8, 8, 8, 16], temporal_kernel=3)


@pytest.fixture
def vae() -> CausalVAE:
    torch.manual_seed(0)
    v = CausalVAE(vae_config("tiny", **SMALL)).eval()
    # Non-trivial latent stats so the normalise/denormalise path is exercised too.
    v.set_latent_stats(torch.linspace(-0.5, 0.5, 16), torch.linspace(0.5, 2.0, 16))
    return v


def video(T: int, H: int = 32, W: int = 48, B: int = 2, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(B, T, 3, H, W, generator=g) * 2 - 1  # (B, T, 3, H, W)


def assert_not_saturated(x: torch.Tensor) -> None:
    # Outputs are clamped to [-1, 1]; a clamped-flat output would hide any streaming mismatch.
    assert (x.abs() < 0.999).float().mean() > 0.5


# ----------------------------------------------------------------------------- streaming == full


@pytest.mark.parametrize("light", [False, True], ids=["full", "light"])
@pytest.mark.parametrize("n_latent", [1, 2, 9])
def test_stream_decode_equals_full_decode(vae, n_latent, light):
    """Guards the streaming cache: frame-by-frame decode must give exactly the full decode's frames."""
    z = torch.randn(2, n_latent, 16, 4, 6)  # (B, n, C, h, w) normalised latents
    with torch.no_grad():
        full = vae.decode(z, light=light)  # (B, 1 + 4(n-1), 3, 32, 48)
    assert full.shape == (2, 1 + 4 * (n_latent - 1), 3, 32, 48)
    assert_not_saturated(full)
    dec = vae.stream_decoder(2, light=light)
    chunks = [dec.step(z[:, i]) for i in range(n_latent)]
    assert [c.shape[1] for c in chunks] == [1] + [4] * (n_latent - 1)
    assert (torch.cat(chunks, 1) - full).abs().max().item() <= 1e-5


def test_stream_encode_equals_full_encode(vae):
    """Guards the streaming encoder: first frame alone, then groups of 4, same latents as `encode`."""
    x = video(1 + 4 * 4)
    with torch.no_grad():
        z = vae.encode(x)  # (B, 5, C, 4, 6)
    enc = vae.stream_encoder(2)
    zs = [enc.step(x[:, :1])] + [enc.step(x[:, 1 + 4 * i : 5 + 4 * i]) for i in range(4)]
    assert (torch.stack(zs, 1) - z).abs().max().item() <= 1e-5


def test_stream_cache_is_fixed_and_reset_restarts(vae):
    """Guards 'allocated once, no growth': same buffers (storage) every step; reset gives a fresh video."""
    z = torch.randn(1, 6, 16, 4, 6)
    dec = vae.stream_decoder(1, light=True)
    first = dec.step(z[:, 0])
    ptrs = [b.data_ptr() for b in dec.cache.buffers]
    shapes = [b.shape for b in dec.cache.buffers]
    assert ptrs, "the light decoder has causal convs, so it must cache something"
    for i in range(1, 6):
        dec.step(z[:, i])
        assert [b.data_ptr() for b in dec.cache.buffers] == ptrs
        assert [b.shape for b in dec.cache.buffers] == shapes
    dec.reset()
    assert all((b == 0).all() for b in dec.cache.buffers)
    again = dec.step(z[:, 0])
    assert [b.data_ptr() for b in dec.cache.buffers] == ptrs
    assert torch.equal(first, again)


def test_stream_rejects_size_change_and_bad_shapes(vae):
    dec = vae.stream_decoder(1)
    dec.step(torch.randn(1, 16, 4, 6))
    with pytest.raises(ValueError, match="changed size"):
        dec.step(torch.randn(1, 16, 6, 6))
    with pytest.raises(ValueError, match="one latent frame per step"):
        dec.step(torch.randn(1, 2, 16, 4, 6))
    enc = vae.stream_encoder(1)
    with pytest.raises(ValueError, match="1 frame first"):
        enc.step(video(5, B=1))


# ----------------------------------------------------------------------------- causality


def test_changing_later_frames_does_not_change_earlier_latents(vae):
    """Guards encoder causality: frames 5.. belong to latent 2; latents 0 and 1 must not move."""
    x = video(13)
    y = x.clone()
    y[:, 5:] = video(8, seed=7)
    with torch.no_grad():
        zx, zy = vae.encode(x), vae.encode(y)
    assert torch.allclose(zx[:, :2], zy[:, :2], atol=1e-6, rtol=0)
    assert (zx[:, 2:] - zy[:, 2:]).abs().max() > 1e-3  # the change does reach later latents


def test_changing_later_latents_does_not_change_earlier_frames(vae):
    """Guards decoder causality: latent 2 decodes to frames 5..8; frames 0..4 must not move."""
    z = torch.randn(1, 4, 16, 4, 6)
    z2 = z.clone()
    z2[:, 2:] = torch.randn(1, 2, 16, 4, 6)
    for light in (False, True):
        with torch.no_grad():
            a, b = vae.decode(z, light=light), vae.decode(z2, light=light)
        assert torch.allclose(a[:, :5], b[:, :5], atol=1e-6, rtol=0)
        assert (a[:, 5:] - b[:, 5:]).abs().max() > 1e-3


# ----------------------------------------------------------------------------- shapes and errors


@pytest.mark.parametrize("k", [0, 1, 2, 5])
def test_shapes_video_to_latent_and_back(vae, k):
    x = video(1 + 4 * k, H=40, W=24, B=1)
    with torch.no_grad():
        z = vae.encode(x)
        assert z.shape == (1, 1 + k, 16, 5, 3)
        assert vae.decode(z).shape == x.shape
        assert vae.decode(z, light=True).shape == x.shape


@pytest.mark.parametrize("T", [2, 4, 6, 8])
def test_bad_frame_count_raises(vae, T):
    with pytest.raises(ValueError, match=rf"T={T} frames, expected 1 \+ 4k"):
        vae.encode(video(T, B=1))


@pytest.mark.parametrize("H,W", [(36, 48), (32, 50), (100, 100)])
def test_size_not_divisible_by_8_raises_naming_the_size(vae, H, W):
    with pytest.raises(ValueError, match=rf"{H}x{W}.*not divisible by 8"):
        vae.encode(video(1, H=H, W=W, B=1))


def test_bad_latent_shape_raises(vae):
    with pytest.raises(ValueError, match="expected \\(B, n, 16, h, w\\)"):
        vae.decode(torch.randn(1, 2, 8, 4, 4))


def test_configurable_factors():
    """latent channels, temporal and spatial factors come from the config."""
    cfg = vae_config("tiny", latent_channels=4, temporal_factor=2, spatial_factor=4,
                     encoder_channels=[8, 8, 8], decoder_channels=[8, 8, 8], light_decoder_channels=[8, 8, 8])
    v = CausalVAE(cfg).eval()
    with torch.no_grad():
        z = v.encode(video(7, H=16, W=12, B=1))  # 1 + 2*3 frames
        assert z.shape == (1, 4, 4, 4, 3)
        assert v.decode(z).shape == (1, 7, 3, 16, 12)


def test_config_errors():
    with pytest.raises(KeyError, match="unknown VAE size"):
        vae_config("huge")
    with pytest.raises(KeyError, match="unknown VAEConfig field"):
        vae_config("tiny", channels=3)
    with pytest.raises(ValueError, match="spatial_factor=16"):
        vae_config("tiny", spatial_factor=16)


def test_paper_config_matches_supplementary():
    """Supplementary E: full decoder 3 blocks x 128/256/512/512; light 2 blocks x 64/128/256/512."""
    with torch.device("meta"):
        v = CausalVAE(vae_config("paper"))
    for dec, blocks, chans in ((v.decoder, 3, [128, 256, 512, 512]), (v.light_decoder, 2, [64, 128, 256, 512])):
        assert [len(b) for b in dec.blocks] == [blocks] * 4
        widths = [b[-1].conv2.conv.out_channels for b in dec.blocks]  # deepest scale first
        assert widths == chans[::-1]
    assert v.cfg.latent_channels == 16 and v.cfg.temporal_factor == 4 and v.cfg.spatial_factor == 8


# ----------------------------------------------------------------------------- checkpoints


def test_save_load_roundtrip(vae, tmp_path):
    p = tmp_path / "vae.safetensors"
    save_vae(p, vae)
    v2 = load_vae(p)
    assert v2.cfg == vae.cfg
    x = video(5, B=1)
    with torch.no_grad():
        assert torch.equal(vae.encode(x), v2.encode(x))
        z = vae.encode(x)
        assert torch.equal(vae.decode(z, light=True), v2.decode(z, light=True))
    assert torch.equal(v2.latent_std, vae.latent_std)


def test_load_corrupt_or_wrong_file_raises_naming_it(vae, tmp_path):
    from worldmodel.checkpoint import CheckpointError, save_checkpoint

    p = tmp_path / "vae.safetensors"
    save_vae(p, vae)
    p.write_bytes(p.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="vae.safetensors"):
        load_vae(p)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_vae(tmp_path / "missing.safetensors")
    q = tmp_path / "other.safetensors"
    save_checkpoint(q, {"w": torch.zeros(1)}, {"kind": "other"})
    with pytest.raises(CheckpointError, match="not a VAE file"):
        load_vae(q)


def test_bench_function_reports_both_decoders():
    from worldmodel.bench.vae import bench_vae_decode

    r = bench_vae_decode([("t", "tiny", 32, 32, 1)])
    row = r["rows"][0]
    assert row["full_ms"] > 0 and row["light_ms"] > 0 and row["speedup"] == pytest.approx(row["full_ms"] / row["light_ms"])
    assert row["light_params"] < row["full_params"]


def test_shipped_vae_streams_at_the_bundled_resolution():
    """The VAE inside the bundled world is tiny-sized and streams 96x128 frames with its light decoder."""
    from worldmodel.world import World

    v = World.load().vae
    assert v.cfg.name == "tiny"
    dec = v.stream_decoder(1, light=True)
    assert dec.step(torch.zeros(1, v.cfg.latent_channels, 12, 16)).shape == (1, 1, 3, 96, 128)
    assert dec.step(torch.zeros(1, v.cfg.latent_channels, 12, 16)).shape == (1, 4, 3, 96, 128)


# ----------------------------------------------------------------------------- training on real frames


@pytest.fixture(scope="module")
def doom_root(tmp_path_factory):
    """A few dozen real freedoom2 frames (train MAP01, val MAP25) in the shard format."""
    pytest.importorskip("vizdoom")
    from train.vae import render_doom_shards

    root = tmp_path_factory.mktemp("doom")
    render_doom_shards(root, {"train": ["MAP01"], "val": ["MAP25"]}, frames_per_map=24, seed=0)
    return root


def small_train_cfg(root, tmp_path, **kw):
    from train.vae import TrainVAEConfig

    base = dict(data_root=str(root), height=32, width=48, crop_h=16, crop_w=24, clip_frames=5, eval_frames=5,
                batch_size=2, steps=4, warmup=2, ckpt_every=2, log_every=1, eval_clips=2, stats_clips=2,
                run_dir=str(tmp_path / "run"), out=str(tmp_path / "vae.safetensors"),
                init=str(tmp_path / "vae.safetensors"), threads=1, progress_bar=False,
                vae=dict(SMALL))
    base.update(kw)
    return TrainVAEConfig(**base)


def test_training_resume_is_exact(doom_root, tmp_path):
    """Guards exact resume: 4 steps straight == 2 steps, stop, resume, 2 more (same weights, bitwise)."""
    from train.vae import train_vae

    train_vae(small_train_cfg(doom_root, tmp_path / "a"))
    half = small_train_cfg(doom_root, tmp_path / "b", stop_after=2)
    assert train_vae(half)["stopped_early"]
    train_vae(dataclasses.replace(half, stop_after=0, resume=True))
    a, b = load_vae(tmp_path / "a" / "vae.safetensors"), load_vae(tmp_path / "b" / "vae.safetensors")
    sa, sb = a.state_dict(), b.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa), [k for k in sa if not torch.equal(sa[k], sb[k])][:5]
    rows = (tmp_path / "b" / "run" / "recon" / "metrics.jsonl").read_text().splitlines()
    assert [r for r in rows if '"loss"' in r].__len__() == 4  # no duplicate rows after resume


@pytest.mark.parametrize("phase, trained", [("light", "light_decoder."), ("full", "decoder.")])
def test_decoder_phases_train_only_their_decoder(doom_root, tmp_path, phase, trained):
    """Guards the frozen latent space: phase=light / full change that decoder's weights and nothing else."""
    from train.vae import train_vae

    train_vae(small_train_cfg(doom_root, tmp_path, steps=2))
    before = load_vae(tmp_path / "vae.safetensors").state_dict()
    out = train_vae(small_train_cfg(doom_root, tmp_path, phase=phase, steps=2, lr=1e-2, first_weight=4.0))
    after = load_vae(tmp_path / "vae.safetensors").state_dict()
    for k in before:
        same = torch.equal(before[k], after[k])
        assert same != k.startswith(trained), k
    for key in ("psnr", "psnr_start", "sharp", "sharp_start", "sharp_start_inner"):
        assert f"{key}_full" in out and f"{key}_light" in out, key
    assert out["sharp_real"] > 0 and out["val_maps"] == ["freedoom2:MAP25"]


def test_first_weight_weighs_frame_zero():
    """Guards `first_weight`: 1 is the plain L1 + MSE mean; w counts frame 0 as w frames of the clip."""
    from train.vae import recon_loss

    target = torch.zeros(2, 5, 3, 4, 4)
    pred = target.clone()
    pred[:, 0] = 0.5  # error in frame 0 only: L1 0.5, MSE 0.25 there
    plain = recon_loss(pred, target, mse_weight=1.0)
    assert torch.allclose(plain, torch.tensor(0.75 / 5))
    assert torch.allclose(recon_loss(pred, target, 1.0, first_weight=1.0), plain)
    assert torch.allclose(recon_loss(pred, target, 1.0, first_weight=4.0), torch.tensor(4 * 0.75 / 8))
    x, y = torch.randn(2, 5, 3, 4, 4), torch.randn(2, 5, 3, 4, 4)  # the weighted path at w = 1 is the plain mean
    w1 = (x - y).abs().mean((0, 2, 3, 4)) + (x - y).pow(2).mean((0, 2, 3, 4))
    assert torch.allclose(recon_loss(x, y, 1.0), w1.mean())


def test_start_frame_metrics_equal_the_frame_encoded_alone(vae):
    """Guards the start-frame PSNR: frame 0 of a clip scores as the first image encoded and decoded alone."""
    from train.vae import evaluate, psnr, sharpness

    x = video(9)
    out = evaluate(vae, x)
    with torch.no_grad():
        alone = vae.decode(vae.encode(x[:, :1]), light=True)  # (B, 1, 3, H, W)
    assert out["psnr_start_light"] == pytest.approx(float(psnr(alone, x[:, :1]).mean()), abs=1e-4)
    assert out["sharp_start_light"] == pytest.approx(float(sharpness(alone).mean()), rel=1e-4)
    assert out["sharp_start_real"] == pytest.approx(float(sharpness(x[:, :1]).mean()), rel=1e-6)
    inner = float(sharpness(x[:, :1, :, 8:-8, 8:-8]).mean())
    assert out["sharp_start_inner_real"] == pytest.approx(inner, rel=1e-6)


def test_adversarial_light_phase_trains_against_a_discriminator_and_resumes_exactly(doom_root, tmp_path, monkeypatch):
    """Guards the adversarial light phase: only the light decoder changes, the discriminator learns and is
    saved with the training state, so 4 steps straight == 2 steps, stop, resume, 2 more (bitwise)."""
    import json

    from train.vae import train_vae

    train_vae(small_train_cfg(doom_root, tmp_path, steps=2))
    before = load_vae(tmp_path / "vae.safetensors").state_dict()
    adv = dict(phase="light", init=str(tmp_path / "vae.safetensors"), adv_weight=0.5, distill_weight=0.0,
               disc_channels=8, lr=1e-2, disc_lr=1e-2)
    from train.vae_disc import PatchDiscriminator

    calls, forward = [], PatchDiscriminator.forward

    def counted(self, x):
        calls.append(x.shape[0])
        return forward(self, x)

    monkeypatch.setattr(PatchDiscriminator, "forward", counted)
    train_vae(small_train_cfg(doom_root, tmp_path / "a", **adv))
    monkeypatch.undo()
    # Per step: real once, fake for the decoder and for the discriminator, R1 and R2 (real was scored twice).
    assert len(calls) == 4 * 5, calls
    half = small_train_cfg(doom_root, tmp_path / "b", stop_after=2, **adv)
    assert train_vae(half)["stopped_early"]
    train_vae(dataclasses.replace(half, stop_after=0, resume=True))
    a, b = (load_vae(tmp_path / d / "vae.safetensors").state_dict() for d in "ab")
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])][:5]
    for k in before:
        assert torch.equal(before[k], a[k]) != k.startswith("light_decoder."), k
    rows = [json.loads(r) for r in (tmp_path / "a" / "run" / "light" / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "adv" in r]
    assert len(rows) == 4 and all(r["d_r1"] > 0 and "distill" not in r for r in rows), rows[0]


def test_patch_discriminator_scores_patches_and_checks_its_input():
    from train.vae_disc import PatchDiscriminator

    d = PatchDiscriminator(channels=8, downsamples=2)
    assert d(torch.zeros(3, 3, 48, 64)).shape == (3, 12 * 16)  # one logit per patch, 4x coarser
    with pytest.raises(ValueError, match=r"\(2, 1, 48, 64\).*expected \(N, 3, H, W\)"):
        d(torch.zeros(2, 1, 48, 64))


def test_adversarial_weight_is_checked(doom_root, tmp_path):
    from train.vae import train_vae

    with pytest.raises(ValueError, match="phase=light only"):
        train_vae(small_train_cfg(doom_root, tmp_path, adv_weight=0.1))
    with pytest.raises(ValueError, match="adv_weight=-1.0 must be >= 0"):
        train_vae(small_train_cfg(doom_root, tmp_path, phase="light", adv_weight=-1.0))


def test_nan_loss_stops_and_keeps_last_good_state(doom_root, tmp_path, monkeypatch):
    """Guards the NaN guard: a NaN at step 3 raises naming the step; the step-2 state is left intact."""
    import train.vae as tv
    from train.common import NonFiniteLossError, load_training_state

    real = tv.phase_losses
    calls = {"n": 0}

    def poisoned(vae, x, cfg, disc=None, real_logits=None):
        calls["n"] += 1
        losses, pred = real(vae, x, cfg, disc, real_logits)
        if calls["n"] == 3:
            losses["loss"] = losses["loss"] * float("nan")
        return losses, pred

    monkeypatch.setattr(tv, "phase_losses", poisoned)
    cfg = small_train_cfg(doom_root, tmp_path)
    with pytest.raises(NonFiniteLossError, match=r"step 2.*'loss': nan.*untouched"):
        tv.train_vae(cfg)
    v = CausalVAE(vae_config("tiny", **SMALL))
    step, extra = load_training_state(tmp_path / "run" / "recon" / "state.safetensors", {"vae": v}, restore_rng=False)
    assert step == 2 and extra["phase"] == "recon"
    assert all(torch.isfinite(p).all() for p in v.parameters())


@pytest.mark.slow
def test_hydra_entry_point_runs(doom_root, tmp_path):
    """`python -m train.vae` with hydra overrides runs end to end and writes a loadable VAE."""
    import subprocess
    import sys

    out = tmp_path / "vae.safetensors"
    cmd = [sys.executable, "-m", "train.vae", f"data_root={doom_root}", "height=32", "width=48", "crop_h=16",
           "crop_w=24", "steps=2", "batch_size=1", "eval_clips=1", "stats_clips=1", "eval_frames=5",
           f"run_dir={tmp_path / 'run'}", f"out={out}", "threads=1", "progress_bar=false",
           "+vae.decoder_channels=[8,8,8,8]", "+vae.encoder_channels=[8,8,8,8]"]
    subprocess.run(cmd, check=True, timeout=300)
    assert load_vae(out).cfg.decoder_channels == [8, 8, 8, 8]
    assert (tmp_path / "run" / "recon" / "metrics.jsonl").exists()
    assert list((tmp_path / "run" / "recon" / "tb").iterdir())
