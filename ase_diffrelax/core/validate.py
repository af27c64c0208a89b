"""Input checks that run before any torch call, with messages that name the problem."""
from __future__ import annotations

import warnings

import numpy as np
from ase.calculators.calculator import InputError as ASEInputError
from ase.data import chemical_symbols, covalent_radii

MIN_DISTANCE = 0.5  # Angstrom; closer pairs are treated as overlapping atoms
# an atom whose nearest neighbour is farther than this many times the sum of covalent radii
# is not bonded to anything: the denoiser has never seen a free atom
ISOLATED_FACTOR = 2.0


class InputError(ASEInputError, ValueError):
    """A structure the denoiser cannot relax; the message says why."""


def _integer_info(atoms, key: str, label: str) -> int:
    value = atoms.info[key]
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = float("nan")
    if not np.isfinite(number) or number != round(number) or isinstance(value, bool):
        raise InputError(f"{label}: info[{key!r}] = {value!r} is not a whole number")
    return int(round(number))


def total_charge(atoms, label: str = "input") -> int:
    """The charge a user gave: ``atoms.info["charge"]``, else the sum of initial charges."""
    if "charge" in atoms.info:
        return _integer_info(atoms, "charge", label)
    return int(round(float(atoms.get_initial_charges().sum())))


def unpaired_electrons(atoms, label: str = "input") -> int:
    """``atoms.info["spin"]`` / ``"uhf"`` (unpaired electrons) or initial magnetic moments, else
    the parity of the electron count (an odd count has at least one unpaired electron)."""
    for key in ("uhf", "spin"):
        if key in atoms.info:
            uhf = _integer_info(atoms, key, label)
            if uhf < 0:
                raise InputError(f"{label}: info[{key!r}] = {uhf} unpaired electrons; must be >= 0")
            return uhf
    moments = atoms.get_initial_magnetic_moments()
    if np.any(moments):
        return int(round(abs(float(moments.sum()))))
    return int((int(atoms.numbers.sum()) - total_charge(atoms, label)) % 2)


def check_atoms(atoms, elements, max_atoms: int | None = None, label: str = "input", card: dict | None = None) -> None:
    """Raise InputError for anything the model cannot handle; warn for a very large molecule."""
    card = card or {}
    n = len(atoms)
    min_atoms = int(card.get("min_atoms", 3))
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
    if n < min_atoms:
        raise InputError(f"{label}: {n} atoms ({atoms.get_chemical_formula()}), fewer than the smallest "
                         f"training molecule ({min_atoms} atoms); the denoiser cannot read its noise level")
    radii = covalent_radii[atoms.numbers]
    reach = d / (radii[:, None] + radii[None])  # distance in units of a bond between the two elements
    lonely = reach.min(1) > ISOLATED_FACTOR
    if lonely.any():
        k = int(np.nonzero(lonely)[0][0])
        raise InputError(
            f"{label}: atom {k} ({chemical_symbols[atoms.numbers[k]]}) has no neighbour within bonding distance "
            f"(nearest {d[k].min():.2f} A); free atoms and exploded structures cannot be denoised"
        )
    charge = total_charge(atoms, label)
    uhf = unpaired_electrons(atoms, label)
    charges_ok = card.get("charges", [0])
    if charge not in charges_ok or uhf != 0:
        what = f"charge {charge:+d}" if charge not in charges_ok else f"{uhf} unpaired electron(s)"
        raise InputError(
            f"{label}: {what}; this checkpoint ({card.get('name', 'unnamed')}) was trained on neutral closed-shell "
            "molecules only and would relax it as one; use a physics calculator (xTB/DFT) for ions and radicals"
        )
    heavy, max_heavy = int((atoms.numbers > 1).sum()), card.get("max_heavy_atoms")
    low, low_heavy = card.get("min_training_atoms", 0), card.get("min_training_heavy_atoms", 0)
    if n < low or heavy < low_heavy:
        warnings.warn(
            f"{label}: {n} atoms ({heavy} heavy), smaller than the smallest training molecule of "
            f"{card.get('name', 'this checkpoint')} ({low} atoms, {low_heavy} heavy); the denoiser has not seen "
            "molecules this small (model=None picks the checkpoint trained on this size)", stacklevel=3)
    if (max_atoms and n > 1.5 * max_atoms) or (max_heavy and heavy > 1.5 * max_heavy):
        warnings.warn(
            f"{label}: {n} atoms ({heavy} heavy), far more than the largest training molecule ({max_atoms} atoms"
            + (f", {max_heavy} heavy" if max_heavy else "") + "); the denoiser has not seen molecules this size "
            "and may distort it",
            stacklevel=3,
        )


def unseen_bonds(atoms, card: dict) -> list[str]:
    """Bonded element pairs of ``atoms`` that never occur in the checkpoint's training data (the
    registry's ``bonded_pairs``): e.g. the S-H of a thiol for the MOSES checkpoint, on which the
    diffusion start was 8-17 kcal/mol worse than MMFF94's (docs/benchmarks.md)."""
    known = card.get("bonded_pairs")
    if not known:
        return []
    from ..chem.topology import bonded_pairs

    return sorted(bonded_pairs(atoms.numbers, atoms.positions) - set(known))


def check_for_model(atoms, model, label: str = "input", warn_unseen: bool = True) -> None:
    """``check_atoms`` with the limits a loaded checkpoint states in its card."""
    check_atoms(atoms, model.elements, model.card.get("max_atoms"), label=label, card=model.card)
    unseen = unseen_bonds(atoms, model.card) if warn_unseen else []
    if unseen:
        warnings.warn(f"{label}: bond type(s) {', '.join(unseen)} never occur in the training data of "
                      f"{model.name}: the denoiser may distort them (run_pipeline skips diffusion for such molecules)",
                      stacklevel=3)
