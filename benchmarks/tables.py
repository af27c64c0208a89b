"""Markdown tables from the benchmark JSON files (so docs quote what was measured, nothing else).

    python benchmarks/tables.py docs/results/relax_quality.json
    python benchmarks/tables.py docs/results/handoff_xtb.json
    python benchmarks/tables.py runs/qm9-painn128-jt/log.jsonl          # training curve
    python benchmarks/tables.py --cache benchmarks/cache/stereo_dft_6-31g2dfp_df.jsonl MODEL_HASH   # partial hand-off
"""
import json
import sys


def md_table(headers, rows):
    print("| " + " | ".join(headers) + " |")
    print("|" + "---|" * len(headers))
    for row in rows:
        print("| " + " | ".join(str(c) for c in row) + " |")


def relax_quality(d):
    print(f"model `{d['model']}` ({d['model_steps']} training steps), {d['split']}, RMSD: {d['rmsd']}\n")
    for kind, e in d["kinds"].items():
        st = e["start"]
        print(f"**{kind}** — n = {e['n']} (skipped {e['skipped']}); start RMSD median {st['rmsd_median']:.3f} A, "
              f"mean {st['rmsd_mean']:.3f} A\n")
        md_table(["policy", "median RMSD after [A]", "mean RMSD after [A]", "median ratio", "failures %",
                  "failures % in basin", "< 0.05 A", "median evals", "ms/molecule", "not converged"],
                 [[name, f"{p['rmsd_after_median']:.3f}", f"{p['rmsd_after_mean']:.3f}", f"{p['ratio_median']:.3f}",
                   f"{p['failure_pct']:.1f}",
                   "" if p.get("failure_pct_in_basin") is None else f"{p['failure_pct_in_basin']:.1f}",
                   f"{100 * p['frac_after_below_0.05A']:.0f} %", f"{p['evals_median']:.0f}",
                   f"{p['wall_ms_per_molecule']:.1f}", p["not_converged"]] for name, p in e["policies"].items()])
        print()


def handoff(d):
    s = d["summary"]
    print(f"level {s['level']}, {s['n_complete']} molecules complete, fmax {s['fmax']} eV/A, "
          f"model {s.get('model')} ({s.get('model_hash')})\n")
    md_table(["start", "median steps", "mean steps", "median start E above min [kcal/mol]",
              "median final E above min [kcal/mol]", "median RMSD final-ref [A]", "median step ratio vs MMFF",
              "not converged"],
             [[name, f"{r['steps_median']:.1f}", f"{r['steps_mean']:.1f}", f"{r['start_above_min_kcal_median']:.2f}",
               f"{r['final_above_min_kcal_median']:.2f}", f"{r['rmsd_final_ref_median']:.3f}",
               "" if r.get("step_ratio_vs_mmff_median") is None else f"{r['step_ratio_vs_mmff_median']:.2f}",
               r["not_converged"]] for name, r in s["starts"].items()])
    for k in ("diffusion_vs_xtb_preopt_step_ratio_median", "diffusion_wall_vs_xtb_relaxation_median"):
        if k in s:
            print(f"\n{k}: {s[k]:.3f}")
    if s["level"] != "xtb" and d["table"]:  # few molecules: show each one
        starts = list(s["starts"])
        print("\nPer molecule: physics steps (start energy above the lowest final energy, kcal/mol; start RMSD to "
              "the reference, A)\n")
        md_table(["QM9 index", "SMILES", "heavy atoms"] + starts,
                 [[t["qm9_index"], f"`{t['smiles']}`", t["n_heavy"]] +
                  [f"{t[x]['steps']} ({t[x]['start_above_min_kcal']:.2f}; {t[x]['rmsd_start_ref']:.3f})" for x in starts]
                  for t in d["table"]])


