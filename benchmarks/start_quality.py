"""How close each start lands to the GFN2-xTB minimum, and what it costs: the yardstick of issue 29.

For MOSES molecules of the xTB dataset (``data/moses_xtb/dataset.npz``; ``val`` for tuning,
``test``/``test_scaffolds`` for reporting), every method starts from the same MMFF94 minimum (the
dataset's ``pos_mmff``, ETKDG -> MMFF94 from the SMILES) and is scored by

  dE      GFN2-xTB (tblite) single point above the lowest minimum any route reached for the
          molecule (the dataset's ``xtb --opt tight`` minimum, and every final energy of the
          hand-off matrix cache), kcal/mol
  RMSD    to that dataset minimum, symmetry-aware after optimal alignment, heavy atoms and all atoms
  wall    seconds per molecule on one thread beyond the shared MMFF94 start (whose cost is
          reported apart): diffusion in batches of 16 (eager), GFN-FF and GFN2-xTB as the ``xtb``
          program (one process per molecule), the dataset's own GFN2-xTB minimisation cost

Methods: ``mmff`` (the start itself), ``gfnff`` (``xtb --gfnff --opt normal``, when the program is
on PATH), ``diffusion:NAME`` for any checkpoint name or path (policy ``jt``), ``xtb-opt`` (the
dataset's GFN2-xTB minimum: dE 0 unless a hand-off route found a lower one; wall from the build).
Diagnostic: ``diffusion-at-min:NAME`` starts the sampler at the GFN2-xTB minimum itself; where it
ends says how precisely the checkpoint knows the minimum (its floor), apart from the way there.
``diffusion-raw:NAME`` is the model's own output, without the X-H guard (``chem.hydrogens``)
that ``diffusion:NAME`` applies as users get it; its rows share the cache keys that
``diffusion:NAME`` had before the guard existed (session 21); ``diffusion-at-min`` runs without it.
Every molecule-method result is cached in ``benchmarks/cache/start_quality_moses.jsonl`` (keyed by
the checkpoint's weights hash), so a killed run resumes and a new checkpoint adds only its rows.

    python -m benchmarks.start_quality --part val --n 200 --out docs/results/start_quality_moses_val.json
    python -m benchmarks.start_quality --part test --n 300 --plot docs/results/start_quality_moses_test.png \\
        --out docs/results/start_quality_moses_test.json
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

from ase_diffrelax.evaluation import KCAL_MOL_PER_EV
from ase_diffrelax.files import JsonlStore, atomic_write_json, save_figure

HERE = Path(__file__).resolve().parent
DATA = HERE.parent / "data" / "moses_xtb" / "dataset.npz"
DEFAULT_METHODS = "mmff,gfnff,diffusion:qm9-painn128-jt,diffusion:moses-painn128-jt,xtb-opt"


def lowest_route_energies(path: Path = HERE / "cache" / "handoff_matrix_moses_xtb.jsonl",
                          level: str = "xtb") -> dict:
    """The lowest final energy at ``level`` (a hand-off matrix cache's ``level`` field) any route
    reached, per molecule of the cache (``PART_ID`` for MOSES, the QM9 index for QM9), in eV."""
    best: dict[str, float] = {}
    if not path.exists():
        return best
    for line in path.read_text().splitlines():
        try:
            r = json.loads(line)
        except ValueError:
            continue
        if r.get("level") == level and np.isfinite(r.get("e_end", np.nan)) and not r.get("bonds_changed"):
            best[r["mol"]] = min(best.get(r["mol"], np.inf), float(r["e_end"]))
    return best


def single_point(numbers, positions, charge: int = 0, uhf: int = 0) -> float:
    from ase import Atoms

    from ase_diffrelax.workflows.physics import xtb_calculator

    a = Atoms(numbers=numbers, positions=positions)
    a.calc = xtb_calculator(charge=charge, uhf=uhf)
    return float(a.get_potential_energy())


def gfnff_minimum(numbers, positions, charge: int = 0) -> tuple[np.ndarray, float]:
    """GFN-FF minimum from ``positions`` with the ``xtb`` program; (positions, wall seconds)."""
    from ase import Atoms
    from ase.io import read, write

    with tempfile.TemporaryDirectory() as tmp:
        write(os.path.join(tmp, "start.xyz"), Atoms(numbers=numbers, positions=positions))
        t0 = time.perf_counter()
        run = subprocess.run(["xtb", "start.xyz", "--gfnff", "--opt", "normal", "--chrg", str(charge)], cwd=tmp,
                             capture_output=True, text=True, timeout=600,
                             env={**os.environ, "OMP_NUM_THREADS": "1"})
        wall = time.perf_counter() - t0
        out = os.path.join(tmp, "xtbopt.xyz")
        if run.returncode != 0 or not os.path.exists(out):
            raise RuntimeError(f"xtb --gfnff failed ({run.returncode}): {run.stderr[-300:]}")
        return read(out).positions, wall


class Scorer:
    """dE and symmetry-aware RMSDs (heavy atoms, all atoms) of geometries of one molecule."""

    def __init__(self, atoms, e_min: float):
        from ase_diffrelax.chem.rmsd import SymmetricRMSD

        self.atoms, self.e_min = atoms, e_min
        heavy = atoms.numbers > 1
        self.heavy = heavy
        self.rmsd_all = SymmetricRMSD(atoms.numbers, atoms.positions)
        self.rmsd_heavy = SymmetricRMSD(atoms.numbers[heavy], atoms.positions[heavy])

    def __call__(self, positions, energy: float | None = None) -> dict:
        a = self.atoms
        if energy is None:
            energy = single_point(a.numbers, positions, a.info["charge"], a.info["uhf"])
        return {"dE_kcal": (energy - self.e_min) * KCAL_MOL_PER_EV, "energy": energy,
                "rmsd_all": self.rmsd_all(positions), "rmsd_heavy": self.rmsd_heavy(positions[self.heavy])}


DIFFUSION = ("diffusion:", "diffusion-at-min:", "diffusion-raw:")


def diffusion_rows(model_name: str, mols, batch: int = 16, at_minimum: bool = False,
                   restore_hydrogens: bool = True) -> dict[int, dict]:
    """Diffusion starts of ``mols`` in batches; positions, steps and wall per molecule (batch wall / n).
    ``at_minimum``: start at the GFN2-xTB minimum itself instead of MMFF94's (the model's own floor)."""
    from ase_diffrelax import load_model, relax_many
    from ase_diffrelax.training.xtb_dataset import mmff_start

    model = load_model(model_name, device="cpu")
    out = {}
    for k in range(0, len(mols), batch):
        chunk = mols[k:k + batch]
        starts = [a.copy() if at_minimum else mmff_start(a) for a in chunk]
        t0 = time.perf_counter()
        res = relax_many(starts, model=model, progress=False, batch_size=batch, unseen_bonds="relax", on_error="skip",
                         restore_hydrogens=restore_hydrogens)
        wall = (time.perf_counter() - t0) / len(chunk)
        for a, r in zip(chunk, res):
            out[int(a.info["id"])] = {"positions": r.atoms.positions, "steps": r.steps, "status": r.status,
                                      "wall_s": wall}
    return out


def method_key(method: str) -> str:
    """Cache key of a method: a checkpoint's weights hash, and whether the X-H guard was on."""
    if not method.startswith(DIFFUSION):
        return method
    from ase_diffrelax import load_model
    from ase_diffrelax.evaluation import model_hash

    kind, name = method.split(":", 1)
    digest = model_hash(load_model(name, device="cpu"))
    if kind == "diffusion-raw":
        return f"diffusion:{name}_{digest}"
    return f"{method}_{digest}_{guard_key()}" if kind == "diffusion" else f"{method}_{digest}"


