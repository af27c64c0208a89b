"""Relax one molecule: SMILES -> ETKDG + MMFF94 -> diffusion, then look at it.

    python examples/relax_single.py "CC(=O)NC" out/relaxed.xyz
"""
import os
import sys

from ase.io import write

from ase_diffrelax import DiffusionRelax, atoms_from_smiles

smiles = sys.argv[1] if len(sys.argv) > 1 else "CC(=O)NC"
out = sys.argv[2] if len(sys.argv) > 2 else "out/relaxed.xyz"
os.makedirs("out", exist_ok=True)  # out/ is git-ignored: examples never litter the checkout

atoms = atoms_from_smiles(smiles)  # MMFF94 minimum, hydrogens explicit
opt = DiffusionRelax(atoms, trajectory="out/relax.traj", seed=0)  # default checkpoint, policy "jt"
converged = opt.run()
print(f"converged={converged} after {opt.nsteps} steps, last predicted t = {atoms.info['diffusion_t']:.1f}")
write(out, atoms)
print(f"wrote {out}; view the path with:  ase gui out/relax.traj")
