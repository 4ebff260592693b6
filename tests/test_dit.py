"""The world-model transformer: cached streaming equals the parallel block-causal forward."""

import copy

import pytest
import torch

from helpers import tiny_dit
from train.rollout import student_rollout
from worldmodel.config import model_config
from worldmodel.dit import WorldDiT
from worldmodel.parallel import ParallelConfig, parallelize

B, F, C, H, W = 2, 7, 16, 4, 6


def make_model(**over) -> WorldDiT:
    """A tiny model built from the RNG as it stands (the autouse seed), perturbed from a fixed generator."""
    return tiny_dit(0.05, seed=None, noise_seed=1, **over).eval()


def inputs(ctx_dim: int = 0, batch: int = B):
    g = torch.Generator().manual_seed(2)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    ctx = r(batch, 3, ctx_dim) if ctx_dim else None
    return r(batch, F, C, H, W), r(batch, F, C, H, W), r(batch, F, 24, H, W), torch.rand(batch, F, generator=g), ctx


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def stream(model: WorldDiT, noisy, rec, cam, t, ctx) -> torch.Tensor:
    cache = model.new_cache(noisy.shape[0], (H, W), context_tokens=0 if ctx is None else ctx.shape[1])
    if ctx is not None:
        model.prefill_context(cache, ctx)
    with torch.no_grad():
        return torch.stack([model.forward_step(noisy[:, i], rec[:, i], cam[:, i], t[:, i], cache) for i in range(F)], 1)


@pytest.mark.parametrize("window", [10, 2, 1], ids=["window>seq", "window2", "window1"])
@pytest.mark.parametrize("ctx_dim", [0, 8], ids=["video", "with-context"])
def test_kv_cache_stream_equals_parallel_forward(window, ctx_dim):
    model = make_model(window=window, context_dim=ctx_dim)
    noisy, rec, cam, t, ctx = inputs(ctx_dim)
    with torch.no_grad():
        ref = model(noisy, rec, cam, t, context=ctx)
    assert rel_err(stream(model, noisy, rec, cam, t, ctx), ref) <= 1e-4


def test_batch_of_streams_equals_single_streams():
    model = make_model(window=2)
    noisy, rec, cam, t, _ = inputs(batch=3)
    batched = stream(model, noisy, rec, cam, t, None)
    for b in range(3):
        single = stream(model, noisy[b : b + 1], rec[b : b + 1], cam[b : b + 1], t[b : b + 1], None)
        torch.testing.assert_close(single, batched[b : b + 1], rtol=1e-5, atol=1e-5)


def test_future_frames_do_not_change_earlier_outputs():
    model = make_model(window=3)
    noisy, rec, cam, t, _ = inputs()
    with torch.no_grad():
        out = model(noisy, rec, cam, t)
        noisy2, cam2 = noisy.clone(), cam.clone()
        noisy2[:, 4:] += 3
        cam2[:, 4:] -= 2
        out2 = model(noisy2, rec, cam2, t)
    torch.testing.assert_close(out2[:, :4], out[:, :4], rtol=0, atol=0)
    assert not torch.allclose(out2[:, 4:], out[:, 4:])


def test_flex_backend_model_equals_sdpa_model():
    model = make_model(window=2)
    noisy, rec, cam, t, _ = inputs()
    with torch.no_grad():
        ref = model(noisy, rec, cam, t)
        model.cfg.attention_backend = "flex"
        out = model(noisy, rec, cam, t)
    assert rel_err(out, ref) <= 1e-5


def test_discriminator_emits_one_logit_per_frame():
    model = make_model(logit_head=True)
    noisy, rec, cam, t, _ = inputs()
    logits = model(noisy, rec, cam, t)
    assert logits.shape == (B, F)
    logits.sum().backward()  # differentiable end to end
    assert model.latent_proj.weight.grad is not None


def test_activation_checkpointing_recomputes_every_block_and_gives_same_gradients():
    """`parallelize` checkpointing: every block runs again in backward (counted), gradients unchanged,
    and a cached step (which writes the KV cache) is never recomputed."""
    base = make_model(window=2).train()
    noisy, rec, cam, t, _ = inputs()
    grads, calls = [], []
    for ac in (False, True):
        model = parallelize(copy.deepcopy(base), ParallelConfig(activation_checkpointing=ac), None)
        count = [0]
        for blk in model.blocks:
            blk.register_forward_pre_hook(lambda *_: count.__setitem__(0, count[0] + 1))
        model(noisy, rec, cam, t).square().mean().backward()
        grads.append(dict(model.named_parameters()))
        calls.append(count[0])
    depth = len(model.blocks)
    assert calls == [depth, 2 * depth], f"block forward calls without/with checkpointing: {calls}"
    for n, a in grads[0].items():
        torch.testing.assert_close(grads[1][n].grad, a.grad, rtol=1e-5, atol=1e-6, msg=n)
    # Student forcing: a grad-enabled rollout through the differentiable cache is not recomputed.
    student_rollout(model, rec[:, 0], cam[:, :3], noisy[:, :3]).square().mean().backward()


