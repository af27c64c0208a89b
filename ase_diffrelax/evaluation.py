"""Measuring a checkpoint: start structures, RMSD statistics, named policies, a cache key.

Shared by the benchmark scripts (benchmarks/) and the calibration of a new checkpoint, so a
number in docs/ and a number used to choose a default come from the same code. Every RMSD is
symmetry-aware, after optimal alignment, over all atoms including hydrogens.
"""
from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import numpy as np
from ase import units

# named policy variants reported in docs/policies.md; unset t_scale = the checkpoint's calibration;
# "-ddpm" = the papers' stochastic t -> t-1 steps (eta 1, stride 0), uncalibrated
NAMED_POLICIES = {
    "jt": "jt",
    "jt-uncalibrated": "jt:t_scale=1.0",
    "jt-plain": "jt:t_scale=1.0+schedule_floor=false+min_decay=0",
    "jt-ddpm": "jt:eta=1+stride=0+threshold=0+max_steps=200+t_scale=1.0+schedule_floor=false+min_decay=0",
    "itp": "itp",
    "itp-uncalibrated": "itp:t_scale=1.0",
    "itp-ddpm": "itp:eta=1+stride=0+t_scale=1.0",
    "oneshot": "itp:eta=0+stride=1",
    "fixed-20": "fixed:t0=20",
    "fixed-30": "fixed:t0=30",
    "fixed-50": "fixed:t0=50",
    "fixed-20-ddpm": "fixed:t0=20+eta=1+stride=0",
    "fixed-30-ddpm": "fixed:t0=30+eta=1+stride=0",
    "fixed-50-ddpm": "fixed:t0=50+eta=1+stride=0",
}


KCAL_MOL_PER_EV = units.mol / units.kcal


def drugs_report_rows(paths) -> tuple[list[str], list[dict]]:
    """The per-molecule hand-off rows of ``benchmarks/drugs.py`` reports, each with its MOSES
    ``part``, and the checkpoints that produced them."""
    models, rows = set(), []
    for path in paths:
        for part, entry in json.loads(Path(path).read_text())["parts"].items():
            models |= set(entry["models"])
            rows += [{**t, "part": part} for t in entry.get("table", [])]
    return sorted(models), rows


def policy_from_name(name: str):
    """A Policy from a NAMED_POLICIES entry or any spec ``make_policy`` reads."""
    from .core.policy import make_policy

    return make_policy(NAMED_POLICIES.get(name, name))


def model_hash(model, policy="jt") -> str:
    """Weights plus the policy as the checkpoint calibrates it: changing either changes the key."""
    from .core.policy import calibrated

    h = hashlib.sha256(Path(str(model.path) + ".safetensors").read_bytes())
    h.update(json.dumps(calibrated(policy_from_name(policy), model.card).key_dict(), sort_keys=True).encode())
    return h.hexdigest()[:12]


def pick_molecules(seed: int, split: str = "test"):
    """A QM9 split and a seeded random order of its molecules."""
    from .training.data import load_qm9

    ms = load_qm9(split)
    return ms, np.random.default_rng(seed).permutation(len(ms))


def build_starts(kind: str, ms, order, n: int, seed: int):
    """Start structures of one kind for the first ``n`` usable molecules in ``order``.

    mmff-ref    MMFF94 minimum started from the reference (same basin, atom order kept)
    etkdg-mmff  SMILES (stereo from the reference) -> ETKDG -> MMFF94, mapped onto the reference order
    diffused-T  the reference forward-diffused to step T
    Returns (starts, references (numbers, positions), skipped count, ids).
    """
    from ase import Atoms

    from .chem.mapping import reorder_to_reference, stereo_smiles
    from .chem.rdkit_interop import atoms_from_smiles, mmff_from_reference
    from .core.validate import InputError, check_atoms

    starts, refs, ids, skipped = [], [], [], 0
    rng = np.random.default_rng(seed + 17)
    schedule = None
    for i in order:
        if len(starts) >= n:
            break
        z, x = ms.molecule(i)
        try:
            if kind == "mmff-ref":
                y = mmff_from_reference(z, x)
            elif kind == "etkdg-mmff":
                a = atoms_from_smiles(stereo_smiles(z, x, str(ms.smiles[i])), seed=seed)
                y = reorder_to_reference(z, x, a) if len(a) == len(z) else None
                if y is None:
                    skipped += 1
                    continue
            elif kind.startswith("diffused-"):
                if schedule is None:
                    from .core.schedule import NoiseSchedule

                    schedule = NoiseSchedule()
                t = int(kind.split("-")[1])
                eps = rng.normal(size=x.shape)
                eps -= eps.mean(0)
                xc = x - x.mean(0)
                y = np.sqrt(schedule.alpha_bar[t]) * xc + schedule.sigma[t] * eps
                try:  # noise can put atoms on top of each other or far from all others: not a valid input
                    check_atoms(Atoms(numbers=z, positions=y), elements=range(1, 119))
                except InputError:
                    skipped += 1
                    continue
            else:
                raise ValueError(f"unknown start kind {kind!r}")
        except ValueError:
            skipped += 1
            continue
        starts.append(Atoms(numbers=z, positions=y))
        refs.append((z, x))
        ids.append(int(ms.ids[i]))
    return starts, refs, skipped, ids


