"""Policy rules of the sampler core: the bounds on t each policy promises."""
import shutil

import numpy as np
import pytest
import torch

from ase_diffrelax.core.policy import make_policy
from ase_diffrelax.core.sampler import RUNNING, Molecule, Sampler
from ase_diffrelax.core.schedule import NoiseSchedule

from conftest import small_molecules


def diffused_states(t, seed=0, n=6):
    sched = NoiseSchedule()
    rng = np.random.default_rng(seed)
    out = []
    for k, a in enumerate(small_molecules()[:n]):
        x = a.positions - a.positions.mean(0)
        eps = rng.normal(size=x.shape)
        y = np.sqrt(sched.alpha_bar[t]) * x + sched.sigma[t] * (eps - eps.mean(0))
        out.append(Molecule(a.numbers, y, seed=k))
    return out


def trace(sampler, molecules, max_evals=200):
    """t denoised at, per molecule and step, until every molecule is done; and the final batch."""
    b = sampler.batch(molecules)
    seen = [[] for _ in molecules]
    for _ in range(max_evals):
        if not bool((b.status == RUNNING).any()):
            break
        before = b.steps.clone()
        sampler.step(b)
        for k in range(len(b)):
            if b.steps[k] > before[k]:
                seen[k].append((int(b.t_used[k]), float(b.t_hat[k])))
    return seen, b


def test_min_decay_makes_t_fall_every_step_and_converge(tiny_model):
    sampler = Sampler(tiny_model, make_policy("jt", min_decay=0.1, max_steps=100))
    paths, batch = trace(sampler, diffused_states(300))
    assert max(len(p) for p in paths) >= 3  # the rule was exercised
    for k, path in enumerate(paths):
        ts = [t for t, _ in path]
        for a, b in zip(ts, ts[1:]):
            assert b <= int(np.floor(a * 0.9)), ts
        assert batch.outcome(k).status == "converged"


def test_schedule_floor_never_drops_faster_than_the_schedule(tiny_model):
    pol = make_policy("jt", schedule_floor=True, max_steps=60)
    sampler = Sampler(tiny_model, pol)
    paths, _ = trace(sampler, diffused_states(150))
    assert max(len(p) for p in paths) >= 3
    for path in paths:
        ts = [t for t, _ in path]
        for a, b in zip(ts, ts[1:]):
            assert b >= int(pol.next_t(torch.tensor([a]))[0]), ts


@pytest.mark.parametrize("cap", [40, 1000])
def test_t_scale_lifts_t_but_not_above_the_cap(tiny_model, cap):
    sampler = Sampler(tiny_model, make_policy("itp", t_scale=3.0, t_scale_cap=cap))
    b = sampler.batch(diffused_states(30))
    sampler.step(b)
    for k in range(len(b)):
        t_hat = int(round(float(b.t_hat[k])))
        if t_hat <= sampler.policy.threshold:
            assert int(b.t_used[k]) == t_hat
        else:
            assert int(b.t_used[k]) == min(3 * t_hat, max(t_hat, cap))


def test_policy_options_are_recorded_and_unknown_ones_rejected():
    pol = make_policy("jt", t_scale=2.0, schedule_floor=True, min_decay=0.05)
    d = pol.todict()
    assert d["t_scale"] == 2.0 and d["schedule_floor"] and d["min_decay"] == 0.05
    with pytest.raises(TypeError):
        make_policy("jt", not_an_option=1)


def test_time_calibration_comes_from_the_model_card_unless_given(tiny_model):
    from ase_diffrelax.core.checkpoint import LoadedModel

    card = {**tiny_model.card, "time_calibration": {"t_scale": 2.5, "t_scale_cap": 80}}
    calibrated_model = LoadedModel(tiny_model.net, tiny_model.schedule, card, tiny_model.path)
    pol = Sampler(calibrated_model, "jt").policy
    assert (pol.t_scale, pol.t_scale_cap) == (2.5, 80)
    pol = Sampler(calibrated_model, make_policy("jt", t_scale=1.0)).policy
    assert (pol.t_scale, pol.t_scale_cap) == (1.0, 80)
    pol = Sampler(tiny_model, "itp").policy  # a card without calibration: none applied
    assert (pol.t_scale, pol.t_scale_cap) == (1.0, 1000)


