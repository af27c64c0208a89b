"""Build a GFN2-xTB training set from SMILES: ETKDG -> MMFF94 -> GFN2-xTB minimum, per molecule.

The denoiser learns equilibrium geometries; where no 3D reference data exists (drug-like
chemistry, a user's own compounds) we make them: one ETKDG conformer (fixed seed), its MMFF94
minimum (kept: it is the structured noise the model learns to remove), and the GFN2-xTB
minimum reached from it. A molecule is dropped, with the reason recorded, when RDKit cannot
embed or type it, when xTB does not converge, or when the bond graph of either geometry
differs from the SMILES graph.

The work is cut into chunks of a few dozen molecules; each chunk is one ``.npz`` written
atomically by the worker that computed it, so a killed build loses at most the chunks in
flight and a restart skips every finished one. ``assemble`` joins the chunks into one file.

Optimizer (``BuildProtocol.optimizer``): the ``xtb`` program's ANCopt (``--opt tight``) when
it is on PATH, else ASE LBFGS on tblite forces to ``fmax``. Both minimise the same GFN2-xTB
surface; energies and the residual force are always re-evaluated with tblite, so records
from both paths are comparable. The reasons for these defaults are measured in
docs/datasets.md.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..files import atomic_save_npz, atomic_write_json

ELEMENTS_DRUGLIKE = (1, 6, 7, 8, 9, 16, 17, 35)


@dataclass(frozen=True)
class BuildProtocol:
    etkdg_seed: int = 42
    optimizer: str = "auto"  # "auto" | "xtb-program" | "tblite-lbfgs"
    xtb_opt_level: str = "tight"  # xtb program criterion
    fmax: float = 0.005  # eV/A, tblite-lbfgs criterion
    max_cycles: int = 1000
    accept_fmax: float = 0.03  # residual tblite force above this: not a minimum, dropped
    bond_scale: float = 1.2  # covalent-radius factor for the bond-graph check
    timeout_s: float = 600.0

    def resolved_optimizer(self) -> str:
        if self.optimizer == "auto":
            return "xtb-program" if shutil.which("xtb") else "tblite-lbfgs"
        if self.optimizer not in ("xtb-program", "tblite-lbfgs"):
            raise ValueError(f"unknown optimizer {self.optimizer!r}: 'auto', 'xtb-program' or 'tblite-lbfgs'")
        if self.optimizer == "xtb-program" and not shutil.which("xtb"):
            raise FileNotFoundError("optimizer 'xtb-program' needs the xtb program on PATH (Debian/conda package 'xtb')")
        return self.optimizer


class Dropped(Exception):
    """A molecule that cannot enter the dataset; the message is the recorded reason."""


# ---------------------------------------------------------------- one molecule


def _tblite(charge: int, uhf: int):
    from tblite.ase import TBLite

    return TBLite(method="GFN2-xTB", charge=charge, multiplicity=uhf + 1, verbosity=0)


def _single_point(numbers, positions, charge, uhf):
    from ase import Atoms

    atoms = Atoms(numbers=numbers, positions=positions)
    atoms.calc = _tblite(charge, uhf)
    return atoms.get_potential_energy(), float(np.linalg.norm(atoms.get_forces(), axis=1).max())


def _minimise_xtb_program(numbers, positions, charge, uhf, protocol):
    from ase import Atoms
    from ase.io import read, write

    with tempfile.TemporaryDirectory(prefix="adr-xtb-") as tmp:
        write(os.path.join(tmp, "in.xyz"), Atoms(numbers=numbers, positions=positions))
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OMP_STACKSIZE": "1G"}
        cmd = ["xtb", "in.xyz", "--gfn", "2", "--opt", protocol.xtb_opt_level, "--chrg", str(charge),
               "--uhf", str(uhf), "--cycles", str(protocol.max_cycles)]
        try:
            run = subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True, timeout=protocol.timeout_s)
        except subprocess.TimeoutExpired:
            raise Dropped(f"xtb timed out after {protocol.timeout_s:.0f} s") from None
        out = os.path.join(tmp, "xtbopt.xyz")
        if run.returncode != 0 or not os.path.exists(os.path.join(tmp, ".xtboptok")) or not os.path.exists(out):
            raise Dropped("xtb optimisation did not converge")
        cycles = -1
        for line in run.stdout.splitlines():
            if "GEOMETRY OPTIMIZATION CONVERGED AFTER" in line:
                cycles = int(line.split("AFTER")[1].split()[0])
        return read(out).positions, cycles


def _minimise_tblite(numbers, positions, charge, uhf, protocol):
    from ase import Atoms
    from ase.optimize import LBFGS

    atoms = Atoms(numbers=numbers, positions=positions)
    atoms.calc = _tblite(charge, uhf)
    opt = LBFGS(atoms, logfile=None)
    if not opt.run(fmax=protocol.fmax, steps=protocol.max_cycles):
        raise Dropped(f"LBFGS did not reach fmax {protocol.fmax} in {protocol.max_cycles} steps")
    return atoms.positions.copy(), opt.nsteps


def smiles_charge_uhf(mol) -> tuple[int, int]:
    """Total formal charge and number of unpaired electrons of an RDKit Mol."""
    charge = sum(a.GetFormalCharge() for a in mol.GetAtoms())
    uhf = sum(a.GetNumRadicalElectrons() for a in mol.GetAtoms())
    return int(charge), int(uhf)


def relax_smiles(smiles: str, protocol: BuildProtocol = BuildProtocol()) -> dict:
    """One dataset record (MMFF94 and GFN2-xTB minima, energies) or ``Dropped`` with the reason."""
    from rdkit import Chem, RDLogger
    from rdkit.Chem import AllChem

    from ..chem.rdkit_interop import mmff_minimize
    from ..chem.topology import bond_graph

    RDLogger.DisableLog("rdApp.*")
    t0 = time.perf_counter()
    mol = Chem.MolFromSmiles(smiles)
    if mol is None:
        raise Dropped("RDKit cannot parse the SMILES")
    mol = Chem.AddHs(mol)
    charge, uhf = smiles_charge_uhf(mol)
    params = AllChem.ETKDGv3()
    params.randomSeed = protocol.etkdg_seed
    if AllChem.EmbedMolecule(mol, params) != 0:
        raise Dropped("ETKDG could not embed the molecule")
    try:
        pos_mmff = mmff_minimize(mol)
    except ValueError as exc:
        raise Dropped(str(exc)) from None
    numbers = np.array([a.GetAtomicNum() for a in mol.GetAtoms()], dtype=np.int64)
    graph = {tuple(sorted((b.GetBeginAtomIdx(), b.GetEndAtomIdx()))) for b in mol.GetBonds()}
    if bond_graph(numbers, pos_mmff, protocol.bond_scale) != graph:
        raise Dropped("MMFF94 geometry does not show the SMILES bond graph")
    e_mmff_geom, _ = _single_point(numbers, pos_mmff, charge, uhf)
    minimise = _minimise_xtb_program if protocol.resolved_optimizer() == "xtb-program" else _minimise_tblite
    pos_xtb, cycles = minimise(numbers, pos_mmff, charge, uhf, protocol)
    if bond_graph(numbers, pos_xtb, protocol.bond_scale) != graph:
        raise Dropped("bond graph changed during the xTB minimisation")
    e_xtb, fmax = _single_point(numbers, pos_xtb, charge, uhf)
    if fmax > protocol.accept_fmax:
        raise Dropped(f"residual tblite force {fmax:.3f} eV/A at the xTB minimum")
    return {"numbers": numbers, "pos_mmff": pos_mmff, "pos_xtb": pos_xtb, "charge": charge, "uhf": uhf,
            "e_xtb": e_xtb, "e_xtb_at_mmff": e_mmff_geom, "fmax_xtb": fmax, "opt_cycles": cycles,
            "wall_s": time.perf_counter() - t0}


# ---------------------------------------------------------------- chunks


def build_chunk(entries: list[tuple[int, str, str]], protocol: BuildProtocol) -> dict:
    """Arrays for a list of (id, smiles, split): kept molecules flat, dropped ones with reasons."""
    kept, dropped = [], []
    for ident, smi, split in entries:
        try:
            rec = relax_smiles(smi, protocol)
        except Dropped as exc:
            dropped.append((ident, smi, split, str(exc)))
            continue
        except Exception as exc:  # an unexpected failure of one molecule must not end the build
            dropped.append((ident, smi, split, f"{type(exc).__name__}: {exc}"))
            continue
        kept.append((ident, smi, split, rec))
    sizes = np.array([len(r["numbers"]) for *_, r in kept], dtype=np.int64)
    cat = (lambda key, dt: np.concatenate([r[key] for *_, r in kept]).astype(dt) if kept
           else np.zeros((0, 3) if key.startswith("pos") else 0, dtype=dt))
    per = lambda key, dt: np.array([r[key] for *_, r in kept], dtype=dt)  # noqa: E731
    return {
        "numbers": cat("numbers", np.int8), "pos_xtb": cat("pos_xtb", np.float32),
        "pos_mmff": cat("pos_mmff", np.float32), "sizes": sizes,
        "ids": np.array([k[0] for k in kept], dtype=np.int64), "smiles": np.array([k[1] for k in kept], dtype="U"),
        "split": np.array([k[2] for k in kept], dtype="U"),
        "charge": per("charge", np.int8), "uhf": per("uhf", np.int8), "e_xtb": per("e_xtb", np.float64),
        "e_xtb_at_mmff": per("e_xtb_at_mmff", np.float64), "fmax_xtb": per("fmax_xtb", np.float32),
        "opt_cycles": per("opt_cycles", np.int32), "wall_s": per("wall_s", np.float32),
        "drop_ids": np.array([d[0] for d in dropped], dtype=np.int64),
        "drop_smiles": np.array([d[1] for d in dropped], dtype="U"),
        "drop_split": np.array([d[2] for d in dropped], dtype="U"),
        "drop_reason": np.array([d[3] for d in dropped], dtype="U"),
    }


def _chunk_job(args):
    path, entries, protocol = args
    t0 = time.perf_counter()
    arrays = build_chunk(entries, protocol)
    atomic_save_npz(path, **arrays)
    return path.name, len(arrays["ids"]), len(arrays["drop_ids"]), time.perf_counter() - t0


def _worker_init():
    os.environ["OMP_NUM_THREADS"] = "1"
    os.environ["MKL_NUM_THREADS"] = "1"


def plan_chunks(entries: list[tuple[int, str, str]], out_dir: Path, chunk_size: int) -> list[tuple[Path, list]]:
    """Chunk k of a split holds that split's entries k*size..(k+1)*size-1 (stable names across
    runs); chunks are computed in the order their first entry appears in ``entries``."""
    by_split: dict[str, list] = {}
    for pos, e in enumerate(entries):
        by_split.setdefault(e[2], []).append((pos, e))
    chunks = []
    for split, items in by_split.items():
        for k in range(0, len(items), chunk_size):
            block = items[k:k + chunk_size]
            chunks.append((block[0][0], out_dir / "chunks" / f"{split}-{k // chunk_size:04d}.npz",
                           [e for _, e in block]))
    chunks.sort(key=lambda c: c[0])
    return [(path, block) for _, path, block in chunks]


def build_dataset(entries: list[tuple[int, str, str]], out_dir: str | os.PathLike, *, workers: int = 1,
                  chunk_size: int = 50, protocol: BuildProtocol = BuildProtocol(), log=print,
                  max_chunks: int | None = None) -> int:
    """Compute every missing chunk of ``entries`` with ``workers`` processes; returns chunks done now.

    ``entries``: (id, smiles, split) in the order they should be computed. Safe to kill and
    rerun with the same entries and chunk size: finished chunks are skipped.
    """
    out_dir = Path(out_dir)
    (out_dir / "chunks").mkdir(parents=True, exist_ok=True)
    used = protocol.resolved_optimizer()  # fail now, not in a worker
    previous = out_dir / "build.json"
    if previous.exists():
        import json

        before = json.loads(previous.read_text())
        started = any((out_dir / "chunks").glob("*.npz")) or (out_dir / "dataset.npz").exists()
        if started and before.get("optimizer_used") not in (None, used):
            raise ValueError(
                f"{out_dir} was built with optimizer {before['optimizer_used']!r}, this run would use {used!r}: "
                "one dataset, one protocol. Install the xtb program (apt-get install xtb) or build elsewhere")
    plan = plan_chunks(entries, out_dir, chunk_size)
    atomic_write_json(out_dir / "build.json", {"protocol": asdict(protocol), "chunk_size": chunk_size,
                                                "n_entries": len(entries), "n_chunks": len(plan),
                                                "optimizer_used": used,
                                                "xtb_program": _xtb_version()})
    merged = assembled_chunks(out_dir / "dataset.npz")
    todo = [(p, block, protocol) for p, block in plan if not p.exists() and p.stem not in merged]
    log(f"{len(plan) - len(todo)} of {len(plan)} chunks already built; {len(todo)} to do")
    if max_chunks is not None:
        todo = todo[:max_chunks]
    if not todo:
        return 0
    done = 0
    if workers <= 1:
        _worker_init()
        results = map(_chunk_job, todo)
    else:
        import multiprocessing as mp

        pool = mp.get_context("spawn").Pool(workers, initializer=_worker_init)
        results = pool.imap(_chunk_job, todo)
    try:
        for name, n_kept, n_drop, wall in results:
            done += 1
            log(f"{name}: {n_kept} kept, {n_drop} dropped, {wall:.0f} s ({done}/{len(todo)})")
    finally:
        if workers > 1:
            pool.terminate()
    return done


def _xtb_version() -> str | None:
    if not shutil.which("xtb"):
        return None
    try:
        out = subprocess.run(["xtb", "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    for line in out.splitlines():
        if "version" in line:
            return line.strip().strip("*").strip()
    return None


# ---------------------------------------------------------------- assembled dataset


def assembled_chunks(path: Path) -> set[str]:
    """Names of the chunks already joined into an assembled dataset file."""
    if not Path(path).exists():
        return set()
    with np.load(path, allow_pickle=False) as f:
        return set(f["chunk_names"].tolist())


def assemble(out_dir: str | os.PathLike, name: str = "dataset.npz") -> dict:
    """Join finished chunks into ``out_dir/name``, keeping what an earlier assembly holds.

    The assembled file is what gets committed; chunk files are scratch and may be deleted
    after assembly (the builder skips chunks listed in it). Returns counts per split.
    """
    out_dir = Path(out_dir)
    target = out_dir / name
    merged = assembled_chunks(target)
    parts = sorted(p for p in (out_dir / "chunks").glob("*.npz") if p.stem not in merged)
    if not parts and not merged:
        raise FileNotFoundError(f"{out_dir}/chunks: no finished chunks to assemble")
    data: dict[str, list] = {}
    if merged:
        with np.load(target, allow_pickle=False) as f:
            old = {k: f[k] for k in f.files}
        old["sizes"] = np.diff(old.pop("offsets"))
        old.pop("chunk_names")
        for k, v in old.items():
            data.setdefault(k, []).append(v)
    for p in parts:
        with np.load(p, allow_pickle=False) as f:
            for k in f.files:
                data.setdefault(k, []).append(f[k])
            data.setdefault("chunk", []).append(np.full(len(f["ids"]), p.stem, dtype="U32"))
            data.setdefault("drop_chunk", []).append(np.full(len(f["drop_ids"]), p.stem, dtype="U32"))
    joined = {k: np.concatenate(v) for k, v in data.items()}
    sizes = joined.pop("sizes")
    offsets = np.zeros(len(sizes) + 1, dtype=np.int64)
    np.cumsum(sizes, out=offsets[1:])
    joined["offsets"] = offsets
    joined["chunk_names"] = np.array(sorted(merged | {p.stem for p in parts}), dtype="U32")
    atomic_save_npz(target, **joined)
    summary = summarize(target)
    write_card(out_dir, summary)
    return summary


def write_card(out_dir: Path, summary: dict) -> Path:
    """``card.json`` beside the dataset: how it was made (from build.json), what it holds, what it cost."""
    import json

    out_dir = Path(out_dir)
    build = json.loads((out_dir / "build.json").read_text()) if (out_dir / "build.json").exists() else {}
    source = json.loads((out_dir / "source.json").read_text()) if (out_dir / "source.json").exists() else {}
    card = {
        "level_of_theory": "GFN2-xTB (tblite single points; minima from the optimizer below)",
        "protocol": "SMILES -> RDKit ETKDGv3 (fixed seed) -> MMFF94 minimum (kept as pos_mmff) -> GFN2-xTB minimum "
                    "(pos_xtb); dropped: unparsable/unembeddable/untyped, not converged, residual tblite force above "
                    "accept_fmax, or a bond graph (covalent radii x bond_scale) differing from the SMILES graph",
        "build": build, "source": source, "contents": summary,
        "arrays": {"numbers/pos_xtb/pos_mmff/offsets": "flat atoms, molecule i = offsets[i]:offsets[i+1] (Angstrom)",
                   "e_xtb, e_xtb_at_mmff": "GFN2-xTB energy (eV) at the xTB minimum and at the MMFF94 minimum",
                   "fmax_xtb": "largest tblite force at the xTB minimum (eV/A)",
                   "charge, uhf": "total charge, unpaired electrons",
                   "ids, smiles, split, chunk": "source row, SMILES, our split, the chunk it was built in",
                   "drop_*": "molecules not kept, with the reason"},
    }
    return atomic_write_json(out_dir / "card.json", card)


def summarize(path: str | os.PathLike) -> dict:
    """Counts per split, drop reasons, atoms and build cost of an assembled dataset."""
    with np.load(path, allow_pickle=False) as f:
        d = {k: f[k] for k in ("split", "drop_split", "drop_reason", "wall_s", "offsets", "chunk_names")}
    sizes = np.diff(d["offsets"])
    counts = {}
    for split in sorted(set(d["split"].tolist()) | set(d["drop_split"].tolist())):
        reasons: dict[str, int] = {}
        for r in d["drop_reason"][d["drop_split"] == split]:
            key = r.split(" ")[0] + " " + r.split(" ")[1] if r.startswith("residual") else r
            reasons[key] = reasons.get(key, 0) + 1
        sel = d["split"] == split
        counts[split] = {"kept": int(sel.sum()), "dropped": reasons,
                         "atoms_median": float(np.median(sizes[sel])) if sel.any() else None,
                         "atoms_max": int(sizes[sel].max()) if sel.any() else None}
    return {"chunks": int(len(d["chunk_names"])), "molecules": int(len(sizes)), "atoms": int(sizes.sum()),
            "splits": counts, "wall_s_total": float(d["wall_s"].sum()),
            "wall_s_median": float(np.median(d["wall_s"])) if len(sizes) else None}


def load_xtb_dataset(path: str | os.PathLike, split: str | None = None, geometry: str = "xtb"):
    """A built dataset as a ``MoleculeSet`` (``geometry`` "xtb" minima or "mmff" starts)."""
    from .data import MoleculeSet

    with np.load(path, allow_pickle=False) as f:
        ms = MoleculeSet(f["numbers"], f[f"pos_{geometry}"], f["offsets"], f["ids"], f["smiles"])
        splits = f["split"]
    return ms.subset(splits == split) if split else ms


def read_dataset(path: str | os.PathLike, split: str | None = None, rows=None) -> list:
    """A built dataset as ASE ``Atoms`` at the xTB minima, one per molecule.

    For evaluation and for users who want the records, not a training set: ``info`` holds id,
    smiles, split, charge, uhf, energy_xtb (eV, at the minimum) and energy_xtb_at_mmff (eV);
    ``arrays["positions_mmff"]`` holds the MMFF94 minimum in the same atom order. ``rows`` picks
    molecules by index into the file (after ``split`` filtering when both are given).
    """
    from ase import Atoms

    with np.load(path, allow_pickle=False) as f:
        d = {k: f[k] for k in ("numbers", "pos_xtb", "pos_mmff", "offsets", "ids", "smiles", "split",
                               "charge", "uhf", "e_xtb", "e_xtb_at_mmff")}
    picked = np.arange(len(d["ids"]))
    if split:
        picked = picked[d["split"] == split]
    if rows is not None:
        picked = picked[np.asarray(rows, dtype=np.int64)]
    out = []
    for r in picked:
        a, b = d["offsets"][r], d["offsets"][r + 1]
        atoms = Atoms(numbers=d["numbers"][a:b].astype(int), positions=d["pos_xtb"][a:b].astype(float))
        atoms.arrays["positions_mmff"] = d["pos_mmff"][a:b].astype(float)
        atoms.info.update(id=int(d["ids"][r]), smiles=str(d["smiles"][r]), split=str(d["split"][r]),
                          charge=int(d["charge"][r]), uhf=int(d["uhf"][r]),
                          energy_xtb=float(d["e_xtb"][r]), energy_xtb_at_mmff=float(d["e_xtb_at_mmff"][r]))
        out.append(atoms)
    return out


def mmff_start(record):
    """A record of ``read_dataset`` at its MMFF94 minimum: the start every benchmark shares, with the
    record's ``info`` (charge, id, ...) and without its extra arrays."""
    from ase import Atoms

    start = Atoms(numbers=record.numbers, positions=record.arrays["positions_mmff"])
    start.info.update(record.info)
    return start


def read_smiles_file(path: str | os.PathLike) -> list[tuple[int, str, str]]:
    """A user's ``.smi``/``.csv``/``.txt``: first column SMILES (a header line 'smiles' is skipped);
    optional second column 'train'/'val' puts the molecule in that split (default train)."""
    entries = []
    for k, line in enumerate(Path(path).read_text().splitlines()):
        parts = line.replace(",", " ").split()
        if not parts or parts[0].startswith("#") or (k == 0 and parts[0].lower() == "smiles"):
            continue
        split = parts[1] if len(parts) > 1 and parts[1] in ("train", "val") else "train"
        entries.append((k, parts[0], split))
    if not entries:
        raise ValueError(f"{path}: no SMILES found")
    return entries
