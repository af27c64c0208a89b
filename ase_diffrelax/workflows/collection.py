"""Relaxing large collections: streamed input, sharded, incremental and resumable output.

Input is read lazily (``.smi``/``.txt``: one SMILES per line with an optional name; ``.sdf``
through RDKit, bond orders and properties kept; ASE db; (ext)xyz frame by frame; any other
multi-frame ASE format through ``ase.io.iread``), so memory is bounded by ``chunk_size``.
Entry k belongs to shard I of N when k % N == I; its noise seed is ``seed + k``. Each chunk is
relaxed as one streaming batch and appended to the output: an ASE db (one transaction per chunk),
or an extxyz or SD file (with a ``.progress.jsonl`` sidecar that records the job first and then the
file size after every chunk, so a resumed run first cuts off a half-written chunk). The output
records the job that wrote it; ``--resume`` continues only that job. Every input entry of the
shard gets exactly one output row with ``input_index``, ``status`` (converged / bonds_broken /
max_steps / diverged / unseen_bonds / rejected) and, when not relaxed, ``reason``; a bad entry
never stops the run.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..files import ExclusiveLock, append_jsonl, read_jsonl, write_failed

STAGES = ("read", "conformer", "diffusion", "write")


@dataclass
class Entry:
    index: int
    atoms: object | None  # ase.Atoms, or None until a SMILES is embedded / when unreadable
    name: str = ""
    smiles: str = ""
    error: str = ""
    mol: object | None = None  # RDKit Mol (SMILES or SD input): bond orders and properties for SDF output


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


class InputReadError(RuntimeError):
    """A frame of the input could not be read; the frames after it were not read either."""


def iter_entries(path: str, shard: tuple[int, int] = (0, 1), seen: dict | None = None):
    """Entries of this shard, lazily, in input order; ``seen["n_entries"]`` counts every entry
    of the input (all shards) read so far, so that a finished run knows the input's size."""
    i, n = shard
    seen = seen if seen is not None else {}
    seen["n_entries"] = 0
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
                seen["n_entries"] = k + 1
                if k % n == i:
                    yield Entry(k, None, name=" ".join(parts[1:]), smiles=parts[0])
        return
    if low.endswith(".db"):
        from ase.db import connect

        for k, row in enumerate(connect(p).select()):
            seen["n_entries"] = k + 1
            if k % n == i:
                yield Entry(k, row.toatoms(), name=str(row.get("name", "")))
        return
    if low.endswith(".sdf"):
        from ..chem.sdf import iter_sdf_atoms

        for k, atoms, name, error, mol in iter_sdf_atoms(p):
            seen["n_entries"] = k + 1
            if k % n == i:
                yield Entry(k, atoms, name=name, error=error, mol=mol)
        return
    if low.endswith((".xyz", ".extxyz")):
        for k, atoms, error in iter_xyz_frames(p):
            seen["n_entries"] = k + 1
            if k % n == i:
                yield Entry(k, atoms, name=str(atoms.info.get("name", "")) if atoms is not None else "", error=error)
        return
    from ase.io import iread

    k = -1
    try:
        for k, atoms in enumerate(iread(p, index=":")):
            seen["n_entries"] = k + 1
            if k % n == i:
                yield Entry(k, atoms, name=str(atoms.info.get("name", "")))
    except Exception as exc:  # a malformed frame ends what ASE can read of the file: its row says so, then stop
        k += 1
        seen["n_entries"] = k + 1
        seen["read_error"] = (f"{p}: frame {k} unreadable ({type(exc).__name__}: {exc}); the frames after it "
                              "were not read and have no output row: fix the file (or split it there) and rerun")
        if k % n == i:
            yield Entry(k, None, error=f"frame {k} unreadable ({type(exc).__name__}: {exc})")