def guard_key() -> str:
    """Names the X-H guard's ranges, so rows measured under other ranges are not reused."""
    import hashlib

    from ase_diffrelax.chem import hydrogens

    return "h" + hashlib.sha1(repr((hydrogens.XH_RANGE, hydrogens.SP_CH_RANGE)).encode()).hexdigest()[:6]


def run(part: str, n: int, methods: list[str], data: Path = DATA, log=print) -> dict:
    from ase_diffrelax.training.xtb_dataset import read_dataset

    mols = read_dataset(data, part)[:n]
    with np.load(data, allow_pickle=False) as f:
        sel = f["split"] == part
        build_wall = dict(zip(f["ids"][sel].tolist(), f["wall_s"][sel].tolist()))
    routes = lowest_route_energies()
    cache = JsonlStore(HERE / "cache" / "start_quality_moses.jsonl")
    rows: dict[str, list[dict]] = {m: [] for m in methods}
    scorers = {}

    def scorer(a):
        ident = int(a.info["id"])
        if ident not in scorers:
            e_min = min(a.info["energy_xtb"], routes.get(f"{part}_{ident}", np.inf))
            scorers[ident] = Scorer(a, e_min)
        return scorers[ident]

    for method in methods:
        mkey = method_key(method)
        todo = [a for a in mols if f"{part}_{a.info['id']}_{mkey}" not in cache]
        if method == "gfnff" and not shutil.which("xtb"):
            log("gfnff: no xtb program on PATH, skipped")
            rows.pop(method)
            continue
        done_before = len(mols) - len(todo)
        diffused = diffusion_rows(method.split(":", 1)[1], todo, at_minimum=method.startswith("diffusion-at-min:"),
                                  restore_hydrogens=method.startswith("diffusion:")) \
            if method.startswith(DIFFUSION) and todo else {}
        for k, a in enumerate(todo):
            ident = int(a.info["id"])
            s = scorer(a)
            extra = {}
            if method == "mmff":  # its wall: ETKDG + MMFF94 from the SMILES, the start every method shares
                from ase_diffrelax.chem.rdkit_interop import atoms_from_smiles

                t0 = time.perf_counter()
                atoms_from_smiles(a.info["smiles"], seed=42)
                pos, wall = a.arrays["positions_mmff"], time.perf_counter() - t0
                rec = s(pos, a.info["energy_xtb_at_mmff"])
            elif method == "gfnff":
                try:
                    pos, wall = gfnff_minimum(a.numbers, a.arrays["positions_mmff"], a.info["charge"])
                    rec = s(pos)
                except RuntimeError as exc:
                    rec, wall, extra = {"dE_kcal": float("nan")}, float("nan"), {"error": str(exc)}
            elif method == "xtb-opt":
                pos, wall = a.positions, float(build_wall.get(ident, np.nan))
                rec = s(pos, a.info["energy_xtb"])
            else:
                d = diffused[ident]
                pos, wall = d["positions"], d["wall_s"]
                rec = s(pos)
                extra = {"steps": d["steps"], "status": d["status"]}
            cache.add(f"{part}_{ident}_{mkey}", {"method": method, "mol": f"{part}_{ident}", "n_atoms": len(a),
                                                 "wall_s": wall, **rec, **extra})
            if (k + 1) % 50 == 0:
                log(f"{method}: {done_before + k + 1}/{len(mols)}")
        for a in mols:
            rows[method].append(cache.get(f"{part}_{a.info['id']}_{mkey}"))
    return summarize(part, mols, rows, routes)


