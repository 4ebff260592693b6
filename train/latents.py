"""Clips -> normalised VAE latents, encoded on the fly with the frozen VAE.

Windows are encoded one by one: a causal VAE's latents of a window depend on where the
window starts, so they cannot be cut from a whole encoded shard. The training data stream
(train/stages/data.py) caches encoded windows, which come back every epoch.
"""

from __future__ import annotations

from pathlib import Path

import torch

from worldmodel.vae import CausalVAE, load_vae


def load_frozen_vae(path: str | Path, device: torch.device) -> CausalVAE:
    """The trained VAE in eval mode with gradients off; a clear error if it is missing."""
    if not Path(path).is_file():
        raise FileNotFoundError(
            f"VAE checkpoint {path} does not exist; train it first (python -m train.vae phase=recon, then phase=light) "
            f"or pass data.vae=PATH"
        )
    vae = load_vae(path, device)
    for p in vae.parameters():
        p.requires_grad_(False)
    return vae.eval()


def encode_clips(vae: CausalVAE, videos: torch.Tensor) -> torch.Tensor:
    """Videos (B, 1+4k, 3, H, W) in [-1, 1] -> normalised latents (B, 1+k, C, H/8, W/8) (posterior mean)."""
    with torch.no_grad():
        return vae.encode(videos.to(next(vae.parameters()).device))
