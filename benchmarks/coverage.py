"""Which bond types and groups of MOSES test the drug-like training split lacks (issue 29, item 4).

A bond type is the element pair plus RDKit's bond order (hydrogens explicit): "N-S:DOUBLE". For
each type (and thiols, SMARTS ``[SX2H1]``) the count of training molecules in the built dataset
(``data/moses_xtb/dataset.npz``, split ``train``) against the count of molecules in MOSES ``test``
and ``test_scaffolds`` (all rows of molsets' files) that hold it; types below ``--min`` training
molecules are listed.

    python -m benchmarks.coverage --out docs/results/coverage_moses.json
"""
from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
GROUPS = {"thiol": "[SX2H1]", "N-O single": "[#7]-[#8]", "N=S double": "[#7]=[#16]"}


def bond_types(smiles: str) -> set[str]:
    from rdkit import Chem

    mol = Chem.MolFromSmiles(smiles)
    if mol is None:
        return set()
    mol = Chem.AddHs(mol)
    out = set()
    for b in mol.GetBonds():
        a, c = sorted((b.GetBeginAtom().GetSymbol(), b.GetEndAtom().GetSymbol()))
        out.add(f"{a}-{c}:{b.GetBondType()}")
    return out


def count(smiles_list) -> tuple[Counter, Counter]:
    from rdkit import Chem, RDLogger

    RDLogger.DisableLog("rdApp.*")
    groups = {k: Chem.MolFromSmarts(v) for k, v in GROUPS.items()}
    types, found = Counter(), Counter()
    for s in smiles_list:
        types.update(bond_types(s))
        mol = Chem.MolFromSmiles(s)
        if mol is not None:
            found.update(k for k, p in groups.items() if mol.HasSubstructMatch(p))
    return types, found


def main(argv=None) -> None:
    from ase_diffrelax.files import atomic_write_json
    from ase_diffrelax.training.moses import moses_smiles

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(HERE.parent / "data" / "moses_xtb" / "dataset.npz"))
    p.add_argument("--min", type=int, default=20, help="list bond types with fewer training molecules")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    with np.load(args.data, allow_pickle=False) as f:
        train = f["smiles"][f["split"] == "train"].tolist()
    tr_types, tr_groups = count(train)
    report = {"training_molecules": len(train), "data": args.data, "parts": {}}
    for part in ("test", "test_scaffolds"):
        smi = moses_smiles(part)
        types, groups = count(smi)
        report["parts"][part] = {
            "molecules": len(smi),
            "rare_bond_types": {t: {"train": tr_types[t], part: n} for t, n in sorted(types.items())
                                if tr_types[t] < args.min},
            "groups": {g: {"train": tr_groups[g], part: groups[g]} for g in GROUPS}}
        print(part, report["parts"][part], flush=True)
    if args.out:
        atomic_write_json(args.out, report)


if __name__ == "__main__":
    main()


def markdown(before: dict, after: dict | None = None) -> str:
    """Rare bond types and groups: training molecules before (and after) the coverage build."""
    head = "| bond type or group | train" + (" (before -> after)" if after else "") + " | MOSES test | test_scaffolds |"
    lines = [head, "|---|---|---|---|"]
    keys = sorted({t for p in before["parts"].values() for t in p["rare_bond_types"]})
    rows = [(t, "rare_bond_types") for t in keys] + [(g, "groups") for g in before["parts"]["test"]["groups"]]
    for key, kind in rows:
        def get(rep, part, field):
            return rep["parts"][part][kind].get(key, {}).get(field, 0)
        tr = str(get(before, "test", "train") or get(before, "test_scaffolds", "train"))
        if after:
            rare = any(key in after["parts"][p][kind] for p in after["parts"])
            now = get(after, "test", "train") or get(after, "test_scaffolds", "train")
            tr += f" -> {now}" if rare or kind == "groups" else " -> >= 20 (no longer rare)"
        lines.append(f"| {key} | {tr} | {get(before, 'test', 'test')} | {get(before, 'test_scaffolds', 'test_scaffolds')} |")
    return "\n".join(lines)
