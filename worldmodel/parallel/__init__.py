"""Scale-out training beside the model: FSDP2, Ulysses context parallelism, activation
checkpointing, distributed checkpoints and a memory planner (docs/distributed.md)."""

from worldmodel.parallel.parallelize import ParallelConfig, build_mesh, data_parallel_rank, parallelize, reshard

__all__ = ["ParallelConfig", "build_mesh", "data_parallel_rank", "parallelize", "reshard"]
