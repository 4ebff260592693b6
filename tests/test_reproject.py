"""The reprojection memory: a first step is the network's, a turn moves the anchor and lets the network
paint only what came into view, a step without a turn is the network's and re-anchors on it, the anchor
refreshes, and the setting travels through world files and the eval's command line."""

import math

import numpy as np
import pytest
import torch

from train.eval import parse_args
from worldmodel.camera import integrate
from worldmodel.checkpoint import CheckpointError
from worldmodel.config import CameraStats, model_config
from worldmodel.dit import WorldDiT
from worldmodel.generator import StreamingGenerator
from worldmodel.reproject import ReprojectionConfig, ReprojectionMemory
from worldmodel.vae import CausalVAE, vae_config
from worldmodel.world import World, WorldMeta

K, IMG, LATENT, C = [16.0, 16.0, 15.5, 15.5], (32, 32), (8, 8), 4


def memory(batch: int = 1, **cfg) -> ReprojectionMemory:
    return ReprojectionMemory(ReprojectionConfig(**cfg), batch, K, IMG, LATENT, C)


def latents(batch: int = 1, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, C, *LATENT, generator=torch.Generator().manual_seed(seed))


def anchored(mem: ReprojectionMemory, anchor: torch.Tensor) -> None:
    """Start the stream and let the network's first (still) step be `anchor`: a first step is always the
    network's, and it becomes the anchor."""
    mem.reset(latents(len(anchor), seed=99))
    assert torch.equal(mem.blend(anchor, np.stack([np.eye(4)] * len(anchor))), anchor)


def pose(tx: float = 0.0, tz: float = 0.0, yaw: float = 0.0) -> np.ndarray:
    return integrate(np.eye(4), np.array([tx, 0.0, tz, 0.0, yaw, 0.0]))[None]


def test_still_camera_keeps_the_anchor_whatever_the_network_says_with_min_turn_0():
    mem, anchor = memory(min_turn=0.0), latents()
    anchored(mem, anchor)
    for seed in range(3):
        z = mem.blend(latents(seed=10 + seed), pose())
        assert torch.allclose(z, anchor, atol=1e-5)


def test_a_turn_moves_the_picture_and_the_network_paints_only_what_came_into_view():
    mem, anchor, generated = memory(), latents(), latents(seed=1)
    anchored(mem, anchor)
    z = mem.blend(generated, pose(yaw=0.3))  # a right turn: new content enters on the right
    assert torch.equal(z[..., -1], generated[..., -1]), "the newly visible right column is the network's"
    assert not torch.allclose(z[..., :-2], generated[..., :-2]), "the rest comes from the anchor"
    assert not torch.allclose(z[..., :-2], anchor[..., :-2], atol=1e-3), "and it has moved"
    # Turning back resamples the anchor once from where it was: the picture returns exactly
    # (a memory that warped its last output each step would have blurred it).
    back = mem.blend(latents(seed=2), pose(yaw=-0.3))
    assert torch.allclose(back, anchor, atol=1e-5)


def test_the_first_step_is_the_networks_even_when_it_turns():
    """The first image's latent encodes one frame, a step's encodes frames_per_step: reprojected it decodes
    darker, so a stream's first step shows the network's latent and anchors the memory on it."""
    mem, drawn = memory(), latents(seed=1)
    mem.reset(latents())
    assert torch.equal(mem.blend(drawn, pose(yaw=0.3)), drawn)
    assert torch.equal(mem.anchor, drawn) and np.allclose(mem.pose, np.eye(4))
    back = mem.blend(latents(seed=2), pose(yaw=-0.3))
    assert not torch.allclose(back[..., 2:], latents(seed=2)[..., 2:]), "the next turn reprojects the network's first step"


def test_a_large_turn_refreshes_the_anchor():
    mem = memory(refresh_coverage=0.6)
    anchored(mem, latents())
    z = mem.blend(latents(seed=1), pose(yaw=0.8))  # about 46 degrees on a 90-degree view
    assert torch.equal(mem.anchor, z) and np.allclose(mem.pose, np.eye(4))
    small = memory(refresh_coverage=0.6)
    anchored(small, latents())
    small.blend(latents(seed=1), pose(yaw=0.05))
    assert not np.allclose(small.pose, np.eye(4)), "a small turn keeps the anchor"


