"""Hand-off workflows: MMFF94 -> diffusion -> BFGS(xTB | DFT), any subset, with a per-stage report.

    from ase_diffrelax import run_pipeline
    result = run_pipeline("CCO", stages=["mmff", "diffusion", "xtb"])
    result.atoms, print(result.table())

The physics stage is ASE's BFGS at fmax 0.03 eV/A (the relaxation paper's criterion). The
total charge and unpaired electrons come from the SMILES (formal charges, radicals), from
``atoms.info["charge"]``/initial charges, or from the ``charge``/``uhf`` arguments, and are
used by every physics stage. When the diffusion checkpoint cannot take a molecule (element,
charge, size), the stage is skipped with the reason unless ``strict=True``.
"""
from __future__ import annotations

import json
import re
import time
from dataclasses import asdict, dataclass, field

import numpy as np
from ase import Atoms

from ..chem.topology import describe, topology_change
from ..core.policy import Policy

PHYSICS = ("xtb", "dft", "pre", "target")  # pre / target: the user's own ASE calculators (calculators.py)
STAGES = ("mmff", "diffusion") + PHYSICS
USER_STAGES = ("pre", "target")


@dataclass
class StageReport:
    stage: str
    wall_s: float
    steps: int | None = None  # optimizer steps (diffusion: sampler steps)
    force_calls: int | None = None  # diffusion: network evaluations, smoothing copies included
    converged: bool | None = None
    energy_start_eV: float | None = None  # physics stages only
    energy_end_eV: float | None = None
    fmax_end: float | None = None
    charge: int | None = None
    multiplicity: int | None = None
    skipped: str = ""  # why the stage did not run
    topology: dict = field(default_factory=dict)
    trajectory: str | None = None
    optimizer: str | None = None  # physics stages: the hand-off optimizer
    hessian: dict | None = None  # physics stages: initial-Hessian work, apart from force_calls
    extra: dict = field(default_factory=dict)


@dataclass
class PipelineResult:
    atoms: Atoms
    stages: list[StageReport]

    def report(self) -> list[dict]:
        return [asdict(s) for s in self.stages]

    def table(self) -> str:
        """One line per stage, for people."""
        head = f"{'stage':<10} {'steps':>5} {'calls':>5} {'E start [eV]':>14} {'E end [eV]':>14} {'fmax':>7} " \
               f"{'chg':>4} {'mult':>4} {'wall [s]':>8}  note"
        lines = [head, "-" * len(head)]
        def fmt(v, spec):
            return format(v, spec) if v is not None else "-".rjust(int(re.match(r"\+?(\d+)", spec).group(1)))

        for s in self.stages:
            note = f"skipped: {s.skipped}" if s.skipped else ""
            if s.extra.get("removed_fragments"):
                note += f" removed counter-ions/solvent {s.extra['removed_fragments']}"
            if s.topology.get("changed"):
                note += f" {describe(s.topology)}"
            if s.optimizer:
                note += f" {s.optimizer}"
            if s.hessian:
                note += f" +H0 {s.hessian['method']}: {s.hessian['calls']} calls {s.hessian['wall_s']:.2f} s"
            if s.converged is False:
                note += " NOT CONVERGED"
            lines.append(f"{s.stage:<10} {fmt(s.steps, '5d')} {fmt(s.force_calls, '5d')} "
                         f"{fmt(s.energy_start_eV, '14.4f')} {fmt(s.energy_end_eV, '14.4f')} {fmt(s.fmax_end, '7.4f')} "
                         f"{fmt(s.charge, '+4d')} {fmt(s.multiplicity, '4d')} {s.wall_s:8.2f}  {note.strip()}")
        return "\n".join(lines)


