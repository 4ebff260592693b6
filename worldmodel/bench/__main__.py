"""Benchmark suite: speed, latency and memory of the learned world, against the paper and simpler baselines.

    python -m worldmodel.bench                      # the full CPU run (~2-3 min on 2 cores)
    python -m worldmodel.bench --quick --json out.json
    python -m worldmodel.bench --compile            # also time torch.compile (minutes of compilation)

Sections (each a table, and a list of rows in the JSON):
  end_to_end       decoded fps and per-step latency p50/p95, split transformer / VAE decode
                   (bundled world on CPU; paper-8b at 736x416 bf16 on a GPU)
  kv_vs_recompute  KV-cache step vs recomputing sink + window + new frame, per window
  sampler          one-step generator vs the 32-step teacher sampler
  vae_decoder      light vs full streaming VAE decoder
  memory           peak / steady-state memory over a 1,440-frame rollout, growth first -> last quarter
  variants         eager vs torch.compile; CUDA graph of the step (GPU)
  compute_floor    FLOPs per step (torch's counter) over the measured matmul rate, achieved / floor
  targets          the issue's targets and whether this run meets them
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import math
import os
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from worldmodel.bench.alternatives import kv_vs_recompute, one_step_vs_teacher, vae_decoders
from worldmodel.bench.common import (
    BUNDLED_HW,
    NO_GPU,
    PAPER_HW,
    Row,
    bundled_world,
    machine_info,
    paper_world,
)
from worldmodel.bench.floor import floor_rows, matmul_rate, step_flops
from worldmodel.bench.generation import memory_row, rollout, speed_row
from worldmodel.bench.variants import compile_row, cuda_graph_row, thread_rows
from worldmodel.threads import choose_threads

BUNDLED_FPS_TARGET = 24.0
"""Decoded frames per second the bundled world should reach end to end on the 2-core CPU."""
PAPER_FPS_TARGET = 24.8
"""The paper's end-to-end rate for its 8B model at 736x416 on one H100."""
PAPER_FPS_STRETCH = 48.0
"""Our stretch goal for paper-8b on one H100."""


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line; `--quick` shrinks every section to a seconds-long smoke run."""
    p = argparse.ArgumentParser(
        prog="python -m worldmodel.bench",
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--json", metavar="PATH", help="also write every row, the machine and the settings to this JSON file")
    p.add_argument("--quick", action="store_true", help="tiny step counts (seconds; for tests); numbers are rough")
    p.add_argument("--checkpoint", metavar="PATH",
                   help="world file to time on CPU (default: the bundled world; random weights if it is missing)")
    p.add_argument("--threads", type=int,
                   help="torch CPU threads (default: one per idle core by the load average, at most torch's choice)")
    p.add_argument("--steps", type=int, help="rollout steps for speed and memory (default 360 = 1,440 frames)")
    p.add_argument("--warmup", type=int, help="untimed rollout steps before the speed statistics (default 10)")
    p.add_argument("--windows", type=int, nargs="+", help="windows for KV cache vs recompute (default 4 8 16 30)")
    p.add_argument("--compile", action="store_true",
                   help="also time torch.compile of the transformer step (opt-in: compiling takes 1-2 min on 2 cores)")
    p.add_argument("--cpu", action="store_true", help="ignore any GPU (GPU rows then say 'not measured')")
    return p.parse_args(argv)


def settings(a: argparse.Namespace) -> dict[str, Any]:
    """Resolved sizes of every section, from the defaults, --quick, and explicit flags."""
    s = dict(steps=360, warmup=10, windows=[4, 8, 16, 30], repeats=5,
             teacher_frames=2, teacher_window=None, vae_repeats=20, matmul_n_cpu=2048, matmul_n_gpu=8192, paper_steps=360,
             thread_steps=10)
    if a.quick:
        s.update(steps=8, warmup=2, windows=[1, 2], repeats=2, teacher_frames=1,
                 teacher_window=1, vae_repeats=2, matmul_n_cpu=512, matmul_n_gpu=2048, paper_steps=8,
                 thread_steps=0)
    for key in ("steps", "warmup", "windows"):
        if getattr(a, key) is not None:
            s[key] = getattr(a, key)
    if s["steps"] <= s["warmup"]:
        raise SystemExit(f"--steps={s['steps']} must exceed --warmup={s['warmup']} to time any step")
    return s


def part_ms(row: Row) -> dict[str, float]:
    """The transformer and decode p50 of an end-to-end row, for the compute floor."""
    return {"transformer": row["transformer_p50_ms"], "decode": row["decode_p50_ms"]}


def run(a: argparse.Namespace) -> dict[str, Any]:
    """Every section in order; returns the JSON-ready result."""
    start = time.perf_counter()
    s = settings(a)
    threads, why = choose_threads(a.threads or None)
    torch.set_num_threads(threads)
    s.update(threads=threads, threads_reason=why)
    cpu = torch.device("cpu")
    gpu = torch.device("cuda") if torch.cuda.is_available() and not a.cpu else None
    torch.manual_seed(0)
    sec: dict[str, list[Row]] = {}
    say = lambda msg: print(f"[{time.perf_counter() - start:6.1f}s] {msg}", file=sys.stderr, flush=True)  # noqa: E731

    # 1 + 4: one rollout of the bundled world gives speed and memory.
    world, weights, _ = bundled_world(a.checkpoint)
    H, W = world.meta.image_hw
    say(f"bundled world ({weights}): {s['steps']}-step rollout")
    r = rollout(world, batch=1, steps=s["steps"])
    bundled = speed_row(f"bundled {world.cfg.name} @{W}x{H}", r, s["warmup"], device="cpu", dtype="float32",
                        window=world.cfg.window, note=weights)
    sec["end_to_end"] = [bundled]
    sec["memory"] = [memory_row(f"bundled {world.cfg.name}", r, "RSS (/proc/self/statm)")]
    paper_row: Row = {"name": f"paper-8b @{PAPER_HW[1]}x{PAPER_HW[0]}", "device": "cuda", "dtype": "bfloat16",
                      "window": 30, "note": NO_GPU}
    paper_floor: list[Row] = []
    if gpu is not None:
        say("paper-8b on GPU: building random bf16 weights")
        try:
            pw = paper_world(gpu)
            rp = rollout(pw, batch=1, steps=s["paper_steps"])
            paper_row = speed_row(paper_row["name"], rp, s["warmup"], device=torch.cuda.get_device_name(gpu),
                                  dtype="bfloat16", window=pw.cfg.window,
                                  note=f"random weights; attention backend {pw.cfg.attention_backend}")
            sec["memory"].append(memory_row("paper-8b", rp, "torch.cuda allocated"))
            rate = matmul_rate(gpu, torch.bfloat16, s["matmul_n_gpu"])
            paper_floor = [{"name": "GPU bf16 matmul", "tflops": rate / 1e12, "n": s["matmul_n_gpu"]}]
            paper_floor += floor_rows("paper-8b", step_flops(pw), rate, part_ms(paper_row))
            del pw
        except Exception as e:  # noqa: BLE001 (e.g. out of memory on a smaller GPU: report it)
            paper_row["note"] = f"failed: {type(e).__name__}: {str(e)[:200]}"
        gc.collect()
        torch.cuda.empty_cache()
    else:
        sec["memory"].append({"name": "paper-8b", "memory": "torch.cuda.max_memory_allocated", "note": NO_GPU})
    sec["end_to_end"].append(paper_row)

    # 2: alternatives, on the bundled transformer.
    say(f"KV cache vs recompute, windows {s['windows']}")
    sec["kv_vs_recompute"] = kv_vs_recompute(world.dit, world.latent_hw, s["windows"], s["repeats"])
    say("one step vs the 32-step teacher sampler")
    sec["sampler"] = one_step_vs_teacher(world.dit, world.latent_hw, s["teacher_frames"], s["teacher_window"])
    say("light vs full VAE decoder")
    sec["vae_decoder"] = vae_decoders([(f"tiny@{BUNDLED_HW[1]}x{BUNDLED_HW[0]}", "tiny", *BUNDLED_HW, s["vae_repeats"])])

    # 3: the vector env is measured next to the envs (`python -m envs.bench`): worldmodel must not import envs.

    # 5: variants.
    sec["variants"] = [{**bundled, "name": "eager", "note": "the end-to-end row above"}]
    counts = sorted({1, os.cpu_count() or 1})
    if len(counts) > 1 and s["thread_steps"]:
        say(f"thread counts {counts}")
        sec["variants"] += thread_rows(world, counts, s["thread_steps"], min(3, s["warmup"]))
    if a.compile:
        say("torch.compile of the transformer step (compiling...)")
        sec["variants"].append(compile_row(world, steps=max(s["steps"] // 4, 3), warmup=s["warmup"]))
    else:
        sec["variants"].append({"name": "torch.compile (per-block step)",
                                "note": "not measured: opt-in with --compile (compiling takes 1-2 min on 2 cores)"})
    if gpu is not None:
        say("CUDA graph capture of the paper-8b step")
        sec["variants"].append(cuda_graph_row_safe(gpu, s["repeats"]))
    else:
        sec["variants"].append({"name": "CUDA graph (transformer step)", "note": NO_GPU})

    # 6: compute floor.
    say("compute floor: FLOPs per step and matmul rate")
    rate = matmul_rate(cpu, torch.float32, s["matmul_n_cpu"])
    sec["compute_floor"] = [{"name": "CPU fp32 matmul", "gflops_per_s": rate / 1e9, "n": s["matmul_n_cpu"]}]
    sec["compute_floor"] += floor_rows(f"bundled {world.cfg.name}", step_flops(world), rate, part_ms(bundled))
    sec["compute_floor"] += paper_floor or [{"name": "paper-8b", "note": NO_GPU}]

    sec["targets"] = targets(bundled, paper_row, sec["kv_vs_recompute"])
    return {
        "benchmark": "worldmodel.bench",
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": "python -m worldmodel.bench " + shlex.join(sys.argv[1:]),
        "machine": machine_info(gpu or cpu),
        "torch_version": torch.__version__,
        "device": str(gpu or cpu),
        "settings": s,
        "sections": sec,
        "total_s": time.perf_counter() - start,
    }


def cuda_graph_row_safe(gpu: torch.device, repeats: int) -> Row:
    """The CUDA graph row on the paper-8b step, or the reason it could not be measured."""
    try:
        pw = paper_world(gpu)
        row = cuda_graph_row(pw.dit, pw.latent_hw, repeats)
        del pw
        return row
    except Exception as e:  # noqa: BLE001
        return {"name": "CUDA graph (transformer step)", "note": f"failed: {type(e).__name__}: {str(e)[:200]}"}
    finally:
        gc.collect()
        torch.cuda.empty_cache()


def targets(bundled: Row, paper: Row, kv_rows: list[Row]) -> list[Row]:
    """The issue's targets (benchmarks, not tests) against this run's numbers."""
    speedups = [r["speedup"] for r in kv_rows]
    rows = [
        {"name": "bundled decoded fps on CPU", "target": BUNDLED_FPS_TARGET, "measured": bundled["decoded_fps"],
         "met": bundled["decoded_fps"] >= BUNDLED_FPS_TARGET},
    ]
    if "decoded_fps" in paper:
        rows.append({"name": "paper-8b decoded fps on GPU", "target": PAPER_FPS_TARGET, "measured": paper["decoded_fps"],
                     "met": paper["decoded_fps"] >= PAPER_FPS_TARGET,
                     "note": f"stretch {PAPER_FPS_STRETCH}: {'met' if paper['decoded_fps'] >= PAPER_FPS_STRETCH else 'not met'}"})
    else:
        rows.append({"name": "paper-8b decoded fps on GPU", "target": PAPER_FPS_TARGET, "note": paper["note"]})
    rows.append({"name": "KV cache speed-up grows with window", "measured": ", ".join(f"{x:.1f}x" for x in speedups),
                 "met": all(b > a for a, b in zip(speedups, speedups[1:], strict=False)) and speedups[-1] > 1})
    return rows


def fmt(v: Any) -> str:
    """A table cell."""
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        return f"{v:.0f}" if abs(v) >= 1000 else f"{v:.3g}"
    if isinstance(v, list):
        return " ".join(fmt(x) for x in v)
    return str(v)


def table(title: str, rows: list[Row]) -> str:
    """A plain-text table of rows; columns are the keys in first-seen order, notes last."""
    cols: list[str] = []
    for r in rows:
        cols += [k for k in r if k not in cols and k != "note"]
    if any("note" in r for r in rows):
        cols.append("note")
    cells = [[fmt(r.get(c, "")) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    line = lambda vals: "  ".join(v.ljust(w) for v, w in zip(vals, widths, strict=True)).rstrip()  # noqa: E731
    return "\n".join([f"== {title} ==", line(cols), *(line(row) for row in cells)])


def report(result: dict[str, Any]) -> str:
    """The whole result as text: the machine, then one table per section."""
    m = result["machine"]
    head = (f"worldmodel.bench  {result['date']}  torch {result['torch_version']}  device {result['device']}\n"
            f"CPU {m['cpu']} ({m['cpu_cores']} cores, {m['torch_threads']} torch threads, load {m['load_average_1_5_15']})"
            f"  GPU {m['gpu'] or 'none'}  flash-attn {m['flash_attn'] or 'no'}")
    body = [table(name, rows) for name, rows in result["sections"].items()]
    return "\n\n".join([head, *body, f"total {result['total_s']:.0f} s"])


def main(argv: Sequence[str] | None = None) -> None:
    """CLI entry: run, print the tables, write the JSON."""
    a = parse_args(argv)
    result = run(a)
    print(report(result))
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        with open(a.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
