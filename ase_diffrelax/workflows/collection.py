"""Relaxing large collections: streamed input, sharded, incremental and resumable output.

Input is read lazily (``.smi``/``.txt``: one SMILES per line with an optional name; ASE db;
any multi-frame ASE format through ``ase.io.iread``), so memory is bounded by ``chunk_size``.
Entry k belongs to shard I of N when k % N == I. Each chunk is relaxed as one streaming batch
and appended to the output: an ASE db (one transaction per chunk) or an extxyz file (with a
``.progress.jsonl`` sidecar that records the file size after every chunk, so a resumed run
first cuts off a half-written chunk). Every input entry of the shard gets exactly one output
row with ``input_index``, ``status`` (converged / max_steps / diverged / rejected) and, when
not relaxed, ``reason``; a bad entry never stops the run.
"""
from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..files import append_jsonl, read_jsonl

STAGES = ("read", "conformer", "diffusion", "write")


@dataclass
class Entry:
    index: int
    atoms: object | None  # ase.Atoms, or None until a SMILES is embedded / when unreadable
    name: str = ""
    smiles: str = ""
    error: str = ""


@dataclass
class CollectionStats:
    entries: int = 0
    skipped_done: int = 0
    statuses: dict = field(default_factory=dict)
    seconds: dict = field(default_factory=lambda: {s: 0.0 for s in STAGES})


def parse_shard(text: str | None) -> tuple[int, int]:
    if not text:
        return 0, 1
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise ValueError(f"--shard wants I/N (e.g. 3/16), got {text!r}") from None
    if n < 1 or not 0 <= i < n:
        raise ValueError(f"--shard {text}: need 0 <= I < N")
    return i, n


def iter_entries(path: str, shard: tuple[int, int] = (0, 1)):
    """Entries of this shard, lazily, in input order."""
    i, n = shard
    p = str(path)
    low = p.lower()
    if low.endswith((".smi", ".smiles", ".txt")):
        with open(p) as fh:
            k = -1
            for line in fh:
                parts = line.split()
                if not parts or parts[0].startswith("#") or parts[0].lower() == "smiles":
                    continue
                k += 1
                if k % n == i:
                    yield Entry(k, None, name=" ".join(parts[1:]), smiles=parts[0])
        return
    if low.endswith(".db"):
        from ase.db import connect

        for k, row in enumerate(connect(p).select()):
            if k % n == i:
                yield Entry(k, row.toatoms(), name=str(row.get("name", "")))
        return
    from ase.io import iread

    k = -1
    try:
        for k, atoms in enumerate(iread(p, index=":")):
            if k % n == i:
                yield Entry(k, atoms, name=str(atoms.info.get("name", "")))
    except Exception as exc:  # a malformed frame ends what ASE can read of the file; say where
        k += 1
        if k % n == i:
            yield Entry(k, None, error=f"{p}: frame {k} unreadable ({type(exc).__name__}: {exc}); reading stopped")


class _Output:
    """Appends result rows; knows which input indices are already there."""

    def __init__(self, path: str, resume: bool):
        self.path = str(path)
        self.db = self.path.lower().endswith(".db")
        self.progress = Path(self.path + ".progress.jsonl")
        exists = Path(self.path).exists()
        if exists and not resume:
            raise FileExistsError(f"{self.path} exists: pass --resume to continue it, or choose another output")
        self.done: set[int] = set()
        if not exists:
            if self.progress.exists():
                self.progress.unlink()
            return
        if self.db:
            from ase.db import connect

            self.done = {int(row.input_index) for row in connect(self.path).select(include_data=False)}
        else:
            if not self.progress.exists():
                raise FileExistsError(f"{self.path} has no {self.progress.name}: it was not written by a sharded "
                                      "relax run, so --resume will not touch it")
            records = read_jsonl(self.progress)
            size = records[-1]["bytes"] if records else 0
            with open(self.path, "r+b") as fh:  # cut off a chunk that was being written when the run died
                fh.truncate(size)
            for r in records:
                self.done.update(r["indices"])

    def write(self, rows: list) -> None:
        if self.db:
            from ase.db import connect

            with connect(self.path) as db:  # one transaction per chunk
                for atoms, kv in rows:
                    db.write(atoms, key_value_pairs={k: v for k, v in kv.items() if v not in ("", None)})
            return
        from ase.io import write

        frames = []
        for atoms, kv in rows:
            a = atoms.copy()
            a.calc = None
            a.info.update({k: v for k, v in kv.items() if v not in ("", None)})
            frames.append(a)
        with open(self.path, "a") as fh:
            write(fh, frames, format="extxyz")
            fh.flush()
            os.fsync(fh.fileno())
        append_jsonl(self.progress, [{"bytes": os.path.getsize(self.path), "indices": [kv["input_index"] for _, kv in rows]}])


