"""The physics hand-off: which optimizer takes the structure to the QM minimum, and with which
initial Hessian.

Optimizers: ASE ``bfgs`` / ``lbfgs`` / ``fire`` (Cartesian), ``sella`` (internal coordinates,
PyPI ``sella``) and ``geometric`` (TRIC coordinates, PyPI ``geometric``). Hessians: ``identity``
(ASE's 70 eV/A^2 x 1), ``xtb`` (GFN2-xTB by central finite differences of tblite gradients at
the start, projected and made positive definite) or a callable ``f(atoms) -> (3N, 3N)`` in eV/A^2.
Every optimizer stops at the same criterion: max per-atom force <= fmax eV/A. Hessian work runs on
its own calculator and is reported apart from the target-level gradient calls it is meant to save.
"""
from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass

import numpy as np
from ase.units import Bohr, Hartree

OPTIMIZERS = ("bfgs", "lbfgs", "fire", "sella", "geometric")
HESSIANS = ("identity", "xtb")
EXTRA_FOR = {"sella": "sella", "geometric": "geometric"}
HESSIAN_OPTIMIZERS = ("bfgs", "sella", "geometric")  # the ones that take a full initial Hessian


@dataclass
class HessianWork:
    """What building the initial Hessian cost; 'calls' are gradients of the Hessian's own method."""

    method: str
    calls: int = 0
    wall_s: float = 0.0
    min_eigenvalue: float | None = None  # of the projected Hessian before it was made positive definite

    def todict(self) -> dict:
        return {"method": self.method, "calls": self.calls, "wall_s": self.wall_s, "min_eigenvalue": self.min_eigenvalue}


def _require(name: str):
    import importlib

    try:
        return importlib.import_module(name)
    except ImportError:
        raise ImportError(f"optimizer {name!r} needs the PyPI package {name!r}: "
                          f"pip install 'ase_diffrelax[{EXTRA_FOR[name]}]'") from None


def route_available(optimizer: str, hessian) -> str | None:
    """None when the route's packages import, else what to install (for the 'auto' fallback)."""
    import importlib.util

    need = []
    if optimizer in EXTRA_FOR and importlib.util.find_spec(optimizer) is None:
        need.append(f"pip install 'ase_diffrelax[{EXTRA_FOR[optimizer]}]'")
    if hessian == "xtb" and importlib.util.find_spec("tblite") is None:
        need.append("pip install 'ase_diffrelax[xtb]'")
    return " and ".join(need) or None


def check_handoff(optimizer: str, hessian) -> None:
    """Fail before any QM work on an unknown name, a missing extra or a Hessian the optimizer cannot use."""
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {optimizer!r}; choose from {list(OPTIMIZERS)}")
    if not (callable(hessian) or hessian in HESSIANS):
        raise ValueError(f"unknown hessian {hessian!r}; choose from {list(HESSIANS)} or pass f(atoms) -> (3N, 3N) eV/A^2")
    if optimizer in EXTRA_FOR:
        _require(optimizer)
    if hessian != "identity" and optimizer not in HESSIAN_OPTIMIZERS:
        raise ValueError(f"optimizer {optimizer!r} takes no initial Hessian; use one of {list(HESSIAN_OPTIMIZERS)} "
                         "with hessian=...")


def rigid_modes(positions: np.ndarray) -> np.ndarray:
    """Orthonormal translations and rotations (3N x 6, or x 5 for a linear molecule)."""
    x = positions - positions.mean(0)
    n = len(x)
    vecs = []
    for k in range(3):
        t = np.zeros((n, 3))
        t[:, k] = 1.0
        vecs.append(t.ravel())
    for k in range(3):
        axis = np.zeros(3)
        axis[k] = 1.0
        vecs.append(np.cross(axis, x).ravel())
    q, r = np.linalg.qr(np.array(vecs).T)
    keep = np.abs(np.diag(r)) > 1e-6 * max(1.0, np.abs(r).max())
    return q[:, keep]


