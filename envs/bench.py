"""Env throughput: env steps and decoded frames per second of `worldmodel/World-v0` for N parallel envs.

    python -m envs.bench                          # N = 1 4 16 on the bundled world
    python -m envs.bench --quick --json out.json  # seconds; for tests
    python -m envs.bench --envs 1 8 --checkpoint world.safetensors
    python -m envs.bench --envs 1 16 64 --threads 1 --obs-mode latent   # agents' cost: no decode

Every row goes through `gymnasium.make_vec("worldmodel/World-v0", num_envs=N)`, i.e. the batched
vector env (one transformer evaluation and one decode per step for all N). It lives next to the
envs because it measures them: `worldmodel.bench` (the model's benchmark) must not import envs.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import gymnasium
import numpy as np
import torch

import envs  # noqa: F401 (registers worldmodel/World-v0)
from worldmodel.bench.common import Row, bundled_world, latency_stats, machine_info, random_actions, time_repeats
from worldmodel.threads import choose_threads
from worldmodel.world import World

ENV_ID = "worldmodel/World-v0"


def vector_stepper(
    world: World, checkpoint: str | None, n: int, steps: int, obs_mode: str = "frames"
) -> tuple[Callable[[], Any], Callable[[], None]]:
    """A step function over `gymnasium.make_vec` with in-bounds random actions, and its close."""
    source = {"checkpoint": checkpoint} if checkpoint else {"world": world}
    env = gymnasium.make_vec(ENV_ID, num_envs=n, threads=torch.get_num_threads(), obs_mode=obs_mode, **source)
    env.reset(seed=0)
    low, high = env.single_action_space.low, env.single_action_space.high
    actions = iter(np.clip(random_actions(steps, n), low, high).astype(env.single_action_space.dtype))
    return lambda: env.step(next(actions)), env.close


def vector_env_rows(world: World, checkpoint: str | None, sizes: Sequence[int], repeats: int,
                    warmup: int = 2, obs_mode: str = "frames") -> list[Row]:
    """Env steps/s and frames/s (generated; decoded unless obs_mode='latent') for each number of parallel envs N."""
    rows = []
    for n in sizes:
        step, close = vector_stepper(world, checkpoint, n, warmup + repeats, obs_mode)
        try:
            ts = time_repeats(step, world.device, repeats, warmup)
        finally:
            close()
        mean = float(np.mean(ts))
        rows.append({
            "name": f"N={n}",
            "num_envs": n,
            "obs_mode": obs_mode,
            "env_steps_per_s": n / mean,
            "frames_per_s": n * world.frames_per_step / mean,
            **latency_stats(ts, "step_"),
        })
    return rows


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
    p.add_argument("--warmup", type=int, help="untimed steps per N first (default 2; --quick 1)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: worldmodel.threads' choice)")
    p.add_argument("--obs-mode", choices=("frames", "frame", "latent"), default="frames",
                   help="observation mode (latent: no VAE decode)")
    p.add_argument("--quick", action="store_true", help="tiny sizes (seconds; for tests); numbers are rough")
    p.add_argument("--json", metavar="PATH", help="also write the rows, the machine and the settings to this JSON file")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """CLI entry: time each N, print one line per row, optionally write the JSON; returns the result."""
    a = parse_args(argv)
    sizes = a.envs or ([1, 2] if a.quick else [1, 4, 16])
    repeats = a.repeats or (1 if a.quick else 5)
    warmup = a.warmup if a.warmup is not None else (1 if a.quick else 2)
    threads, why = choose_threads(a.threads)
    torch.set_num_threads(threads)
    world, weights, checkpoint = bundled_world(a.checkpoint)
    rows = vector_env_rows(world, checkpoint, sizes, repeats, warmup, a.obs_mode)
    for r in rows:
        print(f"{r['name']:>6}  {r['env_steps_per_s']:8.1f} env steps/s  {r['frames_per_s']:8.1f} frames/s  "
              f"step p50 {r['step_p50_ms']:.1f} ms  p95 {r['step_p95_ms']:.1f} ms")
    result = {
        "benchmark": "envs.bench",
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": "python -m envs.bench " + " ".join(sys.argv[1:]),
        "machine": machine_info(world.device),
        "torch_version": torch.__version__,
        "settings": {"envs": sizes, "repeats": repeats, "warmup": warmup, "threads": threads, "threads_reason": why,
                     "weights": weights, "obs_mode": a.obs_mode, "via": f"gymnasium.make_vec('{ENV_ID}')"},
        "sections": {"vector_env": rows},
    }
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
