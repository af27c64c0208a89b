"""Reliability and data safety (issue 21): the defaults a user runs, concurrent writers, verified
checkpoints, nothing overwritten or dropped, and clear errors instead of wrong results.

The CLI tests run ``python -m ase_diffrelax`` as a user does: progress bar on, no --quiet."""
import json
import math
import os
import shutil
import subprocess
import sys
import warnings

import numpy as np
import pytest
from ase import Atoms
from ase.build import molecule
from ase.db import connect
from ase.io import read, write

from ase_diffrelax.files import ExclusiveLock

FAST = ["--policy", "fixed:t0=5+stride=0"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def cli(*args, model=None, check=None):
    cmd = [sys.executable, "-m", "ase_diffrelax", *args]
    if model is not None:
        cmd += ["--model", str(model.path), *FAST]
    r = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=600)
    if check is not None:
        assert r.returncode == check, (r.returncode, r.stdout[-2000:], r.stderr[-3000:])
    return r


def indices(path):
    if str(path).endswith(".db"):
        return sorted(int(r.input_index) for r in connect(path).select())
    return sorted(int(a.info["input_index"]) for a in read(path, ":"))


def write_smi(path, smiles):
    path.write_text("".join(f"{s} mol{k}\n" for k, s in enumerate(smiles)))


# ---------------------------------------------------------------- 1: streaming with the progress bar on
@pytest.mark.parametrize("ext", [".db", ".extxyz"])
def test_streaming_cli_with_its_default_progress_bar_writes_every_chunk(tiny_model, tmp_path, ext):
    write_smi(tmp_path / "lib.smi", ["CCO", "CC(=O)O", "CCN", "CC#N", "COC"] * 5)
    out = tmp_path / f"out{ext}"
    cli("relax", str(tmp_path / "lib.smi"), "-o", str(out), "--chunk-size", "7", model=tiny_model, check=0)
    assert indices(out) == list(range(25))


# ---------------------------------------------------------------- 2/3: one writer per output / run folder
@pytest.mark.parametrize("ext", [".db", ".extxyz"])
def test_a_second_writer_on_a_locked_output_is_refused_and_writes_nothing(tiny_model, tmp_path, ext):
    write_smi(tmp_path / "lib.smi", ["CCO", "CCN", "CC#N"] * 4)
    out = tmp_path / f"out{ext}"
    cli("relax", str(tmp_path / "lib.smi"), "-o", str(out), "--chunk-size", "5", model=tiny_model, check=0)
    before = out.read_bytes()
    with ExclusiveLock(out, "this output"):  # as a running relax process holds it
        r = cli("relax", str(tmp_path / "lib.smi"), "-o", str(out), "--resume", model=tiny_model, check=2)
        errors = [line for line in r.stderr.splitlines() if "bad input" in line]
        assert len(errors) == 1 and "another process" in errors[0] and "Traceback" not in r.stderr
    assert out.read_bytes() == before
    cli("relax", str(tmp_path / "lib.smi"), "-o", str(out), "--resume", model=tiny_model, check=0)
    assert indices(out) == list(range(12))  # no duplicates after the lock is gone


