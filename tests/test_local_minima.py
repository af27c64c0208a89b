"""Local-minimum targets: built from the MMFF94 start with rotatable torsions held, used by training."""
import json

import numpy as np
import pytest

pytest.importorskip("tblite")


@pytest.fixture(scope="module")
def dataset(xtb_dataset):
    return xtb_dataset


def test_local_minima_lie_between_the_minimum_and_the_mmff_start_and_resume(dataset, tmp_path):
    from ase_diffrelax.chem.internals import internal_coordinates
    from ase_diffrelax.training.local_minima import assemble, build, load_local_minima
    from ase_diffrelax.training.xtb_dataset import read_dataset

    records = {a.info["id"]: a for a in read_dataset(dataset, "train")}
    logs = []
    assert build(dataset, tmp_path, chunk_size=2, max_chunks=1, log=logs.append) == 1
    assert build(dataset, tmp_path, chunk_size=2, log=logs.append) == 1  # only the chunk not on disk
    assert build(dataset, tmp_path, chunk_size=2, log=logs.append) == 0
    summary = assemble(dataset, tmp_path)
    assert summary["molecules"] + summary["failed"] == summary["of"] == len(records)
    local = load_local_minima(tmp_path / "local_minima.npz")
    assert local and set(local) <= set(records)
    from benchmarks.start_quality import single_point

    for mid, x in local.items():
        a = records[mid]
        e = single_point(a.numbers, x, a.info["charge"])
        assert a.info["energy_xtb"] - 1e-3 <= e <= a.info["energy_xtb_at_mmff"]  # eV: relaxed, not below the minimum
        for t in internal_coordinates(a.numbers, a.positions)[3]:  # the held torsions are MMFF94's
            start = a.copy()
            start.positions = a.arrays["positions_mmff"]
            end = a.copy()
            end.positions = x
            assert abs((end.get_dihedral(*t) - start.get_dihedral(*t) + 180) % 360 - 180) < 0.5


def test_training_builds_mmff_inputs_on_the_local_minima(dataset, tmp_path):
    from ase_diffrelax.chem.rmsd import kabsch_rmsd
    from ase_diffrelax.cli import main
    from ase_diffrelax.training.local_minima import assemble, build, load_local_minima
    from ase_diffrelax.training.noising import TrainingData
    from ase_diffrelax.training.xtb_dataset import load_xtb_dataset

    build(dataset, tmp_path / "lm", chunk_size=2, max_chunks=1, log=lambda m: None)  # 2 of 4 molecules
    assemble(dataset, tmp_path / "lm")
    local = load_local_minima(tmp_path / "lm" / "local_minima.npz")
    ref, mm = load_xtb_dataset(dataset, "train"), load_xtb_dataset(dataset, "train", geometry="mmff")
    plain, data = TrainingData(ref, mm.positions), TrainingData(ref, mm.positions, local_minima=local)
    with_local = np.array([int(i) in local for i in ref.ids])
    assert plain.has_mmff.all() and np.array_equal(data.has_mmff, with_local)  # MMFF inputs only where a base exists
    ids, o = np.arange(len(ref)), ref.offsets
    _, x0, disp, mol = data.gather(ids, data.draw_local(ids, with_local, np.random.default_rng(0)))
    _, x0_plain, _, _ = data.gather(ids, np.zeros(len(ids), bool))
    for m in ids:
        rows = (mol == m).numpy()
        if with_local[m]:
            expect = local[int(ref.ids[m])] - local[int(ref.ids[m])].mean(0)
            np.testing.assert_allclose(x0[rows].numpy(), expect, atol=1e-5)
            moved = x0[rows].numpy() + disp[rows].numpy()  # base + displacement = the MMFF94 start, aligned
            assert kabsch_rmsd(moved, mm.positions[o[m]:o[m + 1]]) < 1e-4
        else:
            np.testing.assert_allclose(x0[rows].numpy(), x0_plain[rows].numpy())
    # a fraction below 1: every molecule keeps its global MMFF94 inputs, and each input draws its base
    mixed = TrainingData(ref, mm.positions, local_minima=local, local_fraction=0.5)
    assert mixed.has_mmff.all()
    rng = np.random.default_rng(0)
    many = np.tile(ids, 200)
    drawn = mixed.draw_local(many, np.ones(len(many), bool), rng)
    assert not drawn[~with_local[many]].any() and 0.4 < drawn[with_local[many]].mean() < 0.6
    _, x0_mixed, disp_mixed, mol_mixed = mixed.gather(many[:len(ids) * 2], drawn[:len(ids) * 2])
    for k, m in enumerate(many[:len(ids) * 2]):
        rows = (mol_mixed == k).numpy()
        base = x0[(mol == m).numpy()] if drawn[k] else x0_plain[(mol == m).numpy()]
        np.testing.assert_allclose(x0_mixed[rows].numpy(), base.numpy(), atol=1e-5)
        assert kabsch_rmsd(x0_mixed[rows].numpy() + disp_mixed[rows].numpy(), mm.positions[o[m]:o[m + 1]]) < 1e-4
    rc = main(["train", "--data", str(dataset), "--out", str(tmp_path / "run"), "--steps", "2", "--batch-size", "4",
               "--features", "16", "--blocks", "1", "--val-every", "2", "--val-molecules", "1", "--no-progress",
               "--threads", "1", "--mmff-fraction", "0.5", "--local-minima", str(tmp_path / "lm" / "local_minima.npz"),
               "--local-fraction", "0.5"])
    assert rc == 0
    assert json.loads((tmp_path / "run" / "last.json").read_text())["training"]["data"].endswith("fraction 0.5 of them)")
    from ase_diffrelax import load_model

    assert "local minima" in load_model(tmp_path / "run" / "best").card["training"]["data"]
    assert main(["train", "--out", str(tmp_path / "run2"), "--steps", "2", "--no-progress",
                 "--local-minima", str(tmp_path / "lm" / "local_minima.npz")]) != 0  # QM9 has no local minima
