"""Key scripts: scripted key presses for `python -m viewer --headless --keys FILE`.

Format: one line per run of ticks; `#` starts a comment; blank lines are skipped.

    # repeat  keys held (pygame key names)   optional mouse motion per tick
    10 w                                      # 10 steps walking forward
    5 w d                                     # 5 steps forward + strafe right
    3 -                                       # 3 steps with no key held ("-" = nothing)
    4 right mouse=0,-20                       # yaw right while the mouse moves up 20 px/tick
    1 r                                       # reset to the start image (one tick, no step)
    1 h                                       # toggle the help overlay (one tick, also steps)

Each tick is one env step (or one reset for `r`), i.e. frames_per_step video frames. Movement keys
are those of `agents.keyboard` (w a s d up down left right); of the command keys a script may use
`r` (reset) and `h` (help overlay). Ticks past the end of the script hold no key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from agents.keyboard import MOVE_KEYS, TURN_KEYS

SCRIPT_KEYS = set(MOVE_KEYS) | set(TURN_KEYS) | {"r", "h"}
"""Keys a script may hold."""


@dataclass(frozen=True)
class Tick:
    """The input of one tick: held keys, mouse motion (pixels) since the last tick, and commands."""

    keys: frozenset[str] = frozenset()
    """Held movement keys (pygame key names)."""
    mouse: tuple[float, float] = (0.0, 0.0)
    """Mouse motion (dx, dy) in window pixels, used for look while the left button is held."""
    reset: bool = False
    """Restart from the start image instead of stepping."""
    help: bool = False
    """Toggle the help overlay."""
    extra: dict = field(default_factory=dict, compare=False)
    """Free-form annotations (e.g. the script line) for the action log."""


TOUR = """\
# The built-in tour of `python -m viewer` on a machine without a display: look around, walk, strafe.
16 right        # turning is what the bundled world does best (its memory turns the picture exactly)
32 left
16 right
10 w
10 w right
12 left
8 w
6 d
6 a
4 s
"""
"""Key script of the headless exploration (120 steps); `--keys FILE` replaces it."""


def parse_keys(text: str, source: str = "<keys>") -> list[Tick]:
    """Parse a key script into one Tick per tick; errors name the line and the problem."""
    ticks: list[Tick] = []
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        words = line.split()
        where = f"{source}:{n}: {raw.strip()!r}"
        try:
            repeat = int(words[0])
        except ValueError:
            raise ValueError(f"{where}: a line starts with a repeat count, e.g. '10 w'") from None
        if repeat < 1:
            raise ValueError(f"{where}: repeat count {repeat} must be >= 1")
        keys, mouse = set(), (0.0, 0.0)
        for w in words[1:]:
            w = w.lower()
            if w == "-":
                continue
            if w.startswith("mouse="):
                try:
                    dx, dy = (float(v) for v in w[6:].split(","))
                except ValueError:
                    raise ValueError(f"{where}: mouse motion is 'mouse=DX,DY' in pixels, e.g. mouse=20,0") from None
                mouse = (dx, dy)
            elif w in SCRIPT_KEYS:
                keys.add(w)
            else:
                raise ValueError(f"{where}: unknown key {w!r}; a script may use {sorted(SCRIPT_KEYS)}, '-' or mouse=DX,DY")
        tick = Tick(frozenset(keys - {"r", "h"}), mouse, reset="r" in keys, help="h" in keys, extra={"line": n})
        ticks.extend([tick] * repeat)
    return ticks


def load_keys(path: str | Path) -> list[Tick]:
    """Read and parse a key script file."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"key script {path} does not exist")
    return parse_keys(path.read_text(), str(path))
