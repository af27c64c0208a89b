"""``ase-diffrelax`` command line: relax, pipeline, dataset, train, models.

User errors (unreadable files, structures a checkpoint cannot take, impossible charges,
missing extras) print one line and exit 2; ``--debug`` shows the traceback instead. Heavy
imports (torch, RDKit, ASE I/O) happen inside the commands, so ``--help`` is instant.
"""
from __future__ import annotations

import argparse
import json
import sys

EXIT_BAD_INPUT = 2


class UserError(Exception):
    """A problem with what the user gave us; printed as one line."""


def _read_frames(path: str, index: str = ":"):
    import os

    from ase.io import iread

    if not os.path.exists(path):
        raise UserError(f"{path}: no such file")
    if path.lower().endswith(".sdf"):  # ASE's reader stops after the first record; RDKit reads them all
        from ase.io.formats import string2index

        from .chem.sdf import iter_sdf_atoms

        frames = []
        for _, atoms, _, error, _ in iter_sdf_atoms(path):
            if atoms is None:
                raise UserError(f"{path}: {error}")
            frames.append(atoms)
        picked = frames[string2index(index)]
        frames = picked if isinstance(picked, list) else [picked]
        if not frames:
            raise UserError(f"{path}: no structures found (index {index!r})")
        return frames
    frames = []
    try:
        for atoms in iread(path, index=index):
            frames.append(atoms)
    except KeyError as exc:
        raise UserError(f"{path}: frame {len(frames)}: unknown element symbol {exc.args[0]!r}") from exc
    except Exception as exc:  # ASE's readers raise many types for malformed files
        raise UserError(f"{path}: frame {len(frames)}: cannot read it as {os.path.splitext(path)[1] or 'an ASE format'} "
                        f"({type(exc).__name__}: {exc})") from exc
    if not frames:
        raise UserError(f"{path}: no structures found (index {index!r})")
    return frames


def _policy(args):
    from .core.policy import make_policy

    return make_policy(args.policy, t0=args.t0, eta=args.eta, stride=args.stride,
                       max_steps=getattr(args, "diffusion_max_steps", None))


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be >= 1")
    return value


def _steps(text: str) -> int | list[int]:
    """'80' -> 80, '40,120' -> [40, 120]; range checks are TrainConfig's."""
    try:
        steps = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: whole numbers separated by commas (e.g. 80 or 40,120)") from None
    return steps[0] if len(steps) == 1 else steps


def _train(args) -> int:
    from .core.model import DEFAULT_ELEMENTS, ModelConfig
    from .training.trainer import TrainConfig, run_training

    model_cfg = ModelConfig(features=args.features or 128, blocks=args.blocks or 3)
    elements = DEFAULT_ELEMENTS
    if args.init:
        from .core.checkpoint import load_model

        model_cfg = load_model(args.init, device="cpu").net.config  # width and depth come from the checkpoint
        elements = model_cfg.elements
        # unless asked for; init_from then refuses a narrower or non-multiple width, or fewer blocks
        asked = {k: v for k, v in (("features", args.features), ("blocks", args.blocks)) if v}
        model_cfg = ModelConfig(**{**model_cfg.todict(), **asked})
    if args.elements:
        from ase.data import atomic_numbers

        try:
            asked = {atomic_numbers[e.strip()] for e in args.elements.split(",")}
        except KeyError as exc:
            raise UserError(f"--elements: unknown element {exc.args[0]!r}") from None
        elements = tuple(sorted(asked | set(elements) if args.init else asked))
    model_cfg = ModelConfig(**{**model_cfg.todict(), "elements": tuple(elements)})
    cfg = TrainConfig(
        out=args.out, steps=args.steps, batch_size=args.batch_size, lr=args.lr, mmff_fraction=args.mmff_fraction,
        val_every=args.val_every, val_molecules=args.val_molecules, ckpt_every=args.ckpt_every, threads=args.threads,
        seed=args.seed, max_train_molecules=args.max_train_molecules, data=args.data or "",
        lr_decay_start=args.lr_decay[0], lr_decay_end=args.lr_decay[1],
        model=model_cfg.todict(), init=args.init or "", compile=args.compile,
        low_t_weight=args.low_t_weight, low_t_max=args.low_t_max, mmff_step=args.mmff_step,
        local_minima=args.local_minima or "",
        local_fraction=args.local_fraction, device=args.device,
        self_starts=args.self_starts or "", self_fraction=args.self_fraction, self_step=args.self_step,
        self_weight=args.self_weight, self_max_rmsd=args.self_max_rmsd, max_mmff_rmsd=args.max_mmff_rmsd,
    )
    trainer = run_training(cfg, resume=args.resume, progress=not args.no_progress, stop_after_s=args.stop_after)
    print(json.dumps(trainer.history[-1] if trainer.history else {"step": trainer.step}))
    return 0