def electronic_state(atoms, charge: int | None = None, uhf: int | None = None) -> tuple[int, int]:
    """(total charge, unpaired electrons): explicit values, else what ``atoms`` carries; checked
    against the electron count so an impossible combination fails before any calculation."""
    from ..core.validate import total_charge, unpaired_electrons

    q = total_charge(atoms) if charge is None else int(charge)
    if uhf is None:
        if "uhf" in atoms.info or "spin" in atoms.info or np.any(atoms.get_initial_magnetic_moments()):
            uhf = unpaired_electrons(atoms)
        else:
            uhf = (int(atoms.numbers.sum()) - q) % 2
    n_el = int(atoms.numbers.sum()) - q
    if n_el <= 0 or n_el % 2 != uhf % 2:
        raise ValueError(f"{atoms.get_chemical_formula()} with charge {q:+d} has {n_el} electrons, which cannot "
                         f"have {uhf} unpaired electron(s); give charge and spin (uhf) consistently")
    return q, int(uhf)


def make_physics_calculator(kind: str, charge: int = 0, uhf: int = 0, **params):
    from .physics import PySCFCalculator, xtb_calculator

    if kind == "xtb":
        return xtb_calculator(charge=charge, uhf=uhf, **params)
    if kind == "dft":
        return PySCFCalculator(charge=charge, spin=uhf, **params)
    raise ValueError(f"unknown physics stage {kind!r}; choose 'xtb' or 'dft'")


def mmff_stage(atoms_or_smiles, conformer_seed: int = 0, strip_salts: bool = True,
               max_heavy_atoms: int | None = None) -> tuple[Atoms, StageReport]:
    """ETKDG + MMFF94 for a SMILES (a salt's counter-ions stripped unless ``strip_salts=False``,
    which refuses a multi-fragment SMILES), or the MMFF94 minimum from an Atoms' geometry.
    ``max_heavy_atoms`` refuses a larger SMILES before ETKDG, which can take minutes on a giant."""
    from ..chem.rdkit_interop import atoms_from_smiles, mmff_from_reference

    t0 = time.perf_counter()
    extra = {}
    if isinstance(atoms_or_smiles, str):
        atoms = atoms_from_smiles(atoms_or_smiles, seed=conformer_seed, strip_salts=strip_salts,
                                  max_heavy_atoms=max_heavy_atoms)
        if atoms.info.get("removed_fragments"):
            import warnings

            extra["removed_fragments"] = atoms.info["removed_fragments"]
            extra["smiles_relaxed"] = atoms.info["smiles"]
            warnings.warn(f"{atoms_or_smiles!r}: removed {atoms.info['removed_fragments']}; relaxing "
                          f"{atoms.info['smiles']} (strip_salts=False refuses multi-fragment SMILES)", stacklevel=3)
        before = None
    else:
        atoms = atoms_or_smiles.copy()
        before = atoms.positions.copy()
        atoms.positions = mmff_from_reference(atoms.numbers, atoms.positions, charge=int(atoms.info.get("charge", 0)))
    topo = topology_change(atoms.numbers, before, atoms.positions) if before is not None else {}
    _moved_by(atoms, "mmff")
    return atoms, StageReport("mmff", time.perf_counter() - t0, topology=topo, extra=extra)


def _moved_by(atoms, stage: str, **info) -> None:
    """Metadata follows the last stage that moved the atoms: a later diffusion or MMFF stage
    drops the physics stage's energy, forces and fmax, which no longer describe the geometry."""
    for key in ("relaxed_by", "relaxed_fmax", "relaxed_optimizer"):
        atoms.info.pop(key, None)
    atoms.calc = None
    atoms.info.update(relaxed_by=stage, **info)


