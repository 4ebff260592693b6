"""Which streams of a batch a call applies to: one rule for the generator, the memory and the world."""

from __future__ import annotations

from collections.abc import Sequence


def stream_indices(streams: Sequence[int] | None, batch: int) -> list[int]:
    """The stream indices a per-stream call names (None: every stream of the batch), checked to be in range."""
    if streams is None:
        return list(range(batch))
    idx = [int(i) for i in streams]
    bad = [i for i in idx if not 0 <= i < batch]
    if bad:
        raise ValueError(f"stream indices {bad} are out of range for a batch of {batch} streams")
    if len(set(idx)) != len(idx):
        raise ValueError(f"stream indices {idx} name a stream twice")
    return idx
