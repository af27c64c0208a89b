"""Training-step throughput, eager against ``torch.compile``-d blocks, on real batches.

Steps are the trainer's own optimiser steps (``Trainer.optimizer_step``: JT loss, backward,
clipping, AdamW, EMA) on batches drawn from the given data, after a warm-up that includes the
compilation.

    python benchmarks/train_speed.py --data data/moses_xtb/dataset.npz --batch-size 32 --threads 1 \
        --out docs/results/train_speed_drugs.json
"""
from __future__ import annotations

import argparse
import json
import platform
import time

import torch

from ase_diffrelax.files import atomic_write_json
from ase_diffrelax.training.trainer import TrainConfig, Trainer

DRUG_ELEMENTS = [1, 6, 7, 8, 9, 16, 17, 35]


def seconds_per_step(data: str, batch_size: int, compile: bool, warmup: int, steps: int) -> dict:
    model = {**TrainConfig().model, "elements": DRUG_ELEMENTS if data else TrainConfig().model["elements"]}
    cfg = TrainConfig(out="/tmp/ase_diffrelax_train_speed", data=data, batch_size=batch_size, mmff_fraction=0.6,
                      val_molecules=8, max_train_molecules=2000, compile=compile, model=model)
    tr = Trainer(cfg, progress=False)
    tr.ensure_data()
    t0 = time.perf_counter()
    for _ in range(warmup):
        tr.optimizer_step()
    t_warm = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(steps):
        tr.optimizer_step()
    per = (time.perf_counter() - t0) / steps
    return {"compile": compile, "warmup_s": round(t_warm, 1), "s_per_step": round(per, 4),
            "molecules_per_s": round(batch_size / per, 1)}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="", help="dataset.npz (xTB dataset); '' = QM9")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--steps", type=int, default=15)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    rows = [seconds_per_step(a.data, a.batch_size, c, a.warmup, a.steps) for c in (False, True)]
    res = {"data": a.data or "QM9", "batch_size": a.batch_size, "threads": a.threads, "torch": torch.__version__,
           "machine": platform.processor() or platform.machine(), "runs": rows,
           "speedup": round(rows[0]["s_per_step"] / rows[1]["s_per_step"], 2)}
    print(json.dumps(res, indent=1))
    if a.out:
        atomic_write_json(a.out, res)


if __name__ == "__main__":
    main()
