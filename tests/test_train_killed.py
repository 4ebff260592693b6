"""A training process killed with SIGKILL mid-run resumes from its last state file to the same weights.

Runs the real command line (`python -m train ...`) on the small test data: one uninterrupted run,
one run killed (no chance to clean up) once a few checkpoints exist, then `resume=true`.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from test_stages import make_tiny_root
from worldmodel.checkpoint import CheckpointError, load_checkpoint, load_meta

STEPS = 40


def command(root: Path, run: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "train", "stage=diffusion", "model=tiny", "data=doom",
            "++model.overrides.dim=64", "++model.overrides.depth=2",
            "++model.overrides.heads=4", "++model.overrides.window=4", f"data.root={root}",
            f"data.vae={root / 'vae.safetensors'}", "data.window_stride=1",
            "data.curriculum=[{start_step:0,steps:[2],resolutions:[[48,64]],batch_size:2}]",
            f"stage.steps={STEPS}", "stage.lr=1e-3", "ckpt_every=1", "log_every=1", "sample_frames=2",
            "sample_steps=2", "threads=1", "progress_bar=false", f"run_dir={run}", f"out={run / 'out.safetensors'}",
            *extra]


def saved_step(state: Path) -> int:
    try:
        return int(load_meta(state)["step"])
    except (CheckpointError, FileNotFoundError, KeyError):
        return -1


@pytest.mark.slow
def test_sigkilled_run_resumes_to_the_uninterrupted_weights(tmp_path):
    root = make_tiny_root(tmp_path / "data")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    subprocess.run(command(root, tmp_path / "full"), check=True, env=env, capture_output=True, timeout=600)

    run = tmp_path / "killed"
    proc = subprocess.Popen(command(root, run), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while saved_step(run / "state.safetensors") < 3 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=60) == -signal.SIGKILL, "the run finished before it could be killed"
    killed_at = saved_step(run / "state.safetensors")
    assert 3 <= killed_at < STEPS and not (run / "out.safetensors").exists()

    subprocess.run(command(root, run, "resume=true"), check=True, env=env, capture_output=True, timeout=600)
    full, resumed = load_checkpoint(tmp_path / "full" / "out.safetensors"), load_checkpoint(run / "out.safetensors")
    assert resumed[1]["steps"] == STEPS
    for k, v in full[0].items():
        assert torch.equal(v, resumed[0][k]), f"{k} differs after resuming a run killed at step {killed_at}"
