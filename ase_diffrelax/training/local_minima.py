"""Local-minimum targets for the MMFF94 inputs of training (issue 29).

An MMFF94 start differs from the GFN2-xTB minimum in two ways: local geometry (bonds, angles,
hydrogens) and conformation (torsions of rotatable bonds). The error anatomy says the denoiser
cannot learn the second (memorising 200 molecules hardly moves it) and that 60 % of the energy it
leaves is the first: asked to map MMFF94 onto the full minimum, it averages an unlearnable
torsional target and lands locally imprecise. The local minimum, GFN2-xTB relaxed from the MMFF94
start with one heavy-atom dihedral per rotatable bond held, is the target that contains only the
learnable part. ``--local-minima`` makes training use it as the clean geometry of MMFF94 inputs.

Built like the xTB dataset: chunks written atomically, resumable, shardable over processes::

    OMP_NUM_THREADS=1 python -m ase_diffrelax.training.local_minima build --data data/moses_xtb/dataset.npz \\
        --out data/moses_xtb/local --shard 0/2 &
    python -m ase_diffrelax.training.local_minima assemble --data data/moses_xtb/dataset.npz --out data/moses_xtb/local
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

from ..files import atomic_save_npz, atomic_write_json


def local_minimum(record) -> dict:
    """One ``read_dataset`` record: its local minimum from the MMFF94 start (torsions held as there)."""
    from ..chem.internals import internal_coordinates, relax_torsions_held
    from ..chem.topology import bond_graph

    t0 = time.perf_counter()
    z, x_min = record.numbers, record.positions
    rotatable = internal_coordinates(z, x_min)[3]
    x, e, steps, converged = relax_torsions_held(z, record.arrays["positions_mmff"], rotatable,
                                                 charge=record.info["charge"], uhf=record.info["uhf"])
    if x is not None and bond_graph(z, x) != bond_graph(z, x_min):
        x, converged = None, False  # a bond broke or formed: not a local minimum of this molecule
    return {"positions": np.full((len(z), 3), np.nan) if x is None else x, "energy": e, "steps": steps,
            "ok": bool(converged and x is not None), "wall_s": time.perf_counter() - t0}


def pending_chunks(records, out, split: str, shard: tuple[int, int], chunk_size: int):
    """(path, records) of this shard's chunks (chunk c goes to shard c % n) not on disk yet."""
    i, n = shard
    for c in range(i, (len(records) + chunk_size - 1) // chunk_size, n):
        path = Path(out) / "chunks" / f"{split}_{c:05d}.npz"
        if not path.exists():
            yield path, records[c * chunk_size:(c + 1) * chunk_size]


def build(data, out, split: str = "train", shard: tuple[int, int] = (0, 1), chunk_size: int = 25,
          max_chunks: int | None = None, log=print) -> int:
    """Compute the chunks of ``split`` that belong to ``shard`` (i of n) and are not on disk yet."""
    from .xtb_dataset import read_dataset

    records = read_dataset(data, split)
    done = 0
    for path, part in pending_chunks(records, out, split, shard, chunk_size):
        if max_chunks is not None and done >= max_chunks:
            break
        rows = [local_minimum(a) for a in part]
        atomic_save_npz(path, ids=np.array([a.info["id"] for a in part]),
                        offsets=np.cumsum([0] + [len(a) for a in part]),
                        positions=np.concatenate([r["positions"] for r in rows]),
                        energy=np.array([r["energy"] for r in rows]), steps=np.array([r["steps"] for r in rows]),
                        ok=np.array([r["ok"] for r in rows]), wall_s=np.array([r["wall_s"] for r in rows]))
        done += 1
        log(f"{path.name}: {sum(r['ok'] for r in rows)}/{len(rows)} ok, "
            f"{np.mean([r['wall_s'] for r in rows]):.1f} s/molecule")
    return done


def assemble(data, out, split: str = "train") -> dict:
    """Join the chunks into ``local_minima.npz`` (ids, offsets, positions of the ok molecules)."""
    from .xtb_dataset import read_dataset

    by_id = {int(a.info["id"]): a for a in read_dataset(data, split)}
    ids, pos, energy, gap, walls, failed = [], [], [], [], [], 0
    for path in sorted((Path(out) / "chunks").glob(f"{split}_*.npz")):
        with np.load(path, allow_pickle=False) as f:
            for k, mid in enumerate(f["ids"]):
                walls.append(float(f["wall_s"][k]))
                if not f["ok"][k]:
                    failed += 1
                    continue
                a, b = f["offsets"][k], f["offsets"][k + 1]
                ids.append(int(mid))
                pos.append(f["positions"][a:b])
                energy.append(float(f["energy"][k]))
                gap.append(float(f["energy"][k]) - by_id[int(mid)].info["energy_xtb"])
    offsets = np.cumsum([0] + [len(p) for p in pos])
    atomic_save_npz(Path(out) / "local_minima.npz", ids=np.array(ids, dtype=np.int64), offsets=offsets,
                    positions=np.concatenate(pos).astype(np.float32) if pos else np.zeros((0, 3), np.float32),
                    energy=np.array(energy), split=np.array(split))
    from ..evaluation import KCAL_MOL_PER_EV

    g = np.array(gap) * KCAL_MOL_PER_EV
    summary = {"split": split, "molecules": len(ids), "failed": failed, "of": len(by_id),
               "wall_s_per_molecule": float(np.mean(walls)) if walls else None,
               "above_minimum_kcal": {"median": float(np.median(g)), "p90": float(np.percentile(g, 90))} if len(g)
               else None}
    atomic_write_json(Path(out) / "local_minima.json", summary)
    return summary


def load_local_minima(path) -> dict[int, np.ndarray]:
    """id -> local-minimum positions, from an assembled ``local_minima.npz``."""
    with np.load(path, allow_pickle=False) as f:  # each f[key] reads the whole array: once each
        o, pos, ids = f["offsets"], f["positions"], f["ids"]
    return {int(m): pos[o[k]:o[k + 1]].astype(np.float64) for k, m in enumerate(ids)}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("action", choices=["build", "assemble"])
    p.add_argument("--data", required=True, help="dataset.npz from 'ase-diffrelax dataset'")
    p.add_argument("--out", required=True, help="folder for chunks and local_minima.npz")
    p.add_argument("--split", default="train")
    p.add_argument("--shard", default="0/1", help="i/n: this process takes chunks c with c %% n == i")
    p.add_argument("--chunk-size", type=int, default=25)
    p.add_argument("--max-chunks", type=int, default=None)
    args = p.parse_args(argv)
    if args.action == "build":
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        i, n = (int(v) for v in args.shard.split("/"))
        build(args.data, args.out, args.split, (i, n), args.chunk_size, args.max_chunks,
              log=lambda m: print(m, flush=True))
    else:
        print(json.dumps(assemble(args.data, args.out, args.split), indent=1))


if __name__ == "__main__":
    main()
