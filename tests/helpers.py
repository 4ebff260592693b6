"""Plain helpers shared by the test files and the torchrun workers (which cannot take fixtures).

Test files import them as `from helpers import tiny_dit`: pytest puts tests/ on sys.path, and a
worker run as `python tests/x.py` has it as its script folder. Weight noise and memory probes
are the package's own (`worldmodel.bench.common.perturb_`, `rss_bytes`).
"""

from __future__ import annotations

import torch

from worldmodel.bench.common import perturb_
from worldmodel.config import model_config
from worldmodel.dit import WorldDiT


def tiny_dit(
    scale: float = 0.02, seed: int | None = 0, noise_seed: int | None = None, device: str = "cpu", **over
) -> WorldDiT:
    """A tiny WorldDiT (dim 64, depth 2, 4 heads unless `over` says otherwise) on `device`, moved off its
    adaLN-Zero init by `perturb_(model, scale, noise_seed)` so every path carries signal.

    `seed` seeds the global RNG before the model is built (None: build from the RNG as it stands);
    `noise_seed` None draws the noise from the global RNG too.
    """
    if seed is not None:
        torch.manual_seed(seed)
    model = WorldDiT(model_config("tiny", **{"dim": 64, "depth": 2, "heads": 4, **over})).to(device)
    perturb_(model, scale, noise_seed)
    return model
