"""train.eval_response: the engine against itself scores the ideal, and broken sources score what they are.

Every check drives a measurement function with the real engine (ViZDoom) on validation maps; a
synthetic source shows that the estimator measures what it claims (a frozen picture scores 0, an
exact rotation scores 1, the wrong direction scores -1), so a flipped sign or a wrong scale fails here.
"""

import json

import cv2
import numpy as np
import pytest

pytest.importorskip("vizdoom")

from train.eval_response import (  # noqa: E402
    EngineSource,
    ResponseConfig,
    idle_stability,
    image_scale,
    main,
    response_report,
    return_to_view,
    start_reconstruction,
    turn_response,
    validation_starts,
    walk_response,
    walk_starts,
)
from worldmodel.metrics import intrinsics_matrix  # noqa: E402

HW = (96, 128)


@pytest.fixture(scope="module")
def engine():
    """One engine at the bundled world's resolution, closed after the module."""
    eng = EngineSource(HW)
    yield eng
    eng.close()


@pytest.fixture(scope="module")
def starts(engine):
    """Two held-out starts, both on MAP25 (no map loads between rollouts); the first turns right, the second left."""
    return validation_starts(engine, 1) + validation_starts(engine, 1, offset=8)


def frozen(starts, actions):
    """A source that never moves: the start image for every frame."""
    return np.repeat(np.stack([s.image for s in starts])[:, None], 1 + 4 * actions.shape[1], axis=1)


def rotating(K, gain=1.0):
    """A source that turns exactly: each frame is the start image warped by the cumulative yaw x `gain`."""
    Km = intrinsics_matrix(K)

    def source(starts, actions):
        out = []
        for s, a in zip(starts, actions):
            yaw = np.concatenate([[0.0], np.cumsum(np.repeat(a[:, 4] / 4, 4))]) * gain  # per video frame
            frames = []
            for t in yaw:
                c, n = np.cos(t), np.sin(t)
                R = np.array([[c, 0, n], [0, 1, 0], [-n, 0, c]])  # the camera turned by +t about y
                frames.append(cv2.warpPerspective(s.image, Km @ R.T @ np.linalg.inv(Km), HW[::-1]))
            out.append(np.stack(frames))
        return np.stack(out)

    return source


@pytest.mark.parametrize("rate", [0.03, 0.06, 0.1])
def test_engine_against_itself_turns_with_ratio_one_and_never_freezes(engine, starts, rate):
    """The engine's own turning is the ideal: ratio within 5% of 1 at each rate, no frozen step. A
    pinhole-shift expectation would read 1.12 here (the edges of a 90-degree view move twice as far)."""
    r = turn_response(engine, engine, starts, rate, steps=6)
    assert r["ratio"] == pytest.approx(1.0, abs=0.05), r
    assert r["frozen_share"] == 0.0, r
    assert all(abs(x - 1.0) < 0.08 for x in r["ratio_per_start"]), r
    assert r["sharpness_ratio"] == pytest.approx(1.0) and r["psnr_last"] > 60, r


def test_a_blurry_turn_reads_as_turning_and_as_blurry(engine, starts):
    """The engine's turn blurred by a 3 px Gaussian (as generated frames are) still slides by the
    command, if a little short of it (0.89 here, 0.99 sharp; phase correlation read such pictures as
    frozen), and the sharpness ratio says it is blurry."""
    def blurred(s, a):
        f = engine(s, a)
        return np.stack([[cv2.GaussianBlur(x, (0, 0), 3.0) for x in clip] for clip in f])
    r = turn_response(blurred, engine, starts, 0.06, steps=6)
    assert 0.8 < r["ratio"] < 1.1 and r["frozen_share"] == 0.0, r
    assert r["sharpness_ratio"] < 0.1 and r["psnr_last"] < 35, r


def test_engine_turning_the_other_way_scores_minus_one(engine, starts):
    """A source that turns against the command (the sign convention broken) scores -1, frozen on every step."""
    r = turn_response(lambda s, a: engine(s, -a), engine, starts, 0.06, steps=6)
    assert r["ratio"] == pytest.approx(-1.0, abs=0.06), r
    assert r["frozen_share"] == 1.0


def test_frozen_source_scores_zero_turn_and_all_steps_frozen(engine, starts):
    """Repeating the first frame: the picture never slides, so ratio ~0 and every step is frozen."""
    r = turn_response(frozen, engine, starts, 0.06, steps=6)
    assert abs(r["ratio"]) < 0.02 and r["frozen_share"] == 1.0, r


