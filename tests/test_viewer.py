"""The viewer: key -> action mapping, key scripts, the worker thread, and headless scripted runs."""

import json
import os
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path

import imageio
import numpy as np
import pytest

from agents.keyboard import KeyboardMapping
from envs.world import WorldEnv
from tests.test_world_env import FPS, HIGH, HW, LOW, build_world, world_file  # noqa: F401 (fixture)
from viewer.recorder import log_path
from viewer.script import parse_keys
from viewer.worker import GenerationWorker, LiveInput
from worldmodel.camera import integrate
from worldmodel.world import World

ROOT = Path(__file__).resolve().parents[1]
# With the test world's bounds (translation 8, rotation 0.3), for_bounds() gives half of each:
MOVE, TURN, MOUSE = 4.0, 0.15, 0.15 / 40


def test_keys_map_to_camera_motion_in_opencv_axes():
    """W forward (+tz), D right (+tx), right arrow yaw right (+ry), up arrow look up (+rx), mouse likewise."""
    m = KeyboardMapping.for_bounds(LOW, HIGH)
    np.testing.assert_allclose(m.action({"w"}), [0, 0, MOVE, 0, 0, 0])
    np.testing.assert_allclose(m.action({"s", "a"}), [-MOVE, 0, -MOVE, 0, 0, 0])
    np.testing.assert_allclose(m.action({"w", "s"}), np.zeros(6))  # opposite keys cancel
    np.testing.assert_allclose(m.action({"right", "up"}), [0, 0, 0, TURN, TURN, 0])
    np.testing.assert_allclose(m.action({"left", "down"}), [0, 0, 0, -TURN, -TURN, 0])
    np.testing.assert_allclose(m.action(set(), mouse=(10, -20)), [0, 0, 0, 20 * MOUSE, 10 * MOUSE, 0], rtol=1e-6)
    flick = m.action({"right"}, mouse=(1000, 0))  # clipped to the env's bounds
    assert flick[4] == pytest.approx(HIGH[4]) and flick.dtype == np.float32


def test_key_script_parses_and_errors_name_the_line():
    """The documented key-script format: repeat counts, '-', mouse=DX,DY, r and h; bad lines named."""
    ticks = parse_keys("# walk\n2 w d  # both\n1 -\n1 right mouse=5,-3\n1 r\n")
    assert [sorted(t.keys) for t in ticks] == [["d", "w"], ["d", "w"], [], ["right"], []]
    assert ticks[3].mouse == (5.0, -3.0) and ticks[4].reset and not ticks[3].reset
    with pytest.raises(ValueError, match=r"walk.keys:2: .*unknown key 'x'"):
        parse_keys("1 w\n1 x\n", "walk.keys")
    with pytest.raises(ValueError, match="repeat count"):
        parse_keys("w 3\n")


def test_input_never_waits_on_the_model_and_queue_bounds_generation(world_file):
    """While a step is running, setting keys returns at once; with nobody reading, the worker stops
    at most queue-size steps ahead instead of generating without bound."""
    env = WorldEnv(world=World.load(world_file))
    gate = threading.Event()
    original = env.step

    def slow_step(action):
        gate.wait(5)  # a model step that takes as long as the test wants
        return original(action)

    env.step = slow_step
    live = LiveInput()
    out: queue.Queue = queue.Queue(maxsize=2)
    worker = GenerationWorker(env, KeyboardMapping.for_bounds(LOW, HIGH), live, out)
    worker.start()
    try:
        time.sleep(0.2)  # the worker is now inside slow_step
        t0 = time.perf_counter()
        for _ in range(100):
            live.set_keys({"w"})
            live.add_mouse(1, 0)
        assert time.perf_counter() - t0 < 0.05, "input must not wait for the running step"
        gate.set()
        time.sleep(1.0)  # plenty of time for many steps if nothing held the worker back
        steps = int(env.core.steps[0])
        assert steps <= 3, f"worker ran {steps} steps ahead with a queue of 2 and no reader"
        assert out.get_nowait().info["step"] == 0  # the reset, then steps, in order
        assert not out.get_nowait().action.any()  # step 1 read the input before any key was held
        step2 = out.get(timeout=5)  # step 2 took the input given while step 1 was running
        assert step2.action[2] == pytest.approx(MOVE) and step2.action[4] == pytest.approx(HIGH[4])
    finally:
        worker.stop()
        worker.join(5)
    assert not worker.is_alive() and worker.error is None


def run_viewer(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "SDL_VIDEODRIVER": "dummy", "SDL_AUDIODRIVER": "dummy", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "viewer", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)


