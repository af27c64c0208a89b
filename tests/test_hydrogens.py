"""The X-H guard: hydrogens the denoiser pulled toward a rotation axis go back to a sane length."""
import numpy as np
import torch
from ase.build import molecule

from ase_diffrelax import relax_many
from ase_diffrelax.chem.hydrogens import XH_RANGE, restore_hydrogen_lengths, xh_range
from ase_diffrelax.chem.topology import bond_graph
from ase_diffrelax.core.sampler import CONVERGED, Molecule, Sampler

from conftest import small_molecules


def pulled_in_ethane(length=1.0):
    """Ethane with the hydrogens of one methyl pulled toward the C-C axis until C-H = ``length``."""
    a = molecule("C2H6")
    c0, c1 = a.positions[0], a.positions[1]
    axis = (c1 - c0) / np.linalg.norm(c1 - c0)
    after = a.positions.copy()
    hs = [h for h in range(2, 8) if np.linalg.norm(a.positions[h] - c0) < 1.2]
    for h in hs:
        v = after[h] - c0
        along, perp = (v @ axis) * axis, v - (v @ axis) * axis
        # shrink the perpendicular part (the average over rotamers) until the bond is ``length``
        s = np.sqrt(max(length**2 - (along @ along), 0.0) / (perp @ perp))
        after[h] = c0 + along + s * perp
    return a, after, hs


def xh_lengths(numbers, positions, reference):
    """(heavy atom, X-H length in ``positions``) for the X-H bonds of ``reference``."""
    z = np.asarray(numbers)
    out = []
    for i, j in bond_graph(z, reference):
        if (z[i] == 1) != (z[j] == 1):
            h, x = (i, j) if z[i] == 1 else (j, i)
            out.append((int(x), float(np.linalg.norm(positions[h] - positions[x]))))
    return out


def test_pulled_in_methyl_hydrogens_go_back_to_their_input_length_along_the_new_direction():
    a, after, hs = pulled_in_ethane(1.0)
    fixed, n = restore_hydrogen_lengths(a.numbers, a.positions, after)
    assert n == 3
    for h in hs:
        assert abs(np.linalg.norm(fixed[h] - fixed[0]) - np.linalg.norm(a.positions[h] - a.positions[0])) < 1e-9
        u, w = fixed[h] - fixed[0], after[h] - after[0]
        assert np.dot(u, w) / np.linalg.norm(u) / np.linalg.norm(w) > 1 - 1e-12  # same direction
    others = [i for i in range(len(a)) if i not in hs]
    np.testing.assert_array_equal(fixed[others], after[others])  # heavy atoms and the other methyl untouched


def test_bonds_in_range_are_left_exactly_as_the_model_gave_them():
    a = molecule("CH3CH2OH")
    rng = np.random.default_rng(0)
    after = a.positions + rng.normal(scale=0.005, size=a.positions.shape)
    fixed, n = restore_hydrogen_lengths(a.numbers, a.positions, after)
    assert n == 0
    np.testing.assert_array_equal(fixed, after)


def test_a_held_hydrogen_is_not_moved_and_a_bad_input_length_is_clipped_into_range():
    a, after, hs = pulled_in_ethane(1.0)
    movable = np.ones(len(a), bool)
    movable[hs[0]] = False
    fixed, n = restore_hydrogen_lengths(a.numbers, a.positions, after, movable=movable)
    assert n == 2
    np.testing.assert_array_equal(fixed[hs[0]], after[hs[0]])

    before = a.positions.copy()  # an input whose C-H bonds are stretched to 1.3 A
    for h in hs:
        before[h] = before[0] + (before[h] - before[0]) / np.linalg.norm(before[h] - before[0]) * 1.3
    fixed, n = restore_hydrogen_lengths(a.numbers, before, after)
    assert n == 3
    for h in hs:
        assert abs(np.linalg.norm(fixed[h] - fixed[0]) - XH_RANGE[6][1]) < 1e-9


def test_the_sampler_guards_finished_molecules_only_and_can_be_told_not_to(tiny_model):
    a, after, hs = pulled_in_ethane(1.0)
    for restore in (True, False):
        sampler = Sampler(tiny_model, "jt", restore_hydrogens=restore)
        b = sampler.batch([Molecule(a.numbers, a.positions)])
        b.x_out = torch.as_tensor(after - a.positions.mean(0), dtype=b.x_out.dtype)
        running = b.outcome(0)  # an unfinished estimate (a trajectory frame) is the model's own
        assert running.hydrogens_restored == 0
        np.testing.assert_allclose(running.positions, after, atol=1e-5)
        b.status[0] = CONVERGED
        done = b.outcome(0)
        lengths = [np.linalg.norm(done.positions[h] - done.positions[0]) for h in hs]
        if restore:
            assert done.hydrogens_restored == 3
            assert min(lengths) > 1.08
        else:
            assert done.hydrogens_restored == 0
            assert max(lengths) < 1.01


def test_relax_many_ends_with_every_xh_bond_in_range_and_reports_what_it_restored(tiny_model):
    mols = [m for m in small_molecules() if 1 in m.numbers and len(m) > 2][:8]
    guarded = relax_many(mols, model=tiny_model, progress=False, seed=0)
    raw = relax_many(mols, model=tiny_model, progress=False, seed=0, restore_hydrogens=False)
    for m, g, r in zip(mols, guarded, raw):
        assert r.atoms.info["diffusion_hydrogens_restored"] == 0
        assert g.atoms.info["diffusion_hydrogens_restored"] >= 0
        for x, length in xh_lengths(m.numbers, g.atoms.positions, m.positions):
            if m.numbers[x] in XH_RANGE:
                lo, hi = xh_range(m.numbers, m.positions, x)
                assert lo - 1e-6 <= length <= hi + 1e-6
        heavy = m.numbers > 1
        np.testing.assert_allclose(g.atoms.positions[heavy], r.atoms.positions[heavy], atol=1e-6)
        moved = np.linalg.norm(g.atoms.positions - r.atoms.positions, axis=1) > 1e-6
        assert moved.sum() == g.atoms.info["diffusion_hydrogens_restored"]


def test_an_alkyne_ch_keeps_its_short_bond_and_a_methyl_ch_that_short_is_restored():
    """xTB puts a terminal alkyne's C-H at 1.05 A: in range for an sp carbon, not for an sp3 one."""
    from ase_diffrelax.chem.rdkit_interop import atoms_from_smiles

    a = atoms_from_smiles("C#CC")
    z = a.numbers
    after = a.positions.copy()
    for h in np.nonzero(z == 1)[0]:
        x = int(np.argmin(np.where(z > 1, np.linalg.norm(a.positions - a.positions[h], axis=1), np.inf)))
        v = after[h] - after[x]
        after[h] = after[x] + v / np.linalg.norm(v) * 1.05
    fixed, n = restore_hydrogen_lengths(z, a.positions, after)
    assert n == 3  # the three methyl hydrogens, not the alkyne one
    sp_h = [h for h in np.nonzero(z == 1)[0] if np.linalg.norm(a.positions[h] - a.positions[0]) < 1.2]
    np.testing.assert_array_equal(fixed[sp_h], after[sp_h])
