"""``DiffusionRelax``: an ASE Optimizer whose step is one reverse-diffusion step.

Convergence is the denoiser's predicted step reaching the policy's threshold (then the policy's
finish, ``core.policy``), not a force criterion, so, as Sella does, only ``step``, ``converged``
(via ``gradient_converged``) and ``log`` are overridden; ASE's own ``irun``/``run`` drive the
loop. No calculator is needed: the optimizable this optimizer hands to ASE reports a zero
gradient and never calls one.
"""
from __future__ import annotations

import time
import warnings

import numpy as np
from ase.optimize.optimize import Optimizer

from ..chem.topology import describe, topology_change
from ..core.checkpoint import choose_model, load_model
from ..core.policy import Policy
from ..core.sampler import CONVERGED, RUNNING, Molecule, Sampler
from ..core.validate import check_for_model
from .common import fixed_mask


class TopologyChangedError(RuntimeError):
    """The relaxation broke or formed covalent bonds."""


class _NoForces:
    """ASE's optimizer loop asks for a gradient each step; the denoiser needs none."""

    def __init__(self, atoms):
        self.atoms = atoms

    def get_gradient(self):
        return np.zeros(3 * len(self.atoms))

    def __getattr__(self, name):  # positions, sizes, ...: as ASE's own optimizable of these atoms
        return getattr(self.atoms.__ase_optimizable__(), name)


