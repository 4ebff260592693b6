"""Score a TakeCover policy in the real engine over N episodes, beside random play and the dream's prediction.

    python -m agents.policy_eval --policy outputs/agents/dream_ppo/policy.zip               # 100 engine episodes
    python -m agents.policy_eval --policy outputs/agents/dream_ppo/policy.zip --episodes 20 --termination sample

Episode i runs in the engine (`DoomTask-v0`, TakeCover) with seed `--seed + i`; its start frame
(the engine's frame at reset, tic 10) then starts a dream episode (`World-v0` with the world's
heads, the same seed for its noise; all N dream episodes in one batch) played by the same policy,
so the dream's predicted survival and the real one come from the same starts. Uniform random play
is scored the same way on the same seeds. Prints a table (survival in tics, mean ± std) with World
Models' TakeCover numbers beside it; `--json PATH` keeps every episode's returns. `--termination`
and `--continue-threshold` set how the dream ends episodes (the knob against dream exploitation).
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Callable
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch
from gymnasium.vector import AutoresetMode

from agents.policy_envs import DEFAULT_WORLD, EncodedObservation, dream_env, engine_env, load_task_world, task_for
from agents.task_eval import Policy
from envs.world_vector import WorldVectorEnv
from worldmodel.world import World, video_to_uint8

WORLD_MODELS = (
    ("World Models: random play", "", "210 ± 108", ""),
    ("World Models: controller trained in its dream (temperature 1.15)", "dream", "1092 ± 556", "938 ± 555"),
    ("World Models: trained in its dream at temperature 0.1 (exploited)", "dream", "193 ± 58", "2086 ± 140"),
    ("World Models: solved", "", "> 750", ""),
)
"""Ha & Schmidhuber (2018), VizDoom TakeCover, 100 episodes: (row, trained, real survival, dream survival)."""


def sb3_policy(model, deterministic: bool = True) -> Policy:
    """An SB3 model as a `Policy` (obs, rng) -> action; the rng is unused (SB3 samples with torch)."""
    return lambda obs, rng: model.predict(obs, deterministic=deterministic)[0]


def load_policy(path: str | Path):
    """A saved SB3 PPO policy (zip; a pickle: load only files you trust) and its obs mode, 'latent' or 'frame'."""
    from stable_baselines3 import PPO

    if not Path(path).exists():
        raise SystemExit(f"{path} does not exist; train a policy with `python -m agents.train_ppo`")
    model = PPO.load(path, device="cpu")
    return model, ("frame" if model.observation_space.dtype == np.uint8 else "latent")


def start_frame(env: gym.Env, obs: np.ndarray) -> np.ndarray:
    """The frame (H, W, 3) uint8 an observation `obs` just returned by `env` shows (engine: its last frame)."""
    return env.last_frames[-1] if isinstance(env, EncodedObservation) else obs


def episode(env: gym.Env, policy: Policy, rng: np.random.Generator, seed: int, options: dict | None = None,
            on_obs: Callable[[np.ndarray], None] | None = None) -> tuple[float, np.ndarray]:
    """Play one episode; returns its return and its start frame (H, W, 3). `on_obs` sees every observation."""
    obs, _ = env.reset(seed=seed, options=options)
    first, total, done = start_frame(env, obs).copy(), 0.0, False
    if on_obs is not None:
        on_obs(obs)
    while not done:
        obs, reward, terminated, truncated, _ = env.step(policy(obs, rng))
        total, done = total + reward, terminated or truncated
        if on_obs is not None:
            on_obs(obs)
    return total, first


def uniform_policy(k: int) -> Policy:
    """Uniform random actions in [-1, 1]^k, one per observation (single (..., 3 dims) or batched (N, ...))."""
    return lambda obs, rng: rng.uniform(-1.0, 1.0, (*np.shape(obs)[:-3], k)).astype(np.float32)


def dream_returns(policy: Policy, world: World, obs_mode: str, starts: np.ndarray, seeds: list[int],
                  rng: np.random.Generator) -> tuple[list[float], list[int]]:
    """Returns (the heads' rewards summed) and lengths in tics (steps x frames_per_step) of one dream episode per
    start frame (N, H, W, 3), env i seeded seeds[i], all N in one batch (`WorldVectorEnv`: one forward per step;
    an env that ended restarts and is ignored until all have ended); `policy` takes the batch of observations."""
    venv = WorldVectorEnv(num_envs=len(seeds), world=world, task=task_for(world), obs_mode=obs_mode,
                          autoreset_mode=AutoresetMode.SAME_STEP, threads=torch.get_num_threads())
    try:
        obs, _ = venv.reset(seed=list(seeds), options={"image": np.ascontiguousarray(starts)})
        returns, ended = np.zeros(len(seeds)), np.zeros(len(seeds), dtype=bool)
        steps = np.zeros(len(seeds), dtype=np.int64)
        while not ended.all():
            obs, rewards, terminated, truncated, _ = venv.step(np.asarray(policy(obs, rng), np.float32))
            returns += np.where(ended, 0.0, rewards)
            steps += ~ended
            ended |= terminated | truncated
    finally:
        venv.close()
    return returns.tolist(), (steps * world.frames_per_step).tolist()


def evaluate_paired(policy: Policy, world: World, obs_mode: str, episodes: int, seed: int = 0,
                    dream: bool = True, desc: str = "episodes") -> dict[str, list[float]]:
    """Real returns of `episodes` engine episodes (seeds seed..), and the dream's returns and lengths in tics from
    each one's start frame (same seed; the dream episodes run batched after the engine's)."""
    from tqdm.auto import tqdm

    real_env = engine_env(world, obs_mode)
    rng = np.random.default_rng(seed)
    seeds = list(range(seed, seed + episodes))
    out: dict[str, list[float]] = {"real": [], "dream": [], "dream_tics": [], "seeds": seeds}
    starts = []
    try:
        for s in tqdm(out["seeds"], desc=desc, unit="episode", dynamic_ncols=True):
            ret, first = episode(real_env, policy, rng, s)
            out["real"].append(ret)
            starts.append(first)
    finally:
        real_env.close()
    if dream:
        out["dream"], out["dream_tics"] = dream_returns(policy, world, obs_mode, np.stack(starts), out["seeds"], rng)
    return out


def record_videos(policy: Policy, world: World, obs_mode: str, n: int, folder: str | Path,
                  seed: int = 0) -> list[str]:
    """Write n engine episodes (seeds seed..) of `policy` as mp4 (35 fps, every tic), each beside the dream's
    episode from the same start frame (`dream_<seed>.mp4`); returns the paths."""
    import imageio.v2 as imageio

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng, paths = np.random.default_rng(seed), []
    real_env = engine_env(world, obs_mode, render_mode="rgb_array_list")
    dream = dream_env(world, obs_mode)
    try:
        for i in range(n):
            frames: list[np.ndarray] = []
            ret, first = episode(real_env, policy, rng, seed + i, on_obs=lambda o: frames.extend(real_env.render()))
            paths.append(str(folder / f"real_{seed + i}_{ret:.0f}tics.mp4"))
            imageio.mimwrite(paths[-1], frames, fps=35, macro_block_size=1)
            shown: list[np.ndarray] = []
            decoder = world.vae.stream_decoder(1, light=world.light_decoder)

            def show(o: np.ndarray) -> None:  # the dream's frames: decoded here in latent mode
                if obs_mode == "frame":
                    shown.append(o)
                else:
                    z = torch.as_tensor(o, dtype=next(world.vae.parameters()).dtype)[None]
                    shown.extend(video_to_uint8(decoder.step(z))[0])

            ret, _ = episode(dream, policy, rng, seed + i, options={"image": first},
                             on_obs=show)
            paths.append(str(folder / f"dream_{seed + i}_{ret:.0f}tics.mp4"))
            imageio.mimwrite(paths[-1], shown, fps=35 if obs_mode == "latent" else 35 // 4, macro_block_size=1)
    finally:
        real_env.close()
        dream.close()
    return paths


def stats(values: list[float]) -> dict[str, float]:
    """mean, std, min, max of a list of returns (NaN when empty)."""
    v = np.asarray(values, np.float64)
    if not len(v):
        return {"mean": float("nan"), "std": float("nan"), "min": float("nan"), "max": float("nan")}
    return {"mean": float(v.mean()), "std": float(v.std()), "min": float(v.min()), "max": float(v.max())}


def table(rows: list[dict]) -> str:
    """A Markdown table of the measured rows, then World Models' rows."""
    fmt = lambda s: "" if np.isnan(s["mean"]) else f"{s['mean']:.0f} ± {s['std']:.0f}"  # noqa: E731
    lines = ["| policy | trained | real survival (tics), mean ± std | min-max | dream-predicted return, same starts | "
             "dream episode length (tics) | dream return - real |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        real, dream, tics = r["real"], r["dream"], r["dream_tics"]
        gap = "" if np.isnan(dream["mean"]) else f"{dream['mean'] - real['mean']:+.0f}"
        lines.append(f"| {r['name']} | {r['trained']} | {fmt(real)} | {real['min']:.0f}-{real['max']:.0f} | "
                     f"{fmt(dream)} | {fmt(tics)} | {gap} |")
    for name, trained, real, dream in WORLD_MODELS:
        lines.append(f"| {name} | {trained} | {real} | | {dream} | | |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    """CLI: score a saved policy (and random play) in the engine and the dream; print the table and a JSON line."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], epilog=__doc__.split("\n\n", 2)[2],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--policy", default=None,
                   help="saved SB3 policy (policy.zip of agents.train_ppo); omit to score random play only")
    p.add_argument("--world", default=DEFAULT_WORLD, help="world file with TakeCover heads (the dream; the encoder)")
    p.add_argument("--episodes", type=int, default=100, help="engine episodes (default: 100)")
    p.add_argument("--seed", type=int, default=0, help="engine seed of the first episode (default: 0)")
    p.add_argument("--random", action=argparse.BooleanOptionalAction, default=True,
                   help="also score uniform random play on the same seeds (default: on)")
    p.add_argument("--dream", action=argparse.BooleanOptionalAction, default=True,
                   help="also play each episode's start in the dream (default: on)")
    p.add_argument("--termination", choices=("threshold", "sample"), default=None,
                   help="how the dream's continue head ends episodes (default: the world file's)")
    p.add_argument("--continue-threshold", type=float, default=None,
                   help="continue probability below which a 'threshold' dream episode ends (default: the file's)")
    p.add_argument("--stochastic", action="store_true", help="sample the policy's actions (default: its mode)")
    p.add_argument("--name", default=None, help="the policy's row name (default: the run folder's name)")
    p.add_argument("--json", default=None, help="also write the results (every episode's return) to this file")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default: 1)")
    args = p.parse_args(argv)
    if args.episodes < 1:
        p.error(f"--episodes {args.episodes} must be >= 1")
    torch.set_num_threads(args.threads)
    world = load_task_world(args.world, args.termination, args.continue_threshold)
    rows, results = [], {}
    if args.policy is not None:
        model, obs_mode = load_policy(args.policy)
        run_dir = Path(args.policy).parent
        trained = "?"
        if (run_dir / "args.json").exists():
            trained = json.loads((run_dir / "args.json").read_text()).get("env", "?")
        name = args.name or f"PPO {run_dir.name} ({obs_mode})"
        r = evaluate_paired(sb3_policy(model, not args.stochastic), world, obs_mode, args.episodes, args.seed,
                            args.dream, desc=name)
        rows.append({"name": name, "trained": trained, **{k: stats(r[k]) for k in ("real", "dream", "dream_tics")}})
        results["policy"] = {"path": args.policy, "obs": obs_mode, **r}
    if args.random:
        r = evaluate_paired(uniform_policy(1), world, "latent", args.episodes, args.seed, args.dream, desc="random")
        rows.append({"name": "random (uniform strafe each step)", "trained": "",
                     **{k: stats(r[k]) for k in ("real", "dream", "dream_tics")}})
        results["random"] = r
    if not rows:
        p.error("nothing to score: pass --policy PATH or keep --random")
    print(f"TakeCover, {args.episodes} engine episodes (seeds {args.seed}-{args.seed + args.episodes - 1}); dream: "
          f"{world.heads.cfg.termination} termination, continue threshold {world.heads.cfg.continue_threshold}")
    print(table(rows))
    out = {"episodes": args.episodes, "seed": args.seed, "termination": world.heads.cfg.termination,
           "continue_threshold": world.heads.cfg.continue_threshold,
           "rows": rows}
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({**out, "episodes_detail": results}))
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
