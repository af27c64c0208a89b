"""Drug-like molecules (MOSES, GFN2-xTB dataset): relaxation quality, xTB hand-off and cost.

Molecules come from the assembled dataset (data/moses_xtb/dataset.npz, built by
``ase-diffrelax dataset moses``); test = MOSES ``test`` and ``test_scaffolds``, never trained on.

  quality   start = MMFF94 minimum started at the xTB minimum (the dataset's SMILES atom order,
            same basin); symmetry-aware all-atom RMSD to the xTB minimum before/after,
            failures (after > before), model evaluations
  handoff   GFN2-xTB BFGS (fmax --fmax eV/A) from the realistic start (SMILES -> ETKDG ->
            MMFF94, the dataset's pos_mmff), from MMFF94 -> diffusion, and from the xTB minimum
            itself: steps, start energy above the lowest final energy, bond changes, wall time
  cost      the diffusion stage against one xTB relaxation of the same molecule

``--model auto`` picks per molecule what ``DiffusionRelax`` would pick; a named checkpoint that
does not know a molecule's elements skips it (counted), e.g. the QM9 checkpoint on the
H C N O F subset. Every physics relaxation is cached in benchmarks/cache/drugs_xtb.jsonl.

    python benchmarks/drugs.py --split test --n 300 --out docs/results/drugs_test.json
"""
from __future__ import annotations

import argparse
import functools
import time
from pathlib import Path

import numpy as np

from ase_diffrelax.chem.rdkit_interop import mmff_from_smiles_geometry
from ase_diffrelax.evaluation import KCAL_MOL_PER_EV
from ase_diffrelax.files import JsonlStore, atomic_write_json

HERE = Path(__file__).resolve().parent


def xtb_bfgs(numbers, positions, fmax, max_steps, charge=0):
    from ase import Atoms
    from ase.optimize import BFGS

    from ase_diffrelax.chem.topology import topology_change
    from ase_diffrelax.workflows.physics import xtb_calculator

    a = Atoms(numbers=numbers, positions=positions)
    a.calc = xtb_calculator(charge=int(charge))
    t0 = time.perf_counter()
    e0 = a.get_potential_energy()
    opt = BFGS(a, logfile=None)
    conv = opt.run(fmax=fmax, steps=max_steps)
    return {"steps": opt.nsteps, "converged": bool(conv), "e_start": float(e0), "e_end": float(a.get_potential_energy()),
            "wall_s": time.perf_counter() - t0,
            "bonds_changed": bool(topology_change(numbers, positions, a.positions)["changed"])}


STARTS = ("mmff", "diffusion", "xtb-min")


@functools.cache
def diffusion_key(model: str, policy: str, compiled: bool) -> str:
    """Cache-key suffix of a diffusion start: hashed once per checkpoint, not once per molecule."""
    from ase_diffrelax import load_model
    from ase_diffrelax.evaluation import model_hash

    return f"_{model_hash(load_model(model), policy)}" + ("_compiled" if compiled else "")


