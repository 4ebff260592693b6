"""`python -m viewer`: walk through a learned world with the keyboard and mouse.

The pygame thread handles input, upscaling, the HUD and recording; a worker thread
(`viewer.worker`) runs the model, so input never waits on it. `--headless` runs the same
pipeline with no window (SDL's dummy driver), driven by a key script (`viewer.script`). On a
machine without a display, plain `python -m viewer` runs that headless pipeline on a built-in tour
and leaves an mp4, a contact sheet and a one-line summary under outputs/ (`explore_defaults`).
"""

from __future__ import annotations

import argparse
import os
import queue
import sys
import time
from collections import deque
from pathlib import Path
from typing import Any

import numpy as np

from agents.keyboard import MOVE_KEYS, TURN_KEYS, KeyboardMapping
from viewer.display import display_status
from viewer.script import TOUR, Tick, load_keys, parse_keys

SHEET_KEEP = 1024
"""Most frames a run keeps for its contact sheet (about 37 MB at 96x128)."""
EXPLORE_DIR = Path("outputs")
"""Where a run without a display writes its mp4 and contact sheet, and V its recordings (git-ignored)."""

EPILOG = """\
keys:   W/S forward/back, A/D strafe, arrows yaw/pitch, hold the left mouse button and drag to look,
        R reset, P pause, V record toggle (mp4 + .actions.jsonl), H help overlay, Esc/Q quit.

no display (no DISPLAY / WAYLAND_DISPLAY on Linux, or SDL_VIDEODRIVER=dummy): plain `python -m viewer`
        explores headless instead: a built-in 120-step tour of the world, written to outputs/explore.mp4
        (+ .actions.jsonl) and outputs/explore_sheet.png, with a one-line summary. --window forces a window.

examples:
  python -m viewer                                        # the bundled world (window, or headless tour)
  python -m viewer --checkpoint world.safetensors --image start.png --record walk.mp4
  python -m viewer --compare-real                         # the real Doom engine beside the model
  python -m viewer --headless --steps 60 --keys examples/walk.keys --record outputs/walk.mp4
  python -m viewer --threads 1                            # on a shared machine: one CPU thread

key scripts (--keys): one line per run of ticks, '<repeat> <keys...> [mouse=DX,DY]', e.g.
  10 w        # 10 steps forward
  5 w d       # forward + strafe right
  4 right     # yaw right
  1 r         # reset
  3 -         # no key
Every tick is one env step (frames_per_step video frames) or one reset; a headless run of N
steps writes (N + 1) * frames_per_step frames (the start image fills the first tick).
"""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The viewer's command line."""
    p = argparse.ArgumentParser(
        prog="python -m viewer",
        description="Explore a learned world (worldmodel/World-v0) with keyboard and mouse, or record a scripted walk.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--checkpoint", type=Path, default=None,
                   help="world file (.safetensors); default: the bundled worldmodel/assets/world_tiny.safetensors")
    p.add_argument("--image", type=Path, default=None,
                   help="start image (PNG/JPG, resized to the world's size); default: a bundled start frame")
    p.add_argument("--seed", type=int, default=0, help="seed of the start-frame choice and the model noise (default 0)")
    p.add_argument("--scale", type=int, default=None, help="integer upscaling of the frames (default: about 768 px wide)")
    p.add_argument("--record", type=Path, default=None,
                   help="record to this mp4 (+ .actions.jsonl) from the start; V toggles recording in the window")
    p.add_argument("--compare-real", action="store_true",
                   help="show the real DoomCamera-v0 following the same actions side by side (Doom worlds only)")
    p.add_argument("--map", default=None, help="Doom map for --compare-real (default: the world card's 'map')")
    p.add_argument("--headless", action="store_true",
                   help="no window (SDL dummy driver): run a key script for --steps ticks and exit")
    p.add_argument("--steps", type=int, default=None,
                   help="ticks to run after the first reset (implies --headless; default: the key script's length, "
                        "else 100)")
    p.add_argument("--keys", type=Path, default=None,
                   help="key script to play (implies --headless; format below; examples/*.keys)")
    p.add_argument("--screenshot", type=Path, default=None, help="save the window (frames + HUD) as PNG when done")
    p.add_argument("--sheet", type=Path, default=None,
                   help="write a contact sheet (PNG, 12 frames spread over the run) when done")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads for the model (default: one per idle core by the load average, at most "
                        "torch's default; on a shared machine pass 1)")
    p.add_argument("--window", action="store_true",
                   help="open the window even when no display is detected (skips the headless fallback)")
    p.add_argument("--show-help", action="store_true", help="start with the help overlay shown")
    p.add_argument("--queue", type=int, default=2, help="frame queue size in steps: how far generation may run ahead")
    p.add_argument("--device", default="cpu", help="torch device of the model (default cpu)")
    from worldmodel.reproject_config import add_reprojection_argument  # one definition for the viewer, eval and bundle

    add_reprojection_argument(p, "'on' turns the picture exactly with the camera while the network draws steps "
                                 "that do not turn. Default: as the world file says.")
    args = p.parse_args(argv)
    if args.keys is not None or args.steps is not None:
        if args.window:
            p.error("--keys and --steps drive a headless run; --window opens a window for the keyboard")
        args.headless = True
    if args.headless and args.window:
        p.error("--headless and --window exclude each other")
    if args.queue < 1:
        p.error("--queue must be >= 1")
    if args.steps is not None and args.steps < 0:
        p.error("--steps must be >= 0")
    if args.threads is not None and args.threads < 1:
        p.error("--threads must be >= 1")
    args.explore = None  # set by explore_defaults when there is no display
    return args


