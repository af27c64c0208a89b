"""Hand-off stages: the PySCF wrapper, the xTB stage and the pipeline report."""
import json

import numpy as np
import pytest
from ase.build import molecule

pyscf = pytest.importorskip("pyscf")


@pytest.mark.parametrize("xc", ["b3lyp", "b3lyp-d3bj"])
def test_pyscf_forces_match_finite_differences(xc):
    from ase_diffrelax.workflows.physics import PySCFCalculator

    atoms = molecule("H2O")
    atoms.positions[0] += [0.02, -0.03, 0.01]
    atoms.calc = PySCFCalculator(xc=xc, basis="sto-3g", conv_tol=1e-11)
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
    from ase_diffrelax.workflows.pipeline import physics_stage

    start = molecule("CH3CH2OH")
    start.positions += np.random.default_rng(0).normal(0, 0.03, start.positions.shape)
    atoms, rep = physics_stage(start, "xtb", fmax=0.03)
    assert rep.converged and rep.fmax_end < 0.03
    assert rep.energy_end_eV < rep.energy_start_eV
    assert rep.force_calls >= rep.steps + 1
    assert not rep.topology["changed"]


def test_pipeline_smiles_to_dft_with_report_and_trajectories(tiny_model, tmp_path):
    from ase.io import read

    from ase_diffrelax.workflows.pipeline import run_pipeline

    res = run_pipeline("O", stages=["mmff", "diffusion", "dft"], model=tiny_model, policy="fixed:t0=5+stride=0",
                       fmax=0.05, traj_prefix=str(tmp_path / "w"),
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
               "-o", str(tmp_path / "final.extxyz"), "--json", str(tmp_path / "report.json")])
    assert rc == 0
    table = capsys.readouterr().out
    assert table.splitlines()[0].split()[:3] == ["stage", "steps", "calls"]
    assert [line.split()[0] for line in table.splitlines()[2:]] == ["mmff", "diffusion", "xtb"]
    report = json.loads((tmp_path / "report.json").read_text())
    assert [r["stage"] for r in report] == ["mmff", "diffusion", "xtb"]
    assert report[-1]["converged"] and report[-1]["charge"] == 0 and report[-1]["multiplicity"] == 1
    from ase.io import read

    final = read(tmp_path / "final.extxyz")
    assert final.info["relaxed_by"] == "xtb" and "diffusion_t" not in final.info
    assert abs(final.get_potential_energy() - report[-1]["energy_end_eV"]) < 1e-6
    assert np.sqrt((final.get_forces() ** 2).sum(1)).max() < 0.03


def test_acetate_is_relaxed_as_an_anion_and_the_diffusion_stage_steps_aside():
    """The SMILES formal charge reaches xTB; the neutral-only checkpoint is skipped, with the reason."""
    pytest.importorskip("tblite")
    from ase_diffrelax.workflows.pipeline import run_pipeline

    res = run_pipeline("CC(=O)[O-]", stages=["mmff", "diffusion", "xtb"])
    diff, xtb = res.stages[1], res.stages[2]
    assert "charge -1" in diff.skipped and diff.steps is None
    assert xtb.charge == -1 and xtb.multiplicity == 1
    neutral = run_pipeline("CC(=O)[O-]", stages=["mmff", "xtb"], charge=0, uhf=1)
    # the anion is ~7.5 eV more stable in GFN2-xTB than the neutral radical at the same geometry
    assert res.atoms.get_potential_energy() < neutral.atoms.get_potential_energy() - 5.0
    with pytest.raises(ValueError, match="cannot have 0 unpaired"):
        run_pipeline("CC(=O)[O-]", stages=["mmff", "xtb"], charge=0, uhf=0)
    with pytest.raises(Exception, match="charge -1"):
        run_pipeline("CC(=O)[O-]", stages=["mmff", "diffusion", "xtb"], strict=True)