def _relax_collection(args) -> int:
    import os

    from .workflows.collection import compile_choice, count_shard_entries, parse_shard, relax_collection

    if not os.path.exists(args.input):
        raise UserError(f"{args.input}: no such file")
    shard = parse_shard(args.shard)
    n_entries = count_shard_entries(args.input, shard) if args.compile is None else None
    compile, why = compile_choice(n_entries, args.compile)
    print(f"ase-diffrelax: {why}", file=sys.stderr)
    if args.overwrite and os.path.exists(args.output) and not args.resume:
        raise UserError(f"{args.output}: streaming outputs are never overwritten; --resume continues it, or "
                        "remove it yourself")
    t0 = __import__("time").perf_counter()
    stats = relax_collection(args.input, args.output, shard=shard, resume=args.resume, model=args.model,
                             policy=_policy(args), seed=args.seed, conformer_seed=args.conformer_seed,
                             chunk_size=args.chunk_size, batch_size=args.batch_size, device=args.device,
                             progress=not args.quiet, compile=compile, n_entries=n_entries)
    wall = __import__("time").perf_counter() - t0
    summary = ", ".join(f"{v} {k}" for k, v in sorted(stats.statuses.items())) or "nothing new"
    print(f"shard {shard[0]}/{shard[1]}: {stats.entries} entries ({summary}); {stats.skipped_done} already done; "
          f"{stats.entries / max(wall, 1e-9):.1f} molecules/s -> {args.output}")
    print("seconds per stage: " + ", ".join(f"{k} {v:.1f}" for k, v in stats.seconds.items()))
    return 0


def _merge(args) -> int:
    from .workflows.collection import count_input_entries, merge_outputs

    expected = count_input_entries(args.input) if args.input else None
    info = merge_outputs(args.inputs, args.output, expected=expected, overwrite=args.overwrite)
    of = f" of {info['n_expected']}" if info["n_expected"] is not None else " (input size unknown: no --input and no " \
        "finished shard header; gaps after the last row cannot be seen)"
    print(f"merged {info['rows']}{of} rows into {args.output}; {info['n_missing']} input indices missing"
          + (f" (first: {info['missing_indices'][:10]})" if info["n_missing"] else ""))
    if info["unfinished_shards"]:
        print(f"  shards that did not finish (no header): {', '.join(info['unfinished_shards'])}")
    return 0 if not info["n_missing"] else 1


def _relax(args) -> int:

    from .adapters.batch import relax_many
    from .workflows.collection import check_output_path

    streaming = bool(args.shard or args.resume or args.input.lower().endswith((".smi", ".smiles", ".txt"))
                     or args.output.lower().endswith((".db", ".sdf")))
    if not streaming:
        check_output_path(args.output, streaming=False, overwrite=args.overwrite, inputs=[args.input])
    if streaming:
        if args.traj:
            raise UserError("--traj is not available with --shard/--resume/.smi/.db (large collections)")
        return _relax_collection(args)
    frames = _read_frames(args.input, args.index)
    traj = args.traj
    if traj and len(frames) > 1 and "{i}" not in traj:
        stem, dot, ext = traj.rpartition(".")
        traj = f"{stem}_{{i}}.{ext}" if dot else traj + "_{i}"
    from .core.validate import InputError
    from .workflows.collection import compile_choice

    compile, why = compile_choice(len(frames), args.compile)
    if args.compile is None and compile:
        print(f"ase-diffrelax: {why}", file=sys.stderr)
    try:
        results = relax_many(frames, model=args.model, policy=_policy(args), batch_size=args.batch_size,
                             device=args.device, seed=args.seed, progress=not args.quiet, trajectory=traj,
                             on_error="skip" if args.skip_bad else "raise", compile=compile)
    except InputError as exc:  # name the file and frame the user gave
        raise UserError(f"{args.input}: {str(exc).replace('structure ', 'frame ', 1)} (--skip-bad to write it "
                        "unchanged with status 'rejected' and go on)") from exc
    from .files import atomic_write_atoms

    atomic_write_atoms(args.output, [r.atoms for r in results])
    counts = {}
    for r in results:
        counts[r.status] = counts.get(r.status, 0) + 1
    n_topo = sum(bool(r.topology.get("changed")) for r in results)
    summary = ", ".join(f"{v} {k}" for k, v in sorted(counts.items()))
    print(f"relaxed {len(results)} structure(s): {summary}; {n_topo} with a changed bond graph -> {args.output}")
    for k, r in enumerate(results):
        if r.reason:
            print(f"  {args.input} frame {k}: {r.status}: {r.reason}")
        if r.topology.get("changed"):
            print(f"  {args.input} frame {k}: bonds broken {r.topology['broken']}, formed {r.topology['formed']}")
    return 0