def explore_defaults(args: argparse.Namespace, why: str) -> argparse.Namespace:
    """Turn a windowed run into the headless exploration when there is no display: tour, mp4, sheet."""
    args.headless = True
    args.explore = why
    if args.record is None:
        args.record = EXPLORE_DIR / "explore.mp4"
    if args.sheet is None:
        args.sheet = EXPLORE_DIR / "explore_sheet.png"
    return args


def load_image(path: Path, hw: tuple[int, int]) -> np.ndarray:
    """Read an image file as uint8 (H, W, 3) at the world's size (smooth rescale)."""
    import imageio.v3 as iio
    import pygame

    img = np.asarray(iio.imread(path))
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    img = np.ascontiguousarray(img[..., :3]).astype(np.uint8)
    if img.shape[:2] != tuple(hw):
        surf = pygame.surfarray.make_surface(img.transpose(1, 0, 2))
        img = pygame.surfarray.array3d(pygame.transform.smoothscale(surf, (hw[1], hw[0]))).transpose(1, 0, 2)
    return np.ascontiguousarray(img)


def make_real_env(world: Any, map_name: str | None) -> Any:
    """DoomCamera-v0 matching a Doom world (map from its card), at the world's frame size."""
    card = world.meta.card
    if card.get("source") != "doom":
        raise SystemExit(
            f"--compare-real needs a Doom world: this world file's card says source={card.get('source')!r}; "
            "a Doom world's card has \"source\": \"doom\" and the \"map\" it was trained on"
        )
    from envs.doom import DoomCameraEnv

    high = np.maximum(-np.asarray(world.meta.action_low), np.asarray(world.meta.action_high))
    return DoomCameraEnv(
        map_name=map_name or card.get("map", "MAP01"),
        wad=card.get("wad", "freedoom2"),
        resolution=card.get("resolution", "256x192"),
        frame_size=tuple(world.meta.image_hw),
        frames_per_step=world.frames_per_step,
        max_steps=2**31 - 1,
        max_translation=float(high[:3].max()),
        max_rotation=float(high[3:].max()),
    )


class ScriptSource:
    """Ticks from a key script for a headless run; None after `steps` ticks."""

    def __init__(self, ticks: list[Tick], steps: int) -> None:
        self.ticks, self.steps = ticks, steps

    def __call__(self, tick: int) -> Tick | None:
        if tick > self.steps:
            return None
        return self.ticks[tick - 1] if tick - 1 < len(self.ticks) else Tick()


def _surface(frame: np.ndarray):
    import pygame

    return pygame.surfarray.make_surface(np.ascontiguousarray(frame.transpose(1, 0, 2)))


