"""SD files in and out (issue 31): bond orders from the input, names, properties and order kept
through streaming, shards, --resume and merge; the CLI with its defaults (progress bar on)."""
import json
import subprocess
import sys

import pytest
from rdkit import Chem
from rdkit.Chem import AllChem

from ase_diffrelax.chem.sdf import count_records

FAST = ["--policy", "fixed:t0=5+stride=0"]
SMILES = ["CCO", "c1ccccc1O", "CC(=O)Nc1ccc(O)cc1", "O=C(O)c1ccccc1", "C#CCN", "CC(=O)OC", "N#Cc1ccncc1",
          "OC1CCNCC1", "C=CC(=O)N", "FC(F)(F)c1ccccc1"]


def cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "ase_diffrelax", *args], capture_output=True, text=True,
                          timeout=900, cwd=cwd)


def bond_orders(mol):
    return sorted((min(b.GetBeginAtomIdx(), b.GetEndAtomIdx()), max(b.GetBeginAtomIdx(), b.GetEndAtomIdx()),
                   str(b.GetBondType())) for b in mol.GetBonds())


def records(path):
    with open(path, "rb") as fh:
        return [m for m in Chem.ForwardSDMolSupplier(fh, removeHs=False)]


@pytest.fixture
def library(tmp_path):
    """120 SD records with names and two properties of their own; every 10th one 2D, without hydrogens."""
    w = Chem.SDWriter(str(tmp_path / "in.sdf"))
    for k in range(120):
        mol = Chem.MolFromSmiles(SMILES[k % len(SMILES)])
        if k % 10 == 3:
            AllChem.Compute2DCoords(mol)  # a 2D record: embedded in 3D by the reader
        else:
            mol = Chem.AddHs(mol)
            AllChem.EmbedMolecule(mol, randomSeed=k)
        mol.SetProp("_Name", f"cmpd-{k:03d}")
        mol.SetProp("vendor_id", f"V{1000 + k}")
        mol.SetDoubleProp("pIC50", 5.0 + k / 100)
        w.write(mol)
    w.close()
    return tmp_path / "in.sdf"


def test_sdf_round_trip_through_shards_resume_and_merge_keeps_bonds_names_properties_order(library, tmp_path):
    model = ["--model", "qm9-painn128-jt", *FAST]
    r = cli("relax", str(library), "-o", str(tmp_path / "s0.sdf"), "--shard", "0/2", *model)
    assert r.returncode == 0, r.stderr[-2000:]
    r = cli("relax", str(library), "-o", str(tmp_path / "s1.sdf"), "--shard", "1/2", "--chunk-size", "16", *model)
    assert r.returncode == 0, r.stderr[-2000:]
    # as if killed after its second chunk: cut the file and its progress sidecar back there, then --resume
    side = tmp_path / "s1.sdf.progress.jsonl"
    lines = side.read_text().splitlines(keepends=True)
    keep = [line for line in lines if '"job"' in line] + [line for line in lines if '"job"' not in line][:2]
    side.write_text("".join(keep))
    size = json.loads(keep[-1])["bytes"]
    with open(tmp_path / "s1.sdf", "r+b") as fh:
        fh.truncate(size + 100)  # and a torn third chunk after it
    r = cli("relax", str(library), "-o", str(tmp_path / "s1.sdf"), "--shard", "1/2", "--chunk-size", "16", "--resume",
            *model)
    assert r.returncode == 0 and "32 already done" in r.stdout, r.stdout + r.stderr[-2000:]
    r = cli("merge", str(tmp_path / "s0.sdf"), str(tmp_path / "s1.sdf"), "-o", str(tmp_path / "all.sdf"),
            "--input", str(library))
    assert r.returncode == 0, r.stdout + r.stderr[-2000:]
    inputs, outputs = records(library), records(tmp_path / "all.sdf")
    assert len(outputs) == count_records(tmp_path / "all.sdf") == 120
    for k, (a, b) in enumerate(zip(inputs, outputs)):
        assert b.GetProp("_Name") == a.GetProp("_Name") == f"cmpd-{k:03d}"
        assert b.GetIntProp("input_index") == k
        assert b.GetProp("vendor_id") == a.GetProp("vendor_id") and b.GetDoubleProp("pIC50") == a.GetDoubleProp("pIC50")
        assert b.GetProp("status") == "converged" and b.GetProp("diffusion_model") == "qm9-painn128-jt"
        assert b.HasProp("diffusion_level_of_theory") and b.HasProp("diffusion_t")
        assert b.GetIntProp("diffusion_hydrogens_restored") >= 0
        a_h = Chem.AddHs(a) if k % 10 == 3 else a  # the 2D record gained explicit hydrogens, in RDKit's order
        assert bond_orders(b) == bond_orders(a_h)
        assert Chem.MolToSmiles(Chem.RemoveHs(b)) == Chem.MolToSmiles(Chem.RemoveHs(a))


def test_smiles_library_to_sdf_keeps_the_smiles_bond_orders_and_resumes(tmp_path):
    lib = tmp_path / "lib.smi"
    lib.write_text("".join(f"{s} mol{k}\n" for k, s in enumerate(SMILES * 11)))  # 110 entries
    out = tmp_path / "out.sdf"
    r = cli("relax", str(lib), "-o", str(out), "--chunk-size", "40", "--model", "qm9-painn128-jt", *FAST)
    assert r.returncode == 0, r.stderr[-2000:]
    before = out.read_bytes()
    r = cli("relax", str(lib), "-o", str(out), "--resume", "--model", "qm9-painn128-jt", *FAST)
    assert r.returncode == 0 and "110 already done" in r.stdout and out.read_bytes() == before
    mols = records(out)
    assert [m.GetProp("_Name") for m in mols] == [f"mol{k}" for k in range(110)]
    for k, m in enumerate(mols):
        assert Chem.MolToSmiles(Chem.RemoveHs(m)) == Chem.CanonSmiles(SMILES[k % len(SMILES)])
    r = cli("merge", str(out), "-o", str(tmp_path / "m.db"))
    assert r.returncode == 2 and "SD files merge only with SD files" in r.stderr


def test_pipeline_writes_an_sdf_with_the_smiles_bond_orders(tmp_path):
    r = cli("pipeline", "O=C(O)c1ccccc1", "--to", "xtb", "--max-steps", "5", "-o", str(tmp_path / "f.sdf"))
    assert r.returncode == 0, r.stderr[-2000:]
    (mol,) = records(tmp_path / "f.sdf")
    assert Chem.MolToSmiles(Chem.RemoveHs(mol)) == Chem.CanonSmiles("O=C(O)c1ccccc1")
    assert mol.GetProp("bond_orders") == "from the SMILES" and mol.GetProp("relaxed_by") == "xtb"


def test_every_record_of_a_multi_record_sdf_is_read_for_a_non_streaming_output(library, tmp_path):
    from ase.io import read

    r = cli("relax", str(library), "-o", str(tmp_path / "out.extxyz"), "--index", ":12", "--model", "qm9-painn128-jt",
            *FAST)
    assert r.returncode == 0, r.stderr[-2000:]
    assert len(read(tmp_path / "out.extxyz", ":")) == 12  # ASE's own sdf reader would stop after the first
