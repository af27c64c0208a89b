"""Polynomial-cosine DDPM noise schedule (EDM / MoreRed), kept in float64.

alpha_bar(t) = (1 - 2s) * (1 - (t/T)^2)^2 + s, with the per-step ratios clipped to
>= 0.001 as in EDM, T = 1000 and s = 1e-5. Positions are in Angstrom, so sigma_t is a
per-coordinate displacement scale in Angstrom (sigma_50 ~ 0.07, sigma_300 ~ 0.41).
"""
from __future__ import annotations

import numpy as np
import torch


class NoiseSchedule:
    def __init__(self, T: int = 1000, s: float = 1e-5, power: float = 2.0):
        self.T, self.s, self.power = int(T), float(s), float(power)
        t = np.arange(T + 1, dtype=np.float64)
        f = (1.0 - (t / T) ** 2) ** power
        # EDM's clip_noise_schedule: bound each step's ratio so beta_t never exceeds 0.999
        f = np.concatenate([[1.0], f])
        step = np.clip(f[1:] / f[:-1], 0.001, 1.0)
        f = np.cumprod(step)
        self.alpha_bar = (1.0 - 2.0 * s) * f + s  # index t = 0..T, alpha_bar[0] = 1 - s
        self.alpha = np.concatenate([[self.alpha_bar[0]], self.alpha_bar[1:] / self.alpha_bar[:-1]])
        self.beta = 1.0 - self.alpha
        self.sigma = np.sqrt(1.0 - self.alpha_bar)
        prev = np.concatenate([[1.0], self.alpha_bar[:-1]])
        # variance of q(x_{t-1} | x_t, x_0); 0 at t = 0
        self.posterior_var = self.beta * (1.0 - prev) / (1.0 - self.alpha_bar)
        self._torch = {}

    def todict(self) -> dict:
        return {"T": self.T, "s": self.s, "power": self.power}

    def table(self, name: str, device, dtype=torch.float64) -> torch.Tensor:
        key = (name, str(device), dtype)
        if key not in self._torch:
            self._torch[key] = torch.as_tensor(getattr(self, name), dtype=dtype, device=device)
        return self._torch[key]

    def t_for_sigma(self, sigma: np.ndarray | torch.Tensor):
        """Smallest step t whose sigma_t reaches the given noise scale (inverse of sigma)."""
        if isinstance(sigma, torch.Tensor):
            tab = self.table("sigma", sigma.device, sigma.dtype)
            return torch.searchsorted(tab, sigma.contiguous()).clamp(0, self.T)
        return np.clip(np.searchsorted(self.sigma, sigma), 0, self.T)

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(alpha_bar_t) x0 + sigma_t eps, with t given per atom."""
        ab = self.table("alpha_bar", x0.device)[t].unsqueeze(-1)
        return (ab.sqrt() * x0.double() + (1 - ab).sqrt() * noise.double()).to(x0.dtype)

    def predict_x0(self, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        ab = self.table("alpha_bar", x_t.device)[t].unsqueeze(-1)
        return ((x_t.double() - (1 - ab).sqrt() * eps.double()) / ab.sqrt()).to(x_t.dtype)

    def step(self, x_t, t, t_next, eps, eta: float, noise=None):
        """Move from step t to t_next < t given the predicted noise (per-atom t, t_next).

        eta = 1 with t_next = t - 1 is the DDPM ancestral step (posterior variance);
        eta = 0 is the deterministic DDIM update; values between interpolate the noise.
        """
        ab = self.table("alpha_bar", x_t.device)
        ab_t = ab[t].unsqueeze(-1)
        ab_n = torch.where(t_next >= 0, ab[t_next.clamp(min=0)], torch.ones_like(ab[t])).unsqueeze(-1)
        x0 = (x_t.double() - (1 - ab_t).sqrt() * eps.double()) / ab_t.sqrt()
        # DDIM sigma: eta * sqrt((1-ab_n)/(1-ab_t)) * sqrt(1 - ab_t/ab_n)
        var = (eta**2) * (1 - ab_n) / (1 - ab_t) * (1 - ab_t / ab_n)
        var = var.clamp(min=0.0)
        dir_coef = (1 - ab_n - var).clamp(min=0.0).sqrt()
        x = ab_n.sqrt() * x0 + dir_coef * eps.double()
        if noise is not None and eta > 0:
            x = x + var.sqrt() * noise.double()
        return x.to(x_t.dtype)