class Viewer:
    """The window: shows frames at the world's frame rate, reads input, records, draws the HUD."""

    def __init__(self, args: argparse.Namespace) -> None:
        if args.headless:
            os.environ["SDL_VIDEODRIVER"] = "dummy"
            os.environ.setdefault("SDL_AUDIODRIVER", "dummy")
        import pygame

        from envs.world import WorldEnv, load_world, world_render_fps
        from viewer.hud import Hud
        from viewer.worker import GenerationWorker, LiveInput
        from worldmodel.reproject import ReprojectionConfig
        from worldmodel.threads import choose_threads, use_threads

        self.args = args
        self.threads, self.threads_why = choose_threads(args.threads)
        use_threads(self.threads)
        world = load_world(args.checkpoint, None, args.device)
        if args.reprojection is not None:  # configures the viewer's own freshly loaded world, before any stream
            world.meta.reprojection = ReprojectionConfig.parse(args.reprojection)
        self.env = WorldEnv(world=world)
        self.fps_step = world.frames_per_step
        self.video_fps = world_render_fps(world)
        H, W = world.meta.image_hw
        self.real_env = make_real_env(world, args.map) if args.compare_real else None
        start = load_image(args.image, (H, W)) if args.image is not None else None
        # Speeds of a typical step of the training data, clipped to what the env accepts.
        self.mapping = KeyboardMapping.for_world(world, self.env.action_space.low, self.env.action_space.high)

        pygame.init()
        self.scale = args.scale or max(1, 768 // (W * (2 if self.real_env else 1)))
        panes = 2 if self.real_env is not None else 1
        self.pane = (W * self.scale, H * self.scale)
        self.screen = pygame.display.set_mode((self.pane[0] * panes, self.pane[1]))
        pygame.display.set_caption("worldmodel viewer" + (" | left: model, right: engine" if panes == 2 else ""))
        self.hud = Hud()
        self.frames: queue.Queue = queue.Queue(maxsize=args.queue)
        if args.headless:
            try:
                if args.keys is not None:
                    ticks = load_keys(args.keys)
                else:
                    ticks = parse_keys(TOUR, "<tour>") if args.explore else []
            except ValueError as e:
                raise SystemExit(f"viewer: {e}") from e
            steps = args.steps if args.steps is not None else (len(ticks) or 100)
            self.source: Any = ScriptSource(ticks, steps)
        else:
            self.source = LiveInput()
        self.worker = GenerationWorker(self.env, self.mapping, self.source, self.frames, self.real_env, start, args.seed)
        self.recorder = None
        self._next_record = args.record
        self.show_help = args.show_help
        self.stats: dict[str, Any] = {"shown_fps": 0.0, "model_fps": 0.0}
        self.current: tuple[np.ndarray, np.ndarray | None] | None = None
        self.ticks = 0
        self.steps = 0  # env steps (ticks that were not resets)
        self.sheet_frames: list[tuple[str, np.ndarray]] = []  # (label, last frame) every sheet_every ticks
        self.sheet_every = 1

    # ---- recording -------------------------------------------------------------------

    def toggle_recording(self, quiet: bool = False) -> None:
        """Start recording to --record (first time) or a timestamped file; stop if recording."""
        from viewer.recorder import Recorder

        if self.recorder is not None:
            self.recorder.close()
            if not quiet:  # the run's summary line names the file at the end
                print(f"recorded {self.recorder.frames} frames to {self.recorder.path}", file=sys.stderr)
            self.recorder = None
            return
        path = self._next_record or EXPLORE_DIR / "recordings" / time.strftime("world-%Y%m%d-%H%M%S.mp4")
        self._next_record = None
        self.recorder = Recorder(path, self.video_fps)

    # ---- packets and drawing ---------------------------------------------------------

    def take(self, packet) -> None:
        """Account for one tick's packet: record it and update the HUD numbers."""
        self.ticks += 1
        self.steps += packet.action is not None
        if self.recorder is not None:
            self.recorder.write(packet)
        if self.args.sheet is not None and (self.ticks - 1) % self.sheet_every == 0:
            from viewer.recorder import compose

            label = "start" if packet.action is None else f"step {packet.info['step']}"
            self.sheet_frames.append((label, compose(packet)[-1]))
            if len(self.sheet_frames) >= SHEET_KEEP:  # a long window session: thin out, keep the spacing even
                self.sheet_frames, self.sheet_every = self.sheet_frames[::2], 2 * self.sheet_every
        if packet.input.help:
            self.show_help = not self.show_help
        self.stats.update(c2w=packet.info["c2w"], step=packet.info["step"], timing=packet.info["timing"],
                          model_fps=self.worker.model_fps)

    def draw(self) -> None:
        """Upscale the current frame(s) to the window and draw the HUD on top."""
        import pygame

        if self.current is not None:
            world, real = self.current
            self.screen.blit(pygame.transform.scale(_surface(world), self.pane), (0, 0))
            if real is not None:
                self.screen.blit(pygame.transform.scale(_surface(real), self.pane), (self.pane[0], 0))
                self._label_panes()
        self.stats.update(recording=self.recorder is not None, paused=self.worker.paused.is_set())
        self.hud.draw(self.screen, self.stats, self.show_help)
        pygame.display.flip()

    def _label_panes(self) -> None:
        """'model' and 'engine' at the bottom left of their panes (the HUD has the top left)."""
        from viewer.annotate import PANE_LABELS

        for i, name in enumerate(PANE_LABELS):
            text = self.hud.font.render(f" {name} ", True, (255, 255, 255), (0, 0, 0))
            self.screen.blit(text, (i * self.pane[0] + 6, self.pane[1] - text.get_height() - 6))

    def _check_worker(self) -> None:
        if self.worker.error is not None:
            raise self.worker.error

    # ---- loops -----------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        """Run until quit (window) or the script ends (headless); returns a summary."""
        import pygame

        if self._next_record is not None:
            self.toggle_recording()
        self.worker.start()
        try:
            self._headless() if self.args.headless else self._interactive()
        finally:
            self.worker.stop()
            self.worker.join(timeout=10)
            frames = 0
            if self.recorder is not None:
                frames = self.recorder.frames
                path = self.recorder.path
                self.toggle_recording(quiet=True)
            if self.args.screenshot is not None:
                self.args.screenshot.parent.mkdir(parents=True, exist_ok=True)
                pygame.image.save(self.screen, str(self.args.screenshot))
            sheet = None
            if self.args.sheet is not None and self.sheet_frames:
                from viewer.annotate import save_contact_sheet

                labels, frames_ = zip(*self.sheet_frames, strict=True)
                sheet = save_contact_sheet(self.args.sheet, list(frames_), list(labels))
            if self.real_env is not None:
                self.real_env.close()
            pygame.quit()
        self._check_worker()
        made, seconds = self.worker.generated
        summary: dict[str, Any] = {
            "ticks": self.ticks, "steps": self.steps, "frames_generated": made, "model_fps": made / seconds if seconds else 0.0,
            "threads": self.threads, "threads_why": self.threads_why, "frames_recorded": frames,
        }
        if frames:
            summary["recording"] = str(path)
        if sheet is not None:
            summary["sheet"] = str(sheet)
        return summary

    def _headless(self) -> None:
        while True:
            try:
                packet = self.frames.get(timeout=0.5)
            except queue.Empty:
                self._check_worker()
                continue
            if packet is None:
                return
            self.take(packet)
            self.current = (packet.frames[-1], None if packet.real is None else packet.real[-1])
            self.stats["shown_fps"] = self.worker.model_fps  # no display clock: frames go out as made
            self.draw()

    def _interactive(self) -> None:
        import pygame

        codes = {name: pygame.key.key_code(name) for name in (*MOVE_KEYS, *TURN_KEYS)}
        pending: deque = deque()  # (world frame, real frame) waiting for their display slot
        clock = pygame.time.Clock()
        period = 1.0 / self.video_fps
        next_show, shown, shown_t0 = time.perf_counter(), 0, time.perf_counter()
        finished = False
        while True:
            for event in pygame.event.get():
                if event.type == pygame.QUIT:
                    return
                if event.type == pygame.KEYDOWN:
                    name = pygame.key.name(event.key)
                    if name in ("escape", "q"):
                        return
                    if name == "r":
                        self.source.request_reset()
                        pending.clear()
                    elif name == "p":
                        (self.worker.paused.clear if self.worker.paused.is_set() else self.worker.paused.set)()
                    elif name == "h":
                        self.show_help = not self.show_help
                    elif name == "v":
                        self.toggle_recording()
                if event.type == pygame.MOUSEMOTION and event.buttons[0]:
                    self.source.add_mouse(*event.rel)
            pressed = pygame.key.get_pressed()
            self.source.set_keys({name for name, code in codes.items() if pressed[code]})
            # Take finished steps only while fewer than one step's frames wait, so the bounded
            # queue (not this list) is what holds generation back.
            while not finished and len(pending) < self.fps_step:
                try:
                    packet = self.frames.get_nowait()
                except queue.Empty:
                    break
                if packet is None:
                    finished = True
                    break
                self.take(packet)
                reals = packet.real if packet.real is not None else [None] * len(packet.frames)
                pending.extend(zip(packet.frames, reals, strict=True))
            self._check_worker()
            now = time.perf_counter()
            if pending and now >= next_show:
                self.current = pending.popleft()
                next_show = max(next_show + period, now - period)  # catch up at most one frame
                shown += 1
            if now - shown_t0 >= 1.0:
                self.stats["shown_fps"], shown, shown_t0 = shown / (now - shown_t0), 0, now
            self.draw()
            clock.tick(240)


def summary_line(summary: dict[str, Any], explore: str | None) -> str:
    """The one line a run ends with: what ran, how fast, and where its files are."""
    what = f"{summary['steps']} step{'s' if summary['steps'] != 1 else ''}"
    files = [summary[k] for k in ("recording", "sheet") if k in summary]
    line = (f"{what}, {summary['frames_generated']} frames generated at {summary['model_fps']:.1f} fps "
            f"({summary['threads']} thread{'s' if summary['threads'] != 1 else ''})")
    if files:
        line += " -> " + ", ".join(files)
    if explore:
        line = (f"viewer: no display ({explore}), so it explored the world headless: {line}. "
                "On a machine with a display `python -m viewer` opens the window (or pass --window).")
    return line


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python -m viewer`; returns the exit status."""
    args = parse_args(argv)
    if not args.headless and not args.window:
        shown, why = display_status()
        if not shown:
            explore_defaults(args, why)
    from worldmodel.checkpoint import CheckpointError

    try:
        summary = Viewer(args).run()
    except (CheckpointError, FileNotFoundError) as e:
        print(f"viewer: {e}", file=sys.stderr)
        return 2
    print(summary_line(summary, args.explore))
    return 0
