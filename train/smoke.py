"""End-to-end pipeline smoke run on CPU: `python -m train.smoke --out DIR`.

Runs every entry point as a subprocess, the way a user would, at toy sizes:
collect real ViZDoom clips -> VAE (recon, then light decoder) -> diffusion -> distill ->
adversarial (one long-video extension) -> the exported world file rolled out to an mp4.
Takes a few minutes on two CPU cores; every stage's output stays under DIR.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def run(cmd: list[str], log: Path) -> float:
    """Run one entry point; raise with the tail of its log if it fails. Returns seconds taken."""
    t0 = time.perf_counter()
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    with log.open("w") as f:
        proc = subprocess.run([sys.executable, *cmd], stdout=f, stderr=subprocess.STDOUT, cwd=ROOT, env=env)
    if proc.returncode:
        raise RuntimeError(f"`{' '.join(cmd)}` failed (exit {proc.returncode}); log {log}:\n{log.read_text()[-3000:]}")
    return time.perf_counter() - t0


def stage_args(out: Path, stage: str, steps: int) -> list[str]:
    """Overrides that shrink a post-training stage to smoke size."""
    return [
        "-m", "train", f"stage={stage}", "model=tiny", "data=doom",
        f"data.root={out / 'data'}", f"data.vae={out / 'vae.safetensors'}",
        "data.curriculum=[{start_step: 0, steps: [3], resolutions: [[48, 64]], batch_size: 2}]",
        "data.window_stride=2", "data.start_frames=2",
        "+model.overrides.dim=64", "+model.overrides.depth=2", "+model.overrides.heads=4", "model.overrides.window=4",
        f"run_dir={out / 'runs' / stage}", f"out={out / (stage + '.safetensors')}",
        f"stage.steps={steps}", "ckpt_every=2", "log_every=1", "sample_frames=3", "sample_steps=2",
        "progress_bar=false",
    ]


def rollout_video(world_path: Path, mp4: Path, steps: int = 8) -> dict:
    """Load the world file, step it with actions inside its bounds, write the frames as mp4."""
    import imageio.v2 as imageio

    from worldmodel.world import World

    world = World.load(world_path)
    streams = world.streams(batch=1, seeds=[0])
    frames = [streams.reset(world.start_frames[:1])[0]]
    rng = np.random.default_rng(0)
    low, high = np.asarray(world.meta.action_low), np.asarray(world.meta.action_high)
    for _ in range(steps):
        frames.append(streams.step(rng.uniform(low, high)[None])[0])
    video = np.concatenate(frames)  # (T, H, W, 3)
    imageio.mimwrite(mp4, list(video), fps=8, macro_block_size=1)
    return {"frames": int(video.shape[0]), "finite": bool(np.isfinite(video).all()), "mp4": str(mp4)}


def smoke(out: Path) -> dict:
    """The whole pipeline at toy size; returns per-step timings and final metrics."""
    out.mkdir(parents=True, exist_ok=True)
    logs = out / "logs"
    logs.mkdir(exist_ok=True)
    times = {}
    times["collect"] = run(["-m", "train.collect", f"root={out / 'data'}", "train_clips=2", "val_clips=1",
                            "steps_per_clip=12", "frame_size=[48,64]", "warmup_steps=2",
                            f"hydra.run.dir={out / 'runs' / 'collect'}"], logs / "collect.log")
    vae = ["-m", "train.vae", f"data_root={out / 'data'}", "height=48", "width=64", "crop_h=48", "crop_w=64",
           "batch_size=2", "warmup=2", "ckpt_every=5", "log_every=2", "eval_clips=2", "stats_clips=4",
           f"run_dir={out / 'runs' / 'vae'}", f"out={out / 'vae.safetensors'}", f"init={out / 'vae.safetensors'}",
           "progress_bar=false"]
    times["vae_recon"] = run([*vae, "phase=recon", "steps=10"], logs / "vae_recon.log")
    times["vae_light"] = run([*vae, "phase=light", "steps=5"], logs / "vae_light.log")
    times["diffusion"] = run(stage_args(out, "diffusion", 6), logs / "diffusion.log")
    times["distill"] = run([*stage_args(out, "distill", 4), f"stage.init={out / 'diffusion.safetensors'}",
                            "stage.distill.eval_clips=2"], logs / "distill.log")
    times["adversarial"] = run([*stage_args(out, "adversarial", 2), f"stage.init={out / 'distill.safetensors'}",
                                f"stage.adversarial.disc_init={out / 'diffusion.safetensors'}",
                                "stage.adversarial.extensions=1", "stage.adversarial.overlap=1",
                                f"stage.adversarial.world_out={out / 'world.safetensors'}"], logs / "adversarial.log")
    t0 = time.perf_counter()
    result = rollout_video(out / "world.safetensors", out / "rollout.mp4")
    times["rollout"] = time.perf_counter() - t0
    summary = {"seconds": {k: round(v, 1) for k, v in times.items()}, "total_s": round(sum(times.values()), 1),
               "rollout": result,
               "stages": {s: json.loads((out / "runs" / s / "summary.json").read_text())
                          for s in ("diffusion", "distill", "adversarial")}}
    (out / "smoke.json").write_text(json.dumps(summary, indent=1, default=str))
    return summary


def main() -> None:
    """Command line: `python -m train.smoke --out DIR`."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("runs/smoke"), help="folder for data, checkpoints, logs, videos")
    s = smoke(ap.parse_args().out)
    print(json.dumps({"seconds": s["seconds"], "total_s": s["total_s"], "rollout": s["rollout"]}, indent=1))


if __name__ == "__main__":
    main()
