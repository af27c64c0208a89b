import json

import numpy as np
import pytest
import torch

from ase_diffrelax import load_model, relax_many
from ase_diffrelax.training.data import MoleculeSet, split_of
from ase_diffrelax.training.noising import TrainingData
from ase_diffrelax.training.trainer import TrainConfig, Trainer

from conftest import small_molecules

TINY = {"features": 16, "blocks": 2, "rbf": 8, "cutoff": 5.0, "elements": [1, 6, 7, 8, 9], "time_features": 8}


def _data():
    mols = small_molecules()
    ms = MoleculeSet.from_atoms_list(mols)
    rng = np.random.default_rng(0)
    fake_mmff = ms.positions + rng.normal(0, 0.05, ms.positions.shape).astype(np.float32)
    return TrainingData(ms, fake_mmff)


def test_low_t_weight_is_a_normalised_reweighting_of_the_noise_loss(tmp_path):
    """Weight 1 is the plain mean; weight W moves the noise loss toward the molecules at t <= low_t_max."""
    data = _data()
    ids, mask = np.arange(8), np.zeros(8, dtype=bool)
    losses = {}
    for w in (1.0, 4.0):
        cfg = TrainConfig(out=str(tmp_path / f"w{w}"), batch_size=8, model=TINY, time_weight=0.0, low_t_weight=w)
        tr = Trainer(cfg, data, data, progress=False)
        batch = tr.batch(data, ids, mask)
        loss, aux = tr.loss(tr.net, batch, torch.Generator().manual_seed(3), 1.0)
        losses[w] = (loss.item(), aux)
    _, aux = losses[1.0]
    per_atom = aux["noise_mse"][aux["mol"]]  # per molecule, broadcast: the loss is over atoms
    counts = torch.bincount(aux["mol"]).float()
    low = aux["t"] <= 50
    assert 0 < int(low.sum()) < 8, "the draw should hold both small and large t"
    w_mol = torch.where(low, 4.0, 1.0)
    expect_plain = float((aux["noise_mse"] * counts).sum() / counts.sum())
    expect_w = float((aux["noise_mse"] * counts * w_mol).sum() / (counts * w_mol).sum())
    assert per_atom.shape[0] == counts.sum()
    assert losses[1.0][0] == pytest.approx(expect_plain, rel=1e-5)
    assert losses[4.0][0] == pytest.approx(expect_w, rel=1e-5)
    assert losses[4.0][0] != pytest.approx(losses[1.0][0], rel=1e-3)


def test_mmff_step_presents_mmff_inputs_unshrunk_at_that_step_with_exact_targets():
    """--mmff-step: an MMFF94 input at full displacement sits at the given small step, its shrink is
    that step's (invisible, as a real start's), eps * sigma_t is the whole deviation, and its loss
    counts relative to the real deviation; Gaussian inputs are drawn exactly as without it."""
    from ase_diffrelax.core.schedule import NoiseSchedule
    from ase_diffrelax.training.noising import make_inputs

    sched = NoiseSchedule(1000, 1e-5)
    data = _data()
    ids = np.arange(8)
    numbers, x0, disp, mol = data.gather(ids)
    disp = 5 * disp  # ~0.25 A per coordinate, as MMFF94's from GFN2-xTB (the fake one is 0.05)
    is_mmff = torch.tensor([True] * 5 + [False] * 3)
    base = make_inputs(sched, numbers, x0, disp, mol, 8, is_mmff, torch.Generator().manual_seed(5))
    x_t, t, eps, sigma, scale, presented = make_inputs(sched, numbers, x0, disp, mol, 8, is_mmff,
                                                       torch.Generator().manual_seed(5), mmff_step=40)
    assert torch.equal(presented, is_mmff) and not base[5].any()
    assert (t[is_mmff] <= 100).all() and (t[~is_mmff] == base[1][~is_mmff]).all()
    assert torch.equal(x_t[~is_mmff[mol]], base[0][~is_mmff[mol]]) and (base[4] == 1).all()
    sig_t = torch.as_tensor(sched.sigma, dtype=torch.float32)[t]
    ab = torch.as_tensor(sched.alpha_bar, dtype=torch.float32)[t]
    deviation = eps * sig_t[mol, None]
    torch.testing.assert_close(x_t, ab.sqrt()[mol, None] * x0 + deviation, atol=1e-5, rtol=1e-5)
    assert (ab[is_mmff].sqrt() > 0.995).all()  # t <= 100: shrunk by < 0.5 %, where the VP inputs shrink ~
    real = torch.stack([deviation[mol == k].pow(2).sum() / (3 * ((mol == k).sum() - 1)) for k in range(8)]).sqrt()
    # the deviation is larger than that step's sigma (by |d| / sigma_40 where no extra noise is drawn) ...
    assert (real[is_mmff] >= 0.99 * sig_t[is_mmff]).all() and (real[is_mmff] > 2 * sig_t[is_mmff]).any()
    # (the scale uses the extra noise's expected size, ``real`` its drawn one: equal within ~10 %)
    torch.testing.assert_close(scale[is_mmff], (sig_t[is_mmff] / real[is_mmff]) ** 2, rtol=0.15, atol=1e-6)
    assert (scale[~is_mmff] == 1).all()  # ... and its noise error is counted relative to it


