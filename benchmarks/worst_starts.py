"""Where the diffusion start is worse than MMFF94's (MOSES test): the worst 5 % and their groups.

A molecule counts against diffusion when its diffusion start lies higher above the GFN2-xTB
minimum than its MMFF94 start (``benchmarks/drugs.py`` report), or when the strongest
optimizer of the hand-off matrix (Sella, internal coordinates) needs more xTB calls from it
(``benchmarks/handoff_matrix.py`` cache). The worst 5 % by start-energy excess are listed with
their functional groups; each group's share among all "worse" molecules is set against its share
in the whole set (enrichment > 1: over-represented).

    python -m benchmarks.worst_starts --out docs/results/worst_starts_moses_test.json
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from ase_diffrelax.files import JsonlStore, atomic_write_json

HERE = Path(__file__).resolve().parent
GROUPS = {  # SMARTS, checked on the SMILES with explicit hydrogens
    "thiol": "[SX2;H1]", "thioether": "[SX2;H0]([#6])[#6]", "thiophene": "s1cccc1", "sulfonamide": "S(=O)(=O)N",
    "sulfone": "[#6]S(=O)(=O)[#6]", "carboxylic acid": "C(=O)[OX2H1]", "ester": "[#6]C(=O)O[#6]",
    "amide": "C(=O)[NX3]", "urea": "[NX3]C(=O)[NX3]", "primary/secondary amine": "[NX3;H2,H1;!$(NC=O);!$(N-a)]",
    "aniline N-H": "[NX3;H1,H2]-a", "hydroxyl": "[OX2H1][#6;!$(C=O)]", "nitrile": "C#N", "nitro": "[N+](=O)[O-]",
    "ketone/aldehyde": "[#6][CX3](=O)[#1,#6]", "ether": "[OD2]([#6])[#6]", "Cl": "[Cl]", "Br": "[Br]", "F": "[F]",
    "aromatic N": "n", "non-aromatic ring >= 6": "[R;!a]@[R;!a]",
    "tertiary amine": "[NX3;H0;!$(NC=O);!$(N-a);!$(N=*)]([#6])([#6])[#6]",
}


def groups_of(smiles: str) -> list[str]:
    from rdkit import Chem

    mol = Chem.AddHs(Chem.MolFromSmiles(smiles))
    return [g for g, sm in GROUPS.items() if mol.HasSubstructMatch(Chem.MolFromSmarts(sm))]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--report", default="docs/results/drugs_test.json")
    p.add_argument("--part", default="test")
    p.add_argument("--matrix-cache", default=str(HERE / "cache" / "handoff_matrix_moses_xtb.jsonl"))
    p.add_argument("--data", default="data/moses_xtb/dataset.npz")
    p.add_argument("--fraction", type=float, default=0.05)
    p.add_argument("--out", default="docs/results/worst_starts_moses_test.json")
    args = p.parse_args(argv)
    from ase_diffrelax.training.xtb_dataset import read_dataset

    smiles = {a.info["id"]: a.info["smiles"] for a in read_dataset(args.data, split=args.part)}
    table = json.loads(Path(args.report).read_text())["parts"][args.part]["table"]
    cache = JsonlStore(args.matrix_cache)
    sella = {}
    for _, r in cache.items():
        if r.get("route") == "sella" and str(r["mol"]).startswith(f"{args.part}_"):
            sella[(int(str(r["mol"]).split("_")[-1]), r["start"])] = r["calls"]
    rows = []
    for t in table:
        mid = int(t["id"])
        excess = t["diffusion"]["start_kcal"] - t["mmff"]["start_kcal"]
        s_mmff, s_diff = sella.get((mid, "mmff")), sella.get((mid, "diffusion"))
        rows.append({"id": mid, "smiles": smiles[mid], "n_atoms": t["n_atoms"], "groups": groups_of(smiles[mid]),
                     "start_kcal_mmff": t["mmff"]["start_kcal"], "start_kcal_diffusion": t["diffusion"]["start_kcal"],
                     "start_excess_kcal": excess, "bfgs_steps_mmff": t["mmff"]["steps"],
                     "bfgs_steps_diffusion": t["diffusion"]["steps"], "sella_calls_mmff": s_mmff,
                     "sella_calls_diffusion": s_diff,
                     "worse_energy": excess > 0,
                     "worse_sella": s_mmff is not None and s_diff is not None and s_diff > s_mmff})
    worse = [r for r in rows if r["worse_energy"] or r["worse_sella"]]
    k = max(1, int(round(args.fraction * len(rows))))
    worst = sorted(rows, key=lambda r: -r["start_excess_kcal"])[:k]
    share = {}
    for g in GROUPS:
        n_all = sum(g in r["groups"] for r in rows)
        if not n_all:
            continue
        n_worse = sum(g in r["groups"] for r in worse)
        n_worst = sum(g in r["groups"] for r in worst)
        share[g] = {"all": n_all, "worse": n_worse, "worst": n_worst,
                    "enrichment_worse": (n_worse / max(1, len(worse))) / (n_all / len(rows)),
                    "enrichment_worst": (n_worst / k) / (n_all / len(rows)),
                    "median_excess_kcal_with_group": float(np.median([r["start_excess_kcal"] for r in rows
                                                                       if g in r["groups"]]))}
    with_sella = [r for r in rows if r["sella_calls_mmff"] is not None and r["sella_calls_diffusion"] is not None]
    report = {"part": args.part, "n": len(rows), "n_with_sella": len(with_sella),
              "worse_energy": sum(r["worse_energy"] for r in rows), "worse_sella": sum(r["worse_sella"] for r in rows),
              "worse_either": len(worse), "worst_fraction": args.fraction, "worst": worst,
              "groups": dict(sorted(share.items(), key=lambda kv: -kv[1]["enrichment_worst"])),
              "criteria": "worse: diffusion start higher above the xTB minimum than MMFF94's, or more Sella calls "
                          "from it; worst: the top fraction by start-energy excess (kcal/mol)"}
    atomic_write_json(args.out, report, indent=1)
    print(f"{len(rows)} molecules: diffusion start higher than MMFF's on {report['worse_energy']}, more Sella calls on "
          f"{report['worse_sella']} of {len(with_sella)}; worst {k}:")
    for r in worst:
        print(f"  {r['id']:7d} +{r['start_excess_kcal']:5.1f} kcal/mol ({r['start_kcal_mmff']:.1f} -> "
              f"{r['start_kcal_diffusion']:.1f})  {r['smiles']}  {', '.join(r['groups'])}")
    for g, v in list(report["groups"].items())[:8]:
        print(f"  {g:26s} all {v['all']:3d} worse {v['worse']:3d} worst {v['worst']:2d}  enrichment worst "
              f"{v['enrichment_worst']:.2f} worse {v['enrichment_worse']:.2f}")
    return report


if __name__ == "__main__":
    main()
