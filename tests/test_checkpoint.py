"""The checkpoint registry, package data and the shared model cache."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ase_diffrelax import available_models, load_model
from ase_diffrelax.core.checkpoint import checkpoint_dir, registry, sha256


def test_registry_lists_files_that_exist_with_their_hashes():
    reg = registry()
    assert reg["default"] in reg["models"]
    for name, entry in reg["models"].items():
        path = checkpoint_dir() / entry["weights"]
        assert path.exists(), name
        assert sha256(path) == entry["sha256"], f"{name}: weights changed without updating registry.json"
        assert (checkpoint_dir() / entry["card"]).exists()
    info = available_models()
    assert all("level_of_theory" in e and "elements" in e for e in info.values())


def test_default_model_by_name_and_by_path_is_the_same_cached_object():
    by_name = load_model()
    assert load_model(reg_default := registry()["default"]) is by_name
    assert load_model(checkpoint_dir() / reg_default) is by_name
    assert by_name.level_of_theory == registry()["models"][reg_default]["level_of_theory"]


def test_moving_a_model_to_another_device_does_not_move_the_shared_one():
    shared = load_model()
    moved = shared.to(torch.device("meta"))
    assert moved is not shared and moved.device.type == "meta"
    assert shared.device.type == "cpu" and load_model().device.type == "cpu"


def test_unknown_name_lists_the_registry():
    with pytest.raises(FileNotFoundError, match=registry()["default"]):
        load_model("no-such-checkpoint")


def test_import_is_light():
    code = "import sys, ase_diffrelax; ase_diffrelax.__all__; print('torch' in sys.modules, 'benchmarks' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "False"]


def test_automatic_choice_by_elements_and_size_and_the_error_that_lists_checkpoints(monkeypatch):
    from ase import Atoms
    from ase.build import molecule

    from ase_diffrelax import InputError
    from ase_diffrelax.core import checkpoint

    fake = {"default": "small", "choice_order": ["small", "drug"], "models": {
        "small": {"weights": "s.safetensors", "card": "s.json", "elements": ["H", "C", "N", "O", "F"], "atoms": [3, 29]},
        "drug": {"weights": "d.safetensors", "card": "d.json", "elements": ["H", "C", "N", "O", "F", "S", "Cl", "Br"],
                 "atoms": [8, 100]}}}
    monkeypatch.setattr(checkpoint, "registry", lambda: fake)
    monkeypatch.delenv("ASE_DIFFRELAX_MODEL", raising=False)
    assert checkpoint.choose_model([molecule("CH3CH2OH")]) == "small"
    assert checkpoint.choose_model([molecule("CH3CH2OH"), molecule("CH3Cl")]) == "drug"
    chain = Atoms("C40H80", positions=[[1.5 * k, 0, 0] for k in range(120)])
    assert checkpoint.choose_model([chain]) == "drug"  # too large for "small"
    alkane = Atoms("C70H142", positions=[[1.5 * k, 0, 0] for k in range(212)])
    assert checkpoint.choose_model([alkane]) == "drug"  # too large for both: the one trained largest
    with pytest.raises(InputError, match=r"Si unknown to every shipped checkpoint: small \(H C N O F\); drug"):
        checkpoint.choose_model([molecule("SiH4")])
    # heavy-atom ranges and the tolerance come from the registry (set by measurement)
    fake["models"]["small"]["heavy_atoms"] = [1, 9]
    fake["size_tolerance"] = 1.0
    assert checkpoint.choose_model([molecule("CH3CH2OH")]) == "small"  # 3 heavy atoms
    assert checkpoint.choose_model([Atoms("C10H8", positions=[[1.4 * k, 0, 0] for k in range(18)])]) == "drug"
    fake["size_tolerance"] = 1.2  # 10 heavy atoms <= 1.2 x 9
    assert checkpoint.choose_model([Atoms("C10H8", positions=[[1.4 * k, 0, 0] for k in range(18)])]) == "small"
    # a rule measured at the level the start is handed to replaces the general order and tolerance
    fake["choice_by_level"] = {"dft": {"choice_order": ["small", "drug"], "size_tolerance": 3.0}}
    twenty = Atoms("C20H42", positions=[[1.4 * k, 0, 0] for k in range(62)])
    assert checkpoint.choose_model([twenty]) == "drug"
    assert checkpoint.choose_model([twenty], level="xtb") == "drug"  # no rule for xtb: the general one
    assert checkpoint.choose_model([twenty], level="dft") == "small"  # 20 heavy atoms <= 3 x 9
    assert checkpoint.choose_model([molecule("CH3Cl")], level="dft") == "drug"  # elements still decide first
    monkeypatch.setenv("ASE_DIFFRELAX_MODEL", "small")
    assert checkpoint.choose_model([molecule("CH3Cl")]) == "small"  # the user's choice wins


def test_shipped_registry_relaxes_a_chlorine_and_sulfur_drug_with_no_arguments():
    """Clopidogrel (Cl, S, 21 heavy atoms) goes to the drug-like checkpoint, ethanol to QM9's."""
    import numpy as np
    from ase.build import molecule

    from ase_diffrelax import DiffusionRelax, atoms_from_smiles
    from ase_diffrelax.core.checkpoint import choose_model

    reg = registry()
    drug_models = [n for n, e in reg["models"].items() if {"S", "Cl", "Br"} <= set(e["elements"])]
    assert drug_models, "no shipped checkpoint knows S, Cl and Br"
    atoms = atoms_from_smiles("COC(=O)[C@H](c1ccccc1Cl)N1CCc2sccc2C1")
    start = atoms.positions.copy()
    DiffusionRelax(atoms, logfile=None, on_topology_change="raise").run()
    assert atoms.info["diffusion_model"] in drug_models
    assert atoms.info["diffusion_level_of_theory"] == reg["models"][atoms.info["diffusion_model"]]["level_of_theory"]
    assert np.isfinite(atoms.positions).all() and np.abs(atoms.positions - start).max() > 1e-3
    assert choose_model([molecule("CH3CH2OH")]) == reg["default"]  # QM9-sized H C N O stays with QM9's