def diffusion_stage(atoms, *, model=None, policy: Policy | str = "jt", seed: int | None = 0, trajectory=None,
                    strict: bool = True, level: str | None = None):
    """DiffusionRelax on a copy of ``atoms``; with ``strict=False`` a molecule the checkpoint
    cannot take, or one with a bond type its training data never held (a thiol's S-H for the
    drug-like checkpoint), passes through unchanged and the report says why. ``level``: the
    physics level the start goes to next, for the automatic checkpoint choice (``choose_model``)."""
    import warnings

    from ..adapters.optimizer import DiffusionRelax
    from ..core.checkpoint import choose_model, load_model, registry
    from ..core.validate import InputError, unseen_bonds

    t0 = time.perf_counter()
    atoms = atoms.copy()
    before = atoms.positions.copy()
    size_factor, for_level = 1.5, None
    try:
        name = model if model is not None else choose_model([atoms], level=level)
        if model is None and level and name != choose_model([atoms]):
            # picked by a rule measured at that level beyond the checkpoint's training sizes: its
            # tolerance, not the generic 1.5x, is the limit, and the size is not a surprise to warn about
            for_level = level
            size_factor = float(registry()["choice_by_level"][level].get("size_tolerance", 1.5))
        chosen = load_model(name)
        unseen = unseen_bonds(atoms, chosen.card)
        if unseen and not strict:  # measured: such starts are worse than MMFF94's (thiols: +8-17 kcal/mol)
            return atoms, StageReport("diffusion", time.perf_counter() - t0, skipped=(
                f"bond type(s) {', '.join(unseen)} never occur in the training data of {chosen.name}; the MMFF94 "
                "start is kept (strict=True forces diffusion)"))
        with warnings.catch_warnings():
            if for_level:
                warnings.filterwarnings("ignore", message=".*the denoiser has not seen molecules this size")
            opt = DiffusionRelax(atoms, model=chosen, policy=policy, seed=seed, trajectory=trajectory, logfile=None)
        largest = opt.model.card.get("max_atoms")
        if largest and len(atoms) > size_factor * largest:
            raise InputError(f"input: {len(atoms)} atoms, far more than the largest molecule checkpoint "
                             f"{opt.model.name} was trained on ({largest})")
    except InputError as exc:
        if strict:
            raise
        return atoms, StageReport("diffusion", time.perf_counter() - t0, skipped=str(exc))
    converged = opt.run()
    if not np.array_equal(atoms.positions, before):
        _moved_by(atoms, "diffusion")
    evals = int(opt.batch.steps[0]) if opt.nsteps else 0
    report = StageReport("diffusion", time.perf_counter() - t0, steps=opt.nsteps, force_calls=evals,
                         converged=bool(converged), topology=topology_change(atoms.numbers, before, atoms.positions),
                         trajectory=trajectory, extra={"t_hat": float(atoms.info.get("diffusion_t", np.nan)),
                                                       "model": opt.model.name, "chosen_for_level": for_level,
                                                       "level_of_theory": opt.model.level_of_theory,
                                                       "policy": opt.policy.todict()})
    return atoms, report


def physics_stage(atoms, kind: str, *, fmax: float = 0.03, max_steps: int = 500, trajectory=None, calc=None,
                  charge: int | None = None, uhf: int | None = None, logfile=None, optimizer: str = "bfgs",
                  hessian="identity", **calc_params):
    """Relax ``atoms`` (a copy) at level ``kind`` with ``optimizer`` from an initial ``hessian``
    (see :mod:`.handoff`); ``force_calls`` counts target-level gradients only, the Hessian's own
    work is in ``report.hessian``."""
    from ase.calculators.singlepoint import SinglePointCalculator

    from .handoff import check_handoff, initial_hessian, run_handoff
    from .physics import CountingCalculator

    optimizer, hessian = resolve_handoff(kind, optimizer, hessian)
    check_handoff(optimizer, hessian)
    t0 = time.perf_counter()
    atoms = atoms.copy()
    before = atoms.positions.copy()
    q, u = electronic_state(atoms, charge, uhf)
    h0, h_work = initial_hessian(atoms, hessian, charge=q, uhf=u)
    counter = CountingCalculator(calc if calc is not None else make_physics_calculator(kind, q, u, **calc_params))
    atoms.calc = counter
    e0 = atoms.get_potential_energy()
    converged, nsteps = run_handoff(atoms, optimizer, h0=h0, fmax=fmax, max_steps=max_steps, trajectory=trajectory,
                                    logfile=logfile)
    f = atoms.get_forces()
    e = float(atoms.get_potential_energy())
    report = StageReport(kind, time.perf_counter() - t0, steps=nsteps, force_calls=counter.calls,
                         converged=bool(converged), energy_start_eV=float(e0), energy_end_eV=e,
                         fmax_end=float(np.sqrt((f**2).sum(1)).max()), charge=q, multiplicity=u + 1,
                         topology=topology_change(atoms.numbers, before, atoms.positions), trajectory=trajectory,
                         optimizer=optimizer, hessian=h_work.todict() if h_work else None)
    atoms.calc = SinglePointCalculator(atoms, energy=e, forces=f)
    for key in [k for k in atoms.info if k.startswith("diffusion_")]:
        del atoms.info[key]  # they describe the input of this stage, not its result
    atoms.info.update(charge=q, multiplicity=u + 1, relaxed_by=kind, relaxed_fmax=report.fmax_end,
                      relaxed_optimizer=optimizer)
    return atoms, report


