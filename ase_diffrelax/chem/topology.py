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


def bonded_pairs(numbers, positions, scale: float = 1.2) -> set[str]:
    """Element pairs joined by a bond, as sorted 'A-B' strings ('C-H', 'H-S', ...)."""
    from ase.data import chemical_symbols

    return {"-".join(sorted((chemical_symbols[numbers[i]], chemical_symbols[numbers[j]])))
            for i, j in bond_graph(numbers, positions, scale)}


def training_bonded_pairs(ms) -> list[str]:
    """Every bonded element pair that occurs in a MoleculeSet (a checkpoint's training split)."""
    seen: set[str] = set()
    for i in range(len(ms)):
        z, x = ms.molecule(i)
        seen |= bonded_pairs(z, x)
    return sorted(seen)


LOOSE_SCALE = 2.0  # a distorted (stretched) input still shows which atoms belong together


def fragments(n: int, bonds) -> int:
    """Connected components of the graph on n atoms."""
    parent = list(range(n))

    def root(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j in bonds:
        parent[root(i)] = root(j)
    return len({root(i) for i in range(n)})


def topology_change(numbers, before, after, scale: float = 1.2) -> dict:
    """Bonds broken and formed between two geometries of the same molecule, and whether the
    result falls apart into more pieces than the input held together (judged at LOOSE_SCALE, so a
    stretched input that should be one molecule counts as one). ``bonds_broken`` is the verdict a
    relaxation reports as its status."""
    a, b = bond_graph(numbers, before, scale), bond_graph(numbers, after, scale)
    n = len(numbers)
    pieces_before, pieces_after = fragments(n, bond_graph(numbers, before, LOOSE_SCALE)), fragments(n, b)
    split = pieces_after > pieces_before
    return {"broken": sorted(a - b), "formed": sorted(b - a), "changed": a != b or split,
            "fragments_before": pieces_before, "fragments_after": pieces_after, "split": split,
            "bonds_broken": bool(a - b) or split}


def describe(topo: dict) -> str:
    """One phrase for warnings and logs."""
    text = f"bonds broken {topo['broken']}, formed {topo['formed']}"
    if topo.get("split"):
        text += (f"; the result is {topo['fragments_after']} fragments where the input held "
                 f"{topo['fragments_before']}")
    return text
