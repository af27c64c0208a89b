"""The hand-off benchmark's cache: a second run recomputes nothing and reproduces the table."""
from pathlib import Path

import numpy as np
import pytest
from ase.build import molecule

from ase_diffrelax.files import read_jsonl

pytest.importorskip("tblite")
handoff = pytest.importorskip("benchmarks.handoff")  # tests run from the repository root


@pytest.fixture
def tiny_set(monkeypatch):

    from ase_diffrelax.training.data import MoleculeSet

    mols = []
    for name, smi, qid in [("CH3CH2OH", "CCO", 10), ("CH3OH", "CO", 20), ("CH3CHO", "CC=O", 30)]:
        a = molecule(name)
        a.info.update(qm9_index=qid, smiles=smi)
        mols.append(a)
    ms = MoleculeSet.from_atoms_list(mols)
    monkeypatch.setattr(handoff, "select_qm9_molecules", lambda n, max_heavy, seed: (ms, list(range(len(ms)))))
    return ms


def test_handoff_cache_resume_reproduces_without_recomputing(tiny_set, tiny_model, tmp_path, monkeypatch):
    argv = ["--level", "xtb", "--n", "2", "--starts", "mmff,diffusion,reference", "--model", str(tiny_model.path),
            "--cache", str(tmp_path / "cache"), "--out", str(tmp_path / "h.json")]
    first = handoff.main(argv)
    assert first["summary"]["n_complete"] == 2
    cache = tmp_path / "cache" / "stereo_xtb.jsonl"
    assert len(read_jsonl(cache)) == 6
    content = cache.read_bytes()

    def boom(*a, **k):
        raise AssertionError("recomputed a cached relaxation")

    monkeypatch.setattr("ase_diffrelax.workflows.pipeline.physics_stage", boom)
    second = handoff.main(argv)
    assert cache.read_bytes() == content  # nothing appended
    assert second["table"] == first["table"]
    s = second["summary"]["starts"]
    assert s["diffusion"]["step_ratio_vs_mmff_median"] > 0
    assert len(second["plots"]) == 2 and all(Path(p).exists() for p in second["plots"])
    # a run killed while writing leaves a torn last line: it is ignored and that relaxation redone
    lines = content.decode().splitlines(keepends=True)
    cache.write_text("".join(lines[:-1]) + lines[-1][: len(lines[-1]) // 2])
    monkeypatch.undo()
    monkeypatch.setattr(handoff, "select_qm9_molecules", lambda n, max_heavy, seed: (tiny_set, [0, 1, 2]))
    third = handoff.main(argv)
    assert len(read_jsonl(cache)) == 6
    steps = lambda r: [(t["qm9_index"], {k: v["steps"] for k, v in t.items() if isinstance(v, dict)}) for t in r["table"]]
    assert steps(third) == steps(first)  # same relaxations (only wall times differ when recomputed)


def test_handoff_split_by_molecule_and_partial_starts(tiny_set, tmp_path):
    """--molecules splits a run over cores; a run without the MMFF start still summarises."""
    argv = ["--level", "xtb", "--n", "2", "--starts", "reference", "--molecules", "20",
            "--cache", str(tmp_path / "cache"), "--out", str(tmp_path / "h.json")]
    r = handoff.main(argv)
    assert [t["qm9_index"] for t in r["table"]] == [20]
    assert [r["key"] for r in read_jsonl(tmp_path / "cache" / "stereo_xtb.jsonl")] == ["20_reference"]
    assert "step_ratio_vs_mmff_median" not in r["summary"]["starts"]["reference"]


def test_mmff_from_a_smiles_ordered_geometry_keeps_the_graph_and_refuses_a_mismatch():
    from ase_diffrelax.chem.rdkit_interop import atoms_from_smiles, mmff_from_smiles_geometry
    from ase_diffrelax.chem.topology import topology_change

    smiles = "CS(=O)(=O)c1ccc(Cl)cc1Br"  # sulfone: xyz bond perception gets its orders wrong
    a = atoms_from_smiles(smiles, seed=1, mmff=False)
    y = mmff_from_smiles_geometry(smiles, a.positions)
    assert y.shape == a.positions.shape and np.all(np.isfinite(y))
    assert not topology_change(a.numbers, a.positions, y)["changed"]
    # the MMFF94 minimum is a fixed point: starting there again barely moves
    assert np.abs(mmff_from_smiles_geometry(smiles, y) - y).max() < 0.05
    with pytest.raises(ValueError, match="atoms"):
        mmff_from_smiles_geometry(smiles, a.positions[:-1])


@pytest.fixture(scope="module")
def tiny_xtb_dataset(tmp_path_factory):
    """A few small molecules through the real builder: 'test' rows for drugs.py, 'val' for calibration."""
    from ase_diffrelax.training.xtb_dataset import BuildProtocol, assemble, build_dataset

    out = tmp_path_factory.mktemp("xtbds")
    smiles = ["CCO", "CCCl", "CCOC(C)=O", "OCC(O)CO", "CCS", "CC"]  # S/Cl out by elements, CC by size
    entries = [(k, s, "test") for k, s in enumerate(smiles)]
    entries += [(100 + k, s, "val") for k, s in enumerate(["CCCO", "CC(C)O", "CC(=O)N", "COC=O"])]
    build_dataset(entries, out, protocol=BuildProtocol(optimizer="tblite-lbfgs", fmax=0.02, accept_fmax=0.03),
                  log=lambda m: None)
    assemble(out)
    return out / "dataset.npz"


def test_drugs_benchmark_selects_by_elements_and_size_and_reports_quality_and_handoff(tiny_model, tiny_xtb_dataset,
                                                                                        tmp_path):
    drugs = pytest.importorskip("benchmarks.drugs")
    rep = drugs.main(["--data", str(tiny_xtb_dataset), "--split", "test_only", "--model",
                      str(tiny_model.path), "--elements", "H,C,N,O,F", "--heavy", "3:9", "--n", "10",
                      "--cache", str(tmp_path / "cache.jsonl"), "--out", str(tmp_path / "d.json")])
    part = rep["parts"]["test"]
    assert part["n"] == 3 and part["skipped"] == 0
    assert sorted(t["n_atoms"] for t in part["table"]) == [9, 14, 14]  # CCO, methyl acetate, glycerol
    assert part["quality"]["n"] == 3
    assert part["handoff"]["steps_median"]["xtb-min"] <= 2  # the xTB minimum is (nearly) converged already
    assert part["handoff"]["bonds_changed"] == {"mmff": 0, "diffusion": 0}
    choice = pytest.importorskip("benchmarks.choice_study")  # per-size comparison of checkpoints
    study = choice.main([str(tmp_path / "d.json"), "--data", str(tiny_xtb_dataset), "--split", "test",
                         "--bins", "1:3,4:9", "--out", str(tmp_path / "c.json")])
    assert [b["n"] for b in study["bins"]] == [1, 2]  # ethanol | methyl acetate, glycerol
    breakdown = pytest.importorskip("benchmarks.drugs_breakdown").main(
        [str(tmp_path / "d.json"), "--data", str(tiny_xtb_dataset), "--out", str(tmp_path / "b.json")])
    assert breakdown["n"] == 3 and breakdown["groups"]["H C N O F only"]["n"] == 3
    assert "with Cl" not in breakdown["groups"]  # chloroethane was filtered out by --elements
    med = study["bins"][1]["models"][part["models"][0]]
    assert med["steps_median"] == float(np.median([t["diffusion"]["steps"] for t in part["table"] if t["n_atoms"] == 14]))


def test_drugs_reference_fill_needs_no_model_and_guards_against_another_datasets_cache(tiny_xtb_dataset, tmp_path):
    import json

    drugs = pytest.importorskip("benchmarks.drugs")
    cache = tmp_path / "cache.jsonl"
    drugs.main(["--data", str(tiny_xtb_dataset), "--split", "test_only", "--n", "3", "--references-only",
                "--model", "no-such-model", "--cache", str(cache), "--out", str(tmp_path / "d.json")])
    assert not (tmp_path / "d.json").exists()  # a cache fill writes no report
    keys = [json.loads(line)["key"] for line in cache.read_text().splitlines()]
    assert sorted(keys) == sorted(f"test_{i}_{s}" for i in range(3) for s in ("mmff", "xtb-min"))  # S/Cl too
    lines = [json.loads(line) for line in cache.read_text().splitlines()]
    lines[0]["smiles"] = "C1CC1"  # as if another dataset had filled this cache under the same key
    cache.write_text("".join(json.dumps(r) + "\n" for r in lines))
    with pytest.raises(ValueError, match="own --cache"):
        drugs.main(["--data", str(tiny_xtb_dataset), "--split", "test_only", "--n", "3", "--references-only",
                    "--cache", str(cache), "--out", str(tmp_path / "d.json")])


def test_time_calibration_on_xtb_energy_writes_the_grid_and_choice_into_the_card(tiny_model, tiny_xtb_dataset,
                                                                                 tmp_path):
    import json
    import shutil

    calibrate = pytest.importorskip("benchmarks.calibrate_time")
    for ext in (".json", ".safetensors"):  # the fixture's checkpoint is shared: calibrate a copy
        shutil.copy(str(tiny_model.path) + ext, tmp_path / f"m{ext}")
    cal = calibrate.main([str(tmp_path / "m.json"), "--data", str(tiny_xtb_dataset), "--objective", "energy",
                          "--n", "4", "--scales", "1,3", "--max-failure-pct", "100"])
    card = json.loads((tmp_path / "m.json").read_text())
    assert card["time_calibration"] == json.loads(json.dumps(cal))
    assert cal["objective"] == "energy" and [g["t_scale"] for g in cal["grid"]] == [1.0, 3.0]
    assert cal["t_scale"] == min(cal["grid"], key=lambda g: g["gap_kcal_median"])["t_scale"]
    assert all(g["gap_kcal_mmff_median"] > 0 for g in cal["grid"])  # MMFF94 minima lie above the xTB minima


def test_handoff_matrix_resumes_from_its_cache_and_ranks_routes(tiny_set, tmp_path, monkeypatch):
    import ase_diffrelax.evaluation as evaluation

    matrix = pytest.importorskip("benchmarks.handoff_matrix")
    monkeypatch.setattr(evaluation, "select_qm9_molecules", lambda n, max_heavy, seed: (tiny_set, [0, 1]))
    argv = ["--set", "qm9", "--level", "xtb", "--n", "2", "--routes", "bfgs,sella,bfgs+xtb",
            "--cache", str(tmp_path / "cache"), "--out", str(tmp_path / "m.json")]
    first = matrix.main(argv)
    cache = tmp_path / "cache" / "handoff_matrix_qm9_xtb.jsonl"
    assert len(read_jsonl(cache)) == 2 * 2 * 3 and first["n_complete"] == 2
    cell = first["cells"]["diffusion/bfgs+xtb"]
    assert cell["hessian_calls_median"] > 0 and cell["calls_incl_hessian_median"] > cell["calls_median"]
    assert first["best_route"] in first["cells"] and not first["best_route_without_diffusion"].startswith("diffusion")
    via = matrix.main(argv[:-2] + ["--out", str(tmp_path / "v.json"), "--starts", "diffusion-xtb", "--routes", "bfgs"])
    cell = via["cells"]["diffusion-xtb/bfgs"]  # an xTB minimum handed to xTB: converged at once or nearly
    assert cell["converged_fraction"] == 1.0 and cell["calls_median"] <= 3

    def boom(*a, **k):
        raise AssertionError("recomputed a cached cell")

    monkeypatch.setattr("ase_diffrelax.workflows.pipeline.physics_stage", boom)
    second = matrix.main(argv)
    assert second["cells"] == first["cells"]
    third = matrix.main(argv + ["--summary-only", "--markdown"])  # the JSON keeps the computing command
    assert third["cells"] == first["cells"] and "--summary-only" not in third["command"]
    one = third["per_molecule"][first_id := next(iter(third["per_molecule"]))]["cells"]
    assert set(one) == set(first["cells"]) and min(c["above_lowest_kcal"] for c in one.values()) == 0.0
    subset = matrix.main(argv + ["--summary-only", "--molecules", str(first_id)])
    assert list(subset["per_molecule"]) == [first_id] and subset["n_complete"] == 1


def test_lindh_model_hessian_is_a_curvature_in_ev_per_a2():
    """The model Hessian tried as a free initial Hessian: symmetric, positive semi-definite, blind to
    rigid motion, and of the size of the true GFN2-xTB curvature along a bond stretch."""
    from ase_diffrelax.workflows.handoff import rigid_modes
    from benchmarks.model_hessian import lindh_hessian

    a = molecule("CH3CH2OH")
    h = lindh_hessian(a)
    assert h.shape == (27, 27) and np.allclose(h, h.T)
    w = np.linalg.eigvalsh(h)
    assert w.min() > -1e-8
    r = rigid_modes(a.positions)
    assert np.abs(h @ r).max() < 1e-6 * np.abs(h).max()
    # O-H stretch, unit displacement (bond length changes by sqrt(2) per A): 2 k, k(O-H) ~ 50 eV/A^2
    o = a.get_chemical_symbols().index("O")
    hyd = min((i for i in range(len(a)) if a.numbers[i] == 1), key=lambda i: a.get_distance(o, i))
    u = np.zeros((9, 3))
    d = (a.positions[hyd] - a.positions[o]) / np.linalg.norm(a.positions[hyd] - a.positions[o])
    u[hyd], u[o] = d / np.sqrt(2), -d / np.sqrt(2)
    assert 30 < u.ravel() @ h @ u.ravel() < 300


def test_vp_start_benchmark_shows_which_time_heads_read_the_shrink():
    """The session 16 finding, on three MOSES val molecules: for a checkpoint trained on MMFF94 inputs
    shrunk as Gaussian noise of their size (``moses-painn128-jt5``), a start scaled by sqrt(alpha_bar_t)
    is called ~t and the unscaled start one low t_hat whatever t is asked. Trained on them unshrunk
    at step 80 (``--mmff-step``, ``moses-painn128-jt6``) the head reads the MMFF94 start itself, higher,
    and no longer the shrink."""
    from benchmarks import vp_start

    med = vp_start.oneshot("moses-painn128-jt5", "val", 3, [100, 300])["median"]
    assert med["t_hat_hat"] < 60
    assert abs(med["t_hat_100_vp"] - 100) < 25 and abs(med["t_hat_300_vp"] - 300) < 50
    assert med["t_hat_100"] == med["t_hat_300"] == med["t_hat_hat"]  # the input, not the asked step, decides
    new = vp_start.oneshot("moses-painn128-jt6", "val", 3, [100, 300])["median"]
    assert new["t_hat_hat"] > med["t_hat_hat"] + 10 and new["t_hat_300_vp"] < 150


def test_sella_calls_relates_calls_to_start_energy_from_the_matrix_cache(tmp_path):
    """Calls that grow with the start's energy give a positive correlation and rising bins; the
    pair comparison counts a checkpoint that starts lower but needs more calls as 'more'."""
    import json

    from ase_diffrelax.evaluation import KCAL_MOL_PER_EV
    from benchmarks.sella_calls import analyse

    rows = []
    for k in range(12):
        mol, e_min = f"test_{k}", -100.0 - k
        for start, model, dE, calls in (("mmff", None, 6.0 + k, 20 + k), ("diffusion", "A", 0.2 + 0.4 * k, 5 + k),
                                        ("diffusion", "B", 0.1 + 0.4 * k, 7 + k + (k % 3))):
            rows.append({"level": "xtb", "route": "sella", "mol": mol, "start": start, "model": model, "n_atoms": 20 + k,
                         "calls": calls, "e_start": e_min + dE / KCAL_MOL_PER_EV, "e_end": e_min, "bonds_changed": False})
    path = tmp_path / "cache.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    report = analyse(("A", "B"), path)
    assert report["molecules"] == 12
    assert report["starts"]["A"]["rho_calls_start_dE"] > 0.99
    assert abs(report["starts"]["A"]["start_dE_median"] - (0.2 + 0.4 * 5.5)) < 1e-6
    medians = [b["calls_median"] for b in report["bins"] if b["n"]]
    assert medians == sorted(medians) and len(medians) >= 4
    assert report["pair"]["fewer"] == 0 and report["pair"]["more"] == 12
    assert report["pair"]["dE_change_median"] < 0


def test_start_quality_pairs_two_methods_per_molecule_from_its_cache(tmp_path):
    """Only molecules of the part with rows of both methods (and MMFF94's) count; other parts and
    molecules missing a row are left out; lower/higher and above-MMFF94 are counted per molecule."""
    import json

    from benchmarks.start_quality import paired

    rows = []
    for k in range(10):
        for part in ("test", "test_scaffolds"):
            mol = f"{part}_{k}"
            rows += [{"key": f"{mol}_mmff", "dE_kcal": 5.0}, {"key": f"{mol}_A_h1", "dE_kcal": 1.0 + k},
                     {"key": f"{mol}_B_h2", "dE_kcal": (0.5 + k) if k < 7 else (6.0 if k == 9 else 2.0 + k)}]
    rows.append({"key": "test_99_B_h2", "dE_kcal": 0.0})  # no A row: not paired
    path = tmp_path / "cache.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    r = paired("test", "A_h1", "B_h2", path)
    assert r["n"] == 10 and (r["lower"], r["higher"]) == (8, 2)
    assert r["paired_median"] == -0.5 and r["above_mmff"] == [5, 5]
    with pytest.raises(ValueError, match="no val molecule"):
        paired("val", "A_h1", "B_h2", path)


def test_memorization_splits_by_the_reference_end_and_pairs_against_it():
    """Molecules the reference ends far from (heavy RMSD > far) form their own group; a model that fits
    only the near ones shows it there, and is counted lower than the reference where it is."""
    from benchmarks.memorization import split_report

    def model(dE, rmsd, ratio):
        return {"ends": [{"id": i, "dE_kcal": e, "rmsd_heavy": r} for i, (e, r) in enumerate(zip(dE, rmsd))],
                "oneshot": [{"id": i, "ratio_hat": q, "ratio_80": q} for i, q in enumerate(ratio)]}

    ref = model([0.5, 0.6, 4.0, 5.0], [0.1, 0.2, 0.9, 1.2], [0.8, 0.8, 0.95, 0.95])
    fit_near = model([0.2, 0.3, 4.0, 5.5], [0.05, 0.1, 0.9, 1.2], [0.4, 0.4, 0.95, 0.95])
    rep = split_report({"ref": ref, "memo": fit_near}, far_rmsd=0.5)
    assert rep["n_far"] == 2 and rep["n_near"] == 2
    memo = rep["models"]["memo"]
    assert memo["near"]["dE_median"] < rep["models"]["ref"]["near"]["dE_median"]
    assert memo["far"]["oneshot_ratio_80"] == rep["models"]["ref"]["far"]["oneshot_ratio_80"] == 0.95
    assert memo["lower_than_reference"] == 2 and "lower_than_reference" not in rep["models"]["ref"]


def test_memorization_start_anatomy_groups_by_the_cap_then_by_the_end():
    from benchmarks.memorization import anatomy_report

    row = lambda rmsd, rot: {"start_rmsd_all": rmsd, "rotatable": 4, "rotatable_max_change": rot,
                             "rotatable_over_30": int(rot > 30), "ring_max_change": 2.0}
    anatomy = {0: row(1.5, 90.0), 1: row(0.8, 40.0), 2: row(0.3, 10.0), 3: row(0.2, 5.0)}
    ends = [{"id": 0, "rmsd_heavy": 1.0}, {"id": 1, "rmsd_heavy": 0.6}, {"id": 2, "rmsd_heavy": 0.1},
            {"id": 3, "rmsd_heavy": 0.7}]
    rep = anatomy_report(anatomy, ends, far_rmsd=0.5, cap=1.0)
    assert rep["start beyond 1 A"]["n"] == 1 and rep["start beyond 1 A"]["rotatable_max_change"] == 90.0
    assert rep["far, start within the cap"]["n"] == 2 and rep["near"]["n"] == 1
    assert rep["far, start within the cap"]["share_with_a_rotatable_torsion_over_30"] == 0.5