def relax_collection(input_path: str, output_path: str, *, shard: tuple[int, int] = (0, 1), resume: bool = False,
                     model=None, policy="jt", seed: int = 0, conformer_seed: int = 0, chunk_size: int = 512,
                     batch_size: int | None = None, device=None, progress: bool = True,
                     compile: bool = False) -> CollectionStats:
    """Relax every entry of this shard of ``input_path`` into ``output_path`` (see module doc)."""
    from ase import Atoms

    from ..adapters.batch import relax_many
    from ..chem.rdkit_interop import atoms_from_smiles

    out = _Output(output_path, resume)
    stats = CollectionStats()
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(desc=f"relax shard {shard[0]}/{shard[1]}", unit="mol", mininterval=2, smoothing=0.05)
    entries = iter_entries(input_path, shard)
    while True:
        t0 = time.perf_counter()
        chunk = []
        for e in entries:
            if e.index in out.done:
                stats.skipped_done += 1
                continue
            chunk.append(e)
            if len(chunk) >= chunk_size:
                break
        stats.seconds["read"] += time.perf_counter() - t0
        if not chunk:
            break
        t0 = time.perf_counter()
        for e in chunk:
            if e.atoms is None and e.smiles and not e.error:
                try:
                    e.atoms = atoms_from_smiles(e.smiles, seed=conformer_seed)
                except Exception as exc:  # RDKit's many failure types: record, never stop the run
                    e.error = f"SMILES {e.smiles!r}: {exc}"
        stats.seconds["conformer"] += time.perf_counter() - t0
        t0 = time.perf_counter()
        ok = [e for e in chunk if e.atoms is not None and not e.error]
        results = relax_many([e.atoms for e in ok], model=model, policy=policy, seed=seed, batch_size=batch_size,
                             device=device, progress=False, on_error="skip", compile=compile) if ok else []
        stats.seconds["diffusion"] += time.perf_counter() - t0
        t0 = time.perf_counter()
        by_index = {e.index: r for e, r in zip(ok, results)}
        rows = []
        for e in chunk:
            kv = {"input_index": e.index, "name": e.name, "smiles": e.smiles}
            r = by_index.get(e.index)
            if r is None:
                atoms, kv["status"], kv["reason"] = (e.atoms if e.atoms is not None else Atoms()), "rejected", e.error
            else:
                reason = re.sub(r"^structure \d+: ", "", r.reason)
                atoms, kv["status"], kv["reason"] = r.atoms, r.status, reason
                kv.update(diffusion_steps=r.steps, diffusion_model=r.atoms.info.get("diffusion_model"),
                          topology_changed=bool(r.topology.get("changed")))
                atoms = atoms.copy()
                atoms.info = {}
            rows.append((atoms, kv))
            stats.statuses[kv["status"]] = stats.statuses.get(kv["status"], 0) + 1
        out.write(rows)
        stats.seconds["write"] += time.perf_counter() - t0
        stats.entries += len(chunk)
        if bar:
            bar.update(len(chunk))
    if bar:
        bar.close()
    return stats


def merge_outputs(inputs: list[str], output: str) -> dict:
    """Join shard outputs into one, ordered by input index; refuses duplicates and reports gaps."""
    from ase.io import iread, write

    rows = []
    for p in inputs:
        if p.lower().endswith(".db"):
            from ase.db import connect

            for row in connect(p).select():
                a = row.toatoms()
                a.info.update(row.key_value_pairs)
                rows.append(a)
        else:
            rows.extend(iread(p, index=":"))
    seen = {}
    for a in rows:
        k = int(a.info["input_index"])
        if k in seen:
            raise ValueError(f"input_index {k} appears twice (in the shards given): the shards overlap")
        seen[k] = a
    order = sorted(seen)
    missing = sorted(set(range(order[-1] + 1)) - set(order)) if order else []
    if Path(output).exists():
        raise FileExistsError(f"{output} exists")
    if output.lower().endswith(".db"):
        from ase.db import connect

        with connect(output) as db:
            for k in order:
                a = seen[k]
                kv = {key: v for key, v in a.info.items() if isinstance(v, (int, float, str, bool))}
                db.write(a, key_value_pairs=kv)
    else:
        write(output, [seen[k] for k in order], format="extxyz")
    return {"rows": len(order), "missing_indices": missing[:50], "n_missing": len(missing)}