def iter_xyz_frames(path: str, parse: bool = True):
    """(index, Atoms or None, error) per frame of an (ext)xyz file, streamed frame by frame: a
    frame with a broken header or atom line becomes one error entry and reading resumes at the
    next line that is an atom count, so every other frame is still read (ASE's iread stops at
    the first). ``parse=False`` only counts frames."""
    import io

    from ase.io import read

    def count(line):
        text = line.strip()
        return int(text) if text.isdigit() else None

    def atom_line(line):  # "symbol x y z ...": a number-only or one-word line is a (bad) header instead
        parts = line.split()
        try:
            return len(parts) >= 4 and len([float(v) for v in parts[1:4]]) == 3
        except ValueError:
            return False

    k, lineno, pending = 0, 0, None
    with open(path) as fh:
        while True:
            line = pending if pending is not None else fh.readline()
            pending = None
            if not line:
                return
            lineno += 1
            if not line.strip():
                continue
            n = count(line)
            start = lineno
            if n is None:  # not a header: this frame's block runs to the next atom-count line
                bad = line.strip()[:40]
                while True:
                    nxt = fh.readline()
                    if not nxt or count(nxt) is not None:
                        pending = nxt or None
                        break
                    lineno += 1
                yield k, None, f"frame {k} (line {start}): expected an atom count, got {bad!r}"
                k += 1
                continue
            block = [line]
            for j in range(n + 1):
                nxt = fh.readline()
                if not nxt:
                    break
                if j > 0 and count(nxt) is not None:  # the next frame's header: this count was too large
                    pending = nxt
                    break
                block.append(nxt)
            lineno += len(block) - 1
            if pending is not None:
                yield k, None, (f"frame {k} (line {start}): its atom count says {n} but only {len(block) - 2} "
                                "atom lines follow before the next frame")
                k += 1
                continue
            if len(block) < n + 2:
                yield k, None, f"frame {k} (line {start}): file ends after {max(0, len(block) - 2)} of {n} atom lines"
                return
            extra = 0
            while True:  # after n atom lines comes a header, blank lines or the end: more atoms mean a wrong count
                nxt = fh.readline()
                if not nxt or (nxt.strip() and not atom_line(nxt)):
                    pending = nxt or None
                    break
                lineno += 1
                extra += bool(nxt.strip())
            if extra:
                yield k, None, (f"frame {k} (line {start}): its atom count says {n} but {n + extra} atom lines "
                                "follow; not relaxed as a smaller molecule")
                k += 1
                continue
            if not parse:
                yield k, None, ""
            else:
                try:
                    yield k, read(io.StringIO("".join(block)), format="extxyz"), ""
                except Exception as exc:  # ASE raises many types for malformed frames
                    yield k, None, f"frame {k} (line {start}): unreadable ({type(exc).__name__}: {exc})"
            k += 1


def entry_label(e: Entry) -> str:
    """How warnings and reasons name an entry: its index in the whole input, and its name."""
    return f"entry {e.index}" + (f" ({e.name})" if e.name else "")


def job_identity(input_path: str, shard: tuple[int, int], model, policy, seed: int, conformer_seed: int) -> dict:
    """What decides an output's rows: the input (path and content hash), the shard and every option
    that changes results. ``--resume`` continues an output only for the same job."""
    from ..core.checkpoint import sha256
    from ..core.policy import make_policy

    if model is None:
        model_id = "auto"
    elif hasattr(model, "card"):
        model_id = str(model.path or model.name)
    else:
        model_id = str(model)
    return {"input": str(Path(input_path).resolve()), "input_sha256": sha256(Path(input_path)),
            "shard": [int(v) for v in shard], "model": model_id, "policy": make_policy(policy).spec(),
            "seed": int(seed), "conformer_seed": int(conformer_seed)}


def _same_policy(before, now: str) -> bool:
    """Specs written by an older version lack options added since; parsed, they get the defaults
    the older version ran with, so the same job compares equal."""
    from ..core.policy import make_policy

    if not isinstance(before, str):
        return False
    try:
        return make_policy(before) == make_policy(now)
    except (TypeError, ValueError):
        return False


class ResumeMismatch(ValueError):
    """``--resume`` onto an output that another job (input, shard or options) wrote."""


