"""The benchmark suite: the CLI runs end to end and writes a complete, sane JSON; its pieces measure what they claim."""

import json
import subprocess
import sys

import numpy as np
import torch

from worldmodel.bench.alternatives import TEACHER_STEPS, kv_vs_recompute, teacher_step
from worldmodel.bench.floor import count_flops
from worldmodel.bench.generation import Rollout, memory_row
from worldmodel.config import model_config
from worldmodel.dit import WorldDiT

SECTIONS = ("end_to_end", "memory", "kv_vs_recompute", "sampler", "vae_decoder", "variants", "compute_floor",
            "targets")


def test_quick_cli_writes_json_with_machine_and_positive_rows(tmp_path):
    """`python -m worldmodel.bench --quick --json` exits 0, and every measured row holds positive numbers.

    One thread: on a shared CI machine two intra-op threads can make this run ten times slower.
    """
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, "-m", "worldmodel.bench", "--quick", "--threads", "1", "--json", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "== end_to_end ==" in proc.stdout
    result = json.loads(out.read_text())
    assert {"machine", "torch_version", "device", "sections", "date", "command"} <= set(result)
    assert result["machine"]["cpu"] and result["machine"]["cpu_cores"] >= 1
    assert result["torch_version"] == torch.__version__
    assert set(SECTIONS) <= set(result["sections"])
    e2e = result["sections"]["end_to_end"][0]
    for key in ("decoded_fps", "step_p50_ms", "step_p95_ms", "transformer_p50_ms", "decode_p50_ms"):
        assert e2e[key] > 0, key
    assert e2e["step_p95_ms"] >= e2e["step_p50_ms"]
    for name in ("kv_vs_recompute", "sampler", "vae_decoder"):
        rows = result["sections"][name]
        assert rows, name
        for row in rows:
            numbers = [v for v in row.values() if isinstance(v, (int, float)) and not isinstance(v, bool)]
            assert numbers and all(v > 0 for v in numbers), (name, row)
    floor = {r["name"]: r for r in result["sections"]["compute_floor"]}
    assert floor["bundled tiny transformer"]["gflops"] > 0 and floor["bundled tiny decode"]["gflops"] > 0
    if result["device"] == "cpu":  # GPU rows must say why they are empty rather than carry made-up numbers
        assert "not measured" in result["sections"]["end_to_end"][1]["note"]


def test_env_bench_cli_measures_the_vector_env(tmp_path):
    """`python -m envs.bench --quick --json` (the env benchmark, moved out of worldmodel.bench so that worldmodel
    never imports envs) runs make_vec for each precision and N, interleaved, and writes positive rates, the cost per
    env step against N=1 and the transformer's FLOPs."""
    out = tmp_path / "envs.json"
    proc = subprocess.run([sys.executable, "-m", "envs.bench", "--quick", "--threads", "1", "--obs-mode", "latent",
                           "--precision", "float32", "bfloat16", "--json", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "cost per env vs N=1" in proc.stdout
    result = json.loads(out.read_text())
    rows = result["sections"]["vector_env"]
    assert [(r["precision"], r["num_envs"]) for r in rows] == [("float32", 1), ("float32", 2), ("bfloat16", 1),
                                                              ("bfloat16", 2)]
    assert "make_vec" in result["settings"]["via"] and result["settings"]["interleaved"]
    for row in rows:
        assert row["env_steps_per_s"] > 0 and row["frames_per_s"] > 0 and row["step_p50_ms"] > 0, row
        assert row["transformer_gflops"] > row["attention_gflops"] > 0 and row["transformer_floor_ms"] > 0, row
    assert [r["cost_per_env_vs_n1"] for r in rows if r["num_envs"] == 1] == [1.0, 1.0]
    assert rows[1]["transformer_gflops"] == 2 * rows[0]["transformer_gflops"], "FLOPs are linear in N"
    assert "vector_env" not in subprocess.run([sys.executable, "-m", "worldmodel.bench", "--help"], capture_output=True,
                                              text=True, timeout=120).stdout


def small_model(window: int = 3) -> WorldDiT:
    torch.manual_seed(0)
    return WorldDiT(model_config("tiny", dim=32, depth=2, heads=2, window=window)).eval()


def test_flop_count_includes_attention_on_cpu():
    """CPU attention FLOPs are counted (torch's counter only knows the CUDA kernels): 4 * B * H * Lq * Lk * d."""
    q = torch.randn(1, 2, 8, 16)
    k = torch.randn(1, 2, 32, 16)
    flops = count_flops(lambda: torch.nn.functional.scaled_dot_product_attention(q, k, k))
    assert flops == 4 * 2 * 8 * 32 * 16


def test_kv_vs_recompute_attends_sink_window_and_new_frame():
    """Each window row recomputes sink + window + the new frame, and both timings are positive."""
    rows = kv_vs_recompute(small_model(), (4, 4), windows=[1, 3], repeats=1)
    assert [r["frames_attended"] for r in rows] == [3, 5]
    assert all(r["kv_cache_ms"] > 0 and r["recompute_ms"] > 0 for r in rows)


def test_teacher_sampler_makes_32_evaluations_and_commits_one_frame():
    """The teacher's cost model is 32 evaluations of one frame, of which only the last advances the cache."""
    model = small_model()
    cache = model.new_cache(1, (4, 4))
    calls = []
    real = model.forward_step

    def counting(*args, **kwargs):
        calls.append(kwargs.get("advance", True))
        return real(*args, **kwargs)

    model.forward_step = counting
    x = torch.randn(1, 16, 4, 4)
    out = teacher_step(model, cache, x, torch.zeros_like(x), torch.zeros(1, 24, 4, 4))
    assert len(calls) == TEACHER_STEPS and calls == [False] * (TEACHER_STEPS - 1) + [True]
    assert cache.frames.tolist() == [1]
    assert out.shape == x.shape and torch.isfinite(out).all()


def test_memory_row_flags_growth():
    """A rollout whose memory climbs 1 MB per step is not flat; a constant one is."""
    flat = Rollout(memory_bytes=[100 * 2**20] * 40, peak_bytes=100 * 2**20)
    growing = Rollout(memory_bytes=[(100 + i) * 2**20 for i in range(40)], peak_bytes=139 * 2**20)
    assert memory_row("a", flat, "RSS")["flat"]
    row = memory_row("b", growing, "RSS")
    assert not row["flat"] and np.isclose(row["growth_mb"], 30.0)