def test_several_mmff_steps_each_input_draws_one_of_them(tmp_path):
    """--mmff-step 40,120: an MMFF94 input at full displacement (no extra noise) is labelled with the
    sigma of the step it drew; a 0 among the steps leaves that input in the shrunk presentation."""
    from ase_diffrelax.core.schedule import NoiseSchedule
    from ase_diffrelax.training.noising import make_inputs

    sched = NoiseSchedule(1000, 1e-5)
    sig = torch.as_tensor(sched.sigma, dtype=torch.float64)
    numbers, x0, disp, mol = _data().gather(np.arange(8))
    is_mmff = torch.tensor([True] * 6 + [False] * 2)
    seen = []
    for seed in range(30):
        out = make_inputs(sched, numbers, x0, 5 * disp, mol, 8, is_mmff, torch.Generator().manual_seed(seed),
                          mmff_step=[40, 120])
        assert torch.equal(out[5], is_mmff)
        seen.append(out[3][is_mmff])
    labels = torch.cat(seen)  # lam * sigma_step (+ extra noise) for every input
    assert (labels <= sig[120] * 1.0001 + sig[99]).all()
    for step in (40, 120):  # inputs at lam = 1 without extra noise carry exactly sigma_step
        assert torch.isclose(labels, sig[step]).any()
    out = make_inputs(sched, numbers, x0, 5 * disp, mol, 8, is_mmff, torch.Generator().manual_seed(1),
                      mmff_step=[0, 40])
    drew_zero = is_mmff & ~out[5]
    assert drew_zero.any() and out[5].any() and (out[4][drew_zero] == 1).all()
    data = _data()
    tr = Trainer(TrainConfig(out=str(tmp_path / "run"), batch_size=4, model=TINY, steps=1, mmff_fraction=0.5,
                             mmff_step=(40, 120)), data, data, progress=False)
    assert "presented at step 40 or 120 (one drawn per input)" in tr.card()["training"]["data"]


def test_mmff_starts_equal_to_their_references_are_no_noise_and_the_run_says_so(tmp_path):
    ms = MoleculeSet.from_atoms_list(small_molecules())
    same = TrainingData(ms, ms.positions.copy())  # references that are MMFF94 minima already
    assert not same.has_mmff.any() and not len(same.mmff_ids)
    assert _data().has_mmff.all()  # 0.05 A away: structured noise
    cfg = TrainConfig(out=str(tmp_path / "run"), batch_size=4, model=TINY, steps=1, mmff_fraction=0.5)
    tr = Trainer(cfg, same, same, progress=False)
    with pytest.warns(UserWarning, match="no training molecule has a usable MMFF94 start"):
        tr._warn_without_mmff()


