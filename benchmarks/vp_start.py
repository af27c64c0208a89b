"""Why the time head is blind to an MMFF94 start, and what a variance-preserving start buys (issue 29).

A training input at step t is sqrt(alpha_bar_t) x0 + deviation: shrunk about its centre by
sqrt(alpha_bar_t) (3.6 % at t = 190). An MMFF94 start deviates from the xTB minimum as much as
Gaussian noise of step ~190, but it is not shrunk, and the time head reads the missing shrink as
"low t". Two measurements on MOSES molecules of the xTB dataset:

* ``oneshot``: one model evaluation of the MMFF94 start at a given step t, the input as it is or
  scaled by sqrt(alpha_bar_t) (``vp``); the time head's t_hat on that input and the deviation of
  x0_hat from the minimum over the start's (per-coordinate RMS after Kabsch alignment, all atoms).
  ``dev`` = the step whose sigma_t equals the start's real deviation (an oracle).
* ``policies``: full relaxations with each policy (``FixedPolicy.vp_start``): GFN2-xTB energy above
  the dataset's minimum, symmetry-aware RMSD (heavy atoms, all atoms) to it, and, with ``--handoff sella,bfgs``,
  the GFN2-xTB gradient calls each optimizer needs from that start to fmax 0.03 eV/A (the pipeline's route).

    python -m benchmarks.vp_start oneshot --part val --n 100 --out docs/results/vp_start_oneshot_val.json
    python -m benchmarks.vp_start policies --part val --n 200 --handoff sella,bfgs --model moses-painn128-jt3 \\
        --policies jt,fixed:t0=250+vp_start=1 --out docs/results/vp_start_policies_val.json
    python -m benchmarks.vp_start policies --part val --n 100 --handoff sella --model runs/moses-mstep40/last \\
        --policies "jt>jt@moses-painn128-jt5" --out docs/results/sella_val100_mstep40_jt5.json   # two checkpoints
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from ase_diffrelax.files import atomic_write_json

HERE = Path(__file__).resolve().parent
DATA = HERE.parent / "data" / "moses_xtb" / "dataset.npz"


def oneshot(model_name: str, part: str, n: int, steps: list, data: Path = DATA) -> dict:
    from ase_diffrelax import load_model
    from ase_diffrelax.core.denoise import denoise
    from ase_diffrelax.training.xtb_dataset import read_dataset

    from .time_blindness import deviation

    model = load_model(model_name, device="cpu")
    net, sched = model.net, model.net.schedule
    rows = []
    for a in read_dataset(data, part)[:n]:
        ref = a.positions
        x = a.arrays["positions_mmff"] - a.arrays["positions_mmff"].mean(0)
        d0 = deviation(x, ref)
        t_dev = int(sched.t_for_sigma(np.array([d0]))[0])
        numbers, mol = torch.as_tensor(a.numbers), torch.zeros(len(a), dtype=torch.long)
        row = {"id": int(a.info["id"]), "dev_start": d0, "t_dev": t_dev}
        with torch.no_grad():
            for step in ["hat", *steps, "dev"]:
                for vp in ((False,) if step == "hat" else (False, True)):
                    t = None if step == "hat" else (t_dev if step == "dev" else int(step))
                    scale = float(np.sqrt(sched.alpha_bar[t])) if vp else 1.0
                    choose = None if t is None else (lambda th, t=t: torch.full_like(th, t))
                    out = denoise(net, sched, numbers, torch.as_tensor(x * scale, dtype=torch.float32), mol, 1,
                                  choose_t=choose)
                    key = f"{step}{'_vp' if vp else ''}"
                    row[f"ratio_{key}"] = deviation(out.x0_hat.double().numpy(), ref) / d0
                    row[f"t_hat_{key}"] = float(out.t_hat[0])
        rows.append(row)
    keys = [k for k in rows[0] if k != "id"]
    return {"model": model_name, "part": part, "n": len(rows),
            "what": "one evaluation of the MMFF94 start at step t (hat = the time head's own); _vp = input scaled "
                    "by sqrt(alpha_bar_t); ratio = deviation of x0_hat / deviation of the start (per-coordinate RMS "
                    "after Kabsch alignment to the GFN2-xTB minimum, all atoms); dev = the oracle step",
            "median": {k: float(np.median([r[k] for r in rows])) for k in keys}, "rows": rows}


def relax_stage(starts, mols, spec: str, model) -> list:
    """``relax_many`` with ``spec``; ``POLICY@MODEL`` runs this stage with another checkpoint;
    ``oracle:POLICY`` sets each molecule's t0 to the step whose sigma_t equals the start's real
    deviation from the minimum (rounded to 10 steps; an upper bound for a head that would predict it)."""
    from ase_diffrelax import load_model, relax_many

    from .time_blindness import deviation

    if "@" in spec:
        spec, other = spec.split("@", 1)
        model = load_model(other, device="cpu")

    kwargs = dict(model=model, progress=False, batch_size=16, unseen_bonds="relax", on_error="skip")
    if not spec.startswith("oracle:"):
        return relax_many(starts, policy=spec, **kwargs)
    sched = model.net.schedule
    t0 = [int(np.clip(round(int(sched.t_for_sigma(np.array([deviation(a.positions, m.positions)]))[0]), -1), 10, 990))
          for a, m in zip(starts, mols)]
    res = [None] * len(starts)
    for t in sorted(set(t0)):
        idx = [i for i, ti in enumerate(t0) if ti == t]
        for i, r in zip(idx, relax_many([starts[i] for i in idx], policy=f"{spec[7:]}+t0={t}", **kwargs)):
            res[i] = r
    return res


def policies(model_name: str, part: str, n: int, specs: list, handoff: list, data: Path = DATA, log=print) -> dict:
    from ase_diffrelax import load_model
    from ase_diffrelax.training.xtb_dataset import mmff_start, read_dataset
    from ase_diffrelax.workflows.pipeline import physics_stage

    from .start_quality import Scorer, lowest_route_energies

    model = load_model(model_name, device="cpu")
    mols = read_dataset(data, part)[:n]
    routes = lowest_route_energies()
    scorers = [Scorer(a, min(a.info["energy_xtb"], routes.get(f"{part}_{a.info['id']}", np.inf))) for a in mols]
    starts = [mmff_start(a) for a in mols]
    out = {}
    for spec in specs:
        t0 = time.perf_counter()
        if spec == "mmff":
            ends, steps = [s.copy() for s in starts], [0] * len(starts)
        else:  # "A>B": relax with A, then with B from A's end (a two-stage policy)
            ends, steps = [s.copy() for s in starts], [0] * len(starts)
            for stage in spec.split(">"):
                res = relax_stage(ends, mols, stage, model)
                ends, steps = [r.atoms for r in res], [k + r.steps for k, r in zip(steps, res)]
        wall = (time.perf_counter() - t0) / len(starts)
        rows = []
        for a, m, sc, st in zip(ends, mols, scorers, steps):
            rec = {"id": int(m.info["id"]), "steps": st, **{k: v for k, v in sc(a.positions).items() if k != "energy"}}
            for optimizer in handoff:
                b = a.copy()
                b.info["charge"] = m.info["charge"]
                _, rep = physics_stage(b, "xtb", fmax=0.03, max_steps=500, optimizer=optimizer, hessian="identity")
                rec[f"{optimizer}_calls"] = rep.force_calls
            rows.append(rec)
        summary = {"wall_s_per_molecule": wall}
        for k in ("dE_kcal", "rmsd_heavy", "rmsd_all", *(f"{o}_calls" for o in handoff), "steps"):
            if k in rows[0]:
                v = np.array([r[k] for r in rows], dtype=float)
                summary[k] = {"median": float(np.median(v)), "mean": float(v.mean()), "p90": float(np.percentile(v, 90))}
        out[spec] = {"summary": summary, "rows": rows}
        log(f"{spec}: {json.dumps(summary)}")
    for key in (f"{o}_calls" for o in handoff if len(specs) > 1):  # paired: per molecule, against the first
        base = np.array([r[key] for r in out[specs[0]]["rows"]])
        for spec in specs[1:]:
            other = np.array([r[key] for r in out[spec]["rows"]])
            out[spec]["summary"][f"{key}_vs_first"] = {"fewer": int((other < base).sum()), "same": int((other == base).sum()),
                                                      "more": int((other > base).sum()),
                                                      "mean_difference": float((other - base).mean())}
    return {"model": model_name, "part": part, "n": len(mols),
            "what": "GFN2-xTB energy above the lowest known minimum (kcal/mol), symmetry-aware RMSD after alignment "
                    "(A), Sella xTB gradient calls from the start to fmax 0.03 eV/A", "policies": out}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=["oneshot", "policies"])
    p.add_argument("--part", default="val")
    p.add_argument("--n", type=int, default=100)
    p.add_argument("--model", default="moses-painn128-jt3")
    p.add_argument("--steps", default="40,60,100,150,200,300", help="oneshot: steps to evaluate at")
    p.add_argument("--policies", default="jt,fixed:t0=250+vp_start=1",
                   help="policies: comma list (or mmff); A>B = relax with A, then with B from its end; "
                   "POLICY@MODEL = that stage with another checkpoint")
    p.add_argument("--handoff", default="", help="policies: comma list of optimizers (sella, bfgs) whose GFN2-xTB "
                   "calls from each end to fmax 0.03 are counted")
    p.add_argument("--data", default=str(DATA))
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    if args.what == "oneshot":
        report = oneshot(args.model, args.part, args.n, [int(s) for s in args.steps.split(",")], Path(args.data))
        print(json.dumps(report["median"], indent=1))
    else:
        report = policies(args.model, args.part, args.n, [s.strip() for s in args.policies.split(",") if s.strip()],
                          [o for o in args.handoff.split(",") if o], Path(args.data))
    report["command"] = "python -m benchmarks.vp_start " + " ".join(argv if argv is not None else sys.argv[1:])
    atomic_write_json(args.out, report, indent=1)


if __name__ == "__main__":
    main()
