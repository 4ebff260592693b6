"""Reprojection memory: keep what the camera still sees where the commanded rotation puts it.

Our small one-step generator turns the picture less than it is told and smears it; the
commanded rotation, though, says exactly where every cell of an earlier latent lands in the new
view (translation would need depth, which a latent does not carry). This memory keeps an
*anchor* latent per stream and the camera motion since it. Each step that turns the camera by
`min_turn` or more, it resamples the anchor into the new view once (`camera.rotation_warp_grid`;
once from the anchor, not once per step, so resampling blur does not pile up) and blends it
with the network's latent:

    trust = keep * exp(-travel / travel_scale)   # travel: distance walked from the anchor's camera
    m = coverage ** mask_power * trust           # coverage: how much of a cell the anchor still sees
    z = m * reprojected_anchor + (1 - m) * generated

The network paints what comes into view; the rest turns with the camera. A step that turns by
less than `min_turn` (walking, mostly) shows the network's latent as it is, and that latent
becomes the anchor: rotation says nothing about walking, so there the network draws the change.
The anchor is also renewed (from the blend) once it covers `refresh_coverage` of the view or
less, or the camera has walked 2 `travel_scale`s from it.

Why both `min_turn` and bicubic resampling (docs/training.md, "Reprojection memory"): holding
the anchor on every step froze the picture while the camera walked straight; with bilinear
resampling the anchors lost their texture over a 1,440-frame run until turning barely changed
the picture.

    mem = ReprojectionMemory(ReprojectionConfig(), batch, intrinsics, image_hw, latent_hw, channels)
    mem.reset(first_latents)                  # (B, C, h, w)
    z = mem.blend(generated, step_poses)      # (B, C, h, w), (B, 4, 4) -> (B, C, h, w)
"""

from __future__ import annotations

import argparse
import ast
import inspect
from collections.abc import Sequence
from dataclasses import dataclass, fields

import numpy as np
import torch

from worldmodel.camera import rotation_angle, rotation_warp_grid
from worldmodel.dit import warp_recycled
from worldmodel.indexing import stream_indices

TURN_TOLERANCE = 1e-6
"""Radians a turn may fall short of `min_turn` and still count as one: an action stored in float32
(0.03 -> 0.0299999993) must not fall on the walking side of a threshold it was meant to reach."""


@dataclass
class ReprojectionConfig:
    """How generated latents are blended with the reprojected anchor (see the module docstring)."""

    refresh_coverage: float = 0.6
    """Make the blended latent the new anchor once the anchor covers this share of the view or less
    (1: every step, so the network's changes carry forward; blur then piles up step by step)."""
    mask_power: float = 2.0
    """Coverage is raised to this power: > 1 widens the border band the network paints."""
    keep: float = 1.0
    """Weight of the reprojected anchor where it fully covers a cell (1: the network paints borders only)."""
    travel_scale: float | None = None
    """Scene units of walking from the anchor's camera that cut the anchor's trust by e (None: never)."""
    min_turn: float = 0.03
    """Steps turning by less than this many radians show the network's latent as it is, and it becomes
    the anchor (0: the memory holds the picture on every step, so walking straight shows a still one)."""
    warp_mode: str = "bicubic"
    """How the anchor is resampled ('bilinear' or 'bicubic'; bilinear blurs a latent cell by up to half)."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.refresh_coverage <= 1.0:
            raise ValueError(f"reprojection refresh_coverage must be in [0, 1], got {self.refresh_coverage}")
        if not self.mask_power > 0.0:
            raise ValueError(f"reprojection mask_power must be > 0, got {self.mask_power}")
        if self.travel_scale is not None and not self.travel_scale > 0.0:
            raise ValueError(f"reprojection travel_scale must be > 0, got {self.travel_scale}")
        if not 0.0 <= self.keep <= 1.0:
            raise ValueError(f"reprojection keep must be in [0, 1], got {self.keep}")
        if not self.min_turn >= 0.0:
            raise ValueError(f"reprojection min_turn must be >= 0 (radians), got {self.min_turn}")
        if self.warp_mode not in ("bilinear", "bicubic"):
            raise ValueError(f"reprojection warp_mode must be 'bilinear' or 'bicubic', got {self.warp_mode!r}")

    @classmethod
    def parse(cls, spec: str) -> ReprojectionConfig | None:
        """A command-line setting: 'off' -> None, 'on' -> the defaults, 'key=value,...' -> those fields."""
        if spec == "off":
            return None
        if spec == "on":
            return cls()
        kw: dict[str, float | str | None] = {}
        for item in spec.split(","):
            key, eq, value = (part.strip() for part in item.partition("="))
            if not eq or key not in cls.__dataclass_fields__:
                raise ValueError(f"bad reprojection setting {item!r}: expected 'off', 'on' or key=value with keys "
                                 f"{', '.join(cls.__dataclass_fields__)}")
            if key == "warp_mode":
                kw[key] = value
                continue
            if value.lower() == "none" and cls.__dataclass_fields__[key].default is None:
                kw[key] = None  # an optional field set back to off (travel_scale=none)
                continue
            try:
                kw[key] = float(value)
            except ValueError as e:
                raise ValueError(f"reprojection {key}={value!r} is not a number") from e
        return cls(**kw)

    @classmethod
    def field_help(cls) -> dict[str, str]:
        """Each field's docstring (the text under it in the class body), first sentence only."""
        try:
            tree = ast.parse(inspect.getsource(cls))
        except (OSError, TypeError):  # no source shipped (a frozen or bytecode-only install): help without docs
            return {}
        body = tree.body[0].body  # type: ignore[attr-defined]
        docs: dict[str, str] = {}
        for field_node, doc in zip(body, body[1:]):
            if (isinstance(field_node, ast.AnnAssign) and isinstance(field_node.target, ast.Name)
                    and isinstance(doc, ast.Expr) and isinstance(doc.value, ast.Constant)):
                text = " ".join(str(doc.value.value).split())
                docs[field_node.target.id] = text.split(". ")[0].rstrip(".")
        return docs


