"""Env throughput: env steps and decoded frames per second of `worldmodel/World-v0` for N parallel envs.

    python -m envs.bench                          # N = 1 4 16 on the bundled world
    python -m envs.bench --quick --json out.json  # seconds; for tests
    python -m envs.bench --envs 1 8 --checkpoint world.safetensors
    python -m envs.bench --envs 1 16 64 --threads 1 --obs-mode latent --precision float32 bfloat16

Every row goes through `gymnasium.make_vec("worldmodel/World-v0", num_envs=N)`, i.e. the batched
vector env (one transformer evaluation and one decode per step for all N). All configurations
(precision x N) are built first and their timed steps interleaved (one step of each in turn), so
a change in the load of a shared machine hits every row alike. Compare thread counts in separate
runs: interleaved, a step after a 2-thread one finds OpenMP's worker still spinning on the other
core (it made 1-thread N=1 steps 5x slower). The warm-up fills the KV window (steady state: every
step attends over the same keys, as in a long episode). `cost per env vs N=1` is a row's time per
env step over that of the N = 1 row of the same precision (medians): 1/N would be perfect batching.
`floor/env` is the row's transformer FLOPs per env at the speed of a large matmul (bfloat16 for the
linear layers of a bfloat16 row, float32 for attention).

It lives next to the envs because it measures them: `worldmodel.bench` (the model's benchmark)
must not import envs.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import gymnasium
import numpy as np
import torch

import envs  # noqa: F401 (registers worldmodel/World-v0)
from envs.world import PRECISIONS
from torch.utils.flop_counter import FlopCounterMode

from worldmodel.bench.alternatives import frame_inputs
from worldmodel.bench.common import Row, bundled_world, latency_stats, machine_info, random_actions, timed
from worldmodel.bench.floor import EXTRA_FORMULAS, matmul_rate
from worldmodel.threads import choose_threads
from worldmodel.world import World

ENV_ID = "worldmodel/World-v0"


def vector_stepper(
    world: World, checkpoint: str | None, n: int, steps: int, obs_mode: str = "frames", precision: str = "float32"
) -> tuple[Callable[[], Any], Callable[[], None]]:
    """A step function over `gymnasium.make_vec` with in-bounds random actions, and its close."""
    source = {"checkpoint": checkpoint} if checkpoint else {"world": world}
    env = gymnasium.make_vec(ENV_ID, num_envs=n, threads=torch.get_num_threads(), obs_mode=obs_mode,
                             precision=precision, **source)
    env.reset(seed=0)
    low, high = env.single_action_space.low, env.single_action_space.high
    actions = iter(np.clip(random_actions(steps, n), low, high).astype(env.single_action_space.dtype))
    return lambda: env.step(next(actions)), env.close


def interleaved_times(steppers: Sequence[Callable[[], Any]], device: torch.device, repeats: int,
                      warmup: int) -> list[list[float]]:
    """Seconds per call of each stepper: `warmup` untimed calls each, then `repeats` rounds of one timed call each."""
    for step in steppers:
        for _ in range(warmup):
            step()
    times: list[list[float]] = [[] for _ in steppers]
    for _ in range(repeats):
        for ts, step in zip(times, steppers, strict=True):
            ts.append(timed(step, device)[0])
    return times


def vector_env_rows(world: World, checkpoint: str | None, sizes: Sequence[int], repeats: int,
                    warmup: int = 2, obs_mode: str = "frames", precisions: Sequence[str] = ("float32",),
                    floor_rates: dict[str, float] | None = None) -> list[Row]:
    """Env steps/s, frames/s (generated; decoded unless obs_mode='latent'), cost per env vs N=1 and, with
    `floor_rates` (FLOP/s per precision), the transformer's FLOPs and floor, per (precision, N), timed interleaved."""
    configs = [(p, n) for p in precisions for n in sizes]
    steppers, closers = [], []
    try:
        for p, n in configs:
            step, close = vector_stepper(world, checkpoint, n, warmup + repeats, obs_mode, p)
            steppers.append(step)
            closers.append(close)
        times = interleaved_times(steppers, world.device, repeats, warmup)
    finally:
        for close in closers:
            close()
    means = {c: float(np.mean(ts)) for c, ts in zip(configs, times, strict=True)}
    medians = {c: float(np.median(ts)) for c, ts in zip(configs, times, strict=True)}
    flops = {n: transformer_flops(world, n) for n in sizes} if floor_rates else {}
    rows = []
    threads = torch.get_num_threads()
    for (p, n), ts in zip(configs, times, strict=True):
        mean = means[(p, n)]
        row = {
            "name": f"N={n} {p}",
            "num_envs": n,
            "threads": threads,
            "obs_mode": obs_mode,
            "precision": p,
            "env_steps_per_s": n / mean,
            "frames_per_s": n * world.frames_per_step / mean,
            # Medians: a shared machine's load spikes hit a few steps, and N=1 steps are short enough to feel them most.
            "ms_per_env_step": 1000 * medians[(p, n)] / n,
            "cost_per_env_vs_n1": medians[(p, n)] / n / medians[(p, 1)] if (p, 1) in medians else None,
            **latency_stats(ts, "step_"),
        }
        if floor_rates:  # attention runs in float32 at every precision (`attention.cached_attention`)
            f = flops[n]
            row["transformer_gflops"] = (f["attention"] + f["other"]) / 1e9
            row["attention_gflops"] = f["attention"] / 1e9
            row["transformer_floor_ms"] = 1000 * (f["other"] / floor_rates[p] + f["attention"] / floor_rates["float32"])
        rows.append(row)
    return rows


