"""Input checks that run before any torch call, with messages that name the problem."""
from __future__ import annotations

import warnings

import numpy as np
from ase.data import chemical_symbols

MIN_DISTANCE = 0.5  # Angstrom; closer pairs are treated as overlapping atoms


class InputError(ValueError):
    """A structure the denoiser cannot relax; the message says why."""


def check_atoms(atoms, elements, max_atoms: int | None = None, label: str = "input") -> None:
    """Raise InputError for anything the model cannot handle; warn for a very large molecule."""
    n = len(atoms)
    if n < 2:
        raise InputError(f"{label}: needs at least 2 atoms, got {n}")
    if atoms.pbc.any():
        raise InputError(
            f"{label}: periodic cell (pbc={atoms.pbc.tolist()}); the denoiser is trained on isolated molecules, "
            "set atoms.pbc = False if the molecule is really isolated"
        )
    pos = np.asarray(atoms.positions, dtype=float)
    if not np.all(np.isfinite(pos)):
        bad = np.nonzero(~np.isfinite(pos).all(1))[0]
        raise InputError(f"{label}: positions of atoms {bad[:10].tolist()} are NaN or infinite")
    unknown = sorted(set(int(z) for z in atoms.numbers) - set(int(z) for z in elements))
    if unknown:
        names = ", ".join(chemical_symbols[z] if 0 <= z < len(chemical_symbols) else str(z) for z in unknown)
        known = ", ".join(chemical_symbols[z] for z in elements)
        raise InputError(f"{label}: element(s) {names} unknown to this checkpoint (it knows {known})")
    d = np.sqrt(((pos[:, None] - pos[None]) ** 2).sum(-1))
    np.fill_diagonal(d, np.inf)
    i, j = np.unravel_index(np.argmin(d), d.shape)
    if d[i, j] < MIN_DISTANCE:
        raise InputError(
            f"{label}: atoms {min(i, j)} and {max(i, j)} overlap ({d[i, j]:.3f} A apart, minimum {MIN_DISTANCE} A)"
        )
    if max_atoms and n > 1.5 * max_atoms:
        warnings.warn(
            f"{label}: {n} atoms, far more than the largest training molecule ({max_atoms}); "
            "the denoiser has not seen molecules this size and may distort it",
            stacklevel=3,
        )


def check_batch(atoms_list, elements, max_atoms=None) -> None:
    if len(atoms_list) == 0:
        raise InputError("empty batch: no structures to relax")
    for k, atoms in enumerate(atoms_list):
        check_atoms(atoms, elements, max_atoms, label=f"structure {k}")
