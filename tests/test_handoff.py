"""The physics hand-off (issue 20): optimizers, initial Hessians, the measured default."""
import sys

import numpy as np
import pytest

from ase_diffrelax.chem.rdkit_interop import atoms_from_smiles
from ase_diffrelax.workflows.handoff import OPTIMIZERS, make_positive_definite, rigid_modes, xtb_hessian
from ase_diffrelax.workflows.pipeline import handoff_defaults, physics_stage, resolve_handoff

pytest.importorskip("tblite")


@pytest.fixture(scope="module")
def nma():
    return atoms_from_smiles("CC(=O)NC")


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_every_optimizer_converges_a_small_molecule_at_xtb(nma, optimizer):
    final, rep = physics_stage(nma, "xtb", optimizer=optimizer, hessian="identity", max_steps=300)
    assert rep.converged and rep.fmax_end <= 0.03 and rep.optimizer == optimizer
    assert rep.force_calls >= rep.steps >= 1
    assert final.info["relaxed_optimizer"] == optimizer
    assert np.isclose(final.get_potential_energy(), rep.energy_end_eV)


def test_xtb_hessian_is_symmetric_positive_definite_in_ev_per_a2(nma):
    from ase_diffrelax.workflows.physics import xtb_calculator

    h, work = xtb_hessian(nma)
    n3 = 3 * len(nma)
    assert h.shape == (n3, n3) and np.allclose(h, h.T)
    assert np.linalg.eigvalsh(h).min() > 0
    assert work.calls == 2 * n3 + 1 and work.wall_s > 0
    # units: the raw Hessian's first row against central differences of ASE forces in eV/A
    a = nma.copy()
    a.calc = xtb_calculator()
    d = 0.005
    a.positions[0, 0] += d
    fp = a.get_forces().ravel()
    a.positions[0, 0] -= 2 * d
    fm = a.get_forces().ravel()
    row = -(fp - fm) / (2 * d)
    raw, _ = xtb_hessian(nma, positive_definite=False)
    assert np.abs(raw[0] - row).max() < 0.02 * np.abs(row).max()


def test_the_xtb_hessian_cuts_bfgs_calls(nma):
    _, plain = physics_stage(nma, "xtb", optimizer="bfgs", hessian="identity")
    _, with_h = physics_stage(nma, "xtb", optimizer="bfgs", hessian="xtb")
    assert with_h.converged and with_h.force_calls < plain.force_calls
    assert with_h.hessian["calls"] == 6 * len(nma) + 1  # reported apart from the target-level calls


def test_make_positive_definite_projects_rigid_motions():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(5, 3))
    m = rng.normal(size=(15, 15))
    h, lam = make_positive_definite(m @ m.T - 3 * np.eye(15), x, floor=0.5)
    w = np.linalg.eigvalsh(h)
    assert w.min() >= 0.5 - 1e-9 and np.allclose(h, h.T)
    r = rigid_modes(x)
    assert r.shape == (15, 6) and np.allclose(r.T @ h @ r, 70.0 * np.eye(6), atol=1e-6)


def test_a_callable_hessian_is_checked(nma):
    with pytest.raises(ValueError, match="shape"):
        physics_stage(nma, "xtb", optimizer="bfgs", hessian=lambda a: np.eye(3))
    h = np.eye(3 * len(nma)) * 30.0
    _, rep = physics_stage(nma, "xtb", optimizer="bfgs", hessian=lambda a: h)
    assert rep.converged and rep.hessian["calls"] == 0


def test_options_are_checked_before_any_qm_work(nma):
    from ase_diffrelax import run_pipeline

    with pytest.raises(ValueError, match="takes no initial Hessian"):
        run_pipeline(nma, stages=("xtb",), optimizer="lbfgs", hessian="xtb")
    with pytest.raises(ValueError, match="unknown optimizer"):
        run_pipeline(nma, stages=("xtb",), optimizer="newton")


