"""How close each QM9 start lands to the B3LYP/6-31G(2df,p) minimum: the QM9 half of issue 29's yardstick.

Every start begins at the same ETKDG -> MMFF94 geometry (``qm9_mmff_start``, stereo from the
reference, the hand-off benchmarks' start) and is scored by a PySCF single point (B3LYP/6-31G(2df,p),
density fitting, the PySCFCalculator settings) above the molecule's minimum:

  val   the first --n validation molecules (index % 10 == 1; <= --max-heavy heavy atoms) in a fixed
        shuffled order; minimum = a single point at the QM9 reference geometry (QM9's B3LYP minimum,
        not re-minimised with density fitting: the offset is the same for every start, so the paired
        differences between starts are exact). The split to tune on.
  test  the 12 molecules of the DFT hand-off matrix (``benchmarks/cache/handoff_matrix_qm9_dft_*``);
        minimum = the lowest final energy any cached route reached. The split to report on.

Starts: ``mmff``, ``reference`` (val: 0 by construction), ``diffusion:CHECKPOINT[@POLICY]`` (name or
path; policy default ``jt``, which takes the card's time calibration; a run directory's card has
none, so give it, e.g. ``@jt:t_scale=2.5+t_scale_cap=100``). RMSD to the reference: symmetry-aware,
after alignment, all atoms. Single points are cached per molecule, start, weights and policy in
``benchmarks/cache/qm9_dft_starts_<level>.jsonl``: a killed run resumes, a new checkpoint adds rows.

    OMP_NUM_THREADS=1 nohup python -m benchmarks.qm9_dft_starts --part val --n 24 \\
        --starts "mmff,reference,diffusion:qm9-painn128-jt,diffusion:runs/qm9-lowt8/last@jt:t_scale=2.5+t_scale_cap=100" \\
        --out docs/results/qm9_dft_starts_val.json &
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from ase_diffrelax.evaluation import KCAL_MOL_PER_EV
from ase_diffrelax.files import JsonlStore, atomic_write_json
from benchmarks import cache_tag

HERE = Path(__file__).resolve().parent
LEVEL = {"xc": "b3lyp", "basis": "6-31g(2df,p)"}


def dft_energy(numbers, positions, threads: int = 1) -> float:
    """Energy only (no gradient), in eV, with PySCFCalculator's SCF settings (density fitting)."""
    from ase.units import Hartree
    from pyscf import lib

    from ase_diffrelax.workflows.physics import PySCFCalculator, pyscf_mean_field

    _, mf = pyscf_mean_field(numbers, positions, {**PySCFCalculator.default_parameters, **LEVEL, "density_fit": True})
    with lib.with_omp_threads(threads):
        e = mf.kernel()
    if not mf.converged:
        raise RuntimeError("SCF did not converge")
    return float(e) * Hartree


def molecules(part: str, n: int, max_heavy: int, test_minima: dict):
    """(MoleculeSet, [(row, qm9 index)]) of the part, in the order they are scored."""
    from ase_diffrelax.training.data import load_qm9

    ms = load_qm9("test" if part == "test" else "val")
    if part == "test":
        return ms, [(i, int(ms.ids[i])) for i in range(len(ms)) if int(ms.ids[i]) in test_minima]
    picked = []
    for i in np.random.default_rng(0).permutation(len(ms)):
        z, _ = ms.molecule(i)
        if int((z > 1).sum()) <= max_heavy:
            picked.append((int(i), int(ms.ids[i])))
        if len(picked) >= 2 * n:  # spares for unmappable SMILES
            break
    return ms, picked


def parse_start(spec: str):
    """'diffusion:NAME@POLICY' -> (NAME, POLICY); other starts -> (None, None)."""
    if not spec.startswith("diffusion:"):
        return None, None
    name, _, policy = spec.removeprefix("diffusion:").partition("@")
    return name, policy or "jt"


