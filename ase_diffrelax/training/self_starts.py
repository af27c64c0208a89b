"""The model's own ends as training inputs (issue 29): train where inference actually stops.

The finish (``docs/policies.md``) repeats x <- x0_hat at a fixed small step; the molecule stops at
the network's fixed point there, on val ~1.1 kcal/mol above the GFN2-xTB minimum. Training never
showed the network those states: its MMFF94 inputs are 0.2-0.5 A away, its Gaussian inputs are
isotropic. Relaxing every training molecule's MMFF94 start with a shipped checkpoint and presenting
the end (``--self-starts``) as a start whose clean geometry is the minimum teaches the step from the
fixed point onward, the way MMFF94 inputs taught the step from MMFF94 onward.

Built like the local minima: chunks written atomically, resumable, shardable over processes::

    OMP_NUM_THREADS=1 python -m ase_diffrelax.training.self_starts build --data data/moses_xtb/dataset.npz \\
        --model moses-painn128-jt11 --out data/moses_xtb/self_jt11 --shard 0/2 &
    python -m ase_diffrelax.training.self_starts assemble --data data/moses_xtb/dataset.npz \\
        --out data/moses_xtb/self_jt11
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

from ..files import atomic_save_npz, atomic_write_json


def relax_chunk(records, model, policy: str = "jt") -> dict:
    """The model's ends from the MMFF94 starts of ``records`` (its own output: no hydrogen repair)."""
    from ase import Atoms

    from ..adapters.batch import relax_many

    starts = [Atoms(numbers=a.numbers, positions=a.arrays["positions_mmff"]) for a in records]
    t0 = time.perf_counter()
    res = relax_many(starts, model=model, policy=policy, progress=False, on_error="skip",
                     unseen_bonds="relax", restore_hydrogens=False,
                     seeds=[int(a.info["id"]) for a in records])
    ok = np.array([r.status == "converged" for r in res])
    pos = [r.atoms.positions if k else np.full((len(a), 3), np.nan) for r, k, a in zip(res, ok, records)]
    return {"positions": np.concatenate(pos), "ok": ok, "evaluations": np.array([r.steps for r in res]),
            "wall_s": (time.perf_counter() - t0) / max(len(records), 1)}


def build(data, out, model, split: str = "train", shard: tuple[int, int] = (0, 1), chunk_size: int = 200,
          policy: str = "jt", log=print) -> int:
    """Relax the chunks of ``split`` that belong to ``shard`` (i of n) and are not on disk yet."""
    from ..core.checkpoint import load_model
    from .local_minima import pending_chunks
    from .xtb_dataset import read_dataset

    records = read_dataset(data, split)
    net = load_model(model)
    done = 0
    for path, part in pending_chunks(records, out, split, shard, chunk_size):
        r = relax_chunk(part, net, policy)
        atomic_save_npz(path, ids=np.array([a.info["id"] for a in part]),
                        offsets=np.cumsum([0] + [len(a) for a in part]), positions=r["positions"],
                        ok=r["ok"], evaluations=r["evaluations"], model=np.array(str(model)),
                        policy=np.array(policy))
        done += 1
        log(f"{path.name}: {int(r['ok'].sum())}/{len(part)} converged, {r['wall_s']:.2f} s/molecule")
    return done


def assemble(data, out, split: str = "train") -> dict:
    """Join the chunks into ``self_starts.npz`` (ids, offsets, positions of the converged ends)."""
    from ..chem.rmsd import kabsch_rmsd
    from .xtb_dataset import read_dataset

    by_id = {int(a.info["id"]): a for a in read_dataset(data, split)}
    ids, pos, rmsd, models, failed = [], [], [], set(), 0
    for path in sorted((Path(out) / "chunks").glob(f"{split}_*.npz")):
        with np.load(path, allow_pickle=False) as f:
            models.add(f"{f['model']} ({f['policy']})")
            for k, mid in enumerate(f["ids"]):
                if not f["ok"][k]:
                    failed += 1
                    continue
                a, b = f["offsets"][k], f["offsets"][k + 1]
                x, ref = f["positions"][a:b].astype(np.float64), by_id[int(mid)].positions
                ids.append(int(mid))
                pos.append(x)
                rmsd.append(float(kabsch_rmsd(x, ref)))
    atomic_save_npz(Path(out) / "self_starts.npz", ids=np.array(ids, dtype=np.int64),
                    offsets=np.cumsum([0] + [len(p) for p in pos]),
                    positions=np.concatenate(pos).astype(np.float32) if pos else np.zeros((0, 3), np.float32),
                    split=np.array(split))
    summary = {"split": split, "molecules": len(ids), "failed": failed, "of": len(by_id), "model": sorted(models),
               "rmsd_all_atoms_to_minimum_A (aligned, atom order as stored)":
               {"median": float(np.median(rmsd)), "p90": float(np.percentile(rmsd, 90))} if rmsd else None}
    atomic_write_json(Path(out) / "self_starts.json", summary)
    return summary


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("action", choices=["build", "assemble"])
    p.add_argument("--data", required=True, help="dataset.npz from 'ase-diffrelax dataset'")
    p.add_argument("--out", required=True, help="folder for chunks and self_starts.npz")
    p.add_argument("--model", default="", help="checkpoint (name or path) whose ends are the inputs (build)")
    p.add_argument("--policy", default="jt")
    p.add_argument("--split", default="train")
    p.add_argument("--shard", default="0/1", help="i/n: this process takes chunks c with c %% n == i")
    p.add_argument("--chunk-size", type=int, default=200)
    args = p.parse_args(argv)
    if args.action == "build":
        if not args.model:
            p.error("build needs --model")
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        import torch

        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
        i, n = (int(v) for v in args.shard.split("/"))
        build(args.data, args.out, args.model, args.split, (i, n), args.chunk_size, args.policy,
              log=lambda m: print(m, flush=True))
    else:
        print(json.dumps(assemble(args.data, args.out, args.split), indent=1))


if __name__ == "__main__":
    main()
