"""``DiffusionCalculator``: pseudo-forces from the denoiser's score, for ASE optimizers and ase gui.

The noise model estimates the score of the diffused data density at step t:
s(x, t) = -eps_hat(x, t) / sigma_t. Near one training minimum p_t is a Gaussian of width
sigma_t, so

    pseudo-energy  E = (kT / 2) * |eps_hat|^2          (eV-like)
    pseudo-force   F = -kT * eps_hat / sigma_t          (eV/A-like)

agree (F ~ -dE/dx), with kT a scale (default 300 K, 0.02585 eV) that makes the numbers
look like eV. They are NOT physical energies or forces: E is a negative log-density of
"how far from an equilibrium geometry the model thinks this is", and F points toward the
denoised structure with a stiffness kT / sigma_t^2 (about 32 eV/A^2 at the default t = 20,
comparable to a C-H stretch, so BFGS's default Hessian guess works).

With ``t="predicted"`` the step is re-predicted at every call; the surface then changes
with x and is not conservative, so use a fixed step for BFGS/LBFGS line searches.
"""
from __future__ import annotations

import numpy as np
import torch
from ase.calculators.calculator import Calculator, all_changes
from ase.units import kB

from .checkpoint import load_model
from .model import molecule_pairs
from .validate import check_atoms


class DiffusionCalculator(Calculator):
    implemented_properties = ["energy", "forces", "free_energy"]
    default_parameters = {"t": 20, "temperature": 300.0}

    def __init__(self, model=None, device=None, **kwargs):
        super().__init__(**kwargs)
        self.model = load_model(model, device=device)

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        check_atoms(self.atoms, self.model.elements, self.model.card.get("max_atoms"))
        net, sched = self.model.net, self.model.schedule
        dev = self.model.device
        z = torch.as_tensor(self.atoms.numbers, dtype=torch.long, device=dev)
        x = torch.as_tensor(self.atoms.positions, dtype=torch.float32, device=dev)
        x = x - x.mean(0)
        mol = torch.zeros(len(z), dtype=torch.long, device=dev)
        with torch.no_grad():
            s, v = net.representation(z, x, mol, 1, molecule_pairs(mol, 1))
            t_hat = float(net.predict_time(s, mol, 1).clamp(0, 1)[0]) * sched.T
            t = self.parameters.t
            step = int(round(t_hat)) if t == "predicted" else int(t)
            step = min(max(step, 1), sched.T)
            eps = net.predict_noise(s, v, torch.full((len(z),), step / sched.T, device=dev), mol, 1)
        eps = eps.double().cpu().numpy()
        kT = kB * self.parameters.temperature
        sigma = float(sched.sigma[step])
        energy = 0.5 * kT * float((eps**2).sum())
        self.results = {"energy": energy, "free_energy": energy, "forces": -kT * eps / sigma}
        self.atoms.info["diffusion_t"] = t_hat
