"""DoomCamera-v0: the Gymnasium contract, realised motion, measured intrinsics, action validation."""

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import envs  # noqa: F401  (registers worldmodel/DoomCamera-v0)
from envs.doom import DoomCameraEnv
from worldmodel.camera import relative_pose

pytest.importorskip("vizdoom")

ROOT = Path(__file__).resolve().parents[1]


def _yaw_of(rel: np.ndarray) -> float:
    """Yaw (degrees, + = turn right) of a relative pose; OpenCV camera, rotation about +y."""
    return float(np.rad2deg(np.arctan2(rel[0, 2], rel[2, 2])))


@pytest.fixture(scope="module")
def env():
    e = DoomCameraEnv()  # MAP01 spawn faces an open corridor east
    yield e
    e.close()


def test_check_env_passes():
    """Guards the Gymnasium contract: spaces, seeding determinism, reset/step signatures, render."""
    e = gym.make("worldmodel/DoomCamera-v0", frame_size=(48, 64), render_mode="rgb_array").unwrapped
    try:
        check_env(e, skip_render_check=False)
    finally:
        e.close()


def test_yaw_command_realises_10_degrees(env):
    """A commanded +10 degree yaw (ry > 0 = turn right) must be realised to within 1 degree."""
    env.reset(seed=0)
    _, _, _, _, info = env.step(np.array([0, 0, 0, 0, np.deg2rad(10.0), 0], np.float32))
    prev = env._pose  # noqa: SLF001
    first = info["c2w"]
    _, _, _, _, info = env.step(np.array([0, 0, 0, 0, np.deg2rad(10.0), 0], np.float32))
    assert abs(_yaw_of(relative_pose(prev, info["c2w"][-1])) - 10.0) < 1.0
    assert abs(np.rad2deg(info["realised_action"][4]) - 10.0) < 1.0
    # Interpolated over the step: each of the 4 frames turns about 2.5 degrees.
    per_frame = [_yaw_of(relative_pose(a, b)) for a, b in zip(first[-1:].tolist() + info["c2w"][:-1].tolist(), info["c2w"])]
    np.testing.assert_allclose(per_frame, 2.5, atol=0.3)


def test_forward_move_realises_camera_z_translation(env):
    """Forward motion must show up as +z translation in the camera (momentum lag bounded)."""
    env.reset(seed=0)
    total = np.zeros(3)
    for _ in range(4):
        _, _, _, _, info = env.step(np.array([0, 0, 12.0, 0, 0, 0], np.float32))
        r = info["realised_action"]
        total += r[:3]
        assert abs(r[0]) < 0.5 and abs(r[1]) < 0.5 and abs(r[3:]).max() < 1e-3
    assert 44.0 < total[2] <= 48.5, total  # 4 x 12 commanded; the first step lags by the thrust cap


def test_collision_is_reported_honestly(env):
    """Walking into a wall: the realised pose stops at the wall instead of echoing the command."""
    env.reset(seed=0)
    for _ in range(60):
        _, _, _, _, info = env.step(np.array([0, 0, 32.0, 0, 0, 0], np.float32))
    assert info["realised_action"][2] < 1.0  # blocked: commanded 32


def test_unrealisable_components_dropped_and_reported(env):
    """ty, rx (pitch), rz (roll) cannot be realised: reported in info, camera stays level."""
    env.reset(seed=0)
    a = np.array([0, 3.0, 0, 0.1, 0, 0.2], np.float32)
    _, _, _, _, info = env.step(a)
    np.testing.assert_allclose(info["dropped_action"], [0, 3.0, 0, 0.1, 0, 0.2], atol=1e-6)
    np.testing.assert_allclose(info["c2w"][:, :3, 1], [[0, 0, -1]] * 4, atol=1e-9)  # camera y = world down
    assert np.abs(info["realised_action"]).max() < 0.5