def _check_same_job(path: str, before: dict | None, now: dict) -> None:
    if before is None:  # written before outputs recorded their job (ase_diffrelax < 0.4): nothing to compare
        return
    show = {"input": lambda j: f"{j['input']} (sha256 {str(j['input_sha256'])[:12]})",
            "shard": lambda j: "/".join(str(v) for v in j["shard"])}
    diffs = []
    for key in ("input_sha256", "shard", "model", "policy", "seed", "conformer_seed"):
        if key == "policy" and _same_policy(before.get(key), now[key]):
            continue
        if before.get(key) != now[key]:
            name = "input" if key == "input_sha256" else key
            fmt = show.get(name, lambda j, k=key: str(j.get(k)))
            diffs.append(f"{name} {fmt(now)} (the output has {fmt(before)})")
    if diffs:
        raise ResumeMismatch(f"{path}: --resume continues only the job that wrote it; this run differs in "
                             + "; ".join(diffs) + ": write to a new output")


class _Output:
    """Appends result rows; knows which input indices are already there and which job wrote them."""

    def __init__(self, path: str, resume: bool, job: dict | None = None):
        self.path = str(path)
        self.db = self.path.lower().endswith(".db")
        self.sdf = self.path.lower().endswith(".sdf")
        self.progress = Path(self.path + ".progress.jsonl")
        exists = Path(self.path).exists()
        if exists and not resume:
            raise FileExistsError(f"{self.path} exists: pass --resume to continue it, or choose another output")
        self.done: set[int] = set()
        if not exists:
            if self.progress.exists():
                self.progress.unlink()
            if job is not None:
                self._record_job(job)
            return
        if job is not None:
            _check_same_job(self.path, self._recorded_job(), job)
        if self.db:
            from ase.db import connect

            stale = Path(self.path + ".lock")  # ASE's own lock file, left by a writer that was killed
            if stale.exists():
                stale.unlink()  # safe: this process holds the exclusive writer lock
            self.done = {int(row.input_index) for row in connect(self.path, use_lock_file=False).select(
                include_data=False)}
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

    def _record_job(self, job: dict) -> None:
        import sqlite3

        try:
            if self.db:
                from ase.db import connect

                connect(self.path, use_lock_file=False).metadata = {"ase_diffrelax_job": job}
            else:  # the extxyz itself appears with the first chunk (a run killed before it starts afresh)
                append_jsonl(self.progress, [{"bytes": 0, "indices": [], "job": job}])
        except (OSError, sqlite3.OperationalError) as exc:
            raise write_failed(self.path, exc) from exc

    def _recorded_job(self) -> dict | None:
        if self.db:
            from ase.db import connect

            return connect(self.path, use_lock_file=False).metadata.get("ase_diffrelax_job")
        jobs = [r["job"] for r in read_jsonl(self.progress) if "job" in r]
        return jobs[0] if jobs else None

    def write(self, rows: list) -> None:
        import sqlite3

        try:
            self._write(rows)
        except (OSError, sqlite3.OperationalError) as exc:
            raise write_failed(self.path, exc) from exc

    def _write(self, rows: list) -> None:
        if self.db:
            from ase.db import connect

            # one SQLite transaction per chunk; ASE's lock file is not used (a kill would leave it
            # behind and hang the resume): ExclusiveLock already keeps every other writer out
            with connect(self.path, use_lock_file=False) as db:
                for atoms, kv, _ in rows:
                    db.write(atoms, key_value_pairs={k: v for k, v in kv.items() if v not in ("", None)})
            return
        good = os.path.getsize(self.path) if os.path.exists(self.path) else 0
        try:
            if self.sdf:
                from ..chem.sdf import append_sdf

                append_sdf(self.path, [sd_record(atoms, kv, mol) for atoms, kv, mol in rows])
            else:
                from ase.io import write

                frames = []
                for atoms, kv, _ in rows:
                    a = atoms.copy()
                    a.calc = None
                    a.info.update({k: v for k, v in kv.items() if v not in ("", None)})
                    frames.append(a)
                with open(self.path, "a") as fh:
                    write(fh, frames, format="extxyz")
                    fh.flush()
                    os.fsync(fh.fileno())
        except OSError:
            if os.path.exists(self.path):
                with open(self.path, "r+b") as fh:  # drop the torn chunk now, so the file stays readable
                    fh.truncate(good)
            raise
        append_jsonl(self.progress, [{"bytes": os.path.getsize(self.path),
                                      "indices": [kv["input_index"] for _, kv, _ in rows]}])

    def finish(self, header: dict) -> None:
        """Record what a complete shard holds, so that ``merge`` can tell a missing entry from the
        end of the input."""
        import sqlite3

        try:
            self._finish(header)
        except (OSError, sqlite3.OperationalError) as exc:
            raise write_failed(self.path, exc) from exc

    def _finish(self, header: dict) -> None:
        if self.db:
            from ase.db import connect

            db = connect(self.path, use_lock_file=False)
            db.metadata = {**db.metadata, "ase_diffrelax_shard": header}
        else:
            append_jsonl(self.progress, [{"bytes": os.path.getsize(self.path) if Path(self.path).exists() else 0,
                                          "indices": [], "shard_header": header}])


