"""QM9 and user datasets as flat arrays, plus the fixed split.

QM9 comes from the offline PyPI package ``qm9pack``. Its own ``import`` needs
``pkg_resources`` (gone from recent setuptools), so we locate its data folder and
parse the CSV files ourselves, once, into a compact ``.npz`` cache.
"""
from __future__ import annotations

import csv
import importlib.util
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SPLIT_TEST, SPLIT_VAL, SPLIT_TRAIN = "test", "val", "train"
_FLOAT = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")
_SYMBOL_TO_Z = {"H": 1, "C": 6, "N": 7, "O": 8, "F": 9}


def cache_dir() -> Path:
    """Where derived data (QM9 cache, MMFF minima) lives; ``ASE_DIFFRELAX_CACHE`` overrides."""
    path = Path(os.environ.get("ASE_DIFFRELAX_CACHE", Path.home() / ".cache" / "ase_diffrelax"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def split_of(qm9_index: np.ndarray | int):
    """The project's fixed split on the QM9 ``Index`` column (gdb id, 1..133885).

    index % 10 == 0 -> test (never trained on), == 1 -> validation, else train.
    """
    r = np.asarray(qm9_index) % 10
    return np.where(r == 0, SPLIT_TEST, np.where(r == 1, SPLIT_VAL, SPLIT_TRAIN))


@dataclass
class MoleculeSet:
    """Many molecules as flat arrays: molecule ``i`` is ``positions[offsets[i]:offsets[i+1]]``."""

    numbers: np.ndarray  # (N,) int8
    positions: np.ndarray  # (N, 3) float32, Angstrom
    offsets: np.ndarray  # (M+1,) int64
    ids: np.ndarray  # (M,) int64, QM9 Index (or running number for user data)
    smiles: np.ndarray  # (M,) str, may be empty strings

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def sizes(self) -> np.ndarray:
        return np.diff(self.offsets)

    def molecule(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        a, b = self.offsets[i], self.offsets[i + 1]
        return self.numbers[a:b].astype(np.int64), self.positions[a:b].astype(np.float64)

    def atoms(self, i: int):
        from ase import Atoms

        z, x = self.molecule(i)
        at = Atoms(numbers=z, positions=x)
        at.info["qm9_index"] = int(self.ids[i])
        if self.smiles[i]:
            at.info["smiles"] = str(self.smiles[i])
        return at

    def subset(self, select: np.ndarray) -> "MoleculeSet":
        select = np.asarray(select)
        if select.dtype == bool:
            select = np.nonzero(select)[0]
        sizes = self.sizes()[select]
        offsets = np.zeros(len(select) + 1, dtype=np.int64)
        np.cumsum(sizes, out=offsets[1:])
        atom_idx = np.concatenate(
            [np.arange(self.offsets[i], self.offsets[i + 1]) for i in select]
        ) if len(select) else np.zeros(0, dtype=np.int64)
        return MoleculeSet(
            self.numbers[atom_idx], self.positions[atom_idx], offsets, self.ids[select], self.smiles[select]
        )

    def split(self, name: str) -> "MoleculeSet":
        return self.subset(split_of(self.ids) == name)

    def save(self, path: Path) -> None:
        tmp = Path(str(path) + ".tmp.npz")
        np.savez(tmp, numbers=self.numbers, positions=self.positions, offsets=self.offsets,
                 ids=self.ids, smiles=self.smiles.astype("U"))
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path) -> "MoleculeSet":
        with np.load(path, allow_pickle=False) as f:
            return cls(f["numbers"], f["positions"], f["offsets"], f["ids"], f["smiles"])

    @classmethod
    def from_atoms_list(cls, atoms_list) -> "MoleculeSet":
        sizes = [len(a) for a in atoms_list]
        offsets = np.zeros(len(sizes) + 1, dtype=np.int64)
        np.cumsum(sizes, out=offsets[1:])
        return cls(
            np.concatenate([a.numbers for a in atoms_list]).astype(np.int8),
            np.concatenate([a.positions for a in atoms_list]).astype(np.float32),
            offsets,
            np.array([a.info.get("qm9_index", i) for i, a in enumerate(atoms_list)], dtype=np.int64),
            np.array([a.info.get("smiles", "") for a in atoms_list], dtype="U"),
        )


def qm9pack_data_dir() -> Path:
    spec = importlib.util.find_spec("qm9pack")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("QM9 needs the offline package 'qm9pack': pip install 'ase_diffrelax[train]'")
    path = Path(list(spec.submodule_search_locations)[0]) / "data"
    if not path.is_dir():
        raise FileNotFoundError(f"qm9pack is installed but has no data folder at {path}")
    return path


def _parse_qm9pack(data_dir: Path) -> MoleculeSet:
    csv.field_size_limit(1 << 30)
    numbers, positions, sizes, ids, smiles = [], [], [], [], []
    for part in sorted(data_dir.glob("qm9_part*.csv")):
        with open(part, newline="") as fh:
            for row in csv.DictReader(fh):
                symbols = json.loads(row["Elements"].replace("'", '"'))
                xyz = np.array(_FLOAT.findall(row["XYZ_Ang"].replace("*^", "e")), dtype=np.float64)
                xyz = xyz.reshape(-1, 3) if xyz.size % 3 == 0 else xyz
                if xyz.shape != (len(symbols), 3):
                    raise ValueError(f"QM9 row {row['Index']}: {len(symbols)} elements but xyz {xyz.shape}")
                numbers.append(np.array([_SYMBOL_TO_Z[s] for s in symbols], dtype=np.int8))
                positions.append(xyz.astype(np.float32))
                sizes.append(len(symbols))
                ids.append(int(row["Index"]))
                smiles.append(row["SMILES"])
    order = np.argsort(ids, kind="stable")
    offsets = np.zeros(len(sizes) + 1, dtype=np.int64)
    sizes_arr = np.array(sizes)[order]
    np.cumsum(sizes_arr, out=offsets[1:])
    return MoleculeSet(
        np.concatenate([numbers[i] for i in order]),
        np.concatenate([positions[i] for i in order]),
        offsets,
        np.array(ids, dtype=np.int64)[order],
        np.array(smiles, dtype="U")[order],
    )


def load_qm9(split: str | None = None) -> MoleculeSet:
    """All 130,831 QM9 minima (B3LYP/6-31G(2df,p)), or one split of them. Cached after first parse."""
    path = cache_dir() / "qm9.npz"
    if path.exists():
        ms = MoleculeSet.load(path)
    else:
        ms = _parse_qm9pack(qm9pack_data_dir())
        ms.save(path)
    return ms.split(split) if split else ms


def load_structures(path: str | os.PathLike, index: str = ":") -> MoleculeSet:
    """A user's own equilibrium structures from any ASE-readable file or ASE database."""
    from ase.io import read

    p = str(path)
    if not os.path.isfile(p):
        raise FileNotFoundError(f"{p}: no such file")
    if os.path.getsize(p) == 0:
        raise ValueError(f"{p}: empty file, no structures to train on")
    try:
        if p.endswith(".db"):
            from ase.db import connect

            atoms_list = [row.toatoms() for row in connect(p).select()]
        else:
            atoms_list = read(p, index=index)
    except Exception as exc:  # ASE's readers raise many types for malformed files
        raise ValueError(f"{p}: cannot read it as training structures ({type(exc).__name__}: {exc})") from None
    if not isinstance(atoms_list, list):
        atoms_list = [atoms_list]
    if not atoms_list:
        raise ValueError(f"{p}: no structures found")
    return MoleculeSet.from_atoms_list(atoms_list)


def check_molecules(ms: MoleculeSet, elements, source: str, min_distance: float = 0.5, frames: bool = False) -> None:
    """Refuse, naming the molecule, training data that would train silently wrong: an element the
    model has no embedding row for, NaN or infinite positions, overlapping atoms. ``frames``: the
    ids are 1 + the frame number of a user's file (``load_structures``), and messages say so."""
    from ase.data import chemical_symbols

    which = (lambda i: f"{source}: frame {int(ms.ids[i]) - 1}") if frames else (  # noqa: E731
        lambda i: f"{source}: molecule id {int(ms.ids[i])}")
    mol_of_atom = lambda a: int(np.searchsorted(ms.offsets, a, side="right") - 1)  # noqa: E731
    unknown = ~np.isin(ms.numbers.astype(np.int64), np.asarray(elements, dtype=np.int64))
    if unknown.any():
        a = int(np.argmax(unknown))
        z = int(ms.numbers[a])
        name = chemical_symbols[z] if 0 <= z < len(chemical_symbols) else str(z)
        known = ",".join(chemical_symbols[e] for e in elements)
        raise ValueError(f"{which(mol_of_atom(a))}: element {name} is not among the model's elements ({known}); "
                         "add it with --elements")
    bad = ~np.isfinite(ms.positions).all(1)
    if bad.any():
        raise ValueError(f"{which(mol_of_atom(int(np.argmax(bad))))}: NaN or infinite positions")
    for i in range(len(ms)):
        x = ms.positions[ms.offsets[i]:ms.offsets[i + 1]].astype(np.float64)
        if len(x) < 2:
            raise ValueError(f"{which(i)}: {len(x)} atom(s); a molecule needs at least 2")
        d = np.sqrt(((x[:, None] - x[None]) ** 2).sum(-1))
        np.fill_diagonal(d, np.inf)
        if d.min() < min_distance:
            j, k = np.unravel_index(np.argmin(d), d.shape)
            raise ValueError(f"{which(i)}: atoms {min(j, k)} and {max(j, k)} overlap ({d.min():.3f} A apart): "
                             "not an equilibrium structure")


def mmff_starts(ms: MoleculeSet | None = None, name: str = "qm9_mmff_ref.npz", progress: bool = False) -> np.ndarray:
    """MMFF94 minima started from each reference geometry (bond graph from its xyz).

    Returns float32 (N, 3) aligned with ``ms.positions`` (all of QM9 by default); rows of
    molecules whose bonds RDKit cannot perceive or MMFF cannot type are NaN. ~2 ms per
    molecule, cached on disk.
    """
    from ..chem.rdkit_interop import mmff_from_reference

    path = cache_dir() / name if name else None
    given = ms is not None
    if not given:
        ms = load_qm9()
        if path.exists():
            with np.load(path, allow_pickle=False) as f:
                if np.array_equal(f["ids"], ms.ids):
                    return f["positions"]
    out = np.full(ms.positions.shape, np.nan, dtype=np.float32)
    it = range(len(ms))
    if progress:
        from tqdm import tqdm

        it = tqdm(it, desc="MMFF94 minima", mininterval=10)
    for i in it:
        z, x = ms.molecule(i)
        try:
            out[ms.offsets[i]:ms.offsets[i + 1]] = mmff_from_reference(z, x)
        except ValueError:
            pass
    if path is not None and not given:
        tmp = Path(str(path) + ".tmp.npz")
        np.savez(tmp, positions=out, ids=ms.ids)
        os.replace(tmp, path)
    return out
