"""Where the drug-like hand-off gains and where it does not: ``drugs.py`` reports split by element
group (H C N O F only / with S / with Cl / with Br) and by how far the MMFF94 start lies from the
xTB minimum (symmetry-aware all-atom RMSD, optimally aligned, terciles).

    python benchmarks/drugs_breakdown.py docs/results/drugs_test.json docs/results/drugs_test_scaffolds.json \\
        --out docs/results/drugs_test_breakdown.json
"""
from __future__ import annotations

import argparse

import numpy as np

from ase_diffrelax.evaluation import drugs_report_rows
from ase_diffrelax.files import atomic_write_json


def summary(rows: list[dict]) -> dict:
    ratio = [r["diffusion"]["steps"] / max(1, r["mmff"]["steps"]) for r in rows]
    return {"n": len(rows), "step_ratio_median": float(np.median(ratio)),
            "no_gain_fraction": float(np.mean(np.array(ratio) >= 0.95)),
            "mmff_start_kcal_median": float(np.median([r["mmff"]["start_kcal"] for r in rows])),
            "diffusion_start_kcal_median": float(np.median([r["diffusion"]["start_kcal"] for r in rows]))}


def main(argv=None):
    from ase_diffrelax.chem.rmsd import SymmetricRMSD
    from ase_diffrelax.training.xtb_dataset import read_dataset

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("reports", nargs="+")
    p.add_argument("--data", default="data/moses_xtb/dataset.npz")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    _, rows = drugs_report_rows(args.reports)
    mols = {(a.info["split"], a.info["id"]): a for a in read_dataset(args.data)}
    for r in rows:
        a = mols[(r["part"], r["id"])]
        r["elements"] = set(a.get_chemical_symbols())
        r["mmff_rmsd"] = float(SymmetricRMSD(a.numbers, a.positions)(a.arrays["positions_mmff"]))
    groups = {"H C N O F only": [r for r in rows if r["elements"] <= {"H", "C", "N", "O", "F"}]}
    for el in ("S", "Cl", "Br"):
        groups[f"with {el}"] = [r for r in rows if el in r["elements"]]
    cuts = np.percentile([r["mmff_rmsd"] for r in rows], [100 / 3, 200 / 3])
    for k, (lo, hi) in enumerate(zip([0.0, *cuts], [*cuts, np.inf])):
        groups[f"MMFF->xTB RMSD tercile {k + 1} ({lo:.2f}-{hi:.2f} A)"] = [
            r for r in rows if lo <= r["mmff_rmsd"] < hi]
    out = {"reports": args.reports, "data": args.data, "n": len(rows),
           "rmsd": "symmetry-aware, optimally aligned, all atoms incl. H, MMFF94 minimum vs xTB minimum",
           "groups": {name: summary(g) for name, g in groups.items() if g}}
    for name, s in out["groups"].items():
        print(f"{name:42s} n={s['n']:3d}  step ratio {s['step_ratio_median']:.2f}  no gain (>= 0.95) "
              f"{100 * s['no_gain_fraction']:4.1f} %  start {s['mmff_start_kcal_median']:.2f} -> "
              f"{s['diffusion_start_kcal_median']:.2f} kcal/mol")
    atomic_write_json(args.out, out, indent=1)
    return out


if __name__ == "__main__":
    main()
