"""Heads-up display and help overlay drawn over the upscaled frames."""

from __future__ import annotations

import numpy as np
import pygame

HELP = [
    "W / S      forward / back",
    "A / D      strafe left / right",
    "arrows     yaw (left/right), pitch (up/down)",
    "mouse      hold the left button and drag to look",
    "R          reset to the start image",
    "P          pause / resume generation",
    "V          start / stop recording (mp4 + action log)",
    "H          this help",
    "Esc / Q    quit",
]


def pose_summary(c2w: np.ndarray) -> str:
    """'x y z | yaw pitch' of a camera-to-world pose (OpenCV axes; yaw + = right, pitch + = up)."""
    fwd = c2w[:3, 2]
    yaw = round(float(np.degrees(np.arctan2(fwd[0], fwd[2]))), 1) + 0.0  # + 0.0 turns -0.0 into 0.0
    pitch = round(float(np.degrees(np.arcsin(np.clip(-fwd[1], -1.0, 1.0)))), 1) + 0.0
    x, y, z = c2w[:3, 3]
    return f"pos {x:+7.1f} {y:+7.1f} {z:+7.1f}  yaw {yaw:+6.1f}  pitch {pitch:+5.1f}"


class Hud:
    """Text lines in the corner (fps, latency, pose, state) and the help overlay."""

    def __init__(self, size: int = 18) -> None:
        pygame.font.init()
        self.font = pygame.font.Font(None, size)

    def _text(self, surface: pygame.Surface, lines: list[str], x: int, y: int, box: bool = True) -> None:
        rendered = [self.font.render(s, True, (255, 255, 255)) for s in lines]
        w = max((r.get_width() for r in rendered), default=0) + 8
        h = sum(r.get_height() for r in rendered) + 6
        if box:
            shade = pygame.Surface((w, h), pygame.SRCALPHA)
            shade.fill((0, 0, 0, 150))
            surface.blit(shade, (x, y))
        for r in rendered:
            surface.blit(r, (x + 4, y + 3))
            y += r.get_height()

    def draw(self, surface: pygame.Surface, stats: dict, show_help: bool) -> None:
        """Draw the HUD (and the help overlay when asked) onto the window surface."""
        t = stats.get("timing")
        lines = [
            f"model {stats.get('model_fps', 0.0):6.1f} fps   shown {stats.get('shown_fps', 0.0):5.1f} fps",
            "step  -" if t is None else
            f"step {1e3 * t.latency_s:6.1f} ms (transformer {1e3 * t.transformer_s:.1f} + decode {1e3 * t.decode_s:.1f})",
            pose_summary(stats.get("c2w", np.eye(4))) + f"   step {stats.get('step', 0)}",
        ]
        flags = [s for s, on in (("REC", stats.get("recording")), ("PAUSED", stats.get("paused"))) if on]
        if flags:
            lines.append("  ".join(flags))
        self._text(surface, lines, 6, 6)
        if show_help:
            self._text(surface, ["keys (H hides)", *HELP], 6, surface.get_height() // 3)
        else:
            hint = self.font.render("H: help", True, (255, 255, 255))
            surface.blit(hint, (surface.get_width() - hint.get_width() - 6, surface.get_height() - hint.get_height() - 4))
