"""Shared pieces of the benchmark suite: the machine, timers, memory probes and the worlds to time.

Every benchmark returns rows: flat dicts with a `name`, numbers, and a `note` that says what
was measured or why it was not (`"not measured (no GPU)"`). `__main__` prints them as tables
and writes them to JSON unchanged.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from worldmodel.config import model_config
from worldmodel.dit import WorldDiT
from worldmodel.vae import CausalVAE, vae_config
from worldmodel.world import BUNDLED, World, WorldMeta

Row = dict[str, Any]

NO_GPU = "not measured (no GPU)"
RANDOM_NOTE = "random weights (bundled file missing)"

# The bundled world's architecture, for random weights when the file is missing.
BUNDLED_HW = (96, 128)
PAPER_HW = (416, 736)


def cpu_model() -> str:
    """The CPU's marketing name (from /proc/cpuinfo on Linux)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(device: torch.device) -> dict[str, Any]:
    """What the numbers were measured on: CPU, cores, threads, load, GPU, library versions."""
    info: dict[str, Any] = {
        "cpu": cpu_model(),
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average_1_5_15": [round(x, 2) for x in os.getloadavg()],
        "platform": platform.platform(),
        "python": platform.python_version(),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "cuda": torch.version.cuda,
    }
    try:
        import flash_attn  # noqa: F401

        info["flash_attn"] = getattr(flash_attn, "__version__", "installed")
    except ImportError:
        info["flash_attn"] = None
    return info


def sync(device: torch.device) -> None:
    """Wait for queued kernels, so a host timer brackets the work (no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device) -> tuple[float, Any]:
    """Seconds taken by fn() with the device synchronised on both sides, and its result."""
    sync(device)
    t0 = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - t0, out


def time_repeats(fn: Callable[[], Any], device: torch.device, repeats: int, warmup: int = 1) -> list[float]:
    """Seconds per call of fn over `repeats` timed calls after `warmup` untimed ones."""
    for _ in range(warmup):
        fn()
    return [timed(fn, device)[0] for _ in range(repeats)]


def latency_stats(samples_s: list[float], prefix: str = "") -> dict[str, float]:
    """p50/p95/mean in milliseconds of per-call seconds."""
    ms = np.asarray(samples_s) * 1000.0
    return {
        f"{prefix}p50_ms": float(np.percentile(ms, 50)),
        f"{prefix}p95_ms": float(np.percentile(ms, 95)),
        f"{prefix}mean_ms": float(ms.mean()),
    }


def median_ms(samples_s: list[float]) -> float:
    """Median of per-call seconds, in milliseconds."""
    return 1000.0 * statistics.median(samples_s)


def rss_bytes() -> int:
    """Resident set size of this process now (Linux /proc/self/statm)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def device_memory_bytes(device: torch.device) -> int:
    """Memory in use now: allocated CUDA memory on a GPU, RSS on the CPU."""
    if device.type == "cuda":
        return torch.cuda.memory_allocated(device)
    return rss_bytes()


def perturb_(module: torch.nn.Module, scale: float = 0.02, seed: int | None = 0) -> None:
    """Add scale * N(0, 1) to every weight, drawn from a generator seeded `seed` on the weights' device
    (None: the global RNG): adaLN-Zero leaves random-init blocks gated shut, and a benchmark or a test
    should push realistic (non-zero) activations through every layer."""
    device = next(module.parameters()).device
    g = None if seed is None else torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            noise = torch.randn_like(p) if g is None else torch.randn(p.shape, generator=g, device=device, dtype=p.dtype)
            p.add_(scale * noise)


def pinhole_intrinsics(hw: tuple[int, int], hfov_deg: float = 90.0) -> list[float]:
    """fx, fy, cx, cy of a square-pixel pinhole camera of the given horizontal field of view."""
    H, W = hw
    f = (W / 2) / np.tan(np.deg2rad(hfov_deg) / 2)
    return [float(f), float(f), W / 2, H / 2]


def bundled_world(path: str | Path | None = None) -> tuple[World, str, str | None]:
    """The bundled world (or `path`), else the same architecture with random weights.

    Returns the world, a note for the rows, and the checkpoint path it came from (None if random).
    """
    path = Path(path) if path is not None else BUNDLED
    if path.exists():
        return World.load(path), f"weights from {path.name}", str(path)
    torch.manual_seed(0)
    dit = WorldDiT(model_config("tiny"))
    vae = CausalVAE(vae_config("tiny"))
    perturb_(dit)
    meta = WorldMeta(image_hw=BUNDLED_HW, intrinsics=pinhole_intrinsics(BUNDLED_HW))
    # Random start frames stand in for the bundled ones, so envs can reset without options.
    frames = np.random.default_rng(0).integers(0, 256, (4, *BUNDLED_HW, 3), dtype=np.uint8)
    return World(dit, vae, meta, start_frames=frames, light_decoder=True), RANDOM_NOTE, None


def paper_world(device: torch.device, dtype: torch.dtype = torch.bfloat16) -> World:
    """`paper-8b` with the paper VAE at 736x416, random weights, built directly on `device` in `dtype`."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            torch.manual_seed(0)
            dit = WorldDiT(model_config("paper-8b"))
            vae = CausalVAE(vae_config("paper"))
    finally:
        torch.set_default_dtype(old)
    perturb_(dit, seed=1)
    meta = WorldMeta(image_hw=PAPER_HW, intrinsics=pinhole_intrinsics(PAPER_HW))
    return World(dit, vae, meta, light_decoder=True)


def start_images(world: World, batch: int, seed: int = 0) -> np.ndarray:
    """Start frames for `batch` streams: the world's own if it ships some, else random pixels."""
    if world.start_frames is not None and len(world.start_frames):
        idx = np.arange(batch) % len(world.start_frames)
        return np.asarray(world.start_frames)[idx]
    H, W = world.meta.image_hw
    return np.random.default_rng(seed).integers(0, 256, (batch, H, W, 3), dtype=np.uint8)


def random_actions(steps: int, batch: int, seed: int = 0) -> np.ndarray:
    """Smooth-ish random relative camera motions (steps, B, 6): small moves and turns."""
    rng = np.random.default_rng(seed)
    t = rng.normal(0.0, 0.05, (steps, batch, 3))
    r = rng.normal(0.0, 0.02, (steps, batch, 3))
    return np.concatenate([t, r], axis=-1)
