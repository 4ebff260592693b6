"""One rank of the torchrun job of tests/test_stage_parallel.py: the real training stages, sharded.

Usage (as each rank, with torchrun's environment): stage_dist_worker.py OUT DATA_ROOT

Runs short diffusion, distillation and adversarial stages on the test data, once as plain
data parallel and once under FSDP2 (`parallel.fsdp=true`; ZeRO-2 for the adversarial
generator), plus an FSDP2 run that stops and resumes, and a context-parallel run. Each run
writes its output weights under OUT/<scenario>/; the test compares them.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import torch

from test_stages import adversarial_inits, stage_config
from train.distributed import init_distributed
from train.sharded_state import is_sharded
from train.stages import build_stage
from train.stages.config import ParallelConf

SCENARIOS = {
    # name: (stage, parallel config, stop_after then resume). Context parallelism first: on the fresh
    # data root both ranks are data rank 0 and both measure and save the camera statistics.
    "diffusion_cp": ("diffusion", ParallelConf(fsdp=True, dp_shard=1, cp=2, activation_checkpointing=True), False),
    "diffusion_dp": ("diffusion", ParallelConf(), False),
    "diffusion_fsdp": ("diffusion", ParallelConf(fsdp=True), False),
    "diffusion_fsdp_resumed": ("diffusion", ParallelConf(fsdp=True), True),
    "distill_dp": ("distill", ParallelConf(), False),
    "distill_fsdp": ("distill", ParallelConf(fsdp=True), False),
    "adversarial_dp": ("adversarial", ParallelConf(), False),
    "adversarial_fsdp": ("adversarial", ParallelConf(fsdp=True, zero=3, generator_zero=2), False),
    "adversarial_cp": ("adversarial", ParallelConf(fsdp=True, dp_shard=1, cp=2), False),
}
STEPS = 3  # stays in the first curriculum phase: 2-step clips, whose 2 latent frames split over cp=2


def scenario_config(name: str, out: Path, root: Path):
    """The TrainConfig of one scenario (shared with the single-process reference in the test)."""
    stage, parallel, _ = SCENARIOS[name]
    inits = adversarial_inits(out, write=False)  # the test wrote out/init.safetensors before launching
    kw = {"diffusion": {}, "distill": {"init": inits["init"]}, "adversarial": inits}[stage]
    cfg = stage_config(root, out / name, stage, steps=STEPS, **kw)
    return dataclasses.replace(cfg, parallel=parallel, ckpt_every=1)


def main(out: Path, root: Path) -> None:
    torch.set_num_threads(1)
    info = init_distributed()
    res: dict[str, object] = {}
    for name, (_, _, resumed) in SCENARIOS.items():
        cfg = scenario_config(name, out, root)
        if resumed:
            build_stage(dataclasses.replace(cfg, stop_after=2)).run()  # then "killed": only the state file remains
            cfg = dataclasses.replace(cfg, resume=True)
        stage = build_stage(cfg)
        summary = stage.run()
        res[name] = {"steps": summary["steps"], "sharded": [is_sharded(m) for m in stage.models.values()]}
        torch.distributed.barrier()
    (out / f"result_{info.rank}.json").write_text(json.dumps(res))
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
