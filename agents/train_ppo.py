"""Train a TakeCover policy with PPO (stable-baselines3) in the dream, or in the real engine as the reference.

    python -m agents.train_ppo --env dream --steps 100000 --run dream_ppo     # inside the learned world
    python -m agents.train_ppo --env real --steps 20000 --run real_ppo        # in ViZDoom, the reference
    python -m agents.policy_eval --policy outputs/agents/dream_ppo/policy.zip # score it in the engine

The dream is `World-v0` with the TakeCover heads of `--world` (`python -m train.heads` writes it),
batched (`envs.sb3.WorldSB3VecEnv`: one transformer evaluation for all `--n-envs` per step); the
engine is `--n-envs` ViZDoom processes of `DoomTask-v0`. Both are observed the same way
(`--obs latent`: the world's latent, MlpPolicy; `--obs frame`: the 96x128 frame, CnnPolicy), so a
policy trained in one plays in the other. A run writes to `outputs/agents/<run>/`: `tb/`
(TensorBoard: rollout/ep_rew_mean is the survival in tics), `policy.zip` (SB3's format: a pickle,
so load only your own runs), `args.json`, `train.json` (steps, wall and CPU time) and `videos/`
(a few engine episodes of the trained policy, mp4). `--termination sample` ends dream episodes by
a draw from the continue head instead of at its threshold: the knob against exploiting the heads.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch

from agents.policy_envs import DEFAULT_WORLD, OBS_MODES, engine_env, load_task_world, task_for

ENVS = ("dream", "real")
"""Where a policy trains: the learned world, or the engine."""


@dataclass
class Args:
    """Settings of one PPO run (every field is a command-line flag: --n-envs for n_envs)."""

    env: str = "dream"
    """Where to train: 'dream' (World-v0 with the world's heads) or 'real' (DoomTask-v0, ViZDoom)."""
    world: str = DEFAULT_WORLD
    """World file with TakeCover heads; in 'real' runs it still sets the resolution and (latent obs) the encoder."""
    steps: int = 100_000
    """Environment steps to train for (one step = 4 tics)."""
    n_envs: int = 16
    """Parallel envs: dream episodes batched in one forward, or ViZDoom processes."""
    obs: str = "latent"
    """Observation: 'latent' (the world's latent, MlpPolicy) or 'frame' (the 96x128 frame, CnnPolicy)."""
    run: str = ""
    """Run name: outputs go to <out>/<run>/ (default: '<env>_ppo')."""
    out: str = "outputs/agents"
    """Folder of the runs."""
    seed: int = 1000
    """Seed of PPO, of the envs and of the dream's start pool (engine evaluation uses seeds 0..; keep them apart)."""
    termination: str | None = None
    """Dream only: how the continue head ends an episode, 'threshold' or 'sample' (default: the world file's)."""
    continue_threshold: float | None = None
    """Dream only: continue probability below which a 'threshold' episode ends (default: the world file's, 0.5)."""
    start_pool: int = 32
    """Dream only: engine start frames to start dream episodes from (0: the world file's own start frames)."""
    n_steps: int = 128
    """PPO rollout length per env before each update."""
    batch_size: int = 256
    """PPO minibatch size."""
    n_epochs: int = 4
    """PPO epochs over each rollout."""
    lr: float = 3e-4
    """Adam learning rate."""
    gamma: float = 0.99
    """Discount factor."""
    ent_coef: float = 0.01
    """Entropy bonus (keeps the strafe policy exploring)."""
    max_minutes: float = 0.0
    """Stop training after this many minutes of wall time, keeping the policy so far (0: no limit)."""
    videos: int = 2
    """Engine episodes of the trained policy to record to videos/ (0: none)."""
    threads: int = 1
    """torch CPU threads (1 on a shared machine)."""
    progress: bool = True
    """Show a progress bar."""


def parse_args(argv: list[str] | None = None) -> Args:
    """Args from the command line; every `Args` field is a flag with its docstring as help."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], epilog=__doc__.split("\n\n", 2)[2],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    helps = field_docs()
    for f in fields(Args):
        flag, default = "--" + f.name.replace("_", "-"), f.default
        if isinstance(default, bool):
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, help=helps[f.name])
            continue
        kind = {"int": int, "float": float, "float | None": float}.get(f.type, str)  # annotations are strings
        choices = {"env": ENVS, "obs": OBS_MODES, "termination": ("threshold", "sample")}.get(f.name)
        p.add_argument(flag, type=kind, default=default, choices=choices, help=f"{helps[f.name]} (default: {default})")
    args = Args(**vars(p.parse_args(argv)))
    if args.steps < 1 or args.n_envs < 1:
        p.error(f"--steps {args.steps} and --n-envs {args.n_envs} must be >= 1")
    return args


def field_docs() -> dict[str, str]:
    """The docstring under each `Args` field (the --help text)."""
    import ast
    import inspect

    tree = ast.parse(inspect.getsource(Args))
    body, docs = tree.body[0].body, {}
    for node, nxt in zip(body, body[1:]):
        if isinstance(node, ast.AnnAssign) and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant):
            docs[node.target.id] = nxt.value.value
    return docs


def make_venv(args: Args, world):
    """The training VecEnv (with VecMonitor, so episode returns reach TensorBoard)."""
    from stable_baselines3.common.vec_env import DummyVecEnv, VecMonitor

    if args.env == "dream":
        from envs.doom_task import collect_start_pool
        from envs.sb3 import WorldSB3VecEnv

        pool = None
        if args.start_pool:
            pool = collect_start_pool(task_for(world), args.start_pool, seed=args.seed,
                                      frame_size=tuple(world.meta.image_hw))
        venv = WorldSB3VecEnv(num_envs=args.n_envs, world=world, task=task_for(world, pool), obs_mode=args.obs,
                              threads=args.threads)
    else:
        venv = DummyVecEnv([lambda: engine_env(world, args.obs) for _ in range(args.n_envs)])
    venv.seed(args.seed)
    return VecMonitor(venv)


def progress_callback(total: int, progress: bool, max_minutes: float):
    """An SB3 callback: a tqdm bar of environment steps (SB3's own needs `rich`) showing the mean survival of
    the last 100 episodes, and a stop after `max_minutes` of wall time (0: none)."""
    from stable_baselines3.common.callbacks import BaseCallback
    from tqdm.auto import tqdm

    class Progress(BaseCallback):
        def _on_training_start(self) -> None:
            self.bar = tqdm(total=total, unit="step", desc="ppo", dynamic_ncols=True, disable=not progress)
            self.deadline = time.perf_counter() + 60 * max_minutes if max_minutes > 0 else float("inf")

        def _on_step(self) -> bool:
            self.bar.update(self.training_env.num_envs)
            if self.model.ep_info_buffer:
                self.bar.set_postfix(survival=f"{np.mean([e['r'] for e in self.model.ep_info_buffer]):.0f}",
                                     refresh=False)
            return time.perf_counter() < self.deadline

        def _on_training_end(self) -> None:
            self.bar.close()

    return Progress()


def train(args: Args) -> dict:
    """Train PPO as `args` says; writes the run folder and returns its summary (also train.json)."""
    from stable_baselines3 import PPO

    torch.set_num_threads(args.threads)
    run_dir = Path(args.out) / (args.run or f"{args.env}_ppo")
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "args.json").write_text(json.dumps(asdict(args), indent=1))
    world = load_task_world(args.world, args.termination, args.continue_threshold)
    venv = make_venv(args, world)
    policy = "MlpPolicy" if args.obs == "latent" else "CnnPolicy"
    model = PPO(policy, venv, n_steps=args.n_steps, batch_size=args.batch_size, n_epochs=args.n_epochs,
                learning_rate=args.lr, gamma=args.gamma, ent_coef=args.ent_coef, seed=args.seed, device="cpu",
                tensorboard_log=str(run_dir / "tb"), verbose=0)
    wall, cpu = time.perf_counter(), time.process_time()
    try:
        model.learn(total_timesteps=args.steps, callback=progress_callback(args.steps, args.progress, args.max_minutes),
                    tb_log_name="ppo")
    finally:
        model.save(run_dir / "policy.zip")
        venv.close()
    summary = {"run": str(run_dir), "env": args.env, "obs": args.obs, "policy": policy,
               "steps": int(model.num_timesteps),
               "wall_min": (time.perf_counter() - wall) / 60, "cpu_min": (time.process_time() - cpu) / 60,
               "termination": world.heads.cfg.termination, "continue_threshold": world.heads.cfg.continue_threshold,
               "train_episodes": len(model.ep_info_buffer),
               "last_100_episode_return": float(np.mean([e["r"] for e in model.ep_info_buffer]))
               if model.ep_info_buffer else None}
    if args.videos:
        from agents.policy_eval import record_videos, sb3_policy

        summary["videos"] = record_videos(sb3_policy(model), world, args.obs, args.videos, run_dir / "videos")
    (run_dir / "train.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary))
    return summary


def main(argv: list[str] | None = None) -> dict:
    """CLI entry point."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    return train(parse_args(argv))


if __name__ == "__main__":
    main()
