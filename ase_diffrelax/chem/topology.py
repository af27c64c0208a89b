"""Bond graphs from covalent radii, to flag relaxations that break or form bonds."""
from __future__ import annotations

import numpy as np
from ase.data import covalent_radii


def bond_graph(numbers, positions, scale: float = 1.2) -> set[tuple[int, int]]:
    """Bonds (i < j) where the distance is below ``scale`` times the sum of covalent radii."""
    pos = np.asarray(positions, dtype=float)
    r = covalent_radii[np.asarray(numbers)]
    d = np.sqrt(((pos[:, None] - pos[None]) ** 2).sum(-1))
    i, j = np.nonzero(np.triu(d < scale * (r[:, None] + r[None]), k=1))
    return set(zip(i.tolist(), j.tolist()))


def topology_change(numbers, before, after, scale: float = 1.2) -> dict:
    """Bonds broken and formed between two geometries of the same molecule."""
    a, b = bond_graph(numbers, before, scale), bond_graph(numbers, after, scale)
    return {"broken": sorted(a - b), "formed": sorted(b - a), "changed": a != b}
