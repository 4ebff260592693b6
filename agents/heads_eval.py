"""Measure a world's heads on held-out engine episodes: reward, termination and collision prediction.

    python -m agents.heads_eval --world outputs/heads/take_cover/world.safetensors      # 40 held-out episodes

The episodes (seeds 100000.. by default; `train.heads` trains on seeds 0..) run in the real engine
(`worldmodel/DoomTask-v0`, TakeCover) under the exploring policy of `agents.heads_data`, their
frames encoded by the world's own VAE; the heads predict each step from the latent before it and
the commanded action, and are scored against what the engine reported. Printed as JSON:

- reward: mean absolute error, accuracy (|predicted - true| < 0.5, i.e. the right tic count);
- termination (a step ends the episode): accuracy, precision, recall, AUC of 1 - continue, at the
  heads' own rule (continue < 0.5), and the share of episodes the heads would end before the engine did;
- collision (the engine's `blocked`): recall, precision, accuracy over steps that command motion,
  and the motion head's error in normalised units;
- with `--dream-episodes N`: the survival (tics) of N dream episodes of World-v0 with these heads
  under the uniform random policy, to set beside the engine's (159 +- 57 tics, docs/agents.md).
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from agents.heads_data import collect_split
from agents.policy_envs import dream_env, task_for
from agents.task_eval import play, random_policy
from envs.tasks import TakeCover, blocked_labels
from worldmodel.heads import WorldHeads
from worldmodel.world import World

HELDOUT_SEED = 100000
"""First engine seed of the held-out episodes (training uses seeds from 0)."""


def auc(score: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve of `score` for the boolean labels `positive` (ties count half); NaN without both."""
    score, positive = np.asarray(score, np.float64), np.asarray(positive, bool)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if not n_pos or not n_neg:
        return float("nan")
    order = np.argsort(score, kind="mergesort")
    ranks = np.empty(len(score))
    sorted_scores = score[order]
    # Average ranks over ties (1-based).
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    avg = first + (counts + 1) / 2.0
    ranks[order] = np.repeat(avg, counts)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def binary_scores(pred: np.ndarray, true: np.ndarray) -> dict[str, float]:
    """Accuracy, precision, recall and counts of boolean predictions against boolean truth."""
    pred, true = np.asarray(pred, bool), np.asarray(true, bool)
    tp, fp, fn = int((pred & true).sum()), int((pred & ~true).sum()), int((~pred & true).sum())
    return {"accuracy": float((pred == true).mean()) if len(true) else float("nan"),
            "precision": tp / (tp + fp) if tp + fp else float("nan"),
            "recall": tp / (tp + fn) if tp + fn else float("nan"),
            "positives": int(true.sum()), "predicted": int(pred.sum())}


@torch.no_grad()
def predict_split(heads: WorldHeads, data: dict[str, np.ndarray], batch: int = 1024) -> dict[str, np.ndarray]:
    """The heads' raw outputs on every step of a split (the arrays of `agents.heads_data.load_split`)."""
    p = next(heads.parameters())
    outs: dict[str, list[np.ndarray]] = {}
    for i in range(0, len(data["actions"]), batch):
        z = torch.as_tensor(data["latents"][i:i + batch], dtype=p.dtype, device=p.device)
        a = torch.as_tensor(data["actions"][i:i + batch], dtype=p.dtype, device=p.device)
        for k, v in heads(z, a).items():
            outs.setdefault(k, []).append(v.float().cpu().numpy())
    return {k: np.concatenate(v) for k, v in outs.items()}


def heads_metrics(heads: WorldHeads, data: dict[str, np.ndarray]) -> dict[str, float]:
    """Reward, termination and collision scores of the heads on a split (see the module docstring)."""
    out = predict_split(heads.eval(), data)
    cfg = heads.cfg
    sig = lambda x: 1.0 / (1.0 + np.exp(-x))  # noqa: E731
    cont = sig(out["continue_logit"])
    end_true, end_pred = ~data["alive"], cont < cfg.continue_threshold
    err = np.abs(out["reward"] - data["reward"])
    counted, blocked = blocked_labels(data["actions"], data["realised"])
    blocked_pred = sig(out["blocked_logit"]) >= cfg.blocked_threshold
    episodes = data["episode"]
    early = [bool(end_pred[(episodes == e)][:-1].any()) for e in np.unique(episodes)]
    term = binary_scores(end_pred, end_true)
    coll = binary_scores(blocked_pred[counted], blocked[counted])
    return {
        "episodes": int(len(np.unique(episodes))), "steps": int(len(episodes)),
        "reward_mae": float(err.mean()), "reward_accuracy": float((err < 0.5).mean()),
        "reward_accuracy_on_ending_steps": float((err[end_true] < 0.5).mean()) if end_true.any() else float("nan"),
        "termination_accuracy": term["accuracy"], "termination_precision": term["precision"],
        "termination_recall": term["recall"], "termination_auc": auc(1.0 - cont, end_true),
        "ending_steps": term["positives"], "predicted_ending_steps": term["predicted"],
        "always_alive_accuracy": float((~end_true).mean()),
        "episodes_ended_early": float(np.mean(early)),
        "collision_recall": coll["recall"], "collision_precision": coll["precision"],
        "collision_accuracy": coll["accuracy"],
        "collision_auc": auc(sig(out["blocked_logit"][counted]), blocked[counted]),
        "blocked_steps": coll["positives"], "moving_steps": int(counted.sum()),
        "motion_mae": float(np.abs(out["motion"] - data["realised"]).mean()),
    }


def dream_survival(world: World, episodes: int, seed: int = 0) -> list[float]:
    """Returns (TakeCover: tics survived) of `episodes` dream episodes, uniform random policy, latent mode."""
    task = task_for(world)
    return play(dream_env(world, "latent", task), random_policy(len(task.components)), episodes, seed)


def main(argv: list[str] | None = None) -> dict:
    """CLI: collect (or reuse) held-out engine episodes and print the heads' scores on them as JSON."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--world", required=True, help="world file with heads (python -m train.heads writes one)")
    p.add_argument("--episodes", type=int, default=40, help="held-out engine episodes")
    p.add_argument("--seed", type=int, default=HELDOUT_SEED, help="engine seed of the first held-out episode")
    p.add_argument("--data", default="outputs/heads/take_cover/data/heldout",
                   help="folder of the held-out episodes (missing ones are collected into it)")
    p.add_argument("--dream-episodes", type=int, default=0,
                   help="also play this many dream episodes (random policy) and report their survival")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    world = World.load(args.world)
    if world.heads is None:
        raise SystemExit(f"{args.world} has no heads; train them with `python -m train.heads`")
    if world.heads.cfg.task != TakeCover.name:
        raise SystemExit(f"{args.world} has heads for task {world.heads.cfg.task!r}; this command measures TakeCover")
    task = TakeCover(max_strafe=world.heads.cfg.bounds[0])
    data = collect_split(world, task, range(args.seed, args.seed + args.episodes), args.data)
    out = {"world": args.world, "seeds": [args.seed, args.seed + args.episodes - 1], **heads_metrics(world.heads, data)}
    if args.dream_episodes:
        r = np.array(dream_survival(world, args.dream_episodes))
        out.update(dream_episodes=len(r), dream_survival_mean=float(r.mean()), dream_survival_std=float(r.std()),
                   dream_survival_min=float(r.min()), dream_survival_max=float(r.max()))
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
