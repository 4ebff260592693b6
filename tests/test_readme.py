"""Every command in the README's code blocks runs in CI or in a test; the first one does the main job.

`readme_commands()` reads the ```bash blocks of README.md. Each command must have an entry in
COVERAGE saying how it is checked, so a command added to the README without a check fails here:

- RUN: `test_readme_commands_run` runs it verbatim (no display, in a scratch folder with the
  repository's examples/), a world file made on the spot where the command expects one.
- TINY: run the same way with a few steps appended, because the real run opens a window or lasts long.
- CI: `.ci/run` runs it verbatim (checked here).
- a test path `tests/x.py::name`: that test runs the same entry point at a tiny size (checked to exist).
- INSTALL: a `pip install` from an index; CI installs through its own configured index.
"""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import imageio
import pytest

ROOT = Path(__file__).resolve().parents[1]
RUN, TINY, CI, INSTALL = "run", "tiny", "ci", "install"
SMOKE = "tests/test_pipeline_smoke.py::test_pipeline_smoke_runs_end_to_end_in_under_ten_minutes"
FSDP = "tests/test_stage_parallel.py::test_fsdp_stage_equals_data_parallel_stage"
CP = "tests/test_stage_parallel.py::test_context_parallel_stage_equals_one_process"
TINY_STEPS = ["--steps", "3"]

COVERAGE: dict[str, tuple[str, ...]] = {
    "pip install torch --index-url https://download.pytorch.org/whl/cpu": (INSTALL,),
    "pip install torch": (INSTALL,),
    "pip install -e .": (CI,),
    "python -m viewer": (CI, RUN),
    "python -m viewer --threads 1": (RUN,),
    "python -m worldmodel.bench": ("tests/test_bench.py::test_quick_cli_writes_json_with_machine_and_positive_rows",),
    'pip install -e ".[test]"': (CI,),
    "python -m pytest -q": (CI,),
    "python -m pytest -q -m slow": (CI,),
    "python -m viewer --compare-real": (TINY,),
    "python -m viewer --headless --steps 60 --keys examples/walk.keys --record outputs/walk.mp4": (RUN,),
    "python -m viewer --reprojection off": (TINY,),
    "python -m train.collect root=data/doom train_clips=240 val_clips=32 workers=1":
        ("tests/test_collect.py::test_hydra_entry_point_runs",),
    "python -m train.vae phase=recon": (SMOKE,),
    "python -m train stage=diffusion model=tiny data=doom": (SMOKE,),
    "python -m train stage=distill model=tiny data=doom": (SMOKE,),
    "python -m train stage=adversarial model=tiny data=doom": (SMOKE,),
    "python -m train.bundle --world checkpoints/world_tiny.safetensors --out my_world.safetensors "
    "--card-md my_world.md": (RUN,),
    "python -m viewer --checkpoint my_world.safetensors": (TINY,),
    "torchrun --standalone --nproc_per_node=8 -m train stage=adversarial model=small data=doom parallel.fsdp=true":
        (FSDP,),
    "torchrun --standalone --nproc_per_node=8 -m train stage=diffusion model=small data=doom parallel.fsdp=true "
    "parallel.cp=4 parallel.activation_checkpointing=true": (CP,),
    "torchrun --nnodes=32 --nproc_per_node=8 --rdzv_backend=c10d --rdzv_endpoint=$MASTER:29400 --rdzv_id=run1 "
    "-m train stage=adversarial model=small data=doom parallel.fsdp=true": (FSDP,),
    "python -m worldmodel.parallel.plan --model paper-8b --gpus 256 --cp 8": (RUN,),
    "python -m train.eval --quick": ("tests/test_eval.py::test_quick_eval_end_to_end_on_a_random_world",),
    "python -m train.eval_response --quick": ("tests/test_eval_response.py::test_quick_report_on_the_bundled_world",),
    "python -m train.heads": ("tests/test_heads.py::test_train_heads_command_runs_from_its_hydra_config",),
    "python -m agents.train_ppo --env dream --steps 200000 --max-minutes 38 --run dream_ppo":
        ("tests/test_agents_ppo.py::test_train_command_writes_policy_tensorboard_and_summary",),
    "python -m agents.policy_eval --policy outputs/agents/dream_ppo/policy.zip":
        ("tests/test_agents_ppo.py::test_policy_eval_prints_real_dream_and_world_models_numbers",),
}
"""README command -> how it is checked (see the module docstring)."""

GIF = "python -m viewer --compare-real --steps 40 --keys examples/look_around.keys --record docs/images/compare.gif"
"""How the README's GIF is made (quoted in its caption); run too."""


def code_blocks(lang: str) -> list[str]:
    """The bodies of README.md's fenced code blocks in `lang`."""
    return re.findall(rf"^```{lang}\n(.*?)^```", (ROOT / "README.md").read_text(), re.S | re.M)


def readme_commands() -> list[str]:
    """Commands of the ```bash blocks: continuation lines joined, comments dropped, `a && b` split, spaces squeezed."""
    commands = []
    for block in code_blocks("bash"):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #", 1)[0] if not line.lstrip().startswith("#") else ""
            commands += [" ".join(part.split()) for part in line.split("&&") if part.strip()]
    return commands


