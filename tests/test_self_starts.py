"""Self starts: a checkpoint's own ends from the training molecules' MMFF94 starts, as training inputs."""
import json

import numpy as np
import pytest
import torch

pytest.importorskip("tblite")

pytestmark = pytest.mark.filterwarnings("ignore:.*smaller than the smallest training molecule")
MODEL = "moses-painn128-jt11"


@pytest.fixture(scope="module")
def self_starts(xtb_dataset, tmp_path_factory):
    from ase_diffrelax.training.self_starts import assemble, build

    out = tmp_path_factory.mktemp("self")
    logs = []
    assert build(xtb_dataset, out, MODEL, chunk_size=2, shard=(0, 2), log=logs.append) == 1
    assert build(xtb_dataset, out, MODEL, chunk_size=2, log=logs.append) == 1  # only the chunk not on disk
    assert build(xtb_dataset, out, MODEL, chunk_size=2, log=logs.append) == 0
    return out, assemble(xtb_dataset, out)


def test_self_starts_are_the_models_own_ends_and_build_resumes(xtb_dataset, self_starts):
    from ase import Atoms

    from ase_diffrelax import relax_many
    from ase_diffrelax.training.local_minima import load_local_minima
    from ase_diffrelax.training.xtb_dataset import read_dataset

    out, summary = self_starts
    records = {a.info["id"]: a for a in read_dataset(xtb_dataset, "train")}
    assert summary["molecules"] + summary["failed"] == summary["of"] == len(records)
    assert summary["model"] == [f"{MODEL} (jt)"]
    ends = load_local_minima(out / "self_starts.npz")
    assert ends and set(ends) <= set(records)
    mid = sorted(ends)[0]
    a = records[mid]
    again = relax_many([Atoms(a.numbers, a.arrays["positions_mmff"])], model=MODEL, progress=False, seeds=[mid],
                       restore_hydrogens=False)[0]
    np.testing.assert_allclose(ends[mid], again.atoms.positions, atol=1e-4)
    assert not np.allclose(ends[mid], a.arrays["positions_mmff"], atol=1e-2)  # it moved


def test_training_draws_self_starts_among_the_mmff_inputs_at_their_step(xtb_dataset, self_starts, tmp_path):
    from ase_diffrelax.chem.rmsd import kabsch_rmsd
    from ase_diffrelax.cli import main
    from ase_diffrelax.core.schedule import NoiseSchedule
    from ase_diffrelax.training.local_minima import load_local_minima
    from ase_diffrelax.training.noising import TrainingData, make_inputs
    from ase_diffrelax.training.xtb_dataset import load_xtb_dataset

    out, _ = self_starts
    ends = load_local_minima(out / "self_starts.npz")
    ref, mm = load_xtb_dataset(xtb_dataset, "train"), load_xtb_dataset(xtb_dataset, "train", geometry="mmff")
    plain = TrainingData(ref, mm.positions)
    data = TrainingData(ref, mm.positions, self_starts=ends, self_fraction=0.5)
    has = np.array([int(i) in ends for i in ref.ids])
    assert np.array_equal(data.has_self, has) and data.has_mmff.all()
    from ase_diffrelax.chem.rmsd import kabsch_rmsd as rmsd_of

    o = ref.offsets
    r = np.array([rmsd_of(ends[int(i)], ref.positions[o[m]:o[m + 1]]) if has[m] else np.inf
                  for m, i in enumerate(ref.ids)])
    cut = float(np.median(r[has]))
    tight = TrainingData(ref, mm.positions, self_starts=ends, self_fraction=0.5, self_max_rmsd=cut + 1e-6)
    assert np.array_equal(tight.has_self, r <= cut + 1e-6) and 0 < tight.has_self.sum() <= has.sum()
    rng = np.random.default_rng(0)
    state = rng.bit_generator.state
    ids = np.arange(len(ref))
    assert not plain.draw_self(np.tile(ids, 10), np.ones(10 * len(ids), bool), rng).any()
    assert rng.bit_generator.state == state  # off: no draws, so older runs keep their batches
    many = np.tile(ids, 200)
    drawn = data.draw_self(many, np.ones(len(many), bool), rng)
    assert not drawn[~has[many]].any() and 0.4 < drawn[has[many]].mean() < 0.6
    assert not data.draw_self(many, np.zeros(len(many), bool), rng).any()  # only among MMFF94 inputs
    own = has.copy()
    numbers, x0, disp, mol = data.gather(ids, None, own)
    _, x0_plain, disp_plain, _ = plain.gather(ids)
    np.testing.assert_allclose(x0.numpy(), x0_plain.numpy())  # the target stays the global minimum
    for m in ids:
        rows = (mol == m).numpy()
        start = ends[int(ref.ids[m])] if own[m] else mm.positions[o[m]:o[m + 1]]
        assert kabsch_rmsd(x0[rows].numpy() + disp[rows].numpy(), start) < 1e-4
    # presented at the override step: at full displacement without extra noise, labelled sigma_30
    sched = NoiseSchedule(1000, 1e-5)
    sig = torch.as_tensor(sched.sigma, dtype=torch.float64)
    is_mmff = torch.ones(len(ids), dtype=torch.bool)
    override = torch.from_numpy(np.where(own, 30, 0))
    labels = []
    for seed in range(40):
        x_t, t, eps, sigma, scale, presented = make_inputs(sched, numbers, x0, disp, mol,
                                                           len(ids), is_mmff, torch.Generator().manual_seed(seed),
                                                           mmff_step=80, step_override=override)
        assert presented.all()
        labels.append(sigma[torch.from_numpy(own)])
        assert (sigma[~torch.from_numpy(own)] <= sig[80] * 1.0001 + sig[99]).all()
    labels = torch.cat(labels)
    assert (labels <= sig[30] * 1.0001 + sig[99]).all() and torch.isclose(labels, sig[30]).any()
    # the CLI: a short run names them in its card; without MMFF94 inputs or a dataset it refuses
    run = tmp_path / "run"
    args = ["train", "--data", str(xtb_dataset), "--out", str(run), "--steps", "2", "--batch-size", "4",
            "--features", "16", "--blocks", "1", "--val-every", "2", "--val-molecules", "1", "--no-progress",
            "--threads", "1", "--mmff-fraction", "0.5", "--self-starts", str(out / "self_starts.npz")]
    assert main(args + ["--self-weight", "4"]) == 0
    card = json.loads((run / "last.json").read_text())
    assert "presented at step 30 with loss weight x4" in card["training"]["data"]
    assert card["training"]["config"]["self_fraction"] == 0.5
    assert main(args[:4] + [str(tmp_path / "r2")] + args[5:-4] + ["--mmff-fraction", "0", "--self-starts",
                                                                str(out / "self_starts.npz")]) != 0
    assert main(["train", "--out", str(tmp_path / "r3"), "--steps", "2", "--no-progress",
                 "--self-starts", str(out / "self_starts.npz")]) != 0  # QM9 has no self starts