def test_policy_spec_round_trip_and_errors():
    pol = make_policy("fixed:t0=50+eta=1+stride=0")
    assert (pol.name, pol.t0, pol.eta, pol.stride) == ("fixed", 50, 1.0, 0.0)
    assert make_policy(pol.spec()) == pol
    assert make_policy("jt", stride=0.3).stride == 0.3
    with pytest.raises(ValueError, match="needs t0"):
        make_policy("fixed")
    with pytest.raises(ValueError, match="no option .t0."):
        make_policy("jt:t0=3")
    with pytest.raises(ValueError, match="unknown policy"):
        make_policy("ddim")
    with pytest.raises(Exception):
        pol.eta = 0.5  # frozen: passed down unchanged


@pytest.mark.parametrize("vp_start", [False, True])
def test_vp_start_shows_the_network_the_start_shrunk_as_a_training_input_at_t0(tiny_model, vp_start):
    sampler = Sampler(tiny_model, make_policy(f"fixed:t0=150+vp_start={int(vp_start)}"))
    seen = []
    net = sampler.model.net
    original = net.representation

    def spy(numbers, positions, *args, **kwargs):
        seen.append(positions.detach().clone())
        return original(numbers, positions, *args, **kwargs)

    net.representation = spy
    try:
        mol = small_molecules()[0]
        b = sampler.batch([Molecule(mol.numbers, mol.positions + 3.0, seed=0)])
        sampler.step(b)
    finally:
        del net.representation
    centred = mol.positions - mol.positions.mean(0)
    scale = float(np.sqrt(NoiseSchedule().alpha_bar[150])) if vp_start else 1.0
    assert np.allclose(seen[0].numpy(), scale * centred, atol=1e-5)
    assert int(b.t_used[0]) == 150


@pytest.mark.parametrize("policy", ["itp:eta=1", "jt:hold_t=30+hold_steps=3+polish_steps=2",
                                    "jt:hold_t=30+hold_steps=2+smooth_t=10+smooth_steps=2+smooth_copies=3+polish_steps=2"])
def test_batch_results_do_not_depend_on_batch_size_or_swap_interval(tiny_model, policy):
    """The tensor batch, swapping molecules in and out, gives every molecule the path it has alone
    (with a finish: molecules in it and molecules still descending share batches)."""
    mols = diffused_states(80 if policy.startswith("itp") else 150, seed=3, n=8)
    sampler = Sampler(tiny_model, make_policy(policy))
    alone = [sampler.run([m], batch_size=1)[0][0] for m in mols]
    if "hold" in policy:  # some went through the finish: their paths differ from plain jt's
        plain = [Sampler(tiny_model, "jt").run([m], batch_size=1)[0][0] for m in mols]
        assert any(o.steps != p.steps for o, p in zip(alone, plain))
    for batch_size, swap_every in [(3, 1), (8, 1), (5, 3)]:
        together, _ = sampler.run(mols, batch_size=batch_size, swap_every=swap_every)
        for a, b in zip(alone, together):
            assert (a.status, a.steps) == (b.status, b.steps)
            np.testing.assert_allclose(a.positions, b.positions, atol=2e-4)


@pytest.mark.skipif(not (shutil.which("g++") or shutil.which("c++")), reason="torch.compile needs a C++ compiler")
def test_compiled_batch_relaxation_matches_eager_and_leaves_the_shared_model_alone(tiny_model):
    from ase_diffrelax import load_model, relax_many

    rng = np.random.default_rng(2)
    mols = []
    for a in small_molecules()[:5]:
        a = a.copy()
        a.positions += rng.normal(0, 0.05, a.positions.shape)
        mols.append(a)
    eager = relax_many(mols, model=tiny_model, progress=False, batch_size=3)
    fast = relax_many(mols, model=tiny_model, progress=False, batch_size=3, compile=True)
    assert [r.steps for r in fast] == [r.steps for r in eager]
    for a, b in zip(eager, fast):
        np.testing.assert_allclose(a.atoms.positions, b.atoms.positions, atol=1e-4)
    assert load_model(tiny_model, compile=True) is tiny_model.compiled()
    assert tiny_model.net.interactions[0]._compiled_call_impl is None  # the shared model stays eager


def test_finish_holds_then_polishes_after_arrival_and_leaves_clean_starts_alone(tiny_model):
    """Arriving at t <= hold_t, a molecule is denoised hold_steps times at hold_t, then polish_steps
    times at its own t_hat, then returned; one read as clean on its first evaluation gets no finish."""
    pol = make_policy("jt:hold_t=30+hold_steps=3+polish_steps=2")
    assert (pol.arrive_t, pol.finish_passes) == (30, 5)
    paths, batch = trace(Sampler(tiny_model, pol), diffused_states(150))
    plain_paths, _ = trace(Sampler(tiny_model, "jt"), diffused_states(150))
    finished = 0
    for k, (path, plain) in enumerate(zip(paths, plain_paths)):
        assert batch.outcome(k).status == "converged"
        ts = [t for t, _ in path]
        if ts[0] <= 30:  # read as clean at once: the policy alone, exactly as without a finish
            assert path == plain
            continue
        finished += 1
        arrival = next(i for i, t in enumerate(ts) if t <= 30)
        assert ts[:arrival + 1] == [t for t, _ in plain[:arrival + 1]]  # the same descent until arrival
        assert ts[arrival + 1:arrival + 4] == [30, 30, 30] and len(ts) == arrival + 6
        assert ts[-2:] == [int(round(th)) for _, th in path[-2:]]  # polish at the head's own reading
    assert finished >= 3


