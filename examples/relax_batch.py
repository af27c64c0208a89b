"""Relax every frame of an xyz file as one batch, write the results and a summary.

    python examples/relax_batch.py input.xyz relaxed.xyz
(without arguments it makes a demo input from a few SMILES, under out/)
"""
import os
import sys

from ase.io import read, write

from ase_diffrelax import atoms_from_smiles, relax_many

if len(sys.argv) > 1:
    frames = read(sys.argv[1], ":")
else:
    frames = [atoms_from_smiles(s) for s in ["CCO", "CC(=O)O", "c1ccncc1", "OCC(N)C=O", "CC#N"]]
    os.makedirs("out", exist_ok=True)
    write("out/demo_input.xyz", frames)
out = sys.argv[2] if len(sys.argv) > 2 else "out/relaxed.xyz"

results = relax_many(frames)  # 16 in flight on CPU, 256 on CUDA (docs/benchmarks.md)
for k, r in enumerate(results):
    flag = " TOPOLOGY CHANGED" if r.topology["changed"] else ""
    print(f"{k:3d} {r.atoms.get_chemical_formula():>10s} {r.status:10s} steps={r.steps:3d} t_hat={r.t_hat:6.1f}{flag}")
write(out, [r.atoms for r in results])
print(f"wrote {out}")