def test_max_mmff_rmsd_decides_which_far_starts_become_inputs_and_the_run_records_it(tmp_path):
    """The cap is what kept the drug-like tail (starts > 1 A from their minimum) out of training:
    raised, those molecules get MMFF94 inputs; the config refuses a negative cap."""
    ms = MoleculeSet.from_atoms_list(small_molecules())
    rng = np.random.default_rng(1)
    far = ms.positions + rng.normal(0, 2.0, ms.positions.shape).astype(np.float32)  # > 1 A after alignment
    assert not TrainingData(ms, far).has_mmff.any()  # the default cap, 1 A
    assert TrainingData(ms, far, max_mmff_rmsd=50.0).has_mmff.all()
    data = TrainingData(ms, far, max_mmff_rmsd=50.0)
    tr = Trainer(TrainConfig(out=str(tmp_path / "run"), batch_size=4, model=TINY, steps=1, mmff_fraction=0.5,
                             max_mmff_rmsd=50.0), data, data, progress=False)
    assert "(starts up to 50 A from their minimum)" in tr.card()["training"]["data"]
    from ase_diffrelax.training.trainer import check_config

    with pytest.raises(ValueError, match="max_mmff_rmsd|max-mmff-rmsd"):
        check_config(TrainConfig(out=str(tmp_path / "run"), model=TINY, max_mmff_rmsd=-1.0))


def test_split_is_fixed():
    assert split_of(np.array([10, 20, 11, 21, 12, 19, 1])).tolist() == \
        ["test", "test", "val", "val", "train", "train", "val"]


def test_training_reduces_loss_and_checkpoint_round_trip(tmp_path):
    data = _data()
    cfg = TrainConfig(out=str(tmp_path / "run"), steps=60, batch_size=8, val_every=30, model=TINY, lr=2e-3)
    tr = Trainer(cfg, data, data, progress=False)
    first = tr.validate()
    tr.train()
    last = tr.history[-1]
    assert last["step"] == 60
    assert last["noise_mse_t50-150"] < first["noise_mse_t50-150"]
    # safetensors + JSON card, loaded without pickle, same predictions
    base = tmp_path / "run" / "best"
    assert base.with_suffix(".safetensors").exists()
    import os
    import stat

    for f in (base.with_suffix(".safetensors"), tmp_path / "run" / "state.safetensors"):
        assert stat.S_IMODE(os.stat(f).st_mode) & 0o044, "others must be able to read a checkpoint"
    card = json.loads(base.with_suffix(".json").read_text())
    assert card["config"]["features"] == 16 and card["training"]["steps"] in (30, 60)
    m = load_model(base)
    m2 = load_model(str(base) + ".safetensors")
    z = torch.tensor([6, 1, 1, 1, 1])
    x = torch.randn(5, 3)
    mol = torch.zeros(5, dtype=torch.long)
    a = m.net(z, x, mol, 1)
    b = m2.net(z, x, mol, 1)
    torch.testing.assert_close(a[1], b[1])
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        load_model(tmp_path / "nothing-here")


def test_resume_after_interruption_is_exact(tmp_path):
    data = _data()
    common = dict(batch_size=8, val_every=10, ckpt_every=5, model=TINY, seed=3)
    straight = Trainer(TrainConfig(out=str(tmp_path / "a"), steps=20, **common), data, data, progress=False)
    straight.train()
    # "killed" after 10 steps: a fresh Trainer resumes from the files on disk
    first = Trainer(TrainConfig(out=str(tmp_path / "b"), steps=20, **common), data, data, progress=False)
    first.train(steps=10)
    del first
    again = Trainer(TrainConfig(out=str(tmp_path / "b"), steps=20, **common), data, data, progress=False)
    assert again.resume() and again.step == 10
    again.train()
    for (k, p), q in zip(straight.net.state_dict().items(), again.net.state_dict().values()):
        torch.testing.assert_close(p, q, rtol=0, atol=0, msg=k)
    assert [h["step"] for h in again.history] == [10, 20]