class DiffusionRelax(Optimizer):
    """Relax a molecule by reverse diffusion with a MoreRed-style denoiser.

    Parameters
    ----------
    atoms: the molecule (non-periodic, neutral, closed shell, elements known to the checkpoint).
    model: checkpoint name, path, or loaded model (None: the shipped checkpoint that knows the
        molecule's elements and size, see ``available_models()``; ``info["diffusion_model"]`` says which).
    policy: "jt" (predict t every step; default), "itp" (predict once, then follow the
        schedule), "fixed:t0=30" (the relaxation paper's fixed start), a spec such as
        "jt:stride=0.3", or a ``Policy`` object (``ase_diffrelax.make_policy``).
    seed: seed of the diffusion noise (used only by policies with eta > 0); the same seed
        gives the same coordinates.
    on_topology_change: "warn" (flag in ``atoms.info`` and the log), "raise"
        (TopologyChangedError, input positions restored) or "revert" (keep the input).
    restore_hydrogens: put X-H bonds the model left out of range back at the end (default;
        ``info["diffusion_hydrogens_restored"]`` counts them); False keeps the model's output.

    ``run(fmax=..., steps=...)``: ``fmax`` is accepted for drop-in compatibility with ASE
    optimizers and ignored; the run stops when the policy converges, after ``steps``
    reverse-diffusion steps, or when a step diverges (input positions are then restored and
    a warning says why). Returns True when converged.
    """

    defaults = {}

    def __init__(self, atoms, restart=None, logfile="-", trajectory=None, append_trajectory=False, *,
                 model=None, policy: Policy | str = "jt", seed: int | None = 0, device=None,
                 on_topology_change: str = "warn", restore_hydrogens: bool = True):
        if on_topology_change not in ("warn", "raise", "revert"):
            raise ValueError(f"on_topology_change must be 'warn', 'raise' or 'revert', not {on_topology_change!r}")
        self.model = load_model(model if model is not None else choose_model([atoms]), device=device)
        check_for_model(atoms, self.model)
        self.sampler = Sampler(self.model, policy, restore_hydrogens=restore_hydrogens)
        self.policy = self.sampler.policy
        self.seed = seed
        self.on_topology_change = on_topology_change
        self.input_positions = atoms.get_positions()
        super().__init__(atoms, restart=restart, logfile=logfile, trajectory=trajectory,
                         append_trajectory=append_trajectory)
        self.optimizable = _NoForces(atoms)

    # ------------------------------------------------------------ Optimizer API
    def initialize(self):
        mol = Molecule(self.atoms.numbers, self.atoms.positions, fixed_mask(self.atoms), self.seed)
        self.batch = self.sampler.batch([mol])
        self._last_set = self.atoms.get_positions()
        self.topology = None

    @property
    def status(self) -> str:
        if self.topology is not None and self.topology["bonds_broken"]:
            return "bonds_broken"
        return self.batch.outcome(0).status if self.nsteps else "start"

    def todict(self):
        d = super().todict()
        d.update(policy=self.policy.todict(), model=self.model.name, seed=self.seed)
        return d

    def step(self):
        b = self.batch
        pos = self.atoms.get_positions()
        if not np.allclose(pos, self._last_set, atol=1e-8):
            b.move_to(0, pos)  # an observer or a constraint moved the atoms: continue from there
        self.sampler.step(b)
        code = int(b.status[0])
        outcome = b.outcome(0)
        self.atoms.set_positions(outcome.positions)  # ASE constraints apply here
        self._last_set = self.atoms.get_positions()
        self.atoms.info.update(diffusion_t=float(b.t_hat[0]), diffusion_t_used=int(b.t_used[0]),
                               diffusion_status=outcome.status,
                               diffusion_hydrogens_restored=outcome.hydrogens_restored,
                               diffusion_model=self.model.name,
                               diffusion_level_of_theory=self.model.level_of_theory,
                               diffusion_model_verified=self.model.verified)
        if code != RUNNING:
            if code == CONVERGED:
                self._check_topology()
            else:
                # ASE's loop continues while not converged and below max_steps: end it here
                self.max_steps = self.nsteps + 1
                reason = outcome.reason or f"stopped at {self.policy.max_steps} diffusion steps"
                warnings.warn(f"DiffusionRelax: {outcome.status}: {reason}", stacklevel=4)
        self.dump(self._restart_data())

    def gradient_converged(self, gradient=None):
        return self.nsteps > 0 and int(self.batch.status[0]) == CONVERGED

    def converged(self, forces=None, *, gradient=None):
        return self.gradient_converged()

    def log(self, gradient=None):
        if self.logfile is None:
            return
        name = self.__class__.__name__
        b = self.batch
        if self.nsteps == 0:
            self.logfile.write(f"{' ' * len(name)}  {'Step':>4s} {'Time':>8s} {'t_hat':>8s} {'t_used':>6s}"
                               f" {'moved[A]':>9s}  status ({self.model.name}, {self.model.level_of_theory})\n")
        T = time.localtime()
        moved = float(np.sqrt(((self.atoms.positions - self.input_positions) ** 2).sum(1).mean()))
        if self.nsteps == 0:
            t_cols = f"{'':>8s} {'':>6s}"
        else:
            t_cols = f"{float(b.t_hat[0]):8.2f} {int(b.t_used[0]):6d}"
        status = self.status
        if status == "converged" and self.nsteps > 0 and int(b.finish_pass[0]) >= 0:
            pol = self.policy
            pairs = ", antithetic" if pol.smooth_antithetic else ""
            smooth = (f", {pol.smooth_steps} smoothed at t {pol.smooth_t} ({pol.smooth_copies} copies{pairs})"
                      if pol.smooth_steps else "")
            status += f" (finish: {pol.hold_steps} at t {pol.hold_t}{smooth}, {pol.polish_steps} at t_hat)"
        elif status == "converged" and self.nsteps > 0:  # t_hat may sit above it: the schedule bounds t_used
            status += f" (t_used {int(b.t_used[0])} <= threshold {self.policy.threshold})"
        if self.topology is not None and self.topology["changed"]:
            status += f" TOPOLOGY CHANGED ({describe(self.topology)})"
        self.logfile.write(f"{name}:  {self.nsteps:4d} {T[3]:02d}:{T[4]:02d}:{T[5]:02d} {t_cols}"
                           f" {moved:9.4f}  {status}\n")

    # ------------------------------------------------------------ topology guard
    def _check_topology(self):
        self.topology = topology_change(self.atoms.numbers, self.input_positions, self.atoms.positions)
        self.atoms.info["diffusion_topology_changed"] = bool(self.topology["changed"])
        if not self.topology["changed"]:
            return
        if self.topology["bonds_broken"]:
            self.atoms.info["diffusion_status"] = "bonds_broken"
        msg = f"diffusion relaxation changed the bond graph: {describe(self.topology)}"
        if self.on_topology_change == "raise":
            self.atoms.set_positions(self.input_positions)
            raise TopologyChangedError(msg + "; input positions restored")
        if self.on_topology_change == "revert":
            self.atoms.set_positions(self.input_positions)
            self.atoms.info["diffusion_reverted"] = True
            msg += "; input positions kept"
        warnings.warn(msg, stacklevel=5)

    # ------------------------------------------------------------ restart
    _STATE = ("x", "x_out", "origin", "t_sched", "t_used", "t_hat", "steps", "status", "finish_pass")

    def _restart_data(self):
        b = self.batch
        data = {k: getattr(b, k).double().cpu().numpy() for k in self._STATE}
        data.update(rng=b.generators[0].get_state().cpu().numpy().tolist(), nsteps=self.nsteps + 1,
                    input_positions=self.input_positions)
        return data

    def read(self):
        import torch

        self.initialize()
        data = self.load()
        b = self.batch
        for k in self._STATE:
            if k == "finish_pass" and k not in data:  # a restart file from before the finish existed
                continue
            old = getattr(b, k)
            setattr(b, k, torch.as_tensor(np.asarray(data[k]), device=old.device).to(old.dtype))
        b.generators[0].set_state(torch.tensor(data["rng"], dtype=torch.uint8))
        self.input_positions = np.asarray(data["input_positions"])
        # the run's own input, not the atoms it resumes from: the X-H guard and a divergence refer to it
        b.x_input = torch.as_tensor(self.input_positions, dtype=b.x_input.dtype, device=b.x_input.device)
        self.nsteps = data["nsteps"]
        self.atoms.set_positions(b.positions(0))
        self._last_set = self.atoms.get_positions()