def test_headless_scripted_run_records_the_frames_and_the_actions_the_keys_map_to(world_file, tmp_path):
    """`python -m viewer --headless --keys ... --record out.mp4`: (steps + 1) * fps frames in the mp4,
    and the env received exactly the actions the scripted keys map to (checked against hand values)."""
    keys = tmp_path / "walk.keys"
    keys.write_text("3 w\n2 w d\n1 right mouse=8,-4\n1 r\n1 up\n")
    video, shot = tmp_path / "out.mp4", tmp_path / "shot.png"
    steps = 10  # 8 scripted ticks, then 2 with no key
    r = run_viewer("--checkpoint", str(world_file), "--headless", "--steps", str(steps), "--keys", str(keys),
                   "--record", str(video), "--screenshot", str(shot), "--seed", "3")
    assert r.returncode == 0, r.stderr
    frames = list(imageio.get_reader(video, format="FFMPEG").iter_data())
    assert len(frames) == (steps + 1) * FPS
    assert frames[0].shape == (*HW, 3)

    log = [json.loads(line) for line in log_path(video).read_text().splitlines()]
    assert [rec["tick"] for rec in log] == list(range(steps + 1))
    expected = (
        [None]  # tick 0: the first reset
        + [[0, 0, MOVE, 0, 0, 0]] * 3
        + [[MOVE, 0, MOVE, 0, 0, 0]] * 2
        + [[0, 0, 0, 4 * MOUSE, TURN + 8 * MOUSE, 0]]
        + [None]  # 'r'
        + [[0, 0, 0, TURN, 0, 0]]
        + [[0, 0, 0, 0, 0, 0]] * 2
    )
    for rec, want in zip(log, expected, strict=True):
        if want is None:
            assert rec["reset"] and rec["action"] is None and rec["step"] == 0, rec
        else:
            np.testing.assert_allclose(rec["action"], want, rtol=1e-6, atol=1e-7, err_msg=f"tick {rec['tick']}")
    pose = np.eye(4)  # the env's pose after tick 6 is the product of the actions it received
    for rec in log[1:7]:
        pose = integrate(pose, np.array(rec["action"]))
    np.testing.assert_allclose(log[6]["c2w"], pose, atol=1e-5)
    assert imageio.v3.imread(shot).shape[:2] == (HW[0] * 16, HW[1] * 16)  # upscaled to ~768 px wide


def test_headless_run_with_reprojection_turns_on_the_memory(world_file, tmp_path):
    """--reprojection: the run completes; with no key pressed the recorded picture stays put with the
    memory on (a camera that does not move shows its last picture), also with min_turn=0 (the anchor
    held), while without the memory, or with still_tolerance=0 (a step that does not turn is the
    network's), the random network changes it."""
    video = tmp_path / "still.mp4"
    for memory, moves in (("min_turn=0", False), ("off", True), ("on", False), ("still_tolerance=0", True)):
        r = run_viewer("--checkpoint", str(world_file), "--headless", "--steps", "6", "--reprojection", memory,
                       "--record", str(video))
        assert r.returncode == 0, r.stderr
        frames = np.stack(list(imageio.get_reader(video, format="FFMPEG").iter_data())).astype(int)
        # The last two steps (the decoder's causal context has filled by then); mp4 noise is < 2.
        assert (np.abs(frames[-1] - frames[-1 - FPS]).mean() > 5.0) == moves, memory


def test_headless_compare_real_shows_doom_side_by_side(tmp_path):
    """--compare-real on a Doom world: the recording is world | real side by side, both from the real start view."""
    pytest.importorskip("vizdoom")
    world = tmp_path / "doom_world.safetensors"
    build_world(world, card={"source": "doom", "wad": "freedoom2", "map": "MAP01"})
    from viewer.app import main

    video = tmp_path / "cmp.mp4"
    assert main(["--checkpoint", str(world), "--headless", "--steps", "2", "--record", str(video), "--compare-real"]) == 0
    frames = list(imageio.get_reader(video, format="FFMPEG").iter_data())
    assert len(frames) == 3 * FPS and frames[0].shape == (HW[0], 2 * HW[1], 3)
    real = frames[-1][:, HW[1]:].astype(float)
    assert real.std() > 5, "the right half must be a rendered Doom view"


def test_compare_real_refuses_a_non_doom_world(world_file):
    """A world whose card does not say source=doom cannot be compared with the real engine."""
    r = run_viewer("--checkpoint", str(world_file), "--headless", "--steps", "1", "--compare-real")
    assert r.returncode != 0 and "needs a Doom world" in r.stderr


