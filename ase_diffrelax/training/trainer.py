"""Training: MoreRed-JT on equilibrium geometries, plus MMFF94 starts as structured noise
(the inputs: ``noising.py``).

The loss is noise-MSE + time_weight * (time-head error)^2. MoreRed regresses t/T with weight
(1 - eta) = 0.1; that leaves the time head at a ~20-step error below t = 50, so a strict
"t_hat <= 0" stop is never reached. We regress log(sigma) instead (sigma = the per-coordinate
deviation scale, exact for MMFF inputs too) with weight 1: relative accuracy at low t.
Checkpoints (model, EMA, optimiser, RNG, data cursor) are safetensors + JSON, written
atomically, so a run killed at any moment resumes from its last checkpoint.
"""
from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from ..chem.rmsd import kabsch_align
from ..core.checkpoint import save_model
from ..core.denoise import denoise
from ..core.device import pick_device
from ..core.model import Denoiser, ModelConfig, molecule_pairs, remove_mean
from ..files import atomic_save_tensors, atomic_write_json
from .data import load_qm9, mmff_starts
from .distributed import ShardLoss, any_rank, barrier, distributed_context, from_rank0
from .noising import TrainingData, make_inputs, mmff_steps, subset_per_atom
from .state import init_from, load_optimizer, optimizer_tensors


@dataclass
class TrainConfig:
    out: str = "runs/default"
    steps: int = 100_000
    batch_size: int = 64
    lr: float = 5e-4
    min_lr: float = 1e-5
    weight_decay: float = 0.0
    time_weight: float = 1.0
    ema_decay: float = 0.999
    grad_clip: float = 0.5
    mmff_fraction: float = 0.4
    teacher_forcing: float = 0.5  # fraction of molecules whose noise head sees the true t
    # noise-loss weight of molecules at t <= low_t_max (relaxation ends there; MMFF94 starts sit at
    # t-hat 27-40); the weights are normalised per batch, so the noise/time balance is unchanged
    low_t_weight: float = 1.0
    low_t_max: int = 50
    val_every: int = 1000
    ckpt_every: int = 250
    val_molecules: int = 384
    plateau_patience: int = 4
    # cosine decay of the learning rate from lr (at lr_decay_start) to min_lr (at lr_decay_end);
    # replaces the plateau halving when set. 0, 0 = off.
    lr_decay_start: int = 0
    lr_decay_end: int = 0
    seed: int = 0
    threads: int = 0
    max_train_molecules: int = 0  # 0 = all of the train split
    data: str = ""  # ASE-readable file, ASE db, or an xTB dataset .npz (ase-diffrelax dataset); "" = QM9
    # local_minima.npz (training/local_minima.py): MMFF94 inputs of an xTB dataset are built on each
    # molecule's local minimum at MMFF94's torsions, and only molecules that have one get MMFF inputs
    local_minima: str = ""
    # below 1: each MMFF94 input of a molecule with a local minimum is built on it with this probability,
    # on the global minimum otherwise, and molecules without one keep their global MMFF94 inputs
    local_fraction: float = 1.0
    # self_starts.npz (training/self_starts.py): a checkpoint's own ends from the training molecules'
    # MMFF94 starts; this fraction of the MMFF94 inputs of molecules that have one start from it
    # instead, presented at self_step (the step the finish holds at), toward the global minimum
    self_starts: str = ""
    self_fraction: float = 0.5
    self_step: int = 30
    self_weight: float = 1.0  # their noise-loss weight relative to an MMFF94 input's (relative-error) one
    self_max_rmsd: float = 1.0  # A, all atoms, aligned: only ends this close to the minimum are used
    # A, all atoms, aligned: training molecules whose MMFF94 start lies farther from their minimum get
    # no MMFF94 inputs (validation keeps 1.0, so its numbers compare across runs)
    max_mmff_rmsd: float = 1.0
    # > 0: MMFF94 inputs presented unshrunk at this step, where the time head reads real starts
    # (noising.make_inputs); 0: at the step of their real deviation, shrunk as a Gaussian input there.
    # A list: each MMFF94 input draws one of its steps.
    mmff_step: int | list[int] = 0
    init: str = ""  # checkpoint (name or path) whose weights start the run; new elements get new rows
    compile: bool = False  # torch.compile the network's blocks: faster steps after a ~30 s warm-up
    # where the network runs: "auto" = CUDA when available. Noise and steps are drawn on the CPU from
    # the run's seeded generators either way, so a run takes the same batches on any device.
    device: str = "auto"
    model: dict = field(default_factory=lambda: ModelConfig().todict())