@torch.no_grad()
def transformer_flops(world: World, n: int) -> dict[str, int]:
    """FLOPs of one transformer step of n streams over a full KV window: "attention" and "other" (linear layers)."""
    model = world.dit
    cache = model.new_cache(n, world.latent_hw)
    noisy, recycled, camera = frame_inputs(model, n, world.latent_hw)
    with FlopCounterMode(display=False, custom_mapping=EXTRA_FORMULAS) as counter:
        model.forward_step(noisy, recycled, camera, 1.0, cache)
    attention = sum(f for op, f in counter.get_flop_counts()["Global"].items() if "scaled_dot_product" in str(op))
    return {"attention": int(attention), "other": int(counter.get_total_flops() - attention)}


def floor_rates(device: torch.device, precisions: Sequence[str], n: int) -> dict[str, float]:
    """Best FLOP/s of an (n x n) matmul in float32 and in each precision (bfloat16 rows run their linear layers
    in bfloat16, their attention in float32)."""
    return {p: matmul_rate(device, PRECISIONS[p] or torch.float32, n) for p in {"float32", *precisions}}


def print_rows(rows: Sequence[Row]) -> None:
    """One line per row."""
    print(f"{'precision':>9} {'N':>4} {'env steps/s':>11} {'frames/s':>9} {'step p50':>9} {'p95':>9} "
          f"{'per env':>8} {'cost per env vs N=1':>19} {'floor/env':>9}")
    for r in rows:
        vs = "" if r["cost_per_env_vs_n1"] is None else f"{r['cost_per_env_vs_n1']:.3f}"
        floor = f"{r['transformer_floor_ms'] / r['num_envs']:.2f} ms" if "transformer_floor_ms" in r else ""
        print(f"{r['precision']:>9} {r['num_envs']:>4} {r['env_steps_per_s']:11.1f} {r['frames_per_s']:9.1f} "
              f"{r['step_p50_ms']:6.1f} ms {r['step_p95_ms']:6.1f} ms {r['ms_per_env_step']:5.2f} ms "
              f"{vs:>19} {floor:>9}")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line; `--quick` is a seconds-long smoke run."""
    p = argparse.ArgumentParser(
        prog="python -m envs.bench", description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--checkpoint", metavar="PATH",
                   help="world file (default: the bundled world; random weights if it is missing)")
    p.add_argument("--envs", type=int, nargs="+", help="numbers of parallel envs (default 1 4 16; --quick 1 2)")
    p.add_argument("--repeats", type=int, help="timed steps per N (default 5; --quick 1)")
    p.add_argument("--warmup", type=int,
                   help="untimed steps per N first (default: the world's window + 2, which fills the KV window; --quick 1)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: worldmodel.threads' choice)")
    p.add_argument("--obs-mode", choices=("frames", "frame", "latent"), default="frames",
                   help="observation mode (latent: no VAE decode)")
    p.add_argument("--precision", choices=tuple(PRECISIONS), nargs="+", default=["float32"],
                   help="the envs' precision, one row per N for each (default float32)")
    p.add_argument("--quick", action="store_true", help="tiny sizes (seconds; for tests); numbers are rough")
    p.add_argument("--json", metavar="PATH", help="also write the rows, the machine and the settings to this JSON file")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """CLI entry: time each (precision, N) interleaved, print one line per row, optionally write the JSON."""
    a = parse_args(argv)
    sizes = a.envs or ([1, 2] if a.quick else [1, 4, 16])
    repeats = a.repeats or (1 if a.quick else 5)
    threads, why = choose_threads(a.threads)
    torch.set_num_threads(threads)
    world, weights, checkpoint = bundled_world(a.checkpoint)
    warmup = a.warmup if a.warmup is not None else (1 if a.quick else world.cfg.window + 2)
    load_before = os.getloadavg()
    rates = floor_rates(world.device, a.precision, 256 if a.quick else 2048)
    rows = vector_env_rows(world, checkpoint, sizes, repeats, warmup, a.obs_mode, a.precision, rates)
    print_rows(rows)
    result = {
        "benchmark": "envs.bench",
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": "python -m envs.bench " + " ".join(sys.argv[1:]),
        "machine": machine_info(world.device),
        "torch_version": torch.__version__,
        "settings": {"envs": sizes, "repeats": repeats, "warmup": warmup, "threads": threads, "threads_reason": why,
                     "weights": weights, "obs_mode": a.obs_mode, "precisions": a.precision, "interleaved": True,
                     "load_average_before": [round(x, 2) for x in load_before],
                     "load_average_after": [round(x, 2) for x in os.getloadavg()],
                     "matmul_flops_per_s": rates, "via": f"gymnasium.make_vec('{ENV_ID}')"},
        "sections": {"vector_env": rows},
    }
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
