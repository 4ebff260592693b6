"""Structured configs of `python -m train stage=... model=... data=...` (hydra schema `train_schema`).

The yaml files under train/conf/{stage,model,data}/ only set values; every field is
documented here. Paper-scale values are in the docstrings where we scale them down.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any, ClassVar

from train.common import ConfigError, flat_config
from worldmodel.config import drop_retired
from worldmodel.parallel import ParallelConfig

STAGES = ("diffusion", "distill", "adversarial")


def require(condition: bool, key: str, value: Any, rule: str) -> None:
    """Raise ConfigError naming `key` when a setting breaks its rule."""
    if not condition:
        raise ConfigError(f"{key}={value!r} {rule}")


@dataclass
class LoopConf:
    """Settings of the one training loop (train/stages/loop.py), shared by the VAE phases and the stages."""

    seed: int = 0
    """Seed of model init, data order and noise."""
    threads: int | None = None
    """torch CPU threads; null: one per idle core, at most torch's default (worldmodel.threads)."""
    ckpt_every: int = 50
    """Save the training state every this many steps (and when the run stops)."""
    log_every: int = 10
    """Log metrics every this many steps."""
    resume: bool = False
    """Continue the run in run_dir from its training state; without it a used run_dir is refused."""
    resume_changes: list[str] = field(default_factory=list)
    """Settings a resume may change, e.g. [stage.lr,seed]; a resume that changes any other setting is refused."""
    stop_after: int = 0
    """Stop this run after this many steps, saving the state (0 = run to the end); for time-sliced jobs."""
    progress_bar: bool = True
    """Show the tqdm bar."""

    FREE: ClassVar[tuple[str, ...]] = ("threads", "ckpt_every", "log_every", "resume", "resume_changes",
                                       "stop_after", "progress_bar", "run_dir", "out")
    """Settings a resume may change without resume_changes: how often and where, not what is learned."""

    def __post_init__(self) -> None:
        require(self.threads is None or self.threads >= 1, "threads", self.threads, "must be >= 1, or null for the default")
        require(self.ckpt_every >= 1, "ckpt_every", self.ckpt_every, "must be >= 1 (steps between saved states)")
        require(self.log_every >= 1, "log_every", self.log_every, "must be >= 1 (steps between metric rows)")
        require(self.stop_after >= 0, "stop_after", self.stop_after, "must be >= 0 (0 = run to the end)")
        require(all(isinstance(k, str) for k in self.resume_changes), "resume_changes", self.resume_changes,
                "must be a list of config keys, e.g. [stage.lr,seed]")


@dataclass
class ModelConf:
    """Which transformer to build."""

    size: str = "tiny"
    """Registry name in worldmodel.config (tiny, small, paper-8b)."""
    overrides: dict[str, Any] = field(default_factory=dict)
    """DiTConfig field overrides, e.g. {window: 8, depth: 4}."""


@dataclass
class CurriculumPhase:
    """One phase of the resolution/duration curriculum (paper: 5 s 736x416 -> + 1280x720 -> 15 s)."""

    start_step: int = 0
    """First optimizer step of this phase."""
    steps: list[int] = field(default_factory=lambda: [4])
    """Clip durations in latent steps (model frames); one is drawn per batch."""
    resolutions: list[list[int]] = field(default_factory=lambda: [[96, 128]])
    """Resolution buckets [H, W] (multiples of 8 * patch_size); one per batch."""
    batch_size: int = 4
    """Clips per batch (per rank)."""


@dataclass
class DataConf:
    """Where clips and the VAE come from."""

    root: str = "data/doom"
    """Collected shard root (python -m train.collect)."""
    vae: str = "checkpoints/vae_tiny.safetensors"
    """Trained VAE (python -m train.vae); clips are encoded with it on the fly."""
    curriculum: list[CurriculumPhase] = field(default_factory=lambda: [CurriculumPhase()])
    """Phases ordered by start_step; the first must start at 0."""
    window_stride: int = 4
    """Latent steps between window starts within a shard."""
    cache_shards: int = 8
    """Decoded shards kept in memory by the dataset (about 19 MB each at 96x128)."""
    latent_cache: int = 4096
    """Encoded clips kept in memory (clips repeat across epochs; the VAE is frozen)."""
    start_frames: int = 4
    """Validation first frames stored in the exported world file (one per validation shard)."""
    camera_reference: str | None = None
    """Camera normalisation ('rest' or 'none', see CameraStats). None: the init checkpoint's, else 'rest'.
    Set it to fine-tune an older model into another normalisation (its camera projection re-learns)."""