def test_resume_on_a_grown_dataset_records_it_in_the_curriculum(tmp_path):
    data = _data()
    small = TrainingData(data.ms.subset(np.arange(len(data) - 3)), None)
    cfg = TrainConfig(out=str(tmp_path / "g"), steps=4, batch_size=4, val_every=100, ckpt_every=100, model=TINY)
    Trainer(cfg, small, small, progress=False).train()
    again = Trainer(TrainConfig(**{**cfg.__dict__, "steps": 8}), data, data, progress=False)
    assert again.resume()
    again.train()
    assert {"step": 4, "config_change": {"train_molecules": [len(small), len(data)]}} in again.history
    assert again.card()["curriculum"][-1]["config_change"]["train_molecules"] == [len(small), len(data)]


def test_sigterm_stops_after_the_current_step_and_saves(tmp_path):
    import os
    import signal
    import threading

    data = _data()
    cfg = TrainConfig(out=str(tmp_path / "k"), steps=1_000_000, batch_size=8, val_every=10**9, ckpt_every=10**9,
                      model=TINY, seed=3)
    trainer = Trainer(cfg, data, data, progress=False)
    timer = threading.Timer(1.5, os.kill, (os.getpid(), signal.SIGTERM))
    timer.start()
    trainer.train()
    timer.join()
    assert 0 < trainer.step < cfg.steps
    again = Trainer(cfg, data, data, progress=False)
    assert again.resume() and again.step == trainer.step


def test_tiny_model_relaxes_diffused_molecules(tiny_model):
    """End to end: the fixture trained a tiny model in seconds; every policy runs on it."""
    mols = small_molecules()[:6]
    rng = np.random.default_rng(1)
    noisy = []
    for a in mols:
        b = a.copy()
        b.positions += rng.normal(0, 0.05, b.positions.shape)
        noisy.append(b)
    for policy in ["jt:max_steps=30", "itp", "fixed:t0=20+stride=0"]:
        res = relax_many(noisy, model=tiny_model, policy=policy, progress=False, batch_size=4)
        assert len(res) == len(noisy)
        for r, a in zip(res, noisy):
            assert r.atoms.get_chemical_symbols() == a.get_chemical_symbols()
            assert np.all(np.isfinite(r.atoms.positions))
            assert r.steps >= 1
            assert r.status in ("converged", "max_steps")
        if policy.startswith("fixed"):
            assert all(r.steps == 20 for r in res)


def test_cli_trains_on_user_structures_and_resumes(tmp_path, capsys):
    from ase.io import write

    from ase_diffrelax.cli import main

    write(tmp_path / "mine.xyz", small_molecules())
    args = ["train", "--data", str(tmp_path / "mine.xyz"), "--out", str(tmp_path / "run"), "--steps", "6",
            "--batch-size", "4", "--features", "16", "--blocks", "1", "--val-every", "3", "--val-molecules", "2",
            "--no-progress", "--threads", "1"]
    assert main(args) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["step"] == 6
    state = (tmp_path / "run" / "state.safetensors").read_bytes()
    assert main(args) == 2  # never overwrites a run unless asked to resume: one line, exit 2
    assert "already holds a run" in capsys.readouterr().err
    assert (tmp_path / "run" / "state.safetensors").read_bytes() == state
    assert main(args[:6] + ["12"] + args[7:] + ["--resume"]) == 0
    m = load_model(tmp_path / "run" / "best")
    assert m.card["training"]["config"]["data"].endswith("mine.xyz")
    assert m.card["max_atoms"] == max(len(a) for a in small_molecules())


