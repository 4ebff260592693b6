"""Model configs: dataclasses usable as hydra structured configs, and a size registry.

`model_config("tiny")` returns a fresh `DiTConfig`; override fields with
`dataclasses.replace` or hydra (`model=tiny model.depth=2`).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from collections.abc import Mapping
from typing import Any, TypeVar

T = TypeVar("T")


@dataclass
class DiTConfig:
    """The block-causal MMDiT world model (generator, and discriminator with `logit_head`)."""

    name: str = "tiny"
    """Registry name this config came from (informational)."""
    latent_channels: int = 16
    """Channels of one VAE latent frame."""
    frames_per_step: int = 4
    """Decoded video frames per latent frame (the VAE's temporal compression)."""
    patch_size: int = 2
    """Spatial patch size applied to the latent grid."""
    dim: int = 192
    """Hidden width of the video stream."""
    depth: int = 6
    """Number of MMDiT blocks."""
    heads: int = 6
    """Attention heads; dim must divide by heads."""
    mlp_ratio: float = 4.0
    """MLP hidden width as a multiple of dim."""
    context_dim: int = 0
    """Width of the optional context stream's input tokens (text etc.); 0 = no context stream."""
    qk_norm: bool = True
    """RMS-normalise queries and keys per head (keeps attention logits bounded)."""
    rope_ref_grid: tuple[int, int] = (26, 46)
    """Reference token grid (rows, cols) that spatial RoPE positions are stretched to.
    (26, 46) is 416x736 pixels / 8 (VAE) / 2 (patch)."""
    rope_theta: float = 10000.0
    """RoPE base frequency."""
    rope_temporal_fraction: float = 0.25
    """Share of each head's dims given to the temporal RoPE axis (rest split between rows and cols)."""
    temporal_interval: float = 1.0
    """Temporal RoPE position step per latent frame (fixed, so any length works)."""
    window: int = 30
    """Sliding attention window in latent frames, besides the first-frame sink."""
    logit_head: bool = False
    """Add the per-frame logit head (discriminator)."""
    attention_backend: str = "auto"
    """'auto', 'sdpa', 'flex' or 'flash'."""
    camera_channels_per_frame: int = 6
    """Plücker channels per video frame: ray origin (3) + unit direction (3)."""
    recycle_warp: bool = False
    """Warp the recycled latent by the step's commanded rotation (bilinear) before the model sees it. The
    camera input then carries 2 more channels, the sampling grid (`camera.rotation_warp_grid`),
    after the Plücker ones. A departure from AAPT's plain recycling: a small model on little
    compute learns to move the picture with the camera from it (docs/training.md)."""

    def __post_init__(self) -> None:
        if self.dim % self.heads:
            raise ValueError(f"dim={self.dim} must be divisible by heads={self.heads}")
        if (self.dim // self.heads) % 2:
            raise ValueError(f"head dim {self.dim // self.heads} must be even for RoPE")
        if self.attention_backend not in ("auto", "sdpa", "flex", "flash"):
            raise ValueError(
                f"attention_backend={self.attention_backend!r}; expected 'auto', 'sdpa', 'flex' or 'flash'"
            )
        if self.window < 1:
            raise ValueError(f"window={self.window} must be >= 1")
        self.rope_ref_grid = tuple(self.rope_ref_grid)  # hydra hands lists

    @property
    def head_dim(self) -> int:
        return self.dim // self.heads

    @property
    def plucker_channels(self) -> int:
        """Plücker channels per latent frame (every video frame in the step)."""
        return self.camera_channels_per_frame * self.frames_per_step

    @property
    def camera_channels(self) -> int:
        """Camera input channels per latent frame: the Plücker maps, plus the warp grid with `recycle_warp`."""
        return self.plucker_channels + (2 if self.recycle_warp else 0)

    @property
    def in_channels(self) -> int:
        """Channels concatenated per latent frame: noisy + recycled latent + camera."""
        return 2 * self.latent_channels + self.camera_channels


_SIZES: dict[str, dict[str, Any]] = {
    # CPU tests and the bundled model: a few M parameters.
    "tiny": dict(dim=192, depth=6, heads=6),
    # One GPU.
    "small": dict(dim=768, depth=12, heads=12),
    # The paper: 36 MMDiT blocks, about 8B parameters with a text-width context stream.
    "paper-8b": dict(dim=2688, depth=36, heads=21, context_dim=4096),
}


def from_registry(cls: type, sizes: dict[str, dict[str, Any]], name: str, overrides: dict[str, Any],
                  kind: str = "model") -> Any:
    """Build config `cls` from a named size plus field overrides; unknown names or fields are errors."""
    if name not in sizes:
        raise KeyError(f"unknown {kind} size {name!r}; known: {sorted(sizes)}")
    fields = {f.name for f in dataclasses.fields(cls)}
    bad = set(overrides) - fields
    if bad:
        raise KeyError(f"unknown {cls.__name__} field(s) {sorted(bad)}; known: {sorted(fields)}")
    return cls(name=name, **{**sizes[name], **overrides})


def model_config(name: str, **overrides: Any) -> DiTConfig:
    """A fresh config from the size registry, with field overrides."""
    return from_registry(DiTConfig, _SIZES, name, drop_retired(overrides, "model override"))


def model_sizes() -> list[str]:
    """Names in the size registry."""
    return list(_SIZES)


def config_to_dict(cfg: DiTConfig) -> dict[str, Any]:
    """JSON-ready dict of a config."""
    d = dataclasses.asdict(cfg)
    d["rope_ref_grid"] = list(d["rope_ref_grid"])
    return d


@dataclass(frozen=True)
class Retired:
    """A config key that older files (and old commands) set but that no longer configures anything."""

    remains: tuple[Any, ...]
    """Values that ask for the behaviour the model still has: dropped silently."""
    why: str
    """What the option did and why it went; any other value raises with it."""


RETIRED_DIT_KEYS: dict[str, Retired] = {
    "checkpoint_activations": Retired((False, True), "activation checkpointing is applied by "
                                      "worldmodel.parallel.parallelize (ParallelConfig.activation_checkpointing)"),
    "warp_mode": Retired(("bilinear",), "it chose the recycled-latent warp's interpolation, now always bilinear; "
                         "bicubic measured worse (docs/training.md, third CPU round)"),
    "warp_residual": Retired((False,), "it made the output a correction of the warped recycled latent; measured "
                             "worse: the picture barely turned (yaw gain 0.02 against 0.28; docs/training.md, "
                             "fifth CPU round)"),
}
"""Retired DiTConfig keys (docs/design.md, "Retired options"); the bundled world's file stores all three."""


def drop_retired(d: Mapping[str, Any], what: str = "dit_config",
                 retired: Mapping[str, Retired] | None = None) -> dict[str, Any]:
    """`d` without its retired keys (`retired`, default the DiTConfig's); a retired key set to a value whose
    behaviour is gone is a ValueError."""
    retired = RETIRED_DIT_KEYS if retired is None else retired
    for key, value in d.items():
        old = retired.get(key)
        if old is not None and not any(matches_type(value, type(r)) and value == r for r in old.remains):
            raise ValueError(
                f"{what} sets {key}={value!r}, an option retired on 2026-12-02: {old.why}. A model trained with it "
                f"behaves differently without it; run it from a checkout before the retirement "
                f"(git log -S {key})")
    return {k: v for k, v in d.items() if k not in retired}


def config_from_dict(d: dict[str, Any]) -> DiTConfig:
    """Rebuild a config from `config_to_dict` output; unknown keys and wrong types are errors."""
    return dataclass_from_dict(DiTConfig, drop_retired(d))


def type_name(tp: Any) -> str:
    """A readable name of a field annotation: `int`, `list[float]`, `float | None`."""
    return tp.__name__ if isinstance(tp, type) and not typing.get_args(tp) else str(tp).replace("typing.", "")


def matches_type(value: Any, tp: Any) -> bool:
    """Whether a JSON-like value fits a field annotation (ints count as floats; bools are not numbers).

    Annotations this does not know (nested classes, Callables) are accepted: the class's own
    checks see those values.
    """
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(matches_type(value, a) for a in args)
    if tp is type(None):
        return value is None
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is str:
        return isinstance(value, str)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            return False
        if origin is tuple and args and args[-1] is not Ellipsis:
            return len(value) == len(args) and all(matches_type(v, a) for v, a in zip(value, args))
        return not args or all(matches_type(v, args[0]) for v in value)
    if origin is dict or tp is dict:
        return isinstance(value, dict) and (not args or all(matches_type(v, args[1]) for v in value.values()))
    return True


def dataclass_from_dict(cls: type[T], d: Any, what: str | None = None) -> T:
    """Build config dataclass `cls` from a JSON dict, checking keys and field types first.

    Raises TypeError naming the field and its expected type, or KeyError for unknown keys, so a
    file's metadata never reaches arithmetic with a string where a number belongs.
    """
    what = what or cls.__name__
    if not isinstance(d, dict):
        raise TypeError(f"{what} is {type(d).__name__} {d!r:.80}, expected a JSON object with {cls.__name__} fields")
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls) if f.init}
    bad = set(d) - fields
    if bad:
        raise KeyError(f"unknown {cls.__name__} key(s) {sorted(bad)}; known: {sorted(fields)}")
    for k, v in d.items():
        if not matches_type(v, hints[k]):
            raise TypeError(f"{what}.{k} is {type(v).__name__} {v!r:.80}, expected {type_name(hints[k])}")
    return cls(**d)


CAMERA_REFERENCES = ("none", "rest")


@dataclass
class CameraStats:
    """Per-channel mean/std of the Plücker channels (origin xyz, direction xyz) on training data."""

    mean: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0, 0.0, 0.0, 1.0])
    std: list[float] = field(default_factory=lambda: [1.0] * 6)
    reference: str = "none"
    """What the direction channels are measured from before scaling. 'none': the unit ray itself.
    'rest': the ray minus the same pixel's ray under no motion. The rest rays are a fixed field-of-view
    pattern (std ~0.4) that dwarfs a 1-degree turn (~0.017); removing it lets a turn reach unit scale."""

    def __post_init__(self) -> None:
        if self.reference not in CAMERA_REFERENCES:
            raise ValueError(f"camera stats reference {self.reference!r} unknown; expected one of {CAMERA_REFERENCES}")
        if len(self.mean) != 6 or len(self.std) != 6:
            raise ValueError(f"camera stats need 6 means and 6 stds, got {len(self.mean)} and {len(self.std)}")
        if any(s <= 0 for s in self.std):
            raise ValueError(f"camera stats std must be > 0, got {self.std}")