def rmsd_stats(before, after, steps, wall) -> dict:
    """Median/mean RMSD before and after, ratio, failures (after > before), evaluations, time."""
    before, after = np.asarray(before), np.asarray(after)
    ratio = after / before
    worse = after > before
    return {
        "n": int(len(before)),
        "rmsd_before_median": float(np.median(before)), "rmsd_before_mean": float(np.mean(before)),
        "rmsd_after_median": float(np.median(after)), "rmsd_after_mean": float(np.mean(after)),
        "ratio_median": float(np.median(ratio)), "ratio_mean": float(np.mean(ratio)),
        "failure_pct": float(100 * np.mean(worse)),
        # failures split by whether the start was still in the reference basin (< 0.25 A)
        "failure_pct_in_basin": float(100 * np.mean(worse[before < 0.25])) if (before < 0.25).any() else None,
        "failures_out_of_basin": int(np.sum(worse & (before >= 0.25))),
        "failure_increase_median": float(np.median((after - before)[worse])) if worse.any() else 0.0,
        "frac_after_below_0.05A": float(np.mean(after < 0.05)),
        "evals_median": float(np.median(steps)), "evals_mean": float(np.mean(steps)),
        "wall_s": float(wall), "wall_ms_per_molecule": float(1000 * wall / max(1, len(before))),
    }


def measure(starts, rmsds, before, model, policy, seed: int = 0, batch_size: int | None = None):
    """Relax ``starts`` with one policy; returns (stats vs ``before``, results, RMSDs after)."""
    from .adapters.batch import relax_many

    t0 = time.perf_counter()
    res = relax_many(starts, model=model, policy=policy, batch_size=batch_size, progress=False, seed=seed)
    after = [f(r.atoms.positions) for f, r in zip(rmsds, res)]
    return rmsd_stats(before, after, [r.steps for r in res], time.perf_counter() - t0), res, after


def select_qm9_molecules(n: int, max_heavy: int | None, seed: int):
    from .training.data import load_qm9

    ms = load_qm9("test")
    order = np.random.default_rng(seed).permutation(len(ms))
    picked = []
    for i in order:
        z, _ = ms.molecule(i)
        if max_heavy is not None and int((z > 1).sum()) > max_heavy:
            continue
        picked.append(int(i))
        if len(picked) >= 4 * n:
            break
    return ms, picked


def qm9_mmff_start(ms, i, seed):
    """ETKDG + MMFF94 from the QM9 SMILES (stereo from the reference), in the reference atom order:
    (Atoms, wall s), or (None, 0.0) if unmappable. The start the hand-off benchmarks share."""
    from ase import Atoms

    from .chem.mapping import reorder_to_reference, stereo_smiles
    from .chem.rdkit_interop import atoms_from_smiles

    z, x = ms.molecule(i)
    t0 = time.perf_counter()
    try:
        # QM9's SMILES carry no stereo: take it from the reference, as a user's SMILES would
        a = atoms_from_smiles(stereo_smiles(z, x, str(ms.smiles[i])), seed=seed)
    except ValueError:
        return None, 0.0
    if len(a) != len(z):
        return None, 0.0
    y = reorder_to_reference(z, x, a)
    if y is None:
        return None, 0.0
    return Atoms(numbers=z, positions=y), time.perf_counter() - t0