def test_cosine_lr_decay_reaches_min_lr(tmp_path):
    from ase_diffrelax.training.trainer import cosine_lr

    cfg = TrainConfig(out=str(tmp_path / "c"), steps=12, batch_size=8, val_every=100, ckpt_every=100, model=TINY,
                      lr=1e-3, min_lr=1e-5, lr_decay_start=2, lr_decay_end=10)
    assert cosine_lr(0, cfg) == cosine_lr(2, cfg) == 1e-3
    assert abs(cosine_lr(6, cfg) - (1e-5 + (1e-3 - 1e-5) / 2)) < 1e-12
    assert cosine_lr(10, cfg) == cosine_lr(50, cfg) == 1e-5
    data = _data()
    trainer = Trainer(cfg, data, data, progress=False)
    trainer.train()
    assert trainer.opt.param_groups[0]["lr"] == 1e-5


def test_init_copies_known_elements_and_adds_rows_for_new_ones(tiny_model):
    from ase_diffrelax.core.model import Denoiser, ModelConfig
    from ase_diffrelax.training.state import init_from

    cfg = ModelConfig(**{**tiny_model.net.config.todict(), "elements": (1, 6, 7, 8, 9, 16, 17)})
    net = Denoiser(cfg)
    info = init_from(net, tiny_model.path)
    assert info["copied_elements"] == [1, 6, 7, 8, 9] and info["new_elements"] == [16, 17]
    old = tiny_model.net.state_dict()
    for k, v in net.state_dict().items():
        if k == "embedding.weight":
            torch.testing.assert_close(v[:5], old[k])
            torch.testing.assert_close(v[5], old[k].mean(0))
        else:
            torch.testing.assert_close(v, old[k])
    with pytest.raises(ValueError, match="architecture must match"):
        init_from(Denoiser(ModelConfig(features=16, blocks=2, rbf=12, time_features=8)), tiny_model.path)


def test_init_into_a_deeper_net_copies_the_blocks_and_appends_trainable_zero_update_blocks(tiny_model):
    from ase_diffrelax.core.model import Denoiser, ModelConfig
    from ase_diffrelax.training.state import init_from

    cfg = tiny_model.net.config.todict()
    net = Denoiser(ModelConfig.fromdict({**cfg, "blocks": cfg["blocks"] + 1}))
    info = init_from(net, tiny_model.path)
    assert info["new_blocks"] == [cfg["blocks"]]
    old = tiny_model.net.state_dict()
    for k, v in net.state_dict().items():
        if k in old:
            torch.testing.assert_close(v, old[k])
    new_inter, new_mix = net.interactions[-1], net.mixings[-1]
    assert not new_inter.phi[-1].weight.any() and not new_mix.mlp[-1].weight.any()
    # the appended block adds nothing to the features yet, but it learns: its zeroed layers get gradients
    a = small_molecules()[3]
    numbers, x = torch.as_tensor(a.numbers), torch.as_tensor(a.positions, dtype=torch.float32)
    mol = torch.zeros(len(a), dtype=torch.long)
    t_hat, eps = net(numbers, x + 0.1 * torch.randn_like(x), mol, 1, t_frac=torch.tensor([0.05]))
    (t_hat.sum() + (eps**2).sum()).backward()
    assert new_inter.phi[-1].weight.grad.abs().sum() > 0 and new_mix.mlp[-1].weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="add blocks to a checkpoint, not drop them"):
        init_from(Denoiser(ModelConfig.fromdict({**cfg, "blocks": cfg["blocks"] - 1})), tiny_model.path)


