"""The one path from the network to a denoised estimate, shared by the sampler, the calculator
and validation during training: backbone -> t_hat -> integer step -> eps at that step -> x0_hat.

Rounding of the time head (t/T -> integer step, clipped to [0, T]) happens here and only here.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from .model import molecule_pairs


@dataclass
class Denoised:
    t_hat: torch.Tensor  # (M,) continuous predicted step, in steps
    t_hat_step: torch.Tensor  # (M,) long, t_hat rounded to a step (before any calibration)
    t: torch.Tensor  # (M,) long, the step eps was predicted at
    eps: torch.Tensor  # (N, 3) predicted noise, zero mean per molecule
    x0_hat: torch.Tensor  # (N, 3) denoised estimate (x - sigma_t eps) / sqrt(alpha_bar_t)


def denoise(net, schedule, numbers: torch.Tensor, x: torch.Tensor, mol: torch.Tensor, n_mol: int,
            choose_t: Callable[[torch.Tensor], torch.Tensor] | None = None, pairs=None) -> Denoised:
    """One model evaluation. ``choose_t(t_hat_step) -> t`` picks the step to denoise at
    (a policy's rule, or a fixed step); default: the rounded prediction itself."""
    T = schedule.T
    s, v = net.representation(numbers, x, mol, n_mol, pairs if pairs is not None else molecule_pairs(mol, n_mol))
    t_frac = net.predict_time(s, mol, n_mol).clamp(0.0, 1.0)
    t_hat_step = torch.round(t_frac * T).long()
    t = t_hat_step if choose_t is None else choose_t(t_hat_step)
    t = t.clamp(0, T)
    eps = net.predict_noise(s, v, (t.float() / T)[mol], mol, n_mol)
    x0_hat = schedule.predict_x0(x, t[mol], eps)
    return Denoised(t_frac * T, t_hat_step, t, eps, x0_hat)
