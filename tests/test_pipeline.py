"""Hand-off stages: the PySCF wrapper, the xTB stage and the pipeline report."""
import json

import numpy as np
import pytest
from ase.build import molecule

pyscf = pytest.importorskip("pyscf")


def test_pyscf_forces_match_finite_differences():
    from ase_diffrelax.physics import PySCFCalculator

    atoms = molecule("H2O")
    atoms.positions[0] += [0.02, -0.03, 0.01]
    atoms.calc = PySCFCalculator(xc="b3lyp", basis="sto-3g", conv_tol=1e-11)
    f = atoms.get_forces()
    assert abs(f.sum(0)).max() < 0.01
    h = 1e-3
    for i, j in [(0, 2), (1, 1), (2, 0)]:
        e = []
        for sign in (1, -1):
            b = atoms.copy()
            b.calc = atoms.calc
            b.positions[i, j] += sign * h
            e.append(b.get_potential_energy())
        fd = -(e[0] - e[1]) / (2 * h)
        assert abs(fd - f[i, j]) < 2e-3, (i, j, fd, f[i, j])


def test_xtb_stage_relaxes_and_reports():
    pytest.importorskip("tblite")
    from ase_diffrelax.pipeline import physics_stage

    start = molecule("CH3CH2OH")
    start.positions += np.random.default_rng(0).normal(0, 0.03, start.positions.shape)
    atoms, rep = physics_stage(start, "xtb", fmax=0.03)
    assert rep.converged and rep.fmax_end < 0.03
    assert rep.energy_end_eV < rep.energy_start_eV
    assert rep.force_calls >= rep.steps + 1
    assert not rep.topology["changed"]


def test_pipeline_smiles_to_dft_with_report_and_trajectories(tiny_model, tmp_path):
    from ase.io import read

    from ase_diffrelax.pipeline import run_pipeline

    res = run_pipeline("O", stages=["mmff", "diffusion", "dft"], model=tiny_model, policy="fixed", t0=5,
                       stride=0.0, fmax=0.05, traj_prefix=str(tmp_path / "w"),
                       physics_params={"basis": "sto-3g", "xc": "b3lyp"})
    names = [s.stage for s in res.stages]
    assert names == ["mmff", "diffusion", "dft"]
    dft = res.stages[-1]
    assert dft.converged and dft.fmax_end < 0.05 and dft.steps >= 0 and dft.force_calls >= 1
    assert res.stages[1].steps == 5
    for s in res.stages:
        assert s.wall_s > 0
        assert len(read(s.trajectory, ":")) >= 1
    report = res.report()
    json.dumps(report)  # plain data
    assert set(report[-1]) >= {"stage", "steps", "force_calls", "wall_s", "energy_start_eV", "energy_end_eV",
                               "topology", "trajectory"}
    assert res.atoms.get_chemical_formula() == "H2O"


def test_pipeline_cli_xtb(tiny_model, tmp_path, capsys):
    pytest.importorskip("tblite")
    from ase_diffrelax.cli import main

    rc = main(["pipeline", "CCO", "--to", "xtb", "--model", str(tiny_model.path), "--policy", "fixed", "--t0", "5",
               "-o", str(tmp_path / "final.xyz")])
    assert rc == 0
    report = json.loads(capsys.readouterr().out)
    assert [r["stage"] for r in report] == ["mmff", "diffusion", "xtb"]
    assert report[-1]["converged"]
    assert (tmp_path / "final.xyz").exists()
