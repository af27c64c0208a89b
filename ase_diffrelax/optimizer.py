"""``DiffusionRelax``: an ASE Optimizer whose step is one reverse-diffusion step.

Convergence is the denoiser's predicted time step reaching the policy's threshold, not a
force criterion, so ``converged``/``irun``/``log`` are overridden the way Sella does it.
No calculator is needed on the atoms; if one is attached it is not called.
"""
from __future__ import annotations

import time
import warnings

import numpy as np
from ase.optimize.optimize import DEFAULT_MAX_STEPS, Optimizer

from .batch import fixed_mask
from .checkpoint import load_model
from .sampler import Sampler, new_state
from .topology import topology_change
from .validate import check_atoms


class TopologyChangedError(RuntimeError):
    """The relaxation broke or formed covalent bonds."""


class DiffusionRelax(Optimizer):
    """Relax a molecule by reverse diffusion with a MoreRed-style denoiser.

    Parameters
    ----------
    atoms: the molecule (non-periodic, elements known to the checkpoint).
    model: checkpoint name, path, or loaded model (None: the shipped default).
    policy: "jt" (predict t every step; default), "itp" (predict once, then follow the
        schedule), "fixed" (start at ``t0`` as in paper 000), or a Policy object.
    t0: start step for policy "fixed" (paper 000: 50, 30 or 20).
    seed: noise seed; the same seed gives the same coordinates.
    on_topology_change: "warn" (flag in ``atoms.info`` and the log), "raise"
        (TopologyChangedError, input positions restored) or "revert" (keep the input).
    eta, stride, threshold, max_steps: policy options (see ``ase_diffrelax.sampler.Policy``).

    ``run(fmax=..., steps=...)``: ``fmax`` is accepted for drop-in compatibility with ASE
    optimizers and ignored; the run stops when the policy converges or after ``steps``
    reverse-diffusion steps. Returns True when converged.
    """

    defaults = {}

    def __init__(self, atoms, model=None, policy="jt", t0=None, device=None, seed=None, restart=None,
                 logfile="-", trajectory=None, append_trajectory=False, on_topology_change="warn", **policy_kw):
        if on_topology_change not in ("warn", "raise", "revert"):
            raise ValueError(f"on_topology_change must be 'warn', 'raise' or 'revert', not {on_topology_change!r}")
        self.model = load_model(model, device=device)
        check_atoms(atoms, self.model.elements, self.model.card.get("max_atoms"))
        self.sampler = Sampler(self.model, policy, t0=t0, **policy_kw)
        self.policy = self.sampler.policy
        self.seed = seed
        self.on_topology_change = on_topology_change
        self.input_positions = atoms.get_positions()
        super().__init__(atoms, restart=restart, logfile=logfile, trajectory=trajectory,
                         append_trajectory=append_trajectory)

    # ------------------------------------------------------------ Optimizer API
    def initialize(self):
        self.state = new_state(self.atoms.numbers, self.atoms.positions, self.sampler.device, self.seed,
                               fixed_mask(self.atoms))
        self._last_set = self.atoms.get_positions()
        self.topology = None

    def todict(self):
        d = super().todict()
        d.update(policy=self.policy.todict(), model=str(self.model.card.get("name", self.model.path)),
                 seed=self.seed)
        return d

    def step(self):
        import torch

        pos = self.atoms.get_positions()
        if not np.allclose(pos, self._last_set, atol=1e-8):
            # someone (an observer, a constraint) moved the atoms: continue from where they are
            x = torch.as_tensor(pos, device=self.state.x.device)
            self.state.origin = x.mean(0)
            self.state.x = (x - self.state.origin).float()
        self.sampler.step([self.state])
        self.atoms.set_positions(self.state.positions())  # ASE constraints apply here
        self._last_set = self.atoms.get_positions()
        self.atoms.info["diffusion_t"] = self.state.t_hat
        self.dump(self._restart_data())

    def converged(self, forces=None, *, gradient=None):
        return self.state.done and self.state.status == "converged"

    def irun(self, fmax=None, steps=None):
        """Generator: yields after every reverse-diffusion step whether the policy converged."""
        self.fmax = fmax
        steps = self.policy.max_steps if steps is None else steps
        self.max_steps = self.nsteps + steps
        if self.nsteps == 0:
            self.log()
            if self.trajectory is None or self._traj_is_empty():
                self.call_observers()
        is_converged = self.converged()
        yield is_converged
        while not is_converged and not self.state.done and self.nsteps < self.max_steps:
            self.step()
            self.nsteps += 1
            is_converged = self.converged()
            if self.state.done:
                self._check_topology()
            self.log()
            self.call_observers()
            yield is_converged

    def run(self, fmax=None, steps=None):
        converged = False
        for converged in self.irun(fmax=fmax, steps=steps):
            pass
        return converged

    def log(self, gradient=None):
        if self.logfile is None:
            return
        name = self.__class__.__name__
        if self.nsteps == 0:
            self.logfile.write(f"{' ' * len(name)}  {'Step':>4s} {'Time':>8s} {'t_hat':>8s} {'t_used':>6s}"
                               f" {'moved[A]':>9s}  status\n")
        T = time.localtime()
        t_hat = self.state.t_hat
        moved = float(np.sqrt(((self.atoms.positions - self.input_positions) ** 2).sum(1).mean()))
        status = self.state.status if self.nsteps else "start"
        if self.topology is not None and self.topology["changed"]:
            status += f" TOPOLOGY CHANGED (broken {self.topology['broken']}, formed {self.topology['formed']})"
        self.logfile.write(f"{name}:  {self.nsteps:4d} {T[3]:02d}:{T[4]:02d}:{T[5]:02d} {t_hat:8.2f}"
                           f" {self.state.t_used:6d} {moved:9.4f}  {status}\n")

    # ------------------------------------------------------------ topology guard
    def _check_topology(self):
        self.topology = topology_change(self.atoms.numbers, self.input_positions, self.atoms.positions)
        self.atoms.info["diffusion_topology_changed"] = bool(self.topology["changed"])
        if not self.topology["changed"]:
            return
        msg = (f"diffusion relaxation changed the bond graph: broken {self.topology['broken']}, "
               f"formed {self.topology['formed']}")
        if self.on_topology_change == "raise":
            self.atoms.set_positions(self.input_positions)
            raise TopologyChangedError(msg + "; input positions restored")
        if self.on_topology_change == "revert":
            self.atoms.set_positions(self.input_positions)
            self.atoms.info["diffusion_reverted"] = True
            msg += "; input positions kept"
        warnings.warn(msg, stacklevel=3)

    # ------------------------------------------------------------ restart
    def _restart_data(self):
        st = self.state
        return {"x": st.x.double().cpu().numpy(), "origin": st.origin.cpu().numpy(), "t_sched": st.t_sched,
                "steps": st.steps, "t_hat": st.t_hat, "t_used": st.t_used, "done": st.done, "status": st.status,
                "rng": st.generator.get_state().cpu().numpy().tolist(), "nsteps": self.nsteps + 1,
                "input_positions": self.input_positions}

    def read(self):
        import torch

        self.initialize()
        data = self.load()
        st = self.state
        st.x = torch.as_tensor(np.asarray(data["x"]), device=st.x.device).float()
        st.origin = torch.as_tensor(np.asarray(data["origin"]), device=st.x.device)
        st.t_sched, st.steps, st.t_hat, st.t_used = data["t_sched"], data["steps"], data["t_hat"], data["t_used"]
        st.done, st.status = data["done"], data["status"]
        st.generator.set_state(torch.tensor(data["rng"], dtype=torch.uint8))
        self.input_positions = np.asarray(data["input_positions"])
        self.nsteps = data["nsteps"]
        self.atoms.set_positions(st.positions())
        self._last_set = self.atoms.get_positions()
