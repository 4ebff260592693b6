"""Checkpoints: safetensors tensors + JSON metadata in one file; loading never unpickles.

Every file carries `format` and `meta` (a JSON string) in the safetensors header, so a
checkpoint is self-describing: `load_world_model` rebuilds the model from the file alone.
Writes are atomic (a recognisable temp file in the same folder, fsynced, then renamed), so an
interrupted save leaves the previous file intact; temps left by a killed process are removed
by the next save in that folder. Files get the usual umask-respecting mode (0644 under umask 022).

Since `sha256` joined the header, every file records a SHA-256 digest of its metadata and of
each tensor (dtype, shape and bytes), checked on every load: a flipped bit names the file and
the tensor. Files written before that carry no digest and load unverified.

Models are rebuilt by one strict loader, `load_modules`: it compares the tensor names and
shapes in the file's header with the model built on the meta device before any weight is
allocated, then checks the weights are finite, then materialises the model.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import secrets
import socket
import stat
from collections.abc import Callable, Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from worldmodel.config import CameraStats, DiTConfig, config_to_dict, dataclass_from_dict, drop_retired

FORMAT = "worldmodel/1"
CHECKSUM_KEY = "sha256"
"""Header key of the digests: JSON {"meta": hex, "tensors": {name: hex}}."""

_TEMP_RE = re.compile(r"^\..+\.tmp-(?P<host>[A-Za-z0-9_]+)-(?P<pid>\d+)-[0-9a-f]{8}$")


class CheckpointError(ValueError):
    """A checkpoint is missing, truncated, corrupt, or does not match the model."""


# ----------------------------------------------------------------------------- writing


def save_checkpoint(path: str | Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    """Atomically write tensors (made contiguous, on CPU) and JSON-serialisable meta, with digests."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    flat = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    meta_json = json.dumps(meta)
    digests = {"meta": _sha256(meta_json.encode()), "tensors": {k: tensor_digest(v) for k, v in flat.items()}}
    header = {"format": FORMAT, "meta": meta_json, CHECKSUM_KEY: json.dumps(digests)}
    remove_stale_temps(path.parent)
    tmp = _create_temp(path)
    try:
        save_file(flat, str(tmp), metadata=header)
        os.chmod(tmp, 0o666 & ~_umask())  # safetensors writes 0600 whatever the umask says
        _fsync(tmp)
        os.replace(tmp, path)
        _fsync(path.parent)  # the rename itself survives a power cut only once the folder is synced
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _host_tag() -> str:
    # Temps from other machines on a shared filesystem are never judged by this machine's pids.
    return re.sub(r"[^A-Za-z0-9_]", "_", socket.gethostname())[:32] or "host"


def _create_temp(path: Path) -> Path:
    """A new empty file `.<name>.tmp-<host>-<pid>-<rand>` beside `path`, unique by O_EXCL."""
    while True:
        tmp = path.with_name(f".{path.name}.tmp-{_host_tag()}-{os.getpid()}-{secrets.token_hex(4)}")
        try:
            os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
            return tmp
        except FileExistsError:
            continue


def _umask() -> int:
    """The process umask, read without changing it where /proc allows (os.umask would race threads)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:  # some filesystems cannot sync a folder; the rename is still atomic there
        pass
    finally:
        os.close(fd)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def remove_stale_temps(folder: str | Path) -> list[Path]:
    """Delete this machine's save temps in `folder` whose writing process is dead; returns them."""
    removed = []
    host = _host_tag()
    try:
        entries = list(Path(folder).iterdir())
    except OSError:
        return removed
    for p in entries:
        m = _TEMP_RE.match(p.name)
        if m and m["host"] == host and not _pid_alive(int(m["pid"])):
            try:
                p.unlink()
                removed.append(p)
            except OSError:  # raced with another cleaner, or read-only: harmless
                pass
    return removed


# ----------------------------------------------------------------------------- digests


def _sha256(data: bytes | memoryview) -> str:
    return hashlib.sha256(data).hexdigest()


def tensor_digest(t: torch.Tensor) -> str:
    """SHA-256 of a CPU tensor's dtype, shape and raw bytes."""
    h = hashlib.sha256(f"{t.dtype}|{tuple(t.shape)}|".encode())
    if t.numel():
        h.update(memoryview(t.contiguous().reshape(-1).view(torch.uint8).numpy()))
    return h.hexdigest()


def _parse_digests(path: Path, raw: str | None) -> dict[str, Any] | None:
    if raw is None:
        return None  # written before digests existed: loads unverified
    try:
        d = json.loads(raw)
        if isinstance(d, dict) and isinstance(d.get("meta"), str) and isinstance(d.get("tensors"), dict):
            return d
    except json.JSONDecodeError:
        pass
    raise CheckpointError(f"checkpoint {path} has an unreadable '{CHECKSUM_KEY}' header entry; the file is corrupt")


