"""Copy measured metrics from a benchmark JSON into a checkpoint's model card: a relax_quality
report (QM9) or a drugs.py report (one entry per MOSES part, the per-molecule table left out).

    python benchmarks/update_card.py checkpoints/qm9-painn128-jt.json docs/results/relax_quality.json
    python benchmarks/update_card.py checkpoints/moses-painn128-jt.json docs/results/drugs_test.json
"""
import json
import sys
from pathlib import Path

from ase_diffrelax.core.checkpoint import write_card


def main(card_path, result_path):
    _update(card_path, result_path)
    from ase_diffrelax.core.checkpoint import checkpoint_dir

    if Path(card_path).resolve().parent == checkpoint_dir().resolve():  # a shipped card: the registry vouches for it
        from benchmarks.ship_checkpoint import seal

        seal()


def _update(card_path, result_path):
    card = json.load(open(card_path))
    res = json.load(open(result_path))
    if "parts" in res:  # benchmarks/drugs.py
        for part, e in res["parts"].items():
            card.setdefault("benchmarks", {})[f"moses_{part}"] = {
                "source": result_path, "rmsd": res["rmsd"], "xtb_fmax": res["fmax"], "policy": res["policy"],
                **{k: v for k, v in e.items() if k != "table"}}
        write_card(Path(card_path), card)
        return
    card["relaxation"] = {
        "source": result_path, "split": res["split"], "rmsd": res["rmsd"],
        "kinds": {kind: {"n": e["n"], "start_rmsd_median": e["start"]["rmsd_median"],
                         "policies": {name: {k: s[k] for k in ("rmsd_after_median", "ratio_median", "failure_pct",
                                                               "evals_median", "wall_ms_per_molecule")}
                                      for name, s in e["policies"].items()}}
                  for kind, e in res["kinds"].items()},
    }
    write_card(Path(card_path), card)


if __name__ == "__main__":
    main(*sys.argv[1:3])