def test_two_real_relax_processes_on_one_output_never_duplicate_rows(tiny_model, tmp_path):
    write_smi(tmp_path / "lib.smi", ["CCO", "CC(=O)O", "CCN", "OCC(N)C=O", "CC#N", "COC"] * 40)
    out = tmp_path / "out.db"
    cmd = [sys.executable, "-m", "ase_diffrelax", "relax", str(tmp_path / "lib.smi"), "-o", str(out), "--resume",
           "--chunk-size", "10", "--model", str(tiny_model.path), *FAST]
    procs = [subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    codes = [p.wait(timeout=600) for p in procs]
    assert sorted(codes) in ([0, 0], [0, 2])  # the second either ran after the first or was refused
    cli("relax", str(tmp_path / "lib.smi"), "-o", str(out), "--resume", model=tiny_model, check=0)
    assert indices(out) == list(range(240))


def test_a_second_training_run_on_a_running_folder_is_refused(tmp_path):
    run = tmp_path / "run"
    with ExclusiveLock(run, "this training run", inside=True):
        r = cli("train", "--out", str(run), "--data", str(tmp_path / "none.extxyz"), "--steps", "1", check=2)
    assert "another process" in r.stderr
    assert not (run / "state.json").exists()


# ---------------------------------------------------------------- 4: an unreadable frame
def test_a_bad_extxyz_frame_gets_a_rejected_row_and_every_other_frame_is_relaxed(tiny_model, tmp_path):
    frames = [molecule(n) for n in ("CH3OH", "C2H6", "CH3CHO", "C2H4", "CH3CN", "H2CO", "CH3OCH3", "HCOOH")]
    write(tmp_path / "in.extxyz", frames)
    text = (tmp_path / "in.extxyz").read_text().splitlines(keepends=True)
    starts = [k for k, line in enumerate(text) if line.strip().isdigit()]
    text[starts[2]] = "six\n"  # the third frame's atom count is garbage
    (tmp_path / "in.extxyz").write_text("".join(text))
    cli("relax", str(tmp_path / "in.extxyz"), "-o", str(tmp_path / "out.db"), model=tiny_model, check=0)
    rows = {int(row.input_index): row for row in connect(tmp_path / "out.db").select()}
    assert sorted(rows) == list(range(8))  # one row per frame, as promised
    assert rows[2].status == "rejected" and "frame 2" in rows[2].reason
    assert all(rows[k].status != "rejected" for k in rows if k != 2)


def test_an_unreadable_frame_of_another_format_fails_the_run_naming_it(tiny_model, tmp_path):
    from ase.io.trajectory import Trajectory

    with Trajectory(tmp_path / "in.traj", "w") as t:
        for name in ("CH3OH", "C2H6", "CH3CHO"):
            t.write(molecule(name))
    data = (tmp_path / "in.traj").read_bytes()
    (tmp_path / "in.traj").write_bytes(data[: len(data) - 200])  # the last frame is cut short
    r = cli("relax", str(tmp_path / "in.traj"), "-o", str(tmp_path / "out.db"), model=tiny_model)
    rows = {int(row.input_index): row for row in connect(tmp_path / "out.db").select()}
    assert sorted(rows) == [0, 1, 2] and rows[2].status == "rejected" and "unreadable" in rows[2].reason
    # ASE stops reading there: never exit 0 when later entries might be missing
    assert r.returncode == 1 and "frame 2" in r.stderr and "not read" in r.stderr


# ---------------------------------------------------------------- 5: nothing overwritten unasked
def test_relax_never_replaces_its_input_or_an_existing_file_unless_told(tiny_model, tmp_path):
    write(tmp_path / "in.xyz", [molecule("CH3OH"), molecule("C2H6")])
    original = (tmp_path / "in.xyz").read_text()
    r = cli("relax", str(tmp_path / "in.xyz"), "-o", str(tmp_path / "in.xyz"), model=tiny_model, check=2)
    assert "input" in r.stderr
    (tmp_path / "existing.xyz").write_text("mine")
    r = cli("relax", str(tmp_path / "in.xyz"), "-o", str(tmp_path / "existing.xyz"), model=tiny_model, check=2)
    assert "--overwrite" in r.stderr
    assert (tmp_path / "in.xyz").read_text() == original and (tmp_path / "existing.xyz").read_text() == "mine"
    cli("relax", str(tmp_path / "in.xyz"), "-o", str(tmp_path / "existing.xyz"), "--overwrite", model=tiny_model,
        check=0)
    assert len(read(tmp_path / "existing.xyz", ":")) == 2


# ---------------------------------------------------------------- 6: merge
def test_merge_refuses_missing_inputs_and_counts_trailing_gaps(tiny_model, tmp_path):
    r = cli("merge", str(tmp_path / "nosuch1.db"), str(tmp_path / "nosuch2.db"), "-o", str(tmp_path / "m.db"),
            check=2)
    assert "no such file" in r.stderr
    assert not any(tmp_path.iterdir())  # nothing created
    write_smi(tmp_path / "lib.smi", ["CCO", "CCN", "CC#N"] * 10 + ["CCO"])  # 31 entries
    cli("relax", str(tmp_path / "lib.smi"), "-o", str(tmp_path / "s1.db"), "--shard", "1/2", model=tiny_model,
        check=0)
    r = cli("merge", str(tmp_path / "s1.db"), "-o", str(tmp_path / "m.db"), check=1)
    assert "16 input indices missing" in r.stdout  # evens 0..30: the last one too, from the shard header
    r = cli("merge", str(tmp_path / "s1.db"), "-o", str(tmp_path / "m2.db"), "--input", str(tmp_path / "lib.smi"),
            check=1)
    assert "of 31 rows" in r.stdout


# ---------------------------------------------------------------- 7: bad output and arguments, before any work
@pytest.mark.parametrize("output,extra,message", [
    ("nodir/out.xyz", [], "does not exist"),
    ("out.foo", [], "format"),
    ("out.xyz", ["--batch-size", "-3"], "must be >= 1"),
    ("nodir/out.db", [], "does not exist"),
])
def test_bad_outputs_and_arguments_fail_before_any_relaxing(tiny_model, tmp_path, output, extra, message):
    write(tmp_path / "in.xyz", [molecule("CH3OH")])
    r = cli("relax", str(tmp_path / "in.xyz"), "-o", str(tmp_path / output), *extra, model=tiny_model, check=2)
    assert message in r.stderr and "Traceback" not in r.stderr
    assert "relaxed" not in r.stdout


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_output_folder_is_refused_up_front(tiny_model, tmp_path):
    write(tmp_path / "in.xyz", [molecule("CH3OH")])
    (tmp_path / "ro").mkdir()
    os.chmod(tmp_path / "ro", 0o555)
    r = cli("relax", str(tmp_path / "in.xyz"), "-o", str(tmp_path / "ro" / "out.xyz"), model=tiny_model, check=2)
    assert "not writable" in r.stderr


# ---------------------------------------------------------------- 8: giants are refused before embedding
def test_a_giant_smiles_is_refused_before_etkdg(tiny_model, tmp_path):
    write_smi(tmp_path / "lib.smi", ["CCO", "C" * 400, "CCN"])
    cli("relax", str(tmp_path / "lib.smi"), "-o", str(tmp_path / "out.db"), model=tiny_model, check=0)
    rows = {int(r.input_index): r for r in connect(tmp_path / "out.db").select()}
    assert rows[1].status == "rejected" and "heavy atoms" in rows[1].reason
    assert rows[0].status != "rejected" and rows[2].status != "rejected"


# ---------------------------------------------------------------- 9/10: verified checkpoints
@pytest.fixture
def shipped_copy(tmp_path, monkeypatch):
    """The shipped QM9 checkpoint in a private copy of the checkpoint folder (the real one is untouched)."""
    from ase_diffrelax.core import checkpoint

    src = checkpoint.checkpoint_dir()
    dst = tmp_path / "ckpt"
    dst.mkdir()
    for f in ("qm9-painn128-jt.safetensors", "qm9-painn128-jt.json"):
        shutil.copy(src / f, dst / f)
    reg = json.loads((src / "registry.json").read_text())
    reg["models"] = {"qm9-painn128-jt": reg["models"]["qm9-painn128-jt"]}
    reg["choice_order"] = ["qm9-painn128-jt"]
    (dst / "registry.json").write_text(json.dumps(reg))
    monkeypatch.setattr(checkpoint, "checkpoint_dir", lambda: dst)
    monkeypatch.setattr(checkpoint, "_LOADED", {})
    monkeypatch.setenv("ASE_DIFFRELAX_CACHE", str(tmp_path / "cache"))
    return dst


def test_shipped_weights_are_verified_and_flipped_bytes_refused(shipped_copy):
    from ase_diffrelax.core.checkpoint import IntegrityError, load_model

    assert load_model("qm9-painn128-jt").verified == "registry sha256"
    w = shipped_copy / "qm9-painn128-jt.safetensors"
    data = bytearray(w.read_bytes())
    data[-100] ^= 0xFF
    w.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="sha256"):
        load_model("qm9-painn128-jt")


