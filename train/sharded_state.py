"""Training state of FSDP2-sharded models, in the same single-file format as unsharded runs.

Saving gathers each model's (and optimizer's) full state dict to rank 0, which writes
`state.safetensors` with `train.common.save_training_state`; resuming has every rank read
that file and keep the slices its shards cover. One file per run keeps resume, the NaN
guard's "last good checkpoint" and the stage exports identical with and without sharding;
`worldmodel.parallel.dist_checkpoint` is the format for models too large to gather.

Every function here except `is_sharded` is a collective: all ranks must call it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

# Full tensors, on CPU, on rank 0 only (other ranks get empty dicts): what a single writer needs.
GATHER = StateDictOptions(full_state_dict=True, cpu_offload=True)
# Every rank passes the full dict it read from disk and keeps its own shards.
SCATTER = StateDictOptions(full_state_dict=True, strict=True)


def is_sharded(model: nn.Module) -> bool:
    """True when FSDP2 (`fully_shard`) was applied to the model or any of its modules."""
    from torch.distributed.fsdp import FSDPModule

    return any(isinstance(m, FSDPModule) for m in model.modules())


def owner(opt: torch.optim.Optimizer, models: Mapping[str, nn.Module]) -> str:
    """Name of the model whose parameters the optimizer updates."""
    first = opt.param_groups[0]["params"][0]
    for name, m in models.items():
        if any(p is first for p in m.parameters()):
            return name
    raise ValueError("optimizer updates none of the given models")


def gather_states(
    models: Mapping[str, nn.Module], optimizers: Mapping[str, torch.optim.Optimizer]
) -> tuple[dict[str, dict[str, Tensor]], dict[str, Any]]:
    """Full model and optimizer state dicts (keyed like `models` / `optimizers`) on rank 0."""
    model_states = {n: get_model_state_dict(m, options=GATHER) for n, m in models.items()}
    optim_states = {n: get_optimizer_state_dict(models[owner(o, models)], o, options=GATHER)
                    for n, o in optimizers.items()}
    return model_states, optim_states


def scatter_states(
    models: Mapping[str, nn.Module],
    optimizers: Mapping[str, torch.optim.Optimizer],
    model_states: Mapping[str, dict[str, Tensor]],
    optim_states: Mapping[str, Any],
) -> None:
    """Load full state dicts (read by every rank) into sharded models and their optimizers."""
    for n, m in models.items():
        set_model_state_dict(m, model_states[n], options=SCATTER)
    for n, o in optimizers.items():
        m = models[owner(o, models)]
        set_optimizer_state_dict(m, o, optim_states[n], options=StateDictOptions(full_state_dict=True))


def unsharded_copy(model: nn.Module, make: Any) -> nn.Module | None:
    """A plain CPU copy of a sharded model on rank 0 (None on other ranks); `make()` builds an empty one."""
    state = get_model_state_dict(model, options=GATHER)
    if not state:
        return None
    plain = make()
    plain.load_state_dict(state)
    return plain