def _stats(values) -> dict:
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], dtype=float)
    if not len(v):
        return {"n": 0}
    return {"n": int(len(v)), "median": float(np.median(v)), "p90": float(np.percentile(v, 90)),
            "mean": float(v.mean())}


def summarize(part: str, mols, rows: dict, routes: dict) -> dict:
    lower = sum(1 for a in mols if routes.get(f"{part}_{a.info['id']}", np.inf) < a.info["energy_xtb"] - 1e-6)
    out = {"part": part, "n": len(mols), "level": "GFN2-xTB (tblite single points)",
           "reference": "lowest of the dataset's xtb --opt tight minimum and every hand-off matrix final energy "
                        f"({lower} of {len(mols)} molecules have a lower route minimum)",
           "rmsd": "symmetry-aware, optimal alignment, to the dataset's GFN2-xTB minimum; heavy atoms and all atoms",
           "wall": "s per molecule, one thread, beyond the shared ETKDG + MMFF94 start (for mmff: that start's own "
                   "cost; for xtb-opt: the dataset build's ETKDG + MMFF94 + xtb --opt tight + 2 single points)",
           "methods": {}}
    for method, recs in rows.items():
        out["methods"][method] = {
            "dE_kcal": _stats(r.get("dE_kcal") for r in recs), "rmsd_heavy": _stats(r.get("rmsd_heavy") for r in recs),
            "rmsd_all": _stats(r.get("rmsd_all") for r in recs), "wall_s": _stats(r.get("wall_s") for r in recs),
            "dE_below_mmff_pct": float(100 * np.mean([r["dE_kcal"] < m["dE_kcal"] for r, m in zip(recs, rows["mmff"])
                                                      if np.isfinite(r.get("dE_kcal", np.nan))])) if "mmff" in rows
            else None,
            "errors": sum(1 for r in recs if "error" in r)}
    return out


def markdown(report: dict) -> str:
    lines = ["| method | dE median | dE p90 | RMSD heavy | RMSD all | wall s/mol | below MMFF94 |",
             "|---|---|---|---|---|---|---|"]
    for m, e in report["methods"].items():
        d, h, a, w = e["dE_kcal"], e["rmsd_heavy"], e["rmsd_all"], e["wall_s"]
        below = "-" if e["dE_below_mmff_pct"] is None or m == "mmff" else f"{e['dE_below_mmff_pct']:.0f} %"
        lines.append(f"| {m} | {d.get('median', float('nan')):.2f} | {d.get('p90', float('nan')):.2f} | "
                     f"{h.get('median', float('nan')):.3f} | {a.get('median', float('nan')):.3f} | "
                     f"{w.get('median', float('nan')):.3g} | {below} |")
    return "\n".join(lines)


