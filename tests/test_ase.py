"""The ASE adapters behave like ASE's own objects."""
import io

import numpy as np
import pytest
from ase import Atoms
from ase.build import molecule
from ase.constraints import FixAtoms
from ase.io import read
from ase.optimize import BFGS, FIRE
from ase.optimize.optimize import Optimizer
from scipy.spatial.transform import Rotation

from ase_diffrelax import DiffusionCalculator, DiffusionRelax, InputError, relax_many
from ase_diffrelax.chem.rmsd import kabsch_rmsd


def noisy(name="CH3CH2OH", sigma=0.05, seed=0):
    a = molecule(name)
    a.positions += np.random.default_rng(seed).normal(0, sigma, a.positions.shape)
    return a


def test_is_an_ase_optimizer_and_irun_yields(tiny_model, tmp_path):
    atoms = noisy()
    log = io.StringIO()
    opt = DiffusionRelax(atoms, model=tiny_model, policy="fixed:t0=10+stride=0", seed=0, logfile=log,
                         trajectory=str(tmp_path / "r.traj"))
    assert isinstance(opt, Optimizer)
    calls = []
    opt.attach(lambda: calls.append(opt.nsteps))
    yielded = list(opt.irun(steps=100))
    assert yielded[-1] is True and not any(yielded[:-1])
    assert opt.nsteps == 10 and len(yielded) == 11  # the initial check plus one per step
    assert calls == list(range(11))  # observers: once at start, then every step
    frames = read(str(tmp_path / "r.traj"), ":")
    assert len(frames) == 11
    assert all("diffusion_t" in f.info and "diffusion_t_used" in f.info for f in frames[1:])
    text = log.getvalue()
    assert text.splitlines()[1].split()[1] == "0" and "nan" not in text.splitlines()[1]  # step 0: blank t columns
    assert "t_hat" in text.splitlines()[0] and "DiffusionRelax:" in text and "converged" in text
    assert np.isfinite(atoms.info["diffusion_t"])
    d = opt.todict()
    assert d["optimizer"] == "DiffusionRelax" and d["policy"]["name"] == "fixed" and d["policy"]["t0"] == 10


def test_run_accepts_fmax_and_step_limit(tiny_model):
    atoms = noisy()
    opt = DiffusionRelax(atoms, model=tiny_model, policy="fixed:t0=50+stride=0", logfile=None, seed=1)
    assert opt.run(fmax=0.05, steps=5) is False  # step budget ends before the schedule does
    assert opt.nsteps == 5
    assert opt.run(steps=100) is True
    assert opt.nsteps == 50


def test_same_seed_same_coordinates_and_relax_many_agrees(tiny_model):
    start = noisy(seed=3)
    a, b = start.copy(), start.copy()
    DiffusionRelax(a, model=tiny_model, policy="itp:eta=1", seed=7, logfile=None).run()
    DiffusionRelax(b, model=tiny_model, policy="itp:eta=1", seed=7, logfile=None).run()
    np.testing.assert_array_equal(a.positions, b.positions)
    c = start.copy()
    DiffusionRelax(c, model=tiny_model, policy="itp:eta=1", seed=8, logfile=None).run()
    assert np.abs(c.positions - a.positions).max() > 1e-6  # the seed matters (eta = 1)
    # batch adapter, same seed for this molecule (seed + index), other molecules in the batch
    res = relax_many([noisy("CH4"), start.copy(), noisy("H2O")], model=tiny_model, policy="itp:eta=1", seed=6,
                     progress=False, batch_size=2)
    np.testing.assert_allclose(res[1].atoms.positions, a.positions, atol=2e-4)


def test_rotation_and_translation_of_input_carry_to_output(tiny_model):
    start = noisy(seed=4)
    R = Rotation.random(random_state=2).as_matrix()
    moved = start.copy()
    moved.positions = start.positions @ R.T + np.array([5.0, -2.0, 1.0])
    a, b = start.copy(), moved.copy()
    kw = dict(model=tiny_model, policy="itp:eta=0+stride=0.2", logfile=None)
    DiffusionRelax(a, **kw).run()
    DiffusionRelax(b, **kw).run()
    np.testing.assert_allclose(b.positions, a.positions @ R.T + np.array([5.0, -2.0, 1.0]), atol=2e-4)