def test_a_registry_hash_of_zeros_is_refused(shipped_copy):
    from ase_diffrelax.core.checkpoint import IntegrityError, load_model

    reg = json.loads((shipped_copy / "registry.json").read_text())
    reg["models"]["qm9-painn128-jt"]["sha256"] = "0" * 64
    (shipped_copy / "registry.json").write_text(json.dumps(reg))
    with pytest.raises(IntegrityError):
        load_model("qm9-painn128-jt")


def test_an_edited_card_cannot_widen_a_shipped_checkpoint(shipped_copy):
    from ase_diffrelax.core.checkpoint import IntegrityError, load_model

    card_path = shipped_copy / "qm9-painn128-jt.json"
    card = json.loads(card_path.read_text())
    card["charges"] = [-1, 0, 1]
    card_path.write_text(json.dumps(card))
    with pytest.raises(IntegrityError, match="edited"):
        load_model("qm9-painn128-jt")


@pytest.mark.parametrize("old,new", [('"cutoff": 5.0', '"cutoff": 6.0'), ('"t_scale": 2.5', '"t_scale": 3.5')])
def test_a_same_size_edit_of_a_shipped_card_with_its_old_mtime_is_refused(shipped_copy, old, new):
    from ase_diffrelax.core.checkpoint import IntegrityError, load_model

    assert load_model("qm9-painn128-jt").verified == "registry sha256"  # loaded (and cached) once before the edit
    card_path = shipped_copy / "qm9-painn128-jt.json"
    text, st = card_path.read_text(), card_path.stat()
    assert old in text, old
    card_path.write_text(text.replace(old, new, 1))
    os.utime(card_path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert card_path.stat().st_size == st.st_size and card_path.stat().st_mtime_ns == st.st_mtime_ns
    with pytest.raises(IntegrityError, match="card was edited"):
        load_model("qm9-painn128-jt")


def _saved_copy(tiny_model, tmp_path, edit=None):
    base = tmp_path / "mine"
    for suffix in (".safetensors", ".json"):
        shutil.copy(tiny_model.path.with_suffix(suffix), base.with_suffix(suffix))
    if edit is not None:
        card = json.loads(base.with_suffix(".json").read_text())
        edit(card)
        base.with_suffix(".json").write_text(json.dumps(card))
    return base


def test_a_saved_card_hash_covers_its_config_and_init_refuses_what_fails_verification(tiny_model, tmp_path):
    from ase_diffrelax.core.checkpoint import IntegrityError, load_model
    from ase_diffrelax.core.model import Denoiser, ModelConfig
    from ase_diffrelax.training.state import init_from

    assert load_model(_saved_copy(tiny_model, tmp_path)).verified.startswith("card sha256")
    base = _saved_copy(tiny_model, tmp_path, lambda c: c["config"].update(cutoff=4.0))
    with pytest.raises(IntegrityError, match="edited after it was saved"):
        load_model(base)
    net = Denoiser(ModelConfig.fromdict(tiny_model.net.config.todict()))
    with pytest.raises(IntegrityError):
        init_from(net, str(base))
    base = _saved_copy(tiny_model, tmp_path, lambda c: [c.pop("card_sha256"), c.pop("weights_sha256")])
    with pytest.warns(UserWarning, match="unverified"):
        assert load_model(base).verified.startswith("unverified")
    with pytest.raises(ValueError, match="unverified"):
        init_from(net, str(base))


@pytest.mark.parametrize("edit,message", [
    (lambda c: c["config"].update(features="abc"), "config.features = 'abc'"),
    (lambda c: c["config"].update(elements=[1, 6, 10**20]), "config.elements[2]"),
    (lambda c: c["config"].update(cutoff=-1), "config.cutoff"),
    (lambda c: c.update(charges=["x"]), "charges[0]"),
    (lambda c: c.update(max_atoms=0), "max_atoms"),
    (lambda c: c["config"].update(features=32), "do not fit the card's config"),
])
def test_bad_cards_are_one_line_naming_the_field(tiny_model, tmp_path, edit, message):
    from ase_diffrelax.core.checkpoint import card_digest, load_model

    def tamper(card):
        edit(card)
        card["card_sha256"] = card_digest(card)  # a consistent but wrong card: validation, not the hash, must catch it
    base = _saved_copy(tiny_model, tmp_path, tamper)
    with pytest.raises(ValueError) as info:
        load_model(base)
    assert message in str(info.value) and "\n" not in str(info.value)
    write(tmp_path / "x.xyz", molecule("CH3CH2OH"))
    r = cli("relax", str(tmp_path / "x.xyz"), "-o", str(tmp_path / "y.xyz"), "--model", str(base))
    assert r.returncode == 2 and "Traceback" not in r.stderr and message in r.stderr


def test_a_pickle_renamed_safetensors_is_refused_without_unpickling(tiny_model, tmp_path):
    import pickle

    from ase_diffrelax.core.checkpoint import card_digest, load_model, sha256

    base = _saved_copy(tiny_model, tmp_path)
    base.with_suffix(".safetensors").write_bytes(pickle.dumps({"a": 1}))
    card = json.loads(base.with_suffix(".json").read_text())
    card["weights_sha256"] = sha256(base.with_suffix(".safetensors"))  # hashes that match: the format must be refused
    card["card_sha256"] = card_digest(card)
    base.with_suffix(".json").write_text(json.dumps(card))
    with pytest.raises(ValueError, match="not a safetensors weights file"):
        load_model(base)


def test_a_registry_without_models_is_one_line(shipped_copy):
    from ase_diffrelax.core.checkpoint import IntegrityError, load_model

    (shipped_copy / "registry.json").write_text(json.dumps({"default": "qm9-painn128-jt"}))
    with pytest.raises(IntegrityError, match="no 'models' table"):
        load_model()


@pytest.mark.parametrize("field,value", [("default", "../../.."), ("weights", "../../x.safetensors")])
def test_registry_paths_stay_inside_the_checkpoint_folder(shipped_copy, field, value):
    from ase_diffrelax.core.checkpoint import IntegrityError, load_model

    reg = json.loads((shipped_copy / "registry.json").read_text())
    if field == "default":
        reg["default"] = value
    else:
        reg["models"]["qm9-painn128-jt"]["weights"] = value
    (shipped_copy / "registry.json").write_text(json.dumps(reg))
    with pytest.raises(IntegrityError):
        load_model(None if field == "default" else "qm9-painn128-jt")


def test_a_checkpoint_loaded_by_path_is_checked_against_its_card_or_says_unverified(tiny_model, tmp_path):
    from ase_diffrelax import DiffusionRelax
    from ase_diffrelax.core import checkpoint

    base = tmp_path / "mine"
    for suffix in (".safetensors", ".json"):
        shutil.copy(tiny_model.path.with_suffix(suffix), base.with_suffix(suffix))
    card = json.loads(base.with_suffix(".json").read_text())
    assert card["weights_sha256"] == checkpoint.sha256(base.with_suffix(".safetensors"))  # save_model wrote it
    checkpoint._LOADED.clear()
    a = molecule("CH3CH2OH")
    DiffusionRelax(a, model=str(base), logfile=None, policy="fixed:t0=5").run()
    assert a.info["diffusion_model_verified"].startswith("card sha256")
    card.pop("weights_sha256")
    base.with_suffix(".json").write_text(json.dumps(card))
    checkpoint._LOADED.clear()
    DiffusionRelax(a, model=str(base), logfile=None, policy="fixed:t0=5").run()
    assert a.info["diffusion_model_verified"].startswith("unverified")
    card["weights_sha256"] = "1" * 64
    base.with_suffix(".json").write_text(json.dumps(card))
    checkpoint._LOADED.clear()
    with pytest.raises(checkpoint.IntegrityError):
        checkpoint.load_model(str(base))


# ---------------------------------------------------------------- 11/12: parameters in range or a clear error
def test_an_ensemble_that_diverges_raises_instead_of_returning_copies(tiny_model):
    from ase_diffrelax import sample_ensemble

    a = molecule("CH3CH2OH")
    with pytest.raises(RuntimeError, match="diverged"):
        sample_ensemble(a, t=999, n_samples=20, burn_in=5, model=tiny_model)


@pytest.mark.parametrize("temperature", [-10, 0, float("nan"), float("inf"), "300"])
def test_ensemble_temperature_must_be_positive_and_finite(tiny_model, temperature):
    from ase_diffrelax import sample_ensemble

    with pytest.raises(ValueError, match="temperature"):
        sample_ensemble(molecule("CH3CH2OH"), temperature=temperature, model=tiny_model)


@pytest.mark.parametrize("kwargs,name", [({"t": 5000}, "t"), ({"t": 0}, "t"), ({"t": 2.5}, "t"),
                                         ({"stiffness": -1.0}, "stiffness"), ({"temperature": float("nan")},
                                                                               "temperature")])
def test_diffusion_calculator_parameters_out_of_range_are_refused(tiny_model, kwargs, name):
    from ase_diffrelax import DiffusionCalculator

    with pytest.raises(ValueError, match=name):
        DiffusionCalculator(model=tiny_model, **kwargs)
    calc = DiffusionCalculator(model=tiny_model)
    with pytest.raises(ValueError, match=name):
        calc.set(**kwargs)


@pytest.mark.parametrize("spec", ["jt:stride=1.5", "fixed:t0=-5", "jt:max_steps=0", "jt:eta=2", "itp:stride=-0.1",
                                  "fixed:t0=1000", "jt:min_decay=1", "jt:max_steps=2.5", "jt:threshold=nan"])
def test_policy_options_out_of_range_are_refused(spec):
    from ase_diffrelax import make_policy

    with pytest.raises(ValueError):
        make_policy(spec)


# ---------------------------------------------------------------- 13: one bad charge rejects one entry
@pytest.mark.parametrize("bad", [None, "abc", 0.5, True])
def test_a_bad_charge_rejects_only_its_structure(tiny_model, bad):
    from ase_diffrelax import relax_many

    mols = [molecule("CH3CH2OH"), molecule("C2H6"), molecule("CH3CHO")]
    mols[1].info["charge"] = bad
    res = relax_many(mols, model=tiny_model, on_error="skip", progress=False, policy="fixed:t0=5")
    assert res[1].status == "rejected" and "structure 1" in res[1].reason and "charge" in res[1].reason
    assert res[0].status != "rejected" and res[2].status != "rejected"


def test_skip_bad_cli_names_the_frame_with_a_bad_charge(tiny_model, tmp_path):
    mols = [molecule("CH3CH2OH"), molecule("C2H6")]
    mols[1].info["charge"] = "abc"
    write(tmp_path / "in.extxyz", mols)
    r = cli("relax", str(tmp_path / "in.extxyz"), "-o", str(tmp_path / "out.extxyz"), "--skip-bad",
            model=tiny_model, check=0)
    assert "frame 1: rejected" in r.stdout and "charge" in r.stdout


# ---------------------------------------------------------------- 14: clear errors
def test_missing_devices_names_and_config_give_clear_errors(tiny_model, tmp_path, monkeypatch):
    import torch

    from ase_diffrelax import load_model, run_pipeline
    from ase_diffrelax.core.device import pick_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="CUDA is not available"):
        pick_device("cuda")
    with pytest.raises(ValueError, match="not a torch device"):
        pick_device("gpu9")
    with pytest.raises(FileNotFoundError, match="empty checkpoint name"):
        load_model("")
    base = tmp_path / "nocfg"
    shutil.copy(tiny_model.path.with_suffix(".safetensors"), base.with_suffix(".safetensors"))
    card = json.loads(tiny_model.path.with_suffix(".json").read_text())
    card.pop("config")
    base.with_suffix(".json").write_text(json.dumps(card))
    with pytest.raises(ValueError, match="config"):
        load_model(str(base))
    with pytest.raises(ValueError, match="no stages"):
        run_pipeline("CCO", stages=())
    with pytest.raises(ValueError, match="no molecule"):
        run_pipeline("[Na+].[Cl-]", stages=("mmff",))


