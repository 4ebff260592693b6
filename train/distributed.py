"""Launch helpers: one code path for `python -m train ...` and `torchrun --nproc_per_node=N -m train ...`.

`init_distributed()` reads the environment torchrun sets (RANK, WORLD_SIZE, LOCAL_RANK,
MASTER_ADDR, MASTER_PORT), picks NCCL on CUDA and gloo on CPU, binds this process to its
GPU, and returns a `DistInfo`. Without those variables it returns a single-process
`DistInfo` and initialises nothing, so every stage also runs as a plain `python` process.

Usage in a training stage:

    dist_info = init_distributed()
    try:
        ...  # build model, parallelize(model, cfg, mesh), train; log only if dist_info.is_main
    finally:
        destroy()
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in the job."""

    rank: int
    """Global rank in [0, world_size)."""
    world_size: int
    """Number of processes in the job (1 without torchrun)."""
    local_rank: int
    """Rank on this machine; the CUDA device index."""
    device: torch.device
    """The device this process computes on (cuda:local_rank, or cpu)."""
    is_main: bool
    """True on rank 0: the only rank that logs, shows progress and writes single-file exports."""

    @property
    def distributed(self) -> bool:
        """True when a process group is live (world_size > 1 or launched by torchrun)."""
        return dist.is_available() and dist.is_initialized()


def launched_by_torchrun() -> bool:
    """True when the torchrun environment variables are present."""
    return all(v in os.environ for v in TORCHRUN_VARS)


def init_distributed(backend: str | None = None, device: str | None = None, timeout_s: float = 1800.0) -> DistInfo:
    """Initialise torch.distributed from torchrun's environment, or fall back to one process.

    `backend` defaults to "nccl" when CUDA is available and "gloo" otherwise; `device`
    ("cuda" / "cpu") overrides the device choice (e.g. force CPU on a GPU machine).
    Calling it again when a group is already live returns the same info.
    """
    use_cuda = torch.cuda.is_available() if device is None else device.startswith("cuda")
    if device is not None and device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("device='cuda' was requested but CUDA is not available; pass device='cpu'")
    if not launched_by_torchrun():
        dev = torch.device("cuda", 0) if use_cuda else torch.device("cpu")
        if use_cuda:
            torch.cuda.set_device(dev)
        return DistInfo(rank=0, world_size=1, local_rank=0, device=dev, is_main=True)
    rank, world, local = (int(os.environ[v]) for v in TORCHRUN_VARS)
    if use_cuda:
        if local >= torch.cuda.device_count():
            raise RuntimeError(
                f"LOCAL_RANK={local} but this machine has {torch.cuda.device_count()} GPUs; "
                "set --nproc_per_node to at most the number of GPUs"
            )
        dev = torch.device("cuda", local)
        torch.cuda.set_device(dev)
    else:
        dev = torch.device("cpu")
    if not dist.is_initialized():
        backend = backend or ("nccl" if use_cuda else "gloo")
        kwargs = {"device_id": dev} if backend == "nccl" else {}
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s), **kwargs)
    return DistInfo(rank=rank, world_size=world, local_rank=local, device=dev, is_main=rank == 0)


def is_main() -> bool:
    """True on rank 0, or when no process group is live."""
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def barrier() -> None:
    """Wait for every rank; a no-op in one process."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def destroy() -> None:
    """Tear the process group down; a no-op in one process."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
