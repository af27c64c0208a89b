"""Does a model Hessian, free of QM gradients, cut the xTB calls of the hand-off from the diffusion start?

Lindh's model Hessian (Lindh, Bernhardsson, Karlstrom, Malmqvist, Chem. Phys. Lett. 241, 423
(1995)): stretch, bend and torsion force constants k_r = 0.45, k_phi = 0.15, k_tau = 0.005 au,
each weighted by rho_ij = exp(alpha_ij (r_ref,ij^2 - r_ij^2)) per atom pair, built in Cartesian
coordinates from Wilson B-vectors. A candidate for the MOSES xTB goal (<= 8 calls counting any
Hessian work), since an xTB Hessian costs 6N+1 gradients. Tuned on MOSES ``val`` only.

    python -m benchmarks.model_hessian --n 30 --out docs/results/model_hessian_moses_val.json
"""
from __future__ import annotations

import argparse
import time

import numpy as np
from ase.geometry.geometry import get_angles_derivatives, get_dihedrals_derivatives
from ase.units import Bohr, Hartree

K_STRETCH, K_BEND, K_TORSION = 0.45, 0.15, 0.005  # Hartree/bohr^2, Hartree/rad^2
ALPHA = np.array([[1.0, 0.3949, 0.3949], [0.3949, 0.28, 0.28], [0.3949, 0.28, 0.28]])  # bohr^-2, by period
R_REF = np.array([[1.35, 2.10, 2.53], [2.10, 2.87, 3.40], [2.53, 3.40, 3.40]])  # bohr


def _period(z: int) -> int:
    return 0 if z <= 2 else (1 if z <= 10 else 2)


def lindh_hessian(atoms, threshold: float = 1e-4) -> np.ndarray:
    """(3N, 3N) in eV/A^2; terms whose weight is below ``threshold`` are left out."""
    x = atoms.positions
    n = len(x)
    per = np.array([_period(int(z)) for z in atoms.numbers])
    r2 = (((x[:, None] - x[None]) / Bohr) ** 2).sum(-1)
    rho = np.exp(ALPHA[per[:, None], per[None]] * (R_REF[per[:, None], per[None]] ** 2 - r2))
    np.fill_diagonal(rho, 0.0)
    h = np.zeros((3 * n, 3 * n))
    deg = np.pi / 180  # ASE's angle derivatives are per degree

    def add(idx, b, k):
        cols = (3 * np.asarray(idx)[:, None] + np.arange(3)).ravel()
        h[np.ix_(cols, cols)] += k * np.outer(b.ravel(), b.ravel())

    near = [np.nonzero(rho[j] > threshold)[0] for j in range(n)]
    for i in range(n):
        for j in near[i][near[i] > i]:
            u = (x[i] - x[j]) / np.linalg.norm(x[i] - x[j])
            add([i, j], np.stack([u, -u]), K_STRETCH * Hartree / Bohr**2 * rho[i, j])
    for j in range(n):
        for a, i in enumerate(near[j]):
            for k in near[j][a + 1:]:
                w = rho[i, j] * rho[j, k]
                v0, v1 = x[i] - x[j], x[k] - x[j]
                if w < threshold or abs(v0 @ v1) / np.linalg.norm(v0) / np.linalg.norm(v1) > 0.9995:
                    continue
                add([i, j, k], get_angles_derivatives(v0[None], v1[None])[0] * deg, K_BEND * Hartree * w)
    for j in range(n):
        for k in near[j][near[j] > j]:
            for i in near[j]:
                for m in near[k]:
                    if i == k or m in (i, j):
                        continue
                    w = rho[i, j] * rho[j, k] * rho[k, m]
                    v0, v1, v2 = x[j] - x[i], x[k] - x[j], x[m] - x[k]
                    bent = [abs(p @ q) / np.linalg.norm(p) / np.linalg.norm(q) for p, q in ((v0, v1), (v1, v2))]
                    if w < threshold or max(bent) > 0.99:  # a dihedral over a near-linear angle is undefined
                        continue
                    d = get_dihedrals_derivatives(v0[None], v1[None], v2[None])[0] * deg
                    add([i, j, k, m], d, K_TORSION * Hartree * w)
    return h


def main(argv=None):
    from ase_diffrelax.files import atomic_write_json
    from ase_diffrelax.training.xtb_dataset import mmff_start, read_dataset
    from ase_diffrelax.workflows.pipeline import diffusion_stage, physics_stage

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default="data/moses_xtb/dataset.npz")
    p.add_argument("--split", default="val")
    p.add_argument("--n", type=int, default=30)
    p.add_argument("--routes", default="sella/identity,sella/lindh,bfgs/lindh,bfgs/identity")
    p.add_argument("--fmax", type=float, default=0.03)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    hessians = {"identity": "identity", "lindh": lindh_hessian}
    routes = [tuple(r.split("/")) for r in args.routes.split(",")]
    rows = []
    for a in read_dataset(args.data, split=args.split)[: args.n]:
        start = mmff_start(a)
        diffused, _ = diffusion_stage(start, seed=0, policy="jt", strict=True)
        row = {"id": a.info["id"], "atoms": len(a), "smiles": a.info["smiles"]}
        for opt, hess in routes:
            t0 = time.perf_counter()
            _, rep = physics_stage(diffused, "xtb", fmax=args.fmax, max_steps=300, optimizer=opt, hessian=hessians[hess])
            row[f"{opt}/{hess}"] = {"calls": rep.force_calls, "converged": rep.converged,
                                    "energy_end_eV": rep.energy_end_eV, "wall_s": round(time.perf_counter() - t0, 3)}
        rows.append(row)
        print(row["id"], row["atoms"], [row[f"{o}/{h}"]["calls"] for o, h in routes], flush=True)
    summary = {}
    for opt, hess in routes:
        key = f"{opt}/{hess}"
        calls = [r[key]["calls"] for r in rows]
        summary[key] = {"median_xtb_calls": float(np.median(calls)), "mean_xtb_calls": float(np.mean(calls)),
                        "converged": sum(r[key]["converged"] for r in rows), "n": len(rows)}
        print(f"{key:18s} median {np.median(calls):5.1f}  mean {np.mean(calls):5.1f}  "
              f"converged {summary[key]['converged']}/{len(rows)}")
    if args.out:
        atomic_write_json(args.out, {"what": "xTB gradient calls of the GFN2-xTB hand-off from the diffusion start "
                                             "(fmax 0.03 eV/A); the model Hessian costs no xTB gradient",
                                     "split": f"MOSES {args.split} (tuning only)", "summary": summary,
                                     "per_molecule": rows}, indent=1)


if __name__ == "__main__":
    main()
