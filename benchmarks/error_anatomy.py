"""Anatomy of a start's residual error at GFN2-xTB (issue 29, item 2): where the kcal/mol sit.

For MOSES ``val`` molecules of the xTB dataset, from the MMFF94 start and from a checkpoint's
diffusion start (policy ``jt``), against the dataset's GFN2-xTB minimum (same atom order):

  geometry  RMS deviation of bond lengths (bonds of the minimum; X-H and heavy-heavy by element
            pair), of bond angles, and of heavy-atom torsions (circular difference)
  energy    GFN2-xTB (tblite) energy above the minimum, split by constrained relaxations of the
            start (ASE BFGS, fmax 0.05 eV/A):
              hydrogens   E(start) - E(only hydrogens relaxed, heavy atoms fixed)
              local       E(start) - E(all relaxed but one heavy-atom torsion per rotatable (non-ring)
                          bond held at the start's value)
              torsional   E(torsions held) - E(minimum): what only a conformational change removes

    python -m benchmarks.error_anatomy --n 40 --model moses-painn128-jt --out docs/results/error_anatomy_moses_val.json
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from ase_diffrelax.chem.internals import internal_coordinates, relax_torsions_held
from ase_diffrelax.evaluation import KCAL_MOL_PER_EV
from ase_diffrelax.files import JsonlStore, atomic_write_json

HERE = Path(__file__).resolve().parent
DATA = HERE.parent / "data" / "moses_xtb" / "dataset.npz"


def _angle(x, i, j, k):
    a, b = x[i] - x[j], x[k] - x[j]
    return np.degrees(np.arccos(np.clip(a @ b / np.linalg.norm(a) / np.linalg.norm(b), -1, 1)))


def _dihedral(x, i, j, k, l):  # noqa: E741
    b0, b1, b2 = x[i] - x[j], x[k] - x[j], x[l] - x[k]
    b1 = b1 / np.linalg.norm(b1)
    v, w = b0 - (b0 @ b1) * b1, b2 - (b2 @ b1) * b1
    return np.degrees(np.arctan2(np.cross(b1, v) @ w, v @ w))


def geometry_errors(numbers, start, minimum) -> dict:
    from ase.data import chemical_symbols

    bonds, angles, torsions, rotatable = internal_coordinates(numbers, minimum)
    out: dict = {"bond_pairs": {}}
    for i, j in bonds:
        pair = "-".join(sorted((chemical_symbols[numbers[i]], chemical_symbols[numbers[j]])))
        d = np.linalg.norm(start[i] - start[j]) - np.linalg.norm(minimum[i] - minimum[j])
        out["bond_pairs"].setdefault(pair, []).append(float(d))
    xh = [d for p, v in out["bond_pairs"].items() if "H" in p.split("-") for d in v]
    hh = [d for p, v in out["bond_pairs"].items() if "H" not in p.split("-") for d in v]
    ang = [_angle(start, *a) - _angle(minimum, *a) for a in angles]
    tor = [(_dihedral(start, *t) - _dihedral(minimum, *t) + 180) % 360 - 180 for t in torsions]
    rms = lambda v: float(np.sqrt(np.mean(np.square(v)))) if len(v) else float("nan")  # noqa: E731
    out.update(bond_xh_rms_A=rms(xh), bond_heavy_rms_A=rms(hh), angle_rms_deg=rms(ang), torsion_rms_deg=rms(tor),
               torsions_off_30deg=int(np.sum(np.abs(tor) > 30)), n_torsions=len(tor))
    out["bond_pairs"] = {p: rms(v) for p, v in out["bond_pairs"].items()}
    return out, rotatable


def constrained_energy(numbers, positions, charge, uhf, *, fix_heavy=False, torsions=(), fmax=0.05, steps=400):
    return relax_torsions_held(numbers, positions, torsions, charge=charge, uhf=uhf, fix_heavy=fix_heavy, fmax=fmax,
                               steps=steps)[1]


def analyse(atoms, start, e_min, cache, key) -> dict:
    if key in cache:
        return cache.get(key)
    z, m = atoms.numbers, atoms.positions
    q, u = atoms.info["charge"], atoms.info["uhf"]
    t0 = time.perf_counter()
    geo, rotatable = geometry_errors(z, start, m)
    from benchmarks.start_quality import single_point

    e0 = single_point(z, start, q, u)
    e_h = constrained_energy(z, start, q, u, fix_heavy=True)
    e_t = constrained_energy(z, start, q, u, torsions=rotatable)
    kc = KCAL_MOL_PER_EV
    rec = {**geo, "dE_kcal": (e0 - e_min) * kc, "hydrogens_kcal": (e0 - e_h) * kc, "local_kcal": (e0 - e_t) * kc,
           "torsional_kcal": (e_t - e_min) * kc, "wall_s": time.perf_counter() - t0}
    return cache.add(key, rec)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=40)
    p.add_argument("--part", default="val")
    p.add_argument("--model", default="moses-painn128-jt")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    from ase_diffrelax import load_model, relax_many
    from ase_diffrelax.evaluation import model_hash
    from ase_diffrelax.training.xtb_dataset import mmff_start, read_dataset

    from .start_quality import lowest_route_energies

    mols = read_dataset(DATA, args.part)[: args.n]
    routes = lowest_route_energies()
    cache = JsonlStore(HERE / "cache" / "error_anatomy.jsonl")
    model = load_model(args.model, device="cpu")
    mkey = f"diffusion_{model_hash(model)}"
    starts = [mmff_start(a) for a in mols]
    diffused = relax_many(starts, model=model, progress=False, unseen_bonds="relax")
    report = {"part": args.part, "n": len(mols), "model": model.name, "starts": {}}
    for name, positions in (("mmff", [a.arrays["positions_mmff"] for a in mols]),
                            (f"diffusion:{model.name}", [r.atoms.positions for r in diffused])):
        recs = []
        for a, pos in zip(mols, positions):
            e_min = min(a.info["energy_xtb"], routes.get(f"{args.part}_{a.info['id']}", np.inf))
            key = f"{args.part}_{a.info['id']}_{'mmff' if name == 'mmff' else mkey}"
            recs.append(analyse(a, pos, e_min, cache, key))
        med = lambda k: float(np.nanmedian([r[k] for r in recs]))  # noqa: E731
        pairs = sorted({p for r in recs for p in r["bond_pairs"]})
        report["starts"][name] = {
            **{k: med(k) for k in ("dE_kcal", "hydrogens_kcal", "local_kcal", "torsional_kcal", "bond_xh_rms_A",
                                   "bond_heavy_rms_A", "angle_rms_deg", "torsion_rms_deg", "torsions_off_30deg")},
            "mean_share_pct": {k: float(100 * np.nansum([r[k] for r in recs]) / np.nansum([r["dE_kcal"] for r in recs
                                                                                      if np.isfinite(r[k])]))
                               for k in ("hydrogens_kcal", "local_kcal", "torsional_kcal")},
            "bond_rms_by_pair_A": {p: float(np.nanmedian([r["bond_pairs"][p] for r in recs if p in r["bond_pairs"]]))
                                   for p in pairs}}
        print(name, {k: round(v, 3) if isinstance(v, float) else v for k, v in report["starts"][name].items()
                     if not isinstance(v, dict)}, report["starts"][name]["mean_share_pct"], flush=True)
    if args.out:
        atomic_write_json(args.out, report)


if __name__ == "__main__":
    main()


def markdown(report: dict) -> str:
    """The anatomy table of a report, for docs/benchmarks.md."""
    lines = ["| start | dE | hydrogens | local | torsional | shares H / local / torsional | bond X-H RMS | bond heavy RMS "
             "| angle RMS [deg] | torsion RMS [deg] |", "|---|---|---|---|---|---|---|---|---|---|"]
    for name, e in report["starts"].items():
        sh = e["mean_share_pct"]
        lines.append(f"| {name} | {e['dE_kcal']:.2f} | {e['hydrogens_kcal']:.2f} | {e['local_kcal']:.2f} | "
                     f"{e['torsional_kcal']:.2f} | {sh['hydrogens_kcal']:.0f} / {sh['local_kcal']:.0f} / "
                     f"{sh['torsional_kcal']:.0f} % | {e['bond_xh_rms_A']:.4f} | {e['bond_heavy_rms_A']:.4f} | "
                     f"{e['angle_rms_deg']:.2f} | {e['torsion_rms_deg']:.2f} |")
    return "\n".join(lines)
