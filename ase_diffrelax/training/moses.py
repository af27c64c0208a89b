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
