"""Stage 3, adversarial post-training: student forcing, per-frame discriminator, long-video segments.

Generator: from the distillation weights, one evaluation per frame at t = 1, rolled out from
the clip's first latent with a differentiable KV cache, recycling its own detached outputs.
Discriminator: the same transformer from the diffusion weights with a fresh logit head; the
clip's frames, noised at t ~ U(0, 1) (unshifted), go in its noisy slot, the previous frame of
the same clip in its recycled slot, and it emits one logit per frame.

One iteration = one generator update, then one discriminator update (alternating):
1. Generator: roll out segment 0 (the batch's length, cameras, first frames); if `extensions`
   > 0, continue segment by segment, each sharing `overlap` frames with the previous one,
   with the previous segment's cache detached and new cameras from other real clips; after
   each segment its loss -E[f_G(D(fake) - D(real))] is back-propagated on its own.
2. Discriminator: the same (detached) segments against real clips of the same length:
   -E[f_D(D(fake) - D(real))] + approximate R1 (real) + R2 (fake).
RMSProp (alpha 0.9) for both. `teacher_forcing=True` (supplementary F) predicts every frame
in parallel from ground truth and lets the discriminator score each output against the real
past through its KV cache. At the end the world file is exported.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from train.dataset import ClipDataset, DatasetConfig
from train.losses import approx_r_penalty, discriminator_loss, generator_loss
from train.rollout import SegmentRollout, disc_logits, disc_logits_teacher_forced, teacher_forced_generate
from train.shards import read_shard_poses
from train.stages.loop import Stage
from worldmodel.camera import poses_to_actions
from worldmodel.dit import WorldDiT
from worldmodel.parallel import reshard
from worldmodel.world import World, WorldMeta


MIN_HALF_WIDTH = 1e-3
"""Smallest half-width of an action bound (scene units or radians)."""


def widen_bounds(low: np.ndarray, high: np.ndarray) -> tuple[list[float], list[float]]:
    """Make every (low, high) pair at least 2 * MIN_HALF_WIDTH wide, centred where it was degenerate."""
    low, high = np.asarray(low, dtype=np.float64), np.asarray(high, dtype=np.float64)
    mid = (low + high) / 2
    narrow = high - low < 2 * MIN_HALF_WIDTH
    return np.where(narrow, mid - MIN_HALF_WIDTH, low).tolist(), np.where(narrow, mid + MIN_HALF_WIDTH, high).tolist()


class AdversarialStage(Stage):
    """Adversarial post-training (student forcing by default)."""

    name = "adversarial"

    def build(self) -> None:
        st, adv = self.cfg.stage, self.cfg.stage.adversarial
        if not st.init or not adv.disc_init:
            raise ValueError("stage.init (distillation weights) and stage.adversarial.disc_init (diffusion weights) "
                             "are both required")
        self.gen = self.new_model(st.init, zero=self.cfg.parallel.generator_zero)
        self.disc = self.new_model(adv.disc_init, logit_head=True, allow_missing=("logit_head.",))
        self.opt_g = torch.optim.RMSprop(self.gen.parameters(), lr=st.lr, alpha=adv.rmsprop_alpha)
        self.opt_d = torch.optim.RMSprop(self.disc.parameters(), lr=adv.disc_lr, alpha=adv.rmsprop_alpha)
        self.models = {"generator": self.gen, "discriminator": self.disc}
        self.optimizers = {"gen": self.opt_g, "disc": self.opt_d}

    @property
    def generator(self) -> WorldDiT:
        return self.gen

    # ---- pieces -------------------------------------------------------------------------------

    def d_time_noise(self, video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Discriminator time t ~ U(0, 1), unshifted, one per clip, and the noise for its frames."""
        return self.rand(video.shape[0]), self.randn(video[:, 1:].shape)

    def d_losses(self, fake: torch.Tensor, fake_cam: torch.Tensor, real: torch.Tensor,
                 real_cam: torch.Tensor) -> dict[str, torch.Tensor]:
        """Pairing loss + R1 + R2 of one (fake, real) pair of clips (B, 1+F, ...), fake detached."""
        adv = self.cfg.stage.adversarial
        t, noise = self.d_time_noise(real)
        lf = disc_logits(self.disc, fake, fake_cam, t, noise)  # (B, F): one logit per frame
        lr = disc_logits(self.disc, real, real_cam, t, noise)
        r1 = approx_r_penalty(lambda x: disc_logits(self.disc, x, real_cam, t, noise), real, lr,
                              adv.r_sigma, adv.r_weight, self.noise_gen)
        r2 = approx_r_penalty(lambda x: disc_logits(self.disc, x, fake_cam, t, noise), fake, lf,
                              adv.r_sigma, adv.r_weight, self.noise_gen)
        d = discriminator_loss(lf, lr)
        return {"d_loss": d, "r1": r1, "r2": r2, "d_total": d + r1 + r2, "d_real_minus_fake": (lr - lf).mean()}

    def g_loss(self, fake: torch.Tensor, fake_cam: torch.Tensor, real: torch.Tensor, real_cam: torch.Tensor) -> torch.Tensor:
        """Generator pairing loss of one segment (discriminator frozen)."""
        t, noise = self.d_time_noise(real)
        with torch.no_grad():
            lr = disc_logits(self.disc, real, real_cam, t, noise)
        reshard(self.disc)  # FSDP2: parameters gathered under no_grad must not serve the grad forward
        return generator_loss(disc_logits(self.disc, fake, fake_cam, t, noise), lr)

    # ---- iterations ---------------------------------------------------------------------------

    def train_step(self, batch: dict[str, Any], step: int) -> dict[str, float]:
        if self.cfg.stage.adversarial.teacher_forcing:
            return self.teacher_forcing_step(batch)
        adv, recycle = self.cfg.stage.adversarial, self.cfg.stage.recycle
        z, cam = batch["latents"], batch["camera"]  # (B, 1+F, C, h, w), (B, F, Cc, h, w)
        F = cam.shape[1]
        if adv.extensions and not 0 <= adv.overlap < F:
            raise ValueError(f"adversarial.overlap={adv.overlap} must be in [0, {F}) for {F}-frame segments")

        # 1. generator, segment by segment
        self.disc.requires_grad_(False)
        roll = SegmentRollout(self.gen, z[:, 0], recycle)
        video = torch.cat([z[:, :1], roll.run(cam, self.randn(z[:, 1:].shape))], 1)  # (B, 1+F, ...)
        segments = [(video, cam, z, cam)]  # (fake, fake camera, real, real camera)
        g = self.g_loss(video, cam, z, cam)
        self.guard({"g_loss": g})
        g.backward()
        g_losses = [g.item()]
        hist, hist_cam = video.detach(), cam
        for _ in range(adv.extensions):
            roll.detach()  # the previous segment stays visible in the cache, without gradient
            new_cam = self.stream.sample_like(batch, F - adv.overlap)["camera"]  # new camera trajectory
            new = roll.run(new_cam, self.randn((z.shape[0], F - adv.overlap, *z.shape[2:])))
            seg = torch.cat([hist[:, hist.shape[1] - adv.overlap - 1 :], new], 1)  # (B, 1+F, ...)
            seg_cam = torch.cat([hist_cam[:, hist_cam.shape[1] - adv.overlap :], new_cam], 1)  # (B, F, ...)
            real = self.stream.sample_like(batch, F)
            g = self.g_loss(seg, seg_cam, real["latents"], real["camera"])
            self.guard({"g_loss": g})
            g.backward()  # back-propagate this segment only
            g_losses.append(g.item())
            segments.append((seg, seg_cam, real["latents"], real["camera"]))
            hist, hist_cam = torch.cat([hist, new.detach()], 1), torch.cat([hist_cam, new_cam], 1)
        self.disc.requires_grad_(True)
        gnorm_g = self.update(self.opt_g, self.gen)
        self.opt_d.zero_grad(set_to_none=True)

        # 2. discriminator on the same segments
        logs: dict[str, float] = {}
        for fake, fcam, real, rcam in segments:
            d = self.d_losses(fake.detach(), fcam, real, rcam)
            self.guard({k: d[k] for k in ("d_loss", "r1", "r2")})
            (d["d_total"] / len(segments)).backward()
            for k, v in d.items():
                logs[k] = logs.get(k, 0.0) + v.item() / len(segments)
        gnorm_d = self.update(self.opt_d, self.disc)
        return {"g_loss": float(np.mean(g_losses)), **logs, "g_loss_last_segment": g_losses[-1],
                "grad_norm_g": gnorm_g, "grad_norm_d": gnorm_d, "frames_generated": float(hist.shape[1] - 1)}

    def teacher_forcing_step(self, batch: dict[str, Any]) -> dict[str, float]:
        """Supplementary F: parallel generation from ground truth; causal per-output discrimination."""
        adv = self.cfg.stage.adversarial
        z, cam = batch["latents"], batch["camera"]
        self.disc.requires_grad_(False)
        fake = teacher_forced_generate(self.gen, z, cam, self.randn(z[:, 1:].shape), self.cfg.stage.recycle)
        t, noise = self.d_time_noise(z)
        lf, lr = disc_logits_teacher_forced(self.disc, z, fake, cam, t, noise)
        g = generator_loss(lf, lr.detach())
        self.guard({"g_loss": g})
        g.backward()
        self.disc.requires_grad_(True)
        gnorm_g = self.update(self.opt_g, self.gen)
        self.opt_d.zero_grad(set_to_none=True)

        fake = fake.detach()
        t, noise = self.d_time_noise(z)
        lf, lr = disc_logits_teacher_forced(self.disc, z, fake, cam, t, noise)
        r1 = approx_r_penalty(lambda x: disc_logits(self.disc, x, cam, t, noise), z, lr, adv.r_sigma, adv.r_weight,
                              self.noise_gen)
        r2 = approx_r_penalty(lambda x: disc_logits_teacher_forced(self.disc, z, x, cam, t, noise)[0], fake, lf,
                              adv.r_sigma, adv.r_weight, self.noise_gen)
        d = discriminator_loss(lf, lr)
        self.guard({"d_loss": d, "r1": r1, "r2": r2})
        (d + r1 + r2).backward()
        gnorm_d = self.update(self.opt_d, self.disc)
        return {"g_loss": g.item(), "d_loss": d.item(), "r1": r1.item(), "r2": r2.item(),
                "grad_norm_g": gnorm_g, "grad_norm_d": gnorm_d}

    # ---- export -------------------------------------------------------------------------------

    def action_bounds(self) -> tuple[list[float], list[float]]:
        """1st / 99th percentile of every action component over the training shards.

        A component the data never moves (Doom: pitch and roll) gets a sliver of range,
        MIN_HALF_WIDTH around its value: the env needs low < high, and the sliver says
        "not trained on" without letting agents command large unseen motions."""
        ds = self.stream.dataset(0)
        acts = [poses_to_actions(read_shard_poses(Path(ds.cfg.root) / s.path)["c2w"], self.model_cfg.frames_per_step)
                for s in ds.shards]
        a = np.concatenate(acts)
        return widen_bounds(np.percentile(a, 1, axis=0), np.percentile(a, 99, axis=0))

    def start_frames(self, hw: tuple[int, int]) -> np.ndarray:
        """First frames (uint8 (S, H, W, 3)) of validation shards (training shards if there is no validation split)."""
        for split in ("val", "train"):
            try:
                ds = ClipDataset(DatasetConfig(root=self.cfg.data.root, split=split, steps=[1],
                                               resolutions=[list(hw)], frames_per_step=self.model_cfg.frames_per_step),
                                 self.camera_stats, rank=0, world_size=1)
            except ValueError:
                continue
            firsts = sorted({i: (i, s) for i, s in reversed(ds.windows[1])}.values())[: self.cfg.data.start_frames]
            if firsts:
                videos = [ds[(i, s, 1, 0)]["video"][0] for i, s in firsts]  # (3, H, W) in [-1, 1]
                return np.stack([((v.permute(1, 2, 0) + 1) * 127.5).round().clamp(0, 255).byte().numpy() for v in videos])
        raise ValueError(f"no shards in {self.cfg.data.root} to take start frames from")

    def finish(self, summary: dict[str, Any]) -> None:
        from worldmodel.checkpoint import save_world_model

        disc, gen = self.exportable(self.disc), self.exportable(self.gen)  # collectives when sharded
        if not self.dist.is_main:
            return
        save_world_model(self.run_dir / "discriminator.safetensors", disc, disc.cfg, self.camera_stats)
        out = self.cfg.stage.adversarial.world_out
        if not out:
            return
        hw = tuple(self.cfg.data.curriculum[0].resolutions[0])
        clip = self.fixed_clips(1)
        low, high = self.action_bounds()
        meta = WorldMeta(image_hw=hw, intrinsics=clip["intrinsics"][0].tolist(), action_low=low, action_high=high,
                         card={"stages": "diffusion -> distill -> adversarial", "adversarial_steps": self.step,
                               "data": self.cfg.data.root, "extensions": self.cfg.stage.adversarial.extensions})
        World(gen.eval(), self.vae, meta, self.camera_stats, self.start_frames(hw)).save(out)
        summary["world"] = out
