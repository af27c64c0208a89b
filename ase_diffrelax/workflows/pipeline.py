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

import re
import time
from dataclasses import asdict, dataclass, field

import numpy as np
from ase import Atoms

from ..chem.topology import topology_change
from ..core.policy import Policy

PHYSICS = ("xtb", "dft")
STAGES = ("mmff", "diffusion") + PHYSICS


@dataclass
class StageReport:
    stage: str
    wall_s: float
    steps: int | None = None  # optimizer steps (diffusion: model evaluations)
    force_calls: int | None = None
    converged: bool | None = None
    energy_start_eV: float | None = None  # physics stages only
    energy_end_eV: float | None = None
    fmax_end: float | None = None
    charge: int | None = None
    multiplicity: int | None = None
    skipped: str = ""  # why the stage did not run
    topology: dict = field(default_factory=dict)
    trajectory: str | None = None
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
            if s.topology.get("changed"):
                note += f" bonds broken {s.topology['broken']} formed {s.topology['formed']}"
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


def mmff_stage(atoms_or_smiles, conformer_seed: int = 0) -> tuple[Atoms, StageReport]:
    from ..chem.rdkit_interop import atoms_from_smiles, mmff_from_reference

    t0 = time.perf_counter()
    if isinstance(atoms_or_smiles, str):
        atoms = atoms_from_smiles(atoms_or_smiles, seed=conformer_seed)
        before = None
    else:
        atoms = atoms_or_smiles.copy()
        before = atoms.positions.copy()
        atoms.positions = mmff_from_reference(atoms.numbers, atoms.positions, charge=int(atoms.info.get("charge", 0)))
    topo = topology_change(atoms.numbers, before, atoms.positions) if before is not None else {}
    return atoms, StageReport("mmff", time.perf_counter() - t0, topology=topo)


def diffusion_stage(atoms, *, model=None, policy: Policy | str = "jt", seed: int | None = 0, trajectory=None,
                    strict: bool = True):
    """DiffusionRelax on a copy of ``atoms``; with ``strict=False`` a molecule the checkpoint
    cannot take passes through unchanged and the report says why."""
    from ..adapters.optimizer import DiffusionRelax
    from ..core.validate import InputError

    t0 = time.perf_counter()
    atoms = atoms.copy()
    before = atoms.positions.copy()
    try:
        opt = DiffusionRelax(atoms, model=model, policy=policy, seed=seed, trajectory=trajectory, logfile=None)
        largest = opt.model.card.get("max_atoms")
        if largest and len(atoms) > 1.5 * largest:
            raise InputError(f"input: {len(atoms)} atoms, far more than the largest molecule checkpoint "
                             f"{opt.model.name} was trained on ({largest})")
    except InputError as exc:
        if strict:
            raise
        return atoms, StageReport("diffusion", time.perf_counter() - t0, skipped=str(exc))
    converged = opt.run()
    report = StageReport("diffusion", time.perf_counter() - t0, steps=opt.nsteps, force_calls=opt.nsteps,
                         converged=bool(converged), topology=topology_change(atoms.numbers, before, atoms.positions),
                         trajectory=trajectory, extra={"t_hat": float(atoms.info.get("diffusion_t", np.nan)),
                                                       "model": opt.model.name,
                                                       "level_of_theory": opt.model.level_of_theory,
                                                       "policy": opt.policy.todict()})
    return atoms, report


def physics_stage(atoms, kind: str, *, fmax: float = 0.03, max_steps: int = 500, trajectory=None, calc=None,
                  charge: int | None = None, uhf: int | None = None, logfile=None, **calc_params):
    from ase.calculators.singlepoint import SinglePointCalculator
    from ase.optimize import BFGS

    from .physics import CountingCalculator

    t0 = time.perf_counter()
    atoms = atoms.copy()
    before = atoms.positions.copy()
    q, u = electronic_state(atoms, charge, uhf)
    counter = CountingCalculator(calc if calc is not None else make_physics_calculator(kind, q, u, **calc_params))
    atoms.calc = counter
    e0 = atoms.get_potential_energy()
    opt = BFGS(atoms, logfile=logfile, trajectory=trajectory)
    converged = opt.run(fmax=fmax, steps=max_steps)
    f = atoms.get_forces()
    e = float(atoms.get_potential_energy())
    report = StageReport(kind, time.perf_counter() - t0, steps=opt.nsteps, force_calls=counter.calls,
                         converged=bool(converged), energy_start_eV=float(e0), energy_end_eV=e,
                         fmax_end=float(np.sqrt((f**2).sum(1)).max()), charge=q, multiplicity=u + 1,
                         topology=topology_change(atoms.numbers, before, atoms.positions), trajectory=trajectory)
    atoms.calc = SinglePointCalculator(atoms, energy=e, forces=f)
    for key in [k for k in atoms.info if k.startswith("diffusion_")]:
        del atoms.info[key]  # they describe the input of this stage, not its result
    atoms.info.update(charge=q, multiplicity=u + 1, relaxed_by=kind, relaxed_fmax=report.fmax_end)
    return atoms, report


def run_pipeline(start, *, stages=("mmff", "diffusion", "xtb"), fmax: float = 0.03, physics_max_steps: int = 500,
                 model=None, policy: Policy | str = "jt", seed: int | None = 0, conformer_seed: int = 0,
                 charge: int | None = None, uhf: int | None = None, strict: bool = False,
                 traj_prefix: str | None = None, physics_params: dict | None = None,
                 physics_log=None) -> PipelineResult:
    """Run the chosen stages in order on a SMILES or an Atoms (which is not modified).

    ``seed``: diffusion noise; ``conformer_seed``: ETKDG. ``physics_max_steps``: BFGS steps.
    ``physics_log``: a file or "-" for ASE's per-step BFGS log (DFT steps take minutes).
    The returned atoms carry the last stage's energy and forces (a SinglePointCalculator)
    and ``info["relaxed_by"]``.
    """
    stages = list(stages)
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise ValueError(f"unknown stage(s) {unknown}; choose from {list(STAGES)}")
    if isinstance(start, str) and stages[0] != "mmff":
        raise ValueError("a SMILES start needs 'mmff' as the first stage (it builds the 3D structure)")
    atoms = start if isinstance(start, str) else start.copy()
    reports = []
    for k, stage in enumerate(stages):
        traj = f"{traj_prefix}_{k}_{stage}.traj" if traj_prefix and stage != "mmff" else None
        if stage == "mmff":
            atoms, rep = mmff_stage(atoms, conformer_seed=conformer_seed)
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
            atoms, rep = diffusion_stage(atoms, model=model, policy=policy, seed=seed, trajectory=traj,
                                         strict=strict)
        else:
            atoms, rep = physics_stage(atoms, stage, fmax=fmax, max_steps=physics_max_steps, trajectory=traj,
                                       charge=charge, uhf=uhf, logfile=physics_log, **(physics_params or {}))
        reports.append(rep)
    if not any(s in PHYSICS for s in stages):
        atoms.calc = None
    atoms.info["pipeline_stages"] = ",".join(r.stage for r in reports if not r.skipped)
    return PipelineResult(atoms, reports)