def test_cli_device_cuda_without_cuda_is_one_line(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    write(tmp_path / "in.xyz", [molecule("CH3OH")])
    r = cli("relax", str(tmp_path / "in.xyz"), "-o", str(tmp_path / "o.xyz"), "--device", "cuda", check=2)
    assert "CUDA is not available" in r.stderr and "Traceback" not in r.stderr


# ---------------------------------------------------------------- 15: salts
def test_a_salt_smiles_is_relaxed_as_its_parent_ion_and_the_removal_is_reported():
    from ase_diffrelax import run_pipeline

    with pytest.warns(UserWarning, match=r"removed \[Na\+\]"):
        res = run_pipeline("[Na+].[O-]C(=O)c1ccccc1", stages=("mmff",))
    assert "Na" not in res.atoms.get_chemical_symbols() and res.atoms.info["charge"] == -1
    assert res.stages[0].extra["removed_fragments"] == "[Na+]"
    assert "removed" in res.table()
    with pytest.raises(ValueError, match="fragments"):
        run_pipeline("[Na+].[O-]C(=O)c1ccccc1", stages=("mmff",), strip_salts=False)
    with pytest.warns(UserWarning, match="formal charges sum to"):
        run_pipeline("CC(=O)[O-]", stages=("mmff",), charge=0)


# ---------------------------------------------------------------- 16: far from the origin
def test_diffusion_calculator_is_translation_invariant_far_from_the_origin(tiny_model):
    from ase_diffrelax import DiffusionCalculator

    a = molecule("CH3CH2OH")
    a.positions += np.random.default_rng(0).normal(0, 0.1, a.positions.shape)
    a.calc = DiffusionCalculator(model=tiny_model, t=20)
    f0 = a.get_forces()
    b = a.copy()
    b.positions += 1e5
    b.calc = DiffusionCalculator(model=tiny_model, t=20)
    assert np.abs(b.get_forces() - f0).max() < 2e-3


# ---------------------------------------------------------------- 17: a broken bond graph is a status
def test_a_relaxation_that_splits_the_molecule_says_so():
    from ase_diffrelax.chem.topology import describe, topology_change

    a = molecule("CH3CONH2")
    stretched = a.positions * 1.6
    split = a.positions.copy()
    c, n = [k for k, s in enumerate(a.get_chemical_symbols()) if s == "C"][1], a.get_chemical_symbols().index("N")
    move = [n] + [k for k in range(len(a)) if a.get_chemical_symbols()[k] == "H"
                  and np.linalg.norm(a.positions[k] - a.positions[n]) < 1.2]
    split[move] += (a.positions[n] - a.positions[c]) / np.linalg.norm(a.positions[n] - a.positions[c]) * 1.9
    topo = topology_change(a.numbers, stretched, split)
    assert topo["split"] and topo["bonds_broken"] and topo["fragments_after"] == 2
    assert "2 fragments" in describe(topo)
    assert not topology_change(a.numbers, stretched, a.positions)["bonds_broken"]  # re-forming bonds is fine


def test_relax_many_reports_bonds_broken_as_the_status(tiny_model, monkeypatch):
    from ase_diffrelax import relax_many
    from ase_diffrelax.adapters import batch

    def broken(numbers, before, after):
        return {"broken": [(0, 1)], "formed": [], "changed": True, "split": True, "fragments_before": 1,
                "fragments_after": 2, "bonds_broken": True}

    monkeypatch.setattr(batch, "topology_change", broken)
    res = relax_many([molecule("CH3CH2OH")], model=tiny_model, progress=False, policy="fixed:t0=5")
    assert res[0].status == "bonds_broken" and "2 fragments" in res[0].reason


# ---------------------------------------------------------------- 18/19: pipeline metadata and step caps
def test_metadata_follows_the_last_stage_that_moved_the_atoms(tiny_model):
    from ase_diffrelax import run_pipeline

    res = run_pipeline(molecule("CH3CH2OH"), stages=("xtb", "diffusion"), model=tiny_model,
                       policy="fixed:t0=10+stride=0", optimizer="bfgs", hessian="identity")
    assert res.atoms.info["relaxed_by"] == "diffusion"
    assert "relaxed_fmax" not in res.atoms.info and res.atoms.calc is None


def test_pipeline_max_steps_caps_only_the_physics_stage(tiny_model, tmp_path):
    from ase_diffrelax.cli import main

    out = tmp_path / "r.json"
    assert main(["pipeline", "CCO", "--to", "xtb", "--max-steps", "3", "--model", str(tiny_model.path),
                 "--optimizer", "bfgs", "--hessian", "identity", "--json", str(out)]) == 0
    report = {s["stage"]: s for s in json.loads(out.read_text())}
    assert report["diffusion"]["extra"]["policy"]["max_steps"] == 100  # jt's own, not 3 and not 500
    assert report["xtb"]["steps"] <= 3


# ---------------------------------------------------------------- 20: --debug anywhere
def test_debug_is_accepted_after_the_subcommand(capsys):
    from ase_diffrelax.cli import main

    assert main(["models", "--debug"]) == 0
    assert main(["--debug", "models"]) == 0


# ---------------------------------------------------------------- fuzz: new argument ranges
def test_fuzzed_policy_and_calculator_arguments_are_in_range_or_refused(tiny_model):
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from ase_diffrelax import DiffusionCalculator, make_policy

    numbers = st.one_of(st.integers(-5000, 5000), st.floats(allow_nan=True, allow_infinity=True),
                        st.sampled_from(["x", "none", "1e3", "-0"]))

    @settings(max_examples=150, deadline=None)
    @given(name=st.sampled_from(["jt", "itp", "fixed"]),
           key=st.sampled_from(["eta", "stride", "threshold", "max_steps", "t_scale", "t_scale_cap", "t0",
                                "min_decay"]), value=numbers)
    def policies(name, key, value):
        spec = f"{name}:{key}={value}" + ("+t0=30" if name == "fixed" and key != "t0" else "")
        try:
            p = make_policy(spec)
        except (ValueError, TypeError):
            return
        assert 0 <= p.eta <= 1 and 0 <= p.stride < 1 and p.max_steps >= 1 and -1 <= p.threshold <= 1000
        assert p.t_scale is None or 0 < p.t_scale <= 100
        assert getattr(p, "t0", 30) in range(1, 1000)

    @settings(max_examples=80, deadline=None)
    @given(key=st.sampled_from(["t", "stiffness", "temperature"]), value=numbers)
    def calculators(key, value):
        try:
            calc = DiffusionCalculator(model=tiny_model, **{key: value})
        except ValueError:
            return
        a = molecule("CH3OH")
        a.calc = calc
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            assert np.isfinite(a.get_forces()).all() and math.isfinite(a.get_potential_energy())

    policies()
    calculators()


def test_atoms_keep_their_input_on_every_refusal(tiny_model):
    from ase_diffrelax import InputError, relax_many

    a = Atoms("OCO", positions=[[0, 0, -1.16], [0, 0, 0], [0, 0, 1.16]])
    a.info["charge"] = "abc"
    before = a.positions.copy()
    with pytest.raises(InputError, match="charge"):
        relax_many([a], model=tiny_model, progress=False)
    assert np.array_equal(a.positions, before)


def test_the_size_warning_counts_heavy_atoms_too():
    from ase_diffrelax import load_model
    from ase_diffrelax.chem.rdkit_interop import atoms_from_smiles
    from ase_diffrelax.core.validate import check_for_model

    model = load_model("moses-painn128-jt")
    a = atoms_from_smiles("FC(F)(F)" + "C(F)(F)" * 18 + "C(F)(F)F")  # 62 atoms, all heavy
    assert len(a) < 1.5 * model.card["max_atoms"]  # the atom count alone would pass silently
    with pytest.warns(UserWarning, match="heavy"):
        check_for_model(a, model)


def test_xyz_frames_resynchronise_after_a_bad_atom_line_and_a_bad_header(tmp_path):
    from ase_diffrelax.workflows.collection import iter_xyz_frames

    write(tmp_path / "in.xyz", [molecule(n) for n in ("CH4", "H2O", "NH3", "C2H6", "CH3OH")])
    lines = (tmp_path / "in.xyz").read_text().splitlines(keepends=True)
    heads = [k for k, line in enumerate(lines) if line.strip().isdigit()]
    lines[heads[1] + 2] = "O 0.0 abc 0.0\n"  # frame 1: a bad atom line
    lines[heads[3]] = "eight\n"  # frame 3: a bad header
    (tmp_path / "in.xyz").write_text("".join(lines))
    out = list(iter_xyz_frames(str(tmp_path / "in.xyz")))
    assert [k for k, _, _ in out] == [0, 1, 2, 3, 4]
    assert [a is not None for _, a, _ in out] == [True, False, True, False, True]
    assert "frame 1" in out[1][2] and "frame 3" in out[3][2]
    assert out[4][1].get_chemical_formula() == "CH4O"


def test_a_stale_ase_db_lock_from_a_killed_writer_does_not_hang_the_resume(tiny_model, tmp_path):
    write_smi(tmp_path / "lib.smi", ["CCO", "CCN", "CC#N"] * 4)
    out = tmp_path / "out.db"
    cli("relax", str(tmp_path / "lib.smi"), "-o", str(out), "--chunk-size", "5", model=tiny_model, check=0)
    (tmp_path / "out.db.lock").write_text("")  # what ASE leaves when a writer dies inside a transaction
    cmd = [sys.executable, "-m", "ase_diffrelax", "relax", str(tmp_path / "lib.smi"), "-o", str(out), "--resume",
           "--model", str(tiny_model.path), *FAST]
    r = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and indices(out) == list(range(12))


# ---------------------------------------------------------------- issue 30
@pytest.mark.parametrize("wrong", [6, 10])
def test_an_xyz_frame_whose_atom_count_is_wrong_is_rejected_and_later_frames_keep_their_index(tmp_path, wrong):
    from ase_diffrelax.workflows.collection import iter_xyz_frames

    write(tmp_path / "in.xyz", [molecule(n) for n in ("CH4", "C2H6", "H2O", "NH3")])
    lines = (tmp_path / "in.xyz").read_text().splitlines(keepends=True)
    heads = [k for k, line in enumerate(lines) if line.strip().isdigit()]
    lines[heads[1]] = f"{wrong}\n"  # ethane (8 atoms) announced as 6 or 10
    (tmp_path / "in.xyz").write_text("".join(lines))
    out = list(iter_xyz_frames(str(tmp_path / "in.xyz")))
    assert [k for k, _, _ in out] == [0, 1, 2, 3]
    assert out[1][1] is None and f"says {wrong}" in out[1][2]
    assert [a.get_chemical_formula() for _, a, _ in (out[0], out[2], out[3])] == ["CH4", "H2O", "H3N"]


def _positions(path):
    if str(path).endswith(".db"):
        return {int(r.input_index): r.toatoms().positions for r in connect(path).select()}
    return {int(a.info["input_index"]): a.positions for a in read(path, ":")}


@pytest.mark.parametrize("ext", [".db", ".extxyz"])
def test_resume_refuses_another_input_shard_or_option_naming_the_difference(tiny_model, tmp_path, ext):
    write_smi(tmp_path / "lib.smi", ["CCO", "CCN", "CC#N", "COC"] * 3)
    write_smi(tmp_path / "other.smi", ["CCC", "CCOC"] * 3)
    out = tmp_path / f"out{ext}"
    cli("relax", str(tmp_path / "lib.smi"), "-o", str(out), "--shard", "0/3", model=tiny_model, check=0)
    before = out.read_bytes()
    for extra, word in ((["--shard", "0/3", "--seed", "0", str(tmp_path / "other.smi")], "input"),
                        (["--shard", "1/3", str(tmp_path / "lib.smi")], "shard"),
                        (["--shard", "0/3", "--seed", "7", str(tmp_path / "lib.smi")], "seed"),
                        (["--shard", "0/3", "--eta", "1", str(tmp_path / "lib.smi")], "policy")):
        r = cli("relax", *extra, "-o", str(out), "--resume", model=tiny_model, check=2)
        lines = [line for line in r.stderr.splitlines() if "ase-diffrelax:" in line and "--resume" in line]
        assert len(lines) == 1 and f"differs in {word}" in lines[0] and "Traceback" not in r.stderr, r.stderr
        assert out.read_bytes() == before
    r = cli("relax", str(tmp_path / "lib.smi"), "-o", str(out), "--shard", "0/3", "--resume", model=tiny_model, check=0)
    assert "4 already done" in r.stdout


def test_noisy_results_do_not_depend_on_sharding_or_chunking(tiny_model, tmp_path):
    write_smi(tmp_path / "lib.smi", ["CCO", "CCN", "CC#N", "COC", "CC(=O)O", "OCC(N)C=O"] * 2)
    noisy = ["--model", str(tiny_model.path), "--policy", "fixed:t0=5+stride=0+eta=1", "--seed", "3"]
    cli("relax", str(tmp_path / "lib.smi"), "-o", str(tmp_path / "all.db"), *noisy, check=0)
    for i in range(2):
        cli("relax", str(tmp_path / "lib.smi"), "-o", str(tmp_path / f"s{i}.extxyz"), "--shard", f"{i}/2",
            "--chunk-size", "2", *noisy, check=0)
    whole = _positions(tmp_path / "all.db")
    sharded = {**_positions(tmp_path / "s0.extxyz"), **_positions(tmp_path / "s1.extxyz")}
    assert sorted(sharded) == sorted(whole) == list(range(12))
    assert max(np.abs(whole[k] - sharded[k]).max() for k in whole) < 1e-4


def test_a_bond_type_the_checkpoint_never_saw_is_left_unmoved_and_named_by_entry(tmp_path):
    from ase_diffrelax import atoms_from_smiles, relax_many

    thiol = atoms_from_smiles("CCS")  # S-H: the drug-like checkpoint's training data has none
    thiol.info.pop("smiles", None)
    big = atoms_from_smiles("CCSc1ccc(Cl)cc1C(=O)NCc1ccccc1")
    res = relax_many([big, thiol], model="moses-painn128-jt", progress=False)
    assert res[1].status == "unseen_bonds" and "H-S" in res[1].reason and "structure 1" not in res[1].reason
    assert np.allclose(res[1].atoms.positions, thiol.positions)
    assert res[0].status != "unseen_bonds"
    write_smi(tmp_path / "lib.smi", ["CCSc1ccc(Cl)cc1C(=O)NCc1ccccc1", "SCCc1ccc(Cl)cc1C(=O)NCc1ccccc1"])
    cli("relax", str(tmp_path / "lib.smi"), "-o", str(tmp_path / "out.db"), "--model", "moses-painn128-jt", *FAST,
        check=0)
    rows = {int(r.input_index): r for r in connect(tmp_path / "out.db").select()}
    assert rows[1].status == "unseen_bonds" and "H-S" in rows[1].reason
    assert rows[0].status != "unseen_bonds"


def test_merge_is_lossless_across_formats_and_refuses_a_file_that_is_not_a_shard(tiny_model, tmp_path):
    write_smi(tmp_path / "lib.smi", ["CCO", "CCN", "CC#N", "COC"] * 5)
    cli("relax", str(tmp_path / "lib.smi"), "-o", str(tmp_path / "s0.extxyz"), "--shard", "0/2", model=tiny_model, check=0)
    cli("relax", str(tmp_path / "lib.smi"), "-o", str(tmp_path / "s1.db"), "--shard", "1/2", model=tiny_model, check=0)
    for out in ("all.db", "all.extxyz"):
        cli("merge", str(tmp_path / "s0.extxyz"), str(tmp_path / "s1.db"), "-o", str(tmp_path / out), check=0)
        rows = ([r.key_value_pairs for r in connect(tmp_path / out).select()] if out.endswith(".db")
                else [a.info for a in read(tmp_path / out, ":")])
        assert sorted(int(r["input_index"]) for r in rows) == list(range(20))
        assert all(int(r["diffusion_steps"]) > 0 and r["status"] for r in rows)
        assert all(int(r["diffusion_hydrogens_restored"]) >= 0 for r in rows)  # the X-H guard's count survives
    r = cli("merge", str(tmp_path / "s0.extxyz"), "-o", str(tmp_path / "all.db"), check=2)
    assert "--overwrite" in r.stderr
    write(tmp_path / "plain.extxyz", [molecule("H2O")])
    r = cli("merge", str(tmp_path / "plain.extxyz"), "-o", str(tmp_path / "m.db"), check=2)
    assert "no input_index" in r.stderr and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("ext", [".db", ".extxyz"])
def test_a_file_size_limit_while_streaming_is_one_line_and_resume_completes_the_output(tiny_model, tmp_path, ext):
    import resource

    write_smi(tmp_path / "lib.smi", ["CCO", "CCN", "CC#N", "COC", "CC(=O)O"] * 60)
    out = tmp_path / f"out{ext}"
    cmd = [sys.executable, "-m", "ase_diffrelax", "relax", str(tmp_path / "lib.smi"), "-o", str(out),
           "--chunk-size", "20", "--model", str(tiny_model.path), *FAST]
    limit = lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))  # noqa: E731
    r = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=600, preexec_fn=limit)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr[-2000:]
    lines = [line for line in r.stderr.splitlines() if "ase-diffrelax: failed" in line]
    assert len(lines) == 1 and "--resume" in lines[0] and "bad input" not in r.stderr
    assert 0 < len(indices(out)) < 300
    cli("relax", str(tmp_path / "lib.smi"), "-o", str(out), "--resume", model=tiny_model, check=0)
    assert indices(out) == list(range(300))