def _verify_tensors(path: Path, digests: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
    want = digests["tensors"]
    if set(want) != set(tensors):
        diff = sorted(set(want) ^ set(tensors))
        raise CheckpointError(
            f"checkpoint {path} is corrupt: its tensor names differ from the recorded ones ({diff[:6]})"
        )
    for k, t in tensors.items():
        if tensor_digest(t) != want[k]:
            raise CheckpointError(
                f"checkpoint {path} is corrupt: tensor {k!r} fails its SHA-256 check (a changed bit on disk or "
                "in transfer); restore the file from a good copy"
            )


# ----------------------------------------------------------------------------- reading


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read tensors and meta; raises CheckpointError naming the file and what is wrong."""
    return _read(path, device, tensors=True)


def load_meta(path: str | Path) -> dict[str, Any]:
    """Only the JSON metadata of a checkpoint (no tensors are read); same checks and errors."""
    return _read(path, "cpu", tensors=False)[1]


def check_regular_file(path: Path, what: str = "checkpoint") -> None:
    """Raise CheckpointError unless `path` is an existing regular file, saying what it is instead."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise CheckpointError(f"{what} {path} does not exist") from None
    except OSError as e:
        raise CheckpointError(f"{what} {path} cannot be read: {e}") from e
    if stat.S_ISREG(mode):
        return
    kind = ("a directory" if stat.S_ISDIR(mode) else "a FIFO (named pipe)" if stat.S_ISFIFO(mode)
            else "a socket" if stat.S_ISSOCK(mode) else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
            else "not a regular file")
    raise CheckpointError(f"{what} {path} is {kind}, not a file; pass the path of a .safetensors file")


def read_tensor_index(path: str | Path) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every tensor in a checkpoint, from its header alone (no tensor data is read)."""
    path = Path(path)
    check_regular_file(path)
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except (SafetensorError, OSError, RuntimeError, ValueError) as e:
        raise CheckpointError(f"checkpoint {path} is corrupt or truncated ({os.path.getsize(path)} bytes): {e}") from e


def _read(path: str | Path, device: str | torch.device, tensors: bool) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    path = Path(path)
    check_regular_file(path)
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            header = f.metadata() or {}
        loaded = load_file(str(path), device="cpu") if tensors else {}
    except (SafetensorError, OSError, RuntimeError, ValueError) as e:
        raise CheckpointError(
            f"checkpoint {path} is corrupt or truncated ({os.path.getsize(path)} bytes): {e}"
        ) from e
    if header.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {path} has format {header.get('format')!r}, expected {FORMAT!r}")
    raw_meta = header.get("meta", "{}")
    digests = _parse_digests(path, header.get(CHECKSUM_KEY))
    if digests is not None and _sha256(raw_meta.encode()) != digests["meta"]:
        raise CheckpointError(f"checkpoint {path} is corrupt: its metadata fails its SHA-256 check")
    try:
        meta = json.loads(raw_meta)
    except json.JSONDecodeError as e:
        raise CheckpointError(f"checkpoint {path} has unreadable metadata: {e}") from e
    if not isinstance(meta, dict):
        raise CheckpointError(f"checkpoint {path} has metadata of type {type(meta).__name__}, expected a JSON object")
    if digests is not None and tensors:
        _verify_tensors(path, digests, loaded)  # on the CPU copy, before anything uses it
    if torch.device(device).type != "cpu":
        loaded = {k: v.to(device) for k, v in loaded.items()}
    return loaded, meta


# ----------------------------------------------------------------------------- the strict loader


def check_state_shapes(
    own: Mapping[str, Any], found: Mapping[str, tuple[int, ...]], source: str | Path, allow_missing: tuple[str, ...] = ()
) -> None:
    """Raise CheckpointError naming missing/unexpected keys and shape mismatches between a model
    state (`own`: name -> tensor) and what a file holds (`found`: name -> shape); keys under an
    `allow_missing` prefix may be absent from the file."""
    missing = sorted(k for k in set(own) - set(found) if not k.startswith(allow_missing))
    unexpected = sorted(set(found) - set(own))
    shapes = [f"{k}: file {tuple(found[k])} vs model {tuple(own[k].shape)}"
              for k in own if k in found and tuple(found[k]) != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing keys {missing[:8]}{' ...' if len(missing) > 8 else ''}")
        if unexpected:
            parts.append(f"unexpected keys {unexpected[:8]}{' ...' if len(unexpected) > 8 else ''}")
        if shapes:
            parts.append(f"shape mismatch {shapes[:8]}")
        raise CheckpointError(f"checkpoint {source} does not match the model: " + "; ".join(parts))


def load_state_strict(
    module: nn.Module, tensors: dict[str, torch.Tensor], source: str | Path, allow_missing: tuple[str, ...] = ()
) -> None:
    """Load a state dict, naming missing/unexpected keys and shape mismatches in the error; keys
    under an `allow_missing` prefix that the state lacks keep the module's own values."""
    check_state_shapes(module.state_dict(), {k: tuple(v.shape) for k, v in tensors.items()}, source, allow_missing)
    module.load_state_dict(tensors, strict=not allow_missing)


def check_finite(tensors: Mapping[str, torch.Tensor], source: str | Path) -> None:
    """Raise CheckpointError naming the first floating-point tensor holding NaN or inf."""
    for k, t in tensors.items():
        if (t.is_floating_point() or t.is_complex()) and not bool(torch.isfinite(t).all()):
            raise CheckpointError(
                f"checkpoint {source}: tensor {k!r} holds NaN or inf values (training diverged before this save?); "
                "such weights only produce black frames, so load an earlier checkpoint"
            )


def subset(tensors: dict[str, Any], prefix: str) -> dict[str, Any]:
    """Entries under `prefix.`, with the prefix removed; all entries for the empty prefix."""
    if not prefix:
        return dict(tensors)
    p = prefix + "."
    return {k[len(p):]: v for k, v in tensors.items() if k.startswith(p)}


def load_modules(
    path: str | Path,
    builders: Mapping[str, Callable[[], nn.Module]],
    device: str | torch.device = "cpu",
    allow_missing: tuple[str, ...] = (),
) -> tuple[dict[str, nn.Module], dict[str, torch.Tensor]]:
    """Build each module and load its weights (the tensors under `<prefix>.`; all of them for `""`) from one file.

    The one strict loader of single-file checkpoints. Every builder first runs on the meta
    device and its state's names and shapes are compared with the file's header, so a file
    whose metadata declares a huge model is rejected before anything is allocated; then the
    tensors are read (digests verified), checked finite, and the modules built for real on
    `device`. Parameters under an `allow_missing` prefix may be absent from the file and keep
    their fresh initialisation. Returns (modules by prefix, all tensors on `device`).
    """
    path = Path(path)
    index = read_tensor_index(path)
    for prefix, build in builders.items():
        with torch.device("meta"):
            skeleton = build()
        check_state_shapes(skeleton.state_dict(), subset(index, prefix), path, allow_missing)
        del skeleton
    tensors, _ = load_checkpoint(path, device)
    modules = {}
    for prefix, build in builders.items():
        state = subset(tensors, prefix)
        check_finite({f"{prefix}.{k}" if prefix else k: v for k, v in state.items()}, path)
        module = build().to(device)
        load_state_strict(module, state, path, allow_missing)
        modules[prefix] = module
    return modules, tensors


# ----------------------------------------------------------------------------- world-model files


def config_from_meta(
    meta: Mapping[str, Any], key: str, cls: type, path: str | Path, kind: str = "file of that kind"
) -> Any:
    """Config dataclass `cls` from `meta[key]`, as CheckpointError naming the file, key and field."""
    if key not in meta:
        raise CheckpointError(f"checkpoint {path} has no '{key}' in its metadata; not a {kind}")
    try:
        return dataclass_from_dict(cls, meta[key], key)
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"checkpoint {path} has an invalid {key}: {e}") from e


