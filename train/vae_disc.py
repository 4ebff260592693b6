"""Patch discriminator for the light decoder's adversarial fine-tuning (`python -m train.vae phase=light adv_weight=...`).

L1 and MSE reconstruction losses average away the textures a decoder cannot place exactly, and
at 8x spatial compression Doom's brick and floor patterns are exactly those: the decoded frames
come out smooth, and the feature-based camera estimator of the eval finds little to match. A
small convolutional discriminator that scores overlapping patches of single frames pushes the
decoder to draw plausible texture instead (the recipe of image-codec and latent-diffusion VAEs).
It only ever sees frames, so it leaves the latent space and everything trained on it untouched.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class PatchDiscriminator(nn.Module):
    """Frames (N, 3, H, W) in [-1, 1] -> one logit per overlapping patch (N, P).

    `downsamples` stride-2 convolutions set the patch size (receptive field 7 * 2**downsamples
    pixels): small patches judge texture, not layout.
    """

    def __init__(self, channels: int = 32, downsamples: int = 2, image_channels: int = 3) -> None:
        super().__init__()
        if channels < 1 or downsamples < 1:
            raise ValueError(f"channels={channels} and downsamples={downsamples} must be >= 1")
        layers: list[nn.Module] = [nn.Conv2d(image_channels, channels, 3, padding=1), nn.LeakyReLU(0.2)]
        c = channels
        for _ in range(downsamples):
            layers += [nn.Conv2d(c, 2 * c, 4, stride=2, padding=1), nn.GroupNorm(8, 2 * c), nn.LeakyReLU(0.2)]
            c *= 2
        layers += [nn.Conv2d(c, c, 3, padding=1), nn.GroupNorm(8, c), nn.LeakyReLU(0.2), nn.Conv2d(c, 1, 3, padding=1)]
        self.net = nn.Sequential(*layers)

    def forward(self, frames: Tensor) -> Tensor:
        if frames.ndim != 4 or frames.shape[1] != self.net[0].in_channels:
            raise ValueError(f"frames have shape {tuple(frames.shape)}, expected (N, {self.net[0].in_channels}, H, W)")
        return self.net(frames).flatten(1)  # (N, P)