TINY = {"features": 16, "blocks": 1, "rbf": 8, "cutoff": 5.0, "elements": [1, 6, 7, 8], "time_features": 8}


def _all_self(xtb_dataset, self_starts):
    """The training split and its TrainingData with every MMFF94 input of a molecule with an end drawn as one."""
    from ase_diffrelax.training.local_minima import load_local_minima
    from ase_diffrelax.training.noising import TrainingData
    from ase_diffrelax.training.xtb_dataset import load_xtb_dataset

    ends = load_local_minima(self_starts[0] / "self_starts.npz")
    ref, mm = load_xtb_dataset(xtb_dataset, "train"), load_xtb_dataset(xtb_dataset, "train", geometry="mmff")
    return ref, TrainingData(ref, mm.positions, self_starts=ends, self_fraction=1.0)


def test_self_weight_scales_only_the_self_inputs_noise_loss(xtb_dataset, self_starts, tmp_path):
    from ase_diffrelax.training.trainer import TrainConfig, Trainer

    ref, data = _all_self(xtb_dataset, self_starts)
    ids = np.arange(len(ref))
    losses = {}
    for w in (1.0, 16.0):
        torch.manual_seed(0)
        tr = Trainer(TrainConfig(out=str(tmp_path / f"w{w}"), batch_size=len(ids), model=TINY, time_weight=0.0,
                                 self_weight=w), data, data, progress=False)
        half = ids % 2 == 0  # MMFF94 inputs (all self starts at fraction 1) beside Gaussian ones
        batch = tr.batch(data, ids, half)
        assert batch[5] is not None and torch.equal(batch[5] == 30, torch.from_numpy(half & data.has_self))
        losses[w] = tr.loss(tr.net, batch, torch.Generator().manual_seed(3), 1.0)[0].item()
        plain = (*batch[:5], None)
        losses[w, "none"] = tr.loss(tr.net, plain, torch.Generator().manual_seed(3), 1.0)[0].item()
    assert losses[1.0] != pytest.approx(losses[16.0], rel=1e-3)  # normalised: only the balance moves
    assert losses[1.0, "none"] == pytest.approx(losses[16.0, "none"], rel=1e-6)  # nothing else moves


def test_self_inputs_train_the_noise_head_at_their_step_and_not_the_time_head(xtb_dataset, self_starts, tmp_path):
    from ase_diffrelax.training.trainer import TrainConfig, Trainer

    ref, data = _all_self(xtb_dataset, self_starts)
    torch.manual_seed(0)
    tr = Trainer(TrainConfig(out=str(tmp_path / "run"), batch_size=4, model=TINY), data, data, progress=False)
    ids = np.flatnonzero(data.has_self)[:1]
    batch = tr.batch(data, ids, np.ones(1, bool))
    assert int(batch[5][0]) == 30
    # the time head gets no gradient from a batch of self inputs; the noise head sees t = 30 even
    # with teacher forcing 0 (the time head's reading is not used)
    loss, aux = tr.loss(tr.net, batch, torch.Generator().manual_seed(1), 0.0)
    tr.net.zero_grad()
    loss.backward()
    time_params = [p for n, p in tr.net.named_parameters() if n.startswith("time")]
    assert time_params and all(p.grad is None or not p.grad.any() for p in time_params)
    assert int(aux["t"][0]) <= 30
    plain = (*batch[:5], None)  # the same input as a plain MMFF94 input: the time head learns it
    loss, _ = tr.loss(tr.net, plain, torch.Generator().manual_seed(1), 0.0)
    tr.net.zero_grad()
    loss.backward()
    assert any(p.grad is not None and p.grad.any() for p in time_params)
