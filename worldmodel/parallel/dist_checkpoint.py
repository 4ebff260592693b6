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

DCP stores `.metadata` as a pickle and non-tensor values (optimizer hyperparameters) as
`torch.save` blobs, and its stock reader unpickles both without limits, so a crafted folder
could run code. Loading here goes through `SafeFileSystemReader`, whose unpickler admits only
DCP's own metadata classes, torch sizes, dtypes and layouts and plain containers, and a planner
that reads the blobs with `torch.load(weights_only=True)`. Shard files are checked against the
metadata before reading, and DCP's own failures come back as `CheckpointError` naming the folder.
"""

from __future__ import annotations

import io
import json
import os
import pickle
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint import metadata as dcp_metadata
from torch.distributed.checkpoint._traverse import set_element
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
from torch.distributed.checkpoint.filesystem import FileSystemReader, _StorageInfo
from torch.distributed.checkpoint.metadata import Metadata, StorageMeta
from torch.distributed.checkpoint.planner import ReadItem
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from worldmodel.checkpoint import CheckpointError, check_state_shapes, save_world_model
from worldmodel.config import CameraStats, DiTConfig, config_from_dict, config_to_dict

META_FILE = "meta.json"
FORMAT = "worldmodel-dcp/1"


# What a real `.metadata` pickle names (found by writing one): DCP's metadata dataclasses and
# enum, its storage record, torch.Size, dtypes (checked by type below), layouts, and paths.
_SAFE_GLOBALS: dict[str, set[str]] = {
    "torch.distributed.checkpoint.metadata": {
        "Metadata", "MetadataIndex", "StorageMeta", "TensorProperties", "TensorStorageMetadata",
        "BytesStorageMetadata", "ChunkStorageMetadata", "_MEM_FORMAT_ENCODING",
    },
    "torch.distributed.checkpoint.filesystem": {"_StorageInfo"},
    "torch.serialization": {"_get_layout"},  # looks a name up among torch's layouts, nothing more
    "torch": {"Size"},
    "pathlib": {"PosixPath", "PurePosixPath", "PureWindowsPath", "Path"},
    "collections": {"OrderedDict"},
    "builtins": {"set", "frozenset", "tuple", "list", "dict"},
}


class _MetadataUnpickler(pickle.Unpickler):
    """Unpickles DCP metadata; any other global (os.system, eval, ...) is refused, never imported."""

    def __init__(self, file: io.BufferedIOBase, source: Path) -> None:
        super().__init__(file)
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        if name in _SAFE_GLOBALS.get(module, ()):
            return super().find_class(module, name)
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        raise CheckpointError(
            f"{self.source} refers to {module}.{name}, which a distributed checkpoint's metadata never holds; "
            "refusing to load it (the file may be crafted to run code). Only load checkpoints you wrote"
        )


def read_dcp_metadata(path: str | Path) -> Metadata:
    """Unpickle a DCP `.metadata` file with the restricted unpickler and check its shard references."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            md = _MetadataUnpickler(f, path).load()
    except CheckpointError:
        raise
    except Exception as e:  # truncated or garbled pickles raise a zoo of types
        raise CheckpointError(f"{path} is not a readable distributed-checkpoint metadata file: {e!r}") from e
    if not isinstance(md, Metadata) or not isinstance(md.storage_data, dict):
        raise CheckpointError(f"{path} holds a {type(md).__name__}, not distributed-checkpoint Metadata")
    for info in md.storage_data.values():
        rel = getattr(info, "relative_path", None)
        # Shards live in the folder itself; a path elsewhere would read arbitrary files.
        plain = isinstance(rel, str) and os.path.basename(rel) == rel and rel not in ("", ".", "..")
        if not isinstance(info, _StorageInfo) or not plain:
            raise CheckpointError(
                f"{path} points at shard {rel!r} outside its folder; the metadata is corrupt or crafted"
            )
    return md