def test_a_missing_optimizer_extra_is_one_line(monkeypatch, capsys):
    from ase_diffrelax.cli import main

    monkeypatch.setitem(sys.modules, "sella", None)  # import sella -> ImportError
    assert main(["pipeline", "CCO", "--to", "xtb", "--optimizer", "sella", "--skip-diffusion"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pip install 'ase_diffrelax[sella]'" in err[0]


def test_via_xtb_puts_an_xtb_stage_before_dft(monkeypatch, capsys):
    import ase_diffrelax.workflows.pipeline as pipeline
    from ase_diffrelax.cli import main

    seen = []

    class Result:
        def table(self):
            return "table"

    monkeypatch.setattr(pipeline, "run_pipeline", lambda start, stages, **kw: seen.append(list(stages)) or Result())
    for flags in (["--via-xtb"], ["--no-via-xtb"], ["--no-via-xtb", "--skip-diffusion"], [], ["--skip-diffusion"]):
        assert main(["pipeline", "CCO", "--to", "dft", *flags]) == 0
    via_by_default = handoff_defaults()["levels"]["dft"]["via_xtb"]
    xtb = ["xtb"] if via_by_default else []
    assert seen == [["mmff", "diffusion", "xtb", "dft"], ["mmff", "diffusion", "dft"], ["mmff", "dft"],
                    ["mmff", "diffusion", *xtb, "dft"], ["mmff", *xtb, "dft"]]
    assert main(["pipeline", "CCO", "--to", "xtb"]) == 0 and seen[-1] == ["mmff", "diffusion", "xtb"]
    assert main(["pipeline", "CCO", "--to", "xtb", "--via-xtb"]) == 2
    assert "--to dft" in capsys.readouterr().err


def test_default_stages_follow_the_measured_table():
    from ase_diffrelax.workflows.pipeline import default_stages

    table = handoff_defaults()["levels"]
    assert isinstance(table["dft"]["via_xtb"], bool) and table["dft"]["via_xtb_evidence"]
    assert default_stages("dft") == ["mmff", "diffusion"] + (["xtb"] if table["dft"]["via_xtb"] else []) + ["dft"]
    assert default_stages("dft", via_xtb=False, diffusion=False) == ["mmff", "dft"]
    assert default_stages("xtb") == ["mmff", "diffusion", "xtb"]
    with pytest.raises(ValueError, match="to='dft'"):
        default_stages("xtb", via_xtb=True)
    with pytest.raises(ValueError, match="unknown target level"):
        default_stages("mp2")


def test_auto_takes_the_measured_table():
    table = handoff_defaults()["levels"]
    for level in ("xtb", "xtb_before_dft", "dft"):
        opt, hess = resolve_handoff(level, "auto", "auto")
        assert (opt, hess) == (table[level]["optimizer"], table[level]["hessian"])
        assert table[level]["evidence"]
    assert resolve_handoff("xtb", "bfgs", "identity") == ("bfgs", "identity")  # today's behaviour on request
    assert resolve_handoff("xtb", "lbfgs", "auto")[1] == "identity"


def test_auto_falls_back_with_a_warning_when_its_route_is_not_installed(monkeypatch):
    monkeypatch.setitem(sys.modules, "sella", None)
    with pytest.warns(UserWarning, match=r"ase_diffrelax\[sella\]"):
        assert resolve_handoff("xtb", "auto", "auto") == ("bfgs", "identity")


def test_the_pipeline_runs_the_measured_default_route(nma):
    from ase_diffrelax import run_pipeline

    res = run_pipeline(nma, stages=("xtb",))
    opt, hess = resolve_handoff("xtb")
    assert res.stages[0].optimizer == opt and res.stages[0].converged
    assert (res.stages[0].hessian is not None) == (hess != "identity")


def test_an_xtb_stage_before_dft_takes_its_own_measured_route(nma, monkeypatch):
    """--via-xtb: the xTB stage is chosen for the DFT calls after it ('xtb_before_dft'), not for
    its own xTB calls ('xtb'); an explicit optimizer still applies to every stage."""
    import ase_diffrelax.workflows.pipeline as pipeline

    assert pipeline.handoff_level("xtb", ["mmff", "diffusion", "xtb", "dft"]) == "xtb_before_dft"
    assert pipeline.handoff_level("xtb", ["mmff", "diffusion", "xtb"]) == "xtb"
    seen = []

    class Stop(Exception):
        pass

    def first_physics_stage(atoms, kind, **kw):
        seen.append((kind, kw["optimizer"], kw["hessian"]))
        raise Stop

    monkeypatch.setattr(pipeline, "physics_stage", first_physics_stage)
    for optimizer in ("auto", "fire"):
        with pytest.raises(Stop):
            pipeline.run_pipeline(nma, stages=("xtb", "dft"), optimizer=optimizer, hessian="identity")
    assert seen == [("xtb", *resolve_handoff("xtb_before_dft", "auto", "identity")), ("xtb", "fire", "identity")]
