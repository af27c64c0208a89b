"""Copy measured metrics from a benchmark JSON into a checkpoint's model card: a relax_quality
report (QM9) or a drugs.py report (one entry per MOSES part, the per-molecule table left out).

    python benchmarks/update_card.py checkpoints/qm9-painn128-jt.json docs/results/relax_quality.json
    python benchmarks/update_card.py checkpoints/moses-painn128-jt.json docs/results/drugs_test.json
    python -m benchmarks.update_card checkpoints/moses-painn128-jt3.json docs/results/start_quality_moses_test.json
    python -m benchmarks.update_card checkpoints/qm9-painn128-jt4.json docs/results/qm9_dft_starts_test_session19.json \
        "diffusion:runs/qm9-lowt32/last@jt:t_scale=2.5+t_scale_cap=100"   # ROW: the row measured before shipping
                                                                          # (a qm9_dft_starts or start_quality report)
"""
import json
import sys
from pathlib import Path

from ase_diffrelax.core.checkpoint import write_card


def main(card_path, result_path, row=None):
    _update(card_path, result_path, row)
    from ase_diffrelax.core.checkpoint import checkpoint_dir

    if Path(card_path).resolve().parent == checkpoint_dir().resolve():  # a shipped card: the registry vouches for it
        from benchmarks.ship_checkpoint import seal

        seal()


def _update(card_path, result_path, row=None):
    card = json.load(open(card_path))
    res = json.load(open(result_path))
    if "starts" in res and "paired_vs_first_diffusion" in res:  # benchmarks/qm9_dft_starts.py
        own = row or f"diffusion:{card['name']}"
        if own not in res["starts"]:
            raise SystemExit(f"{result_path} has no row {own}")
        paired = res["paired_vs_first_diffusion"].get(own)
        entry = {"source": result_path, **{k: res[k] for k in ("level", "minimum", "rmsd")}, "this": res["starts"][own]}
        if paired:
            entry[f"parent_{paired['vs'].removeprefix('diffusion:')}"] = res["starts"][paired["vs"]]
        entry["mmff94"] = res["starts"].get("mmff")
        entry["paired_vs_parent"] = paired
        card.setdefault("benchmarks", {})[f"qm9_b3lyp_start_{res['part']}"] = entry
        write_card(Path(card_path), card)
        return
    if "methods" in res and "part" in res:  # benchmarks/start_quality.py: this checkpoint's row and MMFF94's
        own = res["methods"].get(row or f"diffusion:{card['name']}")
        if own is None:
            raise SystemExit(f"{result_path} has no row {row or 'diffusion:' + card['name']}")
        card.setdefault("benchmarks", {})[f"start_quality_moses_{res['part']}"] = {
            "source": result_path, "n": res["n"], "level": res["level"], "reference": res["reference"],
            "rmsd": res["rmsd"], "dE_kcal": own["dE_kcal"], "rmsd_heavy": own["rmsd_heavy"], "rmsd_all": own["rmsd_all"],
            "dE_below_mmff_pct": own["dE_below_mmff_pct"], "mmff_dE_kcal": res["methods"]["mmff"]["dE_kcal"]}
        write_card(Path(card_path), card)
        return
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
    main(*sys.argv[1:4])
