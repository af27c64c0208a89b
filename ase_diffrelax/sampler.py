"""The one sampler core: reverse diffusion from user structures, one model pass per step.

Every step, for all active molecules at once: one backbone pass gives t_hat; the policy
turns it into the step t to denoise at (or ignores it, for scheduled policies) and the step
t_next to move to; the noise head predicts eps at t; the schedule moves x from t to t_next
(DDPM ancestral for eta = 1, deterministic DDIM for eta = 0). A molecule stops when the
step it would denoise at is <= the policy's threshold, or at ``max_steps``; its last
denoised estimate x0_hat = (x - sigma_t eps) / sqrt(ab_t) is returned. Converged molecules
leave the batch and waiting ones take their place.

Each molecule has its own noise generator (seeded), so its path does not depend on which
other molecules share its batch.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from .model import molecule_pairs, remove_mean


# ---------------------------------------------------------------- policies


@dataclass
class Policy:
    """How t is chosen. Subclasses only decide ``current_t``; the rest is shared.

    eta: noise injected per step (1 = DDPM ancestral, 0 = deterministic DDIM).
    stride: fraction of t skipped per step (0 = t -> t-1 as in MoreRed; 0.2 = t -> 0.8 t).
    threshold: converged when the step to denoise at is <= threshold.
    """

    name = "base"
    # deterministic DDIM-like steps skipping 20 % of t measured better than MoreRed's DDPM
    # t -> t-1 with fresh noise on MMFF starts (docs/policies.md); eta=1, stride=0 restores it
    eta: float = 0.0
    stride: float = 0.2
    threshold: int = 0
    max_steps: int = 1000
    # time-head calibration: denoise at t_scale * t_hat, but never above max(t_hat, t_scale_cap).
    # None = the checkpoint's own calibration (model card "time_calibration", fitted on validation
    # MMFF starts: the head under-reads MMFF's systematic deviation, while far-off inputs read true).
    t_scale: float | None = None
    t_scale_cap: int | None = None

    def current_t(self, t_hat: torch.Tensor, t_sched: torch.Tensor, first: torch.Tensor,
                  t_prev: torch.Tensor | None = None) -> torch.Tensor:
        """The step to denoise at; ``t_prev`` is the step each molecule denoised at last time."""
        raise NotImplementedError

    def calibrate(self, t_hat: torch.Tensor) -> torch.Tensor:
        """Integer t_hat lifted by ``t_scale`` (capped at max(t_hat, t_scale_cap)); small t_hat kept."""
        if self.t_scale == 1.0:
            return t_hat
        scaled = torch.minimum(torch.round(t_hat * self.t_scale).long(), torch.clamp(t_hat, min=self.t_scale_cap))
        return torch.where(t_hat > self.threshold, scaled, t_hat)

    def next_t(self, t: torch.Tensor) -> torch.Tensor:
        jump = torch.round(t.double() * (1.0 - self.stride)).long()
        return torch.minimum(t - 1, jump).clamp(min=0)

    @property
    def scheduled(self) -> bool:
        """True if t_next is known without another prediction (ITP, fixed)."""
        return False

    def todict(self) -> dict:
        return {"name": self.name, "eta": self.eta, "stride": self.stride, "threshold": self.threshold,
                "max_steps": self.max_steps, "t_scale": self.t_scale, "t_scale_cap": self.t_scale_cap}


@dataclass
class AdaptivePolicy(Policy):
    """MoreRed-JT/AS: predict t every step and denoise at the prediction.

    The time head cannot predict exactly 0 for clean inputs (a regression near the edge of
    its range), so the strict MoreRed stop t_hat <= 0 is rarely reached; the default stops at
    t_hat <= 5 (sigma_5 ~ 0.008 A) and returns the denoised estimate there.
    """

    name = "jt"
    threshold: int = 5
    max_steps: int = 100
    # Never step down faster than the schedule: denoise at max(t_hat, t_next of the last step).
    # After one deterministic step an MMFF start looks cleaner than it is; following the head
    # down stopped early (validation mmff-ref ratio 0.650 without, 0.588 with, t_scale 3).
    schedule_floor: bool = True
    # t may not rise: each step denoises at most at (1 - min_decay) x the last step's t, so every
    # molecule converges (without it 72 of 300 far-off diffused-300 inputs hit max_steps). 0 = off.
    min_decay: float = 0.05

    def current_t(self, t_hat, t_sched, first, t_prev=None):
        t = t_hat
        if self.schedule_floor:
            t = torch.where(first, t, torch.maximum(t, t_sched))
        if self.min_decay > 0 and t_prev is not None:
            cap = torch.floor(t_prev.double() * (1.0 - self.min_decay)).long()
            t = torch.where(first, t, torch.minimum(t, cap))
        return t

    def todict(self):
        return {**super().todict(), "schedule_floor": self.schedule_floor, "min_decay": self.min_decay}


@dataclass
class ITPPolicy(Policy):
    """MoreRed-ITP: predict t once, then follow the schedule down."""

    name = "itp"

    def current_t(self, t_hat, t_sched, first, t_prev=None):
        return torch.where(first, t_hat, t_sched)

    @property
    def scheduled(self):
        return True


@dataclass
class FixedPolicy(Policy):
    """Paper 000: start at a fixed step t0 regardless of the input, then follow the schedule."""

    name = "fixed"
    t0: int = 30

    def current_t(self, t_hat, t_sched, first, t_prev=None):
        return torch.where(first, torch.full_like(t_hat, self.t0), t_sched)

    @property
    def scheduled(self):
        return True

    def todict(self):
        return {**super().todict(), "t0": self.t0}


POLICIES = {"jt": AdaptivePolicy, "as": AdaptivePolicy, "adaptive": AdaptivePolicy, "itp": ITPPolicy,
            "fixed": FixedPolicy}


def make_policy(policy="jt", t0: int | None = None, **kwargs) -> Policy:
    """A Policy from a name ("jt", "itp", "fixed") and options, or an existing Policy."""
    if isinstance(policy, Policy):
        return policy
    key = str(policy).lower()
    if key not in POLICIES:
        raise ValueError(f"unknown policy {policy!r}; choose one of {sorted(set(POLICIES))}")
    cls = POLICIES[key]
    if cls is FixedPolicy:
        if t0 is None:
            raise ValueError("policy 'fixed' needs t0 (paper 000 uses 50, 30 or 20)")
        kwargs["t0"] = int(t0)
    elif t0 is not None:
        raise ValueError(f"t0 only applies to policy 'fixed', not {policy!r}")
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    return cls(**kwargs)


def calibrated(policy: Policy, model) -> Policy:
    """A copy of ``policy`` whose unset time calibration is taken from the model card."""
    cal = model.card.get("time_calibration", {}) if model is not None else {}
    fill = {}
    if policy.t_scale is None:
        fill["t_scale"] = float(cal.get("t_scale", 1.0))
    if policy.t_scale_cap is None:
        fill["t_scale_cap"] = int(cal.get("t_scale_cap", 1000))
    return replace(policy, **fill) if fill else policy


# ---------------------------------------------------------------- state


@dataclass
class MoleculeState:
    numbers: torch.Tensor  # (n,) long
    x: torch.Tensor  # (n, 3) float32, centred
    origin: torch.Tensor  # (3,) float64, CoG of the input, added back at the end
    x_input: torch.Tensor  # (n, 3) float64 as given
    fixed: torch.Tensor  # (n,) bool
    generator: torch.Generator
    t_sched: int = -1
    steps: int = 0
    t_hat: float = float("nan")  # last predicted step (continuous, in steps)
    t_used: int = -1  # last step denoised at
    x0_hat: torch.Tensor | None = None
    done: bool = False
    status: str = "running"
    max_radius: float = 50.0  # divergence bound: max(50 A, 5x the input's radius), set by new_state
    history: list = field(default_factory=list)

    def positions(self) -> np.ndarray:
        """Current best estimate in the input frame (float64)."""
        x = (self.x0_hat if self.x0_hat is not None else self.x).double()
        if self.fixed.any():
            shift = (self.x_input[self.fixed] - x[self.fixed]).mean(0)
            x = x + shift
            x[self.fixed] = self.x_input[self.fixed]
        else:
            x = x + self.origin
        return x.cpu().numpy()


def _sane(x: torch.Tensor, state: MoleculeState) -> bool:
    """Finite, and no atom farther from the centre than max(50 A, 5x the input's radius)."""
    if not torch.isfinite(x).all():
        return False
    return float(x.norm(dim=-1).max()) <= state.max_radius


def new_state(numbers, positions, device, seed=None, fixed=None) -> MoleculeState:
    z = torch.as_tensor(np.asarray(numbers), dtype=torch.long, device=device)
    x = torch.as_tensor(np.asarray(positions, dtype=np.float64), device=device)
    origin = x.mean(0)
    gen = torch.Generator(device=device)
    gen.manual_seed(int(seed) if seed is not None else int(torch.randint(0, 2**62, (1,)).item()))
    fixed_t = torch.zeros(len(z), dtype=torch.bool, device=device) if fixed is None else \
        torch.as_tensor(np.asarray(fixed, dtype=bool), device=device)
    radius = float((x - origin).norm(dim=-1).max())
    return MoleculeState(z, (x - origin).float(), origin, x, fixed_t, gen, max_radius=max(50.0, 5.0 * radius))


# ---------------------------------------------------------------- core


class Sampler:
    """Reverse diffusion for many molecules at once with any Policy."""

    def __init__(self, model, policy: Policy | str = "jt", device=None, final_denoise: bool = True,
                 record: bool = False, **policy_kw):
        from .checkpoint import load_model

        self.model = load_model(model, device=device)
        self.device = self.model.device
        self.policy = calibrated(make_policy(policy, **policy_kw), self.model)
        self.final_denoise = final_denoise
        self.record = record  # keep (positions, t_hat) of every step in each state's history
        self.n_evals = 0

    @torch.no_grad()
    def step(self, states: list[MoleculeState]) -> None:
        """One model evaluation for every molecule in ``states`` that is not done."""
        active = [s for s in states if not s.done]
        if not active:
            return
        net, sched, pol = self.model.net, self.model.schedule, self.policy
        T = sched.T
        dev = self.device
        sizes = torch.tensor([len(s.numbers) for s in active], device=dev)
        n_mol = len(active)
        mol = torch.repeat_interleave(torch.arange(n_mol, device=dev), sizes)
        numbers = torch.cat([s.numbers for s in active])
        x = torch.cat([s.x for s in active])
        s_feat, v_feat = net.representation(numbers, x, mol, n_mol, molecule_pairs(mol, n_mol))
        t_hat_frac = net.predict_time(s_feat, mol, n_mol).clamp(0.0, 1.0)
        t_hat = pol.calibrate(torch.round(t_hat_frac * T).long())
        first = torch.tensor([s.steps == 0 for s in active], device=dev)
        t_sched = torch.tensor([max(s.t_sched, 0) for s in active], device=dev)
        t_prev = torch.tensor([max(s.t_used, 0) for s in active], device=dev)
        t_cur = pol.current_t(t_hat, t_sched, first, t_prev).clamp(0, T)
        converged = t_cur <= pol.threshold
        t_next = pol.next_t(t_cur)
        eps = net.predict_noise(s_feat, v_feat, (t_cur.float() / T)[mol], mol, n_mol)
        x0_hat = sched.predict_x0(x, t_cur[mol], eps)
        noise = None
        if pol.eta > 0:
            noise = torch.cat([torch.randn(s.x.shape, generator=s.generator, device=dev) for s in active])
            noise = remove_mean(noise, mol, n_mol)
        x_new = sched.step(x, t_cur[mol], t_next[mol], eps, pol.eta, noise)
        x_new = remove_mean(x_new, mol, n_mol)
        self.n_evals += 1
        offsets = torch.cumsum(sizes, 0).tolist()
        start = 0
        for k, s in enumerate(active):
            end = offsets[k]
            s.steps += 1
            s.t_hat = float(t_hat_frac[k]) * T
            s.t_used = int(t_cur[k])
            if not (_sane(x0_hat[start:end], s) and _sane(x_new[start:end], s)):
                # never hand back NaN/inf or exploded coordinates: stop with the last sane positions
                s.done, s.status = True, "diverged"
            elif converged[k]:
                s.done, s.status = True, "converged"
                if self.final_denoise:
                    s.x0_hat = x0_hat[start:end]
            else:
                xn = x_new[start:end]
                if s.fixed.any():  # held atoms keep their (centred) input positions
                    xn = xn.clone()
                    xn[s.fixed] = (s.x_input[s.fixed] - s.origin).float()
                    xn = xn - xn.mean(0)
                s.x = xn
                s.t_sched = int(t_next[k])
                s.x0_hat = None
                if pol.scheduled and s.t_sched <= pol.threshold:
                    # scheduled policies know they have arrived: no extra evaluation needed
                    s.done, s.status = True, "converged"
                elif s.steps >= pol.max_steps:
                    s.done, s.status = True, "max_steps"
            if self.record:
                s.history.append((s.positions(), s.t_hat))
            start = end

    def run(self, states: list[MoleculeState], batch_size: int = 128, progress=None, callback=None) -> dict:
        """Relax all ``states`` with at most ``batch_size`` molecules in flight at once."""
        queue = list(range(len(states)))[::-1]
        in_flight: list[int] = []
        t0 = time.perf_counter()
        evals0 = self.n_evals
        while queue or in_flight:
            while queue and len(in_flight) < batch_size:
                in_flight.append(queue.pop())
            self.step([states[i] for i in in_flight])
            finished = [i for i in in_flight if states[i].done]
            in_flight = [i for i in in_flight if not states[i].done]
            if callback is not None:
                callback(states, in_flight)
            if progress is not None and finished:
                progress.update(len(finished))
        return {"wall_s": time.perf_counter() - t0, "batch_evals": self.n_evals - evals0}