def resolve_handoff(kind: str, optimizer: str = "auto", hessian="auto") -> tuple[str, object]:
    """``"auto"`` -> the measured fastest hand-off for this level (``handoff_defaults.json``); when
    that route needs a package that is not installed, the level's fallback, with a warning."""
    if optimizer != "auto" and not (isinstance(hessian, str) and hessian == "auto"):
        return optimizer, hessian
    from .handoff import HESSIAN_OPTIMIZERS, route_available

    table = handoff_defaults()
    choice = table["levels"].get(kind, table["levels"]["default"])
    best = (choice["optimizer"] if optimizer == "auto" else optimizer,
            choice["hessian"] if isinstance(hessian, str) and hessian == "auto" else hessian)
    missing = route_available(*best) if optimizer == "auto" else None
    if missing:
        import warnings

        fb = choice.get("fallback", {"optimizer": "bfgs", "hessian": "identity"})
        warnings.warn(f"the measured fastest {kind} hand-off ({best[0]}, hessian {best[1]}) needs {missing}; "
                      f"using {fb['optimizer']} with hessian {fb['hessian']}", stacklevel=3)
        best = (fb["optimizer"], fb["hessian"] if isinstance(hessian, str) and hessian == "auto" else hessian)
    if best[0] not in HESSIAN_OPTIMIZERS and isinstance(best[1], str) and isinstance(hessian, str) and hessian == "auto":
        best = (best[0], "identity")
    return best


def handoff_level(stage: str, stages) -> str:
    """The row of ``handoff_defaults.json`` for a physics stage: an xTB stage that feeds a DFT stage
    is judged by the DFT gradients after it, not by its own (cheap) xTB calls. A user's target
    calculator is treated as DFT-like (the expensive level), a user's intermediate one as the
    stage before it."""
    stages = list(stages)
    later = stages[stages.index(stage) + 1:]
    if stage in ("xtb", "pre") and ("dft" in later or "target" in later):
        return "xtb_before_dft"
    if stage == "target":
        return "dft"
    return stage


def default_stages(to: str, *, diffusion: bool = True, mmff: bool = True, via_xtb: bool | None = None,
                   pre: bool = False) -> list[str]:
    """The stages ``ase-diffrelax pipeline --to`` runs (``to="target"``: the user's calculator, with the
    DFT level's measured route). ``via_xtb=None``: the level's measured choice (``"via_xtb"`` in
    ``handoff_defaults.json``): whether a GFN2-xTB stage before the target saves target gradients.
    ``pre=True``: the user's intermediate calculator takes that stage's place."""
    if to not in ("xtb", "dft", "target"):
        raise ValueError(f"unknown target level {to!r}; choose from ['xtb', 'dft', 'target']")
    row = "dft" if to == "target" else to
    if via_xtb is None:
        via_xtb = bool(handoff_defaults()["levels"].get(row, {}).get("via_xtb", False))
    elif via_xtb and to == "xtb":
        raise ValueError("via_xtb pre-optimises at GFN2-xTB before a DFT stage: use it with to='dft'")
    if pre and to == "xtb":
        raise ValueError("a pre-stage calculator goes before a DFT or target stage, not before xtb")
    middle = ["pre"] if pre else (["xtb"] if via_xtb else [])
    return (["mmff"] if mmff else []) + (["diffusion"] if diffusion else []) + middle + [to]


