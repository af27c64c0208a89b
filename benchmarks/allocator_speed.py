"""Eager CPU inference: glibc allocator defaults vs tuned (ase_diffrelax.tune_allocator, now the default) vs the
environment-variable fix vs torch.compile; size scaling of one forward; the compile break-even.

Every measurement runs in a fresh process (allocator state is per process), one thread, and the
modes are interleaved over ``--repeats`` rounds so that machine drift hits them alike.

  relax    relax_many on --n QM9 test molecules (MMFF94 starts from the reference), default policy;
           modes: untuned (ASE_DIFFRELAX_TUNE_ALLOCATOR=0: glibc's defaults), default (load_model
           tunes), env (MALLOC_*_ variables), compiled
  scaling  one network forward (t fixed) of linear alkanes from 11 to 320 atoms
  cli      ``ase-diffrelax relax lib.smi -o out.db`` on --cli-n QM9 test SMILES (molecules/s), eager
           and --compile, both with the tuned allocator: the warm-up and per-molecule costs give
           the entry count above which the streaming CLI compiles by itself

    python -m benchmarks.allocator_speed --out docs/results/allocator_speed.json
    python -m benchmarks.allocator_speed --write-break-even   # also updates ase_diffrelax/workflows/compile_policy.json
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
MODES = ("untuned", "default", "env", "compiled")  # default: load_model tunes the allocator itself
ALKANES = (3, 6, 13, 26, 53, 80, 106)  # C_n H_2n+2: 11 to 320 atoms


def qm9_starts(n: int):
    """MMFF94 minima of QM9 test molecules started from their references (the shared start builder)."""
    from ase_diffrelax.evaluation import build_starts, pick_molecules

    ms, order = pick_molecules(0, "test")
    return build_starts("mmff-ref", ms, order, n, 0)[0]


def child(mode: str, workload: str, n: int) -> dict:
    """One measurement in this (fresh) process."""
    import torch

    torch.set_num_threads(1)
    from ase_diffrelax import load_model, relax_many
    from ase_diffrelax.core.allocator import tune_allocator

    print(f"allocator: {tune_allocator()}", file=sys.stderr)  # "off" in the untuned mode
    if workload == "relax":
        starts = qm9_starts(n)
        model = load_model(None, compile=mode == "compiled")
        t0 = time.perf_counter()
        relax_many(starts, model=model, progress=False)  # the first call: what a short script pays (cold)
        first = time.perf_counter() - t0
        walls = []
        for _ in range(2):
            t0 = time.perf_counter()
            relax_many(starts, model=model, progress=False)
            walls.append(time.perf_counter() - t0)
        return {"wall_s": min(walls), "first_call_s": first, "n": len(starts)}
    if workload == "scaling":
        from ase_diffrelax.chem.rdkit_interop import atoms_from_smiles
        from ase_diffrelax.core.denoise import denoise

        model = load_model("moses-painn128-jt", compile=mode == "compiled")
        out = {}
        for c in ALKANES:
            a = atoms_from_smiles("C" * c)
            z = torch.as_tensor(a.numbers, dtype=torch.long)
            x = torch.as_tensor(a.positions - a.positions.mean(0), dtype=torch.float32)
            mol = torch.zeros(len(z), dtype=torch.long)
            d = np.sqrt(((a.positions[:, None] - a.positions[None]) ** 2).sum(-1))
            pairs = int((d < model.net.config.cutoff).sum() - len(a))
            with torch.no_grad():
                for _ in range(3):
                    denoise(model.net, model.schedule, z, x, mol, 1, lambda th: torch.full_like(th, 20))
                times = []
                for _ in range(15):
                    t0 = time.perf_counter()
                    denoise(model.net, model.schedule, z, x, mol, 1, lambda th: torch.full_like(th, 20))
                    times.append(time.perf_counter() - t0)
            out[str(len(a))] = {"forward_ms": 1000 * float(np.median(times)), "pairs_within_cutoff": pairs}
        return out
    raise ValueError(workload)


def run_child(mode: str, workload: str, n: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("MALLOC_MMAP_THRESHOLD_", None)
    env.pop("MALLOC_TRIM_THRESHOLD_", None)
    if mode == "env":
        env.update(MALLOC_MMAP_THRESHOLD_="33554432", MALLOC_TRIM_THRESHOLD_="17179869184")
    if mode == "untuned":
        env["ASE_DIFFRELAX_TUNE_ALLOCATOR"] = "0"
    r = subprocess.run([sys.executable, "-m", "benchmarks.allocator_speed", "--child", mode, "--workload", workload,
                        "--n", str(n)], env=env, capture_output=True, text=True, cwd=HERE.parent)
    if r.returncode:
        raise RuntimeError(r.stderr[-3000:])
    return json.loads(r.stdout.strip().splitlines()[-1])


def cli_rate(smi: Path, compile: bool | None, tuned: bool | str) -> dict:
    """molecules/s of the streaming CLI (its own summary line), fresh process, one thread;
    compile None = the CLI's own choice, progress bar on (as a user runs it); tuned "env" = the
    MALLOC_*_ environment variables instead of the CLI's own tuning."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if tuned == "env":
        env.update(MALLOC_MMAP_THRESHOLD_="33554432", MALLOC_TRIM_THRESHOLD_="17179869184")
    elif not tuned:
        env["ASE_DIFFRELAX_TUNE_ALLOCATOR"] = "0"
    flags = ["--quiet", "--compile" if compile else "--no-compile"] if compile is not None else []
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        r = subprocess.run([sys.executable, "-m", "ase_diffrelax", "relax", str(smi), "-o", f"{tmp}/out.db", *flags],
                           env=env, capture_output=True, text=True)
        wall = time.perf_counter() - t0
    if r.returncode:
        raise RuntimeError(r.stderr[-3000:])
    line = [x for x in r.stdout.splitlines() if "molecules/s" in x][-1]
    seconds = [x for x in r.stdout.splitlines() if x.startswith("seconds per stage")][-1]
    choice = [x for x in r.stderr.splitlines() if x.startswith("ase-diffrelax: ") and "entries" in x]
    return {"molecules_per_s": float(line.split("molecules/s")[0].split(";")[-1].strip()), "process_wall_s": wall,
            "stages": seconds, "choice": choice[-1] if choice else None}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--child", choices=MODES, default=None, help=argparse.SUPPRESS)
    p.add_argument("--workload", default="relax", help=argparse.SUPPRESS)
    p.add_argument("--n", type=int, default=48)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--cli-n", default="200,1000", help="QM9 SMILES counts for the CLI runs")
    p.add_argument("--cli-default-n", type=int, default=10000,
                   help="QM9 SMILES for one run of the CLI with its defaults (0: skip)")
    p.add_argument("--skip", default="", help="comma list of parts to skip: relax,scaling,cli")
    p.add_argument("--out", default="docs/results/allocator_speed.json")
    p.add_argument("--write-break-even", action="store_true")
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.workload, args.n)))
        return None
    from ase_diffrelax.files import atomic_write_json

    report = {"threads": 1, "repeats": args.repeats, "machine": os.uname().machine, "cpus": os.cpu_count()}
    skip = set(filter(None, args.skip.split(",")))
    if "relax" not in skip:
        rows, cold = {m: [] for m in MODES}, {m: [] for m in MODES}
        for rep in range(args.repeats):
            for m in MODES:
                r = run_child(m, "relax", args.n)
                rows[m].append(r["wall_s"])
                cold[m].append(r["first_call_s"])
                print(f"relax round {rep} {m}: first call {cold[m][-1]:.2f} s, then {rows[m][-1]:.2f} s", flush=True)
        med = {m: float(np.median(v)) for m, v in rows.items()}
        med_cold = {m: float(np.median(v)) for m, v in cold.items()}
        report["relax_many"] = {"n_molecules": args.n, "wall_s": rows, "median_s": med,
                                "untuned_over_env": med["untuned"] / med["env"],
                                "default_over_env": med["default"] / med["env"],
                                "compiled_speedup_over_default": med["default"] / med["compiled"],
                                "first_call_s": cold, "first_call_median_s": med_cold,
                                "first_call_untuned_over_env": med_cold["untuned"] / med_cold["env"],
                                "first_call_default_over_env": med_cold["default"] / med_cold["env"]}
    if "scaling" not in skip:
        scal = {m: run_child(m, "scaling", 0) for m in ("untuned", "default")}
        sizes = sorted(int(k) for k in scal["default"])
        fit = {}
        for m, d in scal.items():
            t = np.array([d[str(s)]["forward_ms"] for s in sizes])
            fit[m] = float(np.polyfit(np.log(sizes), np.log(t), 1)[0])
            big = [s for s in sizes if s >= 40]
            fit[m + "_40_320"] = float(np.polyfit(np.log(big), np.log([d[str(s)]["forward_ms"] for s in big]), 1)[0])
        pairs = [scal["default"][str(s)]["pairs_within_cutoff"] for s in sizes]
        fit["pairs_exponent"] = float(np.polyfit(np.log(sizes), np.log(pairs), 1)[0])
        report["forward_scaling"] = {"atoms": sizes, "by_mode": scal, "exponent": fit,
                                     "molecules": "linear alkanes C_n H_2n+2, moses-painn128-jt, t = 20"}
        print(json.dumps(report["forward_scaling"]["exponent"]), flush=True)
    if "cli" not in skip:
        from ase_diffrelax.training.data import load_qm9

        ms = load_qm9("test")
        cli = {}
        with tempfile.TemporaryDirectory() as tmp:
            for n in [int(x) for x in args.cli_n.split(",")]:
                smi = Path(tmp) / f"qm9_{n}.smi"
                smi.write_text("".join(f"{ms.smiles[i]}\n" for i in range(n)))
                row = {}
                for kind, comp, tuned in (("eager_untuned", False, False), ("eager", False, True),
                                          ("eager_env", False, "env"), ("compiled", True, True)):
                    row[kind] = cli_rate(smi, comp, tuned)
                    print(f"cli {n} {kind}: {row[kind]['molecules_per_s']:.1f} molecules/s", flush=True)
                cli[str(n)] = row
            if args.cli_default_n:
                smi = Path(tmp) / "qm9_default.smi"
                smi.write_text("".join(f"{ms.smiles[i]}\n" for i in range(args.cli_default_n)))
                report["cli_defaults"] = {"n": args.cli_default_n, **cli_rate(smi, None, True)}
                print(f"cli {args.cli_default_n} with its defaults: {report['cli_defaults']}", flush=True)
        report["cli"] = cli
        # wall = warm-up + n / rate: the break-even n where compile's warm-up is paid back
        ns = sorted(int(k) for k in cli)
        if len(ns) >= 2:
            def line(kind):
                w = np.array([cli[str(n)][kind]["process_wall_s"] for n in ns])
                slope, icpt = np.polyfit(ns, w, 1)
                return float(slope), float(icpt)
            (se, ie), (sc, ic) = line("eager"), line("compiled")
            be = (ic - ie) / (se - sc) if se > sc else None
            report["compile_break_even"] = {"eager_s_per_molecule": se, "eager_fixed_s": ie,
                                            "compiled_s_per_molecule": sc, "compiled_fixed_s": ic,
                                            "break_even_entries": be}
            print(json.dumps(report["compile_break_even"]), flush=True)
            if args.write_break_even and be is not None:
                atomic_write_json(HERE.parent / "ase_diffrelax" / "workflows" / "compile_policy.json", {
                    "about": "the streaming CLI compiles when its shard holds at least min_entries entries "
                             "(measured break-even, benchmarks/allocator_speed.py, QM9 SMILES, one thread, CPU)",
                    "min_entries": int(np.ceil(be)), "measured": report["compile_break_even"],
                    "command": "python -m benchmarks.allocator_speed --write-break-even"})
    report["command"] = "python -m benchmarks.allocator_speed " + " ".join(argv if argv is not None else sys.argv[1:])
    atomic_write_json(args.out, report, indent=1)
    return report


if __name__ == "__main__":
    main()
