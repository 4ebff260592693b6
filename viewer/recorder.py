"""Recording: an mp4 (or GIF) of the frames shown, and a JSONL log of what the env received, side by side.

`out.mp4` gets every video frame (model | engine side by side, labelled, when comparing) at the
world's frame rate. A path ending in `.gif` writes an animated GIF of every GIF_STRIDE-th frame
instead, for docs (generated frames hardly compress as GIF; half the frames halve the file).
`out.actions.jsonl` gets one line per tick: `tick`, `keys`, `mouse`, `reset`, `action` (the
action the env received, null on a reset), `step`, `c2w` (4x4), `latency_s`, `frames` (video
frames this tick added to the recording).
"""

from __future__ import annotations

import json
from pathlib import Path

import imageio
import numpy as np

from viewer.annotate import label_panes
from viewer.worker import Packet

GIF_STRIDE = 2
"""A GIF keeps every 2nd video frame (17.5 fps for a 35 fps world): a 40-step comparison stays under 2 MB."""


def log_path(video: str | Path) -> Path:
    """The action log written next to a recording: out.mp4 -> out.actions.jsonl."""
    video = Path(video)
    return video.with_name(video.stem + ".actions.jsonl")


def compose(packet: Packet) -> np.ndarray:
    """Frames to record for a packet: (n, H, W, 3), or model | engine side by side and labelled (n, H, 2W, 3)."""
    if packet.real is None:
        return packet.frames
    return label_panes(np.concatenate([packet.frames, packet.real], axis=2))


class Recorder:
    """Writes packets to an mp4 (imageio-ffmpeg, H.264) and their inputs to the JSONL action log."""

    def __init__(self, path: str | Path, fps: int) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._stride = GIF_STRIDE if self.path.suffix.lower() == ".gif" else 1
        self._seen = 0  # video frames offered, for the GIF's stride
        if self._stride > 1:
            # GIF delays are whole centiseconds; loop=0 repeats forever, as a README animation should.
            self._video = imageio.get_writer(self.path, mode="I", duration=1000.0 * self._stride / fps, loop=0)
        else:
            # macro_block_size=1: keep the world's exact size (H.264 needs even sides; ours are multiples of 8).
            self._video = imageio.get_writer(self.path, fps=fps, codec="libx264", quality=8, macro_block_size=1)
        self._log = open(log_path(self.path), "w")
        self.frames = 0

    def write(self, packet: Packet) -> None:
        """Append a packet's frames to the video and one line to the action log."""
        frames = compose(packet)
        kept = frames[(-self._seen) % self._stride::self._stride]
        self._seen += len(frames)
        for f in kept:
            self._video.append_data(f)
        self.frames += len(kept)
        t = packet.input
        record = {
            "tick": packet.tick,
            "keys": sorted(t.keys),
            "mouse": list(t.mouse),
            "reset": packet.action is None,
            "action": None if packet.action is None else np.asarray(packet.action).tolist(),
            "step": int(packet.info["step"]),
            "c2w": np.asarray(packet.info["c2w"]).tolist(),
            "latency_s": packet.info["timing"].latency_s,
            "frames": len(kept),
        }
        self._log.write(json.dumps(record) + "\n")

    def close(self) -> None:
        """Finish the mp4 and the log."""
        self._video.close()
        self._log.close()
