"""relax_many (batched, swap-out) vs a Python loop of DiffusionRelax, same molecules, same policy.

Starts: MMFF94 minima of QM9 test molecules (from their reference geometries).

    python benchmarks/batch_speed.py --n 1000 --out docs/results/batch_speed.json
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from ase import Atoms

from ase_diffrelax import DiffusionRelax, load_model, relax_many
from ase_diffrelax.chem.rdkit_interop import mmff_from_reference
from ase_diffrelax.files import atomic_write_json
from ase_diffrelax.training.data import load_qm9


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--model", default=None)
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--policy", default="jt")
    p.add_argument("--batch-sizes", default="8,16,32,128")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--compile", action="store_true", help="also relax_many(compile=True) at each batch size "
                   "(a first, untimed call pays the compilation)")
    p.add_argument("--out", default="docs/results/batch_speed.json")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = load_model(args.model)
    ms = load_qm9("test")
    order = np.random.default_rng(0).permutation(len(ms))
    starts = []
    for i in order:
        if len(starts) >= args.n:
            break
        z, x = ms.molecule(i)
        try:
            starts.append(Atoms(numbers=z, positions=mmff_from_reference(z, x)))
        except ValueError:
            continue
    report = {"model": str(model.path), "n": len(starts), "policy": args.policy, "threads": args.threads,
              "device": str(model.device), "batched": {}}
    t0 = time.perf_counter()
    loop_evals = 0
    for k, a in enumerate(starts):
        opt = DiffusionRelax(a.copy(), model=model, policy=args.policy, seed=k, logfile=None)
        opt.run()
        loop_evals += opt.nsteps
    loop_s = time.perf_counter() - t0
    report["loop"] = {"wall_s": loop_s, "ms_per_molecule": 1000 * loop_s / len(starts), "evals": loop_evals}
    print(f"loop of DiffusionRelax: {loop_s:.1f} s ({1000 * loop_s / len(starts):.2f} ms/molecule)", flush=True)
    for bs in [int(b) for b in args.batch_sizes.split(",")]:
        for compile in (False, True) if args.compile else (False,):
            if compile:
                t0 = time.perf_counter()
                relax_many(starts[:bs], model=model, policy=args.policy, batch_size=bs, progress=False, compile=True)
                report.setdefault("compile_warmup_s", {})[str(bs)] = time.perf_counter() - t0
            t0 = time.perf_counter()
            res = relax_many(starts, model=model, policy=args.policy, batch_size=bs, progress=False, seed=0,
                             compile=compile)
            wall = time.perf_counter() - t0
            key = f"{bs} compiled" if compile else str(bs)
            report["batched"][key] = {"wall_s": wall, "ms_per_molecule": 1000 * wall / len(starts),
                                      "speedup_vs_loop": loop_s / wall, "evals": int(sum(r.steps for r in res))}
            print(f"relax_many batch {key}: {wall:.1f} s ({1000 * wall / len(starts):.2f} ms/molecule), "
                  f"{loop_s / wall:.1f}x the loop", flush=True)
    atomic_write_json(args.out, report, indent=1)
    return report


if __name__ == "__main__":
    main()
