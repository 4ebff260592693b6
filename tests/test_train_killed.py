"""A training process killed mid-run resumes from its last state file to the same weights.

Runs the real command line (`python -m train ...`) on the small test data: one uninterrupted run,
then runs stopped by SIGKILL (no chance to clean up) or by Ctrl-C (SIGINT, which stops at a step
boundary and saves), then `resume=true`.
"""

from __future__ import annotations

import json
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


def last_logged(metrics: Path) -> int:
    """The last step in a metrics.jsonl that is being written (0 before the first row)."""
    steps = [0]
    for row in metrics.read_text().splitlines() if metrics.exists() else []:
        try:
            steps.append(json.loads(row)["step"])
        except (json.JSONDecodeError, KeyError):
            pass  # a row still being written
    return max(steps)


@pytest.mark.slow
def test_three_ctrl_c_then_resume_gives_the_uninterrupted_weights(tmp_path):
    """Guards issue 20.2: Ctrl-C lands mid-step (batch and noise drawn, weights maybe updated); the run must
    save the state of a step boundary, so three Ctrl-C and a resume end bit-identical to one straight run."""
    root = make_tiny_root(tmp_path / "data")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    subprocess.run(command(root, tmp_path / "full"), check=True, env=env, capture_output=True, timeout=600)

    run, stops, codes = tmp_path / "cut", [0], []
    for i in range(3):
        resume = ["resume=true"] if i else []
        with (tmp_path / f"stop{i}.log").open("w") as log:  # only the stop saves: ckpt_every is past the end
            proc = subprocess.Popen(command(root, run, "ckpt_every=1000", *resume), env=env, stdout=log, stderr=log)
            deadline = time.time() + 300
            while last_logged(run / "metrics.jsonl") < stops[-1] + 2 and proc.poll() is None and time.time() < deadline:
                time.sleep(0.02)
            proc.send_signal(signal.SIGINT)
            codes.append(proc.wait(timeout=120))
        stops.append(saved_step(run / "state.safetensors"))
    assert stops == sorted(set(stops)) and stops[-1] < STEPS, f"saved steps {stops}: a run ended before its Ctrl-C"

    subprocess.run(command(root, run, "resume=true"), check=True, env=env, capture_output=True, timeout=600)
    full, resumed = load_checkpoint(tmp_path / "full" / "out.safetensors"), load_checkpoint(run / "out.safetensors")
    differ = [k for k, v in full[0].items() if not torch.equal(v, resumed[0][k])]
    assert not differ, f"{len(differ)} of {len(full[0])} tensors differ after Ctrl-C at steps {stops[1:]} and resume"
    assert codes == [128 + signal.SIGINT] * 3, (tmp_path / "stop0.log").read_text()[-2000:]
