"""PaiNN-style equivariant denoiser with a noise head and a time-step head (MoreRed-JT).

One backbone pass gives invariant features s (N, F) and equivariant features v (N, 3, F).
The time head reads s only (invariant, mean over a molecule's atoms, target t/T); the noise
head reads (s, v) plus an embedding of the step it is told to denoise at, and returns one
equivariant vector per atom with zero centre of geometry per molecule.
Scatter operations use native ``index_add_`` so torch-scatter is never needed.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as Fn
from torch import nn

DEFAULT_ELEMENTS = (1, 6, 7, 8, 9)  # H C N O F


@dataclass
class ModelConfig:
    features: int = 128
    blocks: int = 3
    rbf: int = 20
    cutoff: float = 5.0
    elements: tuple = DEFAULT_ELEMENTS
    time_features: int = 16
    # what the time head regresses: "log_sigma" (log of the per-coordinate noise scale; fine
    # resolution at the low steps where relaxation ends) or "t_frac" (t/T, as in MoreRed)
    time_target: str = "log_sigma"
    schedule_T: int = 1000
    schedule_s: float = 1e-5

    def todict(self) -> dict:
        d = asdict(self)
        d["elements"] = list(self.elements)
        return d

    @classmethod
    def fromdict(cls, d: dict) -> "ModelConfig":
        d = dict(d)
        d["elements"] = tuple(int(z) for z in d.get("elements", DEFAULT_ELEMENTS))
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


def scatter_sum(src: torch.Tensor, index: torch.Tensor, size: int) -> torch.Tensor:
    out = src.new_zeros((size,) + src.shape[1:])
    return out.index_add_(0, index, src)


def scatter_mean(src, index, size):
    total = scatter_sum(src, index, size)
    count = scatter_sum(torch.ones_like(index, dtype=src.dtype), index, size).clamp(min=1)
    return total / count.view((-1,) + (1,) * (src.dim() - 1))


def remove_mean(x: torch.Tensor, mol: torch.Tensor, n_mol: int) -> torch.Tensor:
    """Project per-atom vectors onto the zero centre-of-geometry subspace, per molecule."""
    return x - scatter_mean(x, mol, n_mol)[mol]


def molecule_pairs(mol: torch.Tensor, n_mol: int):
    """All ordered intra-molecular atom pairs (i != j) of a flat batch, without a Python loop."""
    counts = torch.bincount(mol, minlength=n_mol)
    starts = torch.cumsum(counts, 0) - counts
    per_atom = counts[mol]  # partners of each atom incl. itself
    i = torch.repeat_interleave(torch.arange(len(mol), device=mol.device), per_atom)
    # position of each (i, j) entry within i's block
    block_start = torch.cumsum(per_atom, 0) - per_atom
    k = torch.arange(len(i), device=mol.device) - block_start[i]
    j = starts[mol[i]] + k
    keep = i != j
    return i[keep], j[keep]


class RadialBasis(nn.Module):
    """Sine radial basis (PaiNN) times a cosine cutoff."""

    def __init__(self, n: int, cutoff: float):
        super().__init__()
        self.cutoff = cutoff
        self.register_buffer("freq", torch.arange(1, n + 1, dtype=torch.float32) * math.pi / cutoff)

    def forward(self, d: torch.Tensor):
        rbf = torch.sin(d.unsqueeze(-1) * self.freq) / d.unsqueeze(-1)
        fcut = 0.5 * (torch.cos(d * math.pi / self.cutoff) + 1.0) * (d < self.cutoff)
        return rbf, fcut


class PaiNNInteraction(nn.Module):
    def __init__(self, F: int, n_rbf: int):
        super().__init__()
        self.phi = nn.Sequential(nn.Linear(F, F), nn.SiLU(), nn.Linear(F, 3 * F))
        self.W = nn.Linear(n_rbf, 3 * F)

    def forward(self, s, v, i, j, rbf, fcut, unit):
        F = s.shape[-1]
        x = self.phi(s)[j] * self.W(rbf) * fcut.unsqueeze(-1)
        ds, dvv, dvs = torch.split(x, F, dim=-1)
        dv = dvv.unsqueeze(1) * v[j] + dvs.unsqueeze(1) * unit.unsqueeze(-1)
        return s + scatter_sum(ds, i, len(s)), v + scatter_sum(dv, i, len(s))


class PaiNNMixing(nn.Module):
    def __init__(self, F: int):
        super().__init__()
        self.UV = nn.Linear(F, 2 * F, bias=False)
        self.mlp = nn.Sequential(nn.Linear(2 * F, F), nn.SiLU(), nn.Linear(F, 3 * F))

    def forward(self, s, v):
        F = s.shape[-1]
        Uv, Vv = torch.split(self.UV(v), F, dim=-1)
        Vnorm = torch.sqrt((Vv**2).sum(1) + 1e-8)
        a_vv, a_sv, a_ss = torch.split(self.mlp(torch.cat([s, Vnorm], -1)), F, dim=-1)
        return s + a_ss + a_sv * (Uv * Vv).sum(1), v + a_vv.unsqueeze(1) * Uv


class GatedEquivariantBlock(nn.Module):
    def __init__(self, F_in: int, F_out: int, s_in: int | None = None, activate: bool = True):
        super().__init__()
        self.F_out = F_out
        self.W = nn.Linear(F_in, 2 * F_out, bias=False)
        self.mlp = nn.Sequential(nn.Linear((s_in or F_in) + F_out, F_in), nn.SiLU(), nn.Linear(F_in, 2 * F_out))
        self.activate = activate

    def forward(self, s, v):
        W1v, W2v = torch.split(self.W(v), self.F_out, dim=-1)
        x = self.mlp(torch.cat([s, torch.sqrt((W2v**2).sum(1) + 1e-8)], -1))
        s_out, gate = torch.split(x, self.F_out, dim=-1)
        if self.activate:
            s_out = Fn.silu(s_out)
        return s_out, gate.unsqueeze(1) * W1v


def time_embedding(t_frac: torch.Tensor, n: int) -> torch.Tensor:
    """Fourier features of t/T (log-spaced frequencies: low t needs fine resolution)."""
    freqs = torch.exp(torch.linspace(0.0, math.log(200.0), n // 2, device=t_frac.device))
    x = t_frac.unsqueeze(-1) * freqs
    return torch.cat([torch.sin(x), torch.cos(x)], -1)


class Denoiser(nn.Module):
    def __init__(self, config: ModelConfig | None = None):
        super().__init__()
        self.config = c = config or ModelConfig()
        F = c.features
        table = torch.full((max(c.elements) + 1,), -1, dtype=torch.long)
        table[list(c.elements)] = torch.arange(len(c.elements))
        self.register_buffer("element_index", table, persistent=False)
        self.embedding = nn.Embedding(len(c.elements), F)
        self.rbf = RadialBasis(c.rbf, c.cutoff)
        self.interactions = nn.ModuleList(PaiNNInteraction(F, c.rbf) for _ in range(c.blocks))
        self.mixings = nn.ModuleList(PaiNNMixing(F) for _ in range(c.blocks))
        self.norms = nn.ModuleList(nn.LayerNorm(F) for _ in range(c.blocks))
        self.time_head = nn.Sequential(nn.Linear(F, F // 2), nn.SiLU(), nn.Linear(F // 2, 1))
        from .schedule import NoiseSchedule

        self.schedule = sched = NoiseSchedule(c.schedule_T, c.schedule_s)  # the one schedule of this model
        self.register_buffer("log_sigma_table", torch.tensor(np.log(sched.sigma), dtype=torch.float32),
                             persistent=False)
        self.noise_in = nn.Linear(F + c.time_features, F)
        self.noise_head = nn.ModuleList(
            [GatedEquivariantBlock(F, F // 2), GatedEquivariantBlock(F // 2, 1, activate=False)]
        )

    def compile_blocks(self) -> None:
        """torch.compile the message-passing and noise-head blocks (dynamic shapes: batches differ).

        On CPU the per-edge products of the interaction blocks are memory-bound; fused by the
        compiler a drug-size training step runs ~3x faster (benchmarks/train_speed.py).
        The parameter names and the state dict stay as they are."""
        import os
        import shutil

        if not any(shutil.which(c) for c in (os.environ.get("CXX", ""), "g++", "c++", "clang++") if c):
            # without this check torch fails at the first forward pass, deep inside its compiler
            raise RuntimeError("compile=True needs a C++ compiler (g++ or clang++, or $CXX) for torch.compile; "
                               "install one or leave compile off (same results, slower)")
        for block in (*self.interactions, *self.mixings, *self.noise_head):
            block.compile(dynamic=True)

    def known(self, numbers: torch.Tensor) -> torch.Tensor:
        ok = numbers < len(self.element_index)
        return ok & (self.element_index[numbers.clamp(max=len(self.element_index) - 1)] >= 0)

    def representation(self, numbers, positions, mol, n_mol, pairs=None):
        i, j = pairs if pairs is not None else molecule_pairs(mol, n_mol)
        r = positions[j] - positions[i]
        d = torch.sqrt((r**2).sum(-1) + 1e-12)
        # pairs beyond the cutoff contribute exactly zero (cosine cutoff): drop them before the messages
        keep = d < self.config.cutoff
        i, j, r, d = i[keep], j[keep], r[keep], d[keep]
        rbf, fcut = self.rbf(d)
        unit = r / d.unsqueeze(-1)
        s = self.embedding(self.element_index[numbers])
        v = s.new_zeros((len(s), 3, s.shape[-1]))
        for inter, mix, norm in zip(self.interactions, self.mixings, self.norms):
            s, v = inter(s, v, i, j, rbf, fcut, unit)
            s, v = mix(s, v)
            # normalise both feature kinds: without it, the densely packed atoms of high-t
            # inputs make the outputs explode (MoreRed saw this too; clipping alone is not enough)
            s = norm(s)
            v = v / torch.sqrt((v**2).sum(1).mean(-1, keepdim=True) + 1.0).unsqueeze(1)
        return s, v

    def time_output(self, s, mol, n_mol) -> torch.Tensor:
        """Raw time-head output per molecule, in the units of ``config.time_target``."""
        return scatter_mean(self.time_head(s).squeeze(-1), mol, n_mol)

    def predict_time(self, s, mol, n_mol) -> torch.Tensor:
        """Predicted t/T per molecule, continuous (clip to [0, 1] before use)."""
        out = self.time_output(s, mol, n_mol)
        if self.config.time_target == "t_frac":
            return out
        return self.log_sigma_to_t_frac(out)

    def log_sigma_to_t_frac(self, log_sigma: torch.Tensor) -> torch.Tensor:
        """Invert the schedule: the (interpolated) step whose log sigma_t equals the input, over T."""
        tab = self.log_sigma_table
        x = log_sigma.detach().float().clamp(float(tab[0]), float(tab[-1])).contiguous()
        hi = torch.searchsorted(tab, x).clamp(1, len(tab) - 1)
        lo = hi - 1
        frac = (x - tab[lo]) / (tab[hi] - tab[lo]).clamp(min=1e-12)
        return (lo.float() + frac) / (len(tab) - 1)

    def predict_noise(self, s, v, t_frac_atom, mol, n_mol) -> torch.Tensor:
        h = self.noise_in(torch.cat([s, time_embedding(t_frac_atom, self.config.time_features)], -1))
        for block in self.noise_head:
            h, v = block(h, v)
        return remove_mean(v.squeeze(-1), mol, n_mol)

    def forward(self, numbers, positions, mol, n_mol, t_frac=None, pairs=None):
        """Returns (t_hat/T per molecule, eps_hat per atom).

        Noise is predicted at ``t_frac`` (per molecule) when given, else at the predicted step.
        """
        s, v = self.representation(numbers, positions, mol, n_mol, pairs)
        t_hat = self.predict_time(s, mol, n_mol)
        t_use = t_hat.detach().clamp(0, 1) if t_frac is None else t_frac
        eps = self.predict_noise(s, v, t_use[mol], mol, n_mol)
        return t_hat, eps