def dit_config_from_meta(meta: Mapping[str, Any], path: str | Path) -> DiTConfig:
    """The transformer config of a world-model file."""
    raw = meta.get("dit_config")
    if isinstance(raw, Mapping):  # older files store keys that no longer configure the model
        try:
            meta = {**meta, "dit_config": drop_retired(raw)}
        except ValueError as e:
            raise CheckpointError(f"checkpoint {path} cannot be loaded: {e}") from e
    return config_from_meta(meta, "dit_config", DiTConfig, path, kind="world-model file")


def camera_stats_from_meta(meta: Mapping[str, Any], path: str | Path) -> CameraStats | None:
    """The camera normalisation stored in a file, or None; non-finite values are rejected."""
    raw = meta.get("camera_stats")
    if not raw:
        return None
    stats = config_from_meta(meta, "camera_stats", CameraStats, path)
    if not all(math.isfinite(v) for v in [*stats.mean, *stats.std]):
        raise CheckpointError(f"checkpoint {path} has non-finite camera_stats {raw}")
    return stats


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

    meta = load_meta(path)
    cfg = dit_config_from_meta(meta, path)
    stats = camera_stats_from_meta(meta, path)
    modules, tensors = load_modules(path, {"dit": lambda: WorldDiT(cfg)}, device)
    return modules["dit"], cfg, stats, tensors, meta