def _stage_calculator(atoms, stage, given, physics_params, charge, uhf, gradient_cache, calc_state):
    """The calculator of a user stage (or of a cached DFT stage), told the molecule's charge and spin,
    wrapped in a GradientMemo when a cache file is given. Returns (calculator, report extra)."""
    from . import calculators
    from .physics import GradientMemo

    q, u = electronic_state(atoms, charge, uhf)
    if stage in USER_STAGES:
        calc = calculators.resolve(given)
        name, params = calculators.identity(calc, given)
        how = calculators.apply_electronic_state(calc, atoms, q, u, trusted=calc_state == "set")
        extra = {"calculator": name.split(":")[-1], "calculator_spec": name, "parameters": params, "charge_spin": how}
    else:
        calc = make_physics_calculator("dft", q, u, **physics_params)
        name, params = "pyscf", json.dumps(physics_params, sort_keys=True, default=str)
        extra = {}
    if gradient_cache and stage != "pre":
        calc = GradientMemo(calc, gradient_cache, level=f"{name}|{params}|charge={q}|uhf={u}")
        extra["gradient_cache"] = str(gradient_cache)
    return calc, extra


def handoff_defaults() -> dict:
    from pathlib import Path

    return json.loads((Path(__file__).with_name("handoff_defaults.json")).read_text())


