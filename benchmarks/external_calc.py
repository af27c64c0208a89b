"""The hand-off to an external QM code through ASE (issue 31): NWChem B3LYP/6-31G* as ``--calc``.

For QM9 test molecules of the DFT hand-off matrix (``index % 10 == 0``), target-level gradient
calls of

  default     what ``ase-diffrelax pipeline SMILES --calc nwchem -p ...`` runs: MMFF94 -> diffusion ->
              GFN2-xTB (BFGS) -> BFGS from the GFN2-xTB Hessian at the target
  bfgs-mmff   ASE BFGS from the MMFF94 minimum straight at the target (identity Hessian)
  pyscf       the default route with PySCF at the same level (B3LYP/6-31G*, no density fitting),
              to show the hand-off is the same whichever code computes the gradients

Every target gradient is kept in ``benchmarks/cache/gradients_external_calc.jsonl`` (keyed by code,
parameters, charge, spin and geometry), so a killed run resumes where it stopped.

    python -m benchmarks.external_calc --out docs/results/external_calc_nwchem.json
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
MOLECULES = {"20": "NC(N)=O", "830": "OCC(F)(F)F", "500": "O=COCC#N"}  # QM9 test Index -> SMILES
CACHE = HERE / "cache" / "gradients_external_calc.jsonl"


def run_route(smiles: str, route: str, threads: int = 1) -> dict:
    from ase_diffrelax import default_stages, run_pipeline
    from ase_diffrelax.workflows.calculators import calculator_factory, parse_params

    nwchem = calculator_factory("nwchem", parse_params("dft={xc:B3LYP,mult:1},basis=6-31G*,memory='2 gb'"))
    t0 = time.perf_counter()
    if route == "pyscf":
        res = run_pipeline(smiles, stages=default_stages("dft"), gradient_cache=CACHE,
                           physics_params={"xc": "b3lyp", "basis": "6-31g*", "density_fit": False, "threads": threads})
    elif route == "default":
        res = run_pipeline(smiles, stages=default_stages("target"), target=nwchem, gradient_cache=CACHE)
    else:
        res = run_pipeline(smiles, stages=["mmff", "target"], target=nwchem, gradient_cache=CACHE,
                           optimizer="bfgs", hessian="identity")
    last = res.stages[-1]
    return {"route": route, "smiles": smiles, "target_calls": last.force_calls, "steps": last.steps,
            "converged": last.converged, "e_end_eV": last.energy_end_eV, "fmax_end": last.fmax_end,
            "replayed_calls": last.extra.get("replayed_calls"), "wall_s": time.perf_counter() - t0,
            "stages": [(s.stage, s.force_calls) for s in res.stages]}


def main(argv=None) -> None:
    from ase_diffrelax.files import atomic_write_json

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--routes", default="default,bfgs-mmff,pyscf")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:  # NWChem's scratch files
        os.chdir(tmp)
        for index, smiles in MOLECULES.items():
            for route in args.routes.split(","):
                row = {"qm9_index": int(index), **run_route(smiles, route)}
                rows.append(row)
                print(row, flush=True)
    report = {"level": "B3LYP/6-31G* (NWChem 7.0.2 through ASE's NWChem calculator; PySCF for the pyscf route)",
              "fmax": 0.03, "rows": rows}
    if args.out:
        atomic_write_json(Path(args.out).resolve() if os.path.isabs(args.out) else HERE.parent / args.out, report)


if __name__ == "__main__":
    main()
