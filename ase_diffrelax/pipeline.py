"""Hand-off workflows: MMFF94 -> diffusion -> BFGS(xTB | DFT), any subset, with a per-stage report.

    from ase_diffrelax.pipeline import run_pipeline
    result = run_pipeline("CCO", stages=["mmff", "diffusion", "xtb"])
    result.atoms, result.report()

The physics stage is ASE's BFGS at fmax 0.03 eV/A (paper 000's criterion); every stage can
write a trajectory readable by ``ase gui``.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import numpy as np
from ase import Atoms

from .topology import topology_change

PHYSICS = ("xtb", "dft")
STAGES = ("mmff", "diffusion") + PHYSICS


@dataclass
class StageReport:
    stage: str
    wall_s: float
    steps: int | None = None  # optimizer steps (None where the backend does not count them)
    force_calls: int | None = None
    converged: bool | None = None
    energy_start_eV: float | None = None  # physics stages only
    energy_end_eV: float | None = None
    fmax_end: float | None = None
    topology: dict = field(default_factory=dict)
    trajectory: str | None = None
    extra: dict = field(default_factory=dict)


@dataclass
class PipelineResult:
    atoms: Atoms
    stages: list[StageReport]

    def report(self) -> list[dict]:
        return [asdict(s) for s in self.stages]


class _CountingCalculator:
    """Counts real evaluations of a wrapped ASE calculator (cached property reads are free)."""

    def __init__(self, calc):
        self.calc, self.calls = calc, 0
        original = calc.calculate

        def counted(*args, **kwargs):
            self.calls += 1
            return original(*args, **kwargs)

        calc.calculate = counted


def make_physics_calculator(kind: str, **params):
    from .physics import PySCFCalculator, xtb_calculator

    if kind == "xtb":
        return xtb_calculator(**params)
    if kind == "dft":
        return PySCFCalculator(**params)
    raise ValueError(f"unknown physics stage {kind!r}; choose 'xtb' or 'dft'")


def mmff_stage(atoms_or_smiles, seed: int = 0) -> tuple[Atoms, StageReport]:
    from .rdkit_interop import atoms_from_smiles, mmff_from_reference

    t0 = time.perf_counter()
    if isinstance(atoms_or_smiles, str):
        atoms = atoms_from_smiles(atoms_or_smiles, seed=seed)
        before = None
    else:
        atoms = atoms_or_smiles.copy()
        before = atoms.positions.copy()
        atoms.positions = mmff_from_reference(atoms.numbers, atoms.positions)
    topo = topology_change(atoms.numbers, before, atoms.positions) if before is not None else {}
    return atoms, StageReport("mmff", time.perf_counter() - t0, topology=topo)


def diffusion_stage(atoms, model=None, policy="jt", seed=0, trajectory=None, **policy_kw):
    from .optimizer import DiffusionRelax

    t0 = time.perf_counter()
    atoms = atoms.copy()
    before = atoms.positions.copy()
    opt = DiffusionRelax(atoms, model=model, policy=policy, seed=seed, trajectory=trajectory, logfile=None,
                         **policy_kw)
    converged = opt.run()
    report = StageReport("diffusion", time.perf_counter() - t0, steps=opt.nsteps, force_calls=opt.nsteps,
                         converged=bool(converged), topology=topology_change(atoms.numbers, before, atoms.positions),
                         trajectory=trajectory, extra={"t_hat": float(atoms.info.get("diffusion_t", np.nan)),
                                                       "policy": opt.policy.todict()})
    return atoms, report


def physics_stage(atoms, kind: str, fmax: float = 0.03, max_steps: int = 500, trajectory=None, calc=None,
                  **calc_params):
    from ase.optimize import BFGS

    t0 = time.perf_counter()
    atoms = atoms.copy()
    before = atoms.positions.copy()
    atoms.calc = calc if calc is not None else make_physics_calculator(kind, **calc_params)
    counter = _CountingCalculator(atoms.calc)
    e0 = atoms.get_potential_energy()
    opt = BFGS(atoms, logfile=None, trajectory=trajectory)
    converged = opt.run(fmax=fmax, steps=max_steps)
    f = atoms.get_forces()
    report = StageReport(kind, time.perf_counter() - t0, steps=opt.nsteps, force_calls=counter.calls,
                         converged=bool(converged), energy_start_eV=float(e0),
                         energy_end_eV=float(atoms.get_potential_energy()),
                         fmax_end=float(np.sqrt((f**2).sum(1)).max()),
                         topology=topology_change(atoms.numbers, before, atoms.positions), trajectory=trajectory)
    return atoms, report


def run_pipeline(start, stages=("mmff", "diffusion", "xtb"), fmax: float = 0.03, max_steps: int = 500,
                 model=None, policy="jt", seed: int = 0, traj_prefix: str | None = None,
                 physics_params: dict | None = None, **policy_kw) -> PipelineResult:
    """Run the chosen stages in order on a SMILES or an Atoms (which is not modified)."""
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
            atoms, rep = mmff_stage(atoms, seed=seed)
            if traj_prefix:
                from ase.io import write

                traj = f"{traj_prefix}_{k}_mmff.traj"
                write(traj, atoms)
                rep.trajectory = traj
        elif stage == "diffusion":
            atoms, rep = diffusion_stage(atoms, model=model, policy=policy, seed=seed, trajectory=traj, **policy_kw)
        else:
            atoms, rep = physics_stage(atoms, stage, fmax=fmax, max_steps=max_steps, trajectory=traj,
                                       **(physics_params or {}))
        reports.append(rep)
    atoms.calc = None
    return PipelineResult(atoms, reports)
