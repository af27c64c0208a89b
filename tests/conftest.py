"""Shared fixtures: a tiny checkpoint trained here, in seconds, on small equilibrium molecules."""
import numpy as np
import pytest
import torch

torch.set_num_threads(1)

# G2 molecules from ase.build (H, C, N, O, F only): equilibrium geometries shipped with ASE
SMALL = ["CH4", "H2O", "NH3", "C2H6", "CH3OH", "C2H4", "HCN", "CH3CH2OH", "H2CO", "CH3CHO", "C2H2",
         "CH3NH2", "HCOOH", "CH2F2", "CH3F", "CH3COOH", "CH3CN", "C3H8", "CH3OCH3", "NH2CH2CH2OH"]


def small_molecules():
    from ase.build import molecule
    from ase.collections import g2

    out = []
    for name in SMALL:
        if name in g2.names:
            out.append(molecule(name))
    return out


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    from ase_diffrelax.chem.rdkit_interop import mmff_from_reference
    from ase_diffrelax.training.data import MoleculeSet
    from ase_diffrelax.training.noising import TrainingData
    from ase_diffrelax.training.trainer import TrainConfig, Trainer

    mols = small_molecules()
    ms = MoleculeSet.from_atoms_list(mols)
    mmff = []
    for a in mols:
        try:
            mmff.append(mmff_from_reference(a.numbers, a.positions))
        except ValueError:
            mmff.append(np.full((len(a), 3), np.nan))
    mmff = np.concatenate(mmff).astype(np.float32)
    out = tmp_path_factory.mktemp("tiny")
    cfg = TrainConfig(out=str(out / "run"), steps=400, batch_size=8, val_every=200, lr=2e-3, ckpt_every=1000,
                      model={"features": 16, "blocks": 2, "rbf": 8, "cutoff": 5.0,
                             "elements": [1, 6, 7, 8, 9], "time_features": 8})
    data = TrainingData(ms, mmff)
    trainer = Trainer(cfg, data, data, progress=False)
    trainer.train()
    from ase_diffrelax import load_model

    return load_model(out / "run" / "best")


@pytest.fixture(scope="session")
def xtb_dataset(tmp_path_factory):
    """A five-molecule ``ase-diffrelax dataset`` build (GFN2-xTB minima, MMFF94 starts): one val, four train."""
    pytest.importorskip("tblite")
    from ase_diffrelax.training.xtb_dataset import BuildProtocol, assemble, build_dataset

    root = tmp_path_factory.mktemp("xtb_ds")
    entries = [(k, s, "val" if k == 0 else "train") for k, s in enumerate(["CCO", "CCCO", "OCCCC", "CC(=O)OC", "CCN"])]
    build_dataset(entries, root / "ds", protocol=BuildProtocol(optimizer="tblite-lbfgs", fmax=0.05, accept_fmax=0.06),
                  log=lambda m: None)
    assemble(root / "ds")
    return root / "ds" / "dataset.npz"
