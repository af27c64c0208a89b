"""Plots of the drug-like hand-off from ``drugs.py`` reports: per-molecule GFN2-xTB steps from the
diffusion start against steps from MMFF94, and the distribution of start energies above the xTB
minimum. Optionally a second set of reports (e.g. the QM9 checkpoint on the H C N O F subset).

    python benchmarks/plot_drugs.py docs/results/drugs_test.json docs/results/drugs_test_scaffolds.json \\
        --compare docs/results/drugs_test_qm9ckpt.json docs/results/drugs_test_scaffolds_qm9ckpt.json \\
        --out docs/results/drugs_test
"""
from __future__ import annotations

import argparse

import numpy as np

from ase_diffrelax.evaluation import drugs_report_rows
from ase_diffrelax.files import save_figure


def tables(paths) -> tuple[str, list[dict]]:
    models, rows = drugs_report_rows(paths)
    return ", ".join(models), rows


def main(argv=None):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("reports", nargs="+")
    p.add_argument("--compare", nargs="*", default=[])
    p.add_argument("--out", required=True, help="path prefix of the two PNG files")
    args = p.parse_args(argv)
    name, rows = tables(args.reports)
    other = tables(args.compare) if args.compare else None

    fig, ax = plt.subplots(figsize=(5, 5))
    mm = np.array([r["mmff"]["steps"] for r in rows])
    df = np.array([r["diffusion"]["steps"] for r in rows])
    ax.scatter(mm, df, s=8, alpha=0.6, label=f"{name} (n={len(rows)})")
    if other:
        ax.scatter([r["mmff"]["steps"] for r in other[1]], [r["diffusion"]["steps"] for r in other[1]], s=8,
                   alpha=0.4, marker="x", label=f"{other[0]} (n={len(other[1])})")
    hi = max(mm.max(), df.max()) * 1.05
    ax.plot([0, hi], [0, hi], "k--", lw=0.8, label="equal")
    ax.plot([0, hi], [0, 0.6 * hi], ":", color="gray", lw=0.8, label="0.6x (goal)")
    ax.set(xlabel="GFN2-xTB BFGS steps from MMFF94", ylabel="steps from MMFF94 -> diffusion",
           title="xTB hand-off, MOSES test molecules", xlim=(0, hi), ylim=(0, hi))
    ax.legend(fontsize=7)
    paths = [save_figure(fig, f"{args.out}_steps_scatter.png")]

    fig, ax = plt.subplots(figsize=(6, 4))
    series = [("MMFF94", [r["mmff"]["start_kcal"] for r in rows]),
              (f"diffusion ({name})", [r["diffusion"]["start_kcal"] for r in rows])]
    if other:
        series.append((f"diffusion ({other[0]}, H C N O F)", [r["diffusion"]["start_kcal"] for r in other[1]]))
    for label, vals in series:
        v = np.sort(np.clip(vals, 1e-3, None))
        ax.plot(v, np.arange(1, len(v) + 1) / len(v), label=f"{label}: median {np.median(vals):.2f}")
    ax.set(xscale="log", xlabel="start energy above the xTB minimum [kcal/mol]", ylabel="fraction of molecules",
           title="Where the xTB relaxation starts")
    ax.legend(fontsize=7)
    paths.append(save_figure(fig, f"{args.out}_start_energy_cdf.png"))
    print("\n".join(paths))


if __name__ == "__main__":
    main()
