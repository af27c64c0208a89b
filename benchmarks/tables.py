"""Markdown tables from the benchmark JSON files (so docs quote what was measured, nothing else).

    python benchmarks/tables.py docs/results/relax_quality.json
    python benchmarks/tables.py docs/results/handoff_xtb.json
    python benchmarks/tables.py runs/qm9-painn128-jt/log.jsonl          # training curve
    python benchmarks/tables.py --cache benchmarks/cache/stereo_dft_6-31g2dfp_df MODEL_HASH   # partial hand-off
"""
import json
import sys


def relax_quality(d):
    print(f"model `{d['model']}` ({d['model_steps']} training steps), {d['split']}, RMSD: {d['rmsd']}\n")
    for kind, e in d["kinds"].items():
        st = e["start"]
        print(f"**{kind}** — n = {e['n']} (skipped {e['skipped']}); start RMSD median {st['rmsd_median']:.3f} A, "
              f"mean {st['rmsd_mean']:.3f} A\n")
        print("| policy | median RMSD after [A] | mean RMSD after [A] | median ratio | failures % | "
              "failures % in basin | < 0.05 A | median evals | ms/molecule | not converged |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for name, s in e["policies"].items():
            ib = s.get("failure_pct_in_basin")
            print(f"| {name} | {s['rmsd_after_median']:.3f} | {s['rmsd_after_mean']:.3f} | {s['ratio_median']:.3f} | "
                  f"{s['failure_pct']:.1f} | {'' if ib is None else f'{ib:.1f}'} | "
                  f"{100 * s['frac_after_below_0.05A']:.0f} % | {s['evals_median']:.0f} | "
                  f"{s['wall_ms_per_molecule']:.1f} | {s['not_converged']} |")
        print()


def handoff(d):
    s = d["summary"]
    print(f"level {s['level']}, {s['n_complete']} molecules complete, fmax {s['fmax']} eV/A, "
          f"model {s.get('model')} ({s.get('model_hash')})\n")
    print("| start | median steps | mean steps | median start E above min [kcal/mol] | "
          "median final E above min [kcal/mol] | median RMSD final-ref [A] | median step ratio vs MMFF | not converged |")
    print("|---|---|---|---|---|---|---|---|")
    for name, r in s["starts"].items():
        ratio = r.get("step_ratio_vs_mmff_median")
        print(f"| {name} | {r['steps_median']:.1f} | {r['steps_mean']:.1f} | {r['start_above_min_kcal_median']:.2f} | "
              f"{r['final_above_min_kcal_median']:.2f} | {r['rmsd_final_ref_median']:.3f} | "
              f"{'' if ratio is None else f'{ratio:.2f}'} | {r['not_converged']} |")
    for k in ("diffusion_vs_xtb_preopt_step_ratio_median", "diffusion_wall_vs_xtb_relaxation_median"):
        if k in s:
            print(f"\n{k}: {s[k]:.3f}")


def training_curve(path, every=1000):
    """The validation history of a run (its log.jsonl), one row per ``every`` steps."""
    rows = [json.loads(line) for line in open(path) if line.strip()]
    print("| step | wall [h] | val one-shot ratio (MMFF starts) | one-shot fail | median t_hat (MMFF) | "
          "time MAE t<50 | noise MSE t<50 | noise MSE t150-400 | lr |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        if "step" not in r or "mmff_oneshot_ratio_median" not in r or r["step"] % every:
            continue
        print(f"| {r['step']} | {r['wall_s'] / 3600:.2f} | {r['mmff_oneshot_ratio_median']:.3f} | "
              f"{100 * r['mmff_oneshot_fail_frac']:.1f} % | {r['mmff_t_hat_median']:.1f} | {r['time_mae_t1-50']:.2f} | "
              f"{r['noise_mse_t1-50']:.3f} | {r['noise_mse_t150-400']:.3f} | {r['lr']:.1e} |")


def cache_table(cache_dir, model_hash):
    """Per-molecule physics steps from a hand-off cache folder, finished or not (diffusion starts of
    one checkpoint only), in the order the molecules were first computed."""
    import glob
    import os

    rows = {}
    for f in sorted(glob.glob(os.path.join(cache_dir, "*.json")), key=os.path.getmtime):
        name = os.path.basename(f)[:-5]
        qid, start, *h = name.split("_")
        if start.startswith("diffusion") and h != [model_hash]:
            continue
        d = json.load(open(f))
        rows.setdefault(qid, {"n_heavy": d["n_heavy"]})[start] = d
    starts = ["mmff", "xtb-preopt", "diffusion", "reference"]
    print(f"| QM9 index | heavy atoms | " + " | ".join(starts) + " | diffusion start RMSD to ref [A] |")
    print("|---|---|" + "---|" * (len(starts) + 1))
    for qid, r in rows.items():
        cells = [str(r[s]["physics"]["steps"]) if s in r else "" for s in starts]
        rmsd = f"{r['diffusion']['rmsd_start_to_reference']:.3f}" if "diffusion" in r else ""
        print(f"| {qid} | {r['n_heavy']} | " + " | ".join(cells) + f" | {rmsd} |")


if __name__ == "__main__":
    if sys.argv[1] == "--cache":
        cache_table(sys.argv[2], sys.argv[3])
        sys.exit()
    for path in sys.argv[1:]:
        if path.endswith(".jsonl"):
            training_curve(path)
            continue
        d = json.load(open(path))
        (relax_quality if "kinds" in d else handoff)(d)
