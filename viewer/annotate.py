"""Text on frames: the model / engine pane labels and the contact sheet of a headless run."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np

PANE_LABELS = ("model", "engine")
"""Labels of the --compare-real panes: the learned world (left) and the real game engine (right)."""


@lru_cache(maxsize=8)
def _font(size: int):
    import pygame

    pygame.font.init()
    return pygame.font.Font(None, size)


def text_image(text: str, size: int) -> np.ndarray:
    """White text on a black box as uint8 (h, w, 3)."""
    import pygame

    surf = _font(size).render(f" {text} ", True, (255, 255, 255), (0, 0, 0))
    return np.ascontiguousarray(pygame.surfarray.array3d(surf).transpose(1, 0, 2))


def put_text(img: np.ndarray, text: str, x: int, y: int, size: int) -> np.ndarray:
    """Draw `text` into uint8 img (H, W, 3) at (x, y) in place (cropped at the border); returns img."""
    t = text_image(text, size)
    h, w = min(t.shape[0], img.shape[0] - y), min(t.shape[1], img.shape[1] - x)
    if h > 0 and w > 0:
        img[y:y + h, x:x + w] = t[:h, :w]
    return img


def label_panes(frames: np.ndarray, panes: int = 2) -> np.ndarray:
    """Side-by-side frames (n, H, panes*W, 3) with PANE_LABELS in each pane's top-left corner (a copy)."""
    out = np.array(frames, copy=True)
    w = out.shape[2] // panes
    size = max(10, out.shape[1] // 7)  # readable at 96 px high, unobtrusive at 768
    for f in out:
        for i, name in enumerate(PANE_LABELS[:panes]):
            put_text(f, name, i * w + 1, 1, size)
    return out


def contact_sheet(frames: list[np.ndarray], labels: list[str], cols: int = 4, scale: int = 2) -> np.ndarray:
    """Frames (each (H, W, 3) uint8) tiled `cols` wide, each upscaled `scale`x with its label: (rows*sH, cols*sW, 3)."""
    if not frames:
        raise ValueError("contact sheet of no frames: the run produced none")
    H, W = frames[0].shape[:2]
    rows = -(-len(frames) // cols)
    gap = 2  # a dark line between tiles keeps neighbouring frames apart
    sheet = np.zeros((rows * (H * scale + gap) - gap, cols * (W * scale + gap) - gap, 3), np.uint8)
    size = max(12, H * scale // 8)
    for i, (f, label) in enumerate(zip(frames, labels, strict=True)):
        r, c = divmod(i, cols)
        tile = np.repeat(np.repeat(f, scale, axis=0), scale, axis=1)  # nearest: shows the world's real pixels
        put_text(tile, label, 0, tile.shape[0] - size, size)
        y, x = r * (H * scale + gap), c * (W * scale + gap)
        sheet[y:y + H * scale, x:x + W * scale] = tile
    return sheet


def evenly(n: int, k: int) -> list[int]:
    """k indices spread evenly over range(n), first and last included (all of them when n <= k)."""
    if n <= k:
        return list(range(n))
    return sorted({round(i * (n - 1) / (k - 1)) for i in range(k)})


def save_contact_sheet(path: str | Path, frames: list[np.ndarray], labels: list[str], count: int = 12) -> Path:
    """Write a PNG contact sheet of `count` evenly spaced frames of a run; returns the path."""
    import imageio.v3 as iio

    pick = evenly(len(frames), count)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    iio.imwrite(path, contact_sheet([frames[i] for i in pick], [labels[i] for i in pick]))
    return path
