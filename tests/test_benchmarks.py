"""The hand-off benchmark's cache: a second run recomputes nothing and reproduces the table."""
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from ase.build import molecule

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
pytest.importorskip("tblite")


@pytest.fixture
def tiny_set(monkeypatch):
    import handoff

    from ase_diffrelax.data import MoleculeSet

    mols = []
    for name, smi, qid in [("CH3CH2OH", "CCO", 10), ("CH3OH", "CO", 20), ("CH3CHO", "CC=O", 30)]:
        a = molecule(name)
        a.info.update(qm9_index=qid, smiles=smi)
        mols.append(a)
    ms = MoleculeSet.from_atoms_list(mols)
    monkeypatch.setattr(handoff, "select_molecules", lambda n, max_heavy, seed: (ms, list(range(len(ms)))))
    return ms


def test_handoff_cache_resume_reproduces_without_recomputing(tiny_set, tiny_model, tmp_path, monkeypatch):
    import handoff

    argv = ["--level", "xtb", "--n", "2", "--starts", "mmff,diffusion,reference", "--model", str(tiny_model.path),
            "--cache", str(tmp_path / "cache"), "--out", str(tmp_path / "h.json")]
    first = handoff.main(argv)
    assert first["summary"]["n_complete"] == 2
    files = sorted((tmp_path / "cache").rglob("*.json"))
    assert len(files) == 6
    mtimes = [f.stat().st_mtime_ns for f in files]

    def boom(*a, **k):
        raise AssertionError("recomputed a cached relaxation")

    monkeypatch.setattr("ase_diffrelax.pipeline.physics_stage", boom)
    second = handoff.main(argv)
    assert [f.stat().st_mtime_ns for f in sorted((tmp_path / "cache").rglob("*.json"))] == mtimes
    assert second["table"] == first["table"]
    s = second["summary"]["starts"]
    assert s["diffusion"]["step_ratio_vs_mmff_median"] > 0
    assert len(second["plots"]) == 2 and all(Path(p).exists() for p in second["plots"])
    # an interrupted run leaves complete files only: deleting one recomputes just that one
    files[0].unlink()
    monkeypatch.undo()
    handoff_mod = sys.modules["handoff"]
    monkeypatch.setattr(handoff_mod, "select_molecules", lambda n, max_heavy, seed: (tiny_set, [0, 1, 2]))
    third = handoff_mod.main(argv)
    steps = lambda r: [(t["qm9_index"], {k: v["steps"] for k, v in t.items() if isinstance(v, dict)}) for t in r["table"]]
    assert steps(third) == steps(first)  # same relaxations (only wall times differ when recomputed)


def test_handoff_split_by_molecule_and_partial_starts(tiny_set, tmp_path):
    """--molecules splits a run over cores; a run without the MMFF start still summarises."""
    import handoff

    argv = ["--level", "xtb", "--n", "2", "--starts", "reference", "--molecules", "20",
            "--cache", str(tmp_path / "cache"), "--out", str(tmp_path / "h.json")]
    r = handoff.main(argv)
    assert [t["qm9_index"] for t in r["table"]] == [20]
    assert sorted(f.name for f in (tmp_path / "cache").rglob("*.json")) == ["20_reference.json"]
    assert "step_ratio_vs_mmff_median" not in r["summary"]["starts"]["reference"]
