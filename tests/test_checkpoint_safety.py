"""Issue 20, "nothing lost, nothing run": loading never runs code from a file, a file is checked
before it costs memory, bad metadata and weights are caught at load, and saves leave no debris."""

import json
import os
import pickle
import signal
import stat
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from worldmodel.checkpoint import (
    CheckpointError,
    load_checkpoint,
    load_world_model,
    save_checkpoint,
    save_world_model,
)
from worldmodel.config import config_to_dict, model_config
from worldmodel.dit import WorldDiT
from worldmodel.parallel.dist_checkpoint import load_full_model, load_sharded, save_sharded
from worldmodel.vae import CausalVAE, vae_config
from worldmodel.world import BUNDLED, World, WorldMeta

HW = (32, 48)
pytestmark = pytest.mark.filterwarnings("ignore:torch.distributed is disabled")  # DCP in one process


def small_dit() -> WorldDiT:
    torch.manual_seed(0)
    return WorldDiT(model_config("tiny", dim=32, depth=1, heads=2))


@pytest.fixture(scope="module")
def world_file(tmp_path_factory):
    """A small random-weight world file with start frames."""
    path = tmp_path_factory.mktemp("world") / "world.safetensors"
    torch.manual_seed(0)
    starts = np.random.default_rng(0).integers(0, 256, (2, *HW, 3), dtype=np.uint8)
    meta = WorldMeta(HW, [24.0, 24.0, 23.5, 15.5])
    World(small_dit(), CausalVAE(vae_config("tiny")), meta, start_frames=starts).save(path)
    return path


def rewrite(src, dst, meta=None, tensors=None):
    """Copy a checkpoint with some metadata keys and tensors replaced (digests stay consistent)."""
    t, m = load_checkpoint(src)
    t.update(tensors or {})
    m.update(meta or {})
    save_checkpoint(dst, t, m)
    return dst


# ----------------------------------------------------------------------------- 1. DCP never runs code


@pytest.fixture()
def dcp_folder(tmp_path):
    """A one-process distributed checkpoint of a small model and its AdamW state."""
    m = small_dit()
    opt = torch.optim.AdamW(m.parameters(), lr=1e-3)
    save_sharded(tmp_path / "ckpt", {"generator": m}, {"generator": opt}, step=3)
    return tmp_path / "ckpt"


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_crafted_dcp_metadata_is_refused_without_running_it(dcp_folder, tmp_path):
    marker = tmp_path / "pwned"
    (dcp_folder / ".metadata").write_bytes(pickle.dumps(_Payload(marker)))
    for load in (lambda: load_sharded(dcp_folder, {"generator": small_dit()}),
                 lambda: load_full_model(dcp_folder, "generator")):
        with pytest.raises(CheckpointError, match=r"\.metadata refers to (posix|os)\.system"):
            load()
        assert not marker.exists(), "unpickling the crafted .metadata ran its payload"


def test_crafted_optimizer_value_in_a_shard_is_refused_without_running_it(tmp_path):
    """Non-tensor values (optimizer hyperparameters) are torch.save blobs inside the shards."""
    marker = tmp_path / "pwned"
    m = small_dit()
    opt = torch.optim.AdamW(m.parameters(), lr=1e-3)
    opt.param_groups[0]["note"] = _Payload(marker)
    save_sharded(tmp_path / "ckpt", {"generator": m}, {"generator": opt}, step=1)
    opt.param_groups[0]["note"] = "placeholder"
    with pytest.raises(CheckpointError, match="param_groups.0.note"):
        load_sharded(tmp_path / "ckpt", {"generator": m}, {"generator": opt})
    assert not marker.exists()


def test_truncated_or_garbled_shard_is_a_checkpoint_error_naming_it(dcp_folder):
    shard = next(dcp_folder.glob("*.distcp"))
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=rf"{shard.name} is truncated"):
        load_sharded(dcp_folder, {"generator": small_dit()})
    shard.write_bytes(bytes(len(data)))  # right size, nothing readable inside
    with pytest.raises(CheckpointError, match=rf"{dcp_folder.name} could not be read"):
        load_sharded(dcp_folder, {"generator": small_dit()})


# ----------------------------------------------------------------------------- 6. shapes before memory


def test_huge_declared_model_is_rejected_before_it_is_allocated(world_file, tmp_path, monkeypatch):
    """A small file whose dit_config declares depth 24, dim 1024 (about 2 GiB) is refused from its header."""
    _, meta = load_checkpoint(world_file)
    huge = {**meta["dit_config"], "depth": 24, "dim": 1024, "heads": 16}
    bad = rewrite(world_file, tmp_path / "huge.safetensors", {"dit_config": huge})
    real = WorldDiT

    def only_on_meta(cfg):
        assert torch.get_default_device().type == "meta", "built a real model before checking the file's shapes"
        return real(cfg)

    monkeypatch.setattr("worldmodel.world.WorldDiT", only_on_meta)
    monkeypatch.setattr("worldmodel.dit.WorldDiT", only_on_meta)
    with pytest.raises(CheckpointError, match="huge.safetensors does not match the model.*shape mismatch"):
        World.load(bad)
    with pytest.raises(CheckpointError, match="huge.safetensors does not match the model"):
        load_world_model(bad)


# ----------------------------------------------------------------------------- 9. metadata and weights


