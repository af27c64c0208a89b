"""Putting an independently generated conformer into a reference's atom order, and SMILES with
the reference's stereochemistry (QM9's SMILES carry none)."""
from __future__ import annotations

import numpy as np

from .rdkit_interop import mol_from_xyz


def stereo_smiles(numbers, x_ref, fallback: str) -> str:
    """SMILES with the reference's stereocentres and double-bond geometry.

    Without it ETKDG picks stereoisomers at random and many 'conformers' are mirror images
    that no rotation aligns with the reference. A user who knows the molecule knows this.
    """
    from rdkit import Chem

    try:
        mol = mol_from_xyz(numbers, x_ref)
        Chem.AssignStereochemistryFrom3D(mol)
        return Chem.MolToSmiles(Chem.RemoveHs(mol))
    except Exception:  # RDKit raises several types; the plain SMILES is the honest fallback
        return fallback


def reorder_to_reference(numbers_ref, x_ref, atoms) -> np.ndarray | None:
    """Positions of ``atoms`` in the reference atom order (graph match), or None if the graphs differ."""
    ref = mol_from_xyz(numbers_ref, x_ref, bond_orders=False)
    probe = mol_from_xyz(atoms.numbers, atoms.positions, bond_orders=False)
    if ref.GetNumAtoms() != probe.GetNumAtoms():
        return None
    match = probe.GetSubstructMatch(ref)  # match[i] = probe atom for reference atom i
    if len(match) != ref.GetNumAtoms():
        return None
    return atoms.positions[list(match)]