def plot(report: dict, path: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for m, e in report["methods"].items():
        w, d = e["wall_s"], e["dE_kcal"]
        if not w.get("n") or not d.get("n") or m.startswith("diffusion-at-min:"):  # a diagnostic, not a start
            continue
        x = max(w["median"], 1e-4)
        ax.errorbar(x, d["median"], yerr=[[0], [d["p90"] - d["median"]]], fmt="o", capsize=3)
        ax.annotate(m.replace("diffusion:", ""), (x, d["median"]), textcoords="offset points", xytext=(5, 4),
                    fontsize=8)
    ax.set_xscale("log")
    from matplotlib.ticker import FuncFormatter, NullFormatter

    ax.set_xticks([t for t in (0.01, 0.03, 0.1, 0.3, 1, 3, 10, 30) if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]])
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("wall time per molecule beyond the MMFF94 start [s] (median, one thread)")
    ax.set_ylabel("GFN2-xTB energy above the minimum [kcal/mol]\n(median, bar to p90)")
    ax.set_title(f"Start quality vs cost, MOSES {report['part']} (n={report['n']})")
    ax.grid(alpha=0.3)
    return save_figure(fig, path)


def paired(part: str, base_key: str, other_key: str, cache_path: Path = HERE / "cache" / "start_quality_moses.jsonl",
           ) -> dict:
    """Per-molecule comparison of two methods' cached rows (cache keys as ``method_key`` gives them) on the
    molecules of ``part`` both have, with MMFF94's row: how many are lower, the paired median, above MMFF94."""
    rows = JsonlStore(cache_path)
    prefix = part + "_"
    mols = sorted({k[:-len(other_key) - 1] for k, _ in rows.items() if k.startswith(prefix) and k.endswith("_" + other_key)
                   and k[len(prefix):-len(other_key) - 1].isdigit()})
    trip = [(rows.get(f"{m}_{base_key}")["dE_kcal"], rows.get(f"{m}_{other_key}")["dE_kcal"], rows.get(f"{m}_mmff")["dE_kcal"])
            for m in mols if f"{m}_{base_key}" in rows and f"{m}_mmff" in rows]
    if not trip:
        raise ValueError(f"no {part} molecule has cached rows of both {base_key} and {other_key}")
    b, o, mm = (np.array(v) for v in zip(*trip))
    d = o - b
    return {"part": part, "n": len(d), "base": base_key, "other": other_key,
            "median": [float(np.median(b)), float(np.median(o))], "p90": [float(np.percentile(b, 90)),
                                                                         float(np.percentile(o, 90))],
            "mean": [float(b.mean()), float(o.mean())], "lower": int((d < 0).sum()), "higher": int((d > 0).sum()),
            "paired_median": float(np.median(d)), "paired_mean": float(d.mean()),
            "above_mmff": [int((b > mm).sum()), int((o > mm).sum())]}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--part", default="val", choices=["val", "test", "test_scaffolds", "train"],
                   help="val: tuning; test, test_scaffolds: reporting; train: the fit diagnostic (molecules the "
                   "drug-like checkpoints trained on, their MMFF94 starts included: a train-val gap says data limits)")
    p.add_argument("--n", type=int, default=200)
    p.add_argument("--methods", default=DEFAULT_METHODS,
                   help="comma list: mmff, gfnff, diffusion:NAME, diffusion-raw:NAME, xtb-opt")
    p.add_argument("--out", default=None, help="JSON report")
    p.add_argument("--plot", default=None, help="Pareto plot (PNG)")
    p.add_argument("--markdown", action="store_true")
    p.add_argument("--paired", default=None, metavar="BASE,OTHER",
                   help="only compare two methods' cached rows on --part per molecule (no new calculations)")
    args = p.parse_args(argv)
    if args.paired:
        base, other = (m.strip() for m in args.paired.split(","))
        print(json.dumps(paired(args.part, method_key(base), method_key(other)), indent=1))
        return
    report = run(args.part, args.n, [m.strip() for m in args.methods.split(",") if m.strip()],
                 log=lambda m: print(m, flush=True))
    report["command"] = "python -m benchmarks.start_quality " + " ".join(argv if argv is not None else
                                                                          __import__("sys").argv[1:])
    if args.out:
        atomic_write_json(args.out, report)
    if args.plot:
        plot(report, args.plot)
    print(markdown(report))


if __name__ == "__main__":
    main()
