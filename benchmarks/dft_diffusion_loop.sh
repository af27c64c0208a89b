#!/bin/bash
# DFT hand-off from the diffusion start of the shipped checkpoint, one molecule per call, skipping
# cached ones. Two of these in opposite molecule orders share the work (claim files in runs/claims):
#   bash benchmarks/dft_diffusion_loop.sh "20 430 450" &   bash benchmarks/dft_diffusion_loop.sh "450 430 20" &
# N=16 for molecules beyond the first 12 of the selection; delete runs/claims after a killed run
cd "$(dirname "$0")/.."; . .venv/bin/activate; export OMP_NUM_THREADS=1
HASH=$(python -c "from ase_diffrelax.evaluation import model_hash; from ase_diffrelax import load_model; print(model_hash(load_model(None)))" 2>/dev/null)
echo "hash $HASH"
for q in $1; do
  grep -q "\"key\": \"${q}_diffusion_${HASH}\"" benchmarks/cache/stereo_dft_6-31g2dfp_df.jsonl 2>/dev/null && continue
  mkdir -p runs/claims; ( set -o noclobber; echo $$ > runs/claims/${q}_$HASH ) 2>/dev/null || continue
  python benchmarks/handoff.py --level dft --n ${N:-12} --max-heavy 6 --density-fit --threads 1 --starts diffusion --molecules $q --out runs/dft_diff_$q.json 2>&1 | grep "QM9"
done
exit 0
