"""Scale-out training on CPU with gloo, world size 2: sharded equals single-process.

One 2-rank job (tests/dist_worker.py, launched with torchrun's environment variables
on a free port) runs every sharded scenario against its single-process reference and
reports relative errors; the tests below each assert one property on those numbers.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import dist_worker as dw
from worldmodel.checkpoint import load_world_model
from worldmodel.parallel import ParallelConfig, build_mesh, parallelize
from worldmodel.parallel.dist_checkpoint import export_safetensors, load_full_model, save_sharded

WORLD = 2
TOL = 1e-5
REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(out: Path, world: int = WORLD, timeout: float = 240.0, script: str = "dist_worker.py",
           args: tuple[str, ...] = ()) -> list[dict[str, float]]:
    """Run tests/<script> as `world` ranks (argv: out, *args); return each rank's result_<rank>.json."""
    port = free_port()
    procs = []
    for rank in range(world):
        env = {**os.environ, "RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank),
               "LOCAL_WORLD_SIZE": str(world), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
               "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
        log = open(out / f"log_{rank}.txt", "w")
        procs.append(subprocess.Popen([sys.executable, str(REPO / "tests" / script), str(out), *args],
                                      env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT))
    try:
        codes = [p.wait(timeout=timeout) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    if any(codes):
        logs = "\n".join((out / f"log_{r}.txt").read_text()[-3000:] for r in range(world))
        raise AssertionError(f"distributed workers exited with {codes}:\n{logs}")
    return [json.loads((out / f"result_{r}.json").read_text()) for r in range(world)]


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    """A 1-process checkpoint (+ expected outputs), then the 2-rank job; returns (out dir, rank-0 results)."""
    out = tmp_path_factory.mktemp("dist")
    torch.manual_seed(0)
    model = dw.make_model(seed=9)
    opt = torch.optim.AdamW(model.parameters(), lr=dw.LR)
    dw.step(model, opt, dw.batch(seed=10))
    save_sharded(out / "ckpt_1proc", {"generator": model}, {"generator": opt}, step=1)  # no process group
    expected = {"output": dw.probe_output(model)}
    dw.step(model, opt, dw.batch(seed=12))
    expected["after_next_step"] = dw.full_params(model)
    torch.save(expected, out / "expected_1proc.pt")
    results = launch(out)
    assert results[0] == results[1], "ranks disagree on the measured errors"
    return out, results[0]


@pytest.mark.parametrize("key", ["cp_stream", "cp_stream_ctx"])
def test_context_parallel_kv_cache_stream_equals_single_process(job, key):
    """Ulysses around the cached attention: streaming frame by frame with CP 2 equals one process."""
    assert job[1][f"{key}_head_share"] == 1 / WORLD, "each rank's KV cache must hold only its own heads"
    assert job[1][key] <= TOL


@pytest.mark.parametrize("scenario", ["fsdp_zero3", "fsdp_zero2", "fsdp_zero2_eval_first", "fsdp_zero3_ac"])
def test_fsdp_step_equals_single_process_step(job, scenario):
    """2 data-parallel ranks x 1 sample each, one AdamW step: weights equal the 2-sample single-process step.

    Guards gradient averaging, the ZeRO-3 / ZeRO-2 resharding, activation checkpointing under
    FSDP, and (eval_first) a no_grad forward followed by `reshard` as in student forcing.
    """
    _, res = job
    assert res[scenario] <= TOL


@pytest.mark.parametrize("heads", [4, 3], ids=["even-heads", "uneven-heads"])
def test_ulysses_attention_equals_local_attention(job, heads):
    """All-to-all to head shards, block-causal attention with sink copies, and back: same output and gradients."""
    _, res = job
    key = "ulysses" if heads == 4 else "ulysses3"
    assert res[f"{key}_out"] <= TOL
    assert res[f"{key}_grad"] <= TOL


@pytest.mark.parametrize("ctx", ["", "_ctx"], ids=["video", "with-context-stream"])
def test_context_parallel_step_equals_single_process_step(job, ctx):
    """CP 2 (each rank holds half the frames): same model output, and weights after a step equal the reference."""
    _, res = job
    assert res[f"cp{ctx}_token_share"] == 1 / WORLD, "each rank must compute on its own half of the tokens"
    assert res[f"cp{ctx}_output"] <= TOL
    assert res[f"cp{ctx}_step"] <= TOL


def test_checkpoint_from_one_process_loads_into_two_ranks(job):
    """A checkpoint saved without a process group reshards onto 2 FSDP ranks: same outputs, optimizer state resumes."""
    _, res = job
    assert res["load_1proc_output"] <= TOL
    assert res["load_1proc_next_step"] <= TOL


def test_checkpoint_from_two_ranks_loads_in_one_process(job, tmp_path):
    """A ZeRO-2 checkpoint saved by 2 ranks loads unsharded in one process and exports to the world format."""
    out, _ = job
    expected = torch.load(out / "expected_2ranks.pt", weights_only=True)["output"]
    model = load_full_model(out / "ckpt_2ranks", "generator")
    torch.testing.assert_close(dw.probe_output(model), expected, rtol=TOL, atol=TOL)
    exported = export_safetensors(out / "ckpt_2ranks", tmp_path / "world_dit.safetensors", name="generator")
    loaded, cfg, _, _, meta = load_world_model(exported)
    assert meta["step"] == 1 and cfg == model.cfg
    torch.testing.assert_close(dw.probe_output(loaded), expected, rtol=TOL, atol=TOL)


def test_activation_checkpointing_recomputes_and_keeps_gradients():
    """With checkpointing each block runs twice per step (counted by a hook) and gradients are unchanged."""
    torch.set_num_threads(1)
    noisy, rec, cam, t, target, _ = dw.batch()
    grads, calls = [], []
    for ac in (False, True):
        model = dw.make_model()
        parallelize(model, ParallelConfig(activation_checkpointing=ac), None)
        count = [0]
        for blk in model.blocks:
            blk.register_forward_pre_hook(lambda *_: count.__setitem__(0, count[0] + 1))
        F.mse_loss(model(noisy, rec, cam, t), target).backward()
        grads.append({k: p.grad for k, p in model.named_parameters()})
        calls.append(count[0])
    depth = len(model.blocks)
    assert calls == [depth, 2 * depth], f"block forward calls without/with checkpointing: {calls}"
    for k in grads[0]:
        torch.testing.assert_close(grads[1][k], grads[0][k], rtol=1e-6, atol=1e-7)


def test_mesh_and_config_errors_say_what_to_do():
    """Bad settings fail early with a message naming the fix."""
    with pytest.raises(ValueError, match="zero=1"):
        ParallelConfig(zero=1)
    with pytest.raises(ValueError, match="torchrun"):
        build_mesh(dp_shard=2, cp=1)
    assert build_mesh() is None  # one process: nothing to shard over
    with pytest.raises(ValueError, match="cp=2"):
        parallelize(dw.make_model(), ParallelConfig(cp=2), None)


def test_memory_planner_counts_parameters_and_orders_zero_stages():
    """Meta-device counts equal a real model's; ZeRO-2 holds more gathered parameters than ZeRO-3; CP cuts activations."""
    from worldmodel.config import model_config
    from worldmodel.dit import WorldDiT
    from worldmodel.parallel.memory_plan import PlanConfig, count_parameters, plan
    from worldmodel.parallel.plan import main

    cfg = model_config("tiny", dim=64, depth=2, heads=4)
    assert count_parameters(cfg)[0] == sum(p.numel() for p in WorldDiT(cfg).parameters())
    pc = PlanConfig(model="tiny", width=256, height=128, seconds=2.0)
    z2, z3 = plan(PlanConfig(**{**pc.__dict__, "zero": 2}), 16, 2), plan(pc, 16, 2)
    assert z2["gathered bf16 params"] > z3["gathered bf16 params"]
    assert plan(pc, 16, 4)["activations (bf16)"] < z3["activations (bf16)"]
    table = main(["--model", "tiny", "--gpus", "8", "--cp", "2", "--width", "256", "--height", "128"])
    assert "| gathered bf16 params |" in table and "G2 + D3" in table
