"""RDKit interop: bond perception from coordinates, MMFF94 minima, SMILES -> Atoms.

Atom order is always kept: index i of the Atoms is atom i of the RDKit Mol.
"""
from __future__ import annotations

import numpy as np


def _rdkit():
    from rdkit import Chem, RDLogger

    RDLogger.DisableLog("rdApp.*")
    return Chem


def mol_from_xyz(numbers, positions, charge: int = 0, bond_orders: bool = True):
    """An RDKit Mol with the given atom order and conformer; bonds perceived from distances.

    Bond orders (needed by MMFF94) come from RDKit's xyz2mol port; they fail for a few
    unusual QM9 structures, which raises ``ValueError``.
    """
    Chem = _rdkit()
    from rdkit.Chem import rdDetermineBonds
    from rdkit.Geometry import Point3D

    rw = Chem.RWMol()
    for z in numbers:
        rw.AddAtom(Chem.Atom(int(z)))
    positions = np.asarray(positions, dtype=float)
    centre = positions.mean(0) if len(positions) else np.zeros(3)
    conf = Chem.Conformer(len(numbers))
    for i, p in enumerate(positions - centre):  # perceived at the origin: far away, precision would shift bonds
        conf.SetAtomPosition(i, Point3D(*p))
    mol = rw.GetMol()
    mol.AddConformer(conf, assignId=True)
    try:
        if bond_orders:
            rdDetermineBonds.DetermineBonds(mol, charge=charge)
        else:
            rdDetermineBonds.DetermineConnectivity(mol)
    except Exception as exc:  # RDKit raises several types here
        raise ValueError(f"could not perceive bonds from coordinates: {exc}") from exc
    conf = mol.GetConformer()
    for i, p in enumerate(positions):
        conf.SetAtomPosition(i, Point3D(*p))
    return mol


def mmff_minimize(mol, max_iters: int = 2000) -> np.ndarray:
    """MMFF94 minimum reached from the Mol's conformer (same basin, same atom order)."""
    from rdkit.Chem import AllChem

    props = AllChem.MMFFGetMoleculeProperties(mol, mmffVariant="MMFF94")
    if props is None:
        raise ValueError("MMFF94 has no parameters for this molecule")
    ff = AllChem.MMFFGetMoleculeForceField(mol, props)
    for _ in range(5):
        if ff.Minimize(maxIts=max_iters) == 0:
            break
    else:
        raise ValueError("MMFF94 minimisation did not converge")
    return np.array(ff.Positions(), dtype=np.float64).reshape(-1, 3)


def mmff_from_reference(numbers, positions, charge: int = 0) -> np.ndarray:
    """MMFF94 minimum started from a reference geometry with its perceived bond graph."""
    centre = np.asarray(positions, dtype=float).mean(0)
    return mmff_minimize(mol_from_xyz(numbers, np.asarray(positions, dtype=float) - centre, charge=charge)) + centre


def mmff_from_smiles_geometry(smiles: str, positions) -> np.ndarray:
    """MMFF94 minimum started from a geometry whose atoms follow ``AddHs(MolFromSmiles(smiles))``.

    The bond graph (and bond orders) come from the SMILES, not from perception, so this also works
    for S, Cl, Br and hypervalent groups that xyz perception gets wrong."""
    Chem = _rdkit()
    mol = Chem.MolFromSmiles(smiles)
    if mol is None:
        raise ValueError(f"RDKit cannot parse SMILES {smiles!r}")
    mol = Chem.AddHs(mol)
    positions = np.asarray(positions, dtype=float)
    if len(positions) != mol.GetNumAtoms():
        raise ValueError(f"{smiles!r} has {mol.GetNumAtoms()} atoms with hydrogens, the geometry {len(positions)}")
    conf = Chem.Conformer(mol.GetNumAtoms())
    for k, p in enumerate(positions):
        conf.SetAtomPosition(k, p.tolist())
    mol.AddConformer(conf, assignId=True)
    return mmff_minimize(mol)


def strip_counter_ions(smiles: str) -> tuple[str, list[str]]:
    """(the largest organic fragment of a multi-fragment SMILES, the fragments removed).

    Salts and solvates ('[Na+].[O-]C(=O)c1ccccc1', 'CCO.Cl') are relaxed as the parent ion or
    molecule; a SMILES of nothing but single ions ('[Na+].[Cl-]') has no molecule to relax."""
    Chem = _rdkit()
    mol = Chem.MolFromSmiles(smiles)
    if mol is None:
        raise ValueError(f"RDKit cannot parse SMILES {smiles!r}")
    frags = Chem.GetMolFrags(mol, asMols=True)
    if len(frags) == 1:
        return smiles, []
    sizes = [f.GetNumHeavyAtoms() for f in frags]
    if max(sizes) <= 1:
        raise ValueError(f"SMILES {smiles!r} is {len(frags)} single atoms or ions: no molecule to relax")
    keep = max(range(len(frags)), key=lambda k: (sizes[k], frags[k].GetNumAtoms()))
    if sizes.count(sizes[keep]) > 1:
        raise ValueError(f"SMILES {smiles!r} has {sizes.count(sizes[keep])} fragments of {sizes[keep]} heavy atoms: "
                         "which one to relax is not clear; give one molecule")
    return Chem.MolToSmiles(frags[keep]), [Chem.MolToSmiles(f) for k, f in enumerate(frags) if k != keep]


