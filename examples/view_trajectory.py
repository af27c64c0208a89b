"""Write a diffusion trajectory and open it in ase gui (frames carry atoms.info['diffusion_t']).

    python examples/view_trajectory.py            # writes out/relax.traj and opens ase gui
    python examples/view_trajectory.py --no-gui   # only writes it

Same thing from the shell:  ase-diffrelax relax in.xyz -o out.xyz --traj out/relax.traj && ase gui out/relax.traj
"""
import os
import subprocess
import sys

from ase.io import read

from ase_diffrelax import DiffusionRelax, atoms_from_smiles

os.makedirs("out", exist_ok=True)  # out/ is git-ignored
atoms = atoms_from_smiles("OCC(N)C=O")
DiffusionRelax(atoms, trajectory="out/relax.traj", seed=0, logfile=None).run()
frames = read("out/relax.traj", ":")
for k, f in enumerate(frames):
    print(k, f.info.get("diffusion_t"), f.info.get("diffusion_t_used"))
if "--no-gui" not in sys.argv:
    subprocess.run([sys.executable, "-m", "ase", "gui", "out/relax.traj"], check=False)