def run_pipeline(start, *, stages=("mmff", "diffusion", "xtb"), fmax: float = 0.03, physics_max_steps: int = 500,
                 model=None, policy: Policy | str = "jt", seed: int | None = 0, conformer_seed: int = 0,
                 charge: int | None = None, uhf: int | None = None, strict: bool = False,
                 traj_prefix: str | None = None, physics_params: dict | None = None,
                 physics_log=None, optimizer: str = "auto", hessian="auto", strip_salts: bool = True,
                 diffusion_max_steps: int | None = None, on_stage=None, target=None, pre=None,
                 gradient_cache=None, calc_state: str = "pass") -> PipelineResult:
    """Run the chosen stages in order on a SMILES or an Atoms (which is not modified).

    ``seed``: diffusion noise; ``conformer_seed``: ETKDG. ``physics_max_steps``: BFGS steps.
    ``physics_log``: a file or "-" for the optimizer's per-step log (DFT steps take minutes).
    ``optimizer``/``hessian``: the physics hand-off (``"bfgs"``, ``"lbfgs"``, ``"fire"``, ``"sella"``,
    ``"geometric"``; ``"identity"``, ``"xtb"`` or f(atoms) -> 3N x 3N eV/A^2); ``"auto"`` takes the
    measured fastest route for the level (``handoff_defaults.json``, docs/benchmarks.md). For DFT,
    ``stages=default_stages("dft")`` is what the CLI runs: an ``"xtb"`` stage before ``"dft"``, which
    ``"auto"`` relaxes by its own measured route (``xtb_before_dft``), not by the xTB-target one.
    ``strip_salts``: a multi-fragment SMILES keeps its largest fragment (recorded in the MMFF stage's
    report and warned about); False refuses it. ``diffusion_max_steps`` caps model evaluations
    (default: the policy's, 100 for jt); ``physics_max_steps`` never reaches the diffusion stage.
    The returned atoms carry the last stage's energy and forces (a SinglePointCalculator)
    and ``info["relaxed_by"]``. ``on_stage(k, stage, stages, route)`` is called as each stage
    starts (``route``: the physics stage's (optimizer, hessian), else None): a DFT stage can be
    quiet for minutes before its first step.
    ``target`` / ``pre``: your own ASE calculator (or a zero-argument factory, one per molecule) for
    the ``"target"`` / ``"pre"`` stages (``default_stages("target", pre=...)``); the target gets the
    DFT level's measured route. Charge and spin reach it through ``calculators.CHARGE_SPIN``; for an
    unknown interface a charged or open-shell molecule is refused unless ``calc_state="set"`` (you
    set them on it). ``gradient_cache``: a JSON-lines file keeping every DFT/target gradient keyed by
    the calculator's name, parameters, charge, spin and geometry: a killed run replays them.
    """
    stages = list(stages)
    if not stages:
        raise ValueError(f"no stages given; choose from {list(STAGES)}, e.g. ('mmff', 'diffusion', 'xtb')")
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise ValueError(f"unknown stage(s) {unknown}; choose from {list(STAGES)}")
    if isinstance(start, str) and stages[0] != "mmff":
        raise ValueError("a SMILES start needs 'mmff' as the first stage (it builds the 3D structure)")
    for name, given in (("target", target), ("pre", pre)):
        if (name in stages) != (given is not None):
            raise ValueError(f"stage {name!r} and the {name}= calculator come together" if given is None else
                             f"{name}= calculator given but no {name!r} stage (stages=default_stages('target'"
                             f"{', pre=True' if name == 'pre' else ''}))")
    if calc_state not in ("pass", "set"):
        raise ValueError(f"calc_state must be 'pass' or 'set', not {calc_state!r}")
    handoffs = {}
    for s in stages:
        if s in PHYSICS and s not in handoffs:
            from .handoff import check_handoff

            handoffs[s] = resolve_handoff(handoff_level(s, stages), optimizer, hessian)
            check_handoff(*handoffs[s])  # fail before any work
    if diffusion_max_steps is not None:
        from ..core.policy import make_policy

        policy = make_policy(policy, max_steps=int(diffusion_max_steps))
    atoms = start if isinstance(start, str) else start.copy()
    reports = []
    physics_names = set(PHYSICS)
    for k, stage in enumerate(stages):
        if on_stage is not None:
            on_stage(k, stage, stages, handoffs.get(stage))
        traj = f"{traj_prefix}_{k}_{stage}.traj" if traj_prefix and stage != "mmff" else None
        if stage == "mmff":
            smiles_charge = int(atoms.info.get("charge", 0)) if isinstance(atoms, Atoms) else None
            cap = None
            if isinstance(atoms, str):  # as relax does: 2x the largest training molecule, before ETKDG
                from .collection import max_heavy_atoms_accepted

                cap = max_heavy_atoms_accepted(model)
            atoms, rep = mmff_stage(atoms, conformer_seed=conformer_seed, strip_salts=strip_salts, max_heavy_atoms=cap)
            if smiles_charge is None and "smiles" in atoms.info:
                smiles_charge = int(atoms.info.get("charge", 0))
            if charge is not None and smiles_charge is not None and int(charge) != smiles_charge:
                import warnings

                warnings.warn(f"charge {int(charge):+d} given, but the structure's formal charges sum to "
                              f"{smiles_charge:+d}: the physics stages use {int(charge):+d}", stacklevel=2)
                rep.extra["charge_conflict"] = {"given": int(charge), "formal": smiles_charge}
            if charge is not None:
                atoms.info["charge"] = int(charge)
            if traj_prefix:
                from ase.io import write

                traj = f"{traj_prefix}_{k}_mmff.traj"
                write(traj, atoms)
                rep.trajectory = traj
        elif stage == "diffusion":
            if charge is not None:
                atoms.info["charge"] = int(charge)
            if uhf is not None:
                atoms.info["uhf"] = int(uhf)
            after = (stages[stages.index("diffusion") + 1:] or [None])[0]  # the level the start goes to next
            atoms, rep = diffusion_stage(atoms, model=model, policy=policy, seed=seed, trajectory=traj,
                                         strict=strict, level=after if after in ("xtb", "dft") else None)
        else:
            calc, extra, params = None, {}, dict(physics_params or {})
            if stage in USER_STAGES or (gradient_cache and stage == "dft"):
                calc, extra = _stage_calculator(atoms, stage, target if stage == "target" else pre, params, charge,
                                                uhf, gradient_cache, calc_state)
                params = {}
            atoms, rep = physics_stage(atoms, stage, fmax=fmax, max_steps=physics_max_steps, trajectory=traj,
                                       charge=charge, uhf=uhf, logfile=physics_log, optimizer=handoffs[stage][0],
                                       hessian=handoffs[stage][1], calc=calc, **params)
            if stage in USER_STAGES:
                rep.stage = atoms.info["relaxed_by"] = extra["calculator"]
                physics_names.add(extra["calculator"])
            rep.extra.update(extra)
            if hasattr(calc, "replayed"):  # a GradientMemo: how many gradients came back from the cache
                rep.extra.update(replayed_calls=calc.replayed, replayed_wall_s=round(calc.replayed_wall_s, 3))
        reports.append(rep)
    if atoms.info.get("relaxed_by") not in physics_names:  # only a physics stage's energy and forces describe them
        atoms.calc = None
    atoms.info["pipeline_stages"] = ",".join(r.stage for r in reports if not r.skipped)
    return PipelineResult(atoms, reports)
