"""Can the network fit the MMFF94 -> GFN2-xTB displacement of molecules it has memorised? (issue 29)

A capacity test that needs no GPU: fine-tune a checkpoint on the first N training molecules only
(``ase-diffrelax train --max-train-molecules N``, so each is seen hundreds of times, its MMFF94
start included) at several widths/depths, then score those same molecules. Whatever a run still
gets wrong on them is not a lack of data but of what the network can express (or learn at that
budget). The molecules are split by where the reference checkpoint (the first model) ends:
"far" = heavy-atom RMSD to the minimum above ``--far`` A (the drug-like tail: starts whose MMFF94
conformation is off), "near" = the rest. Per model and group: GFN2-xTB energy above the minimum and
RMSD after the policy (``vp_start.policies``), and one evaluation of the MMFF94 start
(``vp_start.oneshot``: deviation of x0_hat over the start's, at the time head's step and at 80).
``start_anatomy`` says what the far starts are: their rotatable torsions against the minimum's,
for starts beyond the training cap on MMFF94 inputs (``--max-mmff-rmsd``, 1 A), the other far
ones, and the near ones.

    python -m benchmarks.memorization --models moses-painn128-jt13,runs/moses-memo3/last,runs/moses-memo5/last \\
        --out docs/results/memorization_train200_session25.json
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from ase_diffrelax.files import atomic_write_json

from .error_anatomy import _dihedral
from .vp_start import DATA, oneshot, policies

FINISH = ("jt:hold_t=30+hold_steps=6+polish_steps=2+smooth_t=10+smooth_steps=12+smooth_copies=2"
          "+smooth_antithetic=1")


def split_report(per_model: dict, far_rmsd: float) -> dict:
    """Medians per model over the reference's far and near molecules, and paired counts against it."""
    names = list(per_model)
    ref = per_model[names[0]]["ends"]
    ids = [r["id"] for r in ref]
    far = np.array([r["rmsd_heavy"] > far_rmsd for r in ref])
    out = {"far_rmsd_heavy": far_rmsd, "n_far": int(far.sum()), "n_near": int((~far).sum()), "models": {}}
    for name in names:
        ends = {r["id"]: r for r in per_model[name]["ends"]}
        shots = {r["id"]: r for r in per_model[name]["oneshot"]}
        row = {}
        for group, mask in (("all", np.ones_like(far)), ("far", far), ("near", ~far)):
            sel = [i for i, m in zip(ids, mask) if m]
            dE = np.array([ends[i]["dE_kcal"] for i in sel])
            row[group] = {"dE_median": float(np.median(dE)), "dE_p90": float(np.percentile(dE, 90)),
                          "rmsd_heavy_median": float(np.median([ends[i]["rmsd_heavy"] for i in sel])),
                          "oneshot_ratio_t_hat": float(np.median([shots[i]["ratio_hat"] for i in sel])),
                          "oneshot_ratio_80": float(np.median([shots[i]["ratio_80"] for i in sel]))}
        if name != names[0]:
            base = np.array([r["dE_kcal"] for r in ref])
            mine = np.array([ends[i]["dE_kcal"] for i in ids])
            row["lower_than_reference"] = int((mine < base).sum())
        out["models"][name] = row
    return out


def start_anatomy(part: str, n: int, data: Path) -> dict:
    """Per molecule: the MMFF94 start's all-atom RMSD to the minimum (aligned, the training cap's
    measure) and how far its rotatable and ring torsions (heavy atoms) are from the minimum's, degrees."""
    from ase_diffrelax.chem.internals import internal_coordinates, ring_bonds
    from ase_diffrelax.training.noising import aligned_displacement
    from ase_diffrelax.training.xtb_dataset import read_dataset

    out = {}
    for a in read_dataset(data, part)[:n]:
        x, m = a.positions - a.positions.mean(0), a.arrays["positions_mmff"]
        bonds, _, torsions, rotatable = internal_coordinates(a.numbers, x)
        ring = ring_bonds(len(a), bonds)
        change = lambda ts: [abs((_dihedral(x, *t) - _dihedral(m, *t) + 180) % 360 - 180) for t in ts]
        rot = change(rotatable)
        ring_t = change([t for t in torsions if (min(t[1], t[2]), max(t[1], t[2])) in ring])
        d, _ = aligned_displacement(m, x, np.inf)
        out[int(a.info["id"])] = {"start_rmsd_all": float(np.sqrt((d**2).sum(1).mean())),
                                  "rotatable": len(rot), "rotatable_max_change": max(rot, default=0.0),
                                  "rotatable_over_30": sum(c > 30 for c in rot), "ring_max_change": max(ring_t, default=0.0)}
    return out


def anatomy_report(anatomy: dict, ends: list, far_rmsd: float, cap: float = 1.0) -> dict:
    """Medians of ``start_anatomy`` over three groups: starts beyond the training cap, other far ends, near."""
    far = {r["id"]: r["rmsd_heavy"] > far_rmsd for r in ends}
    groups = {f"start beyond {cap:g} A": lambda i: anatomy[i]["start_rmsd_all"] > cap,
              "far, start within the cap": lambda i: far[i] and anatomy[i]["start_rmsd_all"] <= cap,
              "near": lambda i: not far[i]}
    out = {}
    for name, pick in groups.items():
        sel = [anatomy[i] for i in far if pick(i)]
        if sel:
            out[name] = {"n": len(sel), **{k: float(np.median([r[k] for r in sel])) for k in sel[0]},
                         "share_with_a_rotatable_torsion_over_30": float(np.mean([r["rotatable_over_30"] > 0 for r in sel]))}
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", required=True, help="comma list; the first is the reference that splits far/near")
    p.add_argument("--part", default="train", help="train: the first N training molecules (what --max-train-molecules N saw)")
    p.add_argument("--n", type=int, default=200)
    p.add_argument("--policy", default=FINISH, help="the sampler policy (default: moses-painn128-jt13's finish, "
                   "spelt out so run folders get it too)")
    p.add_argument("--far", type=float, default=0.5, help="heavy-atom RMSD [A] of the reference's end that makes a "
                   "molecule 'far'")
    p.add_argument("--data", default=str(DATA))
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    per_model = {}
    for name in [m.strip() for m in args.models.split(",") if m.strip()]:
        ends = policies(name, args.part, args.n, [args.policy], [], Path(args.data), log=lambda *_: None)
        shots = oneshot(name, args.part, args.n, [80], Path(args.data))
        per_model[name] = {"ends": ends["policies"][args.policy]["rows"], "oneshot": shots["rows"]}
    report = split_report(per_model, args.far)
    report["start_anatomy"] = anatomy_report(start_anatomy(args.part, args.n, Path(args.data)),
                                             per_model[next(iter(per_model))]["ends"], args.far)
    report.update(part=args.part, n=args.n, policy=args.policy,
                  what="GFN2-xTB energy above the lowest known minimum (kcal/mol) and heavy-atom RMSD (A, "
                       "symmetry-aware, aligned) after the policy; one-shot = deviation of x0_hat from the minimum "
                       "over the MMFF94 start's (all atoms), at the time head's step and at step 80",
                  command="python -m benchmarks.memorization " + " ".join(argv if argv is not None else sys.argv[1:]),
                  per_molecule=per_model)
    print(json.dumps({k: v for k, v in report.items() if k not in ("per_molecule", "what")}, indent=1))
    atomic_write_json(args.out, report, indent=1)


if __name__ == "__main__":
    main()
