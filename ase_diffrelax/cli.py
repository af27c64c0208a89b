"""``ase-diffrelax`` command line: train, relax, benchmark helpers."""
from __future__ import annotations

import argparse
import json
import sys


def _train(args) -> int:
    from .model import ModelConfig
    from .train import TrainConfig, run_training

    cfg = TrainConfig(
        out=args.out, steps=args.steps, batch_size=args.batch_size, lr=args.lr, mmff_fraction=args.mmff_fraction,
        val_every=args.val_every, val_molecules=args.val_molecules, ckpt_every=args.ckpt_every, threads=args.threads, seed=args.seed,
        max_train_molecules=args.max_train_molecules, data=args.data or "",
        lr_decay_start=args.lr_decay[0], lr_decay_end=args.lr_decay[1],
        model=ModelConfig(features=args.features, blocks=args.blocks).todict(),
    )
    trainer = run_training(cfg, resume=args.resume, progress=not args.no_progress, stop_after_s=args.stop_after)
    print(json.dumps(trainer.history[-1] if trainer.history else {"step": trainer.step}))
    return 0


def _relax(args) -> int:
    from ase.io import read, write

    from .batch import relax_many

    frames = read(args.input, index=args.index)
    if not isinstance(frames, list):
        frames = [frames]
    traj = args.traj
    if traj and len(frames) > 1 and "{i}" not in traj:
        stem, dot, ext = traj.rpartition(".")
        traj = f"{stem}_{{i}}.{ext}" if dot else traj + "_{i}"
    results = relax_many(frames, model=args.model, policy=args.policy, t0=args.t0, batch_size=args.batch_size,
                         device=args.device, seed=args.seed, progress=not args.quiet, trajectory=traj,
                         eta=args.eta, stride=args.stride, max_steps=args.max_steps)
    write(args.output, [r.atoms for r in results])
    n_conv = sum(r.status == "converged" for r in results)
    n_topo = sum(r.topology["changed"] for r in results)
    print(f"relaxed {len(results)} structure(s): {n_conv} converged, {n_topo} with a changed bond graph -> {args.output}")
    for k, r in enumerate(results):
        if r.topology["changed"]:
            print(f"  structure {k}: bonds broken {r.topology['broken']}, formed {r.topology['formed']}")
    return 0


def _pipeline(args) -> int:
    import os

    from .pipeline import run_pipeline

    start = args.start
    if os.path.exists(start):
        from ase.io import read

        start = read(start)
    stages = [] if args.skip_mmff else ["mmff"]
    stages += [] if args.skip_diffusion else ["diffusion"]
    stages += [args.to]
    params = {}
    if args.to == "dft":
        params = {"xc": args.xc, "basis": args.basis, "density_fit": args.density_fit, "charge": args.charge,
                  "spin": args.spin, "threads": args.threads}
    result = run_pipeline(start, stages=stages, fmax=args.fmax, max_steps=args.max_steps, model=args.model,
                          policy=args.policy, seed=args.seed, traj_prefix=args.traj, physics_params=params,
                          t0=args.t0)
    if args.output:
        from ase.io import write

        write(args.output, result.atoms)
    print(json.dumps(result.report(), indent=1, default=str))
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="ase-diffrelax", description="Relax molecules with a diffusion denoiser.")
    sub = p.add_subparsers(dest="cmd", required=True)

    t = sub.add_parser("train", help="train a denoiser on QM9 (train split), resumable")
    t.add_argument("--out", default="runs/qm9-painn128-jt")
    t.add_argument("--steps", type=int, default=100_000)
    t.add_argument("--batch-size", type=int, default=64)
    t.add_argument("--lr", type=float, default=5e-4)
    t.add_argument("--features", type=int, default=128)
    t.add_argument("--blocks", type=int, default=3)
    t.add_argument("--mmff-fraction", type=float, default=0.4,
                   help="fraction of each batch built from MMFF94 starts of training molecules")
    t.add_argument("--val-every", type=int, default=1000)
    t.add_argument("--ckpt-every", type=int, default=250)
    t.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--max-train-molecules", type=int, default=0)
    t.add_argument("--data", default=None, help="train on your own equilibrium structures (ASE file or .db) "
                   "instead of QM9; frame k goes to validation when (k+1) %% 10 == 1, test when == 0")
    t.add_argument("--val-molecules", type=int, default=384)
    t.add_argument("--lr-decay", type=lambda v: tuple(int(x) for x in v.split(":")), default=(0, 0),
                   metavar="START:END", help="cosine learning-rate decay from --lr at step START to 1e-5 at END "
                   "(replaces halving on plateaus; may be set when resuming)")
    t.add_argument("--stop-after", type=float, default=None, help="stop (with a checkpoint) after this many seconds")
    t.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    t.add_argument("--no-progress", action="store_true")
    t.set_defaults(func=_train)

    r = sub.add_parser("relax", help="relax every frame of an ASE-readable file as one batch")
    r.add_argument("input")
    r.add_argument("-o", "--output", required=True, help="any ASE-writable file (format from the extension)")
    r.add_argument("--index", default=":", help="frames to read (ASE index syntax)")
    r.add_argument("--model", default=None, help="checkpoint name or path (default: shipped)")
    r.add_argument("--policy", default="jt", choices=["jt", "itp", "fixed"])
    r.add_argument("--t0", type=int, default=None, help="start step for --policy fixed")
    r.add_argument("--eta", type=float, default=None, help="noise per step (1 DDPM, 0 deterministic)")
    r.add_argument("--stride", type=float, default=None, help="fraction of t skipped per step")
    r.add_argument("--max-steps", type=int, default=None)
    r.add_argument("--batch-size", type=int, default=None, help="molecules in flight (default: 16 on CPU, 256 on GPU)")
    r.add_argument("--device", default=None)
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--traj", default=None, help="trajectory file(s) for ase gui ({i} = frame index)")
    r.add_argument("--quiet", action="store_true")
    r.set_defaults(func=_relax)

    q = sub.add_parser("pipeline", help="MMFF94 -> diffusion -> BFGS(xTB | DFT) on a SMILES or a file")
    q.add_argument("start", help="a SMILES string or an ASE-readable file")
    q.add_argument("--to", choices=["xtb", "dft"], default="xtb")
    q.add_argument("--skip-diffusion", action="store_true")
    q.add_argument("--skip-mmff", action="store_true", help="start the chain from the file's geometry")
    q.add_argument("--fmax", type=float, default=0.03, help="eV/A, for the physics stage (paper 000: 0.03)")
    q.add_argument("--max-steps", type=int, default=500)
    q.add_argument("--model", default=None)
    q.add_argument("--policy", default="jt", choices=["jt", "itp", "fixed"])
    q.add_argument("--t0", type=int, default=None)
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--xc", default="b3lyp")
    q.add_argument("--basis", default="6-31g(2df,p)")
    q.add_argument("--density-fit", action="store_true")
    q.add_argument("--charge", type=int, default=0)
    q.add_argument("--spin", type=int, default=0)
    q.add_argument("--threads", type=int, default=None)
    q.add_argument("--traj", default=None, help="prefix for one trajectory per stage (ase gui)")
    q.add_argument("-o", "--output", default=None, help="final structure, any ASE format")
    q.set_defaults(func=_pipeline)

    args = p.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
