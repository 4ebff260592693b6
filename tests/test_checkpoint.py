"""Checkpoints: exact round trip, and clear errors for missing, corrupt, truncated or mismatched files."""

import dataclasses

import pytest
import torch

from helpers import tiny_dit
from worldmodel.checkpoint import (
    CheckpointError,
    load_meta,
    load_modules,
    load_world_model,
    save_checkpoint,
    save_world_model,
)
from worldmodel.config import CameraStats, config_to_dict
from worldmodel.dit import WorldDiT


def model(**over) -> WorldDiT:
    """The seeded tiny model every test here saves and loads."""
    return tiny_dit(0.05, **over).eval()


def run(m: WorldDiT) -> torch.Tensor:
    g = torch.Generator().manual_seed(3)
    x = torch.randn(1, 3, 16, 4, 4, generator=g)
    with torch.no_grad():
        return m(x, x.flip(1), torch.randn(1, 3, 24, 4, 4, generator=g), torch.tensor([0.3]))


def test_save_load_reproduces_outputs_exactly(tmp_path):
    m = model(window=5)
    stats = CameraStats(mean=[0.1] * 6, std=[2.0] * 6)
    save_world_model(tmp_path / "w.safetensors", m, m.cfg, stats, extra_meta={"note": "hi"})
    m2, cfg, stats2, _, meta = load_world_model(tmp_path / "w.safetensors")
    assert cfg == m.cfg and stats2 == stats and meta["note"] == "hi"
    assert torch.equal(run(m2), run(m))


def test_missing_file_is_named(tmp_path):
    with pytest.raises(CheckpointError, match="nope.safetensors does not exist"):
        load_world_model(tmp_path / "nope.safetensors")


def test_truncated_file_is_named(tmp_path):
    path = tmp_path / "w.safetensors"
    save_world_model(path, model(), model().cfg)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="w.safetensors is corrupt or truncated"):
        load_world_model(path)


def test_garbage_file_is_named(tmp_path):
    path = tmp_path / "junk.safetensors"
    path.write_bytes(b"\x00" * 7 + b"not a checkpoint" * 10)
    with pytest.raises(CheckpointError, match="junk.safetensors"):
        load_world_model(path)


def test_mismatched_weights_are_named(tmp_path):
    path = tmp_path / "w.safetensors"
    m = model()
    tensors = {f"dit.{k}": v for k, v in m.state_dict().items()}
    tensors["dit.latent_proj.weight"] = torch.zeros(3, 3)
    del tensors["dit.final.linear.bias"]
    from worldmodel.config import config_to_dict

    save_checkpoint(path, tensors, {"dit_config": config_to_dict(m.cfg)})
    with pytest.raises(CheckpointError, match="missing keys.*final.linear.bias.*shape mismatch.*latent_proj"):
        load_world_model(path)


def test_allow_missing_leaves_only_the_named_parts_fresh(tmp_path):
    """A stage init may lack the parts it names (a discriminator's logit head); any other gap is still refused."""
    path = tmp_path / "w.safetensors"
    m = model()
    save_world_model(path, m, m.cfg)
    build = lambda: WorldDiT(dataclasses.replace(m.cfg, logit_head=True))  # noqa: E731
    disc = load_modules(path, {"dit": build}, allow_missing=("logit_head.",))[0]["dit"]
    assert all(torch.equal(disc.state_dict()[k], v) for k, v in m.state_dict().items())
    with pytest.raises(CheckpointError, match=r"w.safetensors does not match the model: missing keys \['logit_head"):
        load_modules(path, {"dit": build})


def test_unknown_config_key_is_named(tmp_path):
    path = tmp_path / "w.safetensors"
    save_checkpoint(path, {}, {"dit_config": {"dim": 64, "bogus": 1}})
    with pytest.raises(CheckpointError, match="bogus"):
        load_world_model(path)


def test_retired_config_keys_load_silently_at_their_old_default_and_name_the_retirement_otherwise(tmp_path):
    """A file written before 2026-12-02 stores warp_mode and warp_residual: at the behaviour the model
    kept it loads unchanged; a file trained with warp_residual=True cannot run without it and must say so."""
    m = model()
    tensors = {f"dit.{k}": v for k, v in m.state_dict().items()}
    old = {**config_to_dict(m.cfg), "checkpoint_activations": True, "warp_mode": "bilinear", "warp_residual": False}
    save_checkpoint(tmp_path / "old.safetensors", tensors, {"dit_config": old})
    m2, cfg = load_world_model(tmp_path / "old.safetensors")[:2]
    assert cfg == m.cfg and torch.equal(run(m2), run(m))
    save_checkpoint(tmp_path / "resid.safetensors", tensors, {"dit_config": {**old, "warp_residual": True}})
    with pytest.raises(CheckpointError, match=r"resid\.safetensors.*warp_residual=True, an option retired"):
        load_world_model(tmp_path / "resid.safetensors")


def test_interrupted_save_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "w.safetensors"
    m = model()
    save_world_model(path, m, m.cfg)
    before = path.read_bytes()

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr("worldmodel.checkpoint.save_file", boom)
    with pytest.raises(KeyboardInterrupt):
        save_world_model(path, m, m.cfg)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["w.safetensors"]  # no temp file left behind


def test_camera_normalisation_reference_round_trips_and_old_files_mean_raw_rays(tmp_path):
    """A world trained on rest-referenced camera maps must be driven with them after loading; files
    written before the field existed hold mean/std only and were trained on raw ray directions."""
    m = model()
    save_world_model(tmp_path / "new.safetensors", m, m.cfg, CameraStats(reference="rest"))
    assert load_world_model(tmp_path / "new.safetensors")[2].reference == "rest"
    tensors = {f"dit.{k}": v for k, v in m.state_dict().items()}
    save_checkpoint(tmp_path / "old.safetensors", tensors,
                    {"dit_config": config_to_dict(m.cfg), "camera_stats": {"mean": [0.0] * 6, "std": [1.0] * 6}})
    assert load_world_model(tmp_path / "old.safetensors")[2].reference == "none"


def test_meta_alone_reads_without_the_tensors_and_names_bad_files(tmp_path):
    m = model()
    save_world_model(tmp_path / "w.safetensors", m, m.cfg, CameraStats(), extra_meta={"stage": "distill"})
    assert load_meta(tmp_path / "w.safetensors")["stage"] == "distill"
    with pytest.raises(CheckpointError, match="does not exist"):
        load_meta(tmp_path / "missing.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="corrupt"):
        load_meta(tmp_path / "junk.safetensors")