def sd_record(atoms, kv: dict, mol):
    """An output SD record: the entry's own Mol (bond orders and SD properties of its input) at the
    relaxed positions, with the row's fields as properties; an entry without a Mol (an unreadable
    one) keeps its place as a zero-atom record with its name and reason."""
    from ..chem.sdf import empty_record, relaxed_mol

    props = {k: v for k, v in kv.items() if k != "name"}
    if mol is None or mol.GetNumAtoms() != len(atoms):
        return empty_record(kv.get("name", ""), props)
    return relaxed_mol(mol, atoms.positions, props, name=kv.get("name") or None)


def count_shard_entries(path: str, shard: tuple[int, int] = (0, 1)) -> int | None:
    """Entries of this shard without relaxing anything (None when the format cannot be counted
    cheaply): a SMILES file is one read of its lines, an extxyz one read of its headers."""
    p, low = str(path), str(path).lower()
    i, n = shard
    if low.endswith((".smi", ".smiles", ".txt")):
        return sum(1 for _ in iter_entries(p, shard))  # no RDKit until relaxing: just its line filter
    if low.endswith(".db"):
        from ase.db import connect

        total = connect(p).count()
    elif low.endswith((".xyz", ".extxyz")):
        total = sum(1 for _ in iter_xyz_frames(p, parse=False))
    elif low.endswith(".sdf"):
        from ..chem.sdf import count_records

        total = count_records(p)
    else:
        return None
    return len(range(i, total, n))


def compile_choice(n_entries: int | None, forced: bool | None) -> tuple[bool, str]:
    """(compile?, why): forced by the user, else compile when the shard holds at least the measured
    break-even number of entries (compile_policy.json) and a C++ compiler is there for torch.compile."""
    import json
    import shutil

    if forced is not None:
        return forced, "--compile" if forced else "--no-compile"
    policy_file = Path(__file__).with_name("compile_policy.json")
    if not policy_file.exists():
        return False, "eager (no measured compile break-even)"
    need = int(json.loads(policy_file.read_text())["min_entries"])
    if n_entries is None:
        return False, "eager (entry count unknown for this format; --compile to force)"
    if n_entries < need:
        return False, f"eager ({n_entries} entries < {need}, where compiling pays off)"
    if not any(shutil.which(c) for c in ("c++", "g++", "clang++")):
        return False, "eager (no C++ compiler for torch.compile)"
    return True, f"compiled ({n_entries} entries >= {need}, where compiling pays off)"


