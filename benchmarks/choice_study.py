"""Which shipped checkpoint should relax a molecule of this size? Two or more ``drugs.py`` reports
on the same validation molecules, compared per heavy-atom bin.

Per bin and checkpoint: median xTB BFGS step ratio (MMFF -> diffusion vs MMFF), median start energy
above the xTB minimum (kcal/mol; MMFF's alongside), and the fraction of molecules where that
checkpoint's start is the lower in energy. The bins' winners set the registry's ``choice_order``
and ``size_tolerance`` (docs/benchmarks.md).

    python benchmarks/choice_study.py --data data/size_gap/dataset.npz \\
        docs/results/choice_size_gap_qm9ckpt.json docs/results/choice_size_gap_moses.json \\
        --bins 10:11,12:13,14:17 --out docs/results/choice_size_gap.json
"""
from __future__ import annotations

import argparse

import numpy as np

from ase_diffrelax.evaluation import drugs_report_rows
from ase_diffrelax.files import atomic_write_json


def load_rows(report_path: str, split: str) -> tuple[str, dict]:
    models, rows = drugs_report_rows([report_path])
    return ", ".join(models), {t["id"]: t for t in rows if t["part"] == split}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("reports", nargs="+")
    p.add_argument("--data", required=True, help="the dataset the reports ran on (heavy-atom counts by id)")
    p.add_argument("--split", default="val")
    p.add_argument("--bins", default="10:11,12:13,14:17", help="heavy-atom ranges MIN:MAX, comma separated")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    from ase_diffrelax.training.xtb_dataset import read_dataset

    heavy = {a.info["id"]: int((a.numbers > 1).sum()) for a in read_dataset(args.data, split=args.split)}
    reports = [load_rows(r, args.split) for r in args.reports]
    common = sorted(set.intersection(*(set(rows) for _, rows in reports)))
    out = {"data": args.data, "split": args.split, "reports": args.reports, "n_common": len(common), "bins": []}
    for spec in args.bins.split(","):
        lo, hi = (int(x) for x in spec.split(":"))
        ids = [i for i in common if lo <= heavy[i] <= hi]
        if not ids:
            continue
        gaps = np.array([[rows[i]["diffusion"]["start_kcal"] for i in ids] for _, rows in reports])
        entry = {"heavy_atoms": [lo, hi], "n": len(ids),
                 "mmff_start_kcal_median": float(np.median([reports[0][1][i]["mmff"]["start_kcal"] for i in ids])),
                 "mmff_steps_median": float(np.median([reports[0][1][i]["mmff"]["steps"] for i in ids])),
                 "models": {}}
        for k, (name, rows) in enumerate(reports):
            entry["models"][name] = {
                "steps_median": float(np.median([rows[i]["diffusion"]["steps"] for i in ids])),
                "step_ratio_median": float(np.median([rows[i]["diffusion"]["steps"] / max(1, rows[i]["mmff"]["steps"])
                                                      for i in ids])),
                "start_kcal_median": float(np.median(gaps[k])),
                "lowest_start_fraction": float(np.mean(gaps[k] <= gaps.min(axis=0))),
            }
        out["bins"].append(entry)
        print(f"heavy {lo}-{hi} (n={len(ids)}): MMFF {entry['mmff_steps_median']:.0f} steps, "
              f"{entry['mmff_start_kcal_median']:.2f} kcal/mol | " + " | ".join(
                  f"{n}: ratio {m['step_ratio_median']:.2f}, {m['start_kcal_median']:.2f} kcal/mol, lowest "
                  f"{100 * m['lowest_start_fraction']:.0f} %" for n, m in entry["models"].items()))
    atomic_write_json(args.out, out, indent=1)
    return out


if __name__ == "__main__":
    main()