def test_pipeline_refuses_a_giant_smiles_before_etkdg_in_one_line(tmp_path):
    import time

    t0 = time.perf_counter()
    r = cli("pipeline", "C" * 400, "--to", "xtb", check=2)
    assert time.perf_counter() - t0 < 60  # ETKDG on it takes minutes; a refusal comes before
    assert "400 heavy atoms" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize("name", ["CH3CH2OH", "CH3COOH", "CH3CN", "C6H6", "CH3NO2"])
def test_bond_perception_and_mmff_do_not_depend_on_where_the_molecule_sits(name):
    from rdkit import Chem

    from ase_diffrelax.chem.rdkit_interop import mmff_from_reference, mol_from_xyz

    a = molecule(name)
    far = a.positions + 1e7
    near_mol, far_mol = mol_from_xyz(a.numbers, a.positions), mol_from_xyz(a.numbers, far)
    assert Chem.MolToSmiles(far_mol) == Chem.MolToSmiles(near_mol)
    assert sum(x.GetFormalCharge() for x in far_mol.GetAtoms()) == sum(x.GetFormalCharge() for x in near_mol.GetAtoms())
    assert np.allclose(far_mol.GetConformer().GetPositions(), far)  # the user's coordinates, not centred ones
    assert np.abs((mmff_from_reference(a.numbers, far) - 1e7) - mmff_from_reference(a.numbers, a.positions)).max() < 1e-3