def _announce_stage(k, stage, stages, route) -> None:
    """One stderr line as each pipeline stage starts: DFT can be quiet for minutes before its first step."""
    what = {"mmff": "ETKDG + MMFF94", "diffusion": "diffusion denoiser", "xtb": "GFN2-xTB", "dft": "PySCF DFT",
            "pre": "your intermediate calculator (--pre-calc)", "target": "your target calculator (--calc)"}[stage]
    how = ""
    if route is not None:
        optimizer, hessian = route
        how = f", {optimizer}" + (f" from a {hessian} Hessian" if isinstance(hessian, str) and hessian != "identity"
                                  else "")
        if hessian == "xtb":
            how += " (the GFN2-xTB Hessian is computed first: 6N gradients)"
    slow = "; each gradient can take minutes, every step is logged" if stage in ("dft", "target") else ""
    print(f"ase-diffrelax: stage {k + 1}/{len(stages)}: {what}{how}{slow}", file=sys.stderr, flush=True)


def _pipeline(args) -> int:
    import os

    from .workflows.pipeline import default_stages, run_pipeline

    start = args.start
    if os.path.exists(start):
        frames = _read_frames(start, args.index)
        if len(frames) > 1:
            raise UserError(f"{start}: {len(frames)} frames; the pipeline takes one structure (use --index)")
        start = frames[0]
    target = pre = None
    if args.calc:
        from .workflows.calculators import calculator_factory, parse_params

        if args.to is not None:
            raise UserError("--calc names the target level itself: leave out --to")
        args.to = "target"
        target = calculator_factory(args.calc, parse_params(args.calc_params))
    elif args.to is None:
        args.to = "xtb"
    if args.pre_calc:
        from .workflows.calculators import calculator_factory, parse_params

        if args.to == "xtb":
            raise UserError("--pre-calc runs before a DFT or --calc target: use it with --to dft or --calc")
        pre = calculator_factory(args.pre_calc, parse_params(args.pre_params))
    if args.via_xtb and args.to == "xtb":
        raise UserError("--via-xtb pre-optimises at GFN2-xTB before a DFT stage: use it with --to dft or --calc")
    stages = default_stages(args.to, diffusion=not args.skip_diffusion, mmff=not args.skip_mmff,
                            via_xtb=args.via_xtb, pre=pre is not None)
    params = {}
    if args.to == "dft":
        params = {"xc": args.xc, "basis": args.basis, "density_fit": args.density_fit, "threads": args.threads}
    if args.output:
        from .workflows.collection import check_output_path

        check_output_path(args.output, streaming=args.output.lower().endswith(".sdf"), overwrite=args.overwrite,
                          inputs=[args.start] if os.path.exists(args.start) else [])
        if args.output.lower().endswith(".sdf") and os.path.exists(args.output) and not args.overwrite:
            raise UserError(f"{args.output} exists: pass --overwrite to replace it, or choose another output")
    result = run_pipeline(start, stages=stages, fmax=args.fmax, physics_max_steps=args.physics_max_steps,
                          model=args.model, strip_salts=not args.keep_salts,
                          policy=_policy(args), seed=args.seed, conformer_seed=args.conformer_seed,
                          charge=args.charge, uhf=args.uhf, strict=args.strict, traj_prefix=args.traj,
                          physics_params=params, physics_log="-" if args.verbose or args.to != "xtb" else None,
                          target=target, pre=pre, gradient_cache=args.gradient_cache,
                          calc_state="set" if args.calc_sets_charge else "pass",
                          optimizer=args.optimizer, hessian=args.hessian,
                          on_stage=None if args.quiet else _announce_stage)
    if args.output and args.output.lower().endswith(".sdf"):
        from .chem.sdf import write_sdf

        final = result.stages[-1]
        write_sdf(args.output, result.atoms, {
            "relaxed_by": result.atoms.info.get("relaxed_by"), "energy_eV": final.energy_end_eV,
            "fmax_eV_per_A": final.fmax_end, "converged": final.converged,
            "pipeline_stages": result.atoms.info.get("pipeline_stages")},
            name=args.start if not os.path.exists(args.start) else os.path.basename(args.start))
    elif args.output:
        from .files import atomic_write_atoms

        atomic_write_atoms(args.output, [result.atoms])
    print(result.table())
    if args.json:
        from .files import atomic_write_json

        atomic_write_json(args.json, result.report())
    return 0