@pytest.mark.parametrize("content, message", [
    ("3\n\nO 0 0 0\nHh 0.757 0.586 0\nH -0.757 0.586 0\n", "frame 0: unknown element symbol 'Hh'"),
    ("3\n\nO 0 0 0\nH 0.757 0.586 0\nH -0.757 0.586 0\n4\n\nO 0 0 0\nH 0.757 0.586 0\nH -0.757 0.586 0\n",
     "frame 1: cannot read"),
    ("3\n\nO 0 0 0\nH 0,757 0.586 0\nH -0.757 0.586 0\n", "frame 0: cannot read"),
    ("3\n\nO 0 0 0\nH 0.1 0 0\nH -0.757 0.586 0\n", "frame 0: atoms 0 and 1 overlap"),
])
def test_cli_bad_input_is_one_line_and_exit_2(tmp_path, capsys, content, message):
    from ase_diffrelax.cli import main

    path = tmp_path / "bad.xyz"
    path.write_text(content)
    assert main(["relax", str(path), "-o", str(tmp_path / "out.xyz"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err and "Traceback" not in err
    assert str(path) in err
    assert main(["relax", str(path), "-o", str(tmp_path / "o.xyz"), "--policy", "fixed"]) == 2


def test_cli_missing_t0_and_unknown_element_through_pipeline(capsys):
    from ase_diffrelax.cli import main

    assert main(["pipeline", "CCO", "--policy", "fixed", "--to", "xtb"]) == 2
    assert "needs t0" in capsys.readouterr().err
    assert main(["pipeline", "C[Si](C)(C)C", "--to", "xtb", "--strict"]) == 2
    err = [line for line in capsys.readouterr().err.strip().splitlines() if "ase-diffrelax: stage" not in line]
    assert len(err) == 1 and "Si unknown" in err[0]  # one line, beside the stage announcements


def test_pyscf_calculator_follows_ase_conventions():
    from ase.calculators.calculator import CalculatorSetupError
    from pyscf import lib

    from ase_diffrelax.workflows.physics import PySCFCalculator

    threads = lib.num_threads()
    atoms = molecule("H2O")
    atoms.calc = PySCFCalculator(basis="sto-3g", threads=1)
    e1 = atoms.get_potential_energy()
    assert lib.num_threads() == threads  # PySCF's global thread count is left as the user had it
    atoms.calc.set(basis="6-31g")  # a new basis drops the cached SCF and the results
    e2 = atoms.get_potential_energy()
    assert e2 < e1 - 1.0
    oh = molecule("OH")
    oh.calc = PySCFCalculator(basis="sto-3g")
    with pytest.raises(CalculatorSetupError, match="9 electrons"):
        oh.get_potential_energy()


def test_pipeline_steps_around_a_molecule_far_larger_than_training():
    from ase_diffrelax.core.validate import InputError
    from ase_diffrelax.workflows.pipeline import run_pipeline

    long_chain = "C" * 30  # 92 atoms; the QM9 checkpoint saw at most 29
    with pytest.warns(UserWarning):
        res = run_pipeline(long_chain, stages=["mmff", "diffusion"])
    assert "far more than the largest molecule" in res.stages[1].skipped
    with pytest.warns(UserWarning), pytest.raises(InputError, match="far more"):
        run_pipeline(long_chain, stages=["mmff", "diffusion"], strict=True)


def test_gradient_memo_resumes_a_killed_relaxation_from_its_stored_gradients(tmp_path):
    """A run stopped after 3 steps and run again replays those gradients (inner calculator not
    called for them) and ends where an uninterrupted run ends, bit for bit."""
    from ase.calculators.emt import EMT
    from ase.optimize import BFGS

    from ase_diffrelax.workflows.physics import CountingCalculator, GradientMemo

    def relax(path, steps):
        atoms = molecule("CH3CH2OH")
        atoms.rattle(0.05, seed=1)
        inner = CountingCalculator(EMT())
        atoms.calc = GradientMemo(inner, path, level="emt")
        BFGS(atoms, logfile=None).run(fmax=0.05, steps=steps)
        return atoms, inner.calls, atoms.calc.replayed

    whole, whole_calls, _ = relax(tmp_path / "a.jsonl", 200)
    _, first_calls, _ = relax(tmp_path / "b.jsonl", 3)
    resumed, second_calls, replayed = relax(tmp_path / "b.jsonl", 200)
    assert replayed == first_calls > 0
    assert first_calls + second_calls == whole_calls
    assert np.array_equal(resumed.positions, whole.positions)
    other = GradientMemo(EMT(), tmp_path / "b.jsonl", level="other level")
    assert other.key(whole) != GradientMemo(EMT(), tmp_path / "b.jsonl", level="emt").key(whole)


def test_the_dft_example_runs_the_default_route(tmp_path):
    """examples/handoff_dft.py as a user runs it (real checkpoint, cheap basis): the default DFT route."""
    import subprocess
    import sys
    from pathlib import Path

    from ase.io import read

    from ase_diffrelax.workflows.pipeline import default_stages

    pytest.importorskip("tblite")
    script = Path(__file__).resolve().parents[1] / "examples" / "handoff_dft.py"
    out = subprocess.run([sys.executable, str(script), "O", "--basis", "sto-3g", "--threads", "1"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    final = read(tmp_path / "out" / "handoff_dft_final.extxyz")
    assert final.info["relaxed_by"] == "dft" and abs(final.get_forces()).max() < 0.03
    for k, stage in enumerate(default_stages("dft")):
        assert (tmp_path / "out" / f"handoff_dft_{k}_{stage}.traj").exists(), stage


def test_a_start_handed_straight_to_dft_takes_the_checkpoint_measured_at_dft(monkeypatch):
    """The registry's ``choice_by_level['dft']`` (QM9's B3LYP checkpoint for H C N O F molecules up to
    drug size, docs/benchmarks.md) applies when diffusion hands to a DFT stage directly; with an xTB
    stage in between, or none, the general choice (the drug-like checkpoint) stands."""
    from ase_diffrelax.core.checkpoint import choose_model, registry
    from ase_diffrelax.workflows import pipeline
    from ase_diffrelax.workflows.pipeline import StageReport, run_pipeline

    rule = registry().get("choice_by_level", {}).get("dft")
    assert rule, "the registry has no measured choice for DFT"
    smiles = "CC1CCC(C)N(C(=O)Nc2ccc(-c3nnnn3C3CC3)cc2)C1"  # MOSES test_157455: 25 heavy, 49 atoms, measured
    chosen = {}

    def no_physics(atoms, kind, **kw):  # the DFT stage itself is not what is tested here
        return atoms, StageReport(kind, 0.0)

    monkeypatch.setattr(pipeline, "physics_stage", no_physics)
    import warnings

    for stages in (["mmff", "diffusion", "dft"], ["mmff", "diffusion", "xtb", "dft"], ["mmff", "diffusion"]):
        with warnings.catch_warnings():
            warnings.simplefilter("error", UserWarning)  # a measured choice is not warned about as too large
            res = run_pipeline(smiles, stages=stages)
        diffusion = res.stages[1]
        assert not diffusion.skipped and diffusion.steps > 0, diffusion.skipped
        chosen[stages[2] if len(stages) > 2 else None] = diffusion.extra["model"]
        assert diffusion.extra["chosen_for_level"] == ("dft" if stages[2:3] == ["dft"] else None)
    general = registry()["choice_order"]
    assert chosen["dft"] == rule["choice_order"][0]
    assert registry()["models"][chosen["dft"]]["level_of_theory"].startswith("B3LYP")  # the DFT-trained one
    assert chosen["xtb"] == chosen[None] != chosen["dft"] and chosen[None] in general
    from ase_diffrelax import atoms_from_smiles

    assert choose_model([atoms_from_smiles(smiles)], level="dft") == chosen["dft"]


def test_diffusion_stage_counts_network_evaluations_with_smoothing_copies(tiny_model):
    """The stage's calls are network evaluations: each smoothed pass of 3 copies costs 2 beyond its step."""
    from ase_diffrelax.workflows.pipeline import diffusion_stage

    start = molecule("CH3CH2OH")
    start.positions += np.random.default_rng(1).normal(0, 0.15, start.positions.shape)
    spec = "jt:hold_t=30+hold_steps=1+smooth_t=10+smooth_steps=2+smooth_copies=3+polish_steps=1+clean_t=0"
    _, rep = diffusion_stage(start, model=tiny_model, policy=spec)
    _, plain = diffusion_stage(start, model=tiny_model, policy="jt")
    assert rep.converged and plain.force_calls == plain.steps
    assert rep.force_calls == rep.steps + 2 * 2
