"""Your own ASE calculator as the hand-off target (issue 31): MOPAC and NWChem from Debian, a
calculator with an unknown interface, ``-p`` parsing, the gradient cache keyed by calculator."""
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from ase.calculators.calculator import Calculator, all_changes

from ase_diffrelax import default_stages, run_pipeline
from ase_diffrelax.workflows.calculators import apply_electronic_state, calculator_factory, parse_params

needs_mopac = pytest.mark.skipif(shutil.which("mopac") is None, reason="the mopac program is not installed "
                                 "(Debian: apt-get install mopac; .ci/run installs it)")
needs_nwchem = pytest.mark.skipif(shutil.which("nwchem") is None, reason="the nwchem program is not installed "
                                  "(Debian: apt-get install nwchem; .ci/run installs it)")


def test_parse_params_reads_ase_run_syntax_without_evaluating_code():
    assert parse_params("xc=B3LYP,basis=6-31G*,maxiter=50,tol=1e-6,x=True") == {
        "xc": "B3LYP", "basis": "6-31G*", "maxiter": 50, "tol": 1e-6, "x": True}
    assert parse_params("dft={xc:B3LYP,mult:1},kpts=(1,2)") == {"dft": {"xc": "B3LYP", "mult": 1}, "kpts": (1, 2)}
    assert parse_params("cmd=__import__('os').getcwd()") == {"cmd": "__import__('os').getcwd()"}  # a string, not run
    with pytest.raises(ValueError, match="not key=value"):
        parse_params("xc")


def test_default_stages_for_a_target_follow_the_dft_route():
    assert default_stages("target") == default_stages("dft")[:-1] + ["target"]
    assert default_stages("target", pre=True) == ["mmff", "diffusion", "pre", "target"]
    with pytest.raises(ValueError):
        default_stages("xtb", pre=True)


class Harmonic(Calculator):
    """A calculator whose ASE interface knows nothing of charge: springs to the start geometry."""

    implemented_properties = ["energy", "forces"]

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        if not hasattr(self, "ref"):
            self.ref = self.atoms.positions.copy()
        d = self.atoms.positions - self.ref
        self.results = {"energy": float((d**2).sum()), "forces": -2 * d}


def test_an_unknown_interface_refuses_a_charged_molecule_unless_told_it_is_set():
    stages = ["mmff", "target"]
    with pytest.raises(ValueError, match="does not know how its ASE interface takes a charge"):
        run_pipeline("CC(=O)[O-]", stages=stages, target=Harmonic)
    res = run_pipeline("CC(=O)[O-]", stages=stages, target=Harmonic, calc_state="set", hessian="identity")
    assert res.stages[-1].stage == "harmonic" and res.stages[-1].charge == -1
    res = run_pipeline("CCO", stages=stages, target=Harmonic(), hessian="identity")  # neutral singlet: fine
    assert res.atoms.info["relaxed_by"] == "harmonic" and res.atoms.calc is not None


@needs_mopac
def test_mopac_target_with_charge_and_the_gradient_cache(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cache = tmp_path / "grads.jsonl"
    stages = default_stages("target")
    run = lambda: run_pipeline("CC(=O)[O-]", stages=stages, target=calculator_factory("mopac", {"method": "PM7"}),  # noqa: E731
                               gradient_cache=cache)
    first = run()
    rep = first.stages[-1]
    assert rep.stage == "mopac" and rep.converged and rep.charge == -1 and "charge=-1" in rep.extra["charge_spin"]
    assert rep.force_calls >= 2 and rep.extra["replayed_calls"] == 0
    second = run()
    assert second.stages[-1].extra["replayed_calls"] == second.stages[-1].force_calls  # all from the cache
    assert np.allclose(second.atoms.positions, first.atoms.positions)
    assert all("mopac|" in json.loads(line)["level"] for line in cache.read_text().splitlines())


@needs_mopac
def test_cli_calc_mopac_runs_the_measured_route(tmp_path):
    r = subprocess.run([sys.executable, "-m", "ase_diffrelax", "pipeline", "OCC#N", "--calc", "mopac",
                        "-p", "method=PM7", "--json", str(tmp_path / "r.json"), "-o", str(tmp_path / "f.extxyz")],
                       cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    report = json.loads((tmp_path / "r.json").read_text())
    assert [s["stage"] for s in report] == ["mmff", "diffusion", "xtb", "mopac"]
    assert report[-1]["optimizer"] == "bfgs" and report[-1]["hessian"]["method"].startswith("GFN2-xTB")
    r = subprocess.run([sys.executable, "-m", "ase_diffrelax", "pipeline", "CCO", "--calc", "nosuchcode"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "not an ASE calculator name" in r.stderr and "Traceback" not in r.stderr


@needs_nwchem
def test_nwchem_target_through_ase(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    factory = calculator_factory("nwchem", parse_params("dft={xc:B3LYP},basis=STO-3G"))
    res = run_pipeline("CO", stages=default_stages("target"), target=factory)
    rep = res.stages[-1]
    assert rep.stage == "nwchem" and rep.converged and rep.fmax_end <= 0.03 and rep.energy_end_eV < rep.energy_start_eV


def test_electronic_state_goes_through_the_keywords_each_code_reads():
    from ase.build import molecule
    from ase.calculators.gaussian import Gaussian
    from ase.calculators.mopac import MOPAC

    a = molecule("CH3")
    assert "mult=2" in apply_electronic_state(Gaussian(), a, 0, 1)
    m = MOPAC()
    assert "initial magnetic moment 1" in apply_electronic_state(m, a, 0, 1)
    assert m.parameters["charge"] == 0 and a.get_initial_magnetic_moments().sum() == 1


def test_cli_calc_module_function_and_pre_calc(tmp_path):
    r = subprocess.run([sys.executable, "-m", "ase_diffrelax", "pipeline", "CCO", "--calc", "ase.calculators.emt:EMT",
                        "--pre-calc", "ase.calculators.emt:EMT", "--json", str(tmp_path / "r.json")],
                       cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    report = json.loads((tmp_path / "r.json").read_text())
    assert [s["stage"] for s in report] == ["mmff", "diffusion", "emt", "emt"]
    assert report[-1]["extra"]["calculator"] == "emt" and report[-1]["optimizer"] == "bfgs"
