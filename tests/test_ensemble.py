"""Ensembles from repeated diffusion steps: shape, determinism, no drift, trajectories, the t/T knob."""
import numpy as np
import pytest
from ase.build import molecule
from ase.io import read

from ase_diffrelax import sample_ensemble
from ase_diffrelax.adapters.ensemble import ensemble_positions, t_for_temperature


def test_shape_determinism_and_no_drift_of_the_centre(tiny_model, tmp_path):
    atoms = molecule("CH3CH2OH")
    before = atoms.positions.copy()
    s1 = sample_ensemble(atoms, t=30, n_samples=40, burn_in=5, n_chains=4, seed=3, model=tiny_model,
                         trajectory=str(tmp_path / "ens.traj"))
    s2 = sample_ensemble(atoms, t=30, n_samples=40, burn_in=5, n_chains=4, seed=3, model=tiny_model)
    s3 = sample_ensemble(atoms, t=30, n_samples=40, burn_in=5, n_chains=4, seed=4, model=tiny_model)
    np.testing.assert_array_equal(atoms.positions, before)
    x1, x2, x3 = ensemble_positions(s1), ensemble_positions(s2), ensemble_positions(s3)
    assert x1.shape == (40, len(atoms), 3)
    np.testing.assert_array_equal(x1, x2)  # deterministic for a seed
    assert np.abs(x1 - x3).max() > 1e-3  # the seed matters
    np.testing.assert_allclose(x1.mean(1), np.broadcast_to(before.mean(0), (40, 3)), atol=1e-5)  # centre kept
    assert len({s.info["chain"] for s in s1}) == 4 and all(s.info["diffusion_t"] == 30 for s in s1)
    assert np.all(np.isfinite(x1)) and np.std(x1, axis=0).mean() > 1e-3  # the chains move
    frames = read(tmp_path / "ens.traj", ":")
    assert len(frames) == 40 and frames[-1].info["diffusion_t"] == 30
    np.testing.assert_allclose(frames[7].positions, x1[7], atol=1e-6)


def test_spread_grows_with_t(tiny_model):
    atoms = molecule("CH3CH2OH")
    spread = []
    for t in (5, 60):
        x = ensemble_positions(sample_ensemble(atoms, t=t, n_samples=60, burn_in=10, n_chains=6, model=tiny_model))
        spread.append(np.sqrt(((x - x.mean(0)) ** 2).sum(-1).mean()))
    assert spread[1] > spread[0]


def test_exactly_one_of_t_or_temperature(tiny_model):
    atoms = molecule("CH3OH")
    with pytest.raises(ValueError, match="exactly one"):
        sample_ensemble(atoms, model=tiny_model)
    with pytest.raises(ValueError, match="exactly one"):
        sample_ensemble(atoms, t=10, temperature=300, model=tiny_model)
    with pytest.raises(ValueError, match="no fitted temperature map"):
        sample_ensemble(atoms, temperature=300, model=tiny_model)


def test_temperature_goes_through_the_cards_map(tiny_model):
    from ase_diffrelax.core.checkpoint import LoadedModel

    card = {**tiny_model.card, "temperature_map": {"form": "t = a * sqrt(T)", "a": 2.0}}
    m = LoadedModel(tiny_model.net, tiny_model.schedule, card, tiny_model.path)
    assert t_for_temperature(m, 100.0) == 20
    s = sample_ensemble(molecule("CH3OH"), temperature=100.0, n_samples=3, burn_in=0, model=m)
    assert all(f.info["diffusion_t"] == 20 and f.info["temperature_knob"] == 100.0 for f in s)


def test_a_temperature_without_a_model_takes_a_checkpoint_that_has_a_map():
    from ase_diffrelax.adapters.ensemble import with_temperature_map
    from ase_diffrelax.core.checkpoint import choose_model

    ethanol = molecule("CH3CH2OH")
    s = sample_ensemble(ethanol, temperature=100.0, n_samples=2, burn_in=0)
    assert s[0].info["diffusion_model"] in with_temperature_map()
    by_t = sample_ensemble(ethanol, t=5, n_samples=1, burn_in=0)  # a step needs no map: the automatic choice
    assert by_t[0].info["diffusion_model"] == choose_model([ethanol])
