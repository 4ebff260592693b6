"""Apply scale-out training to a WorldDiT, beside the model (the torchtitan order).

    mesh  = build_mesh(dp_shard=-1, cp=2, device_type="cuda")   # (dp_shard, cp) ranks
    model = parallelize(WorldDiT(cfg), ParallelConfig(cp=2, zero=3), mesh)

In order: Ulysses context parallelism on the CP sub-mesh, per-block activation
checkpointing, optional `torch.compile` per block, then FSDP2 `fully_shard` on every
block and at the root, sharding parameters over all dp_shard x cp ranks. The model has
no branch for any of them: context parallelism is hooks that shard the token stream at the
block stack's entry and gather it at its exit, plus the attention callable each block
runs its heads through (`UlyssesAttention`); checkpointing is hooks on each block. ZeRO-3
(`zero=3`, default) frees the gathered parameters after each forward; ZeRO-2 (`zero=2`,
`reshard_after_forward=False`) keeps them gathered until backward, which is what the
generator wants during student forcing (dozens of `forward_step` calls per rollout).
On CUDA with `mixed_precision` the parameters compute in bf16 and gradients reduce in fp32.

Data: ranks of one CP group must see the same batch; `data_parallel_rank(mesh)` is the
(rank, world_size) to hand to the data loader.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh

from worldmodel.parallel.ulysses import UlyssesAttention, UlyssesGroup

# Methods besides forward() that run parameters and must unshard them under FSDP2.
BLOCK_METHODS = ("step", "context_qkv", "context_out")
ROOT_METHODS = ("forward_step", "prefill_context")


@dataclass
class ParallelConfig:
    """How one model is spread over the ranks of a job (a hydra structured config)."""

    dp_shard: int = -1
    """Data-parallel ranks that shard parameters (FSDP); -1 = world_size / cp."""
    cp: int = 1
    """Context-parallel ranks per sample (Ulysses); the clip's latent frames must divide by it."""
    zero: int = 3
    """3: reshard parameters after forward (ZeRO-3); 2: keep them gathered until backward (ZeRO-2)."""
    activation_checkpointing: bool = False
    """Recompute each transformer block in backward instead of storing its activations."""
    compile: bool = False
    """torch.compile each transformer block (CUDA; on CPU it works but is slow to compile)."""
    mixed_precision: bool = True
    """On CUDA: bf16 parameters in compute, fp32 gradient reduction. Ignored on CPU (fp32 throughout)."""

    def __post_init__(self) -> None:
        if self.zero not in (2, 3):
            raise ValueError(f"zero={self.zero}; expected 2 (reshard after backward) or 3 (reshard after forward)")
        if self.cp < 1:
            raise ValueError(f"cp={self.cp} must be >= 1")
        if self.dp_shard == 0 or self.dp_shard < -1:
            raise ValueError(f"dp_shard={self.dp_shard}; expected a positive rank count or -1 (= world_size / cp)")


def build_mesh(dp_shard: int = -1, cp: int = 1, device_type: str | None = None) -> DeviceMesh | None:
    """A (dp_shard, cp) DeviceMesh over the live process group, or None in one process.

    CP is the inner (fastest-varying) dimension, so the ranks of one CP group are
    neighbours (the same machine under torchrun): the all-to-alls stay on NVLink.
    """
    if not (dist.is_available() and dist.is_initialized()):
        if dp_shard not in (-1, 1) or cp != 1:
            raise ValueError(
                f"dp_shard={dp_shard}, cp={cp} needs a process group; launch with torchrun "
                "(see docs/distributed.md) or use dp_shard=-1, cp=1 in one process"
            )
        return None
    world = dist.get_world_size()
    if dp_shard == -1:
        if world % cp:
            raise ValueError(f"world_size={world} is not divisible by cp={cp}; pick cp dividing the number of ranks")
        dp_shard = world // cp
    if dp_shard * cp != world:
        raise ValueError(f"dp_shard={dp_shard} x cp={cp} = {dp_shard * cp} ranks, but the job has {world}")
    device_type = device_type or ("cuda" if torch.cuda.is_available() else "cpu")
    return init_device_mesh(device_type, (dp_shard, cp), mesh_dim_names=("dp_shard", "cp"))


def data_parallel_rank(mesh: DeviceMesh | None) -> tuple[int, int]:
    """(rank, world_size) for the data loader: CP ranks of one sample share a data rank."""
    if mesh is None:
        return 0, 1
    return mesh.get_local_rank("dp_shard"), mesh.size(mesh.mesh_dim_names.index("dp_shard"))


def fsdp_mesh(mesh: DeviceMesh) -> DeviceMesh:
    """The 1D mesh FSDP shards over: every rank (dp_shard x cp flattened)."""
    if mesh.ndim == 1:
        return mesh
    # DeviceMesh._flatten is how torchtitan builds its dp_shard_cp mesh; it reuses the ranks' groups.
    return mesh._flatten("dp_shard_cp")


