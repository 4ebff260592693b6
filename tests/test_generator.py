"""The streaming generator: static KV cache, flat memory, independent seeded streams."""

import numpy as np
import pytest
import torch

from helpers import tiny_dit
from worldmodel.bench.common import rss_bytes
from worldmodel.config import CameraStats, model_config
from worldmodel.dit import WorldDiT
from worldmodel.camera import frame_motions, integrate, step_frame_motions, step_poses
from worldmodel.generator import StreamingGenerator

LATENT = (4, 4)
K, IMG = (16.0, 16.0, 15.5, 15.5), (32, 32)


def make_generator(batch: int = 2, window: int = 3, seeds=None) -> StreamingGenerator:
    return StreamingGenerator(tiny_dit(window=window), batch, LATENT, K, IMG, CameraStats(), seeds=seeds)


def first(batch: int) -> torch.Tensor:
    return torch.randn(batch, 16, *LATENT, generator=torch.Generator().manual_seed(5))


def actions(batch: int, steps: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    return np.concatenate([rng.normal(0, 0.5, (steps, batch, 3)), rng.normal(0, 0.05, (steps, batch, 3))], -1)


def test_two_thousand_steps_flat_memory_static_cache_no_nan():
    gen = make_generator(batch=1, window=4)
    gen.reset(first(1))
    ptrs = [b.data_ptr() for b in gen.cache.buffers()] + [gen.recycled.data_ptr()]
    acts = actions(1, 50)
    rss_after_warmup = None
    for i in range(2000):
        z = gen.step(acts[i % 50])
        assert torch.isfinite(z).all(), f"non-finite latent at step {i}"
        if i == 199:
            rss_after_warmup = rss_bytes()
    assert [b.data_ptr() for b in gen.cache.buffers()] + [gen.recycled.data_ptr()] == ptrs
    growth = rss_bytes() - rss_after_warmup
    assert growth < 16 * 2**20, f"resident memory grew by {growth / 2**20:.1f} MiB over 1800 steps"
    assert gen.frames_generated.tolist() == [2000]


def test_sink_distance_never_leaves_the_trained_range():
    gen = make_generator(batch=1, window=3)
    gen.reset(first(1))
    for _ in range(50):
        plan = gen.cache.prepare()
        assert 0 <= (plan["pos"] - plan["sink_pos"]).item() <= gen.cache.window + 1
        gen.cache.advance()


def test_seeded_streams_are_deterministic_and_independent():
    a = make_generator(batch=2, seeds=[7, 8])
    b = make_generator(batch=1, seeds=[8])
    a.reset(first(2))
    b.reset(first(2)[1:])
    acts = actions(2, 6)
    for i in range(6):
        za = a.step(acts[i])
        zb = b.step(acts[i][1:])
        torch.testing.assert_close(za[1:], zb, rtol=1e-5, atol=1e-5)


def test_resetting_one_stream_leaves_the_other_untouched():
    gen, ref = make_generator(batch=2, seeds=[1, 2]), make_generator(batch=2, seeds=[1, 2])
    gen.reset(first(2))
    ref.reset(first(2))
    acts = actions(2, 8)
    for i in range(4):
        gen.step(acts[i]), ref.step(acts[i])
    gen.reset(first(2)[:1], streams=[0])
    gen.seed([1], streams=[0])
    fresh = make_generator(batch=2, seeds=[1, 2])
    fresh.reset(first(2))
    for i in range(4, 8):
        z, zr = gen.step(acts[i]), ref.step(acts[i])
        torch.testing.assert_close(z[1], zr[1], rtol=1e-5, atol=1e-5)  # stream 1 unaffected
        zf = fresh.step(acts[i])
        torch.testing.assert_close(z[0], zf[0], rtol=1e-5, atol=1e-5)  # stream 0 restarted cleanly


def test_bad_first_latent_and_actions_raise():
    gen = make_generator(batch=2)
    with pytest.raises(ValueError, match="expected"):
        gen.reset(torch.zeros(2, 16, 5, 4))
    with pytest.raises(ValueError, match="NaN or inf"):
        gen.reset(torch.full((2, 16, *LATENT), float("nan")))
    gen.reset(first(2))
    with pytest.raises(ValueError, match="NaN"):
        gen.step(np.array([[0, 0, np.nan, 0, 0, 0]] * 2))
    with pytest.raises(ValueError, match="streams"):
        gen.step(np.zeros((3, 6)))
    assert torch.isfinite(gen.step(np.zeros((2, 6)))).all()  # still usable


def test_warp_generator_appends_the_step_rotation_grid_to_its_camera_channels():
    """With recycle_warp the step's camera input ends with the grid of the step's whole rotation,
    whether the action comes as one motion or as one motion per video frame."""
    from worldmodel.camera import rotation_warp_grid, step_rotation

    model = WorldDiT(model_config("tiny", dim=64, depth=2, heads=4, recycle_warp=True))
    gen = StreamingGenerator(model, 2, LATENT, K, IMG, CameraStats())
    one = np.array([[0, 0, 1.0, 0, 0.1, 0], [0, 0, 0, 0, -0.2, 0.01]])
    per_frame = np.repeat(one[:, None] / 4, 4, axis=1)  # four quarter turns compose to the same rotation
    for acts in (one, per_frame):
        cam = gen.camera_maps(acts)
        assert cam.shape == (2, model.cfg.camera_channels, *LATENT) and model.cfg.camera_channels == 26
        for b in range(2):
            want = rotation_warp_grid(step_rotation(one[b]), K, IMG, LATENT)
            np.testing.assert_allclose(cam[b, -2:].numpy(), want, atol=2e-3)
        torch.testing.assert_close(gen.warp_grid(acts), cam[:, -2:])  # the named grid is the model's input
    gen.reset(first(2))
    assert torch.isfinite(gen.step(one)).all()


def test_teacher_forcing_with_the_streams_own_output_is_the_free_step_and_a_real_latent_changes_it():
    """`step(recycled=...)` conditions on the given previous latent: handing a stream its own last output
    reproduces the free rollout exactly; another latent changes the prediction; a wrong shape is refused."""
    free, forced, other = (make_generator(batch=2, seeds=[3, 4]) for _ in range(3))
    for g in (free, forced, other):
        g.reset(first(2))
    acts = actions(2, 3)
    last, free_steps = first(2), []
    for i in range(3):
        free_steps.append(free.step(acts[i]))
        torch.testing.assert_close(forced.step(acts[i], recycled=last), free_steps[-1], rtol=0, atol=0)
        last = free_steps[-1]
    assert not torch.allclose(other.step(acts[0], recycled=torch.zeros(2, 16, *LATENT)), free_steps[0])
    with pytest.raises(ValueError, match="teacher-forced recycled latent has shape"):
        other.step(acts[1], recycled=torch.zeros(1, 16, *LATENT))


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # numpy's divide-by-zero on the zero intrinsics
@pytest.mark.parametrize("broken, cause", [("weights", "non-finite weights"), ("intrinsics", "intrinsics")])
def test_a_non_finite_latent_is_refused_naming_its_cause(broken, cause):
    """NaN weights or zero intrinsics would decode to black frames in silence: the step raises, naming which."""
    gen = make_generator(batch=1)
    if broken == "weights":
        with torch.no_grad():
            next(gen.model.parameters()).fill_(float("nan"))
    else:
        gen.intrinsics = (0.0, 0.0, 15.5, 15.5)
    gen.reset(first(1))
    with pytest.raises(FloatingPointError, match=cause):
        gen.step(np.zeros((1, 6)))


def test_batched_camera_motions_equal_the_per_stream_camera_functions():
    """`frame_motions` and `step_poses` (one vectorised call for the whole batch, issue 22) give what
    `camera.step_frame_motions` and `camera.integrate` give stream by stream, for one action per step or one
    per frame, and for turns past pi (where Slerp takes the short way round)."""
    rng = np.random.default_rng(3)
    for turn in (0.05, 2.5):
        step = np.concatenate([rng.normal(0, 3, (16, 3)), rng.normal(0, turn, (16, 3))], -1)
        per_frame = np.concatenate([rng.normal(0, 3, (16, 4, 3)), rng.normal(0, turn, (16, 4, 3))], -1)
        for a in (step, per_frame):
            np.testing.assert_allclose(frame_motions(a, 4), np.stack([step_frame_motions(x, 4) for x in a]), atol=1e-12)
            np.testing.assert_allclose(step_poses(a), np.stack([integrate(np.eye(4), x) for x in a]), atol=1e-12)
