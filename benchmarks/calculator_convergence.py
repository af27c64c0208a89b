"""ASE optimizers on DiffusionCalculator pseudo-forces: do they converge, and where to?

Starts: MMFF94 minima of QM9 molecules started from their references (mmff-ref), or with
``--set moses`` the MMFF94 minima of MOSES test molecules (SMILES -> ETKDG -> MMFF94, the
dataset's pos_mmff; reference = their GFN2-xTB minima; the drug-like checkpoint). For each of
BFGS, LBFGS and FIRE at ``--fmax`` (eV/A, pseudo-units: fmax / stiffness is the residual
displacement in A) we report the fraction converged within ``--steps``, median steps, and the
symmetry-aware all-atom RMSD of the result to the DiffusionRelax result (default policy) and
to the B3LYP reference.

    python benchmarks/calculator_convergence.py --n 100 --out docs/results/calculator_convergence.json
    python benchmarks/calculator_convergence.py --set moses --n 50 --out docs/results/calculator_convergence_moses.json
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from ase.optimize import BFGS, FIRE, LBFGS

from ase_diffrelax import DiffusionCalculator, DiffusionRelax, load_model
from ase_diffrelax.chem.rmsd import SymmetricRMSD
from ase_diffrelax.evaluation import build_starts, pick_molecules
from ase_diffrelax.files import atomic_write_json


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None)
    p.add_argument("--n", type=int, default=100)
    p.add_argument("--split", default="test", choices=["test", "val"])
    p.add_argument("--stiffness", default="10", help="comma list, eV/A^2")
    p.add_argument("--fmax", type=float, default=0.05)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--set", choices=["qm9", "moses"], default="qm9")
    p.add_argument("--data", default="data/moses_xtb/dataset.npz")
    p.add_argument("--out", default="docs/results/calculator_convergence.json")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.set == "qm9":
        model = load_model(args.model)
        ms, order = pick_molecules(args.seed, args.split)
        starts, refs, skipped, ids = build_starts("mmff-ref", ms, order, args.n, args.seed)
    else:
        from ase_diffrelax.training.xtb_dataset import mmff_start, read_dataset

        model = load_model(args.model or "moses-painn128-jt")
        recs = [a for a in read_dataset(args.data, split="test" if args.split == "test" else "val")
                if set(a.numbers.tolist()) <= set(model.elements)][: args.n]
        starts = [mmff_start(a) for a in recs]
        refs = [(a.numbers, a.positions) for a in recs]
    relaxed, rmsds = [], []
    for a0, (z, x) in zip(starts, refs):
        a = a0.copy()
        DiffusionRelax(a, model=model, logfile=None).run()
        relaxed.append(a.positions.copy())
        rmsds.append(SymmetricRMSD(z, x))
    report = {"model": model.name, "set": args.set, "split": args.split, "n": len(starts), "fmax": args.fmax,
              "max_steps": args.steps,
              "rmsd": "symmetry-aware, optimally aligned, all atoms incl. H, Angstrom",
              "diffusionrelax_to_ref_median": float(np.median([f(r) for f, r in zip(rmsds, relaxed)])),
              "start_to_ref_median": float(np.median([f(a.positions) for f, a in zip(rmsds, starts)])), "runs": {}}
    for k in [float(v) for v in args.stiffness.split(",")]:
        for opt_cls in (BFGS, LBFGS, FIRE):
            conv, steps, to_dr, to_ref, fmax_end = [], [], [], [], []
            t0 = time.perf_counter()
            for a0, (z, _), dr, rm in zip(starts, refs, relaxed, rmsds):
                a = a0.copy()
                a.calc = DiffusionCalculator(model=model, stiffness=k)
                opt = opt_cls(a, logfile=None)
                conv.append(bool(opt.run(fmax=args.fmax, steps=args.steps)))
                steps.append(opt.nsteps)
                fmax_end.append(float(np.sqrt((a.get_forces() ** 2).sum(1)).max()))
                to_dr.append(SymmetricRMSD(z, dr)(a.positions))
                to_ref.append(rm(a.positions))
            key = f"{opt_cls.__name__}@{k:g}"
            report["runs"][key] = {
                "optimizer": opt_cls.__name__, "stiffness": k, "converged_frac": float(np.mean(conv)),
                "steps_median": float(np.median(steps)), "steps_max": int(np.max(steps)),
                "fmax_end_median": float(np.median(fmax_end)),
                "rmsd_to_diffusionrelax_median": float(np.median(to_dr)),
                "rmsd_to_ref_median": float(np.median(to_ref)),
                "wall_ms_per_molecule": 1000 * (time.perf_counter() - t0) / len(starts)}
            r = report["runs"][key]
            print(f"{key:12s} converged {r['converged_frac']:.2f}  steps {r['steps_median']:.0f} (max {r['steps_max']})  "
                  f"RMSD to DiffusionRelax {r['rmsd_to_diffusionrelax_median']:.4f}  to ref {r['rmsd_to_ref_median']:.4f} "
                  f"(DiffusionRelax to ref {report['diffusionrelax_to_ref_median']:.4f}, start "
                  f"{report['start_to_ref_median']:.4f})", flush=True)
            atomic_write_json(args.out, report, indent=1)
    return report


if __name__ == "__main__":
    main()
