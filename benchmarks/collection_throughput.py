"""End-to-end throughput of the large-collection path: SMILES -> ETKDG + MMFF94 -> diffusion -> output.

Takes the first ``--n`` SMILES of the QM9 test split (Index % 10 == 0), writes them as a .smi
file and runs ``relax_collection`` on them (one process, ``--threads`` torch threads), timing
each stage. Writes JSON.

    python benchmarks/collection_throughput.py --n 10000 --out docs/results/collection_throughput.json
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from ase_diffrelax.files import atomic_write_json
from ase_diffrelax.training.data import load_qm9
from ase_diffrelax.workflows.collection import relax_collection


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=10000)
    p.add_argument("--chunk-size", type=int, default=512)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--output-format", default="db", choices=["db", "extxyz"])
    p.add_argument("--out", default="docs/results/collection_throughput.json")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    ms = load_qm9("test")
    with tempfile.TemporaryDirectory() as tmp:
        smi = Path(tmp) / "qm9_test.smi"
        smi.write_text("".join(f"{s} QM9_{i}\n" for s, i in zip(ms.smiles[: args.n], ms.ids[: args.n])))
        t0 = time.perf_counter()
        stats = relax_collection(str(smi), str(Path(tmp) / f"out.{args.output_format}"), chunk_size=args.chunk_size,
                                 progress=False)
        wall = time.perf_counter() - t0
    report = {"n": stats.entries, "wall_s": wall, "molecules_per_s": stats.entries / wall, "threads": args.threads,
              "chunk_size": args.chunk_size, "output": args.output_format, "statuses": stats.statuses,
              "seconds_per_stage": stats.seconds,
              "ms_per_molecule_per_stage": {k: 1000 * v / max(1, stats.entries) for k, v in stats.seconds.items()}}
    atomic_write_json(args.out, report, indent=1)
    print(report)
    return report


if __name__ == "__main__":
    main()
