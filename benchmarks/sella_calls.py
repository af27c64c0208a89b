"""What Sella's xTB call count follows, from the hand-off matrix cache (no new calculations).

For every start of the MOSES `test` Sella cells of ``benchmarks/cache/handoff_matrix_moses_xtb.jsonl``
(MMFF94 and each drug-like checkpoint's diffusion start): Spearman correlations of the calls with the
start's energy above the lowest minimum any route reached, with the molecule's size and with the
MMFF94 start's calls (how hard the molecule is); calls per start-energy bin over all checkpoints;
and, between two checkpoints, whether a molecule's change in calls follows its change in start energy.

    python -m benchmarks.sella_calls --pair moses-painn128-jt6,moses-painn128-jt7 \
        --out docs/results/sella_calls_moses_test.json
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from ase_diffrelax.evaluation import KCAL_MOL_PER_EV
from ase_diffrelax.files import atomic_write_json

HERE = Path(__file__).resolve().parent
CACHE = HERE / "cache" / "handoff_matrix_moses_xtb.jsonl"
BINS = (-np.inf, 0.5, 1.0, 1.5, 2.0, 3.0, 5.0, np.inf)


def _spearman(a, b) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a, b)[0])


def sella_cells(path: Path = CACHE) -> tuple[dict, dict]:
    """{start tag: {mol: row}} for the Sella route (tag "mmff" or the checkpoint name), and the
    lowest final energy per molecule over every route of the cache (eV)."""
    cells: dict[str, dict] = {}
    e_min: dict[str, float] = {}
    for line in path.read_text().splitlines():
        r = json.loads(line)
        if r.get("level") != "xtb" or not np.isfinite(r.get("e_end", np.nan)) or r.get("bonds_changed"):
            continue
        e_min[r["mol"]] = min(e_min.get(r["mol"], np.inf), float(r["e_end"]))
        if r.get("route") == "sella":
            tag = "mmff" if r["start"] == "mmff" else r.get("model", "diffusion")
            cells.setdefault(tag, {})[r["mol"]] = r
    return cells, e_min


def analyse(pair: tuple[str, str], path: Path = CACHE) -> dict:
    cells, e_min = sella_cells(path)
    common = sorted(set.intersection(*(set(v) for v in cells.values())))
    dE = {tag: np.array([(cells[tag][m]["e_start"] - e_min[m]) * KCAL_MOL_PER_EV for m in common]) for tag in cells}
    calls = {tag: np.array([cells[tag][m]["calls"] for m in common], float) for tag in cells}
    size = np.array([cells["mmff"][m]["n_atoms"] for m in common])
    source = path.relative_to(HERE.parent) if path.is_relative_to(HERE.parent) else path
    out = {"molecules": len(common), "source": str(source), "starts": {}, "bins": [],
           "energy": "GFN2-xTB energy of the start above the lowest final energy any route of the cache reached"}
    for tag in cells:
        out["starts"][tag] = {"calls_median": float(np.median(calls[tag])), "calls_mean": float(calls[tag].mean()),
                              "start_dE_median": float(np.median(dE[tag])),
                              "rho_calls_start_dE": _spearman(calls[tag], dE[tag]),
                              "rho_calls_n_atoms": _spearman(calls[tag], size),
                              "rho_calls_mmff_calls": _spearman(calls[tag], calls["mmff"])}
    diffusion = [t for t in cells if t != "mmff"]
    all_dE = np.concatenate([dE[t] for t in diffusion])
    all_calls = np.concatenate([calls[t] for t in diffusion])
    for lo, hi in zip(BINS[:-1], BINS[1:]):
        sel = (all_dE > lo) & (all_dE <= hi)
        out["bins"].append({"dE_from": None if np.isinf(lo) else lo, "dE_to": None if np.isinf(hi) else hi,
                            "n": int(sel.sum()),
                            "calls_median": float(np.median(all_calls[sel])) if sel.any() else None,
                            "calls_mean": float(all_calls[sel].mean()) if sel.any() else None})
    a, b = pair
    d_calls, d_dE = calls[b] - calls[a], dE[b] - dE[a]
    out["pair"] = {"from": a, "to": b, "rho_dcalls_ddE": _spearman(d_calls, d_dE),
                   "fewer": int((d_calls < 0).sum()), "more": int((d_calls > 0).sum()),
                   "dE_change_median": float(np.median(d_dE)), "calls_change_mean": float(d_calls.mean()),
                   "calls_change_sd": float(d_calls.std())}
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pair", default="moses-painn128-jt6,moses-painn128-jt7", help="two checkpoints: A,B")
    p.add_argument("--out", default=None, help="JSON report")
    args = p.parse_args(argv)
    report = analyse(tuple(args.pair.split(",")))
    print(f"{report['molecules']} molecules with every start")
    for tag, s in report["starts"].items():
        print(f"  {tag}: calls median {s['calls_median']:.1f} mean {s['calls_mean']:.2f}, start dE median "
              f"{s['start_dE_median']:.2f}; rho(calls, start dE) {s['rho_calls_start_dE']:.2f}, "
              f"(calls, atoms) {s['rho_calls_n_atoms']:.2f}, (calls, MMFF94 calls) {s['rho_calls_mmff_calls']:.2f}")
    print("calls per start-energy bin (every diffusion start):")
    for b in report["bins"]:
        if b["n"]:
            print(f"  ({b['dE_from']}, {b['dE_to']}] kcal/mol: n={b['n']} median {b['calls_median']:.1f} "
                  f"mean {b['calls_mean']:.2f}")
    q = report["pair"]
    print(f"{q['from']} -> {q['to']}: start dE change median {q['dE_change_median']:+.2f}, calls fewer on "
          f"{q['fewer']} more on {q['more']} (mean {q['calls_change_mean']:+.2f}, sd {q['calls_change_sd']:.2f}); "
          f"rho(change in calls, change in start dE) {q['rho_dcalls_ddE']:.2f}")
    if args.out:
        atomic_write_json(args.out, report)


if __name__ == "__main__":
    main()