def check_shards(folder: str | Path, md: Metadata) -> None:
    """Raise CheckpointError naming any shard file that is missing or shorter than the metadata says."""
    folder = Path(folder)
    need: dict[str, int] = {}
    for info in md.storage_data.values():
        need[info.relative_path] = max(need.get(info.relative_path, 0), int(info.offset) + int(info.length))
    for rel, size in sorted(need.items()):
        f = folder / rel
        if not f.is_file():
            raise CheckpointError(
                f"distributed checkpoint {folder} lacks shard {f.name}; the save did not finish or a file was lost"
            )
        if f.stat().st_size < size:
            raise CheckpointError(
                f"shard {f} is truncated: {f.stat().st_size} bytes, the metadata needs {size}; "
                "load the previous step's folder"
            )


class SafeFileSystemReader(FileSystemReader):
    """DCP's file reader, reading `.metadata` with the restricted unpickler (never plain pickle)."""

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        md = read_dcp_metadata(Path(self._get_metadata_path(kwargs.get("rank"))))
        if getattr(md, "storage_meta", None) is None:
            md.storage_meta = StorageMeta()
        md.storage_meta.load_id = self.load_id
        return md


class SafeLoadPlanner(DefaultLoadPlanner):
    """DCP's default load planner, except non-tensor values are read with torch.load(weights_only=True)."""

    def load_bytes(self, read_item: ReadItem, value: io.BytesIO) -> None:
        try:
            obj = torch.load(value, weights_only=True)
        except pickle.UnpicklingError as e:
            raise CheckpointError(
                f"value {read_item.dest_index.fqn!r} holds objects a checkpoint never needs; refusing to load it: {e}"
            ) from e
        if self.flatten_state_dict:
            set_element(self.original_state_dict, self.mappings[read_item.dest_index.fqn], obj)
        else:
            self.state_dict[read_item.dest_index.fqn] = obj


def _dcp_load(path: Path, state: dict[str, Any], no_dist: bool) -> None:
    """dcp.load through the safe reader and planner; every failure is a CheckpointError naming the folder."""
    check_shards(path, read_dcp_metadata(path / ".metadata"))
    try:
        dcp.load(state, storage_reader=SafeFileSystemReader(path), planner=SafeLoadPlanner(), no_dist=no_dist)
    except CheckpointException as e:  # a BaseException that names neither folder nor file
        causes = "; ".join(f"rank {r}: {type(x).__name__}: {x}" for r, (x, _) in e.failures.items())
        inner = [x for x, _ in e.failures.values() if isinstance(x, CheckpointError)]
        if inner:
            raise CheckpointError(f"distributed checkpoint {path}: {inner[0]}") from None
        raise CheckpointError(f"distributed checkpoint {path} could not be read ({causes}); it is corrupt") from None


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
    try:
        meta = json.loads(f.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{f} is not valid JSON ({e}); the checkpoint is corrupt") from e
    if not (isinstance(meta, dict) and isinstance(meta.get("models"), dict) and isinstance(meta.get("optimizers"), list)):
        raise CheckpointError(f"{f} lacks the 'models' object and 'optimizers' list of a {FORMAT} checkpoint")
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
    _dcp_load(Path(path), state, no_dist=no_dist or not _live())
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
    try:
        cfg = config_from_dict(cfg_dict)
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"model {name!r} in {path} has an invalid dit_config: {e}") from e
    # Compare with the shapes DCP recorded before allocating a model of the size meta.json declares.
    with torch.device("meta"):
        skeleton = WorldDiT(cfg)
    md = read_dcp_metadata(Path(path) / ".metadata")
    prefix = f"model.{name}."
    found = {k[len(prefix):]: tuple(v.size) for k, v in md.state_dict_metadata.items()
             if k.startswith(prefix) and isinstance(v, dcp_metadata.TensorStorageMetadata)}
    check_state_shapes(skeleton.state_dict(), found, path)
    model = WorldDiT(cfg).to(device)
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
