"""Worker for tests/test_distributed.py: one rank of a gloo job launched with torchrun's env vars.

    RANK=0 WORLD_SIZE=2 LOCAL_RANK=0 MASTER_ADDR=127.0.0.1 MASTER_PORT=29500 python tests/dist_worker.py OUT

Every rank builds the same seeded tiny model, runs each scenario sharded and also as
the single-process reference on the full batch, and writes `OUT/result_<rank>.json`
with the relative errors it measured; the test asserts on them. Rank-2 checkpoints
for the reshard tests go to `OUT/ckpt_2ranks`; the 1-process checkpoint the pytest
process wrote beforehand is read from `OUT/ckpt_1proc`.
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from helpers import tiny_dit
from train.distributed import destroy, init_distributed
from worldmodel.dit import WorldDiT
from worldmodel.attention import FrameLayout, block_causal_attention
from worldmodel.parallel import ParallelConfig, build_mesh, parallelize, reshard
from worldmodel.parallel.ulysses import UlyssesGroup
from worldmodel.parallel.dist_checkpoint import load_sharded, save_sharded

B, FR, C, H, W = 2, 4, 16, 4, 4
LR = 1e-3


def make_model(seed: int = 0, **over) -> WorldDiT:
    """Seeded tiny model, moved off the adaLN-Zero init so every parameter gets a gradient."""
    return tiny_dit(0.05, seed=seed, noise_seed=seed + 1, window=1, attention_backend="sdpa", **over)


def batch(seed: int = 3, ctx_dim: int = 0):
    """A full batch: noisy, recycled, camera, t (B, F), target, context."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    ctx = r(B, 3, ctx_dim) if ctx_dim else None
    return r(B, FR, C, H, W), r(B, FR, C, H, W), r(B, FR, 24, H, W), torch.rand(B, FR, generator=g), r(B, FR, C, H, W), ctx


def step(model, opt, data) -> None:
    """One AdamW step on the flow-matching MSE."""
    noisy, rec, cam, t, target, ctx = data
    opt.zero_grad()
    F.mse_loss(model(noisy, rec, cam, t, context=ctx), target).backward()
    opt.step()


def full_params(model) -> dict[str, torch.Tensor]:
    """Unsharded parameters (DTensor shards all-gathered)."""
    return {k: (v.full_tensor() if hasattr(v, "full_tensor") else v).detach() for k, v in model.named_parameters()}