def check_declared(cfg: Any, prefix: str = "") -> None:
    """Raise ConfigError for a key that no field of config dataclass `cfg` (or one inside it) declares.

    Hydra's `+stage.key=value` adds such keys and OmegaConf.to_object keeps them as plain attributes
    that nothing reads, so a retired option (docs/design.md, "Retired options") would be ignored silently.
    """
    names = [f.name for f in fields(cfg)]
    extra = sorted(set(vars(cfg)) - set(names))
    if extra:
        raise ConfigError(f"unknown config key(s) {[prefix + k for k in extra]}: no field of {type(cfg).__name__} "
                          f"declares them (train/stages/config.py; retired options: docs/design.md)")
    for name in names:
        value = getattr(cfg, name)
        if is_dataclass(value):
            check_declared(value, f"{prefix}{name}.")


RETIRED_STAGE_KEYS: dict[str, Any] = {"stage.reset_output": False, "stage.adversarial.regression_weight": 0.0}
"""Stage options retired on 2026-12-02 (docs/design.md, "Retired options"), each with the value that asked
for the behaviour that remains."""


def retired_settings(saved: Mapping[str, Any]) -> list[str]:
    """'key=value' of each retired option a saved training config set to a behaviour that is gone
    (stage keys, and DiTConfig keys under model.overrides): a run trained with one cannot continue."""
    bad = []
    for key, value in flat_config(saved).items():
        if key in RETIRED_STAGE_KEYS:
            if value != RETIRED_STAGE_KEYS[key]:
                bad.append(f"{key}={value!r}")
        elif key.startswith("model.overrides."):
            try:
                drop_retired({key.removeprefix("model.overrides."): value})
            except ValueError:
                bad.append(f"{key}={value!r}")
    return bad


@dataclass
class DistillConf:
    """Consistency distillation (supplementary D)."""

    grid_steps: int = 32
    """Fixed steps of the consistency grid (uniform then shifted)."""
    teacher: str = ""
    """Frozen diffusion weights for the teacher's Euler step (default: the stage's init)."""
    eval_clips: int = 4
    """Fixed clips for the one-step vs 32-step-teacher distance logged at start and end."""


@dataclass
class AdversarialConf:
    """Adversarial post-training with student forcing and long-video extension (supplementary D, F, G)."""

    disc_init: str = ""
    """Discriminator initial weights: the diffusion-adaptation checkpoint (logit head is fresh)."""
    disc_lr: float = 3e-6
    """Discriminator RMSProp learning rate."""
    rmsprop_alpha: float = 0.9
    """RMSProp smoothing constant (APT)."""
    r_sigma: float = 0.1
    """Std of the perturbation in approximate R1/R2."""
    r_weight: float = 1000.0
    """lambda of approximate R1/R2."""
    extensions: int = 0
    """Long-video segments generated after the first (paper: 0, then 1, then 5)."""
    overlap: int = 2
    """Latent frames each extension segment shares with the previous one (paper: 6 = 1 s)."""
    teacher_forcing: bool = False
    """Supplementary F: generator predicts in parallel from ground truth; D scores each output against the real past."""
    world_out: str = ""
    """Export the final world file (DiT + VAE + camera stats + intrinsics + action bounds + start frames) here."""


