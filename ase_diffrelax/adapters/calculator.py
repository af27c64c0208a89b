"""``DiffusionCalculator``: pseudo-forces from the denoiser's score, for ASE optimizers and ase gui."""
from __future__ import annotations

import torch
from ase.calculators.calculator import Calculator, all_changes
from ase.units import kB

from ..core.checkpoint import choose_model, load_model
from ..core.denoise import denoise
from ..core.validate import check_for_model


class DiffusionCalculator(Calculator):
    """Pseudo-energy and pseudo-forces from a diffusion denoiser, for ASE optimizers and ase gui.

    They are NOT physical energies or forces: no level of theory stands behind them, and the
    "eV" are a scale, not a measurement. Two modes:

    ``mode="displacement"`` (default): the force points from x to the denoiser's estimate of the
    clean structure at the step the time head predicts,

        F = stiffness * (x0_hat(x) - x)        [stiffness in eV/A^2, F in eV/A]
        E = stiffness / 2 * |x0_hat(x) - x|^2  [eV]

    so F vanishes where the denoiser has nothing left to correct, and BFGS, LBFGS and FIRE
    converge near where ``DiffusionRelax`` ends. ``fmax`` therefore means a residual
    displacement: fmax / stiffness Angstrom on the worst atom (0.05 eV/A at the default
    stiffness 10 eV/A^2 is 0.005 A). The field is not a gradient of E (x0_hat depends on x
    through the network), so use optimizers that need forces only (BFGS, LBFGS, FIRE: ASE's
    defaults) and no line search; the measured behaviour is in docs/benchmarks.md: on QM9
    molecules all three converge and end 0.02 A from ``DiffusionRelax``; on drug-like molecules
    BFGS converged on 97.5 % of 40, LBFGS and FIRE on all, but 0.10-0.13 A from the
    ``DiffusionRelax`` result: relax drug-size molecules with ``DiffusionRelax`` itself.

    ``mode="score"``: the diffusion score at a fixed step ``t``,
    F = -kT * eps_hat / sigma_t and E = kT / 2 * |eps_hat|^2 (kT from ``temperature``). It
    describes how far from an equilibrium geometry the model thinks x is, but the model never
    predicts eps = 0, so F does not vanish and optimizers do not converge on it; use it for
    visualising the learned field, not for relaxing.

    Parameters: ``mode``, ``stiffness`` (eV/A^2), ``t`` ("predicted" or an int step),
    ``temperature`` (K, score mode). ``results["diffusion_t"]`` is the predicted step of the
    last evaluation, ``results["diffusion_t_used"]`` the step denoised at.
    """

    implemented_properties = ["energy", "forces", "free_energy"]
    default_parameters = {"mode": "displacement", "stiffness": 10.0, "t": "predicted", "temperature": 300.0}

    def __init__(self, model=None, device=None, **kwargs):
        super().__init__(**kwargs)
        self._device = device
        self.model = load_model(model, device=device) if model is not None else None
        self._check_parameters()

    def set(self, **kwargs):
        changed = super().set(**kwargs)
        if changed and hasattr(self, "_device"):
            self._check_parameters()
        return changed

    def _check_parameters(self):
        """Every parameter in its allowed range, or a ValueError naming it (never a silent clamp)."""
        import math

        p = self.parameters
        if p.mode not in ("displacement", "score"):
            raise ValueError(f"mode must be 'displacement' or 'score', not {p.mode!r}")
        for name in ("stiffness", "temperature"):
            v = p[name]
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
                raise ValueError(f"{name}={v!r}: must be a finite number > 0")
        if p.t != "predicted":
            T = self.model.schedule.T if self.model is not None else 1000
            if isinstance(p.t, bool) or not isinstance(p.t, int) or not 1 <= p.t <= T:
                raise ValueError(f"t={p.t!r}: must be 'predicted' or a whole diffusion step from 1 to {T}")

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        if self.model is None:  # the shipped checkpoint that knows these elements
            self.model = load_model(choose_model([self.atoms]), device=self._device)
        check_for_model(self.atoms, self.model)
        p = self.parameters
        sched = self.model.schedule
        dev = self.model.device
        self._check_parameters()
        z = torch.as_tensor(self.atoms.numbers, dtype=torch.long, device=dev)
        # centred in float64 first: far from the origin a float32 cast would lose the geometry
        centred = self.atoms.positions - self.atoms.positions.mean(0)
        x = torch.as_tensor(centred, dtype=torch.float32, device=dev)
        mol = torch.zeros(len(z), dtype=torch.long, device=dev)
        t = p.t
        if t == "predicted":
            # the raw prediction: with the sampler's time calibration the minimum lies farther from the
            # reference (validation, docs/benchmarks.md)
            choose = (lambda th: th.clamp(min=1))
        else:
            choose = (lambda th: torch.full_like(th, int(t)))
        with torch.no_grad():
            out = denoise(self.model.net, sched, z, x, mol, 1, choose)
        step = int(out.t[0])
        if p.mode == "displacement":
            d = (out.x0_hat.double() - x.double()).cpu().numpy()
            d -= d.mean(0)
            forces = p.stiffness * d
            energy = 0.5 * p.stiffness * float((d**2).sum())
        else:
            eps = out.eps.double().cpu().numpy()
            kT = kB * p.temperature
            forces = -kT * eps / float(sched.sigma[step])
            energy = 0.5 * kT * float((eps**2).sum())
        self.results = {"energy": energy, "free_energy": energy, "forces": forces,
                        "diffusion_t": float(out.t_hat[0]), "diffusion_t_used": step}
        # the same keys DiffusionRelax sets: which checkpoint, which level it approximates, verified how
        for target in {id(a): a for a in (atoms, self.atoms) if a is not None}.values():
            target.info.update(diffusion_model=self.model.name, diffusion_level_of_theory=self.model.level_of_theory,
                               diffusion_model_verified=self.model.verified, diffusion_t=float(out.t_hat[0]))
