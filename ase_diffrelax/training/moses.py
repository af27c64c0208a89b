"""MOSES drug-like SMILES (ZINC lead-like, neutral, H C N O F S Cl Br) from the PyPI package ``molsets``.

``molsets`` ships the splits as csv.gz files; importing it pulls in old, unrelated
dependencies, so it is installed with ``pip install --no-deps molsets`` and only its data
folder is read. Our splits: train and validation are disjoint random draws from MOSES
``train``; test is MOSES ``test`` plus ``test_scaffolds`` (scaffolds absent from train),
never trained on.
"""
from __future__ import annotations

import csv
import gzip
import importlib.util
from pathlib import Path

import numpy as np

MOSES_FILES = {"train": "train.csv.gz", "test": "test.csv.gz", "test_scaffolds": "test_scaffolds.csv.gz"}


def moses_data_dir() -> Path:
    spec = importlib.util.find_spec("moses")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("MOSES SMILES need the PyPI package 'molsets': pip install --no-deps molsets")
    path = Path(list(spec.submodule_search_locations)[0]) / "dataset" / "data"
    if not (path / MOSES_FILES["train"]).exists():
        raise FileNotFoundError(f"molsets is installed but {path} has no {MOSES_FILES['train']}")
    return path


def moses_smiles(part: str) -> list[str]:
    """All SMILES of one MOSES file ('train', 'test', 'test_scaffolds'), in file order."""
    with gzip.open(moses_data_dir() / MOSES_FILES[part], "rt", newline="") as fh:
        rows = csv.reader(fh)
        header = next(rows)
        col = [h.upper() for h in header].index("SMILES")
        return [r[col] for r in rows]


def moses_entries(n_train: int = 30000, n_val: int = 1000, n_test: int = 600, seed: int = 0,
                  train_first: int = 0) -> list[tuple[int, str, str]]:
    """(row in its MOSES file, SMILES, our split) in build order.

    Order: validation, the first ``train_first`` training molecules, test, test_scaffolds,
    the remaining training molecules: the small evaluation splits first, so benchmarks and
    baselines can run while the training set grows over several sessions. The order only
    sets priority; which molecules belong to which split is fixed by ``seed``. Ids are row
    numbers in the MOSES file the split comes from.
    """
    rng = np.random.default_rng(seed)
    train = moses_smiles("train")
    perm = rng.permutation(len(train))
    val_rows, train_rows = perm[:n_val], perm[n_val:n_val + n_train]
    test_parts = {}
    for part in ("test", "test_scaffolds"):
        smi = moses_smiles(part)
        rows = rng.permutation(len(smi))[:n_test]
        test_parts[part] = [(int(r), smi[r], part) for r in rows]
    val = [(int(r), train[r], "val") for r in val_rows]
    tr = [(int(r), train[r], "train") for r in train_rows]
    return val + tr[:train_first] + test_parts["test"] + test_parts["test_scaffolds"] + tr[train_first:]


# Bond types the random draw misses (measured, benchmarks/coverage.py): MOSES has no thiol at all,
# and N-O single / N=S double bonds are rare (426 / 29 of 1.58 M train rows).
RARE_BOND_SMARTS = {"N-O single": "[#7]-[#8]", "N=S double": "[#7]=[#16]"}
THIOL_FROM_HYDROXYL = {"aliphatic thiol": "[CX4][OX2H1]", "thiophenol": "c[OX2H1]"}


def moses_coverage_entries(n_per_thiol_kind: int = 150, n_val: int = 1000, n_train: int = 30000,
                           seed: int = 0) -> list[tuple[int, str, str]]:
    """Training molecules for chemistry the random draw lacks, never from validation rows.

    Every MOSES ``train`` row with a rare bond type (``RARE_BOND_SMARTS``) outside our validation
    rows, plus thiols made from MOSES train alcohols and phenols by replacing one OH with SH
    (MOSES itself filtered thiols out, so no real one exists to draw). Ids are MOSES train row
    numbers; a thiol's id is its parent's row. All go to split 'train'.
    """
    from rdkit import Chem, RDLogger

    RDLogger.DisableLog("rdApp.*")
    train = moses_smiles("train")
    perm = np.random.default_rng(seed).permutation(len(train))
    val_rows = set(perm[:n_val].tolist())
    drawn = set(perm[n_val:n_val + n_train].tolist())
    rare = [Chem.MolFromSmarts(s) for s in RARE_BOND_SMARTS.values()]
    edits = {k: Chem.MolFromSmarts(v) for k, v in THIOL_FROM_HYDROXYL.items()}
    rare_entries, thiols = [], {k: [] for k in edits}
    order = np.random.default_rng(seed + 1).permutation(len(train))
    for row in order.tolist():
        if row in val_rows:
            continue
        smi = train[row]
        if not any(c in smi for c in "OSos"):
            continue
        mol = Chem.MolFromSmiles(smi)
        if mol is None:
            continue
        if row not in drawn and any(mol.HasSubstructMatch(p) for p in rare):
            rare_entries.append((row, smi, "train"))
            continue
        for kind, pattern in edits.items():
            hits = mol.GetSubstructMatches(pattern) if len(thiols[kind]) < n_per_thiol_kind else ()
            if hits:
                new = Chem.RWMol(mol)
                new.GetAtomWithIdx(hits[0][1]).SetAtomicNum(16)  # the OH's oxygen becomes S, H kept
                try:
                    Chem.SanitizeMol(new)
                except Exception:  # noqa: BLE001 - an edit RDKit cannot sanitise is simply not used
                    continue
                thiols[kind].append((row, Chem.MolToSmiles(new), "train"))
                break
    thiol_entries = [e for pair in zip(*thiols.values()) for e in pair]
    return thiol_entries + sorted(rare_entries)
