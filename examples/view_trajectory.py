"""Write a diffusion trajectory and open it in ase gui (frames carry atoms.info['diffusion_t']).

    python examples/view_trajectory.py            # writes relax.traj and opens ase gui
    python examples/view_trajectory.py --no-gui   # only writes it

Same thing from the shell:  ase-diffrelax relax in.xyz -o out.xyz --traj relax.traj && ase gui relax.traj
"""
import subprocess
import sys

from ase.io import read

from ase_diffrelax import DiffusionRelax, atoms_from_smiles

atoms = atoms_from_smiles("OCC(N)C=O")
DiffusionRelax(atoms, trajectory="relax.traj", seed=0, logfile=None).run()
frames = read("relax.traj", ":")
for k, f in enumerate(frames):
    print(k, f.info.get("diffusion_t"), f.info.get("diffusion_t_used"))
if "--no-gui" not in sys.argv:
    subprocess.run([sys.executable, "-m", "ase", "gui", "relax.traj"], check=False)