def check_output_path(path: str, *, streaming: bool, overwrite: bool = False, inputs=()) -> None:
    """Refuse, before any work, an output that cannot be written or would destroy something."""
    out = Path(path)
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        raise FileNotFoundError(f"{path}: folder {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise PermissionError(f"{path}: folder {parent} is not writable")
    for src in inputs:
        if Path(src).exists() and out.exists() and os.path.samefile(src, out) and (streaming or not overwrite):
            raise FileExistsError(f"{path} is the input file: write the results elsewhere (the input is never "
                                  "overwritten)")
    if streaming:
        if out.suffix.lower() not in (".db", ".extxyz", ".xyz", ".sdf"):
            raise ValueError(f"{path}: streaming writes .db, .sdf or .extxyz (.xyz) files, not "
                             f"{out.suffix or 'no extension'!r}")
        return
    from ase.io.formats import filetype, ioformats

    try:
        fmt = filetype(path, read=False)
    except Exception as exc:  # ASE raises several types for unknown names
        raise ValueError(f"{path}: unknown output format ({exc}); use e.g. .extxyz, .xyz, .traj, .db") from None
    if fmt not in ioformats or not ioformats[fmt].can_write:
        raise ValueError(f"{path}: ASE cannot write format {fmt!r}; use e.g. .extxyz, .xyz, .traj")
    if out.exists() and not overwrite:
        raise FileExistsError(f"{path} exists: pass --overwrite to replace it, or choose another output")


def relax_collection(input_path: str, output_path: str, *, shard: tuple[int, int] = (0, 1), resume: bool = False,
                     model=None, policy="jt", seed: int = 0, conformer_seed: int = 0, chunk_size: int = 512,
                     batch_size: int | None = None, device=None, progress: bool = True,
                     compile: bool = False, embed_timeout_s: float = 60.0,
                     n_entries: int | None = None) -> CollectionStats:
    """Relax every entry of this shard of ``input_path`` into ``output_path`` (see module doc).

    One writer per output: a second process on the same output is refused (``LockHeld``). An
    input frame that cannot be read gets a 'rejected' row, and the run then fails with
    ``InputReadError`` naming it, since the frames after it were never read."""
    check_output_path(output_path, streaming=True, inputs=[input_path])
    if batch_size is not None and int(batch_size) < 1:
        raise ValueError(f"batch size {batch_size}: must be >= 1")
    if int(chunk_size) < 1:
        raise ValueError(f"chunk size {chunk_size}: must be >= 1")
    with ExclusiveLock(output_path, "this output"):
        return _relax_collection(input_path, output_path, shard=shard, resume=resume, model=model, policy=policy,
                                 seed=seed, conformer_seed=conformer_seed, chunk_size=chunk_size,
                                 batch_size=batch_size, device=device, progress=progress, compile=compile,
                                 embed_timeout_s=embed_timeout_s, n_entries=n_entries)


def max_heavy_atoms_accepted(model=None, factor: float = 2.0) -> int:
    """Entries beyond ``factor`` x the largest training molecule (heavy atoms) of the checkpoint in
    use (or of every shipped one) are refused before ETKDG: embedding a giant can take minutes."""
    from ..core.checkpoint import load_model, registry

    if model is not None:
        heavy = load_model(model).card.get("max_heavy_atoms")
        if heavy:
            return int(factor * heavy)
    return int(factor * max(e.get("heavy_atoms", [0, 0])[1] for e in registry()["models"].values()))


def _relax_collection(input_path, output_path, *, shard, resume, model, policy, seed, conformer_seed, chunk_size,
                      batch_size, device, progress, compile, embed_timeout_s, n_entries) -> CollectionStats:
    from ase import Atoms

    from ..adapters.batch import relax_many
    from ..chem.rdkit_interop import atoms_from_mol, mol_from_smiles

    out = _Output(output_path, resume, job_identity(input_path, shard, model, policy, seed, conformer_seed))
    stats = CollectionStats()
    max_heavy = max_heavy_atoms_accepted(model)
    seen: dict = {}
    bar = None
    if progress:
        from tqdm import tqdm

        # the bar gets a total and an ETA; a caller that counted already (the CLI) passes it in
        n = n_entries if n_entries is not None else count_shard_entries(input_path, shard)
        left = None if n is None else max(0, n - sum(1 for i in out.done if i % shard[1] == shard[0]))
        bar = tqdm(desc=f"relax shard {shard[0]}/{shard[1]}", total=left, unit="mol", mininterval=2, smoothing=0.05)
    entries = iter_entries(input_path, shard, seen)
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
                    e.mol = mol_from_smiles(e.smiles, seed=conformer_seed, max_heavy_atoms=max_heavy,
                                            embed_timeout_s=embed_timeout_s, strip_salts=True)
                    e.atoms = atoms_from_mol(e.mol)
                except Exception as exc:  # RDKit's many failure types: record, never stop the run
                    e.error = f"SMILES {e.smiles!r}: {exc}"
        stats.seconds["conformer"] += time.perf_counter() - t0
        t0 = time.perf_counter()
        ok = [e for e in chunk if e.atoms is not None and not e.error]
        labels = [entry_label(e) for e in ok]
        results = relax_many([e.atoms for e in ok], model=model, policy=policy, batch_size=batch_size, device=device,
                             progress=False, on_error="skip", compile=compile, labels=labels,
                             seeds=[seed + e.index for e in ok]) if ok else []
        stats.seconds["diffusion"] += time.perf_counter() - t0
        t0 = time.perf_counter()
        by_index = {e.index: (r, label) for e, r, label in zip(ok, results, labels)}
        rows = []
        for e in chunk:
            kv = {"input_index": e.index, "name": e.name, "smiles": e.smiles}
            if e.atoms is not None and e.atoms.info.get("removed_fragments"):  # a salt: its parent ion is relaxed
                kv["removed_fragments"] = str(e.atoms.info["removed_fragments"])
                kv["smiles_relaxed"] = e.atoms.info.get("smiles", "")
            r, label = by_index.get(e.index, (None, ""))
            if r is None:
                atoms, kv["status"], kv["reason"] = (e.atoms if e.atoms is not None else Atoms()), "rejected", e.error
            else:
                reason = r.reason.removeprefix(f"{label}: ")
                atoms, kv["status"], kv["reason"] = r.atoms, r.status, reason
                kv.update(diffusion_steps=r.steps,
                          diffusion_hydrogens_restored=int(r.atoms.info.get("diffusion_hydrogens_restored", 0)),
                          diffusion_model=r.atoms.info.get("diffusion_model"),
                          diffusion_level_of_theory=r.atoms.info.get("diffusion_level_of_theory"),
                          diffusion_t=float(r.t_hat) if np.isfinite(r.t_hat) else None,
                          topology_changed=bool(r.topology.get("changed")))
                atoms = atoms.copy()
                atoms.info = {}
            rows.append((atoms, kv, e.mol))
            stats.statuses[kv["status"]] = stats.statuses.get(kv["status"], 0) + 1
        out.write(rows)
        stats.seconds["write"] += time.perf_counter() - t0
        stats.entries += len(chunk)
        if bar is not None:
            bar.update(len(chunk))
    if bar is not None:
        bar.close()
    if seen.get("read_error"):
        raise InputReadError(seen["read_error"])
    out.finish({"input": str(input_path), "n_input_entries": int(seen.get("n_entries", 0)), "shard": list(shard)})
    return stats


def _shard_header(path: str) -> dict | None:
    if path.lower().endswith(".db"):
        from ase.db import connect

        return connect(path).metadata.get("ase_diffrelax_shard")
    headers = [r["shard_header"] for r in read_jsonl(path + ".progress.jsonl") if "shard_header" in r]
    return headers[-1] if headers else None


def count_input_entries(path: str) -> int:
    """Entries of the whole input (for ``merge --input``): cheaply where the format allows."""
    n = count_shard_entries(path)
    return n if n is not None else sum(1 for _ in iter_entries(path))


def _plain(value):
    """An info value as ASE's db takes it: numpy scalars (what extxyz gives back) become Python ones."""
    return value.item() if hasattr(value, "item") and getattr(value, "ndim", 1) == 0 else value


def _read_sdf_rows(path: str) -> list:
    """An SD shard as placeholder Atoms whose info holds the record's properties and the Mol itself."""
    from ase import Atoms
    from rdkit import Chem

    out = []
    with open(path, "rb") as fh:
        for k, mol in enumerate(Chem.ForwardSDMolSupplier(fh, removeHs=False, sanitize=False)):
            if mol is None:
                raise ValueError(f"merge: {path} record {k} is not readable as an SD record")
            a = Atoms()
            a.info.update(mol.GetPropsAsDict(includePrivate=False, includeComputed=False))
            a.info["_mol"] = mol
            out.append(a)
    return out


def merge_outputs(inputs: list[str], output: str, expected: int | None = None, overwrite: bool = False) -> dict:
    """Join shard outputs into one, ordered by input index; refuses missing inputs, duplicates
    and an existing output, and reports gaps up to the input's size (``expected``, else the
    shards' headers written when each finished; without either, up to the highest index seen)."""
    from ase.io import iread, write

    missing_files = [p for p in inputs if not Path(p).is_file()]
    if missing_files:
        raise FileNotFoundError(f"merge: no such file(s): {', '.join(missing_files)}")
    if Path(output).exists() and not overwrite:
        raise FileExistsError(f"{output} exists: pass --overwrite to replace it, or choose another output")
    check_output_path(output, streaming=True, inputs=inputs)
    sdf = [p.lower().endswith(".sdf") for p in [*inputs, output]]
    if any(sdf) and not all(sdf):
        raise ValueError("merge: SD files merge only with SD files (bond orders and SD properties live in them): "
                         f"got {', '.join([*inputs, output])}")
    rows, sizes, unfinished = [], set(), []
    for p in inputs:
        header = _shard_header(p)
        if header is None:
            unfinished.append(p)
        else:
            sizes.add(int(header["n_input_entries"]))
        if p.lower().endswith(".sdf"):
            part = _read_sdf_rows(p)
        elif p.lower().endswith(".db"):
            from ase.db import connect

            part = []
            for row in connect(p).select():
                a = row.toatoms()
                a.info.update(row.key_value_pairs)
                part.append(a)
        else:
            try:
                part = list(iread(p, index=":"))
            except Exception as exc:  # ASE raises many types for files it cannot read
                raise ValueError(f"merge: {p} is not readable as a relax output ({type(exc).__name__}: {exc})") from None
        for k, a in enumerate(part):
            if "input_index" not in a.info:
                raise ValueError(f"merge: {p} row {k} has no input_index: not an output of 'ase-diffrelax relax' "
                                 "(streaming mode), so it cannot be merged")
            a.info = {key: (v if key == "_mol" else _plain(v)) for key, v in a.info.items()}
        rows.extend(part)
    if expected is None and len(sizes) > 1:
        raise ValueError(f"merge: the shards come from inputs of different sizes {sorted(sizes)}: not one collection")
    n_expected = expected if expected is not None else (sizes.pop() if sizes else None)
    seen = {}
    for a in rows:
        k = int(a.info["input_index"])
        if k in seen:
            raise ValueError(f"input_index {k} appears twice (in the shards given): the shards overlap")
        seen[k] = a
    order = sorted(seen)
    upto = n_expected if n_expected is not None else (order[-1] + 1 if order else 0)
    missing = sorted(set(range(upto)) - set(order))
    with ExclusiveLock(output, "this output"):
        if overwrite and Path(output).exists():
            Path(output).unlink()
            Path(output + ".progress.jsonl").unlink(missing_ok=True)
        if output.lower().endswith(".sdf"):
            from ..chem.sdf import append_sdf

            append_sdf(output, [seen[k].info["_mol"] for k in order])
        elif output.lower().endswith(".db"):
            from ase.db import connect

            with connect(output, use_lock_file=False) as db:
                for k in order:
                    a = seen[k]
                    kv = {key: v for key, v in a.info.items() if isinstance(v, (int, float, str, bool))}
                    db.write(a, key_value_pairs=kv)
        else:
            write(output, [seen[k] for k in order], format="extxyz")
    return {"rows": len(order), "missing_indices": missing[:50], "n_missing": len(missing),
            "n_expected": n_expected, "unfinished_shards": unfinished}
