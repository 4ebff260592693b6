"""Pictures of what `train.eval_response` measures: turning and walking, the engine beside the world.

    python -m train.response_pictures                    # docs/images/turn_network_vs_memory.png, walk_...png

Each picture stacks, per held-out start: the engine, the network alone (memory off) and the world
as shipped (its memory on), one column per step end. Same starts as the eval's full setting
(validation maps only, never freedoom1).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import imageio.v3 as iio
import numpy as np

from train.eval_response import (
    EngineSource,
    drive,
    step_ends,
    turn_actions,
    validation_starts,
    walk_actions,
    walk_starts,
)
from worldmodel.threads import use_threads
from worldmodel.world import World

LABEL_W = 96


def labelled(row: np.ndarray, text: str) -> np.ndarray:
    """A (H, W, 3) strip with `text` written in a dark margin on its left."""
    margin = np.full((row.shape[0], LABEL_W, 3), 24, np.uint8)
    for i, line in enumerate(text.split("\n")):
        cv2.putText(margin, line, (4, 16 + 14 * i), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (235, 235, 235), 1, cv2.LINE_AA)
    return np.concatenate([margin, row], axis=1)


def picture(world: World, engine: EngineSource, starts: list, actions: np.ndarray, columns: list[int],
            realised: bool) -> np.ndarray:
    """Rows engine / network alone / memory on for each start; columns: the given step ends."""
    steps = actions.shape[1]
    sources = [("engine", step_ends(engine.rollout(starts, actions)[0], steps)),
               ("network\nalone", step_ends(drive(world, engine, starts, actions, None, 0, realised), steps)),
               ("memory on\n(shipped)", step_ends(drive(world, engine, starts, actions, "world", 0, realised), steps))]
    rows = [labelled(np.concatenate([f[b, k] for k in columns], axis=1), name)
            for b in range(len(starts)) for name, f in sources]
    return np.concatenate(rows, axis=0)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m train.response_pictures", description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", default=None, help="world file (default: the bundled world)")
    p.add_argument("--out", default="docs/images", help="folder for the PNGs (default %(default)s)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    a = p.parse_args(argv)
    use_threads(a.threads)
    world = World.load(a.checkpoint)
    engine = EngineSource(world.meta.image_hw, world.frames_per_step)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    try:
        turners = [validation_starts(engine, 8)[i] for i in (0, 3)]
        turn = picture(world, engine, turners, turn_actions(2, 0.06, 16), list(range(0, 17, 2)), False)
        walkers = [walk_starts(engine, 8, 16.0, 12)[i] for i in (0, 5, 7)]
        walk = picture(world, engine, walkers, walk_actions(3, 16.0, 12), [0, 3, 6, 9, 12], True)
    finally:
        engine.close()
    for name, img in (("turn_network_vs_memory.png", turn), ("walk_network_vs_memory.png", walk)):
        iio.imwrite(out / name, img)
        print(f"wrote {out / name}")


if __name__ == "__main__":
    main()