@pytest.mark.parametrize("gain", [1.0, 0.5])
def test_exact_rotation_source_scores_its_gain(engine, starts, gain):
    """A source that rotates the start image by exactly the commanded yaw (the homography K R^T K^-1)
    scores 1; one that turns half as far scores 0.5 (guards the expected-shift scale, fx per radian)."""
    r = turn_response(rotating(engine.intrinsics, gain), engine, starts, 0.06, steps=6)
    assert r["ratio"] == pytest.approx(gain, abs=0.05), r
    assert r["frozen_share"] == 0.0


def test_zoom_estimator_recovers_a_known_zoom(starts):
    """image_scale finds the zoom of a frame magnified about the principal point, to 1%, both ways."""
    img, c = starts[0].image, (63.5, 47.5)
    for s in (0.95, 1.0, 1.1, 1.4):
        M = np.array([[s, 0, c[0] * (1 - s)], [0, s, c[1] * (1 - s)]])
        zoomed = cv2.warpAffine(img, M, HW[::-1], flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
        assert image_scale(img, zoomed, c) == pytest.approx(s, rel=0.01)


@pytest.fixture(scope="module")
def walkers(engine):
    """One held-out start with room to walk 6 steps."""
    return walk_starts(engine, 1, 16.0, 6)


def test_walk_response_engine_one_frozen_zero_backwards_negative(engine, walkers):
    """The engine walking (re-driven by its own realised motion) expands like itself (ratio ~1, expansion
    > 1% per step); a frozen picture scores ~0; the engine walking backwards scores below 0."""
    own = walk_response(engine, engine, walkers, 16.0, 6)
    assert own["ratio"] == pytest.approx(1.0, abs=0.05) and own["engine_expansion_per_step"] > 0.01, own
    assert abs(walk_response(frozen, engine, walkers, 16.0, 6)["ratio"]) < 0.05
    back = walk_response(lambda s, a: engine(s, -a), engine, walkers, 16.0, 6)
    assert back["ratio"] < -0.3, back


def test_idle_engine_is_still_a_frozen_picture_is_ideal_and_noise_has_lost_the_view(engine, starts):
    """Zero action: the engine's view stays still (PSNR at the cap), a source that repeats the start is
    scored the same, neither is flagged; a source that dissolves into noise after step 2 scores below a
    flat frame of the view's mean colour from step 3 (the bundled world's idle failure mode)."""
    for source in (engine, frozen):
        r = idle_stability(source, engine, starts, steps=8)
        assert r["psnr_last"] > 60 and r["drift_psnr"] > 60 and not r["collapsed"], r
        assert r["lost_view_share"] == 0.0 and r["lost_view_at_step"] == [None, None], r

    def dissolving(st, a):
        out = frozen(st, a).copy()
        out[:, 9:] = np.random.default_rng(0).integers(0, 256, out[:, 9:].shape, dtype=np.uint8)
        return out

    r = idle_stability(dissolving, engine, starts, steps=8)
    assert r["lost_view_share"] == 1.0 and r["lost_view_at_step"] == [3, 3] and r["psnr_last"] < 12, r


def test_return_to_view_engine_comes_back_and_frozen_gains_nothing(engine, starts):
    """Turning 4 x 0.1 rad away and back, the engine's final view matches its start (> 35 dB) far above
    its far view; a frozen source's final and far views are the same frame (gain 0)."""
    own = return_to_view(engine, engine, starts, rate=0.1, steps=4)
    assert own["psnr_final"] > 35 and own["gain_db"] > 8, own
    assert return_to_view(frozen, engine, starts, rate=0.1, steps=4)["gain_db"] == pytest.approx(0.0)


def test_start_reconstruction_of_the_engine_is_exact(engine, starts):
    """The engine's first frame is the start itself: PSNR at the cap (100 dB)."""
    assert start_reconstruction(engine, starts)["psnr"] == 100.0


@pytest.mark.slow
def test_start_reconstruction_of_the_bundled_world(starts):
    """The bundled world's VAE reconstructs held-out starts above 25 dB, the full decoder within 1 dB of
    the light one or better."""
    from worldmodel.world import World

    r = start_reconstruction(World.load(), starts)
    assert r["psnr"] > 25 and r["psnr_full_decoder"] > r["psnr"] - 1.0, r


def test_cli_help_names_the_settings(capsys):
    """`--help` describes the quick and full settings and the output path."""
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "--quick" in out and "outputs/eval_response" in out and "--threads" in out


def test_teacher_forced_turn_reads_the_network_and_a_copy_of_the_past_as_frozen(engine, starts, monkeypatch):
    """Given the engine's real past, the bundled network turns the picture; a generator that returns the
    recycled (real previous) latent unchanged reads about 0 with its steps frozen, and the VAE's own
    step-to-step slide (the ceiling) is about 1 in both."""
    from train.eval_response import turn_response_teacher_forced
    from worldmodel.generator import StreamingGenerator
    from worldmodel.world import World

    world = World.load()
    net = turn_response_teacher_forced(world, engine, starts, 0.1, 6)
    assert net["ratio"] > 0.5 and 0.8 < net["vae_ratio"] < 1.2, net
    monkeypatch.setattr(StreamingGenerator, "step", lambda self, actions, recycled=None: recycled.clone())
    copy = turn_response_teacher_forced(world, engine, starts, 0.1, 6)
    assert abs(copy["ratio"]) < 0.2 and copy["frozen_share"] >= 0.8 and 0.8 < copy["vae_ratio"] < 1.2, copy


def test_cli_reprojection_setting_reaches_the_world_row(monkeypatch, tmp_path):
    """`--reprojection` sets the memory of the 'world' row (the world file's when absent); a bad one exits."""
    import train.eval_response as er
    from worldmodel.reproject import ReprojectionConfig

    seen = []
    monkeypatch.setattr(er.World, "load", staticmethod(lambda path=None: "world"))
    monkeypatch.setattr(er, "response_report", lambda world, quick, cfg, **kw: seen.append(kw["memory"]) or {})
    monkeypatch.setattr(er, "headline", lambda report: "")
    out = str(tmp_path / "r.json")
    main(["--quick", "--json", out, "--reprojection", "keep=0.5"])
    main(["--quick", "--json", out, "--reprojection", "off"])
    main(["--quick", "--json", out])
    assert seen == [ReprojectionConfig(keep=0.5), None, "world"]
    with pytest.raises(SystemExit):
        main(["--quick", "--reprojection", "keep=2"])


@pytest.mark.slow
def test_quick_report_on_the_bundled_world(tmp_path):
    """The CLI's quick setting on the bundled world: the engine row is ideal, every row has every
    measurement, and the JSON is written (about a minute on a 2-core CPU)."""
    path = tmp_path / "r.json"
    main(["--quick", "--threads", "1", "--json", str(path)])
    r = json.loads(path.read_text())
    assert set(r["rows"]) == {"engine", "world", "network_alone"}
    for row in r["rows"].values():
        assert set(row) >= {"turn", "walk", "idle", "return_to_view", "start_reconstruction"}
    eng = r["rows"]["engine"]
    assert all(abs(t["ratio"] - 1) < 0.05 and t["frozen_share"] == 0 for t in eng["turn"].values())
    assert r["config"] == json.loads(json.dumps(ResponseConfig.quick().__dict__))


@pytest.mark.slow
def test_response_report_accepts_a_shared_engine():
    """response_report with a caller's engine leaves it open (the caller closes it)."""
    from worldmodel.world import World

    eng = EngineSource(HW)
    try:
        cfg = ResponseConfig.quick(starts=1, rates=(0.1,), turn_steps=4, walk_steps=4, idle_steps=4, loop_steps=2)
        r = response_report(World.load(), cfg=cfg, engine=eng, network_alone=False)
        assert set(r["rows"]) == {"engine", "world"}
        eng.rollout(validation_starts(eng, 1), np.zeros((1, 1, 6), np.float32))  # still running
    finally:
        eng.close()


def test_response_pictures_cli_and_labels(capsys):
    """`python -m train.response_pictures --help` names its output folder; a labelled row keeps its pixels
    and gains a dark margin with the label's text."""
    from train.response_pictures import LABEL_W, labelled
    from train.response_pictures import main as pictures_main

    with pytest.raises(SystemExit) as e:
        pictures_main(["--help"])
    assert e.value.code == 0 and "docs/images" in capsys.readouterr().out
    row = np.full((48, 64, 3), 200, np.uint8)
    out = labelled(row, "network\nalone")
    assert out.shape == (48, 64 + LABEL_W, 3) and (out[:, LABEL_W:] == row).all()
    assert out[:, :LABEL_W].max() > 200 and np.median(out[:, :LABEL_W]) == 24
