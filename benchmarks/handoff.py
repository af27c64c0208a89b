"""Hand-off benchmark: physics BFGS (fmax 0.03 eV/A) from different start structures.

For held-out QM9 test molecules (Index % 10 == 0), the physics relaxation (GFN2-xTB or
B3LYP/6-31G(2df,p) via PySCF) is started from:
  mmff              SMILES (stereo from the reference) -> ETKDG -> MMFF94, mapped onto the
                    reference atom order
  diffusion         mmff -> DiffusionRelax, default policy
  diffusion-fixed50 mmff -> DiffusionRelax, fixed T0 = 50 (the relaxation paper)
  diffusion-fixed20 mmff -> DiffusionRelax, fixed T0 = 20
  xtb-preopt        mmff -> GFN2-xTB BFGS (the cheap physical peer; for --level dft)
  reference         the QM9 B3LYP geometry
Every finished relaxation is appended as one JSON line to benchmarks/cache/<level>.jsonl,
keyed by molecule, start and (for diffusion starts) the checkpoint's hash, so the run resumes
after interruption, several processes can share the file, and re-running with the cache
present recomputes nothing.

    python benchmarks/handoff.py --level xtb --n 200
    nohup python benchmarks/handoff.py --level dft --n 12 --max-heavy 6 --density-fit &
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np

from ase_diffrelax.evaluation import KCAL_MOL_PER_EV, model_hash, qm9_mmff_start, select_qm9_molecules
from ase_diffrelax.files import JsonlStore, atomic_write_json, save_figure
from benchmarks import cache_tag

HERE = Path(__file__).resolve().parent
STARTS_XTB = ["mmff", "diffusion", "diffusion-fixed50", "diffusion-fixed20", "reference"]
STARTS_DFT = ["mmff", "diffusion", "xtb-preopt", "reference"]


def physics_params(args):
    if args.level == "xtb":
        return {}
    return {"xc": "b3lyp", "basis": args.basis, "density_fit": args.density_fit, "threads": args.threads}


def cache_key(qid: int, start_name: str, mhash: str | None) -> str:
    return f"{qid}_{start_name}" + (f"_{mhash}" if start_name.startswith("diffusion") else "")


def run_one(args, ms, i, start_name, model, mhash, cache: JsonlStore, mmff_cache):
    from ase import Atoms

    from ase_diffrelax.chem.rmsd import SymmetricRMSD
    from ase_diffrelax.workflows.pipeline import diffusion_stage, physics_stage

    qid = int(ms.ids[i])
    key = cache_key(qid, start_name, mhash)
    cache.reload()  # another process may have finished it
    if key in cache:
        return {k: v for k, v in cache.get(key).items() if k != "key"}
    z, x_ref = ms.molecule(i)
    stages = {}
    if start_name == "reference":
        start = Atoms(numbers=z, positions=x_ref)
    else:
        start, mmff_s = mmff_cache[i]
        stages["mmff_wall_s"] = mmff_s
        if start_name.startswith("diffusion"):
            policy = "jt"
            if start_name.startswith("diffusion-fixed"):
                policy = f"fixed:t0={int(start_name.removeprefix('diffusion-fixed'))}"
            start, rep = diffusion_stage(start, model=model, seed=0, policy=policy)
            stages["diffusion"] = {"wall_s": rep.wall_s, "steps": rep.steps, "t_hat": rep.extra["t_hat"],
                                   "topology_changed": rep.topology["changed"]}
        elif start_name == "xtb-preopt":
            start, rep = physics_stage(start, "xtb", fmax=args.fmax, max_steps=args.max_steps)
            stages["xtb_preopt"] = {"wall_s": rep.wall_s, "steps": rep.steps, "force_calls": rep.force_calls,
                                    "converged": rep.converged}
    rmsd = SymmetricRMSD(z, x_ref)
    final, rep = physics_stage(start, args.level, fmax=args.fmax, max_steps=args.max_steps, **physics_params(args))
    result = {
        "qm9_index": qid, "start": start_name, "n_atoms": int(len(z)), "n_heavy": int((z > 1).sum()),
        "smiles": str(ms.smiles[i]), "model_hash": mhash if start_name.startswith("diffusion") else None,
        "stages": stages,
        "physics": {"level": args.level, "steps": rep.steps, "force_calls": rep.force_calls, "wall_s": rep.wall_s,
                    "converged": rep.converged, "energy_start_eV": rep.energy_start_eV,
                    "energy_end_eV": rep.energy_end_eV, "fmax_end": rep.fmax_end,
                    "topology_changed": rep.topology["changed"], "params": physics_params(args)},
        "rmsd_start_to_reference": rmsd(start.positions), "rmsd_final_to_reference": rmsd(final.positions),
        "final_positions": final.positions.tolist(),
    }
    cache.add(key, result)
    return result


def summarize(rows: dict, starts: list[str], level: str) -> dict:
    """Per-molecule table and medians; ratios are per molecule, then the median."""
    mols = sorted({r["qm9_index"] for r in rows.values()})
    complete = [m for m in mols if all((m, s) in rows for s in starts)]
    table = []
    for m in complete:
        rs = {s: rows[(m, s)] for s in starts}
        e_min = min(r["physics"]["energy_end_eV"] for r in rs.values())
        entry = {"qm9_index": m, "smiles": rs[starts[0]]["smiles"], "n_heavy": rs[starts[0]]["n_heavy"]}
        for s, r in rs.items():
            entry[s] = {
                "steps": r["physics"]["steps"], "force_calls": r["physics"]["force_calls"],
                "physics_wall_s": r["physics"]["wall_s"], "converged": r["physics"]["converged"],
                "start_above_min_kcal": (r["physics"]["energy_start_eV"] - e_min) * KCAL_MOL_PER_EV,
                "final_above_min_kcal": (r["physics"]["energy_end_eV"] - e_min) * KCAL_MOL_PER_EV,
                "rmsd_start_ref": r["rmsd_start_to_reference"], "rmsd_final_ref": r["rmsd_final_to_reference"],
                "diffusion_wall_s": r["stages"].get("diffusion", {}).get("wall_s"),
                "diffusion_steps": r["stages"].get("diffusion", {}).get("steps"),
                # what the start cost before the physics stage (MMFF itself not counted: all starts share it)
                "pre_stage_wall_s": (r["stages"].get("diffusion") or r["stages"].get("xtb_preopt") or {}).get("wall_s", 0.0),
            }
        table.append(entry)
    summary = {"level": level, "n_complete": len(complete), "starts": {}}
    for s in starts:
        steps = np.array([t[s]["steps"] for t in table], dtype=float)
        summary["starts"][s] = {
            "steps_median": float(np.median(steps)) if len(steps) else None,
            "steps_mean": float(np.mean(steps)) if len(steps) else None,
            "start_above_min_kcal_median": float(np.median([t[s]["start_above_min_kcal"] for t in table])) if table else None,
            "final_above_min_kcal_median": float(np.median([t[s]["final_above_min_kcal"] for t in table])) if table else None,
            "rmsd_final_ref_median": float(np.median([t[s]["rmsd_final_ref"] for t in table])) if table else None,
            "not_converged": int(sum(not t[s]["converged"] for t in table)),
            "force_calls_median": float(np.median([t[s]["force_calls"] for t in table])) if table else None,
            "physics_wall_s_median": float(np.median([t[s]["physics_wall_s"] for t in table])) if table else None,
            "pre_stage_wall_s_median": float(np.median([t[s]["pre_stage_wall_s"] for t in table])) if table else None,
            "steps_total": int(sum(t[s]["steps"] for t in table)),
        }
    base = "mmff"
    for s in starts:
        if s == base or not table or base not in starts:
            continue
        ratio = np.array([t[s]["steps"] / max(1, t[base]["steps"]) for t in table])
        summary["starts"][s]["step_ratio_vs_mmff_median"] = float(np.median(ratio))
        summary["starts"][s]["step_reduction_vs_mmff_median_pct"] = float(100 * (1 - np.median(ratio)))
        summary["starts"][s]["energy_delta_final_vs_mmff_final_kcal_median"] = float(np.median(
            [(t[s]["final_above_min_kcal"] - t[base]["final_above_min_kcal"]) for t in table]))
    if "xtb-preopt" in starts and "diffusion" in starts and table:
        summary["diffusion_vs_xtb_preopt_step_ratio_median"] = float(np.median(
            [t["diffusion"]["steps"] / max(1, t["xtb-preopt"]["steps"]) for t in table]))
    if "diffusion" in starts and table and level == "xtb":
        summary["diffusion_wall_vs_xtb_relaxation_median"] = float(np.median(
            [t["diffusion"]["diffusion_wall_s"] / max(1e-9, t["mmff"]["physics_wall_s"]) for t in table]))
    return {"summary": summary, "table": table}


def plots(result: dict, starts: list[str], out_prefix: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = result["table"]
    files = []
    if not table:
        return files
    # the relaxation paper's Fig. 9 style: steps from diffusion vs from MMFF; arrows = energy delta of the final structures
    fig, ax = plt.subplots(figsize=(5.5, 5))
    xs = np.array([t["mmff"]["steps"] for t in table])
    ys = np.array([t["diffusion"]["steps"] for t in table])
    de = np.array([t["diffusion"]["final_above_min_kcal"] - t["mmff"]["final_above_min_kcal"] for t in table])
    sc = ax.scatter(xs, ys, c=np.clip(de, -2, 2), cmap="coolwarm", s=18, vmin=-2, vmax=2)
    big = np.abs(de) > 0.1
    ax.quiver(xs[big], ys[big], np.zeros(big.sum()), -de[big], angles="xy", scale_units="xy", scale=0.5,
              width=0.003, color="k", alpha=0.6)
    m = max(xs.max(), ys.max()) + 2
    ax.plot([0, m], [0, m], "k--", lw=0.8)
    ax.set_xlabel("physics BFGS steps from MMFF start")
    ax.set_ylabel("physics BFGS steps from MMFF -> diffusion start")
    fig.colorbar(sc, label="E(final from diffusion) - E(final from MMFF) [kcal/mol]")
    ax.set_title(f"{result['summary']['level']}: n = {len(table)}")
    files.append(save_figure(fig, f"{out_prefix}_steps_scatter.png", dpi=120))
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    others = [s for s in starts if s != "mmff"]
    axes[0].boxplot([[t[s]["steps"] / max(1, t["mmff"]["steps"]) for t in table] for s in others],
                    tick_labels=others)
    axes[0].axhline(1.0, color="k", lw=0.8, ls="--")
    axes[0].set_ylabel("physics steps / steps from MMFF")
    axes[0].tick_params(axis="x", rotation=30)
    axes[1].boxplot([[max(t[s]["start_above_min_kcal"], 1e-3) for t in table] for s in starts], tick_labels=starts)
    axes[1].set_yscale("log")
    axes[1].set_ylabel("start energy above final minimum [kcal/mol]")
    axes[1].tick_params(axis="x", rotation=30)
    files.append(save_figure(fig, f"{out_prefix}_boxplots.png", dpi=120))
    return files


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--level", choices=["xtb", "dft"], default="xtb")
    p.add_argument("--n", type=int, default=200)
    p.add_argument("--max-heavy", type=int, default=None)
    p.add_argument("--starts", default=None, help="comma list (default depends on --level)")
    p.add_argument("--model", default=None)
    p.add_argument("--fmax", type=float, default=0.03)
    p.add_argument("--max-steps", type=int, default=300)
    p.add_argument("--basis", default="6-31g(2df,p)")
    p.add_argument("--density-fit", action="store_true")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache", default=str(HERE / "cache"))
    p.add_argument("--out", default=None, help="JSON (default docs/results/handoff_<level>.json)")
    p.add_argument("--molecules", default=None,
                   help="comma list of QM9 indices: only these of the selected set (e.g. to split a run over cores)")
    p.add_argument("--summary-only", action="store_true", help="tabulate what the cache holds, compute nothing")
    args = p.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import torch

    torch.set_num_threads(args.threads)
    from ase_diffrelax import load_model

    starts = args.starts.split(",") if args.starts else (STARTS_XTB if args.level == "xtb" else STARTS_DFT)
    needs_model = any(s.startswith("diffusion") for s in starts)
    model = load_model(args.model) if needs_model else None
    mhash = model_hash(model) if needs_model else None
    tag = args.level + ("" if args.level == "xtb" else f"_{args.basis}{'_df' if args.density_fit else ''}")
    # "stereo": MMFF starts from stereo-complete SMILES (earlier caches used QM9's stereo-free SMILES)
    cache = JsonlStore(Path(args.cache) / f"stereo_{cache_tag(tag)}.jsonl")
    ms, candidates = select_qm9_molecules(args.n, args.max_heavy, args.seed)
    rows, done_mols = {}, 0
    only = {int(q) for q in args.molecules.split(",")} if args.molecules else None
    mmff_cache = {}
    for i in candidates:
        if done_mols >= args.n:
            break
        qid = int(ms.ids[i])
        if args.summary_only:
            for s in starts:
                key = cache_key(qid, s, mhash)
                if key in cache:
                    rows[(qid, s)] = {k: v for k, v in cache.get(key).items() if k != "key"}
            done_mols += all((qid, s) in rows for s in starts)
            continue
        start, wall = qm9_mmff_start(ms, i, args.seed)
        if start is None:
            continue
        if only is not None and qid not in only:
            done_mols += 1  # counted, so that --n still means "the first n of the selection"
            continue
        mmff_cache[i] = (start, wall)
        for s in starts:
            r = run_one(args, ms, i, s, model, mhash, cache, mmff_cache)
            rows[(qid, s)] = r
        done_mols += 1
        mmff_cache.pop(i)
        print(f"[{done_mols}/{args.n}] QM9 {qid} " + " ".join(
            f"{s}:{rows[(qid, s)]['physics']['steps']}" for s in starts), flush=True)
    result = summarize(rows, starts, args.level)
    if "mmff" not in starts or "diffusion" not in starts:
        result["summary"]["note"] = "partial start set: ratios vs MMFF / plots need both 'mmff' and 'diffusion'"
    result["summary"].update({"model": str(model.path) if model else None, "model_hash": mhash, "fmax": args.fmax,
                              "physics": physics_params(args), "command": "python benchmarks/handoff.py " +
                              " ".join(argv if argv is not None else __import__("sys").argv[1:])})
    out = Path(args.out or HERE.parent / "docs" / "results" / f"handoff_{tag.split('_')[0]}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    result["plots"] = plots(result, starts, out.with_suffix("")) if {"mmff", "diffusion"} <= set(starts) else []
    atomic_write_json(out, result, indent=1)
    print(json.dumps(result["summary"], indent=1))
    return result


if __name__ == "__main__":
    main()
