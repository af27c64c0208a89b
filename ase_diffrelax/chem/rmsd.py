"""Symmetry-aware RMSD after optimal alignment (all atoms, hydrogens included).

Atom correspondences are the automorphisms of the reference bond graph (elements plus
connectivity perceived from the reference coordinates), so equivalent atoms such as the
hydrogens of a methyl group may swap; the minimum over them, each after Kabsch alignment,
is reported (RDKit ``GetBestRMS``).
"""
from __future__ import annotations

import numpy as np


def kabsch_align(mobile: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Rotate centred ``mobile`` onto centred ``target`` (proper rotation), return it centred."""
    a = mobile - mobile.mean(0)
    b = target - target.mean(0)
    u, _, vt = np.linalg.svd(a.T @ b)
    d = np.sign(np.linalg.det(u @ vt))
    return a @ (u @ np.diag([1.0, 1.0, d]) @ vt)


def kabsch_rmsd(a: np.ndarray, b: np.ndarray) -> float:
    """RMSD between two coordinate sets in the same atom order after optimal rotation."""
    return float(np.sqrt(((kabsch_align(a, b) - (b - b.mean(0))) ** 2).sum(1).mean()))


class SymmetricRMSD:
    """RMSD of any geometry of one molecule to its reference, symmetry-aware."""

    def __init__(self, numbers, reference: np.ndarray, max_matches: int = 20000):
        from .rdkit_interop import mol_from_xyz

        self.reference = np.asarray(reference, dtype=float)
        self.max_matches = max_matches
        try:
            self.mol = mol_from_xyz(numbers, self.reference, bond_orders=False)
        except ValueError:
            self.mol = None

    def __call__(self, positions: np.ndarray) -> float:
        positions = np.asarray(positions, dtype=float)
        if self.mol is None or not np.all(np.isfinite(positions)):
            return kabsch_rmsd(positions, self.reference) if np.all(np.isfinite(positions)) else float("nan")
        from rdkit import Chem
        from rdkit.Chem import rdMolAlign
        from rdkit.Geometry import Point3D

        probe = Chem.Mol(self.mol)
        conf = probe.GetConformer()
        for i, p in enumerate(positions):
            conf.SetAtomPosition(i, Point3D(*p))
        return float(rdMolAlign.GetBestRMS(probe, self.mol, maxMatches=self.max_matches))


def symmetric_rmsd(numbers, positions, reference) -> float:
    return SymmetricRMSD(numbers, reference)(positions)
