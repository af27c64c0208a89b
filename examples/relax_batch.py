"""Relax every frame of an xyz file as one batch, write the results and a summary.

    python examples/relax_batch.py input.xyz relaxed.xyz
(without arguments it makes a demo input from a few SMILES)
"""
import sys

from ase.io import read, write

from ase_diffrelax import relax_many
from ase_diffrelax.chem.rdkit_interop import atoms_from_smiles

if len(sys.argv) > 1:
    frames = read(sys.argv[1], ":")
else:
    frames = [atoms_from_smiles(s) for s in ["CCO", "CC(=O)O", "c1ccncc1", "OCC(N)C=O", "CC#N"]]
    write("demo_input.xyz", frames)
out = sys.argv[2] if len(sys.argv) > 2 else "relaxed.xyz"

results = relax_many(frames)  # 16 in flight on CPU, 256 on CUDA (docs/benchmarks.md)
for k, r in enumerate(results):
    flag = " TOPOLOGY CHANGED" if r.topology["changed"] else ""
    print(f"{k:3d} {r.atoms.get_chemical_formula():>10s} {r.status:10s} steps={r.steps:3d} t_hat={r.t_hat:6.1f}{flag}")
write(out, [r.atoms for r in results])
print(f"wrote {out}")