def make_positive_definite(hessian: np.ndarray, positions: np.ndarray, floor: float = 2.0,
                           rigid_value: float = 70.0) -> tuple[np.ndarray, float]:
    """Symmetrise, project out translations/rotations, take |eigenvalues| floored at ``floor``;
    the rigid modes get ``rigid_value`` (ASE's default curvature). Returns (H, min internal eigenvalue).

    The floor keeps Cartesian Newton steps along soft torsions small: on six molecules (NMA to
    clopidogrel, GFN2-xTB from MMFF94) floors of 0.05 / 0.5 / 2 / 5 eV/A^2 gave 97 / 91 / 40 / 51
    BFGS calls in all (identity: 196)."""
    h = 0.5 * (hessian + hessian.T)
    r = rigid_modes(positions)
    p = np.eye(len(h)) - r @ r.T
    w, v = np.linalg.eigh(p @ h @ p)
    # the len(r) eigenvectors most inside the rigid space are the projected-out ones
    rigid_weight = ((r.T @ v) ** 2).sum(0)
    internal = np.argsort(rigid_weight)[: len(h) - r.shape[1]]
    w_new = np.full_like(w, rigid_value)
    w_new[internal] = np.maximum(np.abs(w[internal]), floor)
    return (v * w_new) @ v.T, float(w[internal].min())


def xtb_hessian(atoms, charge: int = 0, uhf: int = 0, delta: float = 0.005, method: str = "GFN2-xTB",
                positive_definite: bool = True):
    """GFN2-xTB Hessian by central differences of tblite gradients (6N gradients, each SCF restarted
    from the reference wavefunction). Returns (H in eV/A^2, positive definite unless asked not to;
    HessianWork)."""
    try:
        from tblite.interface import Calculator
    except ImportError:
        raise ImportError("hessian='xtb' needs tblite: pip install 'ase_diffrelax[xtb]'") from None
    t0 = time.perf_counter()
    x0 = atoms.positions / Bohr
    calc = Calculator(method, atoms.numbers, x0, charge=float(charge), uhf=int(uhf))
    calc.set("verbosity", 0)
    ref = calc.singlepoint()
    n3 = 3 * len(atoms)
    h = np.zeros((n3, n3))
    step = delta / Bohr
    for i in range(n3):
        grads = []
        for sign in (1.0, -1.0):
            x = x0.copy().ravel()
            x[i] += sign * step
            calc.update(x.reshape(-1, 3))
            grads.append(calc.singlepoint(ref, copy=True).get("gradient").ravel())
        h[i] = (grads[0] - grads[1]) / (2 * step)
    h *= Hartree / Bohr**2
    if not positive_definite:
        return h, HessianWork("GFN2-xTB finite differences", calls=2 * n3 + 1, wall_s=time.perf_counter() - t0)
    h_pd, lam_min = make_positive_definite(h, atoms.positions)
    return h_pd, HessianWork("GFN2-xTB finite differences", calls=2 * n3 + 1, wall_s=time.perf_counter() - t0,
                             min_eigenvalue=lam_min)


def initial_hessian(atoms, hessian, charge: int = 0, uhf: int = 0):
    """(H or None, HessianWork or None) for a ``hessian=`` argument."""
    if hessian == "identity":
        return None, None
    if hessian == "xtb":
        return xtb_hessian(atoms, charge=charge, uhf=uhf)
    t0 = time.perf_counter()
    h = np.asarray(hessian(atoms.copy()), dtype=float)
    n3 = 3 * len(atoms)
    if h.shape != (n3, n3) or not np.isfinite(h).all():
        raise ValueError(f"hessian callable returned shape {h.shape} (finite: {np.isfinite(h).all()}); "
                         f"expected a finite ({n3}, {n3}) array in eV/A^2")
    h_pd, lam_min = make_positive_definite(h, atoms.positions)
    return h_pd, HessianWork(getattr(hessian, "__name__", "callable"), calls=0, wall_s=time.perf_counter() - t0,
                             min_eigenvalue=lam_min)


def fmax_of(atoms) -> float:
    return float(np.sqrt((atoms.get_forces() ** 2).sum(1)).max())


