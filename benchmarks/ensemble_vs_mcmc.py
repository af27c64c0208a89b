"""Diffusion ensembles (repeated steps at fixed t) against GFN2-xTB Metropolis Monte Carlo.

The relaxation paper's section 4.4 on our checkpoint: flexible QM9 validation molecules (SMILES
without "=", "#" or ring digits, at most 15 "("), both chains started at the QM9 reference
geometry. Energies are GFN2-xTB (tblite), relative to each molecule's xTB minimum (reached by
BFGS from the reference): that per-molecule constant is the only one subtracted.

  MCMC       Metropolis, isotropic Gaussian proposals, step size tuned during burn-in to
             30-50 % acceptance, at each --temperatures value
  diffusion  sample_ensemble at each --steps value (chains in one batch), xTB energy of
             every --every-th sample
  gaussian   repeated isotropic Gaussian perturbations (no acceptance test): the control

Then t = a * sqrt(T) is fitted on the first half of the molecules (mean energies equal) and
used to predict the mean diffusion energy of the other half at each MCMC temperature. Results
are cached per (molecule, chain) in benchmarks/cache/ensemble.jsonl, so the run resumes.

    nohup python benchmarks/ensemble_vs_mcmc.py --molecules 8 --out docs/results/ensemble_vs_mcmc.json &
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from ase_diffrelax.core.checkpoint import write_card
from ase_diffrelax.files import JsonlStore, atomic_write_json, save_figure

HERE = Path(__file__).resolve().parent


def flexible_validation_molecules(n: int, seed: int):
    from ase_diffrelax.training.data import load_qm9

    ms = load_qm9("val")
    ok = [i for i, s in enumerate(ms.smiles) if "=" not in s and "#" not in s
          and not any(c.isdigit() for c in s) and s.count("(") <= 15 and int((ms.molecule(i)[0] > 1).sum()) >= 5]
    rng = np.random.default_rng(seed)
    return ms, [ok[k] for k in rng.permutation(len(ok))[:n]]


def xtb_energies(calc, numbers, positions_list):
    from ase import Atoms

    out = []
    for pos in positions_list:
        a = Atoms(numbers=numbers, positions=pos)
        a.calc = calc
        out.append(float(a.get_potential_energy()))
    return out


def blocks(e, n=5):
    parts = np.array_split(np.asarray(e), n)
    means = [float(np.mean(p)) for p in parts]
    return {"block_means": means, "block_sem": float(np.std(means) / np.sqrt(n))}


def mcmc(calc, numbers, x0, T, steps, burn_in, seed):
    from ase import Atoms
    from ase.units import kB

    rng = np.random.default_rng(seed)
    a = Atoms(numbers=numbers, positions=x0)
    a.calc = calc
    e = a.get_potential_energy()
    x = x0.copy()
    sigma = 3e-4 * np.sqrt(T)  # ~ sqrt(2 kT / (k_bond 3N)) for a QM9-size molecule; tuned below
    energies, acc_window, acc_total = [], [], []
    for k in range(steps):
        y = x + rng.normal(0, sigma, x.shape)
        a.positions = y
        ey = a.get_potential_energy()
        ok = ey <= e or rng.random() < np.exp(-(ey - e) / (kB * T))
        if ok:
            x, e = y, ey
        acc_window.append(ok)
        if k < burn_in and len(acc_window) == 50:  # tune only during burn-in
            rate = np.mean(acc_window)
            sigma *= 1.4 if rate > 0.5 else (0.7 if rate < 0.3 else 1.0)
            acc_window = []
        if k >= burn_in:
            energies.append(float(e))
            acc_total.append(ok)
    return energies, float(np.mean(acc_total)), float(sigma)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None)
    p.add_argument("--molecules", type=int, default=8)
    p.add_argument("--temperatures", default="10,50,100,200,300,400")
    p.add_argument("--steps", default="2,5,10,15,20,30,40,60", help="diffusion steps t")
    p.add_argument("--mcmc-steps", type=int, default=5000)
    p.add_argument("--mcmc-burn-in", type=int, default=1000)
    p.add_argument("--samples", type=int, default=2000, help="diffusion samples per t (all chains)")
    p.add_argument("--chains", type=int, default=8)
    p.add_argument("--burn-in", type=int, default=200)
    p.add_argument("--every", type=int, default=4, help="xTB energy of every n-th diffusion sample")
    p.add_argument("--gaussian-sigma", type=float, default=0.002)
    p.add_argument("--gaussian-steps", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache", default=str(HERE / "cache" / "ensemble.jsonl"))
    p.add_argument("--out", default="docs/results/ensemble_vs_mcmc.json")
    p.add_argument("--card", default=None, help="write the fitted map into this checkpoint card (temperature_map)")
    args = p.parse_args(argv)
    import torch
    from ase import Atoms
    from ase.optimize import BFGS
    from tblite.ase import TBLite

    from ase_diffrelax import load_model, sample_ensemble
    from ase_diffrelax.adapters.ensemble import ensemble_positions
    from ase_diffrelax.evaluation import model_hash

    torch.set_num_threads(1)
    model = load_model(args.model)
    mhash = model_hash(model)
    cache = JsonlStore(args.cache)
    calc = TBLite(method="GFN2-xTB", verbosity=0)
    temps = [float(v) for v in args.temperatures.split(",")]
    ts = [int(v) for v in args.steps.split(",")]
    ms, picked = flexible_validation_molecules(args.molecules, args.seed)
    mols = []
    for i in picked:
        z, x = ms.molecule(i)
        qid = int(ms.ids[i])
        key = f"{qid}_min"
        if key not in cache:
            a = Atoms(numbers=z, positions=x)
            a.calc = calc
            e_ref = float(a.get_potential_energy())
            BFGS(a, logfile=None).run(fmax=0.005, steps=1000)
            cache.add(key, {"e_min": float(a.get_potential_energy()), "e_ref": e_ref, "smiles": str(ms.smiles[i])})
        rec = cache.get(key)
        entry = {"qm9_index": qid, "smiles": rec["smiles"], "n_atoms": int(len(z)),
                 "e_ref_above_min": rec["e_ref"] - rec["e_min"], "mcmc": {}, "diffusion": {}}
        for T in temps:
            key = f"{qid}_mcmc_{T:g}_{args.mcmc_steps}"
            if key not in cache:
                t0 = time.perf_counter()
                e, acc, sig = mcmc(calc, z, x, T, args.mcmc_steps, args.mcmc_burn_in, args.seed)
                cache.add(key, {"energies": e, "acceptance": acc, "sigma": sig, "wall_s": time.perf_counter() - t0})
                print(f"QM9 {qid} MCMC T={T:g}: acceptance {acc:.2f}", flush=True)
            r = cache.get(key)
            e = np.array(r["energies"]) - rec["e_min"]
            entry["mcmc"][f"{T:g}"] = {"mean": float(e.mean()), "std": float(e.std()), "acceptance": r["acceptance"],
                                       **blocks(e)}
        for t in ts:
            key = f"{qid}_diffusion_{t}_{args.samples}_{mhash}"
            if key not in cache:
                t0 = time.perf_counter()
                s = sample_ensemble(Atoms(numbers=z, positions=x), t=t, n_samples=args.samples, burn_in=args.burn_in,
                                    n_chains=args.chains, seed=args.seed, model=model)
                pos = ensemble_positions(s)[:: args.every]
                t1 = time.perf_counter()
                e = xtb_energies(calc, z, pos)
                cache.add(key, {"energies": e, "sample_wall_s": t1 - t0, "xtb_wall_s": time.perf_counter() - t1})
                print(f"QM9 {qid} diffusion t={t}: mean {np.mean(e) - rec['e_min']:.3f} eV", flush=True)
            e = np.array(cache.get(key)["energies"]) - rec["e_min"]
            entry["diffusion"][str(t)] = {"mean": float(e.mean()), "std": float(e.std()), **blocks(e)}
        key = f"{qid}_gaussian_{args.gaussian_sigma:g}_{args.gaussian_steps}"
        if key not in cache:
            rng = np.random.default_rng(args.seed)
            traj, y = [], x.copy()
            for k in range(args.gaussian_steps):
                y = y + rng.normal(0, args.gaussian_sigma, y.shape)
                if (k + 1) % 100 == 0:
                    traj.append(y.copy())
            cache.add(key, {"energies": xtb_energies(calc, z, traj), "every": 100})
        g = np.array(cache.get(key)["energies"]) - rec["e_min"]
        entry["gaussian"] = {"energy_every_100_steps": g.tolist(), "sigma": args.gaussian_sigma}
        mols.append(entry)
    result = {"model": model.name, "model_hash": mhash, "energies": "GFN2-xTB (tblite), eV above each molecule's xTB minimum",
              "temperatures": temps, "steps": ts, "molecules": mols, "settings": vars(args)}
    result["fit"] = fit_map(mols, temps, ts)
    result["plots"] = plots(result, Path(args.out).with_suffix(""))
    atomic_write_json(args.out, result, indent=1)
    if args.card and "a" in result["fit"]:
        import json

        card = json.loads(Path(args.card).read_text())
        card["temperature_map"] = {
            "form": "t = a * sqrt(T)", "a": result["fit"]["a"], "fitted_range_K": [min(temps), max(temps)],
            "fitted_on": f"QM9 validation molecules {result['fit']['fitted_on']} against GFN2-xTB Metropolis MCMC "
                         "(equal mean xTB energy above the xTB minimum)",
            "held_out_mean_abs_error_median_eV": result["fit"]["mean_abs_error_median_eV"],
            "source": str(args.out), "meaning": "a calibrated knob for the spread of sample_ensemble, not a thermostat "
                                                "(docs/ensembles.md)"}
        write_card(args.card, card)
    print(json_summary(result))
    return result


def fit_map(mols, temps, ts):
    """t = a sqrt(T) fitted on the first half (equal mean energies), tested on the second half."""
    half = max(1, len(mols) // 2)
    fit, test = mols[:half], mols[half:]

    def quad(entry):  # mean diffusion energy as e0 + d t^2 (the paper: quadratic in t)
        tt = np.array(ts, float)
        m = np.array([entry["diffusion"][str(t)]["mean"] for t in ts])
        d, e0 = np.polyfit(tt**2, m, 1)
        return d, e0

    pts_T, pts_t = [], []
    for entry in fit:
        d, e0 = quad(entry)
        for T in temps:
            target = entry["mcmc"][f"{T:g}"]["mean"]
            if d > 0 and target > e0:
                pts_T.append(T)
                pts_t.append(np.sqrt((target - e0) / d))
    if not pts_T:
        return {"error": "no usable points to fit"}
    s = np.sqrt(np.array(pts_T))
    a = float((s * np.array(pts_t)).sum() / (s * s).sum())
    per_mol = []
    for entry in test:
        d, e0 = quad(entry)
        errs, ratios = [], []
        for T in temps:
            t = a * np.sqrt(T)
            pred = e0 + d * t**2
            errs.append(pred - entry["mcmc"][f"{T:g}"]["mean"])
            nearest = min(ts, key=lambda v: abs(v - t))
            ratios.append(entry["diffusion"][str(nearest)]["std"] / max(1e-9, entry["mcmc"][f"{T:g}"]["std"]))
        per_mol.append({"qm9_index": entry["qm9_index"], "mean_abs_error_eV": float(np.mean(np.abs(errs))),
                        "errors_eV": [float(e) for e in errs], "e0_eV": float(e0),
                        "std_ratio_median": float(np.median(ratios))})
    return {"form": "t = a * sqrt(T)", "a": a, "fitted_on": [m["qm9_index"] for m in fit],
            "tested_on": per_mol,
            "mean_abs_error_median_eV": float(np.median([m["mean_abs_error_eV"] for m in per_mol])) if per_mol else None}


def plots(result, prefix: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    temps, ts = result["temperatures"], result["steps"]
    a = result["fit"].get("a")
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for entry in result["molecules"]:
        mc = [entry["mcmc"][f"{T:g}"]["mean"] for T in temps]
        line, = axes[0].plot(temps, mc, "o-", label=f"QM9 {entry['qm9_index']}")
        if a:
            teq = [(t / a) ** 2 for t in ts]
            axes[0].plot(teq, [entry["diffusion"][str(t)]["mean"] for t in ts], "x--", color=line.get_color())
        axes[1].errorbar(ts, [entry["diffusion"][str(t)]["mean"] for t in ts],
                         yerr=[entry["diffusion"][str(t)]["std"] for t in ts], capsize=2, color=line.get_color())
    axes[0].set_xlabel("T [K] (MCMC, o) / (t / a)^2 (diffusion, x)")
    axes[0].set_ylabel("mean xTB energy above min [eV]")
    axes[0].legend(fontsize=6)
    axes[1].set_xlabel("diffusion step t")
    axes[1].set_ylabel("xTB energy above min [eV] (mean +- std)")
    files.append(save_figure(fig, f"{prefix}_means.png", dpi=110))
    entry = result["molecules"][0]
    fig, ax = plt.subplots(figsize=(6, 4))
    cache = JsonlStore(result["settings"]["cache"])
    for T in temps[1::2]:
        e = np.array(cache.get(f"{entry['qm9_index']}_mcmc_{T:g}_{result['settings']['mcmc_steps']}")["energies"])
        base = cache.get(f"{entry['qm9_index']}_min")["e_min"]
        ax.hist(e - base, bins=40, histtype="step", density=True, label=f"MCMC {T:g} K")
        if a:
            t = min(ts, key=lambda v: abs(v - a * np.sqrt(T)))
            key = f"{entry['qm9_index']}_diffusion_{t}_{result['settings']['samples']}_{result['model_hash']}"
            ax.hist(np.array(cache.get(key)["energies"]) - base, bins=40, histtype="step", ls="--", density=True,
                    label=f"diffusion t={t}")
    g = result["molecules"][0]["gaussian"]["energy_every_100_steps"]
    ax.set_xlabel("xTB energy above min [eV]")
    ax.set_title(f"QM9 {entry['qm9_index']}; Gaussian control reaches {g[-1]:.2f} eV")
    ax.legend(fontsize=7)
    files.append(save_figure(fig, f"{prefix}_histograms.png", dpi=110))
    return files


def json_summary(result) -> str:
    import json

    return json.dumps(result["fit"], indent=1)


if __name__ == "__main__":
    main()
