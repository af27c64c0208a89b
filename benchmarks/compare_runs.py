"""Validation curves of training runs side by side, at equal steps (and the wall time each took).

Made for "fine-tune from a shipped checkpoint or train from scratch, at equal compute": both runs
use the same data, batch, learning-rate schedule and threads, so equal steps is equal compute.

    python benchmarks/compare_runs.py runs/drugs-init runs/drugs-scratch --out docs/results/drugs_init_vs_scratch.json
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from ase_diffrelax.files import atomic_write_json

METRICS = ("val_score", "mmff_oneshot_ratio_median", "mmff_oneshot_fail_frac", "mmff_oneshot_rmsd_median",
           "noise_mse_t1-50", "time_mae_t1-50", "train_loss")


def read_log(run: Path) -> dict[int, dict]:
    """Validation records by step (a resumed run may log a step twice: the later one counts)."""
    rows = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines() if line.strip()]
    return {r["step"]: r for r in rows if "val_score" in r}


def compare(runs: list[Path]) -> dict:
    logs = {str(r): read_log(r) for r in runs}
    cards = {}
    for r in runs:
        card = json.loads((r / "last.json").read_text()) if (r / "last.json").exists() else {}
        cfg = card.get("training", {}).get("config", {})
        cards[str(r)] = {k: cfg.get(k) for k in ("data", "init", "batch_size", "lr", "lr_decay_start",
                                                  "lr_decay_end", "mmff_fraction", "threads", "seed",
                                                  "val_molecules", "max_train_molecules")}
    common = sorted(set.intersection(*(set(log) for log in logs.values())))
    table = [{"step": step, **{name: {k: log[step].get(k) for k in METRICS + ("wall_s",)}
                               for name, log in logs.items()}} for step in common]
    return {"runs": cards, "metric_notes": {
        "val_score": "the trainer's model-selection score on validation (lower is better)",
        "mmff_oneshot_ratio_median": "median over validation molecules of RMSD(one denoising step from the "
                                     "MMFF94 minimum, reference) / RMSD(MMFF94 minimum, reference); "
                                     "symmetry-aware, aligned, all atoms"},
        "steps": table}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    result = compare(args.runs)
    names = [str(r) for r in args.runs]
    print("| step | " + " | ".join(f"{n} val_score | {n} one-shot ratio | {n} wall s" for n in names) + " |")
    print("|---" * (1 + 3 * len(names)) + "|")
    for row in result["steps"]:
        cells = []
        for n in names:
            m = row[n]
            cells += [f"{m['val_score']:.3f}", f"{m['mmff_oneshot_ratio_median']:.3f}", f"{m['wall_s']:.0f}"]
        print(f"| {row['step']} | " + " | ".join(cells) + " |")
    if args.out:
        atomic_write_json(args.out, result)


if __name__ == "__main__":
    main()
