"""Generation on a worker thread: input is read without waiting, frames leave through a bounded queue.

The main (pygame) thread never calls the model: it writes the held keys into `LiveInput`
(a lock held for microseconds) and takes finished frames from the queue without blocking.
The worker reads the latest input at the start of every step, steps the learned world (and the
real DoomCamera-v0 with the same action, when comparing), and puts a `Packet` on the queue; when
the queue is full it waits, so generation runs at most `maxsize` steps ahead of the screen.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np

from agents.keyboard import KeyboardMapping
from viewer.script import Tick


@dataclass
class Packet:
    """What one tick produced: frames to show, and what the env received."""

    tick: int
    """0 is the first reset; then one per step or reset."""
    frames: np.ndarray
    """World frames (n, H, W, 3) uint8."""
    real: np.ndarray | None
    """DoomCamera-v0 frames (n, H, W, 3) uint8 when comparing, else None."""
    info: dict[str, Any]
    """The world env's info for this tick."""
    input: Tick
    """The input the tick was generated from."""
    action: np.ndarray | None
    """The action the env received (None on a reset)."""


class LiveInput:
    """The held keys and accumulated mouse motion, shared between the pygame thread and the worker."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._keys: frozenset[str] = frozenset()
        self._mouse = [0.0, 0.0]
        self._reset = False

    def set_keys(self, keys: set[str]) -> None:
        """Replace the held movement keys."""
        with self._lock:
            self._keys = frozenset(keys)

    def add_mouse(self, dx: float, dy: float) -> None:
        """Accumulate mouse motion until the next step takes it."""
        with self._lock:
            self._mouse[0] += dx
            self._mouse[1] += dy

    def request_reset(self) -> None:
        """Make the next tick a reset."""
        with self._lock:
            self._reset = True

    def __call__(self, tick: int) -> Tick:
        """The input for the next tick (takes the accumulated mouse motion and any reset request)."""
        with self._lock:
            t = Tick(self._keys, (self._mouse[0], self._mouse[1]), reset=self._reset)
            self._mouse = [0.0, 0.0]
            self._reset = False
        return t


class GenerationWorker(threading.Thread):
    """Steps the env (and the real env) from an input source and queues what it produced."""

    def __init__(
        self,
        env: gym.Env,
        mapping: KeyboardMapping,
        source: Callable[[int], Tick | None],
        out: queue.Queue,
        real_env: gym.Env | None = None,
        start_image: np.ndarray | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(name="world-generation", daemon=True)
        self.env, self.mapping, self.source, self.out = env, mapping, source, out
        self.real_env, self.start_image, self.seed = real_env, start_image, seed
        self.paused = threading.Event()
        self.stopping = threading.Event()
        self.error: BaseException | None = None
        self.model_fps = 0.0  # video frames per second the model produces while it is not waiting
        self.generated = (0, 0.0)  # (video frames, seconds of step latency) over the run, for the summary

    def stop(self) -> None:
        """Ask the thread to finish its current step and exit."""
        self.stopping.set()

    def run(self) -> None:
        try:
            self._put(self._reset(0, Tick(reset=True), seed=self.seed))
            tick, done = 1, False
            while not self.stopping.is_set():
                if self.paused.is_set():
                    self.stopping.wait(0.02)
                    continue
                t = self.source(tick)
                if t is None:
                    break
                packet = self._reset(tick, t) if t.reset or done else self._step(tick, t)
                done = bool(packet.info.get("_done", False))
                self._put(packet)
                tick += 1
        except BaseException as e:  # surfaced by the main thread, which owns the exit
            self.error = e
        finally:
            self._put(None)

    def _reset(self, tick: int, t: Tick, seed: int | None = None) -> Packet:
        options: dict[str, Any] = {}
        real = None
        if self.real_env is not None:
            real, _ = self.real_env.reset(seed=seed)
            options["image"] = real[0]  # both worlds start from the same real view
        elif self.start_image is not None:
            options["image"] = self.start_image
        frames, info = self.env.reset(seed=seed, options=options)
        return Packet(tick, frames, real, info, t, None)

    def _step(self, tick: int, t: Tick) -> Packet:
        action = self.mapping.action(t.keys, t.mouse)
        frames, _, terminated, truncated, info = self.env.step(action)
        fps = frames.shape[0]
        latency = info["timing"].latency_s
        self.model_fps = fps / latency if self.model_fps == 0 else 0.9 * self.model_fps + 0.1 * fps / latency
        self.generated = (self.generated[0] + fps, self.generated[1] + latency)
        real, real_done = None, False
        if self.real_env is not None:
            real, _, real_term, real_trunc, _ = self.real_env.step(action)
            real_done = real_term or real_trunc  # e.g. the real camera walked over an exit line
        info = {**info, "_done": terminated or truncated or real_done}
        return Packet(tick, frames, real, info, t, info["action"])

    def _put(self, item: Packet | None) -> None:
        """Queue a packet, waiting while the screen is behind; the end marker (None) always lands."""
        while True:
            try:
                self.out.put(item, timeout=0.05)
                return
            except queue.Full:
                if not self.stopping.is_set():
                    continue
                if item is not None:  # nobody reads any more: drop frames
                    return
                try:  # make room for the end marker so a reader still waiting wakes up
                    self.out.get_nowait()
                except queue.Empty:
                    pass
