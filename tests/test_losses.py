"""Losses: relativistic pairing with f_G / f_D, approximate R1/R2 against a hand computation, MSEs."""

import math

import torch

from train.losses import (
    approx_r_penalty,
    consistency_loss,
    discriminator_loss,
    f_discriminator,
    f_generator,
    flow_matching_loss,
    generator_loss,
)


def test_f_g_and_f_d_match_the_paper():
    """f_G(x) = -log(1 + e^-x), f_D(x) = -log(1 + e^x) at hand-checked points."""
    x = torch.tensor([-2.0, 0.0, 3.0])
    torch.testing.assert_close(f_generator(x), torch.tensor([-math.log(1 + math.e**2), -math.log(2), -math.log(1 + math.e**-3)]))
    torch.testing.assert_close(f_discriminator(x), torch.tensor([-math.log(1 + math.e**-2), -math.log(2), -math.log(1 + math.e**3)]))


def test_pairing_losses_reward_the_right_player():
    """G's loss falls as D(fake) - D(real) grows; D's loss rises; both are mean softplus over (B, F) logits."""
    real = torch.zeros(2, 3)
    lo, hi = torch.full((2, 3), -1.0), torch.full((2, 3), 1.0)
    assert generator_loss(hi, real) < generator_loss(lo, real)
    assert discriminator_loss(hi, real) > discriminator_loss(lo, real)
    torch.testing.assert_close(generator_loss(hi, real), torch.tensor(math.log(1 + math.e**-1)))
    torch.testing.assert_close(discriminator_loss(hi, real), torch.tensor(math.log(1 + math.e)))


def test_approximate_r1_matches_its_definition_by_hand():
    """lambda * mean ||D(x) - D(x + sigma n)||^2 for a linear per-frame D, with the same n drawn by hand."""
    w = torch.randn(4, 5)

    def disc(x):  # x (B, F, 4, 5) -> (B, F) logits
        return (x * w).sum((-1, -2))

    x = torch.randn(2, 3, 4, 5)
    got = approx_r_penalty(disc, x, disc(x), sigma=0.1, weight=1000.0, generator=torch.Generator().manual_seed(3))
    n = torch.randn(x.shape, generator=torch.Generator().manual_seed(3))
    by_hand = 1000.0 * ((0.1 * n * w).sum((-1, -2)) ** 2).mean()  # D linear: D(x) - D(x + s n) = -s D(n)
    torch.testing.assert_close(got, by_hand)
    assert approx_r_penalty(lambda y: torch.zeros(2, 3), x, torch.zeros(2, 3)) == 0  # flat D: no penalty
    assert got.requires_grad is False and approx_r_penalty(disc, x.requires_grad_(), disc(x)).requires_grad


def test_regression_losses_are_mse_and_consistency_target_is_stop_grad():
    """Flow matching is plain MSE; the consistency target receives no gradient."""
    a, b = torch.randn(3, 4, requires_grad=True), torch.randn(3, 4, requires_grad=True)
    torch.testing.assert_close(flow_matching_loss(a, b), ((a - b) ** 2).mean())
    consistency_loss(a, b).backward()
    assert a.grad is not None and b.grad is None
