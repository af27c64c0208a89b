#!/usr/bin/env bash
# A capacity run on a lent GPU (the workplace's `device` tool), sized to its 15-minute budget.
#
# Here, once per session (the tracked tree is ~145 MB; the tool carries 64 MiB):
#   python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux2014_x86_64 -d .whl ase==3.29.0        # .whl/ is in .git/info/exclude
#   bash benchmarks/device_train.sh park      # moves runs/, benchmarks/cache/, local chunks to .device_park/
# Then the tool's run, with carry [".whl"] and timeout_s 600:
#   bash benchmarks/device_train.sh train
# and afterwards, whatever happened:
#   bash benchmarks/device_train.sh restore
#
# `train` probes the steps per second, then trains a wider and deeper denoiser from scratch on the
# drug-like dataset with a cosine schedule that ends inside the budget, and leaves best/last
# checkpoints (safetensors + card; no training state: it would exceed the 16 MiB a file may bring
# back) and the log under $OUT/run. Measure them here with benchmarks/start_quality.py.
# INIT=moses-painn128-jt13 instead continues a shipped checkpoint with its own recipe (MMFF94 inputs
# at step 80, 64x small-t weight, lr 1e-4) at a GPU-size batch (BATCH, default 512): session 21
# measured that twice the batch at half the learning rate gained twice what batch 32 did. The run's
# card has no finish: measure it with the shipped one (docs/policies.md, "The finish").
set -euo pipefail
cd "$(dirname "$0")/.."
PARK=.device_park
BIG=(runs benchmarks/cache data/moses_xtb/local/chunks docs/results)

case "${1:-}" in
park)
    if pgrep -f "ase-diffrelax train|ase_diffrelax.cli train|local_minima build" >/dev/null; then
        echo "a training or build job is writing into runs/ or data/: stop it (kill PID saves its state) first" >&2
        exit 1
    fi
    mkdir -p "$PARK"
    for p in "${BIG[@]}"; do
        if [ -e "$p" ]; then mkdir -p "$PARK/$(dirname "$p")" && mv "$p" "$PARK/$p"; fi
    done
    git status --short | grep -c '^ D' | xargs echo "tracked files parked:"
    ;;
restore)
    for p in "${BIG[@]}"; do
        if [ -e "$PARK/$p" ]; then
            if [ -e "$p" ]; then echo "$p exists again: left $PARK/$p for you to merge" >&2; continue; fi
            mkdir -p "$(dirname "$p")" && mv "$PARK/$p" "$p"
        fi
    done
    git status --short | grep -c '^ D' | xargs echo "tracked files still missing:"
    ;;
train)
    : "${OUT:?run this through the device tool: OUT is where the files to bring back go}"
    if compgen -G ".whl/*.whl" >/dev/null; then
        python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
        export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
    fi
    export PYTHONPATH=$PWD:${PYTHONPATH:-} PYTHONUNBUFFERED=1
    INIT=${INIT:-} BUDGET_S=${BUDGET_S:-420} DEVICE=${DEVICE:-cuda} PROBE=${PROBE:-300}
    nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
    if [ -n "$INIT" ]; then
        BATCH=${BATCH:-512} LR=${LR:-1e-4}
        common=(--data data/moses_xtb/dataset.npz --batch-size "$BATCH" --init "$INIT" --mmff-fraction 0.6
                --mmff-step 80 --low-t-weight 64 --val-molecules 200 --device "$DEVICE" --compile --no-progress --seed 47)
    else
        FEATURES=${FEATURES:-256} BLOCKS=${BLOCKS:-4} BATCH=${BATCH:-128} LR=${LR:-5e-4}
        common=(--data data/moses_xtb/dataset.npz --batch-size "$BATCH" --features "$FEATURES" --blocks "$BLOCKS"
                --elements H,C,N,O,F,S,Cl,Br --mmff-fraction 0.6 --low-t-weight 16 --val-molecules 200
                --device "$DEVICE" --compile --no-progress --seed 11)
    fi
    rm -rf /tmp/probe
    python3 -m ase_diffrelax.cli train "${common[@]}" --out /tmp/probe --steps "$PROBE" --val-every "$PROBE" --lr "$LR"
    # the trainer's wall_s counts the steps (the compile warm-up included), not loading or validation
    rate=$(python3 -c "import json, sys; print(f'{int(sys.argv[1]) / json.load(open(sys.argv[2]))[\"wall_s\"]:.2f}')" \
        "$PROBE" /tmp/probe/state.json)
    steps=$(python3 -c "import sys; print(max(100, int(float(sys.argv[1]) * int(sys.argv[2]) / 100) * 100))" "$rate" "$BUDGET_S")
    echo "probe: $rate steps/s -> $steps steps in ${BUDGET_S}s" | tee "$OUT/plan.txt"
    python3 -m ase_diffrelax.cli train "${common[@]}" --out "$OUT/run" --steps "$steps" --lr "$LR" \
        --lr-decay "0:$steps" --val-every $((steps / 5)) --stop-after "$BUDGET_S"
    rm -f "$OUT/run/state.safetensors" "$OUT/run/state.json" "$OUT/run/.lock"
    ls -la "$OUT/run"
    ;;
*)
    echo "usage: $0 park|train|restore" >&2
    exit 2
    ;;
esac
