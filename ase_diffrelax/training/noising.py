"""What the network is trained on: equilibrium geometries made noisy in two ways.

* Gaussian: x_t = sqrt(ab_t) x0 + sigma_t eps with t drawn mostly from low/mid steps
  (where relaxation happens) but covering the whole range (so the time head recognises
  badly distorted inputs).
* MMFF (optional, ``mmff_fraction``): x = sqrt(ab_t) x0 + lam * d + sigma_g eps_g, where d is
  the aligned MMFF94-minus-reference displacement of the same molecule. t is the step whose
  sigma_t matches the total per-coordinate deviation and the noise target is
  (x - sqrt(ab_t) x0) / sigma_t, so the DDPM algebra is unchanged. MMFF's deviation from
  B3LYP is systematic, not Gaussian; without these inputs the time head calls MMFF
  structures clean and the sampler does nothing. With local minima (``training/local_minima.py``)
  x0 of an MMFF input can be the molecule's local minimum at MMFF94's torsions instead of its
  global minimum (all of them, or a drawn fraction): d then holds only the local geometry, which a
  local network can learn. With ``mmff_step`` the MMFF input is presented unshrunk, at the small
  step the time head reads a real MMFF94 start at (``make_inputs``).
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ..chem.rmsd import kabsch_align
from ..core.model import remove_mean
from ..core.schedule import NoiseSchedule
from .data import MoleculeSet

MIN_MMFF_RMSD = 1e-3  # A: below this an MMFF94 start is its reference


def aligned_displacement(start: np.ndarray, base: np.ndarray, max_rmsd: float) -> tuple[np.ndarray, bool]:
    """``start`` aligned onto ``base`` minus ``base``, and whether it is usable as structured noise:
    an RMSD above MIN_MMFF_RMSD (a start equal to its reference, a structure that is an MMFF94 minimum
    already, is no noise: it would put a zero displacement, and a ratio of zero to zero in
    validation, in the run) and at most ``max_rmsd``."""
    d = kabsch_align(start.astype(np.float64), base) - base
    rmsd = np.sqrt((d**2).sum(1).mean())
    return d, bool(MIN_MMFF_RMSD < rmsd <= max_rmsd)


class TrainingData:
    """Reference geometries (centred) and, where available, MMFF displacements in their frame.

    ``local_minima`` (id -> positions): MMFF inputs can also be built on these (``local_disp``, in
    the local minimum's frame). ``local_fraction`` 1 means always, and only molecules that have one
    get MMFF inputs; below 1 every molecule with an MMFF94 start gets MMFF inputs and the trainer
    draws per input which base it uses (``gather``'s ``local_mask``)."""

    def __init__(self, ms: MoleculeSet, mmff: np.ndarray | None, max_mmff_rmsd: float = 1.0,
                 local_minima: dict[int, np.ndarray] | None = None, local_fraction: float = 1.0,
                 self_starts: dict[int, np.ndarray] | None = None, self_fraction: float = 0.0,
                 self_max_rmsd: float = 1.0):
        self.ms = ms
        self.local_fraction = local_fraction if local_minima is not None else 0.0
        self.x0 = ms.positions.astype(np.float64).copy()
        self.disp = np.zeros_like(self.x0)
        self.has_global = np.zeros(len(ms), dtype=bool)
        self.has_local = np.zeros(len(ms), dtype=bool)
        self.local_base = None if local_minima is None else np.zeros_like(self.x0)
        self.local_disp = None if local_minima is None else np.zeros_like(self.x0)

        for m in range(len(ms)):
            a, b = ms.offsets[m], ms.offsets[m + 1]
            self.x0[a:b] -= self.x0[a:b].mean(0)
            if mmff is None or np.isnan(mmff[a:b]).any():
                continue
            self.disp[a:b], self.has_global[m] = aligned_displacement(mmff[a:b], self.x0[a:b], max_mmff_rmsd)
            local = None if local_minima is None else local_minima.get(int(ms.ids[m]))
            if local is not None:
                self.local_base[a:b] = local - local.mean(0)
                self.local_disp[a:b], self.has_local[m] = aligned_displacement(mmff[a:b], self.local_base[a:b],
                                                                                  max_mmff_rmsd)
        self.disp[~np.repeat(self.has_global, np.diff(ms.offsets))] = 0.0
        self.has_mmff = self.has_local.copy() if self.local_fraction >= 1 else self.has_global | self.has_local
        self._add_self_starts(self_starts or {}, self_fraction if self_starts else 0.0,
                              min(max_mmff_rmsd, self_max_rmsd))
        self.x0 = self.x0.astype(np.float32)
        self.disp = self.disp.astype(np.float32)
        if self.local_base is not None:
            self.local_base = self.local_base.astype(np.float32)
            self.local_disp = self.local_disp.astype(np.float32)
        if self.self_disp is not None:
            self.self_disp = self.self_disp.astype(np.float32)
        self.mmff_ids = np.nonzero(self.has_mmff)[0]

    def _add_self_starts(self, starts: dict[int, np.ndarray], fraction: float, max_rmsd: float) -> None:
        """A model's ends as a second kind of MMFF input (``training/self_starts.py``): the displacement
        from the global minimum, used for a fraction of the MMFF inputs of molecules that have one.
        ``max_rmsd`` (A, all atoms, aligned) keeps only ends in the minimum's conformation, whose
        remaining error is local geometry (a torsional target, like MMFF94's, is not learnable)."""
        self.self_fraction = fraction
        self.has_self = np.zeros(len(self.ms), dtype=bool)
        self.self_disp = None
        if not fraction:
            return
        o = self.ms.offsets
        self.self_disp = np.zeros_like(self.disp)
        for m in range(len(self.ms)):
            x = starts.get(int(self.ms.ids[m]))
            if x is None or len(x) != o[m + 1] - o[m] or not np.isfinite(x).all():
                continue
            d, self.has_self[m] = aligned_displacement(x, self.x0[o[m]:o[m + 1]].astype(np.float64), max_rmsd)
            if self.has_self[m]:
                self.self_disp[o[m]:o[m + 1]] = d
        self.has_mmff = self.has_mmff | self.has_self  # self starts count as MMFF inputs (drawn in the same share)

    def draw_self(self, mol_ids: np.ndarray, mmff_mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Which MMFF inputs of a batch start from the model's end instead: with probability
        ``self_fraction`` where one exists, always where the molecule has no usable MMFF94 start.
        Draws nothing when off, so runs without self starts keep their random streams."""
        if not self.self_fraction:
            return np.zeros(len(mol_ids), dtype=bool)
        has_self = self.has_self[mol_ids]
        usable_mmff = self.has_local[mol_ids] if self.local_fraction >= 1 else (
            self.has_global[mol_ids] | self.has_local[mol_ids])
        return mmff_mask & has_self & ((rng.random(len(mol_ids)) < self.self_fraction) | ~usable_mmff)

    def __len__(self):
        return len(self.ms)

    def draw_local(self, mol_ids: np.ndarray, mmff_mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Which MMFF inputs of a batch are built on the local minimum: with probability
        ``local_fraction`` where one exists, always where the global displacement was rejected."""
        if self.local_base is None:
            return np.zeros(len(mol_ids), dtype=bool)
        has_local, has_global = self.has_local[mol_ids], self.has_global[mol_ids]
        if self.local_fraction >= 1:
            return mmff_mask & has_local
        return mmff_mask & has_local & ((rng.random(len(mol_ids)) < self.local_fraction) | ~has_global)

    def gather(self, mol_ids: np.ndarray, local_mask: np.ndarray | None = None, self_mask: np.ndarray | None = None):
        """Atoms of ``mol_ids``; x0 and the displacement are the local minimum's where ``local_mask`` says so,
        the displacement is the model's end's (on the global minimum) where ``self_mask`` does."""
        o = self.ms.offsets
        idx = np.concatenate([np.arange(o[m], o[m + 1]) for m in mol_ids])
        sizes = o[mol_ids + 1] - o[mol_ids]
        mol = np.repeat(np.arange(len(mol_ids)), sizes)
        x0, disp = self.x0[idx], self.disp[idx]
        if self.local_base is not None and local_mask is not None and local_mask.any():
            rows = np.repeat(local_mask, sizes)[:, None]
            x0 = np.where(rows, self.local_base[idx], x0)
            disp = np.where(rows, self.local_disp[idx], disp)
        if self.self_disp is not None and self_mask is not None and self_mask.any():
            rows = np.repeat(self_mask, sizes)[:, None]
            x0 = np.where(rows, self.x0[idx], x0)
            disp = np.where(rows, self.self_disp[idx], disp)
        return (
            torch.from_numpy(self.ms.numbers[idx].astype(np.int64)),
            torch.from_numpy(x0),
            torch.from_numpy(disp),
            torch.from_numpy(mol),
        )


def sample_gaussian_t(n: int, T: int, gen: torch.Generator) -> torch.Tensor:
    """60 % in [1, 150], 25 % in [150, 400], 15 % in [400, T]: low/mid t matter most for relaxation."""
    u = torch.rand(n, generator=gen)
    lo = torch.where(u < 0.60, 1, torch.where(u < 0.85, 150, 400))
    hi = torch.where(u < 0.60, 150, torch.where(u < 0.85, 400, T))
    return lo + (torch.rand(n, generator=gen) * (hi - lo + 1)).long().clamp(max=(hi - lo))


def mmff_steps(mmff_step: int | Sequence[int]) -> list[int]:
    """``--mmff-step`` as a list: one step (an int) or several (each MMFF94 input draws one)."""
    return list(mmff_step) if isinstance(mmff_step, (list, tuple)) else [mmff_step]


def make_inputs(schedule: NoiseSchedule, numbers, x0, disp, mol, n_mol, is_mmff, gen,
                mmff_step: int | Sequence[int] = 0, step_override: torch.Tensor | None = None):
    """Noisy inputs, integer steps t, noise targets, the deviation scale sigma the time head regresses,
    a per-molecule loss scale (1 except for ``mmff_step`` inputs) and which molecules are MMFF94 inputs
    presented at a step, all per molecule but the first three.

    ``mmff_step`` > 0 presents an MMFF94 input at the step inference reads it at: the full displacement
    counts as noise of sigma_{mmff_step} (lam * d as lam * sigma_{mmff_step}), so the input is shrunk by
    no more than sqrt(alpha_bar) of that small step (0.16 % at 40), as a real start is not shrunk at
    all, and the target eps = deviation / sigma_t holds the whole way to the minimum. Its noise error is
    rescaled by (sigma_t / real deviation)^2: errors count relative to the displacement, as in the
    variance-preserving presentation, not in units of the much smaller sigma_t. Several steps: each
    MMFF94 input draws one of them (0 among them = that input in the variance-preserving presentation),
    so one network learns the conformation a small step teaches and the energy a larger one does.
    ``step_override`` (per molecule, 0 = none): the step a molecule's MMFF input is presented at
    instead (self starts are presented at the step the finish holds at)."""
    T = schedule.T
    sigma_tab = schedule.table("sigma", "cpu")
    ab_tab = schedule.table("alpha_bar", "cpu")
    counts = torch.bincount(mol, minlength=n_mol).double()
    dof = (3 * (counts - 1)).clamp(min=1)

    t = sample_gaussian_t(n_mol, T, gen)
    # MMFF inputs: scaled displacement plus optional extra Gaussian noise
    lam = torch.where(torch.rand(n_mol, generator=gen) < 0.5, torch.ones(n_mol), torch.rand(n_mol, generator=gen))
    t_g = torch.where(torch.rand(n_mol, generator=gen) < 0.5, torch.zeros(n_mol, dtype=torch.long),
                      torch.randint(1, 100, (n_mol,), generator=gen))
    sig_g = torch.where(t_g > 0, sigma_tab[t_g], torch.zeros(n_mol, dtype=torch.float64))
    d2 = torch.zeros(n_mol, dtype=torch.float64).index_add_(0, mol, (disp.double() ** 2).sum(-1))
    sig_tot = torch.sqrt(lam.double() ** 2 * d2 / dof + sig_g**2)
    steps = torch.as_tensor(mmff_steps(mmff_step), dtype=torch.long)
    step = (steps.expand(n_mol) if len(steps) == 1
            else steps[torch.randint(0, len(steps), (n_mol,), generator=gen)])
    if step_override is not None:
        step = torch.where(step_override > 0, step_override, step)
    presented = is_mmff & (step > 0)
    # the deviation scale the input is labelled with: its own, or lam * sigma_{step} (plus the extra noise)
    sig_read = torch.where(step > 0, torch.sqrt((lam.double() * sigma_tab[step]) ** 2 + sig_g**2), sig_tot)
    t_mmff = schedule.t_for_sigma(sig_read).clamp(1, T)
    scale = (sigma_tab[t_mmff] / sig_tot.clamp(min=float(sigma_tab[1]))) ** 2
    loss_scale = torch.where(presented, scale.clamp(max=1.0), 1.0)  # never above a Gaussian input's
    t = torch.where(is_mmff, t_mmff, t)
    sigma_target = torch.where(is_mmff, sig_read.clamp(min=float(sigma_tab[1])), sigma_tab[t])

    eps_g = remove_mean(torch.randn(x0.shape, generator=gen, dtype=torch.float64), mol, n_mol)
    sig_t = sigma_tab[t]
    sqrt_ab = ab_tab[t].sqrt()
    a = mol
    gauss_part = sig_t[a, None] * eps_g
    mmff_part = lam.double()[a, None] * disp.double() + sig_g[a, None] * eps_g
    deviation = torch.where(is_mmff[a, None], mmff_part, gauss_part)
    x_t = sqrt_ab[a, None] * x0.double() + deviation
    eps = deviation / sig_t[a, None]
    return x_t.float(), t, eps.float(), sigma_target, loss_scale.float(), presented


def subset_per_atom(ms: MoleculeSet, per_atom: np.ndarray, sel: np.ndarray) -> np.ndarray:
    """The per-atom rows of the molecules ``sel`` of ``ms``, in that order."""
    return np.concatenate([per_atom[ms.offsets[i]:ms.offsets[i + 1]] for i in sel])
