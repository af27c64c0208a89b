"""MMFF94 -> diffusion -> GFN2-xTB (BFGS, fmax 0.03 eV/A) with a per-stage report.

    python examples/handoff_xtb.py "CC(O)C#N"
"""
import json
import sys

from ase_diffrelax.workflows.pipeline import run_pipeline

smiles = sys.argv[1] if len(sys.argv) > 1 else "CC(O)C#N"
res = run_pipeline(smiles, stages=["mmff", "diffusion", "xtb"], traj_prefix="handoff")
print(json.dumps(res.report(), indent=1, default=str))