GFN2_XTB_MODELS = [n for n, e in registry()["models"].items() if e.get("level_of_theory") == "GFN2-xTB"]


@pytest.mark.parametrize("name", GFN2_XTB_MODELS)
def test_each_drug_like_checkpoint_starts_closer_to_the_xtb_minimum_than_mmff94(name):
    """Eight MOSES test molecules (never trained on): from their MMFF94 minima, the checkpoint's start
    must lie lower on the GFN2-xTB surface than MMFF94's on most of them and by half in the median."""
    pytest.importorskip("tblite")
    import numpy as np

    from ase_diffrelax import load_model, relax_many
    from ase_diffrelax.training.xtb_dataset import mmff_start, read_dataset
    from benchmarks.start_quality import single_point

    data = Path(__file__).resolve().parents[1] / "data" / "moses_xtb" / "dataset.npz"
    model = load_model(name)
    assert model.level_of_theory == "GFN2-xTB" and model.verified.startswith("registry")
    mols = read_dataset(data, "test")[:8]
    starts = [mmff_start(a) for a in mols]
    results = relax_many(starts, model=model, progress=False, batch_size=8)
    assert all(r.status == "converged" for r in results)
    gap_mmff = np.array([a.info["energy_xtb_at_mmff"] - a.info["energy_xtb"] for a in mols])
    gap_diff = np.array([single_point(a.numbers, r.atoms.positions) - a.info["energy_xtb"] for a, r in zip(mols, results)])
    assert (gap_diff < gap_mmff).sum() >= 7, (gap_diff, gap_mmff)
    assert np.median(gap_diff) < 0.5 * np.median(gap_mmff), (gap_diff, gap_mmff)


B3LYP_MODELS = [n for n, e in registry()["models"].items() if e.get("level_of_theory", "").startswith("B3LYP")]


@pytest.mark.parametrize("name", B3LYP_MODELS)
def test_each_qm9_checkpoint_moves_mmff94_starts_toward_the_b3lyp_minimum(name):
    """Eight QM9 test-split molecules (Index % 10 == 0, never trained on; B3LYP references in
    tests/data): from the MMFF94 minimum started at the reference, the start must end closer to the
    reference (symmetry-aware RMSD, all atoms, after alignment) on 7 of 8 and at < 0.7x in the median
    (300 val molecules, t_scale 2.5: 0.42-0.46x)."""
    import numpy as np
    from ase.io import read

    from ase_diffrelax import load_model, relax_many
    from ase_diffrelax.chem.rdkit_interop import mmff_from_reference
    from ase_diffrelax.chem.rmsd import SymmetricRMSD

    refs = read(Path(__file__).resolve().parent / "data" / "qm9_test8.extxyz", ":")
    assert len(refs) == 8 and all(a.info["qm9_index"] % 10 == 0 for a in refs)
    starts = []
    for ref in refs:
        start = ref.copy()
        start.positions = mmff_from_reference(ref.numbers, ref.positions)
        starts.append(start)
    results = relax_many([s.copy() for s in starts], model=load_model(name), progress=False, batch_size=8)
    assert all(r.status == "converged" for r in results)
    rmsd = [SymmetricRMSD(ref.numbers, ref.positions) for ref in refs]
    before = np.array([f(s.positions) for f, s in zip(rmsd, starts)])
    after = np.array([f(r.atoms.positions) for f, r in zip(rmsd, results)])
    assert (after < before).sum() >= 7, (after, before)
    assert np.median(after / before) < 0.7, (after, before)
