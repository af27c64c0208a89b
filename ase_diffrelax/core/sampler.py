"""The one sampler core: reverse diffusion from user structures, one model pass per step.

Every step, for all molecules in flight at once: ``denoise`` gives t_hat; the policy turns it
into the step t to denoise at and the step t_next to move to; the schedule moves x from t to
t_next (DDPM ancestral for eta = 1, deterministic DDIM for eta = 0). A molecule stops when
the step it would denoise at is <= the policy's threshold, or at ``max_steps``; its last
denoised estimate is returned, with X-H bonds the model left out of range put back
(``chem.hydrogens``; ``restore_hydrogens=False`` returns the model's own output).

The molecules in flight live in one ``Batch`` of flat tensors; a step makes no per-molecule
host round trip, so a GPU is not starved. ``run`` swaps finished molecules out (and waiting
ones in) every ``swap_every`` steps. Each molecule has its own noise generator (seeded), so
its path does not depend on which other molecules share its batch.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch

from ..chem.hydrogens import restore_hydrogen_lengths
from .denoise import denoise
from .model import molecule_pairs, remove_mean, scatter_sum
from .policy import Policy, calibrated, make_policy

RUNNING, CONVERGED, MAX_STEPS, DIVERGED = 0, 1, 2, 3
STATUS = {RUNNING: "running", CONVERGED: "converged", MAX_STEPS: "max_steps", DIVERGED: "diverged"}
NOT_FINISHING, PLAIN = -1, -2  # Batch.finish_pass before the finish, and for a molecule that gets none


@dataclass
class Molecule:
    """One structure to relax, as given by the caller (float64, input frame)."""

    numbers: np.ndarray
    positions: np.ndarray
    fixed: np.ndarray | None = None  # atoms held at their input positions
    seed: int | None = None


@dataclass
class Outcome:
    """What became of one molecule. ``positions`` are in the input frame; for a diverged
    relaxation they are the input positions, unchanged."""

    positions: np.ndarray
    status: str
    steps: int
    t_hat: float  # last predicted step (continuous)
    t_used: int  # last step denoised at
    reason: str = ""
    history: list = field(default_factory=list)  # (positions, t_hat, t_used) per step when recorded
    hydrogens_restored: int = 0  # X-H bonds put back in range at the end (chem.hydrogens)


def _per_molecule_max(values: torch.Tensor, mol: torch.Tensor, n_mol: int) -> torch.Tensor:
    out = values.new_full((n_mol,), float("-inf"))
    return out.scatter_reduce(0, mol, values, reduce="amax", include_self=True)


class Batch:
    """Molecules in flight as flat tensors: atom rows grouped by molecule (``mol``)."""

    def __init__(self, molecules: list[Molecule], ids: list[int], device, restore_hydrogens: bool = True):
        dev = torch.device(device)
        self.device = dev
        self.restore_hydrogens = restore_hydrogens
        self.ids = list(ids)  # caller's index of each molecule
        self.sizes = [len(m.numbers) for m in molecules]
        n_mol = len(molecules)
        self.numbers = torch.as_tensor(np.concatenate([np.asarray(m.numbers) for m in molecules]),
                                       dtype=torch.long, device=dev)
        x_input = torch.as_tensor(np.concatenate([np.asarray(m.positions, dtype=np.float64) for m in molecules]),
                                  device=dev)
        self.mol = torch.repeat_interleave(torch.arange(n_mol, device=dev),
                                           torch.as_tensor(self.sizes, device=dev))
        counts = torch.as_tensor(self.sizes, dtype=torch.float64, device=dev)
        self.origin = scatter_sum(x_input, self.mol, n_mol) / counts.unsqueeze(-1)
        self.x_input = x_input
        centred = x_input - self.origin[self.mol]
        self.x = centred.float()
        self.fixed = torch.as_tensor(np.concatenate([
            np.zeros(len(m.numbers), bool) if m.fixed is None else np.asarray(m.fixed, bool) for m in molecules]),
            device=dev)
        radius = _per_molecule_max(centred.norm(dim=-1), self.mol, n_mol)
        # divergence bound: no atom farther from the centre than max(50 A, 5x the input's radius)
        self.max_radius = torch.clamp(5.0 * radius, min=50.0)
        self.t_sched = torch.zeros(n_mol, dtype=torch.long, device=dev)
        self.t_used = torch.full((n_mol,), -1, dtype=torch.long, device=dev)
        self.t_hat = torch.full((n_mol,), float("nan"), device=dev)
        self.steps = torch.zeros(n_mol, dtype=torch.long, device=dev)
        self.status = torch.zeros(n_mol, dtype=torch.long, device=dev)
        # finish passes done (Policy.hold_steps, polish_steps); NOT_FINISHING before, PLAIN: never
        self.finish_pass = torch.full((n_mol,), NOT_FINISHING, dtype=torch.long, device=dev)
        self.x_out = self.x.clone()  # the estimate handed back: x0_hat at convergence, else x
        self.generators = []
        for m in molecules:
            gen = torch.Generator(device=dev)
            gen.manual_seed(int(m.seed) if m.seed is not None else int(torch.randint(0, 2**62, (1,)).item()))
            self.generators.append(gen)
        self.pairs = molecule_pairs(self.mol, n_mol)
        self.history: list[list] = [[] for _ in molecules]

    def __len__(self) -> int:
        return len(self.ids)

    def positions(self, k: int = 0) -> np.ndarray:
        """Current best estimate of molecule ``k`` in its input frame (float64)."""
        return self._estimate(k)[0]

    def _estimate(self, k: int) -> tuple[np.ndarray, int]:
        """(positions, X-H bonds restored): a finished molecule's X-H bonds that left their range
        are put back (``chem.hydrogens``) unless the batch was made with ``restore_hydrogens=False``."""
        sel = self.mol == k
        x = self.x_out[sel].double()
        fixed = self.fixed[sel]
        x_in = self.x_input[sel]
        code = int(self.status[k])
        if code == DIVERGED:
            return x_in.cpu().numpy(), 0
        if fixed.any():
            x = x + (x_in[fixed] - x[fixed]).mean(0)
            x[fixed] = x_in[fixed]
        else:
            x = x + self.origin[k]
        x = x.cpu().numpy()
        if self.restore_hydrogens and code in (CONVERGED, MAX_STEPS):
            return restore_hydrogen_lengths(self.numbers[sel].cpu().numpy(), x_in.cpu().numpy(), x,
                                            movable=~fixed.cpu().numpy())
        return x, 0

    def move_to(self, k: int, positions: np.ndarray) -> None:
        """Continue molecule ``k`` from new positions (an observer or a constraint moved it)."""
        sel = self.mol == k
        x = torch.as_tensor(np.asarray(positions, dtype=np.float64), device=self.device)
        self.origin[k] = x.mean(0)
        self.x[sel] = (x - self.origin[k]).float()
        self.x_out[sel] = self.x[sel]

    def outcome(self, k: int) -> Outcome:
        code = int(self.status[k])
        reason = ""
        if code == DIVERGED:
            reason = ("the denoising step left the physical range (non-finite coordinates or an atom more than "
                      f"{float(self.max_radius[k]):.0f} A from the centre); input positions kept")
        positions, restored = self._estimate(k)
        return Outcome(positions, STATUS[code], int(self.steps[k]), float(self.t_hat[k]),
                       int(self.t_used[k]), reason, self.history[k], restored)

    def select(self, keep: list[int]) -> "Batch":
        """A new Batch holding only molecules ``keep`` (positions in this batch), state carried over."""
        new = object.__new__(Batch)
        dev = self.device
        keep_t = torch.as_tensor(keep, dtype=torch.long, device=dev)
        atom_keep = torch.isin(self.mol, keep_t)
        remap = torch.full((len(self),), -1, dtype=torch.long, device=dev)
        remap[keep_t] = torch.arange(len(keep), device=dev)
        new.device = dev
        new.restore_hydrogens = self.restore_hydrogens
        new.ids = [self.ids[k] for k in keep]
        new.sizes = [self.sizes[k] for k in keep]
        for name in ("numbers", "x_input", "x", "fixed", "x_out"):
            setattr(new, name, getattr(self, name)[atom_keep])
        new.mol = remap[self.mol[atom_keep]]
        for name in ("origin", "max_radius", "t_sched", "t_used", "t_hat", "steps", "status", "finish_pass"):
            setattr(new, name, getattr(self, name)[keep_t])
        new.generators = [self.generators[k] for k in keep]
        new.history = [self.history[k] for k in keep]
        new.pairs = molecule_pairs(new.mol, len(keep))
        return new

    @staticmethod
    def join(a: "Batch | None", b: "Batch") -> "Batch":
        if a is None or len(a) == 0:
            return b
        new = object.__new__(Batch)
        new.device = a.device
        new.restore_hydrogens = a.restore_hydrogens
        new.ids = a.ids + b.ids
        new.sizes = a.sizes + b.sizes
        for name in ("numbers", "x_input", "x", "fixed", "x_out", "origin", "max_radius", "t_sched", "t_used",
                     "t_hat", "steps", "status", "finish_pass"):
            setattr(new, name, torch.cat([getattr(a, name), getattr(b, name)]))
        new.mol = torch.cat([a.mol, b.mol + len(a)])
        new.generators = a.generators + b.generators
        new.history = a.history + b.history
        new.pairs = molecule_pairs(new.mol, len(new))
        return new


class Sampler:
    """Reverse diffusion for many molecules at once with one Policy (calibrated once, here)."""

    def __init__(self, model, policy: Policy | str = "jt", *, device=None, final_denoise: bool = True,
                 record: bool = False, restore_hydrogens: bool = True):
        from .checkpoint import load_model

        self.model = load_model(model, device=device)
        self.device = self.model.device
        self.policy = calibrated(make_policy(policy), self.model.card)
        self.final_denoise = final_denoise
        self.record = record  # keep (positions, t_hat, t_used) of every step per molecule
        self.restore_hydrogens = restore_hydrogens  # the X-H guard on finished molecules (chem.hydrogens)
        self.n_evals = 0
        self.progress_interval_s = 1.0  # a progress bar's step count is refreshed this often

    def batch(self, molecules: list[Molecule], ids: list[int] | None = None) -> Batch:
        return Batch(molecules, list(range(len(molecules))) if ids is None else ids, self.device,
                     self.restore_hydrogens)

    def _smoothing_noise(self, b: Batch, which: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(atom rows, centred noise (copies, atoms, 3)) of each molecule in ``which``, from its own
        generator (batch-independent). Antithetic copies come in pairs +z, -z: the part of the
        network's response that is odd in the noise cancels within each pair instead of on average."""
        pol = self.policy
        k_copies = pol.smooth_copies
        out = []
        for k in torch.nonzero(which).flatten().tolist():
            r = torch.nonzero(b.mol == k).flatten()
            n_draw = (k_copies + 1) // 2 if pol.smooth_antithetic else k_copies
            z = torch.randn((n_draw, len(r), 3), generator=b.generators[k], device=b.device)
            z = z - z.mean(1, keepdim=True)
            if pol.smooth_antithetic:
                z = torch.stack([z, -z], 1).reshape(-1, len(r), 3)[:k_copies]
            out.append((r, z))
        return out

    @torch.no_grad()
    def _smoothed_x0(self, b: Batch, x0_hat: torch.Tensor, noises) -> torch.Tensor:
        """x0_hat of the smoothed molecules (whose first noisy copy was the step's main evaluation,
        already in ``x0_hat``) replaced by the mean over all ``smooth_copies`` copies at smooth_t."""
        pol, net, sched = self.policy, self.model.net, self.model.schedule
        k_rest, t = pol.smooth_copies - 1, pol.smooth_t
        if k_rest == 0:
            return x0_hat
        sigma = float(sched.sigma[t])
        xs = [(b.x[r].unsqueeze(0) + sigma * z[1:]).reshape(-1, 3) for r, z in noises]
        zs = [b.numbers[r].repeat(k_rest) for r, _ in noises]
        sizes = torch.as_tensor([len(r) for r, _ in noises for _ in range(k_rest)], device=b.device)
        copy_mol = torch.repeat_interleave(torch.arange(len(sizes), device=b.device), sizes)
        out = denoise(net, sched, torch.cat(zs), torch.cat(xs).float(), copy_mol, len(sizes),
                      lambda th: torch.full_like(th, t))
        self.n_evals += 1
        x0_hat = x0_hat.clone()
        start = 0
        for r, _ in noises:
            n = len(r) * k_rest
            copies = out.x0_hat[start:start + n].reshape(k_rest, len(r), 3)
            x0_hat[r] = (x0_hat[r] + copies.sum(0)) / (k_rest + 1)
            start += n
        return x0_hat

    @torch.no_grad()
    def step(self, b: Batch) -> None:
        """One model evaluation for every running molecule of ``b`` (finished ones are left as they are)."""
        if len(b) == 0:
            return
        net, sched, pol = self.model.net, self.model.schedule, self.policy
        mol, n_mol = b.mol, len(b)
        running = b.status == RUNNING
        first = b.steps == 0
        t_prev = b.t_used.clamp(min=0)
        n_pass, n_hold = pol.finish_passes, pol.hold_steps or 0
        n_smoothed = n_hold + (pol.smooth_steps or 0)
        finishing = b.finish_pass >= 0
        smoothing = running & finishing & (b.finish_pass >= n_hold) & (b.finish_pass < n_smoothed)

        def choose_t(th):
            t = pol.current_t(pol.calibrate(th), b.t_sched, first, t_prev)
            if n_pass:  # the finish: hold passes at hold_t, smoothed ones at smooth_t, polish at the head's t_hat
                t_pass = torch.where(b.finish_pass < n_hold, torch.full_like(th, pol.hold_t or 0),
                                     torch.where(b.finish_pass < n_smoothed, torch.full_like(th, pol.smooth_t or 0), th))
                t = torch.where(finishing, t_pass, t)
            return t

        # a policy may place the start on its noise scale (FixedPolicy.vp_start); no host sync per step
        b.x = pol.start(b.x, (first & running)[mol], sched)
        x_in, noises = b.x, None
        if n_smoothed > n_hold and bool(smoothing.any()):
            # a smoothed molecule's main evaluation is its first noisy copy (no evaluation wasted on x)
            noises = self._smoothing_noise(b, smoothing)
            x_in = b.x.clone()
            sigma = float(sched.sigma[pol.smooth_t])
            for r, z in noises:
                x_in[r] = b.x[r] + sigma * z[0]
        out = denoise(net, sched, b.numbers, x_in, mol, n_mol, choose_t, pairs=b.pairs)
        if noises:
            out.x0_hat = self._smoothed_x0(b, out.x0_hat, noises)
        t_cur = out.t
        t_next = pol.next_t(t_cur)
        noise = None
        if pol.eta > 0:
            noise = torch.cat([torch.randn((n, 3), generator=g, device=b.device)
                               for n, g in zip(b.sizes, b.generators)])
            noise = remove_mean(noise, mol, n_mol)
        x_new = remove_mean(sched.step(b.x, t_cur[mol], t_next[mol], out.eps, pol.eta, noise), mol, n_mol)
        # held atoms keep their (centred) input positions
        held = (b.x_input - b.origin[mol]).float()
        x_new = remove_mean(torch.where(b.fixed.unsqueeze(-1), held, x_new), mol, n_mol)
        self.n_evals += 1

        finite = scatter_sum((~torch.isfinite(out.x0_hat).all(-1) | ~torch.isfinite(x_new).all(-1)).long(),
                             mol, n_mol) == 0
        reach = _per_molecule_max(torch.maximum(torch.nan_to_num(out.x0_hat, nan=0.0).norm(dim=-1),
                                                torch.nan_to_num(x_new, nan=0.0).norm(dim=-1)), mol, n_mol)
        diverged = running & ~(finite & (reach <= b.max_radius))
        ok = running & ~diverged
        if n_pass:
            # read as clean on its first evaluation: no finish (held or polished, a structure already
            # at a minimum drifts off it; docs/policies.md), the policy alone as before
            plain = (b.finish_pass == PLAIN) | (first & (t_cur <= pol.clean_at))
            done_plain = ok & plain & (t_cur <= pol.threshold)
            # arriving or finishing: x becomes x0_hat; the last pass's x0_hat is the answer
            passing = ok & ~plain & (finishing | (t_cur <= pol.arrive_t))
            done_pass = torch.where(finishing, b.finish_pass + 1, torch.zeros_like(b.finish_pass))
            conv = (passing & (done_pass >= n_pass)) | done_plain
            moving = ok & ~passing & ~done_plain
            x_target = out.x0_hat
            if pol.hold_gain is not None and pol.hold_gain != 1.0:  # holds step past (or short of) x0_hat
                holding = (finishing & (b.finish_pass < n_hold))[mol].unsqueeze(-1)
                x_target = torch.where(holding, b.x + pol.hold_gain * (out.x0_hat - b.x), out.x0_hat)
            x_pass = remove_mean(torch.where(b.fixed.unsqueeze(-1), held, x_target), mol, n_mol)
            pass_atoms = (passing & ~conv)[mol].unsqueeze(-1)
            b.x = torch.where(pass_atoms, x_pass, b.x)
            b.x_out = torch.where(pass_atoms, x_pass, b.x_out)
            b.finish_pass = torch.where(passing, done_pass, torch.where(plain, PLAIN, b.finish_pass))
        else:
            plain = running  # without a finish every molecule ends where the policy says
            conv = ok & (t_cur <= pol.threshold)
            moving = ok & ~conv

        b.steps = b.steps + running.long() + smoothing.long() * max((pol.smooth_copies or 0) - 1, 0)
        b.t_hat = torch.where(running, out.t_hat, b.t_hat)
        b.t_used = torch.where(running, t_cur, b.t_used)
        b.t_sched = torch.where(moving, t_next, b.t_sched)
        move_atoms = moving[mol].unsqueeze(-1)
        b.x = torch.where(move_atoms, x_new, b.x)
        b.x_out = torch.where(move_atoms, x_new, b.x_out)
        if self.final_denoise:
            b.x_out = torch.where(conv[mol].unsqueeze(-1), out.x0_hat, b.x_out)
        status = torch.where(diverged, DIVERGED, b.status)
        status = torch.where(conv, CONVERGED, status)
        if pol.scheduled:  # scheduled policies know they have arrived: no extra evaluation needed
            status = torch.where(moving & plain & (t_next <= pol.threshold), CONVERGED, status)
            if n_pass:
                to_finish = moving & ~plain & (t_next <= pol.arrive_t)
                b.finish_pass = torch.where(to_finish, torch.zeros_like(b.finish_pass), b.finish_pass)
        status = torch.where((status == RUNNING) & (b.steps >= pol.max_steps), MAX_STEPS, status)
        b.status = status
        if self.record:
            for k in torch.nonzero(running).flatten().tolist():
                b.history[k].append((b.positions(k), float(b.t_hat[k]), int(b.t_used[k])))

    def run(self, molecules: list[Molecule], batch_size: int = 16, swap_every: int = 1,
            progress=None) -> tuple[list[Outcome], dict]:
        """Relax all ``molecules`` with at most ``batch_size`` in flight; finished ones are swapped
        out for waiting ones every ``swap_every`` steps (one host sync per swap, none per step)."""
        outcomes: list[Outcome | None] = [None] * len(molecules)
        queue = list(range(len(molecules)))[::-1]
        flight: Batch | None = None
        t0, evals0, steps = time.perf_counter(), self.n_evals, 0
        shown = t0
        while queue or (flight is not None and len(flight)):
            free = batch_size - (len(flight) if flight is not None else 0)
            if queue and free > 0:
                take = [queue.pop() for _ in range(min(free, len(queue)))]
                flight = Batch.join(flight, self.batch([molecules[i] for i in take], take))
            self.step(flight)
            steps += 1
            if progress is not None and time.perf_counter() - shown > self.progress_interval_s:  # moves while none finishes
                shown = time.perf_counter()
                progress.set_postfix_str(f"diffusion step {steps}, {len(flight)} in flight", refresh=True)
            if steps % swap_every == 0 or not queue:
                done = (flight.status != RUNNING).cpu().tolist()
                if any(done):
                    for k in [k for k, d in enumerate(done) if d]:
                        outcomes[flight.ids[k]] = flight.outcome(k)
                    flight = flight.select([k for k, d in enumerate(done) if not d])
                    if progress is not None:
                        progress.update(sum(done))
        return outcomes, {"wall_s": time.perf_counter() - t0, "batch_evals": self.n_evals - evals0}
