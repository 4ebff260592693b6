"""Is there a screen to open a window on? Decides between the window and the headless exploration."""

from __future__ import annotations

import os
import sys

HEADLESS_DRIVERS = {"dummy", "offscreen"}
"""SDL video drivers that draw to no screen."""


def display_status(environ: dict[str, str] | None = None, platform: str | None = None) -> tuple[bool, str]:
    """(True, '') when a window can be shown, else (False, why not) from the environment alone.

    On Linux and other X11/Wayland systems a window needs DISPLAY or WAYLAND_DISPLAY; macOS and
    Windows always have a screen. SDL_VIDEODRIVER=dummy or offscreen means no screen anywhere.
    Checking the environment (instead of opening a window) keeps the decision instant and silent.
    """
    env = os.environ if environ is None else environ
    platform = sys.platform if platform is None else platform
    driver = env.get("SDL_VIDEODRIVER", "").lower()
    if driver in HEADLESS_DRIVERS:
        return False, f"SDL_VIDEODRIVER={driver}"
    if platform.startswith(("darwin", "win")):
        return True, ""
    if not (env.get("DISPLAY") or env.get("WAYLAND_DISPLAY")):
        return False, "no DISPLAY or WAYLAND_DISPLAY"
    return True, ""
