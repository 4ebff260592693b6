"""Distributed checkpoints that reshard: saved by N ranks, loaded by M ranks or one process.

A checkpoint is a folder written by `torch.distributed.checkpoint` (DCP): every rank
writes only its own shards in parallel, and `.metadata` records where each slice of each
tensor lives, so a loader with any other sharding (another world size, another ZeRO
stage, no process group at all) reads exactly the slices it needs. Beside it,
`meta.json` (written by rank 0) records the model config, the step and free-form JSON.

    save_sharded("ckpt/step_1000", {"generator": gen, "disc": disc}, {"generator": opt_g}, step=1000)
    meta = load_sharded("ckpt/step_1000", {"generator": gen, "disc": disc}, {"generator": opt_g})
    export_safetensors("ckpt/step_1000", "world_dit.safetensors", name="generator")  # one process

The export writes the single-file safetensors format of `worldmodel.checkpoint`
(`save_world_model`), which `load_world_model` and the env load.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from worldmodel.checkpoint import CheckpointError, save_world_model
from worldmodel.config import CameraStats, DiTConfig, config_from_dict, config_to_dict

META_FILE = "meta.json"
FORMAT = "worldmodel-dcp/1"


def _live() -> bool:
    return dist.is_available() and dist.is_initialized()


def _is_main() -> bool:
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def _barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def save_sharded(
    path: str | Path,
    models: dict[str, nn.Module],
    optimizers: dict[str, torch.optim.Optimizer] | None = None,
    step: int = 0,
    extra: dict[str, Any] | None = None,
) -> None:
    """Every rank writes its shards of the named models (and their optimizers) into folder `path`."""
    path = Path(path)
    state: dict[str, Any] = {f"model.{k}": get_model_state_dict(m) for k, m in models.items()}
    for name, opt in (optimizers or {}).items():
        if name not in models:
            raise KeyError(f"optimizer {name!r} has no model of that name; models are {sorted(models)}")
        state[f"optim.{name}"] = get_optimizer_state_dict(models[name], opt)
    if _is_main():
        path.mkdir(parents=True, exist_ok=True)
    _barrier()
    dcp.save(state, checkpoint_id=str(path), no_dist=not _live())
    if _is_main():
        meta = {
            "format": FORMAT,
            "step": step,
            "models": {k: _model_meta(m) for k, m in models.items()},
            "optimizers": sorted(optimizers or {}),
            "extra": extra or {},
        }
        (path / META_FILE).write_text(json.dumps(meta, indent=1))
    _barrier()


def _model_meta(model: nn.Module) -> dict[str, Any]:
    cfg = getattr(model, "cfg", None)
    return {"dit_config": config_to_dict(cfg) if isinstance(cfg, DiTConfig) else None}


def read_meta(path: str | Path) -> dict[str, Any]:
    """The checkpoint's meta.json; raises CheckpointError when the folder is not a finished checkpoint."""
    path = Path(path)
    f = path / META_FILE
    if not (path / ".metadata").is_file() or not f.is_file():
        raise CheckpointError(
            f"{path} is not a finished distributed checkpoint (needs .metadata and {META_FILE}); "
            "an interrupted save leaves them out, so load the previous step's folder"
        )
    meta = json.loads(f.read_text())
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{f} has format {meta.get('format')!r}, expected {FORMAT!r}")
    return meta


def load_sharded(
    path: str | Path,
    models: dict[str, nn.Module],
    optimizers: dict[str, torch.optim.Optimizer] | None = None,
    no_dist: bool = False,
) -> dict[str, Any]:
    """Load into already-built (and already parallelized) models/optimizers in place; returns the meta.

    The models may be sharded differently from when they were saved; each rank reads the
    slices its shards cover. `no_dist=True` loads unsharded models in this process alone,
    even inside a distributed job (e.g. an export on rank 0).
    """
    meta = read_meta(path)
    missing = set(models) - set(meta["models"])
    if missing:
        raise CheckpointError(f"{path} has no model(s) {sorted(missing)}; it holds {sorted(meta['models'])}")
    missing = set(optimizers or {}) - set(meta["optimizers"])
    if missing:
        raise CheckpointError(f"{path} has no optimizer state for {sorted(missing)}; it holds {meta['optimizers']}")
    state: dict[str, Any] = {f"model.{k}": get_model_state_dict(m) for k, m in models.items()}
    for name, opt in (optimizers or {}).items():
        state[f"optim.{name}"] = get_optimizer_state_dict(models[name], opt)
    dcp.load(state, checkpoint_id=str(path), no_dist=no_dist or not _live())
    for k, m in models.items():
        set_model_state_dict(m, state[f"model.{k}"], options=StateDictOptions(strict=True))
    for name, opt in (optimizers or {}).items():
        set_optimizer_state_dict(models[name], opt, state[f"optim.{name}"])
    return meta


def load_full_model(path: str | Path, name: str, device: str | torch.device = "cpu") -> nn.Module:
    """Rebuild model `name` from a distributed checkpoint in one process, unsharded."""
    from worldmodel.dit import WorldDiT

    meta = read_meta(path)
    if name not in meta["models"]:
        raise CheckpointError(f"{path} has no model {name!r}; it holds {sorted(meta['models'])}")
    cfg_dict = meta["models"][name]["dit_config"]
    if cfg_dict is None:
        raise CheckpointError(f"model {name!r} in {path} is not a WorldDiT (no dit_config); load it with load_sharded")
    model = WorldDiT(config_from_dict(cfg_dict)).to(device)
    load_sharded(path, {name: model}, no_dist=True)
    return model


def export_safetensors(
    path: str | Path, out: str | Path, name: str = "generator", camera_stats: CameraStats | None = None
) -> Path:
    """Convert model `name` of a distributed checkpoint to the single-file safetensors world format."""
    model = load_full_model(path, name)
    meta = read_meta(path)
    save_world_model(out, model, model.cfg, camera_stats, extra_meta={"step": meta["step"], "source": str(path)})
    return Path(out)
