"""What verifying a checkpoint on every load costs (issue 30): sha256 of the weights and the card,
and a whole ``load_model`` (hash, card checks, network build), per shipped checkpoint.

    python -m benchmarks.load_cost --out docs/results/load_cost.json
"""
from __future__ import annotations

import argparse
import hashlib
import time

import numpy as np


def main(argv=None) -> None:
    from ase_diffrelax.core import checkpoint
    from ase_diffrelax.files import atomic_write_json

    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--repeat", type=int, default=50)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    rows = {}
    for name, entry in checkpoint.registry()["models"].items():
        data = (checkpoint.checkpoint_dir() / entry["weights"]).read_bytes()
        card = (checkpoint.checkpoint_dir() / entry["card"]).read_bytes()
        hashes, loads = [], []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            hashlib.sha256(data).hexdigest()
            hashlib.sha256(card).hexdigest()
            hashes.append(time.perf_counter() - t0)
            checkpoint._LOADED.clear()
            t0 = time.perf_counter()
            checkpoint.load_model(name, device="cpu")
            loads.append(time.perf_counter() - t0)
        rows[name] = {"weights_bytes": len(data), "card_bytes": len(card),
                      "sha256_both_ms_median": 1e3 * float(np.median(hashes)),
                      "load_model_ms_median": 1e3 * float(np.median(loads))}
        print(name, rows[name], flush=True)
    if args.out:
        atomic_write_json(args.out, {"repeat": args.repeat, "checkpoints": rows})


if __name__ == "__main__":
    main()