def _run_ase(atoms, optimizer, h0, fmax, max_steps, trajectory, logfile):
    from ase.optimize import BFGS, FIRE, LBFGS

    cls = {"bfgs": BFGS, "lbfgs": LBFGS, "fire": FIRE}[optimizer]
    opt = cls(atoms, logfile=logfile, trajectory=trajectory)
    if h0 is not None:
        opt.H0 = h0  # BFGS builds its state from H0 at the first update
    converged = opt.run(fmax=fmax, steps=max_steps)
    return bool(converged), opt.nsteps


def _run_sella(atoms, h0, fmax, max_steps, trajectory, logfile):
    sella = _require("sella")
    kwargs = {}
    if h0 is not None:
        # one Hessian at the start (eig=True calls hessian_function once; order 0 never re-diagonalises)
        kwargs = {"eig": True, "hessian_function": lambda _atoms: h0, "nsteps_per_diag": 10**9}
    opt = sella.Sella(atoms, internal=True, order=0, logfile=logfile, trajectory=trajectory, **kwargs)
    converged = opt.run(fmax=fmax, steps=max_steps)
    return bool(converged), opt.nsteps


def _run_geometric(atoms, h0, fmax, max_steps, logfile):
    """geomeTRIC in TRIC coordinates through its ASE engine, converged on the max per-atom gradient
    only; called below its command-line driver so that it neither configures logging nor prints."""
    _require("geometric")
    import logging

    from geometric.ase_engine import EngineASE
    from geometric.errors import GeomOptNotConvergedError
    from geometric.internal import DelocalizedInternalCoordinates
    from geometric.molecule import Molecule
    from geometric.optimize import Optimize
    from geometric.params import OptParams

    gmax = fmax / (Hartree / Bohr)
    log = logging.getLogger("geometric")
    saved = log.level, log.propagate
    if logfile is None:
        log.setLevel(logging.WARNING)
        log.propagate = False
    try:
        with tempfile.TemporaryDirectory(prefix="adr-geometric-") as tmp:
            mol = Molecule()
            mol.elem = list(atoms.get_chemical_symbols())
            mol.xyzs = [atoms.positions.copy()]
            mol.build_topology()
            engine = EngineASE(mol, atoms.calc)
            engine.ase_atoms = atoms  # the caller's Atoms: its calculator counts the calls
            kw = {"maxiter": max_steps, "xyzout": os.path.join(tmp, "opt_optim.xyz"), "frequency": False,
                  "converge": ["energy", "1.0", "grms", "1.0", "gmax", f"{gmax:.6e}", "drms", "1.0", "dmax", "1.0"]}
            if h0 is not None:
                path = os.path.join(tmp, "h0.txt")
                np.savetxt(path, h0 / (Hartree / Bohr**2))
                kw["hessian"] = f"file:{path}"
            params = OptParams(**kw)
            ic = DelocalizedInternalCoordinates(mol, build=True, connect=False, addcart=False)
            try:
                progress = Optimize(atoms.positions.ravel() / Bohr, mol, ic, engine, tmp, params,
                                    print_info=False)
                atoms.positions = np.asarray(progress.xyzs[-1])
                nsteps = len(progress) - 1
            except GeomOptNotConvergedError:
                nsteps = max_steps
    finally:
        log.setLevel(saved[0])
        log.propagate = saved[1]
    return fmax_of(atoms) <= fmax + 1e-9, nsteps


def run_handoff(atoms, optimizer: str = "bfgs", h0=None, fmax: float = 0.03, max_steps: int = 500,
                trajectory=None, logfile=None) -> tuple[bool, int]:
    """Optimise ``atoms`` in place with its attached calculator; returns (converged, steps)."""
    if optimizer in ("bfgs", "lbfgs", "fire"):
        return _run_ase(atoms, optimizer, h0, fmax, max_steps, trajectory, logfile)
    if optimizer == "sella":
        return _run_sella(atoms, h0, fmax, max_steps, trajectory, logfile)
    if optimizer == "geometric":
        return _run_geometric(atoms, h0, fmax, max_steps, logfile)
    raise ValueError(f"unknown optimizer {optimizer!r}; choose from {list(OPTIMIZERS)}")
