"""Internal coordinates of a molecule's bond graph, and a GFN2-xTB relaxation with its rotatable
torsions held: the local minimum at a given conformation, which the error anatomy (issue 29) and
the local-minimum training targets (``training/local_minima.py``) share."""
from __future__ import annotations

import numpy as np


def internal_coordinates(numbers, positions):
    """Bonds (i, j), angles (i, j, k) and heavy-atom torsions (i, j, k, l) of a geometry's bond graph."""
    from .topology import bond_graph

    bonds = sorted(tuple(sorted(b)) for b in bond_graph(numbers, positions))
    nbr: dict[int, set] = {}
    for i, j in bonds:
        nbr.setdefault(i, set()).add(j)
        nbr.setdefault(j, set()).add(i)
    angles = [(i, j, k) for j in nbr for i in nbr[j] for k in nbr[j] if i < k]
    heavy = np.asarray(numbers) > 1
    torsions, rotatable = [], []
    ring = ring_bonds(len(numbers), bonds)
    for j, k in bonds:
        if not (heavy[j] and heavy[k]):
            continue
        first = True
        for i in nbr[j] - {k}:
            for l in nbr[k] - {j}:  # noqa: E741
                if heavy[i] and heavy[l] and i != l:
                    torsions.append((i, j, k, l))
                    if first and (j, k) not in ring:  # one held dihedral per rotatable bond
                        rotatable.append((i, j, k, l))
                        first = False
    return bonds, angles, torsions, rotatable


def ring_bonds(n: int, bonds) -> set:
    """Bonds on a cycle: removing one leaves its atoms connected."""
    nbr: dict[int, set] = {}
    for i, j in bonds:
        nbr.setdefault(i, set()).add(j)
        nbr.setdefault(j, set()).add(i)
    out = set()
    for i, j in bonds:
        seen, todo = {i}, [i]
        while todo:
            a = todo.pop()
            for b in nbr[a]:
                if (min(a, b), max(a, b)) != (i, j) and b not in seen:
                    seen.add(b)
                    todo.append(b)
        if j in seen:
            out.add((i, j))
    return out


def relax_torsions_held(numbers, positions, torsions, *, charge: int = 0, uhf: int = 0, fix_heavy: bool = False,
                        fmax: float = 0.05, steps: int = 400):
    """GFN2-xTB (tblite) BFGS relaxation with the dihedrals ``torsions`` held at their values in
    ``positions`` (or, ``fix_heavy``, every heavy atom fixed): (positions, energy eV, BFGS steps,
    converged). (None, nan, steps, False) when FixInternals cannot hold the set."""
    from ase import Atoms
    from ase.calculators.calculator import CalculationFailed
    from ase.constraints import FixAtoms, FixInternals
    from ase.optimize import BFGS

    from ..workflows.physics import xtb_calculator

    a = Atoms(numbers=numbers, positions=positions)
    a.calc = xtb_calculator(charge=charge, uhf=uhf)
    if fix_heavy:
        a.set_constraint(FixAtoms(mask=np.asarray(numbers) > 1))
    elif len(torsions):
        a.set_constraint(FixInternals(dihedrals_deg=[[a.get_dihedral(*t), list(t)] for t in torsions], epsilon=1e-4))
    opt = BFGS(a, logfile=None, maxstep=0.1)
    try:
        converged = bool(opt.run(fmax=fmax, steps=steps))
    except (ValueError, CalculationFailed):  # FixInternals could not hold the set, or the SCF failed
        return None, float("nan"), int(opt.nsteps), False
    return a.get_positions(), float(a.get_potential_energy()), int(opt.nsteps), converged