def _dataset(args) -> int:
    from .training.xtb_dataset import BuildProtocol, assemble, build_dataset, read_smiles_file

    if args.smiles == "moses":
        from .training.moses import moses_entries

        entries = moses_entries(n_train=args.moses_train, n_val=args.moses_val, n_test=args.moses_test)
        from .files import atomic_write_json

        atomic_write_json(f"{args.out}/source.json", {
            "smiles": "MOSES (PyPI molsets 0.3.1, MIT): ZINC lead-like, neutral, H C N O F S Cl Br",
            "selection": f"seeded random (seed 0): val {args.moses_val} and train {args.moses_train} candidates disjoint "
                         f"from MOSES train; test {args.moses_test} from MOSES test and {args.moses_test} from "
                         "test_scaffolds (never trained on)",
            "ids": "row number in the MOSES csv.gz file the split comes from"})
    elif args.smiles == "moses-coverage":
        from .files import atomic_write_json
        from .training.moses import RARE_BOND_SMARTS, THIOL_FROM_HYDROXYL, moses_coverage_entries

        entries = moses_coverage_entries(n_val=args.moses_val, n_train=args.moses_train)
        atomic_write_json(f"{args.out}/source.json", {
            "smiles": "MOSES (PyPI molsets 0.3.1, MIT) train rows outside our validation rows",
            "selection": f"every row with a rare bond type {RARE_BOND_SMARTS} not already drawn as training, plus "
                         f"thiols made from alcohols/phenols by OH -> SH {THIOL_FROM_HYDROXYL} (MOSES holds no thiol)",
            "ids": "row number in MOSES train.csv.gz (for a thiol: its parent alcohol's row)"})
    else:
        entries = read_smiles_file(args.smiles)
    protocol = BuildProtocol(optimizer=args.optimizer, etkdg_seed=args.seed)
    build_dataset(entries, args.out, workers=args.workers, chunk_size=args.chunk_size, protocol=protocol,
                  max_chunks=args.max_chunks, log=lambda m: print(m, flush=True))
    if not args.no_assemble:
        print(json.dumps(assemble(args.out), indent=1))
    return 0


def _models(args) -> int:
    from .core.checkpoint import available_models, registry

    default = registry()["default"]
    for name, entry in available_models().items():
        lo, hi = entry.get("atoms", ["?", "?"])
        heavy = " ({}-{} heavy)".format(*entry["heavy_atoms"]) if "heavy_atoms" in entry else ""
        mark = " [default: load_model()]" if name == default else ""
        print(f"{name}{mark}: {entry.get('level_of_theory')}; elements {' '.join(entry.get('elements', []))}; "
              f"{lo}-{hi} atoms{heavy}; charges {entry.get('charges', [0])}")
    print("without --model, relax and pipeline choose per molecule: the first of "
          f"{', '.join(registry().get('choice_order', []))} that knows its elements and size")
    for level, rule in registry().get("choice_by_level", {}).items():
        print(f"a start the pipeline hands straight to {level}: the first of {', '.join(rule['choice_order'])} "
              f"(measured at that level)")
    return 0


