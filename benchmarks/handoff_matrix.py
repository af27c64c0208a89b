"""Hand-off matrix: start structure x hand-off optimizer/initial Hessian, counted in target-level
gradient calls, against the strongest route a user could take without diffusion.

Starts   mmff        SMILES -> ETKDG -> MMFF94 (QM9: stereo from the reference, reference atom order;
                     MOSES: the dataset's MMFF94 minimum)
         xtb-preopt  mmff -> GFN2-xTB BFGS (DFT targets only; at the xTB level it is the answer)
         diffusion   mmff -> DiffusionRelax, shipped checkpoint chosen automatically, policy jt
         diffusion-xtb  diffusion -> GFN2-xTB by the route `pipeline --to dft --via-xtb` takes for an xTB stage
                     before DFT (handoff_defaults.json 'xtb_before_dft': ASE BFGS)
         diffusion-xtb-sella  diffusion -> GFN2-xTB by Sella (what --via-xtb did before 'xtb_before_dft')
Routes   bfgs, lbfgs, fire, sella, geometric, and <optimizer>+xtb: the GFN2-xTB Hessian at the start
         as the initial Hessian (its gradients are counted apart; at the xTB target they add to
         the target-level count in ``calls_incl_hessian``)

Every cell is one JSON line in benchmarks/cache/handoff_matrix_<set>_<level>.jsonl, keyed by
molecule, start, route (and the checkpoint hash for diffusion starts): resumable, shareable by
several processes, recomputing nothing that is cached. At the DFT level every gradient is also kept
(benchmarks/cache/gradients_<set>_<level>.jsonl): a cell killed mid-way replays them when it is run
again and goes on from there (its wall time counts what the replayed gradients first cost), and the
plain BFGS cells of benchmarks/handoff.py's cache are reused (same starts, same BFGS).

    python -m benchmarks.handoff_matrix --set qm9 --level xtb --n 200
    python -m benchmarks.handoff_matrix --set moses --level xtb --n 300
    nohup python -m benchmarks.handoff_matrix --set qm9 --level dft --n 12 --max-heavy 6 --density-fit &
    python -m benchmarks.handoff_matrix --set qm9 --level dft --n 12 --max-heavy 6 --density-fit --summary-only
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from ase_diffrelax.evaluation import KCAL_MOL_PER_EV
from ase_diffrelax.files import JsonlStore, atomic_write_json
from benchmarks import cache_tag

HERE = Path(__file__).resolve().parent
ROUTES = ["bfgs", "sella", "geometric", "bfgs+xtb", "sella+xtb"]
SAME_MINIMUM_KCAL = 0.3
PRESENTATION_FLAGS = ("--summary-only", "--markdown", "--verbose")  # left out of the recorded command


def level_tag(args) -> str:
    if args.level == "xtb":
        return "xtb"
    tag = f"dft_{args.xc}_{args.basis}{'_df' if args.density_fit else ''}"
    return cache_tag(tag)


def physics_params(args) -> dict:
    if args.level == "xtb":
        return {}
    return {"xc": args.xc, "basis": args.basis, "density_fit": args.density_fit, "threads": args.threads}


def molecules(args):
    """[(id, smiles, mmff Atoms, mmff wall s, charge)] in a fixed order."""
    if args.set == "qm9":
        from ase_diffrelax.evaluation import qm9_mmff_start, select_qm9_molecules

        ms, candidates = select_qm9_molecules(args.n, args.max_heavy, args.seed)
        out = []
        for i in candidates:
            if len(out) >= args.n:
                break
            start, wall = qm9_mmff_start(ms, i, args.seed)
            if start is not None:
                out.append((int(ms.ids[i]), str(ms.smiles[i]), start, wall, 0))
        return out
    from ase_diffrelax.training.xtb_dataset import mmff_start, read_dataset

    out = []
    for part in args.parts.split(","):
        for a in read_dataset(args.data, split=part)[: args.n]:
            start = mmff_start(a)
            out.append((f"{part}_{a.info['id']}", a.info["smiles"], start, float("nan"), a.info["charge"]))
    return out


class Starts:
    """Start structures of one molecule, built once per process and shared by its routes."""

    def __init__(self, args, mol):
        self.args, self.mol, self._cache, self._hess = args, mol, {}, {}

    def get(self, name):
        from ase_diffrelax.workflows.pipeline import diffusion_stage, handoff_level, physics_stage, resolve_handoff

        if name in self._cache:
            return self._cache[name]
        _, _, mmff, mmff_wall, charge = self.mol
        if name == "mmff":
            res = (mmff.copy(), {"mmff_wall_s": mmff_wall})
        elif name == "diffusion":
            atoms, rep = diffusion_stage(mmff, seed=0, policy="jt", strict=True)
            res = (atoms, {"mmff_wall_s": mmff_wall, "pre_wall_s": rep.wall_s, "diffusion_steps": rep.steps,
                           "model": rep.extra["model"], "diffusion_topology_changed": rep.topology["changed"]})
        elif name in ("diffusion-xtb", "diffusion-xtb-sella"):  # `pipeline --to dft --via-xtb`
            diffused, d_meta = self.get("diffusion")
            route = resolve_handoff(handoff_level("xtb", ["xtb", "dft"])) if name == "diffusion-xtb" else ("sella", "identity")
            atoms, rep = physics_stage(diffused, "xtb", fmax=self.args.fmax, max_steps=self.args.max_steps,
                                       optimizer=route[0], hessian=route[1])
            res = (atoms, {**d_meta, "pre_wall_s": d_meta["pre_wall_s"] + rep.wall_s, "pre_xtb_calls": rep.force_calls})
        elif name == "xtb-preopt":
            atoms, rep = physics_stage(mmff, "xtb", fmax=self.args.fmax, max_steps=self.args.max_steps,
                                       optimizer="bfgs", hessian="identity")
            res = (atoms, {"mmff_wall_s": mmff_wall, "pre_wall_s": rep.wall_s, "pre_xtb_calls": rep.force_calls})
        else:
            raise ValueError(f"unknown start {name!r}")
        res[0].info["charge"] = charge
        self._cache[name] = res
        return res

    def hessian(self, name):
        """The xTB Hessian at a start, computed once and shared by every '+xtb' route."""
        from ase_diffrelax.workflows.handoff import xtb_hessian

        if name not in self._hess:
            atoms, _ = self.get(name)
            self._hess[name] = xtb_hessian(atoms, charge=int(atoms.info.get("charge", 0)))
        return self._hess[name]


def legacy_bfgs(args, legacy: JsonlStore | None, qid, start, mhash):
    """A plain-BFGS DFT cell from benchmarks/handoff.py's cache, in this script's record form."""
    if legacy is None or args.set != "qm9":
        return None
    key = f"{qid}_{start}" + (f"_{mhash}" if start == "diffusion" else "")
    r = legacy.get(key)
    if r is None:
        return None
    p, st = r["physics"], r["stages"]
    pre = st.get("diffusion") or st.get("xtb_preopt") or {}
    return {"calls": p["force_calls"], "steps": p["steps"], "converged": p["converged"], "e_start": p["energy_start_eV"],
            "e_end": p["energy_end_eV"], "fmax_end": p["fmax_end"], "bonds_changed": p["topology_changed"],
            "physics_wall_s": p["wall_s"], "mmff_wall_s": st.get("mmff_wall_s"), "pre_wall_s": pre.get("wall_s"),
            "pre_xtb_calls": pre.get("force_calls"), "hessian_calls": 0, "hessian_wall_s": 0.0,
            "source": f"benchmarks/handoff.py cache {key}"}


def run_cell(args, starts: Starts, start: str, route: str) -> dict:
    from ase_diffrelax.chem.topology import topology_change
    from ase_diffrelax.workflows.pipeline import physics_stage

    atoms, meta = starts.get(start)
    optimizer, _, hess = route.partition("+")
    h_work = None
    hessian = "identity"
    if hess == "xtb":
        h0, h_work = starts.hessian(start)
        hessian = lambda _atoms: h0  # noqa: E731 (already projected and positive definite)
    memo = None
    if args.level == "dft":  # a cell of hours resumes from its stored gradients after a kill
        from ase_diffrelax.workflows.physics import GradientMemo
        from ase_diffrelax.workflows.pipeline import electronic_state, make_physics_calculator

        q, u = electronic_state(atoms)
        tag = level_tag(args)
        memo = GradientMemo(make_physics_calculator("dft", q, u, **physics_params(args)),
                            Path(args.cache) / f"gradients_{args.set}_{tag}.jsonl", level=tag)
    final, rep = physics_stage(atoms, args.level, fmax=args.fmax, max_steps=args.max_steps, optimizer=optimizer,
                               hessian=hessian, calc=memo, logfile="-" if args.verbose else None,
                               **({} if memo else physics_params(args)))
    mmff = starts.get("mmff")[0]
    replayed_wall = memo.replayed_wall_s if memo else 0.0
    return {"calls": rep.force_calls, "steps": rep.steps, "converged": rep.converged, "e_start": rep.energy_start_eV,
            "e_end": rep.energy_end_eV, "fmax_end": rep.fmax_end, "physics_wall_s": rep.wall_s + replayed_wall,
            "replayed_calls": memo.replayed if memo else 0,
            # against the MMFF94 start's bond graph: the SMILES' graph for every start
            "bonds_changed": bool(topology_change(mmff.numbers, mmff.positions, final.positions)["changed"]),
            "hessian_calls": h_work.calls if h_work else 0, "hessian_wall_s": h_work.wall_s if h_work else 0.0,
            **meta}


def summarize(rows: dict, mols: list, cells: list[tuple[str, str]], level: str) -> dict:
    """Per cell: medians over the molecules that have every cell, so cells compare like for like."""
    complete = [m for m in mols if all((m, s, r) in rows for s, r in cells)]
    per_mol = {}
    for m in complete:
        e_best = min(rows[(m, s, r)]["e_end"] for s, r in cells if rows[(m, s, r)]["converged"]) \
            if any(rows[(m, s, r)]["converged"] for s, r in cells) else min(rows[(m, s, r)]["e_end"] for s, r in cells)
        per_mol[m] = e_best
    out = {}
    for s, r in cells:
        rs = [rows[(m, s, r)] for m in complete]
        if not rs:
            continue
        calls = np.array([x["calls"] for x in rs], float)
        h_calls = np.array([x["hessian_calls"] for x in rs], float)
        pre_calls = np.array([x.get("pre_xtb_calls") or 0 for x in rs], float)
        same = [x["converged"] and not x["bonds_changed"] and (x["e_end"] - per_mol[m]) * KCAL_MOL_PER_EV <= SAME_MINIMUM_KCAL
                for m, x in zip(complete, rs)]
        wall = [np.nansum([x.get("mmff_wall_s") or 0.0, x.get("pre_wall_s") or 0.0, x["hessian_wall_s"], x["physics_wall_s"]])
                for x in rs]
        entry = {"start": s, "route": r, "n": len(rs),
                 "calls_median": float(np.median(calls)), "calls_mean": float(calls.mean()),
                 "hessian_calls_median": float(np.median(h_calls)),
                 "xtb_calls_before_target_median": float(np.median(h_calls + pre_calls)) if level != "xtb" else None,
                 "converged_fraction": float(np.mean([x["converged"] for x in rs])),
                 "same_minimum_fraction": float(np.mean(same)),
                 "final_above_best_kcal_median": float(np.median([(x["e_end"] - per_mol[m]) * KCAL_MOL_PER_EV
                                                                  for m, x in zip(complete, rs)])),
                 "wall_from_smiles_s_median": float(np.median(wall)), "wall_from_smiles_s_total": float(np.sum(wall))}
        if level == "xtb":  # the Hessian's gradients are target-level gradients here
            entry["calls_incl_hessian_median"] = float(np.median(calls + h_calls))
        out[f"{s}/{r}"] = entry
    key = "calls_incl_hessian_median" if level == "xtb" else "calls_median"
    ok = {k: v for k, v in out.items() if v["converged_fraction"] >= 0.95}
    no_diff = {k: v for k, v in ok.items() if not k.startswith("diffusion")}  # diffusion, diffusion-xtb
    best = min(ok, key=lambda k: (ok[k][key], ok[k]["wall_from_smiles_s_median"])) if ok else None
    best_nd = min(no_diff, key=lambda k: (no_diff[k][key], no_diff[k]["wall_from_smiles_s_median"])) if no_diff else None
    # per molecule: the best route's calls over the best no-diffusion route's calls
    ratio = None
    if best and best_nd:
        (s1, r1), (s2, r2) = best.split("/"), best_nd.split("/")
        def cost(x):
            return x["calls"] + (x["hessian_calls"] if level == "xtb" else 0)
        ratio = float(np.median([cost(rows[(m, s1, r1)]) / max(1, cost(rows[(m, s2, r2)])) for m in complete]))
    return {"n_complete": len(complete), "ranked_by": key, "best_route": best, "best_route_without_diffusion": best_nd,
            "best_over_best_without_diffusion_per_molecule_median": ratio, "cells": out}


def per_molecule(rows: dict, mols: list, cells: list[tuple[str, str]]) -> dict:
    """Every finished cell per molecule (also of molecules with cells missing): the long DFT runs
    are read one molecule at a time."""
    out = {}
    for m in mols:
        have = {f"{s}/{r}": rows[(m, s, r)] for s, r in cells if (m, s, r) in rows}
        if not have:
            continue
        e_min = min(x["e_end"] for x in have.values())
        any_cell = next(iter(have.values()))
        out[m] = {"smiles": any_cell.get("smiles"), "n_atoms": any_cell["n_atoms"],
                  "cells": {k: {"calls": x["calls"], "hessian_calls": x["hessian_calls"], "converged": x["converged"],
                                "above_lowest_kcal": (x["e_end"] - e_min) * KCAL_MOL_PER_EV,
                                "wall_min": np.nansum([x.get("pre_wall_s") or 0.0, x["hessian_wall_s"],
                                                       x["physics_wall_s"]]) / 60}
                            for k, x in have.items()}}
    return out


def per_molecule_markdown(result: dict) -> str:
    names = [f"{s}/{r}" for s, r in zip(result["cell_starts"], result["cell_routes"])]
    lines = ["| molecule | atoms | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
    for m, d in result["per_molecule"].items():
        row = []
        for n in names:
            c = d["cells"].get(n)
            row.append("-" if c is None else
                       f"{c['calls']}{'' if c['converged'] else ' (not converged)'} (+{c['hessian_calls']}), "
                       f"{c['wall_min']:.0f} min, +{c['above_lowest_kcal']:.1f} kcal/mol")
        lines.append(f"| {m} `{d['smiles']}` | {d['n_atoms']} | " + " | ".join(row) + " |")
    return "\n".join(lines)


def markdown_table(result: dict) -> str:
    xtb = result["level"] == "xtb"
    head = ("| start / hand-off | n | median target calls | + Hessian calls | converged | same minimum | "
            "wall from SMILES [s] |")
    lines = [head, "|---|---|---|---|---|---|---|"]
    for name, c in result["cells"].items():
        total = f" (= {c['calls_incl_hessian_median']:.0f})" if xtb and c["hessian_calls_median"] else ""
        lines.append(f"| {name} | {c['n']} | {c['calls_median']:.1f} | {c['hessian_calls_median']:.0f}{total} | "
                     f"{100 * c['converged_fraction']:.0f} % | {100 * c['same_minimum_fraction']:.0f} % | "
                     f"{c['wall_from_smiles_s_median']:.2f} |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--set", choices=["qm9", "moses"], default="qm9")
    p.add_argument("--level", choices=["xtb", "dft"], default="xtb")
    p.add_argument("--n", type=int, default=200, help="molecules (MOSES: per part)")
    p.add_argument("--max-heavy", type=int, default=None, help="QM9: only molecules up to this many heavy atoms")
    p.add_argument("--data", default="data/moses_xtb/dataset.npz")
    p.add_argument("--parts", default="test", help="MOSES parts, comma list (test, test_scaffolds)")
    p.add_argument("--molecules", default=None, help="comma list of molecule ids (of the selected ones), in this order")
    p.add_argument("--starts", default=None, help="comma list; default mmff,diffusion (+xtb-preopt for dft)")
    p.add_argument("--routes", default=",".join(ROUTES), help="comma list of optimizer[+xtb]")
    p.add_argument("--extra-cells", default="",
                   help="comma list of start/route cells beyond starts x routes, e.g. diffusion-xtb/bfgs+xtb")
    p.add_argument("--order", choices=["molecule", "cell"], default="molecule",
                   help="cell: finish one (start, route) over all molecules before the next (long DFT runs)")
    p.add_argument("--fmax", type=float, default=0.03)
    p.add_argument("--max-steps", type=int, default=500)
    p.add_argument("--xc", default="b3lyp")
    p.add_argument("--basis", default="6-31g(2df,p)")
    p.add_argument("--density-fit", action="store_true")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache", default=str(HERE / "cache"))
    p.add_argument("--out", default=None, help="JSON (default docs/results/handoff_matrix_<set>_<level>.json)")
    p.add_argument("--verbose", action="store_true", help="print the optimizer's log, one line per step (DFT cells)")
    p.add_argument("--summary-only", action="store_true", help="tabulate the cache, compute nothing")
    p.add_argument("--markdown", action="store_true", help="print the cells as a markdown table (docs/benchmarks.md)")
    args = p.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import torch

    torch.set_num_threads(args.threads)
    from ase_diffrelax import load_model
    from ase_diffrelax.evaluation import model_hash

    tag = level_tag(args)
    default_starts = ["mmff", "diffusion"] + (["xtb-preopt"] if args.level == "dft" else [])
    starts = args.starts.split(",") if args.starts else default_starts
    routes = args.routes.split(",")
    cells = [(s, r) for r in routes for s in starts]
    for cell in filter(None, args.extra_cells.split(",")):
        s_, sep, r_ = cell.partition("/")
        if not sep or not s_ or not r_:
            p.error(f"--extra-cells {cell!r}: write start/route, e.g. diffusion-xtb/bfgs+xtb")
        cells += [(s_, r_)] if (s_, r_) not in cells else []
    cache = JsonlStore(Path(args.cache) / f"handoff_matrix_{args.set}_{tag}.jsonl")
    legacy = None
    if args.level == "dft":
        legacy_path = Path(args.cache) / f"stereo_{tag.replace('dft_' + args.xc + '_', 'dft_')}.jsonl"
        legacy = JsonlStore(legacy_path) if legacy_path.exists() else None
    mhash = {}

    def key(mol_id, start, route, mol):
        k = f"{mol_id}_{start}_{route}"
        if start.startswith("diffusion"):  # its start depends on the checkpoint
            from ase_diffrelax.core.checkpoint import choose_model

            name = choose_model([mol[2]])
            if name not in mhash:
                mhash[name] = model_hash(load_model(name))
            k += f"_{mhash[name]}"
        return k

    mols = molecules(args)
    if args.molecules:  # a subset, in the order given (a long cell last)
        by_id = {str(m[0]): m for m in mols}
        unknown = [i for i in args.molecules.split(",") if i not in by_id]
        if unknown:
            p.error(f"--molecules {','.join(unknown)}: not among the {len(mols)} selected molecules")
        mols = [by_id[i] for i in args.molecules.split(",")]
    rows = {}
    order = [(m, c) for c in cells for m in mols] if args.order == "cell" else [(m, c) for m in mols for c in cells]
    per_mol_starts = {}
    t_begin = time.perf_counter()
    for mol, (s, r) in order:
        mol_id = mol[0]
        k = key(mol_id, s, r, mol)
        cache.reload()
        if k not in cache and not args.summary_only:
            rec = legacy_bfgs(args, legacy, mol_id, s, mhash.get("qm9-painn128-jt")) if r == "bfgs" else None
            if rec is None:
                st = per_mol_starts.setdefault(mol_id, Starts(args, mol))
                if args.order == "cell":
                    per_mol_starts = {mol_id: st}  # keep one molecule's starts in memory
                rec = run_cell(args, st, s, r)
            cache.add(k, {"mol": mol_id, "smiles": mol[1], "n_atoms": len(mol[2]), "start": s, "route": r,
                          "level": tag, **rec})
            print(f"[{time.perf_counter() - t_begin:7.0f} s] {mol_id} {s:10s} {r:12s} calls {rec['calls']:4d} "
                  f"+H {rec['hessian_calls']:4d} conv {rec['converged']} E {rec['e_end']:.5f}", flush=True)
        if k in cache:
            rows[(mol_id, s, r)] = cache.get(k)
        if args.order == "molecule" and (s, r) == cells[-1]:
            per_mol_starts.pop(mol_id, None)
    result = summarize(rows, [m[0] for m in mols], cells, args.level)
    result.update(cell_starts=[s for s, _ in cells], cell_routes=[r for _, r in cells],
                  per_molecule=per_molecule(rows, [m[0] for m in mols], cells))
    result.update({"set": args.set, "level": tag, "fmax": args.fmax, "physics": physics_params(args),
                   "same_minimum": f"converged, bond graph of the SMILES kept, final energy within {SAME_MINIMUM_KCAL} "
                                   "kcal/mol of the lowest converged final energy over all cells of that molecule",
                   "wall_from_smiles": "MMFF94 + diffusion or xTB pre-optimisation + Hessian + target relaxation, one thread",
                   "n_molecules_selected": len(mols), "starts": starts, "routes": routes,
                   "command": "python -m benchmarks.handoff_matrix " + " ".join(
                       a for a in (argv if argv is not None else sys.argv[1:]) if a not in PRESENTATION_FLAGS)})
    out = Path(args.out or HERE.parent / "docs" / "results" / f"handoff_matrix_{args.set}_{args.level}.json")
    atomic_write_json(out, result, indent=1)
    print(json.dumps({k: v for k, v in result.items() if k != "cells"}, indent=1))
    if args.markdown:
        print(markdown_table(result))
        print("\nper molecule: DFT or xTB calls (+ Hessian's xTB gradients), minutes of one core after MMFF94, "
              "final energy above the molecule's lowest\n")
        print(per_molecule_markdown(result))
    for name, c in result["cells"].items():
        print(f"{name:28s} n={c['n']:3d} calls {c['calls_median']:6.1f} +H {c['hessian_calls_median']:5.0f} "
              f"conv {c['converged_fraction']:.2f} same-min {c['same_minimum_fraction']:.2f} "
              f"wall {c['wall_from_smiles_s_median']:8.2f} s")
    return result


if __name__ == "__main__":
    main()