def test_fixed_atoms_do_not_move(tiny_model):
    atoms = noisy(seed=5)
    atoms.set_constraint(FixAtoms(indices=[0, 3]))
    before = atoms.positions.copy()
    DiffusionRelax(atoms, model=tiny_model, policy="fixed:t0=30", seed=0, logfile=None).run()
    np.testing.assert_allclose(atoms.positions[[0, 3]], before[[0, 3]], atol=1e-12)
    assert np.abs(atoms.positions - before).max() > 1e-3  # the others did move
    res = relax_many([atoms], model=tiny_model, policy="fixed:t0=30", progress=False)
    np.testing.assert_allclose(res[0].atoms.positions[[0, 3]], atoms.positions[[0, 3]], atol=1e-12)


def test_topology_guard(tiny_model):
    atoms = molecule("CH3CH2OH")
    # stretch the C-O bond far beyond a bond: whatever the model does, the graph differs from the input
    o = [i for i, s in enumerate(atoms.get_chemical_symbols()) if s == "O"][0]
    atoms_far = atoms.copy()
    atoms_far.positions[o] += 0.9 * (atoms.positions[o] - atoms.positions[0]) / np.linalg.norm(
        atoms.positions[o] - atoms.positions[0])
    from ase_diffrelax.chem.topology import topology_change

    change = topology_change(atoms.numbers, atoms.positions, atoms_far.positions)
    assert change["changed"] and change["broken"]
    # an optimizer whose result differs in topology from its input: simulate by starting from the
    # stretched structure and restoring bonds (the tiny model pulls toward equilibrium, or not);
    # force the situation deterministically with a custom input comparison
    a = atoms.copy()
    opt = DiffusionRelax(a, model=tiny_model, policy="fixed:t0=5", logfile=None, on_topology_change="raise")
    opt.input_positions = atoms_far.positions.copy()  # pretend the input had the broken bond
    from ase_diffrelax import TopologyChangedError

    with pytest.raises(TopologyChangedError):
        opt.run()
    np.testing.assert_allclose(a.positions, atoms_far.positions)  # input restored
    b = atoms.copy()
    opt = DiffusionRelax(b, model=tiny_model, policy="fixed:t0=5", logfile=None, on_topology_change="revert")
    opt.input_positions = atoms_far.positions.copy()
    with pytest.warns(UserWarning, match="bond graph"):
        opt.run()
    assert b.info["diffusion_topology_changed"] and b.info["diffusion_reverted"]


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: Atoms("CSi", positions=[[0, 0, 0], [1.8, 0, 0]]), "Si unknown"),
        (lambda: Atoms("CH4", positions=molecule("CH4").positions, cell=[10, 10, 10], pbc=True), "periodic"),
        (lambda: Atoms("CO", positions=[[0, 0, 0], [np.nan, 0, 0]]), "NaN"),
        (lambda: Atoms("CO", positions=[[0, 0, 0], [0.1, 0, 0]]), "overlap"),
        (lambda: Atoms("C", positions=[[0, 0, 0]]), "at least 2 atoms"),
        (lambda: Atoms("H2", positions=[[0, 0, 0], [0.74, 0, 0]]), "fewer than the smallest training molecule"),
        (lambda: Atoms("CH4O", positions=np.vstack([molecule("CH4").positions, [[9.0, 0, 0]]])), "no neighbour"),
        (lambda: Atoms("OH2", positions=molecule("H2O").positions, info={"charge": 1}), "charge \\+1"),
        (lambda: Atoms("CH3", positions=molecule("CH4").positions[:4]), "unpaired electron"),
    ],
)
def test_bad_input_clear_errors_and_input_untouched(tiny_model, make, message):
    atoms = make()
    before = atoms.positions.copy()
    with pytest.raises(InputError, match=message):
        DiffusionRelax(atoms, model=tiny_model, logfile=None)
    with pytest.raises(InputError, match=message):
        relax_many([molecule("CH4"), atoms], model=tiny_model, progress=False)
    np.testing.assert_array_equal(atoms.positions, before)


def test_empty_batch_and_large_molecule_warning(tiny_model):
    with pytest.raises(InputError, match="empty batch"):
        relax_many([], model=tiny_model)
    big = Atoms("C60", positions=np.c_[np.arange(60) * 1.5, np.zeros(60), np.zeros(60)])  # a carbon wire
    with pytest.warns(UserWarning, match="far more than the largest training molecule"):
        relax_many([big], model=tiny_model, policy="fixed:t0=2", progress=False)