def xtb_from(cache, part: str, atoms, start: str, args, model: str | None = None) -> dict:
    """One cached GFN2-xTB BFGS run of a dataset molecule from ``start``: its MMFF94 minimum, the
    diffusion output from there (``model``), or its xTB minimum."""
    from ase import Atoms

    from ase_diffrelax import relax_many

    key = f"{part}_{atoms.info['id']}_{start}"
    if start == "diffusion":
        key += diffusion_key(model, args.policy, args.compile)
    if key not in cache:
        extra = {}
        if start == "mmff":
            pos = atoms.arrays["positions_mmff"]
        elif start == "xtb-min":
            pos = atoms.positions
        else:
            t1 = time.perf_counter()
            res = relax_many([Atoms(numbers=atoms.numbers, positions=atoms.arrays["positions_mmff"])],
                             model=model, policy=args.policy, progress=False, compile=args.compile)[0]
            pos = res.atoms.positions
            extra = {"diffusion_wall_s": time.perf_counter() - t1, "diffusion_steps": res.steps}
        cache.add(key, {**xtb_bfgs(atoms.numbers, pos, args.fmax, args.max_steps, atoms.info["charge"]), **extra,
                        "smiles": atoms.info["smiles"], "n_atoms": len(atoms), "model": model})
    hit = cache.get(key)
    if hit.get("smiles", atoms.info["smiles"]) != atoms.info["smiles"]:
        raise ValueError(f"cache {cache.path}: {key} holds {hit['smiles']}, not {atoms.info['smiles']}: "
                         "another dataset's molecule; give this dataset its own --cache")
    return hit


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="data/moses_xtb/dataset.npz")
    p.add_argument("--split", default="test", help="test (MOSES test + test_scaffolds), test_scaffolds, test_only, val")
    p.add_argument("--n", type=int, default=300, help="molecules per MOSES part")
    p.add_argument("--model", default="auto")
    p.add_argument("--heavy", default=None, metavar="MIN:MAX",
                   help="only molecules with MIN..MAX heavy atoms (e.g. 10:22 for the checkpoint-choice study)")
    p.add_argument("--elements", default=None, help="only molecules made of these elements (e.g. H,C,N,O,F: "
                   "the same molecules for every checkpoint compared)")
    p.add_argument("--policy", default="jt")
    p.add_argument("--fmax", type=float, default=0.03)
    p.add_argument("--max-steps", type=int, default=1000)
    p.add_argument("--skip-handoff", action="store_true")
    p.add_argument("--references-only", action="store_true",
                   help="only fill the cache with the model-independent xTB runs (from MMFF94 and from the "
                   "xTB minimum) of the selected molecules; any elements, no model, no report")
    p.add_argument("--cache", default=str(HERE / "cache" / "drugs_xtb.jsonl"))
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--compile", action="store_true", help="relax_many(compile=True); diffusion timings are "
                   "then cached under their own keys")
    p.add_argument("--out", default="docs/results/drugs_test.json")
    args = p.parse_args(argv)
    import torch
    from ase import Atoms

    from ase_diffrelax import InputError, load_model, relax_many
    from ase_diffrelax.chem.rmsd import SymmetricRMSD
    from ase_diffrelax.core.checkpoint import choose_model
    from ase_diffrelax.evaluation import rmsd_stats
    from ase_diffrelax.training.xtb_dataset import read_dataset

    torch.set_num_threads(args.threads)
    parts = {"test": ["test", "test_scaffolds"], "test_only": ["test"], "test_scaffolds": ["test_scaffolds"],
             "val": ["val"]}[args.split]
    cache = JsonlStore(args.cache)
    report = {"data": args.data, "split": parts, "fmax": args.fmax, "policy": args.policy, "parts": {},
              "compile": args.compile, "heavy_atoms": args.heavy, "elements": args.elements,
              "rmsd": "symmetry-aware, optimally aligned, all atoms incl. H, to the GFN2-xTB minimum, Angstrom"}
    for part in parts:
        records = read_dataset(args.data, split=part)
        if args.heavy:
            lo, hi = (int(x) for x in args.heavy.split(":"))
            records = [a for a in records if lo <= int((a.numbers > 1).sum()) <= hi]
        if args.elements:
            allowed = set(args.elements.split(","))
            records = [a for a in records if set(a.get_chemical_symbols()) <= allowed]
        if args.references_only:
            for k, atoms in enumerate(records[: args.n]):
                for start in ("mmff", "xtb-min"):
                    xtb_from(cache, part, atoms, start, args)
                if (k + 1) % 50 == 0:
                    print(f"{part}: {k + 1} molecules", flush=True)
            continue
        mols, skipped = [], {}
        for atoms in records[: args.n]:
            try:
                name = choose_model([atoms]) if args.model == "auto" else args.model
                if not set(atoms.numbers.tolist()) <= set(load_model(name).elements):
                    raise InputError(f"elements outside {name}")
            except InputError as exc:
                skipped[str(exc).split(":")[0]] = skipped.get(str(exc).split(":")[0], 0) + 1
                continue
            mols.append((atoms, name))
        entry = {"n": len(mols), "skipped": sum(skipped.values()), "models": sorted({m[1] for m in mols})}
        if not mols:
            report["parts"][part] = entry
            continue
        # 1. relaxation quality from MMFF94 started at the xTB minimum
        starts, rms, before, names = [], [], [], []
        t0 = time.perf_counter()
        for atoms, name in mols:
            try:
                y = mmff_from_smiles_geometry(atoms.info["smiles"], atoms.positions)
            except ValueError:
                continue
            rm = SymmetricRMSD(atoms.numbers, atoms.positions)
            starts.append(Atoms(numbers=atoms.numbers, positions=y))
            rms.append(rm)
            before.append(rm(y))
            names.append(name)
        after = []
        for name in sorted(set(names)):
            idx = [k for k, nm in enumerate(names) if nm == name]
            res = relax_many([starts[k] for k in idx], model=name, policy=args.policy, progress=False,
                             compile=args.compile)
            for k, rr in zip(idx, res):
                after.append((k, rms[k](rr.atoms.positions), rr.steps))
        after.sort()
        wall = time.perf_counter() - t0
        entry["quality"] = rmsd_stats(before, [a for _, a, _ in after], [s for _, _, s in after], wall)
        # 2./3. xTB hand-off from the realistic start, with cost
        if not args.skip_handoff:
            table = []
            for atoms, name in mols:
                z, info = atoms.numbers, atoms.info
                out = {start: xtb_from(cache, part, atoms, start, args, name) for start in STARTS}
                e_min = min(min(v["e_end"] for v in out.values()), info["energy_xtb"])
                table.append({"id": info["id"], "n_atoms": len(z), **{
                    s: {"steps": v["steps"], "start_kcal": (v["e_start"] - e_min) * KCAL_MOL_PER_EV,
                        "final_kcal": (v["e_end"] - e_min) * KCAL_MOL_PER_EV, "bonds_changed": v["bonds_changed"],
                        "wall_s": v["wall_s"], "diffusion_wall_s": v.get("diffusion_wall_s")} for s, v in out.items()}})
            ratio = [t["diffusion"]["steps"] / max(1, t["mmff"]["steps"]) for t in table]
            entry["handoff"] = {
                "n": len(table),
                "steps_median": {s: float(np.median([t[s]["steps"] for t in table]))
                                 for s in ("mmff", "diffusion", "xtb-min")},
                "step_ratio_diffusion_vs_mmff_median": float(np.median(ratio)),
                "start_kcal_median": {s: float(np.median([t[s]["start_kcal"] for t in table])) for s in ("mmff", "diffusion")},
                "final_kcal_delta_diffusion_minus_mmff_median": float(np.median(
                    [t["diffusion"]["final_kcal"] - t["mmff"]["final_kcal"] for t in table])),
                "bonds_changed": {s: int(sum(t[s]["bonds_changed"] for t in table)) for s in ("mmff", "diffusion")},
                "diffusion_cost_vs_xtb_relaxation_median": float(np.median(
                    [t["diffusion"]["diffusion_wall_s"] / max(1e-9, t["mmff"]["wall_s"]) for t in table])),
                "diffusion_ms_per_molecule_median": float(
                    1000 * np.median([t["diffusion"]["diffusion_wall_s"] for t in table])),
            }
            entry["table"] = table
        report["parts"][part] = entry
        print(part, {k: v for k, v in entry.items() if k not in ("table",)}, flush=True)
        atomic_write_json(args.out, report, indent=1)
    if not args.references_only:  # a cache fill writes no report (and overwrites none)
        atomic_write_json(args.out, report, indent=1)
    return report


if __name__ == "__main__":
    main()