def test_intrinsics_measured_by_yaw_shift():
    """Warping the frame by the predicted rotation homography K R K^-1 must match the engine's render
    best at the reported fx; this pins fx (and the 90 degree FOV) by measurement."""
    e = DoomCameraEnv()  # render 256x192, no resize
    try:
        obs0, info0 = e.reset(seed=0)
        _, _, _, _, info1 = e.step(np.array([0, 0, 0, 0, np.deg2rad(10.0), 0], np.float32))
        frames, *_ = e.step(np.zeros(6, np.float32))  # settle: frames of a still camera
        f0, f1 = obs0[0].astype(np.float32), frames[-1].astype(np.float32)
        rel = relative_pose(info0["c2w"][0], info1["c2w"][-1])
        fx, fy, cx, cy = info0["intrinsics"]
        errs = {}
        for s in (0.9, 0.95, 1.0, 1.05, 1.1):
            K = np.array([[fx * s, 0, cx], [0, fy * s, cy], [0, 0, 1]])
            H = K @ rel[:3, :3] @ np.linalg.inv(K)  # new pixel -> old pixel
            warped = cv2.warpPerspective(f0, H, (f0.shape[1], f0.shape[0]), flags=cv2.WARP_INVERSE_MAP | cv2.INTER_LINEAR)
            valid = cv2.warpPerspective(np.ones_like(f0[..., 0]), H, (f0.shape[1], f0.shape[0]),
                                        flags=cv2.WARP_INVERSE_MAP | cv2.INTER_NEAREST) > 0
            errs[s] = float(np.abs(warped - f1)[valid].mean())
        assert min(errs, key=errs.get) == 1.0, errs
        # The centre column moves by fx * tan(10 deg) = 22.6 px at 256 wide.
        assert abs(fx * np.tan(np.deg2rad(10.0)) - 22.57) < 0.1
    finally:
        e.close()


@pytest.mark.parametrize(
    "bad, words",
    [
        (np.zeros(5, np.float32), ["shape (5,)", "(6,)", "tx, ty, tz"]),
        (np.zeros((2, 6), np.float32), ["shape (2, 6)"]),
        (np.array([0, 0, np.nan, 0, 0, 0]), ["NaN"]),
        (np.array([0, 0, np.inf, 0, 0, 0]), ["inf"]),
        (np.array(["a"] * 6), ["dtype"]),
    ],
)
def test_bad_action_raises_and_env_stays_usable(env, bad, words):
    """A malformed action is a ValueError naming the problem and layout; the next good step works."""
    env.reset(seed=0)
    with pytest.raises(ValueError) as ei:
        env.step(bad)
    for w in words:
        assert w in str(ei.value)
    obs, _, _, _, info = env.step(np.array([0, 0, 4.0, 0, 0, 0], np.float32))
    assert obs.shape == env.observation_space.shape and info["realised_action"][2] > 0


def test_reset_seed_is_deterministic_with_random_start():
    """Same seed, same random start pose and first frame (collection and replay rely on it)."""
    e = DoomCameraEnv(frame_size=(48, 64), start="random", map_name="MAP03")
    try:
        o1, i1 = e.reset(seed=5)
        o2, i2 = e.reset(seed=5)
        o3, i3 = e.reset(seed=6)
        np.testing.assert_array_equal(o1, o2)
        np.testing.assert_allclose(i1["c2w"], i2["c2w"])
        assert not np.allclose(i1["c2w"], i3["c2w"])
    finally:
        e.close()


def test_close_then_reset_restarts_engine(env):
    """close() stops the engine; a later reset starts a fresh one."""
    env.close()
    obs, _ = env.reset(seed=0)
    assert obs.shape == env.observation_space.shape


# ---- engine process lifecycle, map validation, seeding (issues 19, 20, 21) ------------------------

ENGINE_SCRIPT = """
import os, sys, time
from envs.doom import DoomCameraEnv
from envs.watchdog import child_pids
mode = sys.argv[1]
env = DoomCameraEnv(frame_size=(48, 64))
if mode == "unknown-map":
    t0 = time.monotonic()
    try:
        env.reset(options={"map": "MAP99"})
        print("NO-ERROR", flush=True)
    except ValueError as e:
        print(f"ValueError {time.monotonic() - t0:.3f} engines={sorted(child_pids('vizdoom'))} {e}", flush=True)
else:  # "killed": start an engine, say its pid, wait to be SIGKILLed
    env.reset(seed=0)
    print(f"ENGINE {sorted(child_pids('vizdoom'))[0]}", flush=True)
    time.sleep(120)
"""


def _engine_script(mode: str) -> subprocess.Popen:
    """ENGINE_SCRIPT in its own session, so a hung run (engine included) can be killed as one group."""
    return subprocess.Popen([sys.executable, "-c", ENGINE_SCRIPT, mode], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True, cwd=ROOT)


def _alive(pid: int) -> bool:
    """Whether `pid` is a running (not zombie) process."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_unknown_map_raises_within_5_s_and_leaves_no_engine():
    """reset(options={'map': 'MAP99'}) used to hang forever in the engine; it must be a ValueError naming the
    WAD's maps within 5 s, with no engine process left behind (run in a child so a hang cannot block the suite)."""
    proc = _engine_script("unknown-map")
    try:
        out, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # python and its engine
        proc.communicate()
        pytest.fail("reset(options={'map': 'MAP99'}) hung for 60 s")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    assert out.startswith("ValueError"), out + err[-2000:]
    _, seconds, engines, message = out.split(" ", 3)
    assert float(seconds) < 5.0 and engines == "engines=[]", out
    assert "MAP99" in message and "MAP32" in message  # names the maps there are


