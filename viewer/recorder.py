"""Recording: an mp4 of the frames shown, and a JSONL log of what the env received, side by side.

`out.mp4` gets every video frame (world | real side by side when comparing) at the world's frame
rate; `out.actions.jsonl` one line per tick: `tick`, `keys`, `mouse`, `reset`, `action` (the
action the env received, null on a reset), `step`, `c2w` (4x4), `latency_s`, `frames` (video
frames this tick added to the mp4).
"""

from __future__ import annotations

import json
from pathlib import Path

import imageio
import numpy as np

from viewer.worker import Packet


def log_path(video: str | Path) -> Path:
    """The action log written next to a recording: out.mp4 -> out.actions.jsonl."""
    video = Path(video)
    return video.with_name(video.stem + ".actions.jsonl")


def compose(packet: Packet) -> np.ndarray:
    """Frames to record for a packet: (n, H, W, 3), or world | real side by side (n, H, 2W, 3)."""
    if packet.real is None:
        return packet.frames
    return np.concatenate([packet.frames, packet.real], axis=2)


class Recorder:
    """Writes packets to an mp4 (imageio-ffmpeg, H.264) and their inputs to the JSONL action log."""

    def __init__(self, path: str | Path, fps: int) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # macro_block_size=1: keep the world's exact size (H.264 needs even sides; ours are multiples of 8).
        self._video = imageio.get_writer(self.path, fps=fps, codec="libx264", quality=8, macro_block_size=1)
        self._log = open(log_path(self.path), "w")
        self.frames = 0

    def write(self, packet: Packet) -> None:
        """Append a packet's frames to the video and one line to the action log."""
        frames = compose(packet)
        for f in frames:
            self._video.append_data(f)
        self.frames += len(frames)
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
            "frames": len(frames),
        }
        self._log.write(json.dumps(record) + "\n")

    def close(self) -> None:
        """Finish the mp4 and the log."""
        self._video.close()
        self._log.close()