@pytest.mark.parametrize("smiles", ["CC(=O)NC", "OCC(N)C=O", "c1ccncc1"])
def test_bfgs_lbfgs_fire_converge_on_the_calculator_near_diffusionrelax(smiles):
    """The shipped checkpoint's pseudo-forces vanish where the denoiser is done (issue: BFGS never converged).
    The calculator is the bare network: compared with DiffusionRelax without its card's finish on all
    atoms, and with the finish (smoothed passes move flat methyl rotations a little) on heavy atoms."""
    from ase.optimize import LBFGS

    from ase_diffrelax import atoms_from_smiles

    start = atoms_from_smiles(smiles)
    bare, dr = start.copy(), start.copy()
    DiffusionRelax(bare, policy="jt:smooth_steps=0+hold_steps=0+polish_steps=0", logfile=None).run()
    DiffusionRelax(dr, logfile=None).run()
    heavy = start.numbers > 1
    for opt_cls in (BFGS, LBFGS, FIRE):
        atoms = start.copy()
        atoms.calc = DiffusionCalculator()
        assert opt_cls(atoms, logfile=None).run(fmax=0.05, steps=200), opt_cls.__name__
        assert np.sqrt((atoms.get_forces() ** 2).sum(1)).max() < 0.05
        assert kabsch_rmsd(atoms.positions, bare.positions) < 0.1  # lands near the bare denoiser's result
        assert kabsch_rmsd(atoms.positions[heavy], dr.positions[heavy]) < 0.05
        assert atoms.calc.results["diffusion_t"] >= 0


def test_calculator_documents_itself_and_zero_net_force(tiny_model):
    assert "NOT physical" in DiffusionCalculator.__doc__ and "fmax" in DiffusionCalculator.__doc__
    atoms = noisy(seed=9)
    atoms.calc = DiffusionCalculator(model=tiny_model)
    f = atoms.get_forces()
    assert f.shape == (len(atoms), 3) and np.isfinite(atoms.get_potential_energy())
    assert abs(f.sum(0)).max() < 1e-4
    with pytest.raises(ValueError, match="mode"):
        DiffusionCalculator(model=tiny_model, mode="nonsense")


def test_score_mode_force_and_energy_describe_the_same_eps(tiny_model):
    """In score mode the documented pseudo-energy and pseudo-force agree on eps."""
    calc = DiffusionCalculator(model=tiny_model, mode="score", t=20)
    atoms = molecule("H2O")
    atoms.calc = calc
    atoms.get_forces()
    from ase.units import kB

    kT = kB * 300
    sigma = tiny_model.schedule.sigma[20]
    eps = -atoms.get_forces() * sigma / kT
    assert abs(0.5 * kT * (eps**2).sum() - atoms.get_potential_energy()) < 1e-8
    assert calc.results["diffusion_t_used"] == 20


def test_relax_many_mixed_sizes_and_untouched_inputs(tiny_model):
    mols = [noisy("CH4"), noisy("CH3CH2OH"), noisy("H2O"), noisy("CH3COOH")]
    copies = [m.positions.copy() for m in mols]
    res = relax_many(mols, model=tiny_model, policy="itp", batch_size=2, progress=False)
    for m, c, r in zip(mols, copies, res):
        np.testing.assert_array_equal(m.positions, c)
        assert len(r.atoms) == len(m) and r.atoms is not m
        assert r.status == "converged" and "diffusion_t" in r.atoms.info


def test_cli_relax_batch_with_trajectories(tiny_model, tmp_path):
    from ase.io import write

    from ase_diffrelax.cli import main

    frames = [noisy("CH4", seed=1), noisy("CH3CH2OH", seed=2), noisy("H2O", seed=3)]
    write(tmp_path / "in.xyz", frames)
    rc = main(["relax", str(tmp_path / "in.xyz"), "-o", str(tmp_path / "out.extxyz"), "--model", str(tiny_model.path),
               "--policy", "fixed", "--t0", "8", "--stride", "0", "--traj", str(tmp_path / "r.traj"), "--quiet"])
    assert rc == 0
    out = read(tmp_path / "out.extxyz", ":")
    assert [len(a) for a in out] == [5, 9, 3]
    for k, a in enumerate(frames):
        traj = read(tmp_path / f"r_{k}.traj", ":")
        assert len(traj) == 9  # input + 8 steps
        assert traj[-1].info["diffusion_t"] >= 0
        np.testing.assert_allclose(traj[0].positions, a.positions, atol=1e-6)
        np.testing.assert_allclose(traj[-1].positions, out[k].positions, atol=1e-6)


