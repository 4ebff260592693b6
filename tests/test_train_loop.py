"""The one training loop (train/stages/loop.py) that the VAE phases and the stages share: it loses nothing.

Signals stop a run at a step boundary and the resumed run is exact; an exception inside a step
saves nothing; a used or busy run_dir is refused; invalid settings and changed settings on
resume are refused naming the key; `--help` describes the keys.
"""

from __future__ import annotations

import dataclasses
import json
import signal
import subprocess
import sys

import pytest
import torch

from test_stages import make_tiny_root, stage_config, weights
from train.common import ConfigError, Interrupted, load_training_state
from train.stages import build_stage
from train.stages.config import CurriculumPhase, TrainConfig
from train.vae import TrainVAEConfig, VAEPhase

VAE_SMALL = dict(encoder_channels=[8, 8, 16, 16], decoder_channels=[8, 16, 16, 16],
                 light_decoder_channels=[8, 8, 8, 16], temporal_kernel=3)


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory):
    return make_tiny_root(tmp_path_factory.mktemp("data"))


def vae_config(root, tmp, **kw) -> TrainVAEConfig:
    base = dict(data_root=str(root), height=32, width=48, crop_h=16, crop_w=24, clip_frames=5, eval_frames=5,
                batch_size=2, steps=4, warmup=2, ckpt_every=2, log_every=1, eval_clips=1, stats_clips=2,
                run_dir=str(tmp / "run"), out=str(tmp / "vae.safetensors"), threads=1, progress_bar=False,
                vae=dict(VAE_SMALL))
    return TrainVAEConfig(**{**base, **kw})


def loop(kind: str, root, tmp, **kw):
    """A VAE recon phase or a diffusion stage of 4 steps (states every 2) in `tmp`, loop settings from kw."""
    if kind == "vae":
        return VAEPhase(vae_config(root, tmp, **kw))
    return build_stage(dataclasses.replace(stage_config(root, tmp), sample_frames=0, **kw))


def trained(run) -> dict[str, torch.Tensor]:
    return weights(run) if hasattr(run, "stream") else {k: v.clone() for k, v in run.vae.state_dict().items()}


def fail_inside_step(run, at: int, action) -> None:
    """Call `action()` inside step `at`, after its optimizer update: the middle of a step."""
    real = run.train_step

    def step(batch, i):
        out = real(batch, i)
        if i == at:
            action()
        return out

    run.train_step = step


KINDS = ["stage", "vae"]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
@pytest.mark.parametrize("kind", KINDS)
def test_a_signal_mid_step_stops_at_the_boundary_and_resume_is_exact(tiny_root, tmp_path, kind, sig):
    """A signal in the middle of the second step lets that step finish, saves the state after it and
    raises Interrupted; resuming gives the uninterrupted run's weights, bit for bit."""
    full = loop(kind, tiny_root, tmp_path / "full")
    full.run()
    run = loop(kind, tiny_root, tmp_path / "cut", ckpt_every=100)  # only the stop saves a state
    fail_inside_step(run, 1, lambda: signal.raise_signal(sig))
    handler = signal.getsignal(sig)
    with pytest.raises(Interrupted) as stopped:
        run.run()
    assert stopped.value.signum == sig and "resume=true" in str(stopped.value)
    assert signal.getsignal(sig) is handler  # the loop puts the handlers back
    assert load_training_state(run.state_path, run.models, restore_rng=False)[0] == 2
    resumed = loop(kind, tiny_root, tmp_path / "cut", resume=True)
    assert resumed.run()["steps"] == 4
    a, b = trained(full), trained(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])][:5]


