"""``sample_ensemble``: Boltzmann-like ensembles from repeated diffusion steps at a fixed step t.

Many chains run as one tensor batch on the sampler core (policy ``FixedStepChain``); each chain
has its own seeded noise, so results are deterministic for a seed. ``temperature`` is a
calibrated knob, not a physical temperature: it goes through the t(T) map fitted on validation
molecules against GFN2-xTB Metropolis Monte Carlo and stored in the checkpoint card
(``temperature_map``); no energies are computed here.
"""
from __future__ import annotations

import math

import numpy as np

from ..core.checkpoint import choose_model, load_model
from ..core.policy import FixedStepChain
from ..core.sampler import Molecule, Sampler
from ..core.validate import check_for_model
from .common import fixed_mask


def t_for_temperature(model, temperature: float) -> int:
    """The diffusion step the checkpoint's fitted map assigns to ``temperature`` (K)."""
    cmap = model.card.get("temperature_map")
    if not cmap:
        raise ValueError(f"checkpoint {model.name} has no fitted temperature map (card 'temperature_map'); give the "
                         f"diffusion step t instead, or a checkpoint that has one ({', '.join(with_temperature_map())}"
                         "; docs/ensembles.md)")
    if cmap.get("form") != "t = a * sqrt(T)":
        raise ValueError(f"unknown temperature map form {cmap.get('form')!r}")
    return max(1, int(round(float(cmap["a"]) * math.sqrt(float(temperature)))))


def with_temperature_map() -> list[str]:
    """Shipped checkpoints whose card carries a fitted t(T) map."""
    import json

    from ..core.checkpoint import checkpoint_dir, registry

    return [name for name, e in registry()["models"].items()
            if json.loads((checkpoint_dir() / e["card"]).read_text()).get("temperature_map")] or ["none shipped"]


def _choose(atoms, temperature) -> str:
    """The automatic choice; for a temperature, the checkpoint of the same level of theory that has a
    fitted map when the chosen one has none (a map is fitted per checkpoint, docs/ensembles.md)."""
    from ..core.checkpoint import registry

    name = choose_model([atoms])
    if temperature is None:
        return name
    models = registry()["models"]
    mapped = [m for m in with_temperature_map() if m in models]
    same = [m for m in mapped if models[m].get("level_of_theory") == models[name].get("level_of_theory")]
    return name if name in mapped or not same else same[0]


# keys a relaxation, pipeline or earlier ensemble leaves in info: stale on a sample
_STALE_INFO = ("diffusion_", "relaxed_", "pipeline_", "chain", "temperature_knob", "energy", "fmax")


def sample_ensemble(atoms, *, t: int | None = None, temperature: float | None = None, n_samples: int = 1000,
                    burn_in: int = 100, n_chains: int = 1, thin: int = 1, seed: int | None = 0, model=None,
                    device=None, trajectory: str | None = None) -> list:
    """``n_samples`` geometries (ase.Atoms, ``info["diffusion_t"]`` and ``info["chain"]`` set) from
    ``n_chains`` chains started at ``atoms``, each after ``burn_in`` steps, keeping every ``thin``-th
    step. Exactly one of ``t`` (diffusion step) or ``temperature`` (K, through the fitted map) is
    required; ``with_temperature_map()`` names the checkpoints that have the map. Samples keep
    ``atoms.info`` except what an earlier relaxation or ensemble left there (``diffusion_*``, ...).
    ``trajectory``: an ASE trajectory of the samples for ``ase gui``. ``atoms`` is not modified."""
    if (t is None) == (temperature is None):
        raise ValueError("give exactly one of t (diffusion step) or temperature (K)")
    for name, value, low in (("n_samples", n_samples, 1), ("n_chains", n_chains, 1), ("thin", thin, 1),
                             ("burn_in", burn_in, 0)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise ValueError(f"{name}={value!r}: must be a whole number >= {low}")
    if temperature is not None:
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float, np.number)) \
                or not math.isfinite(float(temperature)) or float(temperature) <= 0:
            raise ValueError(f"temperature={temperature!r}: must be a finite number of kelvin > 0")
    if t is not None and (isinstance(t, bool) or not isinstance(t, (int, np.integer))):
        raise ValueError(f"t={t!r}: must be a whole diffusion step")
    model = load_model(model if model is not None else _choose(atoms, temperature), device=device)
    check_for_model(atoms, model)
    if t is None:
        t = t_for_temperature(model, temperature)
    if not 1 <= int(t) <= model.schedule.T:
        raise ValueError(f"t must be between 1 and {model.schedule.T}, got {t}")
    sampler = Sampler(model, FixedStepChain(t=int(t)))
    mask = fixed_mask(atoms)
    batch = sampler.batch([Molecule(atoms.numbers, atoms.positions, mask, None if seed is None else seed + c)
                           for c in range(n_chains)])
    per_chain = math.ceil(n_samples / n_chains)
    samples = []
    from ..core.sampler import DIVERGED

    for step in range(burn_in + per_chain * thin):
        sampler.step(batch)
        bad = (batch.status == DIVERGED).nonzero()
        if len(bad):  # a diverged chain stops moving: its "samples" would be copies, not an ensemble
            c = int(bad[0])
            raise RuntimeError(f"chain {c} diverged at step {step + 1} (t={int(t)}): "
                               f"{batch.outcome(c).reason or 'the step left the physical range'}; at this t the "
                               "denoiser no longer keeps the molecule together: use a smaller t or temperature")
        if step < burn_in or (step - burn_in + 1) % thin:
            continue
        x = batch.x_out.double() + batch.origin[batch.mol]
        x = x.cpu().numpy()
        mol = batch.mol.cpu().numpy()
        for c in range(n_chains):
            if len(samples) == n_samples:
                break
            frame = atoms.copy()
            frame.calc = None
            frame.info = {k: v for k, v in frame.info.items() if not k.startswith(_STALE_INFO)}
            pos = x[mol == c]
            if mask.any():
                pos = pos + (atoms.positions[mask] - pos[mask]).mean(0)
                pos[mask] = atoms.positions[mask]
            frame.set_positions(pos, apply_constraint=False)
            frame.info.update(diffusion_t=int(t), chain=c, chain_step=step + 1, diffusion_model=model.name,
                              diffusion_level_of_theory=model.level_of_theory, diffusion_model_verified=model.verified)
            if temperature is not None:
                frame.info["temperature_knob"] = float(temperature)
            samples.append(frame)
    if trajectory is not None:
        from ase.io.trajectory import Trajectory

        with Trajectory(trajectory, "w") as traj:
            for frame in samples:
                traj.write(frame)
    return samples


def ensemble_positions(samples) -> np.ndarray:
    """(n_samples, n_atoms, 3) array of an ensemble, for analysis."""
    return np.stack([s.positions for s in samples])