@dataclass
class StageConf:
    """One post-training stage and its optimizer."""

    name: str = "diffusion"
    """'diffusion', 'distill' or 'adversarial'."""
    steps: int = 200
    """Total optimizer steps (generator updates for adversarial)."""
    lr: float = 1e-4
    """Learning rate (paper: 1e-5 AdamW for diffusion/distill, 3e-6 then 1e-5 RMSProp for adversarial)."""
    weight_decay: float = 0.01
    """AdamW weight decay (paper: 0.01)."""
    grad_clip: float = 1.0
    """Global gradient-norm clip (0 = off)."""
    shift: float = 24.0
    """Timestep shift s of shift(t, s) = s t / (1 + (s - 1) t)."""
    init: str = ""
    """Weights to start from: '' = fresh init (diffusion), else a checkpoint written by the previous stage."""
    recycle: bool = True
    """False = supplementary G ablation: the recycled input is zero except for the first frame (every stage)."""
    distill: DistillConf = field(default_factory=DistillConf)
    """Consistency distillation options."""
    adversarial: AdversarialConf = field(default_factory=AdversarialConf)
    """Adversarial options."""


@dataclass
class ParallelConf(ParallelConfig):
    """Scale-out under torchrun (docs/distributed.md): the fields of worldmodel.parallel.ParallelConfig
    (dp_shard, cp, zero, activation_checkpointing, compile, mixed_precision) plus the two below.
    Off by default: plain data parallel (gradient all-reduce)."""

    fsdp: bool = False
    """Shard parameters, gradients and optimizer state with FSDP2 over a (dp_shard, cp) mesh."""
    generator_zero: int = 2
    """ZeRO stage of the adversarial stage's generator (2: stays gathered across its recurrent
    forward_step calls); `zero` applies to every other model."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.cp > 1 and not self.fsdp:
            raise ValueError(f"parallel.cp={self.cp} runs on the FSDP2 mesh: set parallel.fsdp=true")
        self.for_model(self.generator_zero)  # validates generator_zero

    def for_model(self, zero: int | None = None) -> ParallelConfig:
        """The worldmodel.parallel config of one model (ZeRO stage `zero`, default `self.zero`)."""
        base = {f.name: getattr(self, f.name) for f in fields(ParallelConfig)}
        return ParallelConfig(**{**base, "zero": self.zero if zero is None else zero})


@dataclass
class TrainConfig(LoopConf):
    """Everything one stage run needs (the loop's settings are those of LoopConf)."""

    stage: StageConf = field(default_factory=StageConf)
    """The stage (hydra group `stage`)."""
    model: ModelConf = field(default_factory=ModelConf)
    """The transformer (hydra group `model`)."""
    data: DataConf = field(default_factory=DataConf)
    """The data (hydra group `data`)."""
    parallel: ParallelConf = field(default_factory=ParallelConf)
    """FSDP2 / context parallelism / activation checkpointing (see docs/distributed.md)."""
    run_dir: str = "runs/diffusion_tiny"
    """Training state, metrics.jsonl, TensorBoard files and sample videos."""
    out: str = "checkpoints/diffusion_tiny.safetensors"
    """Final weights of this stage (input of the next)."""
    deterministic: bool = True
    """Deterministic kernels (exact resume on CPU; slower on GPU)."""
    device: str = "auto"
    """'auto' (CUDA when available), 'cpu' or 'cuda' (under torchrun each rank takes its local GPU)."""
    bf16: bool = True
    """bf16 autocast on CUDA (ignored on CPU)."""
    sample_every: int = 0
    """Write a sample video every this many steps (0 = only at the end)."""
    sample_frames: int = 8
    """Latent frames per sample video (0 = no sample videos, e.g. where imageio has no ffmpeg)."""
    sample_steps: int = 8
    """Euler steps per latent frame in the diffusion stage's sample videos (the distilled stages use 1)."""

    FREE: ClassVar[tuple[str, ...]] = (*LoopConf.FREE, "stage.steps", "device", "parallel", "sample_every",
                                       "sample_frames", "sample_steps", "stage.adversarial.world_out")

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.stage.steps >= 1, "stage.steps", self.stage.steps, "must be >= 1")
        for i, phase in enumerate(self.data.curriculum):
            require(phase.batch_size >= 1, f"data.curriculum[{i}].batch_size", phase.batch_size, "must be >= 1")
        require(self.device in ("auto", "cpu", "cuda"), "device", self.device, "is not one of auto, cpu, cuda")
        for key in ("sample_every", "sample_frames"):
            require(getattr(self, key) >= 0, key, getattr(self, key), "must be >= 0 (0 = off)")
        require(self.sample_steps >= 1, "sample_steps", self.sample_steps, "must be >= 1")
