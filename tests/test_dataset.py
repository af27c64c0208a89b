"""The GFN2-xTB dataset builder on a few SMILES: records, drops with reasons, resume, assembly."""
import shutil

import numpy as np
import pytest

from ase_diffrelax.training.xtb_dataset import (
    BuildProtocol,
    assemble,
    build_dataset,
    load_xtb_dataset,
    mmff_start,
    read_dataset,
    read_smiles_file,
    relax_smiles,
)

pytest.importorskip("tblite")
LOOSE = BuildProtocol(optimizer="tblite-lbfgs", fmax=0.05, accept_fmax=0.06, max_cycles=300)


def test_one_molecule_record_is_a_minimum_on_the_xtb_surface_with_the_smiles_graph():
    rec = relax_smiles("CC(=O)NC", LOOSE)
    assert rec["pos_xtb"].shape == rec["pos_mmff"].shape == (len(rec["numbers"]), 3)
    assert rec["fmax_xtb"] <= 0.06 and rec["e_xtb"] < rec["e_xtb_at_mmff"]  # xTB lowered the MMFF start
    assert rec["charge"] == 0 and rec["uhf"] == 0
    ion = relax_smiles("C[NH3+]", LOOSE)
    assert ion["charge"] == 1


@pytest.mark.skipif(shutil.which("xtb") is None, reason="the xtb program is not installed")
def test_xtb_program_and_tblite_reach_the_same_minimum():
    a = relax_smiles("OCC(N)C=O", BuildProtocol(optimizer="xtb-program"))
    b = relax_smiles("OCC(N)C=O", BuildProtocol(optimizer="tblite-lbfgs", fmax=0.005))
    assert abs(a["e_xtb"] - b["e_xtb"]) < 0.01  # eV; both re-evaluated with tblite


def test_build_resume_and_assemble(tmp_path):
    smi = tmp_path / "mine.smi"
    smi.write_text("smiles\nCCO\nCC(=O)O val\nc1ccccc1Cl\nC1CC1[Xe]\nnot_a_smiles\n")
    entries = read_smiles_file(smi)
    assert [e[2] for e in entries] == ["train", "val", "train", "train", "train"]
    log = []
    assert build_dataset(entries, tmp_path / "ds", chunk_size=2, protocol=LOOSE, max_chunks=1, log=log.append) == 1
    assert build_dataset(entries, tmp_path / "ds", chunk_size=2, protocol=LOOSE, log=log.append) == 2  # the rest
    assert build_dataset(entries, tmp_path / "ds", chunk_size=2, protocol=LOOSE, log=log.append) == 0  # nothing left
    summary = assemble(tmp_path / "ds")
    assert summary["splits"]["train"]["kept"] == 2 and summary["splits"]["val"]["kept"] == 1
    reasons = summary["splits"]["train"]["dropped"]
    assert sum(reasons.values()) == 2 and any("MMFF94" in r for r in reasons) and any("parse" in r for r in reasons)
    for chunk in (tmp_path / "ds" / "chunks").glob("*.npz"):  # chunks are scratch once assembled
        chunk.unlink()
    assert build_dataset(entries, tmp_path / "ds", chunk_size=2, protocol=LOOSE, log=log.append) == 0
    assert assemble(tmp_path / "ds")["molecules"] == 3  # assembling again neither loses nor duplicates
    train = load_xtb_dataset(tmp_path / "ds" / "dataset.npz", "train")
    mmff = load_xtb_dataset(tmp_path / "ds" / "dataset.npz", "train", geometry="mmff")
    assert len(train) == 2 and list(train.smiles) == ["CCO", "c1ccccc1Cl"]
    assert np.array_equal(train.numbers, mmff.numbers) and not np.allclose(train.positions, mmff.positions)
    records = read_dataset(tmp_path / "ds" / "dataset.npz", "train")
    assert [a.info["smiles"] for a in records] == ["CCO", "c1ccccc1Cl"]
    chlorobenzene = records[1]
    assert chlorobenzene.get_chemical_symbols().count("Cl") == 1
    assert np.allclose(chlorobenzene.arrays["positions_mmff"], mmff.positions[len(records[0]):], atol=1e-5)
    assert chlorobenzene.info["energy_xtb"] < chlorobenzene.info["energy_xtb_at_mmff"]
    start = mmff_start(chlorobenzene)
    assert np.array_equal(start.positions, chlorobenzene.arrays["positions_mmff"]) and "positions_mmff" not in start.arrays
    assert start.info == chlorobenzene.info and start.info is not chlorobenzene.info


def test_a_build_refuses_to_switch_optimizer_midway(tmp_path):
    entries = [(0, "CCO", "train"), (1, "CCN", "train")]
    build_dataset(entries, tmp_path / "ds", chunk_size=1, protocol=LOOSE, max_chunks=1, log=lambda m: None)
    other = BuildProtocol(optimizer="xtb-program") if shutil.which("xtb") else None
    if other is None:
        pytest.skip("the xtb program is not installed")
    with pytest.raises(ValueError, match="one dataset, one protocol"):
        build_dataset(entries, tmp_path / "ds", chunk_size=1, protocol=other, log=lambda m: None)
