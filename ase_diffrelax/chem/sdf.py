"""SD files in and out with RDKit: bond orders, names and properties travel with the coordinates.

A relaxed geometry is written onto the Mol it came from (its SMILES or its SD record), so bond
orders are never re-perceived from coordinates; the entry's name (``_Name``) and SD properties are
carried through and the relaxation's status, reason, checkpoint, level of theory and predicted
step are added as SD properties.
"""
from __future__ import annotations

import numpy as np

# properties every relaxed record gets (prefix keeps them apart from the user's own)
RESULT_PROPS = ("input_index", "status", "reason", "diffusion_model", "diffusion_level_of_theory", "diffusion_t",
                "diffusion_steps", "diffusion_hydrogens_restored", "topology_changed", "removed_fragments",
                "smiles_relaxed")


def iter_sdf(path: str):
    """(index, Mol with explicit hydrogens and a 3D conformer, or None, error) per SD record,
    streamed; a record RDKit cannot read becomes an error entry and reading goes on."""
    from rdkit import Chem, RDLogger

    RDLogger.DisableLog("rdApp.*")
    with open(path, "rb") as fh:
        for k, mol in enumerate(Chem.ForwardSDMolSupplier(fh, removeHs=False, sanitize=True)):
            if mol is None:
                yield k, None, f"SD record {k}: RDKit cannot read it (bad atom/bond block or valence)"
                continue
            try:
                yield k, with_hydrogens_3d(mol), ""
            except ValueError as exc:
                yield k, None, f"SD record {k}: {exc}"


def iter_sdf_atoms(path: str):
    """(index, Atoms or None, name, error, Mol or None) per SD record: ``iter_sdf`` as ASE sees it."""
    from .rdkit_interop import atoms_from_mol

    for k, mol, error in iter_sdf(path):
        if mol is None:
            yield k, None, "", error, None
            continue
        name = mol.GetProp("_Name") if mol.HasProp("_Name") else ""
        atoms = atoms_from_mol(mol)
        atoms.info["name"] = name
        yield k, atoms, name, error, mol


def with_hydrogens_3d(mol, seed: int = 0):
    """The record as the denoiser needs it: implicit hydrogens made explicit (placed from the
    heavy atoms' geometry), a 2D or missing conformer replaced by ETKDG + MMFF94. Props kept."""
    from rdkit import Chem
    from rdkit.Chem import AllChem

    props = mol.GetPropsAsDict(includePrivate=False, includeComputed=False)
    name = mol.GetProp("_Name") if mol.HasProp("_Name") else ""
    flat = mol.GetNumConformers() == 0 or not mol.GetConformer().Is3D() or np.allclose(
        mol.GetConformer().GetPositions()[:, 2], 0.0)
    if flat:
        mol = Chem.AddHs(mol)
        params = AllChem.ETKDGv3()
        params.randomSeed = seed
        if AllChem.EmbedMolecule(mol, params) != 0:
            raise ValueError("2D record that ETKDG could not embed")
        AllChem.MMFFOptimizeMolecule(mol, maxIters=2000)
    elif any(a.GetTotalNumHs(includeNeighbors=False) for a in mol.GetAtoms()):
        mol = Chem.AddHs(mol, addCoords=True)
    for key, value in props.items():
        set_prop(mol, key, value)
    mol.SetProp("_Name", name)
    return mol


def set_prop(mol, key: str, value) -> None:
    if isinstance(value, bool):
        mol.SetProp(key, str(value))
    elif isinstance(value, (int, np.integer)):
        mol.SetIntProp(key, int(value))
    elif isinstance(value, (float, np.floating)):
        mol.SetDoubleProp(key, float(value))
    else:
        mol.SetProp(key, str(value))


def relaxed_mol(mol, positions, props: dict, name: str | None = None):
    """A copy of ``mol`` at ``positions`` (same atom order) with ``props`` set; None values skipped."""
    from rdkit import Chem
    from rdkit.Geometry import Point3D

    out = Chem.Mol(mol)
    for key in out.GetPropNames(includePrivate=True):
        if key.startswith("_ase_diffrelax_"):  # bookkeeping of mol_from_smiles, not for the file
            out.ClearProp(key)
    if out.GetNumConformers() == 0:
        out.AddConformer(Chem.Conformer(out.GetNumAtoms()), assignId=True)
    conf = out.GetConformer()
    for i, p in enumerate(np.asarray(positions, dtype=float)):
        conf.SetAtomPosition(i, Point3D(*p))
    conf.Set3D(True)
    for key, value in props.items():
        if value not in (None, ""):
            set_prop(out, key, value)
    if name is not None:
        out.SetProp("_Name", name)
    return out


def empty_record(name: str, props: dict):
    """A zero-atom record that keeps an unreadable entry's place, name and reason in the output."""
    from rdkit import Chem

    return relaxed_mol(Chem.Mol(), np.zeros((0, 3)), props, name)


def append_sdf(path: str, mols) -> None:
    """Append records, flushed and fsynced (the progress sidecar records the size after)."""
    import os

    from rdkit import Chem

    with open(path, "a") as fh:
        writer = Chem.SDWriter(fh)
        writer.SetForceV3000(False)
        for m in mols:
            writer.write(m)
        writer.flush()
        writer.close()
        fh.flush()
        os.fsync(fh.fileno())


def count_records(path: str) -> int:
    with open(path, "rb") as fh:
        return sum(1 for line in fh if line.startswith(b"$$$$"))


def mol_for_atoms(atoms):
    """The Mol to write ``atoms`` with: bond orders from ``info["smiles"]`` when its hydrogen-explicit
    atom order is the atoms' (a SMILES start), else perceived from the coordinates (said in the
    record's ``bond_orders`` property)."""
    from rdkit import Chem

    from .rdkit_interop import mol_from_xyz

    smiles = atoms.info.get("smiles")
    if smiles:
        mol = Chem.MolFromSmiles(smiles)
        if mol is not None:
            mol = Chem.AddHs(mol)
            if [a.GetAtomicNum() for a in mol.GetAtoms()] == [int(z) for z in atoms.numbers]:
                mol.SetProp("bond_orders", "from the SMILES")
                return mol
    mol = mol_from_xyz(atoms.numbers, atoms.positions, charge=int(atoms.info.get("charge", 0)))
    mol.SetProp("bond_orders", "perceived from coordinates (the input carried none)")
    return mol


def write_sdf(path: str, atoms, props: dict, name: str = "") -> None:
    """One structure as an SD file, atomically."""
    import os

    from ..files import _tmp

    mol = relaxed_mol(mol_for_atoms(atoms), atoms.positions, props, name=name)
    tmp = _tmp(__import__("pathlib").Path(path))
    try:
        append_sdf(str(tmp), [mol])
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
