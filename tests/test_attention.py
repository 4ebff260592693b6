"""Block-causal attention: every backend agrees with the SDPA reference; the future never leaks."""

import pytest
import torch

from worldmodel.attention import FrameLayout, block_causal_attention, flash_available, resolve_backend

LAYOUTS = [
    FrameLayout(context=0, frame_tokens=6, frames=5, window=4),  # window >= frames - 1: every past frame
    FrameLayout(context=3, frame_tokens=6, frames=7, window=2),  # sliding window + sink copies
    FrameLayout(context=0, frame_tokens=4, frames=6, window=1),
]


def available_backends() -> list[str]:
    names = ["sdpa", "flex"]
    if flash_available():
        names.append("flash")
    return names


def qkv(layout: FrameLayout, B: int = 2, H: int = 2, d: int = 16):
    g = torch.Generator().manual_seed(0)
    q = torch.randn(B, H, layout.q_len, d, generator=g)
    k = torch.randn(B, H, layout.kv_len, d, generator=g)
    v = torch.randn(B, H, layout.kv_len, d, generator=g)
    return q, k, v


def naive_reference(q, k, v, layout: FrameLayout) -> torch.Tensor:
    """Softmax attention written out with the mask, independent of SDPA."""
    scores = q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5
    scores = scores.masked_fill(~layout.dense_mask(), float("-inf"))
    return scores.softmax(-1) @ v


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("backend", available_backends())
def test_backends_agree_with_reference(layout, backend):
    q, k, v = qkv(layout)
    ref = naive_reference(q, k, v, layout)
    out = block_causal_attention(q, k, v, layout, backend)
    assert ((out - ref).norm() / ref.norm()).item() <= 1e-5


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("backend", available_backends())
def test_future_frames_do_not_change_the_past(layout, backend):
    q, k, v = qkv(layout)
    out = block_causal_attention(q, k, v, layout, backend)
    C, N, cut = layout.context, layout.frame_tokens, 3
    start = C + cut * N  # perturb frames >= cut (their queries, keys, values)
    q2, k2, v2 = q.clone(), k.clone(), v.clone()
    q2[:, :, start:] += 5
    k2[:, :, start : layout.q_len] += 5
    v2[:, :, start : layout.q_len] += 5
    # sink copies serve only frames >= window + 2; perturb those that serve frames >= cut
    out2 = block_causal_attention(q2, k2, v2, layout, backend)
    torch.testing.assert_close(out2[:, :, :start], out[:, :, :start], rtol=0, atol=0)
    assert not torch.allclose(out2[:, :, start:], out[:, :, start:])


def test_mask_rules():
    lay = FrameLayout(context=1, frame_tokens=1, frames=6, window=2)
    m = lay.dense_mask()
    # columns: ctx, f0..f5, copies for frames 4 and 5
    assert m.shape == (7, 9)
    assert m[0].tolist() == [True] + [False] * 8  # context sees only context
    assert m[1 + 3].tolist() == [True, True, True, True, True, False, False, False, False]  # f3 sees f0..f3
    assert m[1 + 4].tolist() == [True, False, False, True, True, True, False, True, False]  # f4: f2..f4 + its sink copy
    assert m[1 + 5].tolist() == [True, False, False, False, True, True, True, False, True]


def test_backend_choice():
    assert resolve_backend("auto", torch.device("cpu")) == "sdpa"
    with pytest.raises(ValueError, match="expected one of"):
        resolve_backend("nope", torch.device("cpu"))
    if not flash_available():
        with pytest.raises(ValueError, match="flash-attn"):
            resolve_backend("flash", torch.device("cpu"))
