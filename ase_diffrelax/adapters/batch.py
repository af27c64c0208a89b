"""``relax_many``: the batch adapter over the sampler core (molecules swapped in and out of one batch)."""
from __future__ import annotations

import os
from dataclasses import dataclass, field

from ..chem.topology import describe, topology_change
from ..core.checkpoint import choose_model, load_model
from ..core.policy import Policy
from ..core.sampler import Molecule, Sampler
from ..core.validate import InputError, check_for_model
from ..core.validate import unseen_bonds as unseen_bonds_of
from .common import default_batch_size, fixed_mask, write_history


@dataclass
class RelaxResult:
    atoms: object  # relaxed ase.Atoms (a copy; the input is untouched); the input copy if not relaxed
    status: str  # "converged" | "bonds_broken" | "max_steps" | "diverged" | "unseen_bonds" | "rejected"
    steps: int = 0  # model evaluations spent on this molecule
    t_hat: float = float("nan")  # last predicted step
    t_used: int = -1  # last step denoised at
    topology: dict = field(default_factory=dict)  # bonds broken / formed, from covalent radii
    reason: str = ""  # why a molecule was rejected or diverged


def relax_many(atoms_list, *, model=None, policy: Policy | str = "jt", batch_size: int | None = None,
               device=None, progress: bool = True, seed: int | None = 0, trajectory: str | None = None,
               on_error: str = "raise", swap_every: int | None = None, compile: bool = False,
               seeds=None, labels=None, unseen_bonds: str = "skip",
               restore_hydrogens: bool = True) -> list[RelaxResult]:
    """Relax many molecules (any sizes) in one streaming batch; inputs are never modified.

    Molecule k uses noise seed ``seed + k`` so that its path does not depend on batch
    composition; ``DiffusionRelax(atoms, seed=s)`` follows the same path as
    ``relax_many([atoms], seed=s)``. ``on_error="skip"`` returns structures the checkpoint
    cannot take as status "rejected" with the reason, in place, instead of raising.
    ``trajectory``: a file name with ``{i}`` (molecule index) for one ASE trajectory each.
    ``model=None`` picks a shipped checkpoint per molecule (``choose_model``).
    ``compile=True`` runs the network through ``torch.compile``: for large batches (a warm-up of
    seconds, then several times faster on CPU); results agree with eager to ~1e-5 A.
    ``seeds``: one noise seed per structure instead (a streamed collection seeds entry k with
    ``seed + k`` whatever shard or chunk it falls in); ``labels``: how messages name each
    structure (default "structure k"). A molecule with a bond type the checkpoint never saw in
    training (a thiol's S-H for the drug-like one) is returned unmoved with status
    "unseen_bonds" and the reason, as ``run_pipeline`` skips diffusion for it; ``unseen_bonds="relax"``
    relaxes it anyway (with a warning). ``restore_hydrogens``: an X-H bond the model left out of
    its range (a methyl's hydrogens pulled toward its axis) is put back (``chem.hydrogens``; the
    count is ``info["diffusion_hydrogens_restored"]``); False returns the model's own output.
    """
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', not {on_error!r}")
    if unseen_bonds not in ("skip", "relax"):
        raise ValueError(f"unseen_bonds must be 'skip' or 'relax', not {unseen_bonds!r}")
    atoms_list = list(atoms_list)
    for what, given in (("seeds", seeds), ("labels", labels)):
        if given is not None and len(given) != len(atoms_list):
            raise ValueError(f"{what}: {len(given)} given for {len(atoms_list)} structures")
    if not atoms_list:
        raise InputError("empty batch: no structures to relax")
    if trajectory is not None and len(atoms_list) > 1 and "{i}" not in str(trajectory):
        raise ValueError("trajectory for several molecules needs '{i}' in the file name, e.g. 'relax_{i}.traj'")
    results: list[RelaxResult | None] = [None] * len(atoms_list)
    groups: dict = {}  # checkpoint -> indices it relaxes (model=None: chosen per molecule)
    loaded: dict = {}  # one verified load per checkpoint per call (each load hashes its files)
    for k, atoms in enumerate(atoms_list):
        label = labels[k] if labels is not None else f"structure {k}"
        try:
            wanted = model if model is not None else choose_model([atoms], label)
            key = wanted if isinstance(wanted, (str, os.PathLike)) or wanted is None else id(wanted)
            if key not in loaded:
                loaded[key] = load_model(wanted, device=device, compile=compile)
            m = loaded[key]
            check_for_model(atoms, m, label=label, warn_unseen=unseen_bonds == "relax")
        except InputError as exc:
            if on_error == "raise":
                raise
            results[k] = RelaxResult(atoms.copy(), "rejected", reason=str(exc))
            continue
        unseen = unseen_bonds_of(atoms, m.card) if unseen_bonds == "skip" else []
        if unseen:
            out = atoms.copy()
            out.info.update(diffusion_status="unseen_bonds", diffusion_model=m.name,
                            diffusion_level_of_theory=m.level_of_theory, diffusion_model_verified=m.verified)
            results[k] = RelaxResult(out, "unseen_bonds", reason=(
                f"bond type(s) {', '.join(unseen)} never occur in the training data of {m.name}: left unmoved "
                "(unseen_bonds='relax' to relax it anyway)"))
            continue
        groups.setdefault(m, []).append(k)
    bar = None
    if progress and groups:
        from tqdm import tqdm

        bar = tqdm(total=sum(len(v) for v in groups.values()), desc="relax", unit="mol", mininterval=1)
    for m, todo in groups.items():
        sampler = Sampler(m, policy, record=trajectory is not None, restore_hydrogens=restore_hydrogens)
        molecules = [Molecule(atoms_list[k].numbers, atoms_list[k].positions, fixed_mask(atoms_list[k]),
                              seeds[k] if seeds is not None else None if seed is None else seed + k) for k in todo]
        outcomes, _ = sampler.run(molecules, batch_size=batch_size or default_batch_size(sampler.device),
                                  swap_every=swap_every or (4 if sampler.device.type == "cuda" else 1), progress=bar)
        for k, oc in zip(todo, outcomes):
            atoms = atoms_list[k]
            out = atoms.copy()
            out.set_positions(oc.positions, apply_constraint=False)
            out.info.update(diffusion_t=oc.t_hat, diffusion_t_used=oc.t_used, diffusion_steps=oc.steps,
                            diffusion_status=oc.status, diffusion_hydrogens_restored=oc.hydrogens_restored,
                            diffusion_model=m.name,
                            diffusion_level_of_theory=m.level_of_theory, diffusion_model_verified=m.verified)
            topo = topology_change(atoms.numbers, atoms.positions, out.positions)
            status, reason = oc.status, oc.reason
            if status == "converged" and topo["bonds_broken"]:
                status, reason = "bonds_broken", describe(topo)
                out.info["diffusion_status"] = status
            results[k] = RelaxResult(out, status, oc.steps, oc.t_hat, oc.t_used, topo, reason)
            if trajectory is not None:
                write_history(str(trajectory).replace("{i}", str(k)), atoms, oc.history)
    if bar is not None:
        bar.close()
    return results
