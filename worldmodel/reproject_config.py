"""The reprojection memory's settings and their command-line flag, without torch.

Kept apart from `worldmodel.reproject` (the memory itself) so that a CLI's `--help` can list
the settings without importing torch, which takes seconds on a busy machine.
"""

from __future__ import annotations

import argparse
import ast
import inspect
from dataclasses import dataclass, fields

from worldmodel.config import Retired

TURN_TOLERANCE = 1e-6
"""Radians a turn may fall short of `min_turn` and still count as one: an action stored in float32
(0.03 -> 0.0299999993) must not fall on the walking side of a threshold it was meant to reach."""


RETIRED_REPROJECTION_KEYS = {
    "travel_scale": Retired((None,), "it handed the picture back to the network as the camera walked away from the "
                            "anchor; walking is the network's since min_turn, and every scale measured froze or "
                            "scored worse (docs/training.md, 'Reprojection memory')"),
}
"""Retired ReprojectionConfig keys; world files bundled before 2026-12-02 store travel_scale: null."""


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
    min_turn: float = 0.03
    """Steps turning by less than this many radians show the network's latent as it is, and it becomes
    the anchor (0: the memory holds the picture on every step, so walking straight shows a still one)."""
    still_tolerance: float = 1e-6
    """Steps that turn by less than this many radians and move by less than this many scene units show the
    previous picture again, as the engine does when the camera stands still (0: the network draws them,
    and an idle picture drifts away within seconds)."""
    warp_mode: str = "bicubic"
    """How the anchor is resampled ('bilinear' or 'bicubic'; bilinear blurs a latent cell by up to half)."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.refresh_coverage <= 1.0:
            raise ValueError(f"reprojection refresh_coverage must be in [0, 1], got {self.refresh_coverage}")
        if not self.mask_power > 0.0:
            raise ValueError(f"reprojection mask_power must be > 0, got {self.mask_power}")
        if not 0.0 <= self.keep <= 1.0:
            raise ValueError(f"reprojection keep must be in [0, 1], got {self.keep}")
        if not self.still_tolerance >= 0.0:
            raise ValueError(f"reprojection still_tolerance must be >= 0, got {self.still_tolerance}")
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
