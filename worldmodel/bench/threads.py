"""Is the default thread count fast? End-to-end speed of the bundled world at each thread count.

    python -m worldmodel.bench.threads                 # under the machine's current load
    python -m worldmodel.bench.threads --busy 2        # with 2 spinning processes beside it

It times the default (`worldmodel.threads.choose_threads(None)`, what the env, viewer, eval and
training use when no count is given) against every count from 1 to the core count, and prints
default / best. `--busy N` emulates a shared machine: N processes spin on the CPU, and the run
waits (up to 2 minutes) for the load average to show them before deciding the default.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import time
from typing import Any


def _spin() -> None:
    """Burn one core until killed."""
    while True:
        pass


def wait_for_load(target: float, timeout_s: float = 120.0) -> float:
    """Block until the 1-minute load average reaches `target` (or the timeout); returns it."""
    end = time.monotonic() + timeout_s
    while os.getloadavg()[0] < target and time.monotonic() < end:
        time.sleep(2.0)
    return os.getloadavg()[0]


def measure(steps: int, warmup: int) -> dict[str, Any]:
    """Decoded fps at the default thread count and at each count 1..cores, in one process."""
    import torch

    from worldmodel.bench.common import bundled_world, machine_info
    from worldmodel.bench.variants import thread_rows
    from worldmodel.threads import choose_threads

    default, why = choose_threads(None)
    world, note, _ = bundled_world()
    rows = thread_rows(world, sorted({default, *range(1, (os.cpu_count() or 1) + 1)}), steps, warmup)
    best = max(rows, key=lambda r: r["decoded_fps"])
    chosen = next(r for r in rows if r["threads"] == default)
    return {"machine": machine_info(torch.device("cpu")), "default_threads": default, "default_reason": why,
            "rows": rows, "best_threads": best["threads"],
            "best_over_default": best["decoded_fps"] / chosen["decoded_fps"], "note": note}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m worldmodel.bench.threads", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--busy", type=int, default=0, help="spinning processes to start beside the run (default 0)")
    p.add_argument("--steps", type=int, default=30, help="timed steps per thread count (default 30)")
    p.add_argument("--warmup", type=int, default=6, help="untimed steps first (default 6)")
    p.add_argument("--json", help="also write the result here")
    a = p.parse_args(argv)
    hogs = [mp.Process(target=_spin, daemon=True) for _ in range(a.busy)]
    for h in hogs:
        h.start()
    try:
        if hogs:
            print(f"load average {wait_for_load((os.cpu_count() or 1) - 0.5):.2f} with {a.busy} spinning processes")
        result = measure(a.steps, a.warmup)
    finally:
        for h in hogs:
            h.kill()
    result["busy_processes"] = a.busy
    for r in result["rows"]:
        print(f"{r['name']:>10}: {r['decoded_fps']:6.1f} decoded fps, p50 step {r['step_p50_ms']:.0f} ms")
    print(f"default {result['default_threads']} ({result['default_reason']}); "
          f"best {result['best_threads']}; best/default fps = {result['best_over_default']:.2f}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
