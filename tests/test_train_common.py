"""Shared training infrastructure: exact resume, atomic checkpoints with a kept previous, metrics, NaN guard."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
from torch import nn

from train.common import (
    MetricsLogger,
    NonFiniteLossError,
    check_finite,
    flatten_state,
    load_training_state,
    previous_path,
    progress,
    save_training_state,
    seed_everything,
    unflatten_state,
)
from worldmodel.checkpoint import CheckpointError


def make(seed: int = 0):
    """A small model with dropout (consumes the global RNG) and two optimizers of different kinds."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(6, 16), nn.Dropout(0.3), nn.ReLU(), nn.Linear(16, 2))
    opts = {"adamw": torch.optim.AdamW(model[0].parameters(), lr=1e-2, betas=(0.8, 0.95)),
            "rms": torch.optim.RMSprop(model[3].parameters(), lr=1e-2, alpha=0.9, momentum=0.5)}
    return model, opts


def run_steps(model, opts, gen, n):
    for _ in range(n):
        x = torch.randn(8, 6, generator=gen)
        noise = torch.from_numpy(np.random.randn(8, 2).astype(np.float32)) * random.random()
        loss = (model(x) - noise).pow(2).mean()
        for o in opts.values():
            o.zero_grad()
        loss.backward()
        for o in opts.values():
            o.step()


def test_resume_is_bitwise_exact(tmp_path):
    """Guards exact resume: N steps == N/2 + save + fresh objects + load + N/2 (weights, optim, every RNG)."""
    seed_everything(3)
    model, opts = make()
    gen = torch.Generator().manual_seed(5)
    run_steps(model, opts, gen, 10)
    want = {k: v.clone() for k, v in model.state_dict().items()}

    seed_everything(3)
    model, opts = make()
    gen = torch.Generator().manual_seed(5)
    run_steps(model, opts, gen, 5)
    save_training_state(tmp_path / "state.safetensors", 5, {"net": model}, opts, {"data": gen}, extra={"note": "half"})
    seed_everything(99)  # scramble every RNG: the load must restore them
    model, opts = make(seed=1)
    gen = torch.Generator().manual_seed(0)
    step, extra = load_training_state(tmp_path / "state.safetensors", {"net": model}, opts, {"data": gen})
    assert step == 5 and extra == {"note": "half"}
    run_steps(model, opts, gen, 5)
    got = model.state_dict()
    assert all(torch.equal(want[k], got[k]) for k in want)


def test_optimizer_state_roundtrips_through_tensors_and_json():
    """int param ids, tuples (betas), None, bools and inf survive the flatten -> JSON -> unflatten trip."""
    model, opts = make()
    run_steps(model, opts, torch.Generator().manual_seed(0), 2)
    sd = opts["adamw"].state_dict()
    sd["param_groups"][0]["weird"] = float("inf")
    tensors: dict[str, torch.Tensor] = {}
    skel = json.loads(json.dumps(flatten_state(sd, "o", tensors)))
    back = unflatten_state(skel, tensors)
    assert set(back["state"]) == set(sd["state"]) and all(isinstance(k, int) for k in back["state"])
    assert back["param_groups"][0]["betas"] == (0.8, 0.95)
    assert back["param_groups"][0]["weird"] == float("inf")
    for k, st in sd["state"].items():
        for name, v in st.items():
            assert torch.equal(back["state"][k][name], v)


def test_file_is_safetensors_not_pickle(tmp_path):
    from safetensors import safe_open

    model, opts = make()
    run_steps(model, opts, torch.Generator().manual_seed(0), 1)
    p = tmp_path / "state.safetensors"
    save_training_state(p, 1, {"net": model}, opts)
    with safe_open(str(p), "pt") as f:
        keys = list(f.keys())
        meta = json.loads(f.metadata()["meta"])
    assert any(k.startswith("model.net.") for k in keys) and any(k.startswith("optim.adamw.") for k in keys)
    assert meta["step"] == 1
    assert not p.read_bytes().startswith(b"\x80")  # not a pickle stream