def test_streaming_progress_bar_has_a_total_and_pipeline_announces_each_stage(tiny_model, tmp_path):
    write_smi(tmp_path / "lib.smi", ["CCO", "CCN", "CC#N"] * 4)
    r = cli("relax", str(tmp_path / "lib.smi"), "-o", str(tmp_path / "out.db"), model=tiny_model, check=0)
    assert "/12 [" in r.stderr.replace("\r", "\n")  # tqdm's n/total with an ETA
    r = cli("pipeline", "CCO", "--to", "xtb", "--max-steps", "3", check=0)
    stages = [line for line in r.stderr.splitlines() if "ase-diffrelax: stage" in line]
    assert [s.split("stage ")[1][:3] for s in stages] == ["1/3", "2/3", "3/3"] and "GFN2-xTB" in stages[2]


def test_a_run_that_never_converges_shows_its_steps(tiny_model):
    import io

    from tqdm import tqdm

    from ase_diffrelax import relax_many

    buf = io.StringIO()
    bar = tqdm(total=1, file=buf, mininterval=0)
    from ase_diffrelax.core.sampler import Molecule, Sampler

    a = molecule("CH3CH2OH")
    sampler = Sampler(tiny_model, "fixed:t0=999+stride=0+max_steps=50")
    sampler.progress_interval_s = 0.0
    sampler.run([Molecule(a.numbers, a.positions, np.zeros(len(a), bool), 0)], progress=bar)
    assert "diffusion step" in buf.getvalue()
    assert relax_many  # the public API drives the same sampler with its bar


