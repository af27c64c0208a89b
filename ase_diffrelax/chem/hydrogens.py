"""X-H bond lengths the denoiser can get wrong, put back in range after sampling.

A methyl or amino group whose rotation the model is unsure of comes back with its hydrogens
pulled toward the rotation axis (the denoiser predicts the mean over rotamers): C-H 1.00-1.05 A
instead of 1.09, N-H 0.93 instead of 1.01. Rare (6 of 200 MOSES ``val`` starts of
``moses-painn128-jt7``), but each costs 0.3-5 kcal/mol and can put the start above its input
(issue 29; docs/benchmarks.md "X-H guard").
"""
from __future__ import annotations

import numpy as np

from .topology import bond_graph

# A, per heavy element bonded to H: the range that holds the X-H bonds of both training sets'
# minima (GFN2-xTB MOSES 0.01th-99.99th percentile C 1.049-1.112, N 1.002-1.038, O 0.961-1.013,
# S 1.326-1.355; B3LYP QM9 C 1.061-1.119, N 1.003-1.073, O 0.960-1.031), the C-H floor set where
# the MOSES val starts stop gaining (docs/benchmarks.md)
XH_RANGE = {6: (1.06, 1.125), 7: (0.98, 1.08), 8: (0.94, 1.04), 16: (1.30, 1.38)}
# a carbon with two neighbours (alkyne, HCN): xTB puts its C-H at 1.049-1.050 A, below the floor
SP_CH_RANGE = (1.04, 1.10)


def restore_hydrogen_lengths(numbers, before, after, movable=None, scale: float = 1.2):
    """``after`` with every X-H bond whose length left its ``XH_RANGE`` set to ``before``'s length
    clipped into the range, along ``after``'s bond direction (only the H moves). A bond is one in
    ``before``, or in ``after`` for a hydrogen ``before`` left without one (a stretched input).
    Returns (positions, number of bonds restored)."""
    z = np.asarray(numbers)
    x0, x1 = np.asarray(before, dtype=float), np.asarray(after, dtype=float).copy()
    graph = bond_graph(z, x0, scale)
    pairs = _xh_pairs(z, graph)
    bonded = {h for h, _ in pairs}
    pairs += [(h, x) for h, x in _xh_pairs(z, bond_graph(z, x1, scale)) if h not in bonded]
    degree = np.bincount(np.asarray(sorted(graph), dtype=int).ravel(), minlength=len(z))
    restored = 0
    for h, x in pairs:
        if movable is not None and not movable[h]:
            continue
        lo, hi = _range(z[x], degree[x])
        v = x1[h] - x1[x]
        length = float(np.linalg.norm(v))
        if lo <= length <= hi or length == 0.0:
            continue
        x1[h] = x1[x] + v / length * float(np.clip(np.linalg.norm(x0[h] - x0[x]), lo, hi))
        restored += 1
    return x1, restored


def xh_range(numbers, positions, i: int, scale: float = 1.2) -> tuple[float, float]:
    """The X-H length range (A) for heavy atom ``i``: ``XH_RANGE`` by element, ``SP_CH_RANGE`` for a
    carbon with two neighbours in ``positions``."""
    z = np.asarray(numbers)
    return _range(z[i], sum(i in pair for pair in bond_graph(z, positions, scale)))


def _range(element: int, degree: int) -> tuple[float, float]:
    return SP_CH_RANGE if element == 6 and degree == 2 else XH_RANGE[int(element)]


def _xh_pairs(z, graph) -> list[tuple[int, int]]:
    """(hydrogen, heavy atom in ``XH_RANGE``) for the bonds of ``graph``."""
    out = []
    for i, j in sorted(graph):
        h, x = (i, j) if z[i] == 1 else (j, i)
        if z[h] == 1 and int(z[x]) in XH_RANGE:
            out.append((h, x))
    return out
