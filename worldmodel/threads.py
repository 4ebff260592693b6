"""How many CPU threads torch should use: one rule shared by the env, viewer, eval, training and bench.

On a machine whose cores are already busy, torch's intra-op threads wait on each other at
every op: with 2 threads on a loaded 2-core box a world step took 4-18x longer than with 1.
So the default is one thread per idle core as the load average tells them (at least 1, at most
torch's own choice); BENCHMARKS.md, "Default thread count", has the measurements behind it.
An explicit count always wins.
"""

from __future__ import annotations

import math
import os

import torch


BUSY_SLACK = 0.25
"""Load average a core may carry and still count as idle (background noise of an otherwise quiet machine)."""


def choose_threads(requested: int | None = None) -> tuple[int, str]:
    """The thread count to use and why: `requested` if given, else one per idle core (at least 1, at most
    torch's default), where a core counts as busy once the 1-minute load average shows more than
    `BUSY_SLACK` of it."""
    if requested is not None:
        if isinstance(requested, bool) or not isinstance(requested, int) or requested < 1:
            raise ValueError(f"threads must be a positive int or None, got {requested!r}")
        return requested, "requested"
    cores, load = os.cpu_count() or 1, os.getloadavg()[0]
    idle = cores - max(0, math.ceil(load - BUSY_SLACK))
    if idle >= torch.get_num_threads():
        return torch.get_num_threads(), "torch default"
    n = max(1, idle)
    return n, f"load {load:.1f} on {cores} cores: {n} thread{'s' * (n > 1)}; pass a thread count to override"


def use_threads(requested: int | None = None) -> int:
    """Set torch's CPU thread count by `choose_threads` and return it."""
    n, _ = choose_threads(requested)
    torch.set_num_threads(n)
    return n
