"""H C N O F molecules of 10-17 heavy atoms for the checkpoint-choice study: the size gap between
QM9 (<= 9 heavy atoms) and MOSES (18-26).

Neither training set has molecules this size, so the choice rule needs its own measurement there.
Source: BRICS fragments (broken bonds capped with H) of our MOSES *validation* molecules, so no
test molecule takes part in a tuning decision. Writes one SMILES per line, all in 'val'; build the
xTB minima with ``ase-diffrelax dataset FILE --out DIR``.

    python benchmarks/size_gap_smiles.py --n 80 --out data/size_gap/size_gap.smi
"""
from __future__ import annotations

import argparse
from pathlib import Path


def brics_fragments(smiles: str) -> set[str]:
    from rdkit import Chem
    from rdkit.Chem import BRICS

    mol = Chem.MolFromSmiles(smiles)
    if mol is None:
        return set()
    out = set()
    for frag in BRICS.BRICSDecompose(mol, minFragmentSize=6, keepNonLeafNodes=True):
        capped = Chem.MolFromSmiles(frag)
        if capped is None:
            continue
        capped = Chem.RWMol(capped)
        for atom in capped.GetAtoms():
            if atom.GetAtomicNum() == 0:  # BRICS attachment point -> hydrogen
                atom.SetAtomicNum(1)
                atom.SetIsotope(0)
        try:
            m = Chem.RemoveHs(capped.GetMol())
        except Exception:  # noqa: BLE001 - RDKit sanitisation errors on odd fragments: skip them
            continue
        out.add(Chem.MolToSmiles(m))
    return out


def main(argv=None):
    import numpy as np
    from rdkit import Chem

    from ase_diffrelax.training.moses import moses_entries

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=80)
    p.add_argument("--heavy", default="10:17")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="data/size_gap/size_gap.smi")
    args = p.parse_args(argv)
    lo, hi = (int(x) for x in args.heavy.split(":"))
    val = [smi for _, smi, split in moses_entries() if split == "val"]
    frags = set()
    for smi in val:
        for f in brics_fragments(smi):
            m = Chem.MolFromSmiles(f)
            if (m is not None and lo <= m.GetNumHeavyAtoms() <= hi and Chem.GetFormalCharge(m) == 0
                    and {a.GetSymbol() for a in m.GetAtoms()} <= {"C", "N", "O", "F"}):
                frags.add(f)
    frags = sorted(frags)
    pick = [frags[i] for i in np.random.default_rng(args.seed).permutation(len(frags))[: args.n]]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("smiles\n" + "".join(f"{s} val\n" for s in pick))
    sizes = sorted(Chem.MolFromSmiles(s).GetNumHeavyAtoms() for s in pick)
    print(f"{len(frags)} fragments of {lo}-{hi} heavy atoms from {len(val)} validation molecules; "
          f"wrote {len(pick)} to {args.out} (heavy atoms {sizes[0]}-{sizes[-1]}, median {sizes[len(sizes) // 2]})")


if __name__ == "__main__":
    main()
