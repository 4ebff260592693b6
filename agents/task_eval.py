"""Score a policy on a task in the real engine: survival (return) per episode, for the numbers in docs/agents.md.

    python -m agents.task_eval --policy random --episodes 20            # TakeCover, strafe bound 9
    python -m agents.task_eval --policy still --episodes 20 --max-strafe 9

A policy is a function (observation, np.random.Generator) -> normalised action; `random` draws
uniformly in [-1, 1] each step, `still` never moves. Episode i runs with engine seed seed + i.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable

import gymnasium as gym
import numpy as np

from envs.doom_task import DoomTaskEnv
from envs.tasks import TAKE_COVER_STRAFE, Task, TakeCover

Policy = Callable[[np.ndarray, np.random.Generator], np.ndarray]
"""policy(observation, rng) -> normalised action (k,) float32."""


def random_policy(k: int) -> Policy:
    """Uniform in [-1, 1]^k each step."""
    return lambda obs, rng: rng.uniform(-1.0, 1.0, k).astype(np.float32)


def still_policy(k: int) -> Policy:
    """No motion (all zeros)."""
    return lambda obs, rng: np.zeros(k, np.float32)


def evaluate(policy: Policy, task: Task, episodes: int = 20, seed: int = 0) -> list[float]:
    """Returns of `episodes` engine episodes of `task` under `policy` (TakeCover: survival in tics)."""
    env = DoomTaskEnv(task)
    try:
        return play(env, policy, episodes, seed)
    finally:
        env.close()


def play(env: gym.Env, policy: Policy, episodes: int, seed: int = 0) -> list[float]:
    """Returns of `episodes` episodes of any env (episode i reset with seed + i) under `policy`."""
    rng = np.random.default_rng(seed)
    returns = []
    for i in range(episodes):
        obs, _ = env.reset(seed=seed + i)
        total, done = 0.0, False
        while not done:
            obs, reward, terminated, truncated, _ = env.step(policy(obs, rng))
            total, done = total + reward, terminated or truncated
        returns.append(total)
    return returns


def main(argv: list[str] | None = None) -> dict:
    """CLI: print mean, std, min, max of a baseline policy's returns on TakeCover (JSON)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--policy", choices=("random", "still"), default="random", help="baseline policy")
    p.add_argument("--episodes", type=int, default=20, help="number of episodes")
    p.add_argument("--seed", type=int, default=0, help="engine seed of the first episode (and the policy's)")
    p.add_argument("--max-strafe", type=float, default=TAKE_COVER_STRAFE, help="strafe bound, map units per step")
    args = p.parse_args(argv)
    task = TakeCover(max_strafe=args.max_strafe)
    make = random_policy if args.policy == "random" else still_policy
    r = np.array(evaluate(make(len(task.components)), task, args.episodes, args.seed))
    out = {"policy": args.policy, "episodes": args.episodes, "max_strafe": args.max_strafe,
           "mean": float(r.mean()), "std": float(r.std()), "min": float(r.min()), "max": float(r.max())}
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
