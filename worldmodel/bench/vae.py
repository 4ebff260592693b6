"""Benchmark: streaming VAE decode time per latent frame, full vs lightweight decoder.

`python -m worldmodel.bench.vae [--json out.json]` times both decoders at paper channels
(736x416) and with the tiny configs at the bundled 96x128, prints a table and optionally
writes JSON. `bench_vae_decode(...)` returns the same numbers for the benchmark suite.

One timed unit = one `StreamDecoder.step` (one latent frame -> 4 video frames), after
warm-up steps that also fill the causal cache. Weights are random: speed does not depend
on them.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import statistics
import time
from typing import Any

import torch

from worldmodel.vae import CausalVAE, vae_config

# (label, config name, height, width, timed repeats) of the default run; kept under ~90 s on a 2-core CPU.
DEFAULT_CASES: list[tuple[str, str, int, int, int]] = [
    ("paper@736x416", "paper", 416, 736, 1),
    ("tiny@128x96", "tiny", 96, 128, 20),
]


def time_stream_decode(vae: CausalVAE, height: int, width: int, light: bool, repeats: int, warmup: int = 1) -> list[float]:
    """Seconds per streaming decode step of one latent frame (batch 1), `repeats` samples."""
    f = vae.cfg.spatial_factor
    z = torch.randn(1, vae.cfg.latent_channels, height // f, width // f)  # (B, C, h, w)
    dec = vae.stream_decoder(1, light=light)
    times = []
    with torch.inference_mode():
        dec.step(z)  # first latent frame (1 video frame); allocates the cache
        for _ in range(warmup):
            dec.step(z)
        for _ in range(repeats):
            t0 = time.perf_counter()
            out = dec.step(z)  # (1, 4, 3, H, W)
            times.append(time.perf_counter() - t0)
    assert out.shape[-2:] == (height, width)
    return times


def bench_vae_decode(
    cases: list[tuple[str, str, int, int, int]] | None = None, threads: int | None = None
) -> dict[str, Any]:
    """Time full and light streaming decode per latent frame for each case; returns a JSON-ready dict."""
    if threads is not None:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    rows = []
    for label, name, H, W, repeats in cases or DEFAULT_CASES:
        vae = CausalVAE(vae_config(name)).eval()
        ms = {}
        for light in (False, True):
            ts = time_stream_decode(vae, H, W, light, repeats, warmup=1 if repeats > 1 else 0)
            ms["light" if light else "full"] = 1000 * statistics.median(ts)
        n_full = sum(p.numel() for p in vae.decoder.parameters())
        n_light = sum(p.numel() for p in vae.light_decoder.parameters())
        rows.append(
            dict(
                case=label, config=name, height=H, width=W, repeats=repeats,
                full_ms=ms["full"], light_ms=ms["light"], speedup=ms["full"] / ms["light"],
                full_params=n_full, light_params=n_light,
                video_frames_per_step=vae.cfg.temporal_factor,
            )
        )
    return dict(
        benchmark="vae_stream_decode_per_latent_frame",
        device="cpu",
        torch_threads=torch.get_num_threads(),
        torch_version=torch.__version__,
        rows=rows,
    )


def format_table(result: dict[str, Any]) -> str:
    """Plain-text table of a `bench_vae_decode` result."""
    lines = [
        f"VAE streaming decode, one latent frame -> 4 video frames, batch 1, {result['device']}, "
        f"{result['torch_threads']} threads",
        f"{'case':<16}{'full ms':>10}{'light ms':>10}{'speed-up':>10}{'full M':>9}{'light M':>9}",
    ]
    for r in result["rows"]:
        lines.append(
            f"{r['case']:<16}{r['full_ms']:>10.1f}{r['light_ms']:>10.1f}{r['speedup']:>9.2f}x"
            f"{r['full_params'] / 1e6:>9.2f}{r['light_params'] / 1e6:>9.2f}"
        )
    return "\n".join(lines)


def keep_freed_memory() -> None:
    """Ask glibc to keep freed large blocks for reuse instead of unmapping them.

    A paper-size decode allocates hundreds of MB of activations per step; by default glibc
    returns each to the OS and page-faults it back on the next step, and that kernel time
    (tens of seconds) would swamp the convolutions we mean to time. No-op off glibc.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 1 << 30)  # M_MMAP_THRESHOLD: serve big blocks from the heap
        libc.mallopt(-1, 1 << 31)  # M_TRIM_THRESHOLD: don't give the heap top back
    except (OSError, AttributeError):
        pass


def main(argv: list[str] | None = None) -> None:
    """CLI entry: print the table, optionally write JSON."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", default=None, help="write the result to this JSON file")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--paper-repeats", type=int, default=1, help="timed steps at paper size (each takes seconds on CPU)")
    p.add_argument("--tiny-repeats", type=int, default=20, help="timed steps at the bundled size")
    p.add_argument("--skip-paper", action="store_true", help="only the bundled-size case")
    a = p.parse_args(argv)
    keep_freed_memory()
    cases = [
        (label, name, H, W, a.paper_repeats if name == "paper" else a.tiny_repeats)
        for label, name, H, W, _ in DEFAULT_CASES
        if not (a.skip_paper and name == "paper")
    ]
    result = bench_vae_decode(cases, threads=a.threads)
    print(format_table(result))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
