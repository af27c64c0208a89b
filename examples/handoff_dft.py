"""MMFF94 -> diffusion -> GFN2-xTB -> B3LYP (PySCF) to fmax 0.03 eV/A: the measured default DFT route.

    python examples/handoff_dft.py "OCC#N"                       # QM9 level, density fitting
    python examples/handoff_dft.py "OCC#N" --basis sto-3g        # seconds, for trying it out

B3LYP/6-31G(2df,p) is the level of the QM9 geometries the model learned; a gradient costs ~25-60 s
for 4-6 heavy atoms on one CPU thread with density fitting (docs/benchmarks.md), so a relaxation
takes minutes to tens of minutes; every BFGS step is logged. Trajectories of every stage go to
out/handoff_dft_<k>_<stage>.traj (`ase gui out/handoff_dft_3_dft.traj`). ``--direct`` hands the
diffusion start straight to DFT (the relaxation paper's workflow).
"""
import argparse
import os

from ase.io import write

from ase_diffrelax import default_stages, run_pipeline

p = argparse.ArgumentParser()
p.add_argument("smiles", nargs="?", default="OCC#N")
p.add_argument("--basis", default="6-31g(2df,p)")
p.add_argument("--no-density-fit", action="store_true")
p.add_argument("--threads", type=int, default=0, help="PySCF threads (0 = all)")
p.add_argument("--skip-diffusion", action="store_true", help="MMFF -> (xTB ->) DFT, for comparison")
p.add_argument("--direct", action="store_true", help="no GFN2-xTB stage before DFT")
args = p.parse_args()

stages = default_stages("dft", diffusion=not args.skip_diffusion, via_xtb=False if args.direct else None)
os.makedirs("out", exist_ok=True)
res = run_pipeline(args.smiles, stages=stages, traj_prefix="out/handoff_dft", physics_log="-",
                   physics_params={"xc": "b3lyp", "basis": args.basis, "density_fit": not args.no_density_fit,
                                   "threads": args.threads})
print(res.table())
write("out/handoff_dft_final.extxyz", res.atoms)  # with the DFT energy and forces
print("wrote out/handoff_dft_final.extxyz")