def test_adaln_zero_init_outputs_zero_velocity():
    model = WorldDiT(model_config("tiny", dim=64, depth=2, heads=4))
    noisy, rec, cam, t, _ = inputs()
    assert model(noisy, rec, cam, t).abs().max().item() == 0.0


def test_bad_shapes_are_named():
    model = make_model()
    noisy, rec, cam, t, _ = inputs()
    with pytest.raises(ValueError, match="camera has shape"):
        model(noisy, rec, cam[:, :, :10], t)
    with pytest.raises(ValueError, match="not divisible by patch_size"):
        model(noisy[..., :5], rec[..., :5], cam[..., :5], t)
    with pytest.raises(ValueError, match="no context stream"):
        model(noisy, rec, cam, t, context=torch.zeros(B, 2, 8))


# ---- recycle_warp: the recycled latent resampled by the camera's last two channels ---------------


def _identity_grid(batch: int = B) -> torch.Tensor:
    x = (torch.arange(W) + 0.5) / W * 2 - 1
    y = (torch.arange(H) + 0.5) / H * 2 - 1
    return torch.stack([x.expand(H, W), y[:, None].expand(H, W)])[None, None].expand(batch, F, 2, H, W)


def test_warp_at_rest_is_plain_recycling_and_a_one_cell_shift_moves_the_recycled_latent():
    plain = make_model()
    warped = WorldDiT(model_config("tiny", dim=64, depth=2, heads=4, recycle_warp=True)).eval()
    warped.load_state_dict(plain.state_dict())  # same weights: the grid channels have no projection
    noisy, rec, cam, t, _ = inputs()
    grid = _identity_grid()
    with torch.no_grad():
        torch.testing.assert_close(warped(noisy, rec, torch.cat([cam, grid], 2), t), plain(noisy, rec, cam, t))
        shifted = grid.clone()
        shifted[:, :, 0] += 2 / W  # every cell samples its right neighbour; the last column falls outside
        moved = torch.cat([rec[..., 1:], torch.zeros_like(rec[..., :1])], -1)
        torch.testing.assert_close(warped(noisy, rec, torch.cat([cam, shifted], 2), t), plain(noisy, moved, cam, t),
                                   rtol=1e-5, atol=1e-5)


def test_warp_model_streams_like_its_parallel_forward_and_names_missing_grid_channels():
    model = make_model(recycle_warp=True, window=2)
    noisy, rec, cam, t, _ = inputs()
    cam = torch.cat([cam, _identity_grid() + 0.1 * torch.randn(B, F, 2, H, W)], 2)
    with torch.no_grad():
        ref = model(noisy, rec, cam, t)
    assert rel_err(stream(model, noisy, rec, cam, t, None), ref) <= 1e-4
    with pytest.raises(ValueError, match=r"camera has shape .*expected \(B, F, 26, h, w\)"):
        model(noisy, rec, cam[:, :, :24], t)


def test_qk_norm_under_bf16_autocast_stays_fused_and_matches_float32():
    """The per-head q/k RMSNorm keeps float32 weights; under bf16 autocast it must still take the
    fused path (no dtype-mismatch warning) and agree with the float32 norm to bf16 precision."""
    import warnings

    from torch import nn

    from worldmodel.dit import HeadRMSNorm

    norm = HeadRMSNorm(16, eps=1e-6)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
    x = torch.randn(2, 4, 10, 16)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the old nn.RMSNorm warned here ("Mismatch dtype")
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = norm(x.bfloat16())
    assert y.dtype == torch.bfloat16
    ref = nn.RMSNorm(16, eps=1e-6)
    ref.load_state_dict(norm.state_dict())  # same parameter names: old checkpoints load unchanged
    assert torch.allclose(y.float(), ref(x), atol=3e-2, rtol=2e-2)
    assert torch.equal(norm(x), ref(x))