def test_cli_help_and_missing_checkpoint(tmp_path):
    """--help documents keys and the key-script format; a missing world file is named, exit status 2."""
    r = run_viewer("--help")
    assert r.returncode == 0 and "--keys" in r.stdout and "mouse=DX,DY" in r.stdout and "W/S" in r.stdout
    r = run_viewer("--checkpoint", str(tmp_path / "nope.safetensors"), "--headless", "--steps", "1")
    assert r.returncode == 2 and "nope.safetensors" in r.stderr
    r = run_viewer("--reprojection", "keep=2", "--headless", "--steps", "1")
    assert r.returncode == 2 and "keep" in r.stderr


def test_no_display_runs_the_headless_exploration_and_says_where_its_files_are(world_file, tmp_path):
    """Plain `python -m viewer` without a display (no DISPLAY/WAYLAND_DISPLAY, no SDL driver set): the built-in
    tour runs headless, leaves a playable mp4 and a contact sheet under outputs/, ends with one summary line
    (fps, files, how to get the window), and prints no ALSA noise although no sound card is there."""
    from viewer.script import TOUR

    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY", "SDL_VIDEODRIVER",
                                                            "SDL_AUDIODRIVER")}
    r = subprocess.run([sys.executable, "-m", "viewer", "--checkpoint", str(world_file), "--threads", "1"],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert len(lines) == 1, r.stdout
    steps = len(parse_keys(TOUR))
    for part in ("no display", f"{steps} steps", "fps (1 thread)", "outputs/explore.mp4", "outputs/explore_sheet.png",
                 "opens the window"):
        assert part in lines[0], lines[0]
    assert "ALSA" not in r.stderr and "pygame-ce" not in r.stdout + r.stderr
    frames = list(imageio.get_reader(tmp_path / "outputs/explore.mp4", format="FFMPEG").iter_data())
    assert len(frames) == (steps + 1) * FPS
    sheet = imageio.v3.imread(tmp_path / "outputs/explore_sheet.png")
    assert sheet.shape[0] == 3 * 2 * HW[0] + 2 * 2 and sheet.shape[1] == 4 * 2 * HW[1] + 3 * 2  # 12 tiles at 2x


def test_display_detection_reads_the_environment():
    """A window needs DISPLAY or WAYLAND_DISPLAY on Linux; the dummy/offscreen SDL drivers mean no screen anywhere."""
    from viewer.display import display_status

    assert display_status({}, "linux") == (False, "no DISPLAY or WAYLAND_DISPLAY")
    assert display_status({"DISPLAY": ":0"}, "linux") == (True, "")
    assert display_status({"WAYLAND_DISPLAY": "wayland-0"}, "linux") == (True, "")
    assert display_status({"DISPLAY": ":0", "SDL_VIDEODRIVER": "dummy"}, "linux")[0] is False
    assert display_status({}, "darwin") == (True, "") and display_status({}, "win32") == (True, "")


def test_help_is_instant_and_imports_no_torch():
    """`python -m viewer --help` answers without importing torch (the model loads only for a run)."""
    r = subprocess.run([sys.executable, "-X", "importtime", "-m", "viewer", "--help"], cwd=ROOT,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "--threads" in r.stdout and "no display" in r.stdout
    imported = {line.split("|")[-1].strip() for line in r.stderr.splitlines() if line.startswith("import time:")}
    assert "torch" not in imported and "pygame" not in imported


def test_compare_panes_are_labelled_model_and_engine():
    """Side-by-side frames get 'model' (left) and 'engine' (right) in their top-left corners, nothing else changes."""
    from viewer.annotate import label_panes

    frames = np.full((2, 96, 256, 3), 100, np.uint8)
    out = label_panes(frames)
    changed = (out != frames).any(axis=(0, 3))  # (H, 2W)
    ys, xs = np.nonzero(changed)
    assert ys.max() < 20 and set(np.unique(xs // 128)) == {0, 1}
    assert (xs % 128).max() < 64 and (out == 255).any() and (frames == 100).all()


def test_gif_recording_keeps_every_second_frame(tmp_path):
    """`--record x.gif` writes an animated GIF of every 2nd frame (for docs) and logs what it kept."""
    from viewer.recorder import GIF_STRIDE, Recorder
    from viewer.script import Tick
    from viewer.worker import Packet

    rec = Recorder(tmp_path / "a.gif", fps=20)
    rng = np.random.default_rng(0)
    for tick in range(3):
        frames = rng.integers(0, 256, (FPS, *HW, 3), dtype=np.uint8)
        info = {"step": tick, "c2w": np.eye(4), "timing": type("T", (), {"latency_s": 0.0})()}
        rec.write(Packet(tick, frames, None, info, Tick(), None))
    rec.close()
    gif = imageio.v3.imread(tmp_path / "a.gif", index=None)
    assert len(gif) == rec.frames == 3 * FPS // GIF_STRIDE and gif.shape[1:3] == HW
