"""Checkpoints: safetensors tensors + JSON metadata in one file; loading never unpickles.

Every file carries `format` and `meta` (a JSON string) in the safetensors header, so a
checkpoint is self-describing: `load_world_model` rebuilds the model from the file alone.
Writes are atomic (temp file in the same folder, then rename), so an interrupted save
leaves the previous file intact.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from worldmodel.config import CameraStats, DiTConfig, config_from_dict, config_to_dict

FORMAT = "worldmodel/1"


class CheckpointError(ValueError):
    """A checkpoint is missing, truncated, corrupt, or does not match the model."""


def save_checkpoint(path: str | Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    """Atomically write tensors (made contiguous, on CPU) and JSON-serialisable meta."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    flat = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    header = {"format": FORMAT, "meta": json.dumps(meta)}
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".safetensors.tmp")
    os.close(fd)
    try:
        save_file(flat, tmp, metadata=header)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read tensors and meta; raises CheckpointError naming the file and what is wrong."""
    return _read(path, device, tensors=True)


def load_meta(path: str | Path) -> dict[str, Any]:
    """Only the JSON metadata of a checkpoint (no tensors are read); same checks and errors."""
    return _read(path, "cpu", tensors=False)[1]


def _read(path: str | Path, device: str | torch.device, tensors: bool) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt", device=str(device)) as f:
            header = f.metadata() or {}
        loaded = load_file(str(path), device=str(device)) if tensors else {}
    except (SafetensorError, OSError, RuntimeError, ValueError) as e:
        raise CheckpointError(
            f"checkpoint {path} is corrupt or truncated ({os.path.getsize(path)} bytes): {e}"
        ) from e
    if header.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {path} has format {header.get('format')!r}, expected {FORMAT!r}")
    try:
        meta = json.loads(header.get("meta", "{}"))
    except json.JSONDecodeError as e:
        raise CheckpointError(f"checkpoint {path} has unreadable metadata: {e}") from e
    return loaded, meta


def load_state_strict(module: nn.Module, tensors: dict[str, torch.Tensor], source: str | Path) -> None:
    """Load a state dict, naming missing/unexpected keys and shape mismatches in the error."""
    own = module.state_dict()
    missing = sorted(set(own) - set(tensors))
    unexpected = sorted(set(tensors) - set(own))
    shapes = [f"{k}: file {tuple(tensors[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in tensors and tensors[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing keys {missing[:8]}{' ...' if len(missing) > 8 else ''}")
        if unexpected:
            parts.append(f"unexpected keys {unexpected[:8]}{' ...' if len(unexpected) > 8 else ''}")
        if shapes:
            parts.append(f"shape mismatch {shapes[:8]}")
        raise CheckpointError(f"checkpoint {source} does not match the model: " + "; ".join(parts))
    module.load_state_dict(tensors, strict=True)


def subset(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """Tensors under `prefix.`, with the prefix removed."""
    p = prefix + "."
    return {k[len(p):]: v for k, v in tensors.items() if k.startswith(p)}


def save_world_model(
    path: str | Path,
    model: nn.Module,
    cfg: DiTConfig,
    camera_stats: CameraStats | None = None,
    extra_modules: dict[str, nn.Module] | None = None,
    extra_meta: dict[str, Any] | None = None,
    extra_tensors: dict[str, torch.Tensor] | None = None,
) -> None:
    """Save the DiT (under `dit.`) plus optional extra modules (e.g. `vae.`), tensors and camera stats."""
    tensors = {f"dit.{k}": v for k, v in model.state_dict().items()}
    for name, mod in (extra_modules or {}).items():
        tensors.update({f"{name}.{k}": v for k, v in mod.state_dict().items()})
    tensors.update(extra_tensors or {})
    meta = {
        "dit_config": config_to_dict(cfg),
        "camera_stats": None if camera_stats is None else asdict(camera_stats),
        **(extra_meta or {}),
    }
    save_checkpoint(path, tensors, meta)


def load_world_model(path: str | Path, device: str | torch.device = "cpu"):
    """Rebuild the DiT from a checkpoint: returns (model, cfg, camera_stats, tensors, meta)."""
    from worldmodel.dit import WorldDiT

    tensors, meta = load_checkpoint(path, device)
    if "dit_config" not in meta:
        raise CheckpointError(f"checkpoint {path} has no 'dit_config' in its metadata; not a world-model file")
    try:
        cfg = config_from_dict(meta["dit_config"])
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"checkpoint {path} has an invalid dit_config: {e}") from e
    model = WorldDiT(cfg).to(device)
    load_state_strict(model, subset(tensors, "dit"), path)
    stats = meta.get("camera_stats")
    camera_stats = CameraStats(**stats) if stats else None
    return model, cfg, camera_stats, tensors, meta