def atoms_from_smiles(smiles: str, seed: int = 0, mmff: bool = True, *, strip_salts: bool = False,
                      max_heavy_atoms: int | None = None, embed_timeout_s: float = 60.0):
    """ETKDG conformer (+ MMFF94 minimum) of a SMILES as ASE Atoms, hydrogens explicit.

    A charged or radical SMILES sets ``info["charge"]`` (total formal charge) and
    ``info["uhf"]`` (unpaired electrons), which the physics stages use. A SMILES of several
    fragments is refused unless ``strip_salts=True`` keeps its largest one (the removed ones are
    listed in ``info["removed_fragments"]``). ``max_heavy_atoms`` refuses larger molecules before
    embedding; ``embed_timeout_s`` bounds each ETKDG attempt."""
    return atoms_from_mol(mol_from_smiles(smiles, seed, mmff, strip_salts=strip_salts,
                                          max_heavy_atoms=max_heavy_atoms, embed_timeout_s=embed_timeout_s))


def atoms_from_mol(mol):
    """ASE Atoms of an RDKit Mol with explicit hydrogens and a conformer, same atom order; ``info``
    carries charge and unpaired electrons from the formal charges and radicals, and the SMILES and
    removed fragments a ``mol_from_smiles`` Mol records."""
    atoms = mol_to_atoms(mol)
    for key in ("smiles", "removed_fragments"):
        if mol.HasProp(f"_ase_diffrelax_{key}"):
            atoms.info[key] = mol.GetProp(f"_ase_diffrelax_{key}")
    charge = sum(a.GetFormalCharge() for a in mol.GetAtoms())
    radicals = sum(a.GetNumRadicalElectrons() for a in mol.GetAtoms())
    if charge:
        atoms.info["charge"] = int(charge)
    if radicals:
        atoms.info["uhf"] = int(radicals)
    return atoms


def mol_from_smiles(smiles: str, seed: int = 0, mmff: bool = True, *, strip_salts: bool = False,
                    max_heavy_atoms: int | None = None, embed_timeout_s: float = 60.0):
    """The RDKit Mol behind ``atoms_from_smiles``: bond orders from the SMILES, hydrogens explicit,
    one ETKDG (+ MMFF94) conformer; its atom order is the Atoms' order."""
    Chem = _rdkit()
    from rdkit.Chem import AllChem

    removed = []
    if strip_salts:
        smiles_used, removed = strip_counter_ions(smiles)
    else:
        smiles_used = smiles
    mol = Chem.MolFromSmiles(smiles_used)
    if mol is None:
        raise ValueError(f"RDKit cannot parse SMILES {smiles!r}")
    n_frags = len(Chem.GetMolFrags(mol))
    if n_frags > 1:
        raise ValueError(f"SMILES {smiles!r} has {n_frags} fragments (a salt, mixture or solvate?): give one "
                         "molecule, or strip_salts=True to keep the largest fragment")
    if max_heavy_atoms is not None and mol.GetNumHeavyAtoms() > max_heavy_atoms:
        raise ValueError(f"SMILES has {mol.GetNumHeavyAtoms()} heavy atoms, far beyond the {max_heavy_atoms} this "
                         "run accepts (every checkpoint's training range); not embedded")
    mol = Chem.AddHs(mol)
    params = AllChem.ETKDGv3()
    params.randomSeed = seed
    params.timeout = max(1, int(round(embed_timeout_s)))
    if AllChem.EmbedMolecule(mol, params) != 0:
        # strained cages (QM9 has many) often embed only from random starting coordinates
        params.useRandomCoords = True
        if AllChem.EmbedMolecule(mol, params) != 0:
            raise ValueError(f"ETKDG could not embed {smiles!r} (within {embed_timeout_s:.0f} s per attempt)")
    if mmff:
        pos = mmff_minimize(mol)
        conf = mol.GetConformer()
        for i, p in enumerate(pos):
            conf.SetAtomPosition(i, p.tolist())
    mol.SetProp("_ase_diffrelax_smiles", smiles_used)
    if removed:
        mol.SetProp("_ase_diffrelax_removed_fragments", ".".join(removed))
    return mol


def mol_to_atoms(mol):
    from ase import Atoms

    return Atoms(
        numbers=[a.GetAtomicNum() for a in mol.GetAtoms()],
        positions=mol.GetConformer().GetPositions(),
    )


def atoms_to_mol(atoms, bond_orders: bool = True, charge: int = 0):
    """RDKit Mol of an Atoms object, same atom order, bonds perceived from the coordinates."""
    return mol_from_xyz(atoms.numbers, atoms.positions, charge=charge, bond_orders=bond_orders)