@pytest.mark.parametrize("policy", ["itp:eta=1", "jt:hold_t=30+hold_steps=3+polish_steps=2",
                                    "jt:hold_t=30+hold_steps=2+smooth_t=10+smooth_steps=2+smooth_copies=3+polish_steps=2"])
def test_restart_file_continues_the_same_path(tiny_model, tmp_path, policy):
    """Stopped after a few steps (for the finish: two evaluations before the end, inside it) and
    resumed from the restart file, the run ends where an uninterrupted one does."""
    start = noisy(seed=11, sigma=0.05 if policy.startswith("itp") else 0.3)
    full = start.copy()
    whole = DiffusionRelax(full, model=tiny_model, policy=policy, seed=5, logfile=None)
    whole.run()
    stop = 3 if policy.startswith("itp") else whole.nsteps - 2
    part = start.copy()
    opt = DiffusionRelax(part, model=tiny_model, policy=policy, seed=5, logfile=None,
                         restart=str(tmp_path / "r.json"))
    opt.run(steps=stop)
    assert opt.nsteps == stop
    if "hold" in policy:
        assert int(opt.batch.finish_pass[0]) >= 0  # stopped inside the finish
    resumed = part.copy()
    opt2 = DiffusionRelax(resumed, model=tiny_model, policy=policy, seed=5, logfile=None,
                          restart=str(tmp_path / "r.json"))
    assert opt2.nsteps == stop
    assert opt2.run()
    np.testing.assert_allclose(resumed.positions, full.positions, atol=1e-5)


def test_diverging_step_never_returns_nan(tiny_model, monkeypatch):
    """A numerically exploding step stops the molecule with its last finite positions."""
    from ase_diffrelax.core.schedule import NoiseSchedule

    real_step = NoiseSchedule.step

    def exploding(self, x_t, t, t_next, eps, eta, noise=None):
        out = real_step(self, x_t, t, t_next, eps, eta, noise)
        return out * float("nan") if int(t.max()) < 15 else out

    monkeypatch.setattr(NoiseSchedule, "step", exploding)
    start = noisy(seed=2)
    res = relax_many([start], model=tiny_model, policy="fixed:t0=30+stride=0", progress=False)
    assert res[0].status == "diverged"
    assert np.all(np.isfinite(res[0].atoms.positions))
    # finite but exploding (x300 per step, as x0 predictions at t ~ 1000 do): caught before it grows
    monkeypatch.setattr(NoiseSchedule, "step", lambda self, x_t, *a, **k: real_step(self, x_t, *a, **k) * 300.0)
    res = relax_many([start], model=tiny_model, policy="fixed:t0=30+stride=0", progress=False)
    assert res[0].status == "diverged"
    assert np.abs(res[0].atoms.positions - start.positions).max() < 5.0


def test_diverged_relaxation_leaves_the_input_untouched_and_says_why(tiny_model, monkeypatch):
    from ase_diffrelax.core.schedule import NoiseSchedule

    real_step = NoiseSchedule.step
    monkeypatch.setattr(NoiseSchedule, "step", lambda self, x_t, *a, **k: real_step(self, x_t, *a, **k) * 300.0)
    atoms = noisy(seed=6)
    before = atoms.positions.copy()
    opt = DiffusionRelax(atoms, model=tiny_model, policy="fixed:t0=30+stride=0", logfile=None)
    with pytest.warns(UserWarning, match="diverged.*input positions kept"):
        assert opt.run() is False
    np.testing.assert_array_equal(atoms.positions, before)
    assert atoms.info["diffusion_status"] == "diverged"
    assert opt.nsteps < 30  # ASE's loop ended at the divergence, not at the step budget


def test_relax_many_skip_returns_rejected_entries_in_place(tiny_model):
    bad = Atoms("CSi", positions=[[0, 0, 0], [1.8, 0, 0], ][:2])
    res = relax_many([noisy("CH4"), bad, noisy("H2O")], model=tiny_model, policy="itp", progress=False,
                     on_error="skip")
    assert [r.status for r in res] == ["converged", "rejected", "converged"]
    assert "Si unknown" in res[1].reason
    np.testing.assert_array_equal(res[1].atoms.positions, bad.positions)
    assert res[2].atoms.get_chemical_formula() == "H2O"