def training_curve(path, every=1000):
    """The validation history of a run (its log.jsonl), one row per ``every`` steps."""
    rows = [json.loads(line) for line in open(path) if line.strip()]
    md_table(["step", "wall [h]", "val one-shot ratio (MMFF starts)", "one-shot fail", "median t_hat (MMFF)",
              "time MAE t<50", "noise MSE t<50", "noise MSE t150-400", "lr"],
             [[r["step"], f"{r['wall_s'] / 3600:.2f}", f"{r['mmff_oneshot_ratio_median']:.3f}",
               f"{100 * r['mmff_oneshot_fail_frac']:.1f} %", f"{r['mmff_t_hat_median']:.1f}",
               f"{r['time_mae_t1-50']:.2f}", f"{r['noise_mse_t1-50']:.3f}", f"{r['noise_mse_t150-400']:.3f}",
               f"{r['lr']:.1e}"]
              for r in rows if "step" in r and "mmff_oneshot_ratio_median" in r and not r["step"] % every])


def ensemble(d):
    """Diffusion ensembles vs GFN2-xTB MCMC (benchmarks/ensemble_vs_mcmc.py)."""
    temps, ts = d["temperatures"], d["steps"]
    print(f"model {d['model']} ({d['model_hash']}); energies: {d['energies']}\n")
    print("Mean (std) energy of the MCMC chains per temperature [eV]; block standard error of the mean in brackets\n")
    md_table(["QM9", "SMILES", "atoms"] + [f"{t:g} K" for t in temps],
             [[m["qm9_index"], f"`{m['smiles']}`", m["n_atoms"]] +
              [f"{m['mcmc'][f'{t:g}']['mean']:.3f} ({m['mcmc'][f'{t:g}']['std']:.3f}) [{m['mcmc'][f'{t:g}']['block_sem']:.3f}]"
               for t in temps] for m in d["molecules"]])
    print("\nMean (std) energy of the diffusion chains per step t [eV]\n")
    md_table(["QM9"] + [f"t={t}" for t in ts] + ["Gaussian control, last [eV]"],
             [[m["qm9_index"]] + [f"{m['diffusion'][str(t)]['mean']:.3f} ({m['diffusion'][str(t)]['std']:.3f})"
                                  for t in ts] + [f"{m['gaussian']['energy_every_100_steps'][-1]:.2f}"]
              for m in d["molecules"]])
    f = d["fit"]
    if "a" not in f:
        print(f"\nfit: {f}")
        return
    print(f"\nFit {f['form']}: a = {f['a']:.3f} (on QM9 {', '.join(map(str, f['fitted_on']))}); "
          f"held-out molecules, mean |E_diffusion(t(T)) - E_MCMC(T)| over the temperatures:\n")
    md_table(["QM9", "mean abs error [eV]", "errors per T [eV]", "e0 (diffusion offset) [eV]", "std ratio diffusion/MCMC"],
             [[m["qm9_index"], f"{m['mean_abs_error_eV']:.3f}", " ".join(f"{e:+.3f}" for e in m["errors_eV"]),
               f"{m['e0_eV']:.3f}", f"{m['std_ratio_median']:.2f}"] for m in f["tested_on"]])


def cache_table(cache_file, model_hash):
    """Per-molecule physics steps from a hand-off cache (JSON lines), finished or not (diffusion
    starts of one checkpoint only), by QM9 index."""
    from ase_diffrelax.files import read_jsonl

    rows = {}
    records = sorted(read_jsonl(cache_file), key=lambda r: r["key"])
    for d in sorted(records, key=lambda r: int(r["key"].split("_")[0])):
        qid, start, *h = d["key"].split("_")
        if start.startswith("diffusion") and h != [model_hash]:
            continue
        rows.setdefault(qid, {"n_heavy": d["n_heavy"]})[start] = d
    starts = ["mmff", "xtb-preopt", "diffusion", "reference"]
    md_table(["QM9 index", "heavy atoms"] + starts + ["diffusion start RMSD to ref [A]"],
             [[qid, r["n_heavy"]] + [r[x]["physics"]["steps"] if x in r else "" for x in starts] +
              [f"{r['diffusion']['rmsd_start_to_reference']:.3f}" if "diffusion" in r else ""]
              for qid, r in rows.items()])


if __name__ == "__main__":
    if sys.argv[1] == "--cache":
        cache_table(sys.argv[2], sys.argv[3])
        sys.exit()
    for path in sys.argv[1:]:
        if path.endswith(".jsonl"):
            training_curve(path)
            continue
        d = json.load(open(path))
        if "fit" in d and "molecules" in d:
            ensemble(d)
        else:
            (relax_quality if "kinds" in d else handoff)(d)