def test_init_into_a_wider_net_repeats_the_channels_and_keeps_the_function(tiny_model):
    from ase_diffrelax.core.model import Denoiser, ModelConfig
    from ase_diffrelax.training.state import init_from, widen_state

    cfg = tiny_model.net.config.todict()
    a = small_molecules()[3]
    numbers, x = torch.as_tensor(a.numbers), torch.as_tensor(a.positions, dtype=torch.float32)
    x = x + 0.05 * torch.randn(x.shape, generator=torch.Generator().manual_seed(0))
    mol = torch.zeros(len(a), dtype=torch.long)
    with torch.no_grad():
        t_ref, eps_ref = tiny_model.net(numbers, x, mol, 1, t_frac=torch.tensor([0.05]))
    # exact without jitter: the layer norms and vector rescaling see the same channel statistics
    wide = Denoiser(ModelConfig.fromdict({**cfg, "features": 2 * cfg["features"]}))
    wide.load_state_dict(widen_state(tiny_model.net.state_dict(), cfg["features"], 2, cfg["time_features"],
                                     jitter=0.0))
    with torch.no_grad():
        t_w, eps_w = wide(numbers, x, mol, 1, t_frac=torch.tensor([0.05]))
    torch.testing.assert_close(eps_w, eps_ref, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(t_w, t_ref, atol=1e-6, rtol=1e-5)
    # through --init: jittered (so the repeats can separate), close to the checkpoint's function
    net = Denoiser(ModelConfig.fromdict({**cfg, "features": 3 * cfg["features"]}))
    info = init_from(net, tiny_model.path)
    assert info["width_factor"] == 3 and info["new_blocks"] == []
    w = net.interactions[0].phi[0].weight
    assert not torch.equal(w[: cfg["features"]], w[cfg["features"]: 2 * cfg["features"]])
    with torch.no_grad():
        _, eps_j = net(numbers, x, mol, 1, t_frac=torch.tensor([0.05]))
    assert float((eps_j - eps_ref).norm() / eps_ref.norm()) < 0.05
    deeper = Denoiser(ModelConfig.fromdict({**cfg, "features": 2 * cfg["features"], "blocks": cfg["blocks"] + 1}))
    assert init_from(deeper, tiny_model.path)["new_blocks"] == [cfg["blocks"]]
    with pytest.raises(ValueError, match="whole factor"):
        init_from(Denoiser(ModelConfig.fromdict({**cfg, "features": cfg["features"] + 8})), tiny_model.path)


def test_cli_fine_tunes_a_checkpoint_on_an_xtb_dataset_with_new_elements(tiny_model, tmp_path, capsys):
    pytest.importorskip("tblite")
    from ase_diffrelax.cli import main
    from ase_diffrelax.training.xtb_dataset import BuildProtocol, assemble, build_dataset

    entries = [(k, s, "val" if k % 4 == 0 else "train") for k, s in
               enumerate(["CCO", "CCCl", "CSC", "ClCCO", "CC(=O)O", "CCS", "OCCCl", "CN"])]
    build_dataset(entries, tmp_path / "ds", protocol=BuildProtocol(optimizer="tblite-lbfgs", fmax=0.05,
                                                                   accept_fmax=0.06), log=lambda m: None)
    assemble(tmp_path / "ds")
    rc = main(["train", "--data", str(tmp_path / "ds" / "dataset.npz"), "--init", str(tiny_model.path),
               "--elements", "S,Cl", "--out", str(tmp_path / "ft"), "--steps", "6", "--batch-size", "4",
               "--val-every", "3", "--no-progress", "--threads", "1", "--blocks", "3"])
    assert rc == 0
    ft = load_model(tmp_path / "ft" / "best")
    assert set(ft.elements) == {1, 6, 7, 8, 9, 16, 17}
    assert ft.net.config.blocks == 3 == tiny_model.net.config.blocks + 1  # --blocks grows the checkpoint
    capsys.readouterr()
    assert main(["train", "--data", str(tmp_path / "ds" / "dataset.npz"), "--init", str(tiny_model.path),
                 "--out", str(tmp_path / "ft1"), "--steps", "2", "--no-progress", "--blocks", "1"]) != 0
    assert "not drop them" in capsys.readouterr().err
    assert ft.card["training"]["init"] == str(tiny_model.path)
    from ase_diffrelax.training.xtb_dataset import load_xtb_dataset

    assert ft.card["training"]["train_molecules"] == len(load_xtb_dataset(tmp_path / "ds" / "dataset.npz", "train"))
    assert ft.level_of_theory == "GFN2-xTB"  # from the dataset's card, though loaded by path
    from ase_diffrelax import atoms_from_smiles

    res = relax_many([atoms_from_smiles("ClCCS")], model=ft, progress=False)  # S and Cl relax with no error
    assert res[0].status in ("converged", "max_steps")


def _train_args(data, out, *extra):
    return ["train", "--data", str(data), "--out", str(out), "--steps", "4", "--batch-size", "4", "--features", "16",
            "--blocks", "1", "--val-every", "2", "--val-molecules", "2", "--no-progress", "--threads", "1", *extra]


@pytest.mark.parametrize("damage,message", [
    ("nan", "frame 3: NaN"), ("overlap", "frame 3: atoms 0 and 1 overlap"), ("element", "frame 3: element S"),
    ("empty", "empty file")])
def test_training_refuses_bad_data_naming_the_frame(tmp_path, capsys, damage, message):
    from ase.io import write

    from ase_diffrelax.cli import main

    mols = small_molecules()
    if damage == "nan":
        mols[3].positions[1, 0] = np.nan
    elif damage == "overlap":
        mols[3].positions[1] = mols[3].positions[0] + 0.1
    elif damage == "element":
        mols[3].numbers[0] = 16
    path = tmp_path / "mine.extxyz"
    write(path, mols) if damage != "empty" else path.write_text("")
    assert main(_train_args(path, tmp_path / "run")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err


@pytest.mark.parametrize("option,value", [("--lr-decay", "10:5"), ("--val-every", "0"), ("--ckpt-every", "0"),
                                          ("--steps", "-1"), ("--lr", "0"), ("--low-t-weight", "0"),
                                          ("--low-t-max", "0"), ("--local-fraction", "1.5"),
                                          ("--mmff-step", "1000"), ("--mmff-step", "-1"),
                                          ("--mmff-step", "40,1000")])
def test_training_refuses_impossible_numbers(tmp_path, capsys, option, value):
    from ase.io import write

    from ase_diffrelax.cli import main

    write(tmp_path / "mine.xyz", small_molecules())
    assert main(_train_args(tmp_path / "mine.xyz", tmp_path / "run", option, value)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and option.lstrip("-") in err[0], err
    assert not (tmp_path / "run" / "state.json").exists()


@pytest.mark.parametrize("device,message", [("cuda", "CUDA is not available"), ("gpu0", "not a torch device")])
def test_training_names_a_device_it_cannot_use(tmp_path, capsys, device, message):
    from ase.io import write

    from ase_diffrelax.cli import main

    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    write(tmp_path / "mine.xyz", small_molecules())
    assert main(_train_args(tmp_path / "mine.xyz", tmp_path / "run", "--device", device)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0] and device in err[0], err


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_cuda_run_takes_the_cpu_run_s_batches(tmp_path):
    """Noise and steps are drawn on the CPU, so the first losses on CUDA equal the CPU run's."""
    data = _data()
    losses = {}
    for device in ("cpu", "cuda"):
        tr = Trainer(TrainConfig(out=str(tmp_path / device), batch_size=8, model=TINY, seed=3, device=device),
                     data, data, progress=False)
        assert next(tr.net.parameters()).device.type == device
        losses[device] = [tr.optimizer_step() for _ in range(3)]
        assert np.isfinite(tr.validate()["val_score"])
    np.testing.assert_allclose(losses["cuda"], losses["cpu"], rtol=1e-3)


def test_resume_with_other_data_is_refused(tmp_path, capsys):
    from ase.io import write

    from ase_diffrelax.cli import main

    write(tmp_path / "a.xyz", small_molecules())
    write(tmp_path / "b.xyz", small_molecules()[::-1])
    assert main(_train_args(tmp_path / "a.xyz", tmp_path / "run")) == 0
    capsys.readouterr()
    assert main(_train_args(tmp_path / "b.xyz", tmp_path / "run", "--resume")) == 2
    err = capsys.readouterr().err
    assert "--data" in err and "b.xyz" in err and "a.xyz" in err
    assert load_model(tmp_path / "run" / "best").card["training"]["config"]["data"].endswith("a.xyz")