def test_clean_t_separates_the_clean_reading_from_the_hold_step(tiny_model):
    """With clean_t below the first reading, a molecule read at or below hold_t at once is finished
    from that first evaluation (holds at hold_t above its reading); above clean_t only."""
    states = diffused_states(20)
    plain_paths, _ = trace(Sampler(tiny_model, "jt:hold_t=30+hold_steps=2+polish_steps=1"), states)
    first = [path[0][0] for path in plain_paths]
    assert any(0 < t <= 30 for t in first)
    bare, _ = trace(Sampler(tiny_model, "jt"), states)
    assert all(p == q for p, q, t in zip(plain_paths, bare, first) if t <= 30)  # clean_t = hold_t: no finish
    paths, _ = trace(Sampler(tiny_model, "jt:hold_t=30+hold_steps=2+polish_steps=1+clean_t=0"), states)
    for t0, path in zip(first, paths):
        ts = [t for t, _ in path]
        if 0 < t0 <= 30:
            assert ts[0] == t0 and ts[1:3] == [30, 30] and len(ts) == 4
    with pytest.raises(ValueError, match="clean_t"):
        make_policy("jt:clean_t=-1")


def test_smoothed_passes_sit_between_holds_and_polish_and_count_their_copies(tiny_model):
    """hold_steps at hold_t, smooth_steps at smooth_t (each costing smooth_copies evaluations: the
    step's own evaluation is the first copy), then the polish; the average over noisy copies moves
    the molecule differently from plain holds, and the same seed gives the same result."""
    spec = "jt:hold_t=30+hold_steps=2+smooth_t=10+smooth_steps=2+smooth_copies=4+polish_steps=2"
    pol = make_policy(spec)
    assert pol.finish_passes == 6
    paths, batch = trace(Sampler(tiny_model, pol), diffused_states(150))
    _, held = trace(Sampler(tiny_model, "jt:hold_t=30+hold_steps=2+polish_steps=2"), diffused_states(150))
    smoothed = 0
    for k, path in enumerate(paths):
        ts = [t for t, _ in path]
        if ts[0] <= 30:
            continue
        smoothed += 1
        arrival = next(i for i, t in enumerate(ts) if t <= 30)
        assert ts[arrival + 1:arrival + 5] == [30, 30, 10, 10] and len(ts) == arrival + 7
        assert int(batch.steps[k]) == len(ts) + 2 * 3  # the other copies are evaluations too
        assert not np.allclose(batch.positions(k), held.positions(k), atol=1e-4)
    assert smoothed >= 3
    again, batch2 = trace(Sampler(tiny_model, pol), diffused_states(150))
    for k in range(len(paths)):
        np.testing.assert_allclose(batch.positions(k), batch2.positions(k), atol=1e-6)
    with pytest.raises(ValueError, match="smooth_t and smooth_copies"):
        make_policy("itp:smooth_steps=2+smooth_t=10")
    with pytest.raises(ValueError, match="smooth_t and smooth_copies"):  # the card has no smoothing
        Sampler(tiny_model, "jt:smooth_steps=2+smooth_t=10")


