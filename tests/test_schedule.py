import numpy as np
import torch

from ase_diffrelax.core.schedule import NoiseSchedule


def test_alpha_bar_is_product_of_alphas_and_decreasing():
    s = NoiseSchedule()
    assert s.T == 1000
    np.testing.assert_allclose(np.cumprod(s.alpha)[1:], s.alpha_bar[1:], rtol=1e-10)
    assert np.all(np.diff(s.alpha_bar) < 0)
    assert abs(s.alpha_bar[-1] - s.s) < 1e-8  # all signal gone at T, down to the precision s
    assert np.all((s.beta[1:] > 0) & (s.beta[1:] <= 0.999))
    # polynomial-cosine form (before the EDM clip, which is inactive below T)
    t = np.arange(0, 900)
    np.testing.assert_allclose(s.alpha_bar[t], (1 - 2e-5) * (1 - (t / 1000) ** 2) ** 2 + 1e-5, rtol=1e-9)


def test_q_sample_statistics_and_t_for_sigma_inverse():
    s = NoiseSchedule()
    x0 = torch.zeros(200000, 3)
    t = torch.full((200000,), 150)
    xt = s.q_sample(x0, t, torch.randn(200000, 3))
    assert abs(xt.std().item() - s.sigma[150]) < 0.01 * s.sigma[150]
    for t in [1, 20, 50, 333, 999]:
        assert s.t_for_sigma(np.array([s.sigma[t]]))[0] == t
        assert s.t_for_sigma(torch.tensor([s.sigma[t] - 1e-9], dtype=torch.float64))[0] == t


def test_ddpm_step_equals_posterior_mean_and_ddim_recovers_x0():
    s = NoiseSchedule()
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(10, 3, generator=g, dtype=torch.float64)
    eps = torch.randn(10, 3, generator=g, dtype=torch.float64)
    for t in [2, 50, 700]:
        tt = torch.full((10,), t)
        xt = s.q_sample(x0, tt, eps)
        # eta = 1, t -> t-1 without noise: the mean of q(x_{t-1} | x_t, x0)
        mean = s.step(xt, tt, tt - 1, eps, eta=1.0, noise=None)
        ab, ab_prev, a, b = s.alpha_bar[t], s.alpha_bar[t - 1], s.alpha[t], s.beta[t]
        expected = (np.sqrt(ab_prev) * b / (1 - ab)) * x0 + (np.sqrt(a) * (1 - ab_prev) / (1 - ab)) * xt
        torch.testing.assert_close(mean, expected, rtol=1e-8, atol=1e-8)
        # the injected variance is the posterior variance
        z = torch.ones(10, 3, dtype=torch.float64)
        noisy = s.step(xt, tt, tt - 1, eps, eta=1.0, noise=z)
        torch.testing.assert_close(noisy - mean, torch.full_like(mean, np.sqrt(s.posterior_var[t])), rtol=1e-8, atol=1e-10)
        # deterministic DDIM with the true noise lands on x0 (to sqrt(ab_0)) and on q's mean path
        x_0 = s.step(xt, tt, torch.zeros(10, dtype=torch.long), eps, eta=0.0)
        torch.testing.assert_close(x_0, np.sqrt(s.alpha_bar[0]) * x0 + s.sigma[0] * eps, rtol=1e-8, atol=1e-10)
        torch.testing.assert_close(s.predict_x0(xt, tt, eps), x0, rtol=1e-8, atol=1e-10)
