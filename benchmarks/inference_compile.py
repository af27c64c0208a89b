"""relax_many eager against ``compile=True``: warm-up, steady speed, and agreement.

Starts: MMFF94 minima (from the xTB minimum) of validation molecules of an xTB dataset that the
checkpoint knows. Each setting runs twice; the first call pays the compilation (cached on disk by
torch afterwards, so a second process warms up faster), the second is the steady speed.

    python benchmarks/inference_compile.py --model qm9-painn128-jt --n 64 --batch-sizes 16,64 \
        --out docs/results/inference_compile.json
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
from ase import Atoms

from ase_diffrelax import load_model, relax_many
from ase_diffrelax.files import atomic_write_json
from ase_diffrelax.training.xtb_dataset import load_xtb_dataset


def starts(data: str, model, n: int) -> list:
    ms = load_xtb_dataset(data, "val", geometry="mmff")
    out = []
    for k in range(len(ms)):
        z, x = ms.molecule(k)
        if set(z.tolist()) <= set(model.elements):
            out.append(Atoms(numbers=z, positions=x))
        if len(out) == n:
            break
    return out


def timed(mols, model, batch_size: int, compile: bool):
    t0 = time.perf_counter()
    res = relax_many(mols, model=model, batch_size=batch_size, progress=False, seed=0, compile=compile)
    return time.perf_counter() - t0, res


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="qm9-painn128-jt")
    p.add_argument("--data", default="data/moses_xtb/dataset.npz")
    p.add_argument("--n", type=int, default=64)
    p.add_argument("--batch-sizes", default="16,64")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=None)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    model = load_model(a.model, device="cpu")
    mols = starts(a.data, model, a.n)
    report = {"model": model.name, "n": len(mols), "atoms_median": float(np.median([len(m) for m in mols])),
              "threads": a.threads, "torch": torch.__version__, "runs": []}
    import warnings

    for bs in [int(b) for b in a.batch_sizes.split(",")]:
        row = {"batch_size": bs}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # size warnings for molecules past the training range
            for compile in (False, True):
                first, _ = timed(mols, model, bs, compile)
                steady, res = timed(mols, model, bs, compile)
                key = "compiled" if compile else "eager"
                row[key] = {"first_call_s": round(first, 2), "ms_per_molecule": round(1000 * steady / len(mols), 1),
                            "evals": int(sum(r.steps for r in res))}
                row[f"_{key}_positions"] = [r.atoms.positions for r in res]
        diff = max(float(np.abs(x - y).max()) for x, y in zip(row.pop("_eager_positions"), row.pop("_compiled_positions")))
        row["max_coordinate_difference_A"] = diff
        row["speedup"] = round(row["eager"]["ms_per_molecule"] / row["compiled"]["ms_per_molecule"], 2)
        report["runs"].append(row)
        print(json.dumps(row), flush=True)
    if a.out:
        atomic_write_json(a.out, report, indent=1)
    return report


if __name__ == "__main__":
    main()
