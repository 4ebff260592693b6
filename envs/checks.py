"""Argument checks shared by the envs' reset(): nothing is coerced silently, everything else is a ValueError."""

from __future__ import annotations

import numpy as np


def check_seed(seed: object, what: str = "seed") -> int | None:
    """None, or a non-negative int seed (numpy ints accepted); anything else is a ValueError."""
    if seed is None:
        return None
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"{what}={seed!r} ({type(seed).__name__}): expected None or an int >= 0")
    return int(seed)


def check_index(value: object, what: str) -> int:
    """An int (numpy ints accepted; no bool, float or str): nothing is coerced silently."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{what}={value!r} ({type(value).__name__}): expected an int")
    return int(value)
