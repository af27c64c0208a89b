"""Fuzzing the adapters: whatever a user passes, the result is a clear error or a documented status,
coordinates are finite, and the input is untouched when the relaxation fails."""
import warnings

import numpy as np
import pytest
from ase import Atoms
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ase_diffrelax import DiffusionRelax, InputError, relax_many

from conftest import small_molecules

STATUSES = {"converged", "bonds_broken", "max_steps", "diverged"}
MOLECULES = small_molecules()


def distort(kind: str, base: Atoms, rng: np.random.Generator, scale: float) -> Atoms:
    a = base.copy()
    x = a.positions - a.positions.mean(0)
    if kind == "noise":
        a.positions = x + rng.normal(0, scale, x.shape)
    elif kind == "compressed":
        a.positions = x * (0.2 + 0.8 * scale)
    elif kind == "exploded":
        a.positions = x * (1.5 + 20 * scale)
    elif kind == "fragment":
        a.positions = x.copy()
        a.positions[: len(a) // 2] += rng.normal(0, 1, 3) * (3 + 30 * scale)
    elif kind == "random":
        a.positions = rng.uniform(-1, 1, x.shape) * (1 + 5 * scale)
    elif kind == "nan":
        a.positions = x.copy()
        a.positions[rng.integers(len(a)), rng.integers(3)] = np.nan
    return a


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(kind=st.sampled_from(["noise", "compressed", "exploded", "fragment", "random", "nan"]),
       mol=st.integers(0, len(MOLECULES) - 1), scale=st.floats(0.0, 1.0), seed=st.integers(0, 2**16))
def test_fuzzed_inputs_end_in_clear_errors_or_documented_statuses(tiny_model, kind, mol, scale, seed):
    atoms = distort(kind, MOLECULES[mol], np.random.default_rng(seed), scale)
    before = atoms.positions.copy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            opt = DiffusionRelax(atoms, model=tiny_model, policy="jt:max_steps=40", logfile=None)
        except InputError as exc:
            assert str(exc).startswith("input: ") and len(str(exc)) > 20
            np.testing.assert_array_equal(atoms.positions, before)
            return
        converged = opt.run()
    status = atoms.info["diffusion_status"]
    assert status in STATUSES and converged == (status in ("converged", "bonds_broken"))
    assert np.all(np.isfinite(atoms.positions))
    if status == "diverged":
        np.testing.assert_array_equal(atoms.positions, before)
    # the batch adapter agrees on the status, and skips instead of raising when asked
    res = relax_many([atoms_copy_with(before, atoms)], model=tiny_model, policy="jt:max_steps=40",
                     progress=False, on_error="skip")
    assert res[0].status == status


def atoms_copy_with(positions, atoms):
    a = atoms.copy()
    a.positions = positions
    return a


@pytest.mark.parametrize("factor", [10.0])
def test_benzene_scaled_up_is_refused_before_torch(tiny_model, factor):
    from ase.build import molecule

    a = molecule("C6H6")
    a.positions *= factor
    before = a.positions.copy()
    with pytest.raises(InputError, match="no neighbour within bonding distance"):
        DiffusionRelax(a, model=tiny_model, logfile=None)
    np.testing.assert_array_equal(a.positions, before)