def test_walking_keeps_the_networks_picture_and_keep_weights_the_anchor():
    """With min_turn 0 a walk is reprojected like a turn (rotation only: the anchor stays put); `keep`
    weights the anchor against the network where it covers the view."""
    anchor, generated = latents(), latents(seed=1)
    held = memory(min_turn=0.0)
    anchored(held, anchor)
    assert torch.allclose(held.blend(generated, pose(tz=500.0)), anchor, atol=1e-5)
    half = memory(min_turn=0.0, keep=0.5)
    anchored(half, anchor)
    assert torch.allclose(half.blend(generated, pose(tz=10.0)), 0.5 * anchor + 0.5 * generated, atol=1e-5)


def test_a_step_without_a_turn_is_the_networks_and_becomes_the_anchor():
    """Walking straight must not show a still picture: below min_turn the network's latent is shown
    as it is and re-anchors the memory, so the next turn moves the network's latest picture."""
    mem, generated = memory(min_turn=0.03), latents(seed=1)
    mem.reset(latents())
    z = mem.blend(generated, pose(tz=20.0, yaw=0.02))
    assert torch.equal(z, generated) and torch.equal(mem.anchor, generated)
    assert np.allclose(mem.pose, np.eye(4)), "the walk re-anchors"
    turned = mem.blend(latents(seed=2), pose(yaw=0.3))
    assert not torch.allclose(turned[..., :-2], latents(seed=2)[..., :-2]), "a turn is the memory's again"
    back = mem.blend(latents(seed=3), pose(yaw=-0.3))
    assert torch.allclose(back, generated, atol=1e-5), "and it turns the walked-to picture, not the old one"


def test_a_camera_that_does_not_move_shows_its_last_picture_again():
    """Idle must not drift: a step with no motion shows exactly the last picture (also after a turn, whose
    border the network painted), keeps the anchor, and the next real motion carries on from there;
    still_tolerance=0 hands idle steps back to the network."""
    mem, anchor = memory(), latents()
    anchored(mem, anchor)
    turned = mem.blend(latents(seed=1), pose(yaw=0.3))
    for seed in range(5):
        assert torch.equal(mem.blend(latents(seed=10 + seed), pose()), turned)
    assert torch.equal(mem.anchor, anchor), "standing still does not re-anchor"
    back = mem.blend(latents(seed=2), pose(yaw=-0.3))
    assert torch.allclose(back, anchor, atol=1e-5), "turning back after standing still returns the start"
    walked = mem.blend(latents(seed=3), pose(tz=1e-3))
    assert torch.equal(walked, latents(seed=3)), "the smallest walk is the network's again"
    off = memory(still_tolerance=0.0)
    anchored(off, anchor)
    off.blend(latents(seed=4), pose())
    assert torch.equal(off.blend(latents(seed=5), pose()), latents(seed=5))


def test_standing_still_from_the_start_holds_the_networks_first_step_not_the_first_image():
    """The first image's latent encodes one frame, a step's encodes frames_per_step: the first still step
    is the network's, and that picture is held from then on."""
    mem = memory()
    mem.reset(latents())
    first = mem.blend(latents(seed=1), pose())
    assert torch.equal(first, latents(seed=1))
    assert torch.equal(mem.blend(latents(seed=2), pose()), first)


