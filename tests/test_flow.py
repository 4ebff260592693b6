"""The flow-matching schedule: shift, grid, noising, consistency function, Euler sampler."""

import torch

from worldmodel.flow import (
    add_noise,
    consistency_grid,
    denoise,
    euler_sample,
    sample_train_time,
    shift_time,
    velocity_target,
)


def test_shift_matches_formula_and_keeps_endpoints():
    """shift(t, s) = s t / (1 + (s - 1) t): 0 -> 0, 1 -> 1, 0.5 -> 0.96 at s = 24, monotone."""
    t = torch.linspace(0, 1, 101)
    s = shift_time(t, 24.0)
    assert s[0] == 0 and torch.isclose(s[-1], torch.tensor(1.0))
    assert torch.isclose(shift_time(torch.tensor(0.5), 24.0), torch.tensor(12 / 12.5))
    assert (s[1:] > s[:-1]).all()
    assert torch.allclose(shift_time(t, 1.0), t)  # s = 1 is the identity


def test_consistency_grid_is_uniform_then_shifted():
    """33 points from 0 to 1, strictly increasing, equal to shift(linspace(0, 1, 33), 24)."""
    g = consistency_grid(32, 24.0)
    assert g.shape == (33,) and g[0] == 0 and torch.isclose(g[-1], torch.tensor(1.0))
    assert (g[1:] > g[:-1]).all()
    torch.testing.assert_close(g, shift_time(torch.linspace(0, 1, 33), 24.0))
    assert g[16] > 0.9  # s = 24 spends most steps at high noise


def test_noise_and_consistency_function_invert_each_other():
    """x_t = (1-t) x0 + t eps; f(x_t, t) = x_t - t v recovers x0 with the true velocity; f(x, 0) = x."""
    x0, eps = torch.randn(3, 2, 4, 5), torch.randn(3, 2, 4, 5)
    t = torch.tensor([0.0, 0.3, 1.0])
    xt = add_noise(x0, eps, t)
    torch.testing.assert_close(xt[0], x0[0])
    torch.testing.assert_close(xt[2], eps[2])
    torch.testing.assert_close(denoise(xt, velocity_target(x0, eps), t), x0)
    torch.testing.assert_close(denoise(xt, torch.randn_like(xt), torch.zeros(3)), xt)


def test_euler_sampler_is_exact_on_straight_paths_and_one_step_is_eps_minus_v():
    """With the true (constant) velocity any grid integrates back to x0; grid [0, 1] is x0 = eps - v."""
    x0, eps = torch.randn(2, 3, 4), torch.randn(2, 3, 4)
    calls = []

    def v(x, t):
        calls.append(t)
        return eps - x0

    torch.testing.assert_close(euler_sample(v, eps, consistency_grid(32, 24.0)), x0)
    assert len(calls) == 32 and torch.allclose(calls[0], torch.ones(2))
    torch.testing.assert_close(euler_sample(v, eps, torch.tensor([0.0, 1.0])), eps - (eps - x0))


def test_train_times_are_shifted_and_seeded():
    """Same generator seed, same times; the shift pushes the median above 0.9."""
    a = sample_train_time(4096, 24.0, torch.Generator().manual_seed(1))
    b = sample_train_time(4096, 24.0, torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and a.median() > 0.9 and 0 <= a.min() and a.max() <= 1