def test_smoothed_copies_average_x0_hat_over_noise_and_antithetic_pairs_mirror_it(tiny_model, monkeypatch):
    """Each smoothed molecule's x0_hat is the mean of x0_hat over its copies x + sigma_t z (the first
    copy is the step's main evaluation); antithetic copies come as z, -z, then a fresh draw."""
    from ase_diffrelax.core.denoise import denoise

    seen = []
    real = Sampler._smoothed_x0

    def spy(self, b, x0_hat, noises):
        out = real(self, b, x0_hat, noises)
        seen.extend((z.clone(), b.x[r].clone(), b.numbers[r].clone(), out[r].clone()) for r, z in noises)
        return out

    monkeypatch.setattr(Sampler, "_smoothed_x0", spy)
    spec = "jt:hold_t=30+hold_steps=1+smooth_t=10+smooth_steps=1+smooth_copies=3+polish_steps=1+smooth_antithetic=1"
    sampler = Sampler(tiny_model, spec)
    trace(sampler, diffused_states(150))
    assert len(seen) >= 3
    net, sched = sampler.model.net, sampler.model.schedule
    sigma = float(sched.sigma[10])
    for z, x, numbers, averaged in seen:
        n = len(x)
        assert z.shape == (3, n, 3)
        torch.testing.assert_close(z[1], -z[0])
        assert not torch.allclose(z[2].abs(), z[0].abs())
        torch.testing.assert_close(z.mean(1), torch.zeros(3, 3), atol=1e-6, rtol=0)  # centred copies
        mol = torch.repeat_interleave(torch.arange(3), n)
        by_hand = denoise(net, sched, numbers.repeat(3), (x.unsqueeze(0) + sigma * z).reshape(-1, 3).float(),
                          mol, 3, lambda th: torch.full_like(th, 10)).x0_hat.reshape(3, n, 3).mean(0)
        torch.testing.assert_close(averaged, by_hand, atol=1e-4, rtol=1e-4)


def test_finish_comes_from_the_card_for_jt_only_and_is_checked(tiny_model, tmp_path):
    from ase_diffrelax.core.card import CardError, check_card
    from ase_diffrelax.core.checkpoint import LoadedModel

    finish = {"hold_t": 30, "hold_steps": 6, "polish_steps": 2}
    card = {**tiny_model.card, "time_calibration": {"t_scale": 1.0, "finish": finish}}
    m = LoadedModel(tiny_model.net, tiny_model.schedule, card, tiny_model.path)
    pol = Sampler(m, "jt").policy
    assert (pol.hold_t, pol.hold_steps, pol.polish_steps) == (30, 6, 2)
    assert Sampler(m, "jt:polish_steps=0").policy.polish_steps == 0  # the caller's word wins
    assert Sampler(m, "itp").policy.finish_passes == 0  # measured with jt: not applied to other policies
    assert Sampler(tiny_model, "jt").policy.finish_passes == 0  # a card without one: no finish
    with pytest.raises(ValueError, match="needs hold_t"):
        make_policy("itp:hold_steps=3")
    with pytest.raises(ValueError, match="needs hold_t"):  # jt's hold_t comes from the card: it has none
        Sampler(tiny_model, "jt:hold_steps=3")
    assert Sampler(m, "jt:hold_steps=2").policy.hold_t == 30  # the count given, the step the card's
    with pytest.raises(ValueError, match="polish_steps"):
        make_policy("jt:polish_steps=-1")
    full = {**card, "time_calibration": {"finish": {**finish, "smooth_t": 10, "smooth_steps": 4, "smooth_copies": 2,
                                                    "smooth_antithetic": 1, "clean_t": 5}}}
    m2 = LoadedModel(tiny_model.net, tiny_model.schedule, full, tiny_model.path)
    pol = Sampler(m2, "jt").policy
    assert (pol.smooth_antithetic, pol.clean_t, pol.clean_at) == (1, 5, 5)
    assert Sampler(m, "jt").policy.clean_at == 30  # absent from the card: tied to the hold step, as before
    with pytest.raises(CardError, match="finish.smooth_antithetic"):
        check_card({**card, "time_calibration": {"finish": {"smooth_antithetic": 2}}}, "x")
    bad = {**card, "time_calibration": {"finish": {"hold_t": 30, "hold_steps": 2.5}}}
    with pytest.raises(CardError, match="finish.hold_steps"):
        check_card(bad, "x")


def test_finish_options_at_their_neutral_values_stay_out_of_cache_keys_and_specs():
    """Adding a finish option must not change the key of a policy that does not use it (benchmark
    caches keyed on it would be recomputed, DFT ones for hours); a value that acts is in the key."""
    from ase_diffrelax.core.policy import NEUTRAL

    plain = make_policy("jt:hold_t=0+hold_steps=0+polish_steps=0+smooth_t=0+smooth_steps=0+smooth_copies=0"
                        "+smooth_antithetic=0+hold_gain=1.0")
    assert not set(NEUTRAL) & set(plain.key_dict())
    assert make_policy(plain.spec()) == plain  # the spec keeps them: for jt, absent means "the card's"
    acting = make_policy("jt:hold_t=30+hold_steps=6+polish_steps=2+smooth_antithetic=1+hold_gain=1.5")
    assert {"hold_t", "hold_steps", "polish_steps", "smooth_antithetic", "hold_gain"} <= set(acting.key_dict())
    assert make_policy(acting.spec()) == acting