@pytest.mark.parametrize("kind", KINDS)
def test_an_exception_mid_step_leaves_the_last_boundary_state(tiny_root, tmp_path, kind):
    """An error inside step 2 (after its update) saves nothing: the step-2 state stays, and resuming from it
    gives the uninterrupted run's weights."""
    full = loop(kind, tiny_root, tmp_path / "full")
    full.run()
    run = loop(kind, tiny_root, tmp_path / "cut")

    def boom():
        raise RuntimeError("out of memory")

    fail_inside_step(run, 2, boom)
    with pytest.raises(RuntimeError, match="out of memory"):
        run.run()
    assert load_training_state(run.state_path, run.models, restore_rng=False)[0] == 2
    resumed = loop(kind, tiny_root, tmp_path / "cut", resume=True)
    resumed.run()
    a, b = trained(full), trained(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("kind", KINDS)
def test_a_second_run_into_a_used_run_dir_is_refused(tiny_root, tmp_path, kind):
    """Without resume=true a run_dir holding a run is refused, and its files stay as they were."""
    first = loop(kind, tiny_root, tmp_path, stop_after=2)
    first.run()
    files = {p: p.read_bytes() for p in first.run_dir.iterdir() if p.suffix in (".safetensors", ".jsonl")}
    assert any(p.name == "metrics.jsonl" for p in files)
    with pytest.raises(ConfigError, match="already holds a run.*resume=true.*new run_dir"):
        loop(kind, tiny_root, tmp_path).run()
    assert files == {p: p.read_bytes() for p in files}


@pytest.mark.parametrize("kind", KINDS)
def test_a_concurrent_run_in_the_same_run_dir_is_refused(tiny_root, tmp_path, kind):
    """While a run trains, a second one into its run_dir (even resuming) is refused; once it ends, the lock is gone."""
    first = loop(kind, tiny_root, tmp_path)
    refused = []

    def second():
        with pytest.raises(ConfigError, match="another training run") as e:
            loop(kind, tiny_root, tmp_path, resume=True).run()
        refused.append(str(e.value))

    fail_inside_step(first, 0, second)
    first.run()
    assert refused and str(tmp_path / "run") in refused[0]
    assert loop(kind, tiny_root, tmp_path, resume=True).run()["steps"] == 4  # the lock went with the run


@pytest.mark.parametrize("kind", KINDS)
def test_resume_with_changed_settings_is_refused_unless_allowed(tiny_root, tmp_path, kind):
    """A resume that changes the seed or the learning rate is refused naming both; resume_changes lets it through,
    and settings about pace and output (steps, stop_after, threads) may change freely."""
    loop(kind, tiny_root, tmp_path, stop_after=2).run()
    if kind == "vae":
        changed = dict(seed=1, lr=1e-3)
    else:
        changed = dict(seed=1, stage=dataclasses.replace(stage_config(tiny_root, tmp_path).stage, lr=5e-4))
    lr_key = "lr" if kind == "vae" else "stage.lr"
    with pytest.raises(ConfigError, match=rf"seed: 0 -> 1.*{lr_key}.*resume_changes=\[seed,{lr_key}\]"):
        loop(kind, tiny_root, tmp_path, resume=True, **changed).run()
    run = loop(kind, tiny_root, tmp_path, resume=True, resume_changes=["seed", lr_key], threads=2, **changed)
    assert run.run()["steps"] == 4
    torch.set_num_threads(1)


def test_a_run_trained_with_a_retired_option_is_refused_on_resume(tiny_root, tmp_path, monkeypatch):
    """A state written before 2026-12-02 stores its retired keys; the resume comparison skips keys the
    schema no longer has, so without this check a run trained with one would silently go on without it."""
    import train.stages.loop as loop_module

    loop("stage", tiny_root, tmp_path, stop_after=2).run()
    read = loop_module.read_training_state

    def old_state(path, adversarial):
        tensors, meta = read(path)
        meta["extra"]["config"]["stage"]["reset_output"] = False
        meta["extra"]["config"]["stage"]["adversarial"] = {**meta["extra"]["config"]["stage"]["adversarial"],
                                                          "regression_weight": adversarial}
        return tensors, meta

    monkeypatch.setattr(loop_module, "read_training_state", lambda path: old_state(path, 0.0))
    assert loop("stage", tiny_root, tmp_path, resume=True).run()["steps"] == 4  # the old defaults: resumes
    monkeypatch.setattr(loop_module, "read_training_state", lambda path: old_state(path, 1.0))
    with pytest.raises(ConfigError, match=r"options retired on 2026-12-02 \(stage.adversarial.regression_weight=1.0"):
        loop("stage", tiny_root, tmp_path, resume=True).run()


@pytest.mark.parametrize("kw, key", [
    (dict(stage=dict(steps=-5)), "stage.steps"), (dict(ckpt_every=0), "ckpt_every"), (dict(log_every=0), "log_every"),
    (dict(data=dict(curriculum=[CurriculumPhase(batch_size=0)])), r"data.curriculum\[0\].batch_size"),
    (dict(device="tpu"), "device"), (dict(threads=0), "threads"), (dict(stop_after=-1), "stop_after"),
])
def test_invalid_stage_settings_are_refused_naming_the_key(kw, key):
    base = TrainConfig()
    kw = {k: dataclasses.replace(getattr(base, k), **v) if isinstance(v, dict) else v for k, v in kw.items()}
    with pytest.raises(ValueError, match=rf"^{key}="):
        dataclasses.replace(base, **kw)


@pytest.mark.parametrize("key, value", [("steps", -5), ("ckpt_every", 0), ("log_every", 0), ("batch_size", 0),
                                        ("threads", 0), ("phase", "ligth")])
def test_invalid_vae_settings_are_refused_naming_the_key(key, value):
    with pytest.raises(ValueError, match=rf"^{key}="):
        TrainVAEConfig(**{key: value})


@pytest.mark.parametrize("kind", KINDS)
def test_threads_null_uses_the_shared_rule(tiny_root, tmp_path, kind, monkeypatch):
    """threads=null (the default) asks worldmodel.threads.use_threads, which picks one thread per idle core."""
    import train.stages.loop as lp

    asked = []
    monkeypatch.setattr(lp, "use_threads", lambda n: asked.append(n) or 1)
    assert TrainConfig().threads is None and TrainVAEConfig().threads is None
    loop(kind, tiny_root, tmp_path, threads=None)
    assert asked == [None]


@pytest.mark.parametrize("module, keys", [("train", ["stage.steps", "Total optimizer steps", "resume_changes"]),
                                          ("train.vae", ["phase", "'recon' (encoder + full decoder)", "ckpt_every"])])
def test_help_says_what_the_command_does_and_describes_the_keys(module, keys):
    out = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.startswith(f"python -m {module}: ")
    for k in keys:
        assert k in out.stdout, k


def test_a_torn_metrics_line_does_not_block_resume(tiny_root, tmp_path):
    """A run killed mid-write leaves half a JSON row at the end of metrics.jsonl: resume drops it and goes on."""
    loop("stage", tiny_root, tmp_path, stop_after=2).run()
    metrics = tmp_path / "run" / "metrics.jsonl"
    metrics.write_text(metrics.read_text() + '{"step": 3, "lo')
    assert loop("stage", tiny_root, tmp_path, resume=True).run()["steps"] == 4
    rows = [json.loads(r) for r in metrics.read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3, 4]
