#!/usr/bin/env bash
# Fresh machine -> relaxed molecules with the shipped checkpoint.
set -euo pipefail
cd "$(dirname "$0")"
python3 -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -m pip install -q "torch==2.13.0"   # CPU wheel; drop the pin on a CUDA machine
python -m pip install -q -e ".[xtb,dft,test]"
python examples/relax_batch.py             # SMILES -> MMFF94 -> diffusion, 5 molecules, writes out/relaxed.xyz
ase-diffrelax pipeline "CC(O)C#N" --to xtb -o out/handoff_final.extxyz --overwrite   # MMFF -> diffusion -> GFN2-xTB (Sella) table
