"""Copy measured relaxation metrics from a relax_quality JSON into a checkpoint's model card.

    python benchmarks/update_card.py checkpoints/qm9-painn128-jt.json docs/results/relax_quality.json
"""
import json
import sys
from pathlib import Path

from ase_diffrelax.files import atomic_write_json


def main(card_path, result_path):
    card = json.load(open(card_path))
    res = json.load(open(result_path))
    card["relaxation"] = {
        "source": result_path, "split": res["split"], "rmsd": res["rmsd"],
        "kinds": {kind: {"n": e["n"], "start_rmsd_median": e["start"]["rmsd_median"],
                         "policies": {name: {k: s[k] for k in ("rmsd_after_median", "ratio_median", "failure_pct",
                                                               "evals_median", "wall_ms_per_molecule")}
                                      for name, s in e["policies"].items()}}
                  for kind, e in res["kinds"].items()},
    }
    atomic_write_json(Path(card_path), card)


if __name__ == "__main__":
    main(*sys.argv[1:3])