@pytest.mark.parametrize("key, value, message", [
    ("image_hw", "32x48", r"image_hw is str '32x48', expected 2 integers"),
    ("intrinsics", [24.0, "24", 23.5, 15.5], r"intrinsics .* expected 4 finite numbers"),
    ("action_low", 1.0, r"action_low is float 1.0, expected 6 finite numbers"),
    ("card", ["a"], r"card is list, expected a dict"),
    ("vae_config", {"latent_channels": "16"}, r"vae_config.latent_channels is str '16', expected int"),
    ("reprojection", {"keep": "all"}, r"reprojection.keep is str 'all', expected float"),
    ("intrinsics", [0.0, 0.0, 23.5, 15.5], r"positive focal lengths"),
    ("intrinsics", [24.0, float("nan"), 23.5, 15.5], r"intrinsics .* expected 4 finite numbers"),
    ("image_hw", [48, 32], r"start_frames have shape \(2, 32, 48, 3\), expected \(S, 48, 32, 3\)"),
])
def test_bad_world_metadata_is_a_checkpoint_error_naming_the_key(world_file, tmp_path, key, value, message):
    bad = rewrite(world_file, tmp_path / "bad.safetensors", {key: value})
    with pytest.raises(CheckpointError, match=rf"bad.safetensors .*{message}"):
        World.load(bad)


def test_wrong_config_types_are_named(tmp_path):
    m = small_dit()
    cfg = {**config_to_dict(m.cfg), "depth": "1"}
    save_checkpoint(tmp_path / "w.safetensors", {f"dit.{k}": v for k, v in m.state_dict().items()}, {"dit_config": cfg})
    message = r"w.safetensors has an invalid dit_config: dit_config.depth is str '1', expected int"
    with pytest.raises(CheckpointError, match=message):
        load_world_model(tmp_path / "w.safetensors")


def test_nan_weights_are_named_at_load(world_file, tmp_path):
    t, _ = load_checkpoint(world_file)
    w = t["dit.final.linear.weight"].clone()
    w[0, 0] = float("nan")
    bad = rewrite(world_file, tmp_path / "nan.safetensors", tensors={"dit.final.linear.weight": w})
    with pytest.raises(CheckpointError, match=r"nan.safetensors: tensor 'dit.final.linear.weight' holds NaN or inf"):
        World.load(bad)


def test_directory_and_fifo_are_named_for_what_they_are(tmp_path):
    (tmp_path / "folder.safetensors").mkdir()
    with pytest.raises(CheckpointError, match="folder.safetensors is a directory, not a file"):
        World.load(tmp_path / "folder.safetensors")
    os.mkfifo(tmp_path / "pipe.safetensors")
    with pytest.raises(CheckpointError, match=r"pipe.safetensors is a FIFO \(named pipe\), not a file"):
        load_checkpoint(tmp_path / "pipe.safetensors")  # must not block opening the pipe


# ----------------------------------------------------------------------------- 10. hygiene and integrity


def test_saved_files_get_the_umask_mode(tmp_path):
    m = small_dit()
    old = os.umask(0o022)
    try:
        save_world_model(tmp_path / "a.safetensors", m, m.cfg)
        os.umask(0o027)
        save_world_model(tmp_path / "b.safetensors", m, m.cfg)
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.safetensors").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "b.safetensors").stat().st_mode) == 0o640


def test_temp_left_by_a_killed_save_is_removed_by_the_next_save(tmp_path):
    """SIGKILL skips every `finally`: the debris is cleaned by the next save in that folder."""
    path = tmp_path / "w.safetensors"
    script = textwrap.dedent(f"""
        import os, signal, torch
        import worldmodel.checkpoint as ck
        def die(tensors, filename, metadata=None):
            open(filename, "wb").write(b"half a checkpoint")
            os.kill(os.getpid(), signal.SIGKILL)
        ck.save_file = die
        ck.save_checkpoint({str(path)!r}, {{"x": torch.zeros(3)}}, {{}})
    """)
    proc = subprocess.run([sys.executable, "-c", script], env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == -signal.SIGKILL
    left = [p.name for p in tmp_path.iterdir()]
    assert len(left) == 1 and not path.exists()
    live = tmp_path / f".w.safetensors.tmp-{left[0].split('.tmp-')[1].rsplit('-', 2)[0]}-{os.getpid()}-0123abcd"
    live.write_bytes(b"a save in progress in a live process")
    save_checkpoint(path, {"x": torch.ones(3)}, {})
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, "w.safetensors"])
    assert torch.equal(load_checkpoint(path)[0]["x"], torch.ones(3))


def test_flipped_bit_is_caught_and_files_without_digests_still_load(tmp_path):
    path = tmp_path / "w.safetensors"
    save_checkpoint(path, {"a": torch.arange(64, dtype=torch.float32), "b": torch.zeros(8)}, {"k": 1})
    with safe_open(str(path), "pt") as f:
        header_len = 8 + int.from_bytes(path.read_bytes()[:8], "little")
        assert f.get_slice("a").get_shape() == [64]
    data = bytearray(path.read_bytes())
    data[header_len + 5] ^= 0x10  # inside tensor data; the bytes are tensor "a" or "b"
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"w.safetensors is corrupt: tensor '[ab]' fails its SHA-256 check"):
        load_checkpoint(path)
    # Files from before digests load unverified.
    save_file({"a": torch.ones(2)}, str(tmp_path / "old.safetensors"),
              metadata={"format": "worldmodel/1", "meta": json.dumps({"k": 2})})
    assert load_checkpoint(tmp_path / "old.safetensors")[1] == {"k": 2}
    if BUNDLED.exists():  # re-bundled on 2026-12-02, so it now carries digests and loads verified
        with safe_open(str(BUNDLED), "pt") as f:
            assert "sha256" in f.metadata()
        assert World.load().meta.image_hw == (96, 128)