def check_config(cfg: TrainConfig) -> None:
    """Numbers a run cannot use, refused before anything is loaded (one line each)."""
    whole = {"steps": 1, "batch_size": 1, "val_every": 1, "ckpt_every": 1, "val_molecules": 1, "plateau_patience": 1,
             "threads": 0, "max_train_molecules": 0, "lr_decay_start": 0, "lr_decay_end": 0, "low_t_max": 1}
    for name, low in whole.items():
        value = getattr(cfg, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name.replace('_', '-')} = {value!r}: must be a whole number >= {low}")
    steps = mmff_steps(cfg.mmff_step)
    if not steps or any(isinstance(s, bool) or not isinstance(s, int) or not 0 <= s < 1000 for s in steps):
        raise ValueError(f"mmff-step = {cfg.mmff_step!r}: whole numbers in [0, 999], below the schedule's "
                         "1000 steps (0 = off)")
    for name, low, high in (("lr", 0.0, 1.0), ("min_lr", 0.0, 1.0), ("mmff_fraction", 0.0, 1.0),
                            ("local_fraction", 0.0, 1.0), ("self_fraction", 0.0, 1.0),
                            ("self_weight", 0.0, math.inf), ("self_max_rmsd", 0.0, math.inf),
                            ("max_mmff_rmsd", 0.0, math.inf),
                            ("teacher_forcing", 0.0, 1.0), ("ema_decay", 0.0, 1.0), ("grad_clip", 0.0, math.inf),
                            ("weight_decay", 0.0, math.inf), ("time_weight", 0.0, math.inf),
                            ("low_t_weight", 0.0, math.inf)):
        value = float(getattr(cfg, name))
        if not (math.isfinite(value) or value == high) or not low <= value <= high:
            raise ValueError(f"{name.replace('_', '-')} = {value!r}: must lie in [{low}, {high}]")
    if cfg.lr <= 0:
        raise ValueError(f"lr = {cfg.lr!r}: must be > 0")
    if cfg.low_t_weight <= 0:
        raise ValueError(f"low-t-weight = {cfg.low_t_weight!r}: must be > 0")
    a, b = cfg.lr_decay_start, cfg.lr_decay_end
    if (a, b) != (0, 0) and not a < b:
        raise ValueError(f"--lr-decay {a}:{b}: the cosine decay must end after it starts (START < END)")
    if isinstance(cfg.self_step, bool) or not isinstance(cfg.self_step, int) or not 1 <= cfg.self_step < 1000:
        raise ValueError(f"self-step = {cfg.self_step!r}: a whole number in [1, 999]")
    pick_device(cfg.device)  # an unknown or absent device is named before anything is loaded
    for flag, path, module in (("--local-minima", cfg.local_minima, "local_minima"),
                               ("--self-starts", cfg.self_starts, "self_starts")):
        if path and not cfg.data.endswith(".npz"):
            raise ValueError(f"{flag}: needs --data DATASET.npz (an 'ase-diffrelax dataset' build)")
        if path and not Path(path).is_file():
            raise ValueError(f"{flag} {path}: no such file (python -m ase_diffrelax.training.{module} "
                             "assemble writes it)")
    if cfg.self_starts and not cfg.mmff_fraction:
        raise ValueError("--self-starts: self starts are drawn among the MMFF94 inputs; --mmff-fraction is 0")


