"""Thiols, the chemistry MOSES filtered out (issue 29): does a checkpoint's start beat MMFF94 on them?

Known thiol drugs and simple thiols (public structures, none in any training set), each SMILES ->
ETKDG -> MMFF94 (seed 0); GFN2-xTB (tblite) single points of the MMFF94 start and of each
checkpoint's diffusion start (policy ``jt``, relaxed even where the checkpoint never saw S-H:
``unseen_bonds="relax"``), against the lowest of the ``xtb --opt tight`` minima reached from the
MMFF94 start and from every diffusion start. The goal: no thiol ends higher than its MMFF94 start.

    python -m benchmarks.thiols --models moses-painn128-jt --out docs/results/thiols.json
"""
from __future__ import annotations

import argparse
import os
import subprocess
import tempfile

import numpy as np

from ase_diffrelax.evaluation import KCAL_MOL_PER_EV

THIOLS = {
    "ethanethiol": "CCS", "2-mercaptoethanol": "OCCS", "thiophenol": "Sc1ccccc1", "4-chlorothiophenol": "Sc1ccc(Cl)cc1",
    "captopril": "C[C@H](CS)C(=O)N1CCC[C@H]1C(=O)O", "tiopronin": "CC(S)C(=O)NCC(=O)O",
    "acetylcysteine": "CC(=O)N[C@@H](CS)C(=O)O", "penicillamine (neutral)": "CC(C)(S)[C@@H](N)C(=O)O",
    "thiorphan": "OC(=O)CNC(=O)C(CS)Cc1ccccc1", "zofenoprilat": "C[C@H](CS)C(=O)N1C[C@@H](C[C@H]1C(=O)O)Sc1ccccc1",
    "bucillamine": "CC(C)(S)C(=O)N[C@@H](CS)C(=O)O", "dimercaprol": "OCC(S)CS",
    "4-mercaptobenzoic acid": "OC(=O)c1ccc(S)cc1", "2-mercaptopyridine (thiol form)": "Sc1ccccn1",
    "furfuryl mercaptan": "SCc1ccco1", "benzyl mercaptan": "SCc1ccccc1",
}


def xtb_minimum(numbers, positions, charge=0):
    from ase import Atoms
    from ase.io import read, write

    with tempfile.TemporaryDirectory() as tmp:
        write(os.path.join(tmp, "s.xyz"), Atoms(numbers=numbers, positions=positions))
        r = subprocess.run(["xtb", "s.xyz", "--opt", "tight", "--chrg", str(charge)], cwd=tmp, capture_output=True,
                           text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
        if r.returncode != 0:
            raise RuntimeError(f"xtb --opt failed: {r.stderr[-300:]}")
        return read(os.path.join(tmp, "xtbopt.xyz")).positions


def main(argv=None) -> None:
    from ase_diffrelax import atoms_from_smiles, relax_many
    from ase_diffrelax.files import atomic_write_json

    from .start_quality import single_point

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="moses-painn128-jt")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    models = [m for m in args.models.split(",") if m]
    rows = []
    for name, smi in THIOLS.items():
        a = atoms_from_smiles(smi, seed=0)
        starts = {"mmff": a.positions}
        for m in models:
            starts[m] = relax_many([a], model=m, progress=False, unseen_bonds="relax")[0].atoms.positions
        energies = {k: single_point(a.numbers, x) for k, x in starts.items()}
        minima = [single_point(a.numbers, xtb_minimum(a.numbers, x)) for x in starts.values()]
        e_min = min(minima + list(energies.values()))
        row = {"name": name, "smiles": smi, "n_atoms": len(a),
               **{f"dE_{k}_kcal": (e - e_min) * KCAL_MOL_PER_EV for k, e in energies.items()}}
        rows.append(row)
        print({k: round(v, 2) if isinstance(v, float) else v for k, v in row.items()}, flush=True)
    summary = {m: {"median_dE_kcal": float(np.median([r[f"dE_{m}_kcal"] for r in rows])),
                   "above_mmff": sum(r[f"dE_{m}_kcal"] > r["dE_mmff_kcal"] for r in rows)} for m in models}
    summary["mmff"] = {"median_dE_kcal": float(np.median([r["dE_mmff_kcal"] for r in rows]))}
    print(summary)
    if args.out:
        atomic_write_json(args.out, {"level": "GFN2-xTB", "n": len(rows), "summary": summary, "rows": rows})


if __name__ == "__main__":
    main()