def _add_policy_options(p):
    p.add_argument("--model", default=None, help="checkpoint name (see 'ase-diffrelax models') or path")
    p.add_argument("--policy", default="jt", help="jt | itp | fixed, or a spec such as 'fixed:t0=30+eta=1'")
    p.add_argument("--t0", type=int, default=None, help="start step for --policy fixed (the paper: 50, 30 or 20)")
    p.add_argument("--eta", type=float, default=None, help="noise per step: 1 = DDPM, 0 = deterministic (default)")
    p.add_argument("--stride", type=float, default=None, help="fraction of t skipped per step (default 0.2)")
    p.add_argument("--seed", type=int, default=0, help="seed of the diffusion noise")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ase-diffrelax", description="Relax molecules with a diffusion denoiser.")
    p.add_argument("--debug", action="store_true", help="show the full traceback on errors")
    sub = p.add_subparsers(dest="cmd", required=True)

    r = sub.add_parser("relax", help="relax every frame of a file (or every SMILES of a .smi) as one batch")
    r.add_argument("input", help="any ASE-readable file (xyz, extxyz, traj, sdf, ...), an ASE .db, or a .smi file "
                   "(SMILES and an optional name per line)")
    r.add_argument("-o", "--output", required=True,
                   help="any ASE-writable file; .db or extxyz with --shard/--resume (written chunk by chunk)")
    r.add_argument("--index", default=":", help="frames to read (ASE index syntax)")
    _add_policy_options(r)
    r.add_argument("--max-steps", dest="diffusion_max_steps", type=positive_int, default=None,
                   help="diffusion steps per molecule at most (default: the policy's, 100 for jt)")
    r.add_argument("--batch-size", type=positive_int, default=None,
                   help="molecules in flight (default: 16 on CPU, 256 on GPU)")
    r.add_argument("--overwrite", action="store_true", help="replace an existing output file (never a streaming "
                   "output; the input only if named as output)")
    r.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda when available)")
    r.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="torch.compile the network (seconds of warm-up, then several times faster on CPU; needs a C++ "
                        "compiler); default: compiled when the input has enough entries to pay for the warm-up "
                        "(measured break-even, docs/benchmarks.md), said on stderr")
    r.add_argument("--traj", default=None, help="trajectory file(s) for ase gui ({i} = frame index)")
    r.add_argument("--skip-bad", action="store_true",
                   help="write structures the checkpoint cannot take unchanged, status 'rejected', instead of failing")
    r.add_argument("--shard", default=None, metavar="I/N",
                   help="relax only entries k with k %% N == I (a SLURM array task each); streams the input")
    r.add_argument("--resume", action="store_true", help="continue an interrupted run into the same output")
    r.add_argument("--chunk-size", type=positive_int, default=512, help="entries per written chunk (streaming mode)")
    r.add_argument("--conformer-seed", type=int, default=0, help="ETKDG seed for SMILES inputs")
    r.add_argument("--quiet", action="store_true", help="no progress bar")
    r.set_defaults(func=_relax)

    q = sub.add_parser("pipeline", help="MMFF94 -> diffusion -> xTB (Sella) or DFT (BFGS from the xTB Hessian): "
                       "the measured routes, on a SMILES or a file ([xtb]/[dft])")
    q.add_argument("start", help="a SMILES string or an ASE-readable file")
    q.add_argument("--index", default="-1", help="frame of a multi-frame file")
    q.add_argument("--to", choices=["xtb", "dft"], default=None,
                   help="physics stage: GFN2-xTB (tblite, the default) or PySCF DFT")
    q.add_argument("--calc", default=None, metavar="NAME",
                   help="your own target calculator instead of --to: an ASE calculator name as 'ase run' takes it "
                        "(nwchem, mopac, orca, gaussian, psi4, ...) or package.module:function returning one; it gets "
                        "the DFT route (GFN2-xTB stage, then BFGS from the xTB Hessian)")
    q.add_argument("-p", "--calc-params", default=None, metavar="KEY=VALUE,...",
                   help="keywords of --calc, as 'ase run -p' writes them (e.g. xc=B3LYP,basis=6-31G*)")
    q.add_argument("--pre-calc", default=None, metavar="NAME",
                   help="an intermediate calculator (e.g. an ML potential) in place of the GFN2-xTB stage before the "
                        "target; same naming as --calc")
    q.add_argument("--pre-params", default=None, metavar="KEY=VALUE,...", help="keywords of --pre-calc")
    q.add_argument("--calc-sets-charge", action="store_true",
                   help="the calculator's own parameters already set charge and multiplicity (for interfaces "
                        "ase_diffrelax does not know; otherwise a charged or open-shell molecule is refused)")
    q.add_argument("--gradient-cache", default=None, metavar="FILE.jsonl",
                   help="keep every DFT/--calc gradient here, keyed by calculator, parameters, charge, spin and "
                        "geometry: rerun the same command after a kill and it replays them")
    q.add_argument("--skip-diffusion", action="store_true",
                   help="no diffusion stage: the route without us, for comparison "
                        "(--to dft still goes via xTB unless --no-via-xtb)")
    q.add_argument("--via-xtb", action=argparse.BooleanOptionalAction, default=None,
                   help="with --to dft: relax at GFN2-xTB first (ASE BFGS, which keeps the start's conformer), "
                        "then at DFT from the xTB Hessian there; on by default, the measured fastest DFT route "
                        "(docs/benchmarks.md); --no-via-xtb hands the start straight to DFT")
    q.add_argument("--skip-mmff", action="store_true", help="start the chain from the file's geometry")
    q.add_argument("--strict", action="store_true",
                   help="fail when the diffusion checkpoint cannot take the molecule (default: skip that stage)")
    q.add_argument("--fmax", type=float, default=0.03, help="eV/A, max-force criterion of the physics stage")
    q.add_argument("--max-steps", dest="physics_max_steps", type=positive_int, default=500,
                   help="optimizer steps of the physics stage at most (not the diffusion stage)")
    q.add_argument("--diffusion-max-steps", type=positive_int, default=None,
                   help="model evaluations of the diffusion stage at most (default: the policy's, 100 for jt)")
    q.add_argument("--keep-salts", action="store_true", help="refuse a multi-fragment SMILES instead of relaxing "
                   "its largest fragment (counter-ions and solvent are stripped by default, and reported)")
    q.add_argument("--overwrite", action="store_true", help="replace an existing -o file")
    q.add_argument("--optimizer", default="auto", choices=["auto", "bfgs", "lbfgs", "fire", "sella", "geometric"],
                   help="physics hand-off optimizer; auto = the measured fastest for --to (docs/benchmarks.md); "
                        "bfgs = ASE BFGS, the behaviour before 0.3")
    q.add_argument("--hessian", default="auto", choices=["auto", "identity", "xtb"],
                   help="initial Hessian of the physics stage: identity (ASE's), xtb (GFN2-xTB finite differences "
                        "at the start, counted apart), auto = the measured choice")
    _add_policy_options(q)
    q.add_argument("--conformer-seed", type=int, default=0, help="ETKDG seed for a SMILES start")
    q.add_argument("--charge", type=int, default=None, help="total charge (default: from the SMILES or the file)")
    q.add_argument("--uhf", "--spin", dest="uhf", type=int, default=None,
                   help="unpaired electrons (default: 0, or 1 for an odd electron count)")
    q.add_argument("--xc", default="b3lyp", help="DFT functional, with a dispersion correction as PySCF names it "
                   "(b3lyp-d3bj)")
    q.add_argument("--basis", default="6-31g(2df,p)", help="DFT basis (QM9's level by default)")
    q.add_argument("--density-fit", action=argparse.BooleanOptionalAction, default=True,
                   help="DFT with density fitting (about 3x faster; on by default, as in every benchmarked route)")
    q.add_argument("--threads", type=int, default=None, help="DFT threads")
    q.add_argument("--traj", default=None, help="prefix for one trajectory per stage (ase gui)")
    q.add_argument("--verbose", action="store_true", help="log every optimizer step (always on for DFT)")
    q.add_argument("--quiet", action="store_true", help="no line as each stage starts")
    q.add_argument("--json", default=None, help="write the full stage report as JSON to this file")
    q.add_argument("-o", "--output", default=None, help="final structure with its energy and forces, any ASE format")
    q.set_defaults(func=_pipeline)

    d = sub.add_parser("dataset", help="build a GFN2-xTB training set from SMILES (ETKDG -> MMFF94 -> xTB), resumable")
    d.add_argument("smiles", help="a .smi/.csv/.txt file (SMILES first, optional 'train'/'val' second), "
                   "'moses-coverage' (rare bond types and thiols for the drug-like set), "
                   "or 'moses' for the MOSES drug-like selection")
    d.add_argument("--out", required=True, help="folder for chunks and the assembled dataset.npz")
    d.add_argument("--workers", type=int, default=1, help="processes, one core each")
    d.add_argument("--chunk-size", type=int, default=50, help="molecules per atomically written chunk")
    d.add_argument("--max-chunks", type=int, default=None, help="stop after this many new chunks")
    d.add_argument("--optimizer", default="auto", choices=["auto", "xtb-program", "tblite-lbfgs"],
                   help="auto: the xtb program if on PATH, else LBFGS on tblite forces")
    d.add_argument("--seed", type=int, default=42, help="ETKDG seed")
    d.add_argument("--moses-train", type=int, default=30000, help="training candidates drawn from MOSES train")
    d.add_argument("--moses-val", type=int, default=1000, help="validation molecules drawn from MOSES train")
    d.add_argument("--moses-test", type=int, default=600, help="candidates from each of MOSES test and test_scaffolds")
    d.add_argument("--no-assemble", action="store_true", help="leave the chunks unjoined")
    d.set_defaults(func=_dataset)

    t = sub.add_parser("train", help="train a denoiser on QM9 (train split) or your structures, resumable ([train])")
    t.add_argument("--out", default="runs/qm9-painn128-jt", help="run folder (state, log, best checkpoint)")
    t.add_argument("--steps", type=int, default=100_000, help="optimizer steps in total")
    t.add_argument("--batch-size", type=int, default=64, help="molecules per batch")
    t.add_argument("--lr", type=float, default=5e-4, help="peak learning rate (AdamW)")
    t.add_argument("--features", type=positive_int, default=None, help="PaiNN feature width (default 128, or --init's); "
                   "with --init, a whole multiple of its width repeats its channels (same function to start)")
    t.add_argument("--blocks", type=positive_int, default=None, help="PaiNN message-passing blocks (default 3, or --init's); "
                   "with --init, blocks beyond the checkpoint's are appended with their updates starting at zero")
    t.add_argument("--mmff-fraction", type=float, default=0.4,
                   help="fraction of each batch built from MMFF94 starts of training molecules")
    t.add_argument("--low-t-weight", type=float, default=1.0, help="noise-loss weight of molecules at step "
                   "t <= --low-t-max, where relaxation ends (weights normalised per batch; 1 = plain mean)")
    t.add_argument("--low-t-max", type=int, default=50, help="the largest step --low-t-weight applies to")
    t.add_argument("--mmff-step", type=_steps, default=0, metavar="STEP[,STEP...]",
                   help="present MMFF94 inputs unshrunk at this step, where the time head reads real MMFF94 starts "
                        "(e.g. 80), instead of shrunk at the step of their real deviation (0, the default); "
                        "several steps (e.g. 40,120): each MMFF94 input draws one")
    t.add_argument("--local-minima", default=None, help="local_minima.npz (python -m ase_diffrelax.training."
                   "local_minima): MMFF94 inputs of a dataset.npz are built on each molecule's local minimum at "
                   "MMFF94's torsions; only molecules that have one get MMFF94 inputs")
    t.add_argument("--local-fraction", type=float, default=1.0, help="with --local-minima: the probability an "
                   "MMFF94 input is built on the local minimum rather than the global one (below 1, molecules "
                   "without a local minimum keep their MMFF94 inputs)")
    t.add_argument("--self-starts", default=None, help="self_starts.npz (python -m ase_diffrelax.training."
                   "self_starts): a checkpoint's own ends from the training molecules' MMFF94 starts, used as "
                   "starts for a fraction of the MMFF94 inputs, toward the minimum")
    t.add_argument("--self-fraction", type=float, default=0.5, help="with --self-starts: the probability an "
                   "MMFF94 input of a molecule that has a self start uses it")
    t.add_argument("--self-step", type=int, default=30, help="with --self-starts: the step they are presented at "
                   "(the step the finish holds at)")
    t.add_argument("--self-weight", type=float, default=1.0, help="with --self-starts: their noise-loss weight "
                   "relative to an MMFF94 input's")
    t.add_argument("--self-max-rmsd", type=float, default=1.0, help="with --self-starts: use only ends within this "
                   "all-atom RMSD (A, aligned) of the minimum: in its conformation, so the rest is local geometry")
    t.add_argument("--max-mmff-rmsd", type=float, default=1.0, help="training molecules whose MMFF94 start lies "
                   "farther than this (A, all atoms, aligned) from their minimum get no MMFF94 inputs (validation "
                   "keeps 1.0)")
    t.add_argument("--val-every", type=int, default=1000, help="steps between validations")
    t.add_argument("--ckpt-every", type=int, default=250, help="steps between saved training states")
    t.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    t.add_argument("--seed", type=int, default=0, help="seed of batches, noise and initial weights")
    t.add_argument("--max-train-molecules", type=int, default=0, help="use only this many training molecules (0 = all)")
    t.add_argument("--data", default=None, help="train on your own equilibrium structures instead of QM9: an ASE "
                   "file or .db (frame k goes to validation when (k+1) %% 10 == 1, test when == 0), or a dataset.npz "
                   "built by 'ase-diffrelax dataset' (its own train/val split and MMFF94 starts)")
    t.add_argument("--init", default=None, help="start from this checkpoint's weights (name or path): fine-tuning; "
                   "width and depth come from it unless --features/--blocks grow them, new --elements get new embedding rows")
    t.add_argument("--elements", default=None, help="comma list of element symbols the model knows "
                   "(default H,C,N,O,F; with --init: added to the checkpoint's)")
    t.add_argument("--val-molecules", type=int, default=384, help="validation molecules per validation")
    t.add_argument("--lr-decay", type=lambda v: tuple(int(x) for x in v.split(":")), default=(0, 0),
                   metavar="START:END", help="cosine learning-rate decay from --lr at step START to 1e-5 at END "
                   "(replaces halving on plateaus; may be set when resuming)")
    t.add_argument("--compile", action="store_true", help="torch.compile the network blocks (needs a C++ "
                   "compiler; ~30 s warm-up, then ~3x faster steps on CPU for drug-size molecules)")
    t.add_argument("--device", default="auto", help="where the network trains: cpu, cuda, cuda:1 (default: cuda "
                   "when available; the batches drawn are the same on any device)")
    t.add_argument("--stop-after", type=float, default=None, help="stop (with a checkpoint) after this many seconds")
    t.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    t.set_defaults(func=_train)

    g = sub.add_parser("merge", help="join the outputs of sharded relax runs, ordered by input index")
    g.add_argument("inputs", nargs="+", help="shard outputs (.db or extxyz)")
    g.add_argument("-o", "--output", required=True, help="merged .db or extxyz")
    g.add_argument("--overwrite", action="store_true", help="replace an existing merged output (never a shard)")
    g.add_argument("--input", default=None, help="the input the shards came from: its entry count is the "
                   "expected row count (default: the count finished shards recorded)")
    g.set_defaults(func=_merge)

    m = sub.add_parser("models", help="list the shipped checkpoints with their elements, sizes and level of theory")
    m.set_defaults(func=_models)
    return p


def _outside_failure(exc, write_failed) -> bool:
    """Disk full, a file-size limit, an I/O error: the machine's fault, not the input's."""
    import errno

    return isinstance(exc, write_failed) or (isinstance(exc, OSError) and exc.errno in (
        errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EIO))


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv  # accepted before or after the subcommand
    args = build_parser().parse_args([a for a in argv if a != "--debug"])
    args.debug = debug
    if args.cmd in ("relax", "pipeline", "train"):
        from .core.allocator import tune_allocator

        tune_allocator()  # eager CPU inference otherwise spends ~40 % in page faults (docs/benchmarks.md)
    if args.debug:
        return args.func(args)
    try:
        return args.func(args)
    except ImportError as exc:
        print(f"ase-diffrelax: missing dependency: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except (UserError, ValueError, OSError, RuntimeError) as exc:
        from .core.validate import InputError
        from .files import LockHeld, WriteFailed

        bad = (UserError, InputError, ValueError, OSError, LockHeld)
        kind = "bad input" if isinstance(exc, bad) and not _outside_failure(exc, WriteFailed) else "failed"
        print(f"ase-diffrelax: {kind}: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT if kind == "bad input" else 1


if __name__ == "__main__":
    sys.exit(main())