class Trainer:
    def __init__(self, cfg: TrainConfig, data: TrainingData | None = None, val: TrainingData | None = None,
                 progress: bool = True):
        check_config(cfg)
        self.cfg = cfg
        self.rank, self.world = distributed_context()
        self.out = Path(cfg.out)
        self.out.mkdir(parents=True, exist_ok=True)
        progress = progress and self.rank == 0
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        torch.manual_seed(cfg.seed)
        self.device = training_device(cfg.device, self.world)
        self.net = Denoiser(ModelConfig.fromdict(cfg.model))
        if cfg.init:
            init_from(self.net, cfg.init)
        self.schedule = self.net.schedule
        self.ema = Denoiser(ModelConfig.fromdict(cfg.model))
        self.ema.load_state_dict(self.net.state_dict())
        self.ema.requires_grad_(False)
        self.net.to(self.device)
        self.ema.to(self.device)
        if cfg.compile:
            self.net.compile_blocks()
            self.ema.compile_blocks()
        self.opt = torch.optim.AdamW(self.net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.step = 0
        self.wall = 0.0
        self.best_val = math.inf
        self.bad_evals = 0
        self.history: list[dict] = []
        self.gen = torch.Generator().manual_seed(cfg.seed)
        self.rng = np.random.default_rng(cfg.seed)
        self.progress = progress
        self.data, self.val = data, val
        self.train_molecules = None  # training-set size the resumed run had seen

    # data is loaded lazily so that resume() can check the run before the slow part
    def ensure_data(self):
        loading = self.data is None
        if self.data is None and self.cfg.data.endswith(".npz"):
            self._xtb_dataset()
        if self.data is None:
            if self.cfg.data:  # the user's own equilibrium structures; same index rule for the split
                from .data import load_structures

                ms = load_structures(self.cfg.data)
                ms.ids = np.arange(len(ms), dtype=np.int64) + 1
                mm = mmff_starts(ms, name="") if self.cfg.mmff_fraction > 0 else None
            else:
                ms = load_qm9()
                mm = mmff_starts() if self.cfg.mmff_fraction > 0 else None
            train_sel = np.nonzero(ms.ids % 10 >= 2)[0]
            if self.cfg.max_train_molecules:
                train_sel = train_sel[: self.cfg.max_train_molecules]
            val_all = np.nonzero(ms.ids % 10 == 1)[0]  # a fixed random sample: QM9 order correlates with size
            val_sel = np.sort(np.random.default_rng(12345).permutation(val_all)[: self.cfg.val_molecules])
            sub = lambda sel: (ms.subset(sel), None if mm is None else subset_per_atom(ms, mm, sel))
            self.data = TrainingData(*sub(train_sel), max_mmff_rmsd=self.cfg.max_mmff_rmsd)
            self.val = TrainingData(*sub(val_sel))
            if np.any(self.data.ms.ids % 10 == 0):
                raise ValueError("training data contains QM9 test-split molecules (Index % 10 == 0)")
        if loading:
            self._warn_without_mmff()

    def check_data(self) -> None:
        from .data import check_molecules

        user_file = bool(self.cfg.data) and not self.cfg.data.endswith(".npz")
        for part in (self.data, self.val):
            check_molecules(part.ms, self.cfg.model["elements"], self.cfg.data or "QM9", frames=user_file)

    def _xtb_dataset(self):
        """A dataset from ``ase-diffrelax dataset``: its train/val split, its MMFF94 minima as starts."""
        from .xtb_dataset import load_xtb_dataset

        parts = {}
        for split in ("train", "val"):
            ref = load_xtb_dataset(self.cfg.data, split)
            mm = load_xtb_dataset(self.cfg.data, split, geometry="mmff")
            if split == "train" and self.cfg.max_train_molecules:
                keep = np.arange(min(len(ref), self.cfg.max_train_molecules))
                ref, mm = ref.subset(keep), mm.subset(keep)
            if split == "val" and len(ref) > self.cfg.val_molecules:
                keep = np.sort(np.random.default_rng(12345).permutation(len(ref))[: self.cfg.val_molecules])
                ref, mm = ref.subset(keep), mm.subset(keep)
            local = own = None
            if split == "train":
                from .local_minima import load_local_minima  # id -> positions; self_starts.npz has the same layout

                local = load_local_minima(self.cfg.local_minima) if self.cfg.local_minima else None
                own = load_local_minima(self.cfg.self_starts) if self.cfg.self_starts else None
            cap = {"max_mmff_rmsd": self.cfg.max_mmff_rmsd} if split == "train" else {}
            parts[split] = TrainingData(ref, mm.positions if self.cfg.mmff_fraction > 0 else None, **cap,
                                        local_minima=local,
                                        local_fraction=self.cfg.local_fraction, self_starts=own,
                                        self_fraction=self.cfg.self_fraction if own is not None else 0.0,
                                        self_max_rmsd=self.cfg.self_max_rmsd)
        if not len(parts["train"]) or not len(parts["val"]):
            raise ValueError(f"{self.cfg.data}: needs molecules in both the 'train' and 'val' splits")
        self.data, self.val = parts["train"], parts["val"]

    def _warn_without_mmff(self) -> None:
        if self.cfg.mmff_fraction > 0 and not len(self.data.mmff_ids) and self.rank == 0:
            import warnings

            warnings.warn(f"{self.cfg.data or 'QM9'}: no training molecule has a usable MMFF94 start (none could be "
                          "built, or each equals its reference: structures that are MMFF94 minima already), so the run "
                          "trains on Gaussian noise only; give minima of the level you target", stacklevel=3)

    # ------------------------------------------------------------ state
    def state_paths(self):
        return self.out / "state.safetensors", self.out / "state.json"

    def save_state(self):
        if self.rank != 0:  # only rank 0 writes; the state is the same on every rank
            return
        tensors = {f"net.{k}": v for k, v in self.net.state_dict().items()}
        tensors.update({f"ema.{k}": v for k, v in self.ema.state_dict().items()})
        opt_t, opt_meta = optimizer_tensors(self.opt)
        tensors.update({f"opt.{k}": v for k, v in opt_t.items()})
        tensors["rng.torch"] = self.gen.get_state()
        meta = {
            "config": asdict(self.cfg), "step": self.step, "wall_s": self.wall, "best_val": self.best_val,
            "bad_evals": self.bad_evals, "lr": self.opt.param_groups[0]["lr"], "optimizer": opt_meta,
            "numpy_rng": self.rng.bit_generator.state, "history": self.history,
            "train_molecules": self.n_train,
        }
        st, js = self.state_paths()
        # both files carry the step; resume refuses a mismatched pair
        tensors["meta.step"] = torch.tensor([self.step])
        atomic_save_tensors(st, tensors)
        atomic_write_json(js, meta)

    def resume(self) -> bool:
        st, js = self.state_paths()
        if not (st.exists() and js.exists()):
            return False
        meta = json.loads(js.read_text())
        tensors = load_file(str(st))
        if int(tensors["meta.step"][0]) != meta["step"]:
            raise RuntimeError(f"{st} and {js} disagree on the step: a write was interrupted; "
                               "delete the newer one to resume from the other")
        self.net.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("net.")})
        self.ema.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("ema.")})
        load_optimizer(self.opt, {k[4:]: v for k, v in tensors.items() if k.startswith("opt.")}, meta["optimizer"])
        for g in self.opt.param_groups:
            g["lr"] = meta["lr"]
        self.gen.set_state(tensors["rng.torch"])
        self.rng.bit_generator.state = meta["numpy_rng"]
        self.step, self.wall = meta["step"], meta["wall_s"]
        self.best_val, self.bad_evals, self.history = meta["best_val"], meta["bad_evals"], meta["history"]
        self.train_molecules = meta.get("train_molecules")
        return True

    # ------------------------------------------------------------ steps
    def loss(self, net: Denoiser, batch, gen, teacher_forcing: float, shard: tuple[int, int] | None = None):
        """Loss of one global batch; with ``shard=(rank, world)`` only this rank's molecules go through
        the network, scaled so that the mean over ranks is the loss of the whole batch. Noise and
        steps are drawn for the whole batch on every rank (same generator state everywhere), so a
        run on N ranks takes the same steps as one process with the same global batch."""
        numbers, x0, disp, mol, is_mmff_mol, step_override = batch
        n_mol = int(mol.max()) + 1
        x_t, t, eps, sigma, loss_scale, presented = make_inputs(self.schedule, numbers, x0, disp, mol, n_mol,
                                                                is_mmff_mol, gen, mmff_step=self.cfg.mmff_step,
                                                                step_override=step_override)
        use_true_all = torch.rand(n_mol, generator=gen) < teacher_forcing
        # the small-t weight is for Gaussian inputs there; MMFF94 inputs presented at a small step keep theirs
        low_t = (t <= self.cfg.low_t_max) & ~presented
        weight = torch.where(low_t, self.cfg.low_t_weight, 1.0).float() * loss_scale
        # self starts train the finish's hold, which denoises at its fixed step whatever the time head
        # reads: their noise head sees the true step and the time head does not learn them (labelled
        # with step 30 it read the network's own ends as unfinished and lengthened every descent)
        timed = torch.ones(n_mol, dtype=torch.bool)
        if step_override is not None:
            own = step_override > 0
            weight = torch.where(own, weight * self.cfg.self_weight, weight)
            use_true_all, timed = use_true_all | own, ~own
        weight_all = weight[mol].sum()  # normaliser over the whole batch, the same on every rank
        n_mol_all, n_timed_all = n_mol, int(timed.sum())
        if shard is not None:
            rank, world = shard
            keep_mol = torch.arange(n_mol) % world == rank
            keep = keep_mol[mol]
            remap = torch.cumsum(keep_mol.long(), 0) - 1
            numbers, x_t, eps, x0 = numbers[keep], x_t[keep], eps[keep], x0[keep]
            mol = remap[mol[keep]]
            t, sigma, use_true_all, weight = t[keep_mol], sigma[keep_mol], use_true_all[keep_mol], weight[keep_mol]
            timed = timed[keep_mol]
            n_mol = int(keep_mol.sum())
        dev = self.device
        numbers, x_t, eps, x0, mol = numbers.to(dev), x_t.to(dev), eps.to(dev), x0.to(dev), mol.to(dev)
        t, sigma, use_true_all, weight = t.to(dev), sigma.to(dev), use_true_all.to(dev), weight.to(dev)
        weight_all = weight_all.to(dev)
        pairs = molecule_pairs(mol, n_mol)
        s, v = net.representation(numbers, x_t, mol, n_mol, pairs)
        out = net.time_output(s, mol, n_mol)
        t_true = t.float() / self.schedule.T
        if net.config.time_target == "t_frac":
            t_hat, time_se = out, (out - t_true) ** 2
        else:
            t_hat, time_se = net.log_sigma_to_t_frac(out), (out - torch.log(sigma).float()) ** 2
        t_in = torch.where(use_true_all, t_true, t_hat.detach().clamp(0, 1))
        eps_hat = net.predict_noise(s, v, t_in[mol], mol, n_mol)
        noise_mse_atom = ((eps_hat - eps) ** 2).mean(-1)
        noise_mse_mol = (torch.zeros(n_mol, device=dev).index_add_(0, mol, noise_mse_atom)
                         / torch.bincount(mol, minlength=n_mol))
        noise_loss = (weight[mol] * noise_mse_atom).sum() / weight_all  # = the mean when all weights are 1
        if n_timed_all < n_mol_all:
            time_se = time_se[timed.to(dev)]
        if shard is None:
            loss = noise_loss + self.cfg.time_weight * (time_se.mean() if len(time_se) else time_se.sum())
        else:
            world = shard[1]
            loss = world * (noise_loss + self.cfg.time_weight * time_se.sum() / max(n_timed_all, 1))
        return loss, {"t": t, "t_hat": t_hat.detach(), "noise_mse": noise_mse_mol.detach(), "x_t": x_t,
                      "eps_hat": eps_hat.detach(), "mol": mol, "x0": x0}

    def optimizer_step(self, ddp=None) -> float:
        """One training step: a batch, the loss, the update, the EMA. Returns the loss."""
        batch = self.batch(self.data, *self.train_batch_ids())
        if ddp is not None:  # this rank's molecules; DDP averages the gradients over ranks
            loss = ddp(batch)
        else:
            loss, _ = self.loss(self.net, batch, self.gen, self.cfg.teacher_forcing)
        if self.cfg.lr_decay_end > self.cfg.lr_decay_start:
            for g in self.opt.param_groups:
                g["lr"] = cosine_lr(self.step, self.cfg)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.net.parameters(), self.cfg.grad_clip)
        self.opt.step()
        with torch.no_grad():
            d = min(self.cfg.ema_decay, (1 + self.step) / (10 + self.step))
            for pe, p in zip(self.ema.parameters(), self.net.parameters()):
                pe.mul_(d).add_(p.detach(), alpha=1 - d)
        self.step += 1
        return loss.item()

    def batch(self, data: TrainingData, mol_ids: np.ndarray, mmff_mask: np.ndarray):
        own = data.draw_self(mol_ids, mmff_mask, self.rng)
        local = data.draw_local(mol_ids, mmff_mask, self.rng) & ~own
        numbers, x0, disp, mol = data.gather(mol_ids, local, own)
        override = torch.from_numpy(np.where(own, self.cfg.self_step, 0).astype(np.int64)) if own.any() else None
        return numbers, x0, disp, mol, torch.from_numpy(mmff_mask), override

    def train_batch_ids(self):
        B, data = self.cfg.batch_size, self.data
        n_mmff = int(round(B * self.cfg.mmff_fraction)) if len(data.mmff_ids) else 0
        ids = np.concatenate([
            self.rng.choice(data.mmff_ids, n_mmff) if n_mmff else np.zeros(0, dtype=np.int64),
            self.rng.integers(0, len(data), B - n_mmff),
        ])
        mask = np.zeros(B, dtype=bool)
        mask[:n_mmff] = True
        return ids, mask

    @torch.no_grad()
    def validate(self) -> dict:
        """Fixed-seed validation on the val split: loss per t-range, and MMFF one-shot denoising."""
        net = self.ema
        net.eval()
        gen = torch.Generator().manual_seed(1234)
        ranges = [(1, 50), (50, 150), (150, 400), (400, 1000)]
        out = {}
        total = 0.0
        V = len(self.val)
        for lo, hi in ranges:
            mse, mae, n = 0.0, 0.0, 0
            for start in range(0, V, 128):
                ids = np.arange(start, min(V, start + 128))
                numbers, x0, disp, mol, _, _ = self.batch(self.val, ids, np.zeros(len(ids), bool))
                n_mol = len(ids)
                t = torch.randint(lo, hi + 1, (n_mol,), generator=gen)
                eps = remove_mean(torch.randn(x0.shape, generator=gen), mol, n_mol)
                x_t = self.schedule.q_sample(x0, t[mol], eps)
                dev = self.device
                t_hat, eps_hat = net(numbers.to(dev), x_t.to(dev), mol.to(dev), n_mol,
                                     t_frac=(t.float() / self.schedule.T).to(dev))
                t_hat, eps_hat = t_hat.cpu(), eps_hat.cpu()
                mse += ((eps_hat - eps) ** 2).mean().item() * n_mol
                mae += (t_hat.clamp(0, 1) * self.schedule.T - t).abs().sum().item()
                n += n_mol
            out[f"noise_mse_t{lo}-{hi}"] = mse / n
            out[f"time_mae_t{lo}-{hi}"] = mae / n
            total += mse / n
        ids = np.nonzero(self.val.has_mmff)[0]
        if len(ids):
            before, after, t_hats = [], [], []
            for start in range(0, len(ids), 128):
                sel = ids[start:start + 128]
                numbers, x0, disp, mol, _, _ = self.batch(self.val, sel, np.ones(len(sel), bool))
                n_mol = len(sel)
                x = x0 + disp
                dev = self.device  # the sampler's own path
                pred = denoise(net, self.schedule, numbers.to(dev), x.to(dev), mol.to(dev), n_mol)
                x0_hat = pred.x0_hat.cpu()
                for k in range(n_mol):
                    m = (mol == k).numpy()
                    before.append(float(np.sqrt((disp[m].numpy() ** 2).sum(1).mean())))
                    y = kabsch_align(x0_hat[m].numpy().astype(np.float64), x0[m].numpy().astype(np.float64))
                    after.append(float(np.sqrt(((y - x0[m].numpy()) ** 2).sum(1).mean())))
                t_hats.extend(pred.t_hat.cpu().tolist())
            before, after = np.array(before), np.array(after)
            out["mmff_rmsd_before_median"] = float(np.median(before))
            out["mmff_oneshot_rmsd_median"] = float(np.median(after))
            out["mmff_oneshot_ratio_median"] = float(np.median(after / before))
            out["mmff_oneshot_fail_frac"] = float(np.mean(after > before))
            out["mmff_t_hat_median"] = float(np.median(t_hats))
            total += out["mmff_oneshot_ratio_median"]
        out["val_score"] = total
        return out

    @property
    def n_train(self) -> int | None:
        """Training-set size: of the loaded data, else what the resumed state recorded."""
        return len(self.data) if self.data is not None else self.train_molecules

    def _level_of_theory(self) -> str | None:
        """What the training minima were computed with, so a checkpoint loaded by path says what it
        approximates: QM9's B3LYP, or the level in the dataset's card.json (built datasets)."""
        if not self.cfg.data:
            return "B3LYP/6-31G(2df,p)"
        card = Path(self.cfg.data).with_name("card.json")
        if card.exists():
            level = json.loads(card.read_text()).get("level_of_theory")
            return level.split(" (")[0] if level else None
        return None

    def card(self, metrics: dict | None = None) -> dict:
        steps = mmff_steps(self.cfg.mmff_step)
        presentation = " or ".join(str(s) for s in steps) + (" (one drawn per input)" if len(steps) > 1 else "")
        presentation = presentation if any(steps) else ""
        return {
            "name": Path(self.cfg.out).name,
            "description": "MoreRed-JT PaiNN denoiser (noise + time-step heads) for molecule relaxation",
            "training": {
                "data": (f"{self.cfg.data} (train split)" if self.cfg.data else
                         "QM9 (qm9pack) B3LYP/6-31G(2df,p) minima, train split (QM9 Index % 10 not in {0, 1})")
                        + (" + MMFF94 minima as structured noise" if self.cfg.mmff_fraction else "")
                        + (f" presented at step {presentation}" if self.cfg.mmff_fraction and presentation else "")
                        + (f" (starts up to {self.cfg.max_mmff_rmsd:g} A from their minimum)"
                           if self.cfg.mmff_fraction and self.cfg.max_mmff_rmsd != 1.0 else "")
                        + (f" (on local minima at MMFF94 torsions, {self.cfg.local_minima}"
                           + (f", for a fraction {self.cfg.local_fraction:g} of them)" if self.cfg.local_fraction < 1
                              else ")")
                           if self.cfg.local_minima and self.cfg.mmff_fraction else "")
                        + (f" + the ends of {self.cfg.self_starts} for a fraction {self.cfg.self_fraction:g} of "
                           f"the MMFF94 inputs, presented at step {self.cfg.self_step}"
                           + (f" with loss weight x{self.cfg.self_weight:g}" if self.cfg.self_weight != 1 else "")
                           + (f", ends within {self.cfg.self_max_rmsd:g} A of it" if self.cfg.self_max_rmsd < 1 else "")
                           if self.cfg.self_starts else ""),
                "split": ({"train": "the dataset's 'train' rows", "val": "its 'val' rows"}
                          if self.cfg.data.endswith(".npz") else
                          {"test": "Index % 10 == 0 (never trained on)", "val": "Index % 10 == 1", "train": "rest"}),
                "init": self.cfg.init or None,
                "train_molecules": self.n_train,
                "steps": self.step, "batch_size": self.cfg.batch_size, "wall_s": round(self.wall, 1),
                "config": asdict(self.cfg),
            },
            "level_of_theory": self._level_of_theory(),
            "max_atoms": int(self.data.ms.sizes().max()) if self.data is not None else None,
            "elements_seen": sorted(int(z) for z in np.unique(self.data.ms.numbers)) if self.data is not None else None,
            "validation": metrics or next((h for h in reversed(self.history) if "val_score" in h), {}),
            "curriculum": [h for h in self.history if "config_change" in h],
            "units": "positions in Angstrom; sigma_t per coordinate in Angstrom",
        }

    def train(self, steps: int | None = None, stop_after_s: float | None = None):
        """Train to ``steps``; SIGTERM/SIGINT finish the current step and save, so ``kill PID`` loses nothing."""
        import signal
        import threading

        stop: list = []
        saved = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                saved[sig] = signal.signal(sig, lambda *_: stop.append(True))
        try:
            return self._train(steps, stop_after_s, stop)
        finally:
            for sig, handler in saved.items():
                signal.signal(sig, handler)

    def _train(self, steps, stop_after_s, stop: list):
        self.ensure_data()
        self.check_data()
        if self.train_molecules is not None and self.train_molecules != len(self.data):
            # a dataset that grew between sessions (a build still running): part of the curriculum
            self.history.append({"step": self.step,
                                 "config_change": {"train_molecules": [self.train_molecules, len(self.data)]}})
        self.train_molecules = len(self.data)
        target = steps or self.cfg.steps
        bar = None
        if self.progress:
            from tqdm import tqdm

            bar = tqdm(total=target, initial=self.step, desc="train", mininterval=5, dynamic_ncols=True)
        self.net.train()
        t_start = time.time()
        last_save = time.time()
        running = None
        ddp = None
        if self.world > 1:
            from torch.nn.parallel import DistributedDataParallel

            ddp = DistributedDataParallel(ShardLoss(self), device_ids=[self.device.index] if self.device.type == "cuda"
                                          else None)
        while self.step < target:
            if any_rank(bool(stop) or (stop_after_s is not None and time.time() - t_start > stop_after_s), self.world):
                break
            t0 = time.time()
            loss = self.optimizer_step(ddp)
            self.wall += time.time() - t0
            running = loss if running is None else 0.98 * running + 0.02 * loss
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{running:.4f}", lr=f"{self.opt.param_groups[0]['lr']:.1e}", refresh=False)
            if self.step % self.cfg.val_every == 0 or self.step == target:
                metrics = self.validate() if self.rank == 0 else None
                metrics = from_rank0(metrics, self.world)  # every rank makes the same learning-rate decisions
                metrics.update(step=self.step, wall_s=round(self.wall, 1), train_loss=running,
                               lr=self.opt.param_groups[0]["lr"])
                self.history.append(metrics)
                improved = metrics["val_score"] < self.best_val
                if improved:
                    self.best_val = metrics["val_score"]
                    self.bad_evals = 0
                    if self.rank == 0:
                        save_model(self.out / "best", self.ema, self.schedule, self.card(metrics))
                else:
                    self.bad_evals += 1
                    if self.bad_evals >= self.cfg.plateau_patience and not self.cfg.lr_decay_end:
                        for g in self.opt.param_groups:
                            g["lr"] = max(self.cfg.min_lr, g["lr"] * 0.5)
                        self.bad_evals = 0
                line = json.dumps({k: (round(v, 5) if isinstance(v, float) else v) for k, v in metrics.items()})
                if self.rank == 0:
                    with open(self.out / "log.jsonl", "a") as fh:
                        fh.write(line + "\n")
                if bar is not None:
                    bar.write(line)
                self.save_state()
                last_save = time.time()
                self.net.train()
            elif self.step % self.cfg.ckpt_every == 0 or time.time() - last_save > 300:
                self.save_state()
                last_save = time.time()
        self.save_state()
        if self.rank == 0:
            save_model(self.out / "last", self.ema, self.schedule, self.card())
        barrier(self.world)  # the others wait for rank 0's last write: gloo aborts a rank that leaves early
        if bar is not None:
            bar.close()
        return self.history


