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
        val_every=args.val_every, ckpt_every=args.ckpt_every, threads=args.threads, seed=args.seed,
        max_train_molecules=args.max_train_molecules,
        model=ModelConfig(features=args.features, blocks=args.blocks).todict(),
    )
    trainer = run_training(cfg, resume=args.resume, progress=not args.no_progress, stop_after_s=args.stop_after)
    print(json.dumps(trainer.history[-1] if trainer.history else {"step": trainer.step}))
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
    t.add_argument("--stop-after", type=float, default=None, help="stop (with a checkpoint) after this many seconds")
    t.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    t.add_argument("--no-progress", action="store_true")
    t.set_defaults(func=_train)

    args = p.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
