"""Physics calculators for the hand-off stages: GFN2-xTB (tblite or xtb-python) and PySCF DFT,
plus a wrapper that counts real evaluations without touching the wrapped calculator."""
from __future__ import annotations

import numpy as np
from ase.calculators.calculator import (
    Calculator,
    CalculatorSetupError,
    PropertyNotImplementedError,
    SCFError,
    all_changes,
)
from ase.units import Bohr, Hartree


def xtb_calculator(method: str = "GFN2-xTB", backend: str = "auto", charge: int = 0, uhf: int = 0, **kwargs):
    """A quiet GFN2-xTB ASE calculator for the given total charge and unpaired electrons:
    tblite (default) or xtb-python."""
    if backend in ("auto", "tblite"):
        try:
            from tblite.ase import TBLite

            return TBLite(method=method, verbosity=0, charge=charge, multiplicity=uhf + 1, **kwargs)
        except ImportError:
            if backend == "tblite":
                raise ImportError("tblite is not installed: pip install 'ase_diffrelax[xtb]'") from None
    try:
        from xtb.ase.calculator import XTB
    except ImportError:
        import shutil

        program = shutil.which("xtb")
        found = (f"the xtb program ({program}) is on PATH, but the pipeline computes GFN2-xTB forces through a "
                 "Python library" if program else "no Python xTB library")
        raise ImportError(f"{found}: pip install 'ase_diffrelax[xtb]' (tblite, or xtb-python)") from None
    return XTB(method=method, charge=charge, uhf=uhf, **kwargs)


class CountingCalculator(Calculator):
    """Delegates to ``inner`` and counts how often it really computes (cached reads are free)."""

    implemented_properties = ["energy", "free_energy", "forces"]

    def __init__(self, inner: Calculator):
        super().__init__()
        self.inner = inner
        self.calls = 0

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        self.calls += 1
        self.results = {"energy": self.inner.get_property("energy", self.atoms),
                        "forces": self.inner.get_property("forces", self.atoms)}
        try:
            self.results["free_energy"] = self.inner.get_property("free_energy", self.atoms)
        except PropertyNotImplementedError:
            self.results["free_energy"] = self.results["energy"]


def pyscf_mean_field(numbers, positions, p):
    """PySCF molecule and Kohn-Sham object for the parameters ``p`` (PySCFCalculator's): the one
    setup its gradient scanner and a plain energy (``mf.kernel()``) share."""
    from pyscf import dft, gto

    n_electrons = int(np.sum(numbers)) - int(p["charge"])
    if n_electrons % 2 != int(p["spin"]) % 2:
        raise CalculatorSetupError(
            f"{n_electrons} electrons (charge {p['charge']:+d}) cannot have spin {p['spin']} (unpaired electrons): "
            "set charge/spin consistently")
    mol = gto.M(atom=[(int(z), pos) for z, pos in zip(numbers, positions)], unit="Angstrom", basis=p["basis"],
                charge=p["charge"], spin=p["spin"], verbose=p["verbose"], max_memory=p["max_memory"])
    mf = dft.RKS(mol) if p["spin"] == 0 else dft.UKS(mol)
    mf.xc = p["xc"]
    mf.conv_tol = p["conv_tol"]
    mf.grids.level = p["grid_level"]
    return mol, (mf.density_fit() if p["density_fit"] else mf)


class PySCFCalculator(Calculator):
    """Kohn-Sham DFT energy and analytic gradient from PySCF, in eV and eV/A.

    Default level B3LYP/6-31G(2df,p), the level of the QM9 reference geometries (PySCF's
    "b3lyp" uses VWN-RPA like Gaussian). ``density_fit=True`` uses RI-J/K (about 3x faster,
    a small, consistent energy shift). A dispersion correction goes with the functional's name,
    ``xc="b3lyp-d3bj"`` (pyscf-dispersion, in the ``dft`` extra); its gradient is included. The SCF
    of each call starts from the previous density (PySCF's gradient scanner), which saves cycles
    between steps of one relaxation.
    """

    implemented_properties = ["energy", "free_energy", "forces"]
    default_parameters = {
        "xc": "b3lyp", "basis": "6-31g(2df,p)", "density_fit": False, "charge": 0, "spin": 0,
        "threads": None, "conv_tol": 1e-9, "grid_level": 3, "max_memory": 4000, "verbose": 0,
    }

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._scanner = None
        self._numbers = None

    def set(self, **kwargs):
        """Change parameters; any change drops the cached SCF scanner and results."""
        changed = super().set(**kwargs)
        if changed:
            self._scanner = None
            self.reset()
        return changed

    def _build(self, atoms):
        mol, mf = pyscf_mean_field(atoms.numbers, atoms.positions, self.parameters)
        self._scanner = mf.nuc_grad_method().as_scanner()
        self._mol = mol
        self._numbers = atoms.numbers.copy()

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        from pyscf import lib

        super().calculate(atoms, properties, system_changes)
        if self.atoms.pbc.any():
            raise CalculatorSetupError("PySCFCalculator: molecules only (pbc must be False)")
        if self._scanner is None or not np.array_equal(self._numbers, self.atoms.numbers):
            self._build(self.atoms)
        mol = self._mol.set_geom_(self.atoms.positions, unit="Angstrom", inplace=False)
        threads = int(self.parameters.threads) if self.parameters.threads else lib.num_threads()
        with lib.with_omp_threads(threads):  # PySCF's global thread count stays the user's
            e, g = self._scanner(mol)
        if not self._scanner.base.converged:
            raise SCFError("PySCF SCF did not converge")
        self._mol = mol
        self.results = {"energy": e * Hartree, "free_energy": e * Hartree,
                        "forces": -np.asarray(g) * Hartree / Bohr}


class GradientMemo(Calculator):
    """Delegates to ``inner`` and keeps every result in a JSON-lines file keyed by the elements,
    the positions (rounded to 1e-8 A) and ``level``: a deterministic optimizer rerun after a kill
    replays the stored gradients and goes on where it stopped, so a DFT relaxation of hours
    survives the end of a session. ``replayed`` counts results read back, ``replayed_wall_s`` the
    wall time they once cost."""

    implemented_properties = ["energy", "free_energy", "forces"]

    def __init__(self, inner: Calculator, path, level: str):
        from ..files import JsonlStore

        super().__init__()
        self.inner, self.level = inner, level
        self.store = JsonlStore(path)
        self.replayed, self.replayed_wall_s = 0, 0.0

    def key(self, atoms) -> str:
        import hashlib

        h = hashlib.sha256(self.level.encode())
        h.update(np.asarray(atoms.numbers, dtype=np.int64).tobytes())
        h.update(np.round(np.asarray(atoms.positions, dtype=np.float64), 8).tobytes())
        return h.hexdigest()[:32]

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        import time

        super().calculate(atoms, properties, system_changes)
        k = self.key(self.atoms)
        if k not in self.store:
            self.store.reload()  # another process may have written it
        rec = self.store.get(k)
        if rec is not None:
            self.replayed += 1
            self.replayed_wall_s += rec["wall_s"]
            e, f = rec["energy"], np.asarray(rec["forces"], dtype=float)
        else:
            t0 = time.perf_counter()
            e = float(self.inner.get_property("energy", self.atoms))
            f = np.asarray(self.inner.get_property("forces", self.atoms), dtype=float)
            self.store.add(k, {"level": self.level, "numbers": self.atoms.numbers.tolist(),
                               "positions": self.atoms.positions.tolist(), "energy": e,
                               "forces": f.tolist(), "wall_s": time.perf_counter() - t0})
        self.results = {"energy": e, "free_energy": e, "forces": f}