def training_device(device: str, world: int) -> torch.device:
    """``--device`` resolved; under torchrun on CUDA each rank takes the GPU of its LOCAL_RANK."""
    dev = pick_device(device)
    if dev.type == "cuda" and world > 1 and dev.index is None:
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    return dev


def cosine_lr(step: int, cfg: TrainConfig) -> float:
    a, b = cfg.lr_decay_start, cfg.lr_decay_end
    frac = min(1.0, max(0.0, (step - a) / (b - a)))
    return cfg.min_lr + (cfg.lr - cfg.min_lr) * 0.5 * (1.0 + math.cos(math.pi * frac))


def run_training(cfg: TrainConfig, resume: bool = True, progress: bool = True, stop_after_s=None) -> Trainer:
    """Train into ``cfg.out``; the run folder is locked (one rank-0 process per folder), so a second
    ``train`` or ``--resume`` on a running folder is refused instead of overwriting its state."""
    from ..files import ExclusiveLock

    lock = ExclusiveLock(cfg.out, "this training run", inside=True) if int(os.environ.get("RANK", "0")) == 0 else None
    if lock is not None:
        lock.acquire()
    try:
        return _run_training(cfg, resume, progress, stop_after_s)
    finally:
        if lock is not None:
            lock.release()


def _run_training(cfg: TrainConfig, resume: bool, progress: bool, stop_after_s) -> Trainer:
    trainer = Trainer(cfg, progress=progress)
    st, js = trainer.state_paths()
    if resume and trainer.resume():
        saved = json.loads(js.read_text())["config"]
        for k in ("model", "batch_size"):
            if saved[k] != asdict(cfg)[k]:
                raise ValueError(f"--resume: {k} differs from the run in {cfg.out} ({saved[k]} != {asdict(cfg)[k]})")
        if saved.get("data", "") != cfg.data:
            raise ValueError(f"--resume: --data {cfg.data or '(QM9)'} differs from the run in {cfg.out}, which "
                             f"trained on {saved.get('data') or '(QM9)'}: resume with that data, or start a new --out "
                             "(--init can start it from this run's best checkpoint)")
        saved = {**asdict(TrainConfig()), **saved}  # options newer than the run count as their defaults
        changed = {k: [saved[k], v] for k, v in asdict(cfg).items() if saved[k] != v
                   and k in ("mmff_fraction", "teacher_forcing", "time_weight", "low_t_weight", "low_t_max", "steps", "lr",
                             "lr_decay_start", "lr_decay_end", "local_minima", "local_fraction", "mmff_step",
                             "self_starts", "self_fraction", "self_step", "self_weight",
                             "self_max_rmsd", "max_mmff_rmsd")}
        if changed:  # a curriculum change: recorded in the history, and so in the model card
            trainer.history.append({"step": trainer.step, "config_change": changed})
    elif not resume and st.exists():
        raise FileExistsError(f"{cfg.out} already holds a run; pass --resume or choose another --out")
    try:
        trainer.train(stop_after_s=stop_after_s)
    finally:
        if trainer.world > 1:
            import torch.distributed as dist

            dist.destroy_process_group()
    return trainer
