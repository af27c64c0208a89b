"""Does an initial Hessian cut Sella's GFN2-xTB gradient calls from the diffusion end? (issue 29)

Sella's call count from the diffusion start is the hand-off goal (median <= 8 on MOSES ``test``);
a start at the minimum + 0.01 A still needs 6 with Sella's default (identity) Hessian, so the
Hessian is the other lever. From each diffusion end (policy ``jt``) Sella (internal coordinates,
the pipeline's xTB route, fmax 0.03 eV/A) runs with:

  identity  Sella's own start (today's default)
  gfnff     GFN-FF Hessian of the ``xtb`` program (``--gfnff --hess``, ~0.1 s, no GFN2 calls)
  xtb       GFN2-xTB Hessian by central differences (6N + 1 GFN2 gradients, not counted in the calls)

Each Hessian is made positive definite as every hand-off Hessian is (``make_positive_definite``).
Reported per kind: GFN2 gradient calls (the Hessian's own work apart) and where the run ends,
kcal/mol above the lowest known minimum (the dataset's and every hand-off route's).

    python -m benchmarks.sella_hessian --part val --n 40 --kinds identity,gfnff,xtb \\
        --out docs/results/sella_hessian_val40.json
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from ase_diffrelax.evaluation import KCAL_MOL_PER_EV
from ase_diffrelax.files import atomic_write_json

HERE = Path(__file__).resolve().parent
DATA = HERE.parent / "data" / "moses_xtb" / "dataset.npz"


def gfnff_hessian(charge: int):
    from ase.io import write
    from ase.units import Bohr, Hartree

    def hessian(atoms):
        with tempfile.TemporaryDirectory(prefix="adr-gfnff-") as d:
            write(f"{d}/m.xyz", atoms)
            subprocess.run(["xtb", "m.xyz", "--gfnff", "--hess", "--chrg", str(charge)], cwd=d, capture_output=True,
                           check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
            values = np.array(Path(d, "hessian").read_text().split()[1:], dtype=float)  # after "$hessian"
        n3 = 3 * len(atoms)
        return values[-n3 * n3:].reshape(n3, n3) * Hartree / Bohr**2

    return hessian


def run(part: str, n: int, kinds: list[str], model_name: str, data: Path = DATA, log=print) -> dict:
    import torch

    from ase_diffrelax import load_model, relax_many
    from ase_diffrelax.training.xtb_dataset import mmff_start, read_dataset
    from ase_diffrelax.workflows.pipeline import physics_stage

    from .start_quality import lowest_route_energies

    torch.set_num_threads(1)
    model = load_model(model_name, device="cpu")
    mols = read_dataset(data, part)[:n]
    routes = lowest_route_energies()
    ends = relax_many([mmff_start(a) for a in mols], model=model, policy="jt", progress=False, batch_size=16,
                      unseen_bonds="relax", on_error="skip")
    makers = {"gfnff": gfnff_hessian}
    rows = []
    for res, m in zip(ends, mols):
        e_min = min(m.info["energy_xtb"], routes.get(f"{part}_{m.info['id']}", np.inf))
        row = {"id": int(m.info["id"])}
        for kind in kinds:
            b = res.atoms.copy()
            b.info["charge"] = m.info["charge"]
            hessian = kind if kind in ("identity", "xtb") else makers[kind](int(m.info["charge"]))
            t0 = time.perf_counter()
            try:
                _, rep = physics_stage(b, "xtb", fmax=0.03, max_steps=500, optimizer="sella", hessian=hessian)
            except (RuntimeError, ValueError, subprocess.CalledProcessError) as exc:  # recorded, not fatal
                row[kind] = {"error": str(exc)[:200]}
                continue
            row["start_dE"] = (rep.energy_start_eV - e_min) * KCAL_MOL_PER_EV
            row[kind] = {"calls": rep.force_calls, "end_dE": (rep.energy_end_eV - e_min) * KCAL_MOL_PER_EV,
                         "converged": rep.converged, "hessian_wall_s": rep.hessian["wall_s"] if rep.hessian else 0.0,
                         "wall_s": time.perf_counter() - t0}
        rows.append(row)
        log(json.dumps(row))
    summary = {}
    for kind in kinds:
        ok = [r[kind] for r in rows if "calls" in r[kind]]
        calls = np.array([k["calls"] for k in ok], float)
        end = np.array([k["end_dE"] for k in ok], float)
        summary[kind] = {"n": len(ok), "calls_median": float(np.median(calls)), "calls_mean": float(calls.mean()),
                         "calls_p90": float(np.percentile(calls, 90)), "end_dE_median": float(np.median(end)),
                         "end_dE_mean": float(end.mean()), "end_above_0.5_kcal": float((end > 0.5).mean()),
                         "hessian_wall_s_median": float(np.median([k["hessian_wall_s"] for k in ok]))}
    return {"model": model_name, "part": part, "n": len(rows), "summary": summary, "rows": rows,
            "what": "Sella (internal, fmax 0.03 eV/A) from the diffusion end (jt) at GFN2-xTB with each initial "
                    "Hessian: GFN2 gradient calls (the Hessian's own apart) and the end's energy above the lowest "
                    "known minimum, kcal/mol"}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--part", default="val")
    p.add_argument("--n", type=int, default=40)
    p.add_argument("--kinds", default="identity,gfnff,xtb")
    p.add_argument("--model", default="moses-painn128-jt5")
    p.add_argument("--data", default=str(DATA))
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    report = run(args.part, args.n, args.kinds.split(","), args.model, Path(args.data))
    report["command"] = "python -m benchmarks.sella_hessian " + " ".join(argv if argv is not None else sys.argv[1:])
    print(json.dumps(report["summary"], indent=1))
    atomic_write_json(args.out, report, indent=1)


if __name__ == "__main__":
    main()
