"""How the sampler chooses the step t to denoise at: ITP, JT/AS and a fixed start, as typed objects.

A Policy is built once (from a name, a spec string or by hand), completed with the
checkpoint's time calibration once (``calibrated``), and then passed down unchanged to the
sampler core. Policies are frozen: nothing below the entry point can alter one.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace

import torch

MAX_T = 1000  # the schedule length of every checkpoint (NoiseSchedule.T)
# the options a checkpoint card's time_calibration.finish may set (Policy's docstring)
FINISH_KEYS = ("hold_t", "hold_steps", "polish_steps", "smooth_t", "smooth_steps", "smooth_copies",
               "smooth_antithetic", "clean_t", "hold_gain")
FINISH_FLOATS = {"hold_gain"}  # the finish options that are not counts or steps
# the largest value of each integer option (steps, counts, the antithetic switch), for policies and cards
FINISH_MAX = {"hold_t": MAX_T, "hold_steps": 1000, "polish_steps": 1000, "smooth_t": MAX_T, "smooth_steps": 1000,
              "smooth_copies": 1000, "smooth_antithetic": 1, "clean_t": MAX_T}
# the finish options' values that change nothing: a card without the option means this, and (the
# options came after results were cached under policies' keys) they stay out of cache keys
# (``key_dict``), so keys from before them stay valid
NEUTRAL = {"hold_t": 0, "hold_steps": 0, "polish_steps": 0, "smooth_t": 0, "smooth_steps": 0, "smooth_copies": 0,
           "smooth_antithetic": 0, "clean_t": None, "hold_gain": 1.0}


def _check(policy, name: str, low, high, *, integer: bool = False, low_open: bool = False,
           high_open: bool = False) -> None:
    import math

    value = getattr(policy, name)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or \
            (integer and value != int(value)):
        raise ValueError(f"policy {policy.name!r}: {name}={value!r} must be a finite {'whole ' if integer else ''}number")
    too_low = value <= low if low_open else value < low
    too_high = high is not None and (value >= high if high_open else value > high)
    if too_low or too_high:
        lo = f"{'>' if low_open else '>='} {low}"
        hi = "" if high is None else f" and {'<' if high_open else '<='} {high}"
        raise ValueError(f"policy {policy.name!r}: {name}={value} out of range: must be {lo}{hi}")


@dataclass(frozen=True)
class Policy:
    """Options shared by every policy; subclasses only decide ``current_t``.

    eta: noise injected per step (1 = DDPM ancestral, 0 = deterministic DDIM).
    stride: fraction of t skipped per step (0 = t -> t-1 as in MoreRed; 0.2 = t -> 0.8 t).
    threshold: converged when the step to denoise at is <= threshold.
    max_steps: model evaluations per molecule at most (diffusion steps, never optimizer steps).
    t_scale, t_scale_cap: time-head calibration, denoise at min(t_scale * t_hat,
        max(t_hat, t_scale_cap)); None = the checkpoint card's ``time_calibration``.
    hold_t, hold_steps, polish_steps: the finish. A molecule arriving at t <= max(threshold, hold_t)
        is denoised ``hold_steps`` times at the fixed step ``hold_t`` and then ``polish_steps`` times
        at the time head's own t_hat, each time replacing x by x0_hat, then returned. Stepping down the
        schedule from ~20 leaves the coherent part of an MMFF94 start's deviation in place; iterating
        the denoiser at a fixed step keeps moving it (docs/policies.md). 0 = off (the default);
        ``jt`` leaves them None = the card's ``time_calibration.finish`` (off when it has none).
    smooth_t, smooth_steps, smooth_copies: smoothed passes between the holds and the polish: x becomes
        the mean of x0_hat over ``smooth_copies`` copies of x, each with fresh noise of sigma_{smooth_t}
        and denoised at smooth_t. The network's error varies faster with its input than the
        minimum does, so the average lands closer (docs/policies.md); each pass costs
        ``smooth_copies`` evaluations (the step's own evaluation is the first copy). Off (0) by
        default; ``jt``: the card's, like the finish.
    smooth_antithetic: 1 = the copies come in pairs x + z, x - z (same mean, less scatter).
    clean_t: a molecule the head reads at t <= clean_t on its first evaluation gets no finish (a
        structure at a minimum drifts off it); None = ``arrive_t``, which ties it to hold_t.
    hold_gain: a hold moves x by hold_gain x (x0_hat - x) instead of onto x0_hat (1).
    """

    name = "base"
    # deterministic DDIM-like steps skipping a fifth of t measured better than MoreRed's DDPM
    # t -> t-1 with fresh noise on MMFF starts (docs/policies.md); eta=1, stride=0 restores it
    eta: float = 0.0
    stride: float = 0.2
    threshold: int = 0
    max_steps: int = 1000
    t_scale: float | None = None
    t_scale_cap: int | None = None
    hold_t: int | None = 0
    hold_steps: int | None = 0
    polish_steps: int | None = 0
    smooth_t: int | None = 0
    smooth_steps: int | None = 0
    smooth_copies: int | None = 0
    smooth_antithetic: int | None = 0
    clean_t: int | None = None
    hold_gain: float | None = 1.0

    def __post_init__(self):
        """Every option in its allowed range, checked when the policy is built (not deep in a run)."""
        _check(self, "eta", 0.0, 1.0)
        _check(self, "stride", 0.0, 1.0, high_open=True)
        _check(self, "threshold", -1, MAX_T, integer=True)
        _check(self, "max_steps", 1, None, integer=True)
        if self.t_scale is not None:
            _check(self, "t_scale", 0.0, 100.0, low_open=True)
        if self.t_scale_cap is not None:
            _check(self, "t_scale_cap", 0, MAX_T, integer=True)
        if self.hold_gain is not None:
            _check(self, "hold_gain", 0.0, 4.0, low_open=True)
        for name, high in FINISH_MAX.items():
            if getattr(self, name) is not None:
                _check(self, name, 0, high, integer=True)
        # None = from the checkpoint card (calibrated() fills it, and this check runs again then)
        if self.hold_steps and self.hold_t is not None and not self.hold_t:
            raise ValueError(f"policy {self.name!r}: hold_steps={self.hold_steps} needs hold_t (the step to hold at)")
        if self.smooth_steps and None not in (self.smooth_t, self.smooth_copies) and \
                not (self.smooth_t and self.smooth_copies):
            raise ValueError(f"policy {self.name!r}: smooth_steps={self.smooth_steps} needs smooth_t and "
                             "smooth_copies (the step and the number of noisy copies averaged)")

    @property
    def finish_passes(self) -> int:
        """Passes after arrival: hold passes, smoothed passes, then polish passes."""
        return (self.hold_steps or 0) + (self.smooth_steps or 0) + (self.polish_steps or 0)

    @property
    def arrive_t(self) -> int:
        """A molecule whose step falls to this is finished (or, with a finish, starts it)."""
        return max(self.threshold, self.hold_t or 0) if self.hold_steps else self.threshold

    @property
    def clean_at(self) -> int:
        """A first reading at or below this step means: already clean, no finish."""
        return self.arrive_t if self.clean_t is None else self.clean_t

    def current_t(self, t_hat: torch.Tensor, t_sched: torch.Tensor, first: torch.Tensor,
                  t_prev: torch.Tensor) -> torch.Tensor:
        """The step to denoise at; ``t_prev`` is the step each molecule denoised at last time."""
        raise NotImplementedError

    def calibrate(self, t_hat: torch.Tensor) -> torch.Tensor:
        """Integer t_hat lifted by ``t_scale`` (capped at max(t_hat, t_scale_cap)); small t_hat kept."""
        if self.t_scale is None or self.t_scale == 1.0:
            return t_hat
        cap = 1000 if self.t_scale_cap is None else self.t_scale_cap
        scaled = torch.minimum(torch.round(t_hat * self.t_scale).long(), torch.clamp(t_hat, min=cap))
        return torch.where(t_hat > self.threshold, scaled, t_hat)

    def start(self, x: torch.Tensor, first_atom: torch.Tensor, schedule) -> torch.Tensor:
        """Positions of the first evaluation (centred; ``first_atom`` marks molecules not yet stepped)."""
        return x

    def next_t(self, t: torch.Tensor) -> torch.Tensor:
        jump = torch.round(t.double() * (1.0 - self.stride)).long()
        return torch.minimum(t - 1, jump).clamp(min=0)

    @property
    def scheduled(self) -> bool:
        """True if t_next is known without another prediction (ITP, fixed)."""
        return False

    def todict(self) -> dict:
        return {"name": self.name, **asdict(self)}

    def key_dict(self) -> dict:
        """``todict`` without the options that sit at their NEUTRAL value: what cache keys hash."""
        return {k: v for k, v in self.todict().items() if not (k in NEUTRAL and v == NEUTRAL[k])}

    def spec(self) -> str:
        """The string ``make_policy`` parses back into this policy (used as a cache key)."""
        opts = "+".join(f"{k}={v}" for k, v in asdict(self).items() if v is not None)
        return f"{self.name}:{opts}"


@dataclass(frozen=True)
class AdaptivePolicy(Policy):
    """MoreRed-JT/AS: predict t every step and denoise at the prediction.

    The time head cannot predict exactly 0 for clean inputs (a regression near the edge of
    its range), so the strict MoreRed stop t_hat <= 0 is rarely reached; the default stops at
    t_hat <= 5 (sigma_5 ~ 0.008 A) and returns the denoised estimate there.
    """

    name = "jt"
    threshold: int = 5
    max_steps: int = 100
    # Never step down faster than the schedule: after one deterministic step an MMFF start
    # looks cleaner than it is, and following the head down stops early (docs/policies.md).
    schedule_floor: bool = True
    # t may not rise: each step denoises at most at (1 - min_decay) x the last step's t, so
    # every molecule converges. 0 = off.
    min_decay: float = 0.05
    # the finish comes from the checkpoint card (measured with this policy), unless given
    hold_t: int | None = None
    hold_steps: int | None = None
    polish_steps: int | None = None
    smooth_t: int | None = None
    smooth_steps: int | None = None
    smooth_copies: int | None = None
    smooth_antithetic: int | None = None
    clean_t: int | None = None
    hold_gain: float | None = None

    def __post_init__(self):
        super().__post_init__()
        _check(self, "min_decay", 0.0, 1.0, high_open=True)

    def current_t(self, t_hat, t_sched, first, t_prev):
        t = t_hat
        if self.schedule_floor:
            t = torch.where(first, t, torch.maximum(t, t_sched))
        if self.min_decay > 0:
            cap = torch.floor(t_prev.double() * (1.0 - self.min_decay)).long()
            t = torch.where(first, t, torch.minimum(t, cap))
        return t


@dataclass(frozen=True)
class ITPPolicy(Policy):
    """MoreRed-ITP: predict t once, then follow the schedule down."""

    name = "itp"

    def current_t(self, t_hat, t_sched, first, t_prev):
        return torch.where(first, t_hat, t_sched)

    @property
    def scheduled(self):
        return True


@dataclass(frozen=True)
class FixedPolicy(Policy):
    """The relaxation paper's restart: start at a fixed step t0 whatever the input, then follow the schedule."""

    name = "fixed"
    t0: int = 30
    # Read the start as a clean structure noised to t0 the variance-preserving way: scale it by
    # sqrt(alpha_bar_t0) about its centre before the first step. Training inputs at step t are
    # shrunk by that factor (3.6 % at t = 190), real starts are not; without it the network
    # reads the missing shrink as "low t" and a large t0 denoises an input it never saw.
    vp_start: bool = False

    def __post_init__(self):
        super().__post_init__()
        _check(self, "t0", 1, MAX_T - 1, integer=True)

    def current_t(self, t_hat, t_sched, first, t_prev):
        return torch.where(first, torch.full_like(t_hat, self.t0), t_sched)

    def start(self, x, first_atom, schedule):
        if not self.vp_start:
            return x
        scale = float(schedule.alpha_bar[self.t0]) ** 0.5
        return torch.where(first_atom.unsqueeze(-1), x * scale, x)

    @property
    def scheduled(self):
        return True


POLICIES = {"jt": AdaptivePolicy, "as": AdaptivePolicy, "adaptive": AdaptivePolicy, "itp": ITPPolicy,
            "fixed": FixedPolicy}


def _parse_value(cls, key: str, text: str):
    kinds = {f.name: f.type for f in fields(cls)}
    if key not in kinds:
        raise ValueError(f"policy {cls.name!r} has no option {key!r}; options: {sorted(kinds)}")
    kind = str(kinds[key])
    if text.lower() == "none":
        return None
    if "bool" in kind:
        return text.lower() in ("1", "true", "yes")
    try:
        if "int" in kind and "float" not in kind:
            number = float(text)
            if number != int(number):
                raise ValueError
            return int(number)
        return float(text)
    except (ValueError, OverflowError):
        raise ValueError(f"policy {cls.name!r}: {key}={text!r} is not a {'whole ' if 'int' in kind else ''}number") from None


def make_policy(policy: Policy | str = "jt", **options) -> Policy:
    """A Policy from a Policy, a name ("jt", "itp", "fixed") or a spec such as
    ``"fixed:t0=50+eta=1"``; keyword options (None = default) override the spec."""
    if isinstance(policy, Policy):
        options = {k: v for k, v in options.items() if v is not None}
        return replace(policy, **options) if options else policy
    name, _, rest = str(policy).partition(":")
    key = name.strip().lower()
    if key not in POLICIES:
        raise ValueError(f"unknown policy {name!r}; choose one of {sorted(set(POLICIES))}")
    cls = POLICIES[key]
    parsed = {}
    for item in filter(None, rest.split("+")):
        k, sep, v = item.partition("=")
        if not sep:
            raise ValueError(f"policy option {item!r} is not key=value")
        parsed[k.strip()] = _parse_value(cls, k.strip(), v.strip())
    parsed.update({k: v for k, v in options.items() if v is not None})
    if "t0" in parsed and cls is not FixedPolicy:
        raise ValueError(f"t0 only applies to policy 'fixed', not {name!r}")
    if cls is FixedPolicy and "t0" not in parsed:
        raise ValueError("policy 'fixed' needs t0 (the relaxation paper uses 50, 30 or 20), e.g. 'fixed:t0=30'")
    unknown = set(parsed) - {f.name for f in fields(cls)}
    if unknown:
        raise TypeError(f"policy {cls.name!r} has no option(s) {sorted(unknown)}")
    return cls(**parsed)


def calibrated(policy: Policy, card: dict | None) -> Policy:
    """A copy of ``policy`` whose unset time calibration and finish come from the model card
    (none: t_scale 1.0, no finish)."""
    cal = (card or {}).get("time_calibration", {})
    fill = {}
    if policy.t_scale is None:
        fill["t_scale"] = float(cal.get("t_scale", 1.0))
    if policy.t_scale_cap is None:
        fill["t_scale_cap"] = int(cal.get("t_scale_cap", 1000))
    finish = cal.get("finish", {})
    for name in FINISH_KEYS:
        if getattr(policy, name) is None:
            value = finish.get(name, NEUTRAL[name])  # clean_t absent stays None: arrive_t
            fill[name] = None if value is None else (float if name in FINISH_FLOATS else int)(value)
    return replace(policy, **fill) if fill else policy


@dataclass(frozen=True)
class FixedStepChain(Policy):
    """Not a relaxation: one stochastic reverse step at the same step t, applied again and again.

    The relaxation paper (section 4.4) found that such a chain samples geometries around a
    minimum whose energy spread grows with t like a Boltzmann ensemble's grows with temperature.
    It never converges; the caller decides how many steps to run.
    """

    name = "chain"
    t: int = 20
    eta: float = 1.0
    stride: float = 0.0
    threshold: int = -1
    max_steps: int = 2**62

    def __post_init__(self):
        super().__post_init__()
        _check(self, "t", 1, MAX_T, integer=True)

    def current_t(self, t_hat, t_sched, first, t_prev):
        return torch.full_like(t_hat, self.t)

    def next_t(self, t):
        return (t - 1).clamp(min=0)
