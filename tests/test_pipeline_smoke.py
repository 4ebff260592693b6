"""The whole pipeline end to end on CPU, each entry point as a subprocess (`python -m train.smoke`)."""

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from worldmodel.world import World


@pytest.mark.slow
def test_pipeline_smoke_runs_end_to_end_in_under_ten_minutes(tmp_path):
    """collect -> VAE -> diffusion -> distill -> adversarial -> world file -> rollout mp4, < 10 min on CPU."""
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "train.smoke", "--out", str(tmp_path)], capture_output=True, text=True,
                          timeout=600, cwd=Path(__file__).resolve().parents[1])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert time.perf_counter() - t0 < 600
    summary = json.loads((tmp_path / "smoke.json").read_text())
    assert summary["rollout"]["frames"] == 4 * 9 and summary["rollout"]["finite"]
    assert (tmp_path / "rollout.mp4").stat().st_size > 0
    for stage in ("diffusion", "distill", "adversarial"):
        assert summary["stages"][stage]["steps"] > 0
        assert (tmp_path / "runs" / stage / "samples" / "final.mp4").stat().st_size > 0
        assert (tmp_path / "runs" / stage / "metrics.jsonl").read_text().strip()
    world = World.load(tmp_path / "world.safetensors")
    assert world.start_frames is not None and len(world.meta.action_low) == 6
