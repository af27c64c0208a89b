"""MMFF94 -> diffusion -> GFN2-xTB (Sella, the measured route; fmax 0.03 eV/A) with a per-stage report.

    python examples/handoff_xtb.py "CC(O)C#N"                                  # QM9-sized: qm9-painn128-jt
    python examples/handoff_xtb.py "COC(=O)[C@H](c1ccccc1Cl)N1CCc2sccc2C1"    # clopidogrel: moses-painn128-jt
"""
import os
import sys

from ase_diffrelax import run_pipeline

smiles = sys.argv[1] if len(sys.argv) > 1 else "CC(O)C#N"
os.makedirs("out", exist_ok=True)
res = run_pipeline(smiles, stages=["mmff", "diffusion", "xtb"], traj_prefix="out/handoff")
print(res.table())
