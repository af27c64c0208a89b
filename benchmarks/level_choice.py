"""Which checkpoint to hand drug-size molecules to DFT with: the one trained at the target's level
(QM9, B3LYP, <= 9 heavy atoms) or the one trained on drug-size molecules at GFN2-xTB (issue 29, item 5).

For the H C N O F molecules of the drug-like DFT hand-off matrix (MOSES ``test``, B3LYP/6-31G* with
density fitting, ``benchmarks/cache/handoff_matrix_moses_dft_*.jsonl``), every start is scored by a
DFT single point above the lowest minimum any cached route reached for that molecule:

  mmff             the dataset's ETKDG -> MMFF94 minimum (the shared start; with --mmff)
  xtb-min          the GFN2-xTB BFGS minimum from it (the matrix's ``xtb-preopt`` start energy)
  diffusion:NAME   DiffusionRelax(policy jt, seed 0) from the MMFF94 start with that checkpoint

Single points are cached per molecule, start and checkpoint weights hash in
``benchmarks/cache/level_choice_moses_dft.jsonl``: a killed run resumes, a new checkpoint adds rows.

    OMP_NUM_THREADS=1 nohup python -m benchmarks.level_choice \\
        --models qm9-painn128-jt,moses-painn128-jt,moses-painn128-jt2 --out docs/results/level_choice_moses_dft.json &
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from ase_diffrelax.evaluation import KCAL_MOL_PER_EV
from ase_diffrelax.files import JsonlStore, atomic_write_json
from benchmarks import cache_tag

HERE = Path(__file__).resolve().parent
DATA = HERE.parent / "data" / "moses_xtb" / "dataset.npz"


def matrix_molecules(matrix: Path, elements: set[int]) -> dict[str, dict]:
    """Per molecule of the matrix cache: its lowest final energy and the xTB-minimum start energy (eV)."""
    out: dict[str, dict] = {}
    for line in matrix.read_text().splitlines():
        r = json.loads(line)
        if r.get("bonds_changed") or not np.isfinite(r.get("e_end", np.nan)):
            continue
        m = out.setdefault(r["mol"], {"e_min": np.inf, "e_xtb_min": None, "smiles": r["smiles"]})
        m["e_min"] = min(m["e_min"], float(r["e_end"]))
        if r["start"] == "xtb-preopt":
            m["e_xtb_min"] = float(r["e_start"])
    from rdkit import Chem

    keep = {}
    for mol, m in out.items():
        zs = {a.GetAtomicNum() for a in Chem.AddHs(Chem.MolFromSmiles(m["smiles"])).GetAtoms()}
        if zs <= elements:
            keep[mol] = m
    return keep


def mmff_starts(mols: list[str], data: Path = DATA) -> dict:
    from ase_diffrelax.training.xtb_dataset import mmff_start, read_dataset

    out = {}
    for part in sorted({m.rsplit("_", 1)[0] for m in mols}):
        for a in read_dataset(data, split=part):
            key = f"{part}_{a.info['id']}"
            if key in mols:
                out[key] = mmff_start(a)
    return out


def run(args) -> dict:
    from ase_diffrelax import DiffusionRelax, load_model
    from ase_diffrelax.evaluation import model_hash
    from ase_diffrelax.workflows.physics import PySCFCalculator

    tag = cache_tag(f"dft_{args.xc}_{args.basis}_df")
    matrix = HERE / "cache" / f"handoff_matrix_moses_{tag}.jsonl"
    mols = matrix_molecules(matrix, {1, 6, 7, 8, 9})
    starts = mmff_starts(list(mols))
    cache = JsonlStore(HERE / "cache" / f"level_choice_moses_{tag}.jsonl")
    models = {name: load_model(name, device="cpu") for name in args.models.split(",") if name}
    calc = PySCFCalculator(xc=args.xc, basis=args.basis, density_fit=True, threads=args.threads)
    rows: dict[str, dict[str, dict]] = {}
    wanted = set(args.molecules.split(",")) if args.molecules else None
    for mol in sorted(mols):
        if mol not in starts or (wanted is not None and mol not in wanted):
            continue
        cache.reload()  # another process may have scored this molecule meanwhile
        mmff = starts[mol]
        todo = [(f"diffusion:{n}", m) for n, m in models.items()] + ([("mmff", None)] if args.mmff else [])
        for start, model in todo:
            key = f"{mol}_{start}" + (f"_{model_hash(model)}" if model is not None else "")
            if key not in cache:
                atoms = mmff.copy()
                wall_diff = 0.0
                if model is not None:
                    t0 = time.perf_counter()
                    DiffusionRelax(atoms, model=model, policy="jt", seed=0, logfile=None).run()
                    wall_diff = time.perf_counter() - t0
                calc.set(charge=int(mmff.info["charge"]))
                atoms.calc = calc
                t0 = time.perf_counter()
                energy = float(atoms.get_potential_energy())
                cache.add(key, {"mol": mol, "start": start, "energy": energy, "n_atoms": len(atoms),
                                "diffusion_wall_s": wall_diff, "dft_wall_s": time.perf_counter() - t0})
                print(f"{mol} {start}: {(energy - mols[mol]['e_min']) * KCAL_MOL_PER_EV:.2f} kcal/mol", flush=True)
            rows.setdefault(start, {})[mol] = cache.get(key)
        if mols[mol]["e_xtb_min"] is not None:
            rows.setdefault("xtb-min", {})[mol] = {"energy": mols[mol]["e_xtb_min"]}
    return summarize(rows, mols, args)


def summarize(rows, mols, args) -> dict:
    import sys

    out = {"command": "python -m benchmarks.level_choice " + " ".join(sys.argv[1:]),
           "level": f"{args.xc}/{args.basis} (PySCF, density fitting), single points",
           "reference": "lowest final energy any route of the drug-like DFT hand-off matrix reached per molecule",
           "molecules": sorted(m for m in mols if any(m in r for r in rows.values())), "starts": {}, "per_molecule": {}}
    for start, per in rows.items():
        dE = {m: (r["energy"] - mols[m]["e_min"]) * KCAL_MOL_PER_EV for m, r in per.items()}
        out["per_molecule"][start] = {m: round(v, 3) for m, v in sorted(dE.items())}
        v = np.array(list(dE.values()))
        out["starts"][start] = {"n": int(len(v)), "median_kcal": float(np.median(v)), "mean_kcal": float(v.mean()),
                                "max_kcal": float(v.max())}
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default="qm9-painn128-jt,moses-painn128-jt2")
    p.add_argument("--xc", default="b3lyp")
    p.add_argument("--basis", default="6-31g*")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--mmff", action="store_true", help="also score the MMFF94 start (one more single point each)")
    p.add_argument("--molecules", default=None, help="comma list of molecule ids (e.g. test_3923): only these "
                   "(several processes can share the cache, each on its own molecules)")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    report = run(args)
    print(json.dumps(report["starts"], indent=1))
    if args.out:
        atomic_write_json(args.out, report)


if __name__ == "__main__":
    main()
