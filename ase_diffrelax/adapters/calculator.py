"""``DiffusionCalculator``: pseudo-forces from the denoiser's score, for ASE optimizers and ase gui."""
from __future__ import annotations

import torch
from ase.calculators.calculator import Calculator, all_changes
from ase.units import kB

from ..core.checkpoint import choose_model, load_model
from ..core.denoise import denoise
from ..core.validate import check_for_model


class DiffusionCalculator(Calculator):
    """Pseudo-energy and pseudo-forces from a diffusion denoiser (not physical energies).

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

    Parameters: ``t`` (int step, or "predicted"), ``temperature`` (K, sets the kT scale).
    ``results["diffusion_t"]`` holds the predicted step of the last evaluation.
    """

    implemented_properties = ["energy", "forces", "free_energy"]
    default_parameters = {"t": 20, "temperature": 300.0}

    def __init__(self, model=None, device=None, **kwargs):
        super().__init__(**kwargs)
        self._device = device
        self.model = load_model(model, device=device) if model is not None else None

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        if self.model is None:  # the shipped checkpoint that knows these elements
            self.model = load_model(choose_model([self.atoms]), device=self._device)
        check_for_model(self.atoms, self.model)
        sched = self.model.schedule
        dev = self.model.device
        z = torch.as_tensor(self.atoms.numbers, dtype=torch.long, device=dev)
        x = torch.as_tensor(self.atoms.positions, dtype=torch.float32, device=dev)
        x = x - x.mean(0)
        mol = torch.zeros(len(z), dtype=torch.long, device=dev)
        t = self.parameters.t
        choose = (lambda th: th.clamp(min=1)) if t == "predicted" else (lambda th: torch.full_like(th, max(int(t), 1)))
        with torch.no_grad():
            out = denoise(self.model.net, sched, z, x, mol, 1, choose)
        step = int(out.t[0])
        eps = out.eps.double().cpu().numpy()
        kT = kB * self.parameters.temperature
        sigma = float(sched.sigma[step])
        energy = 0.5 * kT * float((eps**2).sum())
        self.results = {"energy": energy, "free_energy": energy, "forces": -kT * eps / sigma,
                        "diffusion_t": float(out.t_hat[0]), "diffusion_t_used": step}