def max_rel_err(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys(), (sorted(a), sorted(b))
    return max(((a[k] - b[k]).norm() / b[k].norm().clamp_min(1e-12)).item() for k in a)


def reference_step(ctx_dim: int = 0, **over) -> dict[str, torch.Tensor]:
    """Weights after one single-process step on the full batch."""
    model = make_model(context_dim=ctx_dim, **over)
    step(model, torch.optim.AdamW(model.parameters(), lr=LR), batch(ctx_dim=ctx_dim))
    return full_params(model)


def scenario_fsdp(rank: int, world: int, zero: int, ac: bool = False, eval_first: bool = False) -> float:
    """FSDP over 2 data-parallel ranks, one sample each: weights after the step vs the reference.

    `eval_first` runs a no_grad forward first and reshards (the student-forcing pattern).
    """
    model = make_model()
    mesh = build_mesh(dp_shard=world, cp=1, device_type="cpu")
    parallelize(model, ParallelConfig(dp_shard=world, cp=1, zero=zero, activation_checkpointing=ac), mesh)
    data = batch()
    per = B // world
    local = tuple(None if x is None else x[rank * per : (rank + 1) * per] for x in data)
    if eval_first:
        with torch.no_grad():
            model(*local[:4])
        reshard(model)
    step(model, torch.optim.AdamW(model.parameters(), lr=LR), local)
    return max_rel_err(full_params(model), reference_step())


def scenario_cp(world: int, ctx_dim: int, zero: int = 3) -> tuple[float, float, float]:
    """Context parallelism over all ranks (every rank sees the full batch): output and step vs reference.

    Also returns the share of the clip's tokens a block saw on this rank (1/world when CP is live).
    """
    model = make_model(context_dim=ctx_dim)
    ref_model = copy.deepcopy(model)
    mesh = build_mesh(dp_shard=1, cp=world, device_type="cpu")
    parallelize(model, ParallelConfig(dp_shard=1, cp=world, zero=zero), mesh)
    data = batch(ctx_dim=ctx_dim)
    noisy, rec, cam, t, _, ctx = data
    seen = []
    model.blocks[0].register_forward_pre_hook(lambda _m, args: seen.append(args[0].shape[1]))
    with torch.no_grad():
        out_err = ((model(noisy, rec, cam, t, context=ctx) - ref_model(noisy, rec, cam, t, context=ctx)).norm()
                   / ref_model(noisy, rec, cam, t, context=ctx).norm()).item()
    reshard(model)  # parameters gathered under no_grad must not serve the training forward
    step(model, torch.optim.AdamW(model.parameters(), lr=LR), data)
    share = seen[0] / (FR * (H // 2) * (W // 2))
    return out_err, max_rel_err(full_params(model), reference_step(ctx_dim)), share


def scenario_cp_stream(world: int, ctx_dim: int) -> tuple[float, float]:
    """Context parallelism in the KV-cache path: frame-by-frame `forward_step` vs one process.

    Also returns the share of the heads this rank's cache holds (1/world when CP is live)."""
    model = make_model(context_dim=ctx_dim)  # window 1: frame 3 already needs the re-rotated sink
    ref_model = copy.deepcopy(model)
    parallelize(model, ParallelConfig(dp_shard=1, cp=world, zero=2), build_mesh(dp_shard=1, cp=world, device_type="cpu"))
    noisy, rec, cam, t, _, ctx = batch(ctx_dim=ctx_dim)
    outs, caches = [], []
    with torch.no_grad():
        for m in (model, ref_model):
            cache = m.new_cache(B, (H, W), context_tokens=0 if ctx is None else ctx.shape[1])
            caches.append(cache)
            if ctx is not None:
                m.prefill_context(cache, ctx)
            outs.append(torch.stack([m.forward_step(noisy[:, i], rec[:, i], cam[:, i], t[:, i], cache) for i in range(FR)], 1))
    reshard(model)
    return ((outs[0] - outs[1]).norm() / outs[1].norm()).item(), caches[0].k.shape[2] / caches[1].k.shape[2]


def scenario_ulysses(heads: int) -> tuple[float, float]:
    """Ulysses all-to-all around block-causal attention vs local attention: output and input gradients."""
    group = torch.distributed.new_group(list(range(torch.distributed.get_world_size())))
    cp = UlyssesGroup(group, heads)
    layout = FrameLayout(context=0, frame_tokens=3, frames=4, window=1)  # with one re-rotated sink copy
    g = torch.Generator().manual_seed(21)
    q, k, v = (torch.randn(2, heads, layout.q_len, 8, generator=g, requires_grad=True) for _ in range(3))
    k_extra = torch.randn(2, heads, layout.kv_len - layout.q_len, 8, generator=g)
    ref = block_causal_attention(q, torch.cat([k, k_extra], 2), torch.cat([v, k_extra], 2), layout, "sdpa")
    gout = torch.randn(ref.shape, generator=g)
    ref_grads = torch.autograd.grad(ref, (q, k, v), gout)
    # Sharded: each rank holds a contiguous slice of tokens, all heads.
    ql, kl, vl = (cp.shard(z, 2) for z in (q, k, v))
    qh, kh, vh = cp.seq_to_heads(torch.cat([ql, kl, vl])).chunk(3)  # (B, h_r, L, d)
    extra = cp.head_slice(k_extra)
    o = cp.heads_to_seq(block_causal_attention(qh, torch.cat([kh, extra], 2), torch.cat([vh, extra], 2), layout, "sdpa"))
    out = cp.gather(o, 2)
    # Each rank backpropagates its own slice of the output gradient; summing over ranks gives the total.
    grads = torch.autograd.grad(o, (q, k, v), cp.shard(gout, 2))
    grads = [gr.clone() for gr in grads]
    for gr in grads:
        torch.distributed.all_reduce(gr)
    out_err = ((out - ref).norm() / ref.norm()).item()
    grad_err = max(((a - b).norm() / b.norm()).item() for a, b in zip(grads, ref_grads))
    return out_err, grad_err


def probe_output(model) -> torch.Tensor:
    noisy, rec, cam, t, _, _ = batch(seed=11)
    with torch.no_grad():
        return model(noisy, rec, cam, t)


def scenario_checkpoints(out: Path, world: int) -> dict[str, float]:
    """Load the 1-process checkpoint into 2 ranks (ZeRO-3) and save one from 2 ranks (ZeRO-2)."""
    res = {}
    one = out / "ckpt_1proc"
    model = make_model(seed=5)  # different init: the load must overwrite every weight
    parallelize(model, ParallelConfig(zero=3), build_mesh(dp_shard=world, cp=1, device_type="cpu"))
    opt = torch.optim.AdamW(model.parameters(), lr=LR)
    load_sharded(one, {"generator": model}, {"generator": opt})
    expected = torch.load(out / "expected_1proc.pt", weights_only=True)
    res["load_1proc_output"] = ((probe_output(model) - expected["output"]).norm() / expected["output"].norm()).item()
    # The optimizer state came along: the next step must match the 1-process next step.
    step(model, opt, batch(seed=12))
    res["load_1proc_next_step"] = max_rel_err(full_params(model), expected["after_next_step"])

    model = make_model(seed=7)
    parallelize(model, ParallelConfig(zero=2), build_mesh(dp_shard=world, cp=1, device_type="cpu"))
    opt = torch.optim.AdamW(model.parameters(), lr=LR)
    step(model, opt, batch(seed=13))
    save_sharded(out / "ckpt_2ranks", {"generator": model}, {"generator": opt}, step=1)
    output = probe_output(model)
    if torch.distributed.get_rank() == 0:
        torch.save({"output": output}, out / "expected_2ranks.pt")
    return res


def main(out: Path) -> None:
    torch.set_num_threads(1)
    info = init_distributed()
    rank, world = info.rank, info.world_size
    res: dict[str, float] = {}
    try:
        res["fsdp_zero3"] = scenario_fsdp(rank, world, zero=3)
        res["fsdp_zero2"] = scenario_fsdp(rank, world, zero=2)
        res["fsdp_zero2_eval_first"] = scenario_fsdp(rank, world, zero=2, eval_first=True)
        res["ulysses_out"], res["ulysses_grad"] = scenario_ulysses(heads=4)
        res["ulysses3_out"], res["ulysses3_grad"] = scenario_ulysses(heads=3)  # uneven head split
        res["fsdp_zero3_ac"] = scenario_fsdp(rank, world, zero=3, ac=True)
        res["cp_output"], res["cp_step"], res["cp_token_share"] = scenario_cp(world, ctx_dim=0)
        res["cp_ctx_output"], res["cp_ctx_step"], res["cp_ctx_token_share"] = scenario_cp(world, ctx_dim=8, zero=2)
        res["cp_stream"], res["cp_stream_head_share"] = scenario_cp_stream(world, ctx_dim=0)
        res["cp_stream_ctx"], res["cp_stream_ctx_head_share"] = scenario_cp_stream(world, ctx_dim=8)
        if (out / "ckpt_1proc").exists():
            res.update(scenario_checkpoints(out, world))
    finally:
        (out / f"result_{rank}.json").write_text(json.dumps(res))
        destroy()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
