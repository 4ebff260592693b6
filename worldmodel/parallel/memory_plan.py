"""Per-GPU memory of a training job before renting the GPUs: parameters, gradients, optimizer, activations.

Parameter counts are exact (the model is built on the meta device, no memory used). The
rest follows from how `parallelize` shards:

- FSDP shards fp32 master parameters, fp32 gradients and optimizer state over all
  dp_shard x cp ranks: 4 + 4 + 4*states bytes per parameter / world.
- Gathered bf16 parameters (mixed precision): ZeRO-3 holds about two blocks at a time
  (the one computing and the one prefetched) plus the root; ZeRO-2 keeps every block
  gathered from its forward until its backward, i.e. the whole model in bf16.
- Activations (bf16) per GPU hold this rank's tokens (clip tokens / cp). With per-block
  checkpointing each block stores only its input, plus one block's full activations
  during its recompute; without it every block stores all of them. Per token a block
  keeps about `ACT_WIDTHS` vectors of width dim (norms, modulated inputs, q/k/v before
  and after the all-to-all, attention output, residuals) plus 2 x mlp_ratio x dim for
  the MLP; attention scores are never stored (flash/flex attention).
- The student-forcing KV cache: keys and values of the sink + window frames for every
  block, head-sharded by Ulysses (divided by cp).

It is an estimate for planning (allocator fragmentation, NCCL buffers and the CUDA
context, typically 3-6 GiB, are not counted); the table says so.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from worldmodel.config import DiTConfig, model_config

GIB = 1024**3
ACT_WIDTHS = 16
"""Vectors of width `dim` a block saves per token for backward, besides its MLP."""
OPTIMIZER_STATES = {"adamw": 2, "rmsprop": 1, "sgd": 0}
"""fp32 tensors per parameter each optimizer keeps (AdamW: exp_avg, exp_avg_sq; RMSProp: square_avg)."""


@dataclass
class PlanConfig:
    """One model of the job and the data it sees."""

    model: str = "paper-8b"
    """Size from the registry (worldmodel.config.model_config)."""
    role: str = "generator"
    """'generator' or 'discriminator' (adds the per-frame logit head)."""
    zero: int = 3
    """3: reshard after forward; 2: keep gathered until backward."""
    optimizer: str = "rmsprop"
    """'adamw', 'rmsprop' or 'sgd' (the adversarial stage uses RMSProp, alpha=0.9)."""
    width: int = 1280
    """Video width in pixels."""
    height: int = 720
    """Video height in pixels."""
    seconds: float = 10.0
    """Clip (segment) length the model processes in one forward."""
    fps: int = 24
    """Video frames per second (4 video frames per latent frame)."""
    batch_per_cp_group: int = 1
    """Samples per context-parallel group per micro-step."""
    activation_checkpointing: bool = True
    """Per-block recompute."""
    kv_cache: bool = False
    """Add the student-forcing KV cache (generator rollouts)."""
    window: int = 15
    """KV window in latent frames (15 at 1280x720 in the paper) plus the first-frame sink."""


def count_parameters(cfg: DiTConfig) -> tuple[int, int]:
    """(total, per block) parameter counts, from a model built on the meta device."""
    from worldmodel.dit import WorldDiT

    with torch.device("meta"):
        model = WorldDiT(cfg)
    total = sum(p.numel() for p in model.parameters())
    per_block = sum(p.numel() for p in model.blocks[0].parameters())
    return total, per_block


def plan(pc: PlanConfig, world: int, cp: int) -> dict[str, float]:
    """Per-GPU bytes (GiB) by category for one model on `world` GPUs with context parallelism `cp`."""
    if pc.optimizer not in OPTIMIZER_STATES:
        raise ValueError(f"optimizer={pc.optimizer!r}; expected one of {sorted(OPTIMIZER_STATES)}")
    if world % cp:
        raise ValueError(f"{world} GPUs do not divide into context-parallel groups of {cp}")
    cfg = model_config(pc.model, logit_head=pc.role == "discriminator")
    total, per_block = count_parameters(cfg)
    root = total - cfg.depth * per_block
    p = cfg.patch_size
    frame_tokens = (pc.height // 8 // p) * (pc.width // 8 // p)
    frames = max(1, round(pc.seconds * pc.fps / cfg.frames_per_step))
    tokens = pc.batch_per_cp_group * frames * frame_tokens // cp  # this rank's tokens
    per_token_block = (ACT_WIDTHS + 2 * cfg.mlp_ratio) * cfg.dim * 2  # bf16 bytes
    if pc.activation_checkpointing:
        acts = cfg.depth * tokens * cfg.dim * 2 + tokens * per_token_block
    else:
        acts = cfg.depth * tokens * per_token_block
    gathered_blocks = cfg.depth if pc.zero == 2 else 2
    out = {
        "params (fp32 shard)": 4 * total / world,
        "grads (fp32 shard)": 4 * total / world,
        "optimizer (fp32 shard)": 4 * OPTIMIZER_STATES[pc.optimizer] * total / world,
        "gathered bf16 params": 2 * (gathered_blocks * per_block + root),
        "activations (bf16)": acts,
    }
    if pc.kv_cache:
        out["kv cache (bf16)"] = cfg.depth * 2 * pc.batch_per_cp_group * (pc.window + 1) * frame_tokens * cfg.dim * 2 / cp
    gib = {k: v / GIB for k, v in out.items()}
    gib["total"] = sum(gib.values())
    gib["_params_b"] = total / 1e9
    gib["_tokens_per_gpu"] = tokens
    return gib


def format_table(rows: list[tuple[str, dict[str, float]]]) -> str:
    """Markdown table: one column per (name, plan), one row per category."""
    keys = [k for k in rows[0][1] if not k.startswith("_")]
    for _, r in rows[1:]:
        keys += [k for k in r if not k.startswith("_") and k not in keys]
    head = "| GiB per GPU | " + " | ".join(n for n, _ in rows) + " |"
    lines = [head, "|---|" + "---:|" * len(rows)]
    for k in keys:
        lines.append(f"| {k} | " + " | ".join(f"{r.get(k, 0.0):.1f}" for _, r in rows) + " |")
    return "\n".join(lines)


def with_fields(pc: PlanConfig, **kw) -> PlanConfig:
    """A copy of a plan config with some fields changed."""
    return dataclasses.replace(pc, **kw)