def reprojection_spec(spec: str) -> str:
    """argparse type of `--reprojection`: the setting unchanged if `ReprojectionConfig.parse` accepts it."""
    try:
        ReprojectionConfig.parse(spec)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from e
    return spec


def add_reprojection_argument(parser: argparse.ArgumentParser, unset: str) -> None:
    """Add `--reprojection off|on|key=value,...` (kept as the string; None when not given), its help
    listing every `ReprojectionConfig` field with its docstring and default; `unset` says what no flag means."""
    docs = ReprojectionConfig.field_help()
    keys = "; ".join(f"{f.name} ({f.default}): {docs.get(f.name, '')}" for f in fields(ReprojectionConfig))
    text = (f"reprojection memory (worldmodel/reproject.py): 'off' (the network alone), 'on' (the defaults) or "
            f"key=value,... of: {keys}. {unset}")
    parser.add_argument("--reprojection", default=None, type=reprojection_spec, metavar="off|on|KEY=VALUE,...",
                        help=text.replace("%", "%%"))


class ReprojectionMemory:
    """Per-stream anchor latents and the rotation of each stream's camera since its anchor."""

    def __init__(
        self,
        cfg: ReprojectionConfig,
        batch: int,
        intrinsics: Sequence[float],
        image_hw: tuple[int, int],
        latent_hw: tuple[int, int],
        channels: int,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        self.cfg, self.batch = cfg, batch
        self.intrinsics, self.image_hw, self.latent_hw = list(intrinsics), tuple(image_hw), tuple(latent_hw)
        self.anchor = torch.zeros(batch, channels, *latent_hw, device=device, dtype=dtype)
        self.pose = np.stack([np.eye(4)] * batch)  # camera now, in the anchor's camera
        self._ones = torch.ones(batch, 1, 1, *latent_hw, device=device, dtype=dtype)

    def reset(self, latents: torch.Tensor, streams: Sequence[int] | None = None) -> None:
        """Anchor streams (default: all) on their first latents (len(streams) or B, C, h, w)."""
        idx = stream_indices(streams, self.batch)
        self.anchor[idx] = latents.to(self.anchor.device, self.anchor.dtype)
        self.pose[idx] = np.eye(4)

    def blend(self, generated: torch.Tensor, steps: np.ndarray) -> torch.Tensor:
        """Generated latents (B, C, h, w) and each stream's step pose (B, 4, 4) -> blended latents."""
        if generated.shape != self.anchor.shape:
            raise ValueError(f"generated latents have shape {tuple(generated.shape)}, expected {tuple(self.anchor.shape)}")
        steps = np.asarray(steps, dtype=np.float64)
        if steps.shape != (self.batch, 4, 4):
            raise ValueError(f"step poses have shape {steps.shape}, expected ({self.batch}, 4, 4)")
        if not np.isfinite(steps).all():
            raise ValueError("step poses contain NaN or inf")
        self.pose = self.pose @ steps
        grid = rotation_warp_grid(self.pose[:, :3, :3], self.intrinsics, self.image_hw, self.latent_hw)
        grid = torch.from_numpy(grid).to(self.anchor.device)[:, None]  # (B, 1, 2, h, w)
        seen = warp_recycled(self.anchor[:, None], grid, self.cfg.warp_mode)[:, 0]
        coverage = warp_recycled(self._ones, grid)[:, 0]  # (B, 1, h, w) in [0, 1]
        travel = np.linalg.norm(self.pose[:, :3, 3], axis=-1)
        scale = np.inf if self.cfg.travel_scale is None else self.cfg.travel_scale
        trust = self.cfg.keep * np.exp(-travel / scale)
        m = coverage.clamp(0, 1) ** self.cfg.mask_power * torch.from_numpy(trust).to(coverage)[:, None, None, None]
        z = m * seen + (1 - m) * generated.to(self.anchor.dtype)
        refresh = (coverage.mean((1, 2, 3)) <= self.cfg.refresh_coverage).cpu().numpy()
        refresh |= travel > 2 * scale
        # The network draws this step on its own; a turn of exactly min_turn (up to float32 rounding) reprojects.
        walk = rotation_angle(steps[:, :3, :3]) < self.cfg.min_turn - TURN_TOLERANCE
        if walk.any():
            z[walk] = generated[walk].to(z.dtype)
            refresh |= walk
        if refresh.any():
            self.reset(z[refresh], np.flatnonzero(refresh).tolist())
        return z
