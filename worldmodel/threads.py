"""How many CPU threads torch should use: one rule shared by the env, viewer, eval, training and bench.

On a machine whose cores are already busy, torch's intra-op threads wait on each other at
every op: with 2 threads on a loaded 2-core box a world step took 4-18x longer than with 1.
So the default is 1 thread when the load average says the cores are taken, and torch's own
choice otherwise. An explicit count always wins.
"""

from __future__ import annotations

import os

import torch


def choose_threads(requested: int | None = None) -> tuple[int, str]:
    """The thread count to use and why: `requested` if given, else 1 on a busy machine, else torch's choice."""
    if requested is not None:
        if isinstance(requested, bool) or not isinstance(requested, int) or requested < 1:
            raise ValueError(f"threads must be a positive int or None, got {requested!r}")
        return requested, "requested"
    cores, load = os.cpu_count() or 1, os.getloadavg()[0]
    if load >= cores - 0.5:
        return 1, f"machine busy (load {load:.1f} on {cores} cores): 1 thread; pass a thread count to override"
    return torch.get_num_threads(), "torch default"


def use_threads(requested: int | None = None) -> int:
    """Set torch's CPU thread count by `choose_threads` and return it."""
    n, _ = choose_threads(requested)
    torch.set_num_threads(n)
    return n
