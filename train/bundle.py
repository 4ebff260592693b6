"""Ship a trained world: `python -m train.bundle --world W [--generator CKPT] --eval eval.json [--out PATH]`.

Writes the world file with a model card in its metadata (training data, configs, commands,
metrics) and stored in half precision to keep the repository small, and renders the same
card as Markdown. The default output is the bundled world that `World-v0` and the viewer
load when no checkpoint is given.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Any

import torch

from train.stages.adversarial import widen_bounds
from worldmodel.checkpoint import load_world_model
from worldmodel.config import config_to_dict
from worldmodel.reproject import ReprojectionConfig, add_reprojection_argument
from worldmodel.vae import load_vae
from worldmodel.world import BUNDLED, World


def card_markdown(card: dict[str, Any]) -> str:
    """The model card as Markdown."""
    lines = ["# Model card: the bundled world", ""]
    for key, value in card.items():
        if isinstance(value, dict):
            lines += [f"## {key}", "", "```json", json.dumps(value, indent=1), "```", ""]
        elif isinstance(value, list):
            lines += [f"## {key}", ""] + [f"- {v}" for v in value] + [""]
        else:
            lines += [f"- **{key}**: {value}"]
    return "\n".join(lines) + "\n"


def eval_summary(results: dict[str, Any]) -> dict[str, Any]:
    """The headline numbers of a `python -m train.eval` JSON, per method."""
    out: dict[str, Any] = {}
    for name, m in results.get("methods", {}).items():
        cam = m.get("camera", {})
        out[name] = {
            "teacher_forced_psnr": m["teacher_forced"]["psnr"], "teacher_forced_ssim": m["teacher_forced"]["ssim"],
            "autoregressive_psnr": m["autoregressive"]["psnr"], "autoregressive_ssim": m["autoregressive"]["ssim"],
            "rot_err_deg": cam.get("rot_err_deg"), "trans_dir_err_deg": cam.get("trans_dir_err_deg"),
            "pose_success_share": cam.get("success_share"), "yaw_gain": cam.get("yaw_gain"),
        }
    real = results.get("real_engine_camera", {})
    out["real_engine_frames"] = {k: real.get(k) for k in ("rot_err_deg", "success_share", "yaw_gain")}
    vae = results.get("vae_reconstruction") or {}
    out["vae_reconstruction"] = {k: vae.get(k) for k in ("psnr", "ssim")}
    out["vae_reconstruction_frames"] = {k: vae.get("camera", {}).get(k) for k in ("rot_err_deg", "success_share", "yaw_gain")}
    net = results.get("network_without_reprojection")
    if net is not None:  # the world ships with its memory on: what the network does alone
        out["network_without_reprojection"] = {
            "autoregressive_psnr": net["autoregressive"]["psnr"],
            **{k: net["camera"].get(k) for k in ("rot_err_deg", "success_share", "yaw_gain")}}
    out["reprojection"] = results.get("world", {}).get("reprojection")
    out["long_run_collapsed"] = results.get("long_run", {}).get("collapsed")
    out["long_run_frames"] = results.get("long_run", {}).get("frames")
    cfg = results.get("config", {})
    out["eval_setting"] = {k: cfg.get(k) for k in ("trajectories", "horizon", "long_steps", "long_trajectories")}
    return out


def with_generator(world: World, path: str) -> World:
    """`world` with the DiT and camera statistics of a stage checkpoint (same size and latent layout)."""
    dit, cfg, stats, _, meta = load_world_model(path)
    if cfg.logit_head:
        raise ValueError(f"{path} is a discriminator (logit head), not a generator")
    if stats is None:
        raise ValueError(f"{path} has no camera statistics; pass a checkpoint written by a training stage")
    world.meta.card = {**world.meta.card, "generator": f"{path} ({meta.get('stage', '?')}, {meta.get('steps', '?')} steps)"}
    return World(dit, world.vae, world.meta, stats, world.start_frames, world.light_decoder)


def with_vae(world: World, path: str) -> World:
    """`world` with the VAE at `path` (e.g. a retrained light decoder); its encoder must be the world's.

    The generator was trained on the world's latents, so only the decoders may change: a VAE
    whose encoder weights or latent statistics differ would decode a different latent space.
    """
    vae = load_vae(path)
    # Everything but the two decoders: encoder weights and the latent statistics.
    latent_side = lambda v: {k: t for k, t in v.state_dict().items()  # noqa: E731
                             if not k.startswith(("decoder.", "light_decoder."))}
    mine, theirs = latent_side(world.vae), latent_side(vae)
    same = mine.keys() == theirs.keys() and all(
        mine[k].shape == theirs[k].shape and torch.allclose(mine[k].float(), theirs[k].float(), rtol=1e-3, atol=1e-4)
        for k in mine
    )
    if not same:
        raise ValueError(f"{path} has a different encoder or latent statistics than the world's VAE; "
                         f"only a VAE retrained from the world's (python -m train.vae phase=light init=...) can replace it")
    world.meta.card = {**world.meta.card, "vae": path}
    return World(world.dit, vae.to(world.device), world.meta, world.camera_stats, world.start_frames, world.light_decoder)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--world", required=True, help="world file exported by the adversarial stage")
    p.add_argument("--generator", default=None,
                   help="ship this stage checkpoint's generator and camera stats instead of the world's "
                        "(e.g. the distilled one); the world file still gives the VAE, bounds and start frames")
    p.add_argument("--vae", default=None,
                   help="ship this VAE instead of the world's (same encoder: e.g. a light decoder retrained "
                        "with python -m train.vae phase=light)")
    p.add_argument("--eval", default=None, help="JSON written by python -m train.eval on this world")
    p.add_argument("--card", default=None, help="JSON file with extra card fields (training commands, data size, wall times)")
    p.add_argument("--out", default="outputs/world.safetensors",
                   help=f"where to write the world (default outputs/world.safetensors; the packaged world is {BUNDLED})")
    p.add_argument("--card-md", default=None, help="Markdown rendering of the card (default: --out with .md)")
    p.add_argument("--fp32", action="store_true", help="keep float32 weights (default: float16 on disk)")
    add_reprojection_argument(p, "Stored in the shipped world; default: keep the world file's.")
    args = p.parse_args(argv)

    world = World.load(args.world)
    if args.generator:
        world = with_generator(world, args.generator)
    if args.vae:
        world = with_vae(world, args.vae)
    card = dict(world.meta.card)
    card.update({
        "source": "doom", "wad": "freedoom2", "map": "MAP25", "resolution": "256x192", "fps": 35,
        "image_hw": list(world.meta.image_hw),
        "dit_config": config_to_dict(world.cfg),
        "vae_config": dataclasses.asdict(world.vae.cfg),
        "dit_parameters": sum(p.numel() for p in world.dit.parameters()),
        "vae_parameters": sum(p.numel() for p in world.vae.parameters()),
    })
    if args.card:
        card.update(json.loads(Path(args.card).read_text()))
    if args.eval:
        card["metrics"] = eval_summary(json.loads(Path(args.eval).read_text()))
    world.meta.card = card
    if args.reprojection is not None:  # the shipped setting itself, written once into the file
        world.meta.reprojection = ReprojectionConfig.parse(args.reprojection)
    world.meta.action_low, world.meta.action_high = widen_bounds(world.meta.action_low, world.meta.action_high)
    if not args.fp32:  # weights only: float16 halves the file; loading casts back to float32
        world.dit.half()
        world.vae.half()
    card_md = Path(args.card_md) if args.card_md else Path(args.out).with_suffix(".md")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    world.save(args.out)
    World.load(args.out)  # fail here, not in a user's hands, if the file does not round-trip
    card_md.parent.mkdir(parents=True, exist_ok=True)
    card_md.write_text(card_markdown(card))
    size = Path(args.out).stat().st_size / 2**20
    print(f"wrote {args.out} ({size:.1f} MiB) and {card_md}")


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main()