def run(args) -> dict:
    from ase_diffrelax import DiffusionRelax, load_model
    from ase_diffrelax.chem.rmsd import SymmetricRMSD
    from ase_diffrelax.evaluation import model_hash, qm9_mmff_start

    from .start_quality import lowest_route_energies

    tag = cache_tag(f"dft_{LEVEL['xc']}_{LEVEL['basis']}_df")
    matrix = HERE / "cache" / f"handoff_matrix_qm9_{tag}.jsonl"
    cache = JsonlStore(HERE / "cache" / f"qm9_dft_starts_{tag}.jsonl")
    starts = [s for s in args.starts.split(",") if s]
    models = {}
    for s in starts:
        name, policy = parse_start(s)
        if name is not None:
            m = load_model(name, device="cpu")
            models[s] = (m, policy, model_hash(m, policy))
    # test: the lowest final energy any route of the DFT hand-off matrix reached (QM9 index -> eV)
    minima = lowest_route_energies(matrix, level=tag) if args.part == "test" else {}
    ms, picked = molecules(args.part, args.n, args.max_heavy, minima)
    rows: dict[str, dict[int, dict]] = {s: {} for s in starts}
    done = 0
    for i, qid in picked:
        if done >= args.n:
            break
        z, x_ref = ms.molecule(i)
        mmff, _ = qm9_mmff_start(ms, i, seed=0)
        if mmff is None:
            continue
        done += 1
        cache.reload()  # another process may have scored this molecule meanwhile
        if args.part == "val":
            key = f"{qid}_reference"
            if key not in cache:
                cache.add(key, {"qm9_index": qid, "start": "reference", "energy": dft_energy(z, x_ref, args.threads),
                                "rmsd": 0.0})
            minima[qid] = cache.get(key)["energy"]
        rmsd = SymmetricRMSD(z, x_ref)
        for s in starts:
            m, policy, h = models.get(s, (None, None, None))
            key = f"{qid}_{s.split(':')[0]}" + (f"_{h}" if h else "")
            if key not in cache:
                atoms = x_ref if s == "reference" else mmff.positions.copy()
                wall = 0.0
                if m is not None:
                    a = mmff.copy()
                    t0 = time.perf_counter()
                    DiffusionRelax(a, model=m, policy=policy, seed=0, logfile=None).run()
                    wall, atoms = time.perf_counter() - t0, a.positions
                cache.add(key, {"qm9_index": qid, "start": s, "energy": dft_energy(z, atoms, args.threads),
                                "rmsd": rmsd(atoms), "diffusion_wall_s": wall})
            rows[s][qid] = cache.get(key)
        print(f"[{done}/{args.n}] QM9 {qid} " + " ".join(
            f"{s}:{(rows[s][qid]['energy'] - minima[qid]) * KCAL_MOL_PER_EV:.2f}" for s in starts), flush=True)
    return summarize(rows, minima, args)


def summarize(rows, minima, args) -> dict:
    out = {"command": "python -m benchmarks.qm9_dft_starts " + " ".join(sys.argv[1:]),
           "level": f"{LEVEL['xc']}/{LEVEL['basis']} (PySCF, density fitting), single points",
           "minimum": ("QM9 reference geometry (single point)" if args.part == "val" else
                       "lowest final energy any route of the QM9 DFT hand-off matrix reached"),
           "rmsd": "to the QM9 reference, all atoms, symmetry-aware after alignment (A)",
           "part": args.part, "starts": {}, "per_molecule": {}, "paired_vs_first_diffusion": {}}
    dE = {s: {q: (r["energy"] - minima[q]) * KCAL_MOL_PER_EV for q, r in per.items()} for s, per in rows.items()}
    for s, per in dE.items():
        v = np.array(list(per.values()))
        if not len(v):
            continue
        rm = np.array([rows[s][q]["rmsd"] for q in per])
        out["starts"][s] = {"n": int(len(v)), "median_kcal": float(np.median(v)), "mean_kcal": float(v.mean()),
                            "p90_kcal": float(np.percentile(v, 90)), "median_rmsd_all": float(np.median(rm))}
        out["per_molecule"][s] = {str(q): round(e, 3) for q, e in sorted(per.items())}
    diff = [s for s in dE if s.startswith("diffusion:")]
    for s in diff[1:]:
        common = sorted(set(dE[s]) & set(dE[diff[0]]))
        d = np.array([dE[s][q] - dE[diff[0]][q] for q in common])
        if len(d):
            out["paired_vs_first_diffusion"][s] = {
                "vs": diff[0], "n": int(len(d)), "median_diff_kcal": float(np.median(d)),
                "mean_diff_kcal": float(d.mean()), "lower_on": int((d < 0).sum()), "higher_on": int((d > 0).sum())}
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--part", choices=["val", "test"], default="val")
    p.add_argument("--n", type=int, default=24)
    p.add_argument("--max-heavy", type=int, default=6, help="val: cap on heavy atoms (DFT cost; test has <= 6)")
    p.add_argument("--starts", default="mmff,diffusion:qm9-painn128-jt")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    report = run(args)
    print(json.dumps(report["starts"], indent=1))
    print(json.dumps(report["paired_vs_first_diffusion"], indent=1))
    if args.out:
        atomic_write_json(Path(args.out), report, indent=1)


if __name__ == "__main__":
    main()