def parallelize(model: nn.Module, cfg: ParallelConfig, mesh: DeviceMesh | None) -> nn.Module:
    """Apply context parallelism, per-block activation checkpointing, compile and FSDP2 to a WorldDiT; returns it.

    With `mesh=None` (one process) only checkpointing and compile apply. The model may sit
    on CPU, CUDA or the meta device (then call `model.to_empty(device=...)` and
    `model.reset_parameters()` after, as FSDP2 expects for large models).
    """
    blocks = getattr(model, "blocks", None)
    if not isinstance(blocks, nn.ModuleList):
        raise TypeError(f"parallelize expects a model with a `blocks` ModuleList (WorldDiT), got {type(model).__name__}")
    if mesh is not None and tuple(mesh.mesh_dim_names or ()) != ("dp_shard", "cp"):
        raise ValueError(f"mesh dims {mesh.mesh_dim_names}; build it with build_mesh(dp_shard, cp, device_type)")
    cp_size = 1 if mesh is None else mesh.size(1)
    if cp_size != cfg.cp:
        raise ValueError(f"ParallelConfig.cp={cfg.cp} but the mesh has cp={cp_size}; build the mesh from the same config")

    if cfg.cp > 1:
        apply_context_parallel(model, UlyssesGroup(mesh.get_group("cp"), model.cfg.heads))
    if cfg.activation_checkpointing:
        apply_activation_checkpointing(model)
    if cfg.compile:
        for blk in blocks:
            blk.compile()  # in place: keeps the module tree (and state-dict keys) unchanged
    if mesh is not None:
        apply_fsdp(model, cfg, fsdp_mesh(mesh))
    return model


def apply_context_parallel(model: nn.Module, group: UlyssesGroup) -> None:
    """Ulysses over `group`: each rank runs the blocks on its share of the tokens, attention on its heads.

    The whole inputs reach every rank; the hooks on the block stack shard the token stream
    after the embeddings and gather it before the output layer, so embeddings, losses and
    callers are those of one process, and each block's attention callable does the all-to-alls.
    """
    if getattr(model.blocks, "_ulysses", None) is not None:
        raise ValueError("context parallelism is already applied to this model")
    attention = UlyssesAttention(group)
    for blk in model.blocks:
        blk.attention = attention
    model.blocks.register_forward_pre_hook(group.shard_stream)
    model.blocks.register_forward_hook(group.gather_stream)
    model.blocks._ulysses = group


def apply_activation_checkpointing(model: nn.Module) -> None:
    """Recompute every transformer block in backward instead of keeping its activations."""
    from torch.distributed._composable import checkpoint

    # The composable API hooks the block in place: a wrapper module (checkpoint_wrapper) would
    # rename every parameter and so every checkpoint key. Only module calls are hooked, so a
    # cached step (`MMDiTBlock.step`, which writes the KV cache) is never recomputed.
    for blk in model.blocks:
        checkpoint(blk)


def mixed_precision_policy(cfg: ParallelConfig, device_type: str):
    """bf16 compute / fp32 reduce on CUDA with mixed_precision, else full fp32."""
    from torch.distributed.fsdp import MixedPrecisionPolicy

    if cfg.mixed_precision and device_type == "cuda":
        return MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    return MixedPrecisionPolicy()


def apply_fsdp(model: nn.Module, cfg: ParallelConfig, mesh: DeviceMesh) -> None:
    """fully_shard each block, then the root (embeddings, timestep MLP, final layer, logit head)."""
    from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method

    mp = mixed_precision_policy(cfg, mesh.device_type)
    reshard = cfg.zero == 3
    n = len(model.blocks)
    for i, blk in enumerate(model.blocks):
        # The last block's parameters are needed again right away in backward: never reshard it.
        fully_shard(blk, mesh=mesh, mp_policy=mp, reshard_after_forward=reshard and i < n - 1)
        for name in BLOCK_METHODS:
            if hasattr(blk, name):
                register_fsdp_forward_method(blk, name)
    fully_shard(model, mesh=mesh, mp_policy=mp, reshard_after_forward=reshard)
    for name in ROOT_METHODS:
        if hasattr(model, name):
            register_fsdp_forward_method(model, name)


def reshard(model: nn.Module) -> None:
    """Free the gathered parameters of every FSDP module of `model` (a no-op without FSDP).

    Call it after any `torch.no_grad()` use of a model whose parameters stay gathered
    (ZeRO-2, and the last block under ZeRO-3) before its next training forward: measured
    on torch 2.13, a grad-enabled forward that reuses parameters gathered under no_grad
    gets wrong gradients for those modules (2% off after one AdamW step in our test).
    In student forcing: roll out under no_grad for the discriminator update, `reshard`,
    then roll out with grad for the generator update.
    """
    from torch.distributed.fsdp import FSDPModule

    for m in model.modules():
        if isinstance(m, FSDPModule):
            m.reshard()