def test_sigkilled_python_leaves_no_engine_process():
    """ViZDoom's engine is a child process that waits forever for its controller: after a SIGKILL of Python it
    must still go (the env's guard process kills it)."""
    proc = _engine_script("killed")
    engine = None
    try:
        line = proc.stdout.readline()
        assert line.startswith("ENGINE"), line + proc.stderr.read()[-2000:]
        engine = int(line.split()[1])
        assert _alive(engine)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        deadline = time.monotonic() + 10
        while _alive(engine) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _alive(engine), f"engine {engine} outlived its SIGKILLed Python process"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        if engine is not None and _alive(engine):
            os.kill(engine, signal.SIGKILL)


def test_bad_reset_options_raise_and_keep_the_episode(env):
    """Unknown maps, option keys, starts and seeds are ValueErrors raised before anything changes."""
    with pytest.raises(ValueError, match="MAP99"):
        DoomCameraEnv(map_name="MAP99")
    env.reset(seed=0)
    pose = env._pose.copy()  # noqa: SLF001
    state = env.np_random.bit_generator.state
    for options, seed, words in [({"map": "MAP99"}, 0, "not in freedoom2"), ({"map": "E1M1"}, 0, "not in freedoom2"),
                                 ({"mapp": "MAP02"}, 0, "unknown reset option"), ({"start": "middle"}, 0, "start"),
                                 (None, -1, "seed"), (None, 1.5, "seed"), (None, True, "seed")]:
        with pytest.raises(ValueError, match=words):
            env.reset(seed=seed, options=options)
        assert env.map_name == "MAP01" and env.np_random.bit_generator.state == state
    np.testing.assert_array_equal(env._pose, pose)  # noqa: SLF001
    assert env.step(np.zeros(6, np.float32))[0].shape == env.observation_space.shape


def test_hung_engine_call_is_killed_after_the_timeout(monkeypatch):
    """An engine call that never returns (here: a map the validation would have refused) is stopped after
    engine_timeout_s with a TimeoutError; no engine is left and the next reset starts a fresh one."""
    import envs.doom

    e = DoomCameraEnv(frame_size=(48, 64), engine_timeout_s=2.0)
    try:
        e.reset(seed=0)
        engine = e._guard.pid  # noqa: SLF001
        monkeypatch.setattr(envs.doom, "check_map", lambda name, path: name)  # let MAP99 through to the engine
        t0 = time.monotonic()
        with pytest.raises(TimeoutError, match="did not answer within 2 s"):
            e.reset(options={"map": "MAP99"})
        assert time.monotonic() - t0 < 15
        assert not _alive(engine)
        monkeypatch.undo()
        obs, info = e.reset(seed=0)
        assert info["map"] == "MAP01" and obs.shape == e.observation_space.shape
        engine = e._guard.pid  # noqa: SLF001
    finally:
        e.close()
    assert not _alive(engine)


def test_seed_chooses_the_spawn_view():
    """With the default spawn start the seed must matter: equal seeds give equal first frames, different seeds
    different ones (a seeded heading jitter at the map start)."""
    e = DoomCameraEnv(frame_size=(48, 64))
    try:
        a, ia = e.reset(seed=1)
        b, _ = e.reset(seed=1)
        c, ic = e.reset(seed=2)
        np.testing.assert_array_equal(a, b)
        assert np.abs(a.astype(int) - c).mean() > 1.0, "seeds 1 and 2 gave the same first view"
        yaw = abs(_yaw_of(relative_pose(ia["c2w"][0], ic["c2w"][0])))
        assert 0 < yaw <= 2 * DoomCameraEnv().spawn_yaw_jitter_deg
    finally:
        e.close()


def test_random_start_failure_is_retried_then_raises(monkeypatch):
    """A failed random start is retried with the env's generator, and a map with no room is a clear error
    (it used to be ignored: the episode silently began at the spawn point)."""
    import envs.doom

    e = DoomCameraEnv(frame_size=(48, 64), start="random")
    try:
        real, calls = DoomCameraEnv._random_start, []  # noqa: SLF001

        def fail_once(self):
            calls.append(1)
            return False if len(calls) == 1 else real(self)

        monkeypatch.setattr(DoomCameraEnv, "_random_start", fail_once)
        e.reset(seed=0)
        assert len(calls) == 2, "a failed random start must be retried"
        monkeypatch.setattr(DoomCameraEnv, "_random_start", real)
        monkeypatch.setattr(envs.doom, "_inside", lambda p, segs: False)  # no point is ever inside a room
        with pytest.raises(RuntimeError, match="no open point.*start='spawn'"):
            e.reset(seed=0)
    finally:
        e.close()