def test_every_readme_command_is_covered_by_ci_or_a_test():
    """No README command without a check, no check of a command the README dropped; named tests exist and
    CI commands appear verbatim in .ci/run."""
    commands = readme_commands()
    missing = [c for c in commands if c not in COVERAGE]
    assert not missing, f"README commands with no check; add them to COVERAGE: {missing}"
    stale = [c for c in COVERAGE if c not in commands]
    assert not stale, f"COVERAGE lists commands the README no longer has: {stale}"
    ci = (ROOT / ".ci/run").read_text()
    for command, how in COVERAGE.items():
        for h in how:
            if h == CI:
                assert command in ci, f"{command!r} is marked CI but .ci/run does not run it"
            elif "::" in h:
                path, name = h.split("::")
                assert f"def {name}(" in (ROOT / path).read_text(), f"{h} (check of {command!r}) does not exist"
            else:
                assert h in (RUN, TINY, INSTALL), h


def test_the_first_readme_command_installs_and_runs_the_viewer():
    """The Quickstart's first command is the install + the viewer (whose headless fallback CI runs)."""
    first = [c for c in readme_commands() if not c.startswith("pip install torch")][:2]
    assert first == ["pip install -e .", "python -m viewer"]
    ci = (ROOT / ".ci/run").read_text()
    assert "pip install -e . && python -m viewer" in ci


def test_license_and_citation_are_present():
    """Apache-2.0 as pyproject declares, and the AAPT paper cited in README and CITATION.cff."""
    assert "Apache License" in (ROOT / "LICENSE").read_text() and 'license = { text = "Apache-2.0" }' in (
        ROOT / "pyproject.toml").read_text()
    cff = (ROOT / "CITATION.cff").read_text()
    readme = (ROOT / "README.md").read_text()
    for text in (cff, readme):
        assert "Autoregressive Adversarial Post-Training for Real-Time Interactive Video Generation" in text
        assert "2506.09350" in text and "Lin" in text


def scratch_env() -> dict[str, str]:
    """No display and one thread: what CI and a container give the commands."""
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY", "SDL_VIDEODRIVER")}
    return {**env, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


@pytest.mark.slow
def test_readme_commands_run(tmp_path):
    """RUN commands verbatim and TINY ones with --steps 3, in a scratch folder without a display: each exits 0.
    The main job leaves a playable mp4 and a contact sheet; the GIF command makes a GIF under 2 MB."""
    from tests.test_world_env import build_world

    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    (tmp_path / "docs/images").mkdir(parents=True)
    (tmp_path / "checkpoints").mkdir()
    build_world(tmp_path / "checkpoints/world_tiny.safetensors")  # what the adversarial stage exports
    env = scratch_env()
    ran = []
    for command in [*(c for c in readme_commands() if {RUN, TINY} & set(COVERAGE[c])), GIF]:
        if command in ran:
            continue
        ran.append(command)
        assert command.startswith("python -m "), command
        argv = command.split()[1:] + (TINY_STEPS if TINY in COVERAGE.get(command, ()) else [])
        r = subprocess.run([sys.executable, *argv],
                           cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, f"`{command}` failed:\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}"
    frames = list(imageio.get_reader(tmp_path / "outputs/explore.mp4", format="FFMPEG").iter_data())
    assert len(frames) == 121 * 4 and (tmp_path / "outputs/explore_sheet.png").stat().st_size > 0
    assert len(list(imageio.get_reader(tmp_path / "outputs/walk.mp4", format="FFMPEG").iter_data())) == 61 * 4
    assert (tmp_path / "my_world.safetensors").exists() and (tmp_path / "my_world.md").exists()
    assert (tmp_path / "docs/images/compare.gif").stat().st_size < 2 * 2**20


@pytest.mark.slow
def test_readme_python_block_runs():
    """The README's Python example runs as written (the bundled world, one step, a vector env of 16)."""
    for block in code_blocks("python"):
        r = subprocess.run([sys.executable, "-c", block], cwd=ROOT, env=scratch_env(), capture_output=True,
                           text=True, timeout=600)
        assert r.returncode == 0, r.stderr[-3000:]


@pytest.mark.slow
def test_every_module_the_readme_runs_answers_help():
    """`python -m M --help` exits 0 for every module the README's commands name (their arguments are documented)."""
    # The module a command runs: `python -m M ...`, or `torchrun [its options] -m M ...` (the first -m).
    modules = sorted({re.search(r"\s-m (\S+)", c).group(1) for c in readme_commands()
                      if c.startswith(("python -m ", "torchrun "))})
    assert {"viewer", "worldmodel.bench", "train", "train.bundle", "train.eval"} <= set(modules)
    for module in modules:
        r = subprocess.run([sys.executable, "-m", module, "--help"], cwd=ROOT, env=scratch_env(), capture_output=True,
                           text=True, timeout=300)
        assert r.returncode == 0, f"python -m {module} --help: {r.stderr[-2000:]}"