def test_messages_name_the_default_the_checkpoint_and_the_small_molecule(tiny_model):
    from ase_diffrelax import DiffusionCalculator, atoms_from_smiles, relax_many, sample_ensemble

    r = cli("models", check=0)
    assert "[default" in r.stdout
    a = atoms_from_smiles("CCO")
    with pytest.warns(UserWarning, match="smaller than the smallest training molecule"):
        relax_many([a], model="moses-painn128-jt", progress=False, policy="fixed:t0=5+stride=0")
    a.calc = DiffusionCalculator(model=tiny_model)
    a.get_forces()
    assert a.info["diffusion_model"] == tiny_model.name and "diffusion_model_verified" in a.info
    a.info.update(diffusion_status="converged", relaxed_by="xtb")
    samples = sample_ensemble(a, t=5, n_samples=2, burn_in=1, model=tiny_model)
    assert "diffusion_status" not in samples[0].info and "relaxed_by" not in samples[0].info
    assert samples[0].info["diffusion_model"] == tiny_model.name
    with pytest.raises(ValueError, match="qm9-painn128-jt"):  # names the checkpoints that have a map
        sample_ensemble(a, temperature=300, n_samples=2, model=tiny_model)


def test_no_xtb_library_says_the_xtb_program_is_not_enough(monkeypatch):
    import builtins

    from ase_diffrelax.workflows import physics

    real = builtins.__import__

    def blocked(name, *args, **kwargs):
        if name.startswith(("tblite", "xtb")):
            raise ImportError(name)
        return real(name, *args, **kwargs)
    monkeypatch.setattr(builtins, "__import__", blocked)
    monkeypatch.setattr(shutil, "which", lambda prog: "/usr/bin/xtb" if prog == "xtb" else None)
    with pytest.raises(ImportError, match="xtb program .* is on PATH"):
        physics.xtb_calculator()


def test_cli_dft_uses_density_fitting_by_default_as_benchmarked():
    from ase_diffrelax.cli import build_parser

    assert build_parser().parse_args(["pipeline", "CCO", "--to", "dft"]).density_fit is True
    assert build_parser().parse_args(["pipeline", "CCO", "--to", "dft", "--no-density-fit"]).density_fit is False


def test_write_card_keeps_a_saved_card_verifiable_after_a_legitimate_edit(tiny_model, tmp_path):
    from ase_diffrelax.core.checkpoint import load_model, write_card

    base = _saved_copy(tiny_model, tmp_path)
    card = json.loads(base.with_suffix(".json").read_text())
    card["time_calibration"] = {"t_scale": 1.5, "t_scale_cap": 100}
    write_card(base.with_suffix(".json"), card)
    m = load_model(base)
    assert m.verified.startswith("card sha256") and m.card["time_calibration"]["t_scale"] == 1.5


def test_the_readme_snippet_runs_in_a_fresh_folder(tmp_path):
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    snippet = readme.split("```python\n", 1)[1].split("```", 1)[0]
    r = subprocess.run([sys.executable, "-c", snippet], cwd=tmp_path, env=ENV, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