def test_previous_state_is_kept_and_used_when_newest_is_corrupt(tmp_path, capsys):
    """Guards 'keep the previous good checkpoint': a truncated newest file falls back to the previous one."""
    model, opts = make()
    p = tmp_path / "state.safetensors"
    save_training_state(p, 1, {"net": model}, opts)
    save_training_state(p, 2, {"net": model}, opts)
    assert previous_path(p).exists()
    p.write_bytes(p.read_bytes()[:100])  # a crash mid-write of something else, disk full...
    step, _ = load_training_state(p, {"net": model}, opts)
    assert step == 1
    assert "resuming from the previous state" in capsys.readouterr().out
    previous_path(p).write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="state.prev.safetensors"):
        load_training_state(p, {"net": model}, opts)


def test_interrupted_save_leaves_the_good_file(tmp_path, monkeypatch):
    """An exception during the write must not damage the existing state."""
    import worldmodel.checkpoint as ck

    model, opts = make()
    p = tmp_path / "state.safetensors"
    save_training_state(p, 7, {"net": model}, opts)

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(ck, "save_file", boom)
    with pytest.raises(OSError):
        save_training_state(p, 8, {"net": model}, opts)
    monkeypatch.undo()
    assert load_training_state(p, {"net": model}, opts)[0] == 7
    assert not list(tmp_path.glob("*.tmp"))


def test_missing_model_or_shape_mismatch_is_a_clear_error(tmp_path):
    model, opts = make()
    p = tmp_path / "state.safetensors"
    save_training_state(p, 1, {"net": model}, opts)
    with pytest.raises(CheckpointError, match=r"no model\(s\) \['other'\]"):
        load_training_state(p, {"other": model})
    with pytest.raises(CheckpointError, match="shape mismatch"):
        load_training_state(p, {"net": nn.Sequential(nn.Linear(6, 3), nn.Dropout(), nn.ReLU(), nn.Linear(3, 2))})


def test_check_finite_names_step_and_loss():
    check_finite(3, {"loss": torch.tensor(1.0), "kl": 0.5})
    with pytest.raises(NonFiniteLossError, match=r"step 12: \{'kl': inf\}.*ckpt.safetensors is untouched"):
        check_finite(12, {"loss": torch.tensor(1.0), "kl": torch.tensor(float("inf"))}, "ckpt.safetensors")
    with pytest.raises(NonFiniteLossError, match="nan"):
        check_finite(0, {"loss": float("nan")})


def test_metrics_logger_jsonl_tensorboard_and_resume(tmp_path):
    with MetricsLogger(tmp_path) as log:
        for s in range(1, 6):
            log.log(s, {"loss": 1.0 / s})
    rows = [json.loads(r) for r in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5] and rows[1]["loss"] == 0.5
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))
    # Resuming from step 3 drops rows 4 and 5, which will be logged again.
    with MetricsLogger(tmp_path, resume_step=3) as log:
        log.log(4, {"loss": 0.1})
    assert [json.loads(r)["step"] for r in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3, 4]


def test_metrics_resume_drops_a_torn_last_row_and_names_the_file_for_other_damage(tmp_path):
    """A crash mid-write leaves half a row at the end: resuming drops it. A bad row elsewhere is not a
    crash's doing: the error names the file and the line instead of a bare JSONDecodeError."""
    with MetricsLogger(tmp_path) as log:
        for s in range(1, 4):
            log.log(s, {"loss": 1.0 / s})
    path = tmp_path / "metrics.jsonl"
    path.write_text(path.read_text() + '{"step": 4, "lo')
    with MetricsLogger(tmp_path, resume_step=3) as log:
        log.log(4, {"loss": 0.25})
    assert [json.loads(r)["step"] for r in path.read_text().splitlines()] == [1, 2, 3, 4]
    rows = path.read_text().splitlines()
    path.write_text("\n".join([rows[0], "garbage", *rows[1:]]) + "\n")
    with pytest.raises(ValueError, match=r"metrics.jsonl line 2 is not a JSON row"):
        MetricsLogger(tmp_path, resume_step=3)


def test_seed_everything_reproduces_all_rngs():
    seed_everything(11)
    a = (random.random(), np.random.rand(), torch.rand(1).item())
    seed_everything(11)
    assert a == (random.random(), np.random.rand(), torch.rand(1).item())


def test_progress_bar():
    bar = progress(10, initial=4, desc="x")
    bar.update(1)
    bar.set_postfix(loss="0.1")
    assert bar.n == 5 and bar.total == 10
    bar.close()
