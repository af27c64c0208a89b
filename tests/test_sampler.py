"""Policy rules of the sampler core: the bounds on t each policy promises."""
import numpy as np
import pytest
import torch

from ase_diffrelax.sampler import Sampler, make_policy, new_state
from ase_diffrelax.schedule import NoiseSchedule

from conftest import small_molecules


def diffused_states(t, seed=0, n=6):
    sched = NoiseSchedule()
    rng = np.random.default_rng(seed)
    out = []
    for k, a in enumerate(small_molecules()[:n]):
        x = a.positions - a.positions.mean(0)
        eps = rng.normal(size=x.shape)
        y = np.sqrt(sched.alpha_bar[t]) * x + sched.sigma[t] * (eps - eps.mean(0))
        out.append(new_state(a.numbers, y, "cpu", seed=k))
    return out


def trace(sampler, states, max_evals=200):
    """t denoised at, per molecule and step, until every molecule is done."""
    seen = [[] for _ in states]
    for _ in range(max_evals):
        if all(s.done for s in states):
            break
        before = [s.steps for s in states]
        sampler.step(states)
        for k, s in enumerate(states):
            if s.steps > before[k]:
                seen[k].append((s.t_used, s.t_hat))
    return seen


def test_min_decay_makes_t_fall_every_step_and_converge(tiny_model):
    sampler = Sampler(tiny_model, "jt", min_decay=0.1, max_steps=100)
    states = diffused_states(300)
    paths = trace(sampler, states)
    assert max(len(p) for p in paths) >= 3  # the rule was exercised
    for s, path in zip(states, paths):
        ts = [t for t, _ in path]
        for a, b in zip(ts, ts[1:]):
            assert b <= int(np.floor(a * 0.9)), ts
        assert s.status == "converged"


def test_schedule_floor_never_drops_faster_than_the_schedule(tiny_model):
    pol = make_policy("jt", schedule_floor=True, max_steps=60)
    sampler = Sampler(tiny_model, pol)
    states = diffused_states(150)
    paths = trace(sampler, states)
    assert max(len(p) for p in paths) >= 3
    for path in paths:
        ts = [t for t, _ in path]
        for a, b in zip(ts, ts[1:]):
            assert b >= int(pol.next_t(torch.tensor([a]))[0]), ts


@pytest.mark.parametrize("cap", [40, 1000])
def test_t_scale_lifts_t_but_not_above_the_cap(tiny_model, cap):
    sampler = Sampler(tiny_model, "itp", t_scale=3.0, t_scale_cap=cap)
    states = diffused_states(30)
    sampler.step(states)
    for s in states:
        t_hat = int(round(s.t_hat))
        if t_hat <= sampler.policy.threshold:
            assert s.t_used == t_hat
        else:
            assert s.t_used == min(3 * t_hat, max(t_hat, cap))


def test_policy_options_are_recorded_and_unknown_ones_rejected():
    pol = make_policy("jt", t_scale=2.0, schedule_floor=True, min_decay=0.05)
    d = pol.todict()
    assert d["t_scale"] == 2.0 and d["schedule_floor"] and d["min_decay"] == 0.05
    with pytest.raises(TypeError):
        make_policy("jt", not_an_option=1)


def test_time_calibration_comes_from_the_model_card_unless_given(tiny_model):
    from ase_diffrelax.checkpoint import LoadedModel

    card = {**tiny_model.card, "time_calibration": {"t_scale": 2.5, "t_scale_cap": 80}}
    calibrated_model = LoadedModel(tiny_model.net, tiny_model.schedule, card, tiny_model.path)
    pol = Sampler(calibrated_model, "jt").policy
    assert (pol.t_scale, pol.t_scale_cap) == (2.5, 80)
    pol = Sampler(calibrated_model, "jt", t_scale=1.0).policy
    assert (pol.t_scale, pol.t_scale_cap) == (1.0, 80)
    pol = Sampler(tiny_model, "itp").policy  # a card without calibration: none applied
    assert (pol.t_scale, pol.t_scale_cap) == (1.0, 1000)