def test_bicubic_resampling_keeps_more_detail_than_bilinear():
    """Half a latent cell of turn: bilinear averages neighbours and flattens a stripe pattern (two cells
    up, two down), which over a long run washed the memory's pictures out; bicubic keeps more of it."""
    stripes = torch.tensor([1.0, 1.0, -1.0, -1.0] * (LATENT[1] // 4)).expand(1, C, *LATENT).clone()
    half_cell = math.atan(0.5 * IMG[1] / LATENT[1] / K[0])
    contrast = {}
    for mode in ("bilinear", "bicubic"):
        mem = memory(warp_mode=mode, min_turn=0.0)
        anchored(mem, stripes)
        z = mem.blend(torch.zeros_like(stripes), pose(yaw=half_cell))
        contrast[mode] = z[..., 2:-2].abs().mean().item()  # inside, away from the new border
    assert contrast["bilinear"] < 0.6 and contrast["bicubic"] > contrast["bilinear"] + 0.15, contrast


@pytest.mark.parametrize("field, value", [("refresh_coverage", 1.5), ("mask_power", 0.0), ("keep", -0.1),
                                          ("min_turn", -0.1),
                                          ("warp_mode", "nearest")])
def test_bad_settings_name_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        ReprojectionConfig(**{field: value})


def test_bad_inputs_are_refused():
    mem = memory(batch=2)
    mem.reset(latents(2))
    with pytest.raises(ValueError, match="generated latents have shape"):
        mem.blend(latents(1), np.stack([np.eye(4)] * 2))
    with pytest.raises(ValueError, match="step poses have shape"):
        mem.blend(latents(2), np.eye(4))
    bad = np.stack([np.eye(4)] * 2)
    bad[0, 0, 3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        mem.blend(latents(2), bad)


def small_model() -> WorldDiT:
    torch.manual_seed(0)
    return WorldDiT(model_config("tiny", dim=64, depth=2, heads=4, window=3))


def test_generator_with_memory_keeps_a_still_picture_and_refuses_bare_camera_maps():
    first = torch.randn(1, 16, 4, 4, generator=torch.Generator().manual_seed(5))
    hold = ReprojectionConfig(min_turn=0.0)
    gen = StreamingGenerator(small_model(), 1, (4, 4), K, IMG, CameraStats(), reprojection=hold)
    plain = StreamingGenerator(small_model(), 1, (4, 4), K, IMG, CameraStats())
    gen.reset(first)
    plain.reset(first)
    still = np.zeros((1, 6))
    drawn = gen.step(still)  # the first step is the network's
    for _ in range(3):
        z = gen.step(still)
        assert torch.equal(z, drawn) and torch.equal(gen.recycled, z)
    assert not torch.allclose(plain.step(still), first, atol=1e-2), "without the memory the network decides"
    with pytest.raises(RuntimeError, match="step\\(actions\\)"):
        gen.step_camera(gen.camera_maps(still))


def test_a_held_stream_shows_its_last_frame_and_its_decoder_skips_the_step():
    """Standing still in a world: the frames repeat the last one exactly (re-decoding a held latent
    drifts), the held stream's decoder cache is left as it was, and a moving stream beside it is drawn."""
    world = World(small_model(), CausalVAE(vae_config("tiny")), WorldMeta((32, 32), K, reprojection=ReprojectionConfig()))
    streams = world.streams(2, seeds=[0, 1])
    streams.reset(np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8))
    turn = np.array([[0, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0.1, 0]], np.float32)
    first = streams.step(turn)  # stream 0's first still step is the network's own
    cache = streams.decoder.snapshot()
    for _ in range(3):
        frames = streams.step(turn)
        assert streams.gen.held.tolist() == [True, False]
        assert (frames[0] == first[0, -1]).all(), "the held stream repeats its last frame"
        assert not (frames[1] == first[1]).all(), "the turning stream is drawn"
    for before, now in zip(cache.buffers, streams.decoder.snapshot().buffers):
        assert torch.equal(before[0], now[0]), "the held stream's decoder skipped the steps"
        assert not torch.equal(before[1], now[1])


def test_world_file_keeps_the_setting_and_names_a_bad_one(tmp_path):
    world = World(small_model(), CausalVAE(vae_config("tiny")), WorldMeta((32, 32), K))
    world.meta.reprojection = ReprojectionConfig(keep=0.5, min_turn=0.02)
    path = tmp_path / "w.safetensors"
    world.save(path)
    assert World.load(path).meta.reprojection == ReprojectionConfig(keep=0.5, min_turn=0.02)
    world.meta.reprojection = None
    world.save(path)
    assert World.load(path).meta.reprojection is None
    from worldmodel.checkpoint import load_checkpoint, save_checkpoint
    tensors, meta = load_checkpoint(path)
    save_checkpoint(path, tensors, {**meta, "reprojection": {"keep": 2.0}})
    with pytest.raises(CheckpointError, match="reprojection"):
        World.load(path)
    # A retired key: dropped where it asks for what the memory still does (older bundled worlds store
    # travel_scale: null), refused with its reason otherwise.
    save_checkpoint(path, tensors, {**meta, "reprojection": {"keep": 0.5, "travel_scale": None}})
    assert World.load(path).meta.reprojection == ReprojectionConfig(keep=0.5)
    save_checkpoint(path, tensors, {**meta, "reprojection": {"travel_scale": 48.0}})
    with pytest.raises(CheckpointError, match="travel_scale=48.0, an option retired"):
        World.load(path)


def test_command_line_setting_parses_and_names_bad_keys():
    assert ReprojectionConfig.parse("off") is None
    assert ReprojectionConfig.parse("on") == ReprojectionConfig()
    assert ReprojectionConfig.parse("keep=0.5, min_turn=0.02") == ReprojectionConfig(keep=0.5, min_turn=0.02)
    assert ReprojectionConfig.parse("min_turn=0,warp_mode=bilinear") == ReprojectionConfig(min_turn=0.0,
                                                                                        warp_mode="bilinear")
    with pytest.raises(ValueError, match="warp_mode"):
        ReprojectionConfig.parse("warp_mode=3")
    with pytest.raises(ValueError, match="min_turn"):
        ReprojectionConfig.parse("trust=1")
    with pytest.raises(ValueError, match="not a number"):
        ReprojectionConfig.parse("keep=high")
    with pytest.raises(SystemExit):
        parse_args(["--reprojection", "keep=2"])
    assert parse_args(["--reprojection", "on"]).reprojection == "on"


def test_a_float32_turn_of_exactly_min_turn_reprojects():
    """Issue 23: an action stored in float32 (0.03 rad -> 0.0299999993) is a turn of min_turn, not a walk:
    the memory must reproject it (the comparison is inclusive, up to float rounding), not hand it to the network."""
    yaw = float(np.float32(0.03))
    assert yaw < 0.03, "the float32 value really is below the threshold in float64"
    mem, anchor, generated = memory(min_turn=0.03), latents(), latents(seed=1)
    anchored(mem, anchor)
    z = mem.blend(generated, pose(yaw=yaw))
    assert not torch.allclose(z, generated), "a turn of min_turn must blend in the reprojected anchor"
    walk = memory(min_turn=0.03)
    anchored(walk, anchor)
    assert torch.equal(walk.blend(generated, pose(yaw=0.029)), generated), "a smaller turn is still the network's"


def test_streams_take_their_own_memory_setting_and_leave_the_world_untouched():
    """`world.streams(reprojection=...)` sets the memory for those streams alone: the eval compares the world
    with and without its memory without swapping the shared `world.meta` (which was not exception-safe)."""
    shipped = ReprojectionConfig(min_turn=0.0)
    world = World(small_model(), CausalVAE(vae_config("tiny")), WorldMeta((32, 32), K, reprojection=shipped))
    assert world.streams(1).gen.memory is not None
    off = world.streams(1, reprojection=None)
    assert off.reprojection is None and off.gen.memory is None
    other = ReprojectionConfig(keep=0.5)
    assert world.streams(1, reprojection=other).gen.memory.cfg == other
    assert world.meta.reprojection == shipped
    with pytest.raises(ValueError, match="ReprojectionConfig.parse"):
        world.streams(1, reprojection="on")


def test_one_command_line_definition_lists_every_field_with_its_docstring():
    """The viewer, train.eval and train.bundle share `add_reprojection_argument`: its help names every
    ReprojectionConfig field with the first sentence of its docstring and its default, and a bad setting
    exits naming the field."""
    import argparse
    import dataclasses

    from worldmodel.reproject import add_reprojection_argument

    p = argparse.ArgumentParser()
    add_reprojection_argument(p, "Default: as the world file says.")
    text = " ".join(p.format_help().split())
    docs = ReprojectionConfig.field_help()
    for f in dataclasses.fields(ReprojectionConfig):
        assert f"{f.name} ({f.default}): {docs[f.name]}" in text, f.name
    assert docs["mask_power"] == "Coverage is raised to this power: > 1 widens the border band the network paints"
    assert p.parse_args(["--reprojection", "keep=0.5"]).reprojection == "keep=0.5"
    assert p.parse_args([]).reprojection is None
    with pytest.raises(SystemExit):
        p.parse_args(["--reprojection", "keep=2"])
