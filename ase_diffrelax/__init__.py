"""ase_diffrelax: relax molecules with a diffusion denoiser (MoreRed-style) inside ASE.

    from ase_diffrelax import DiffusionRelax
    DiffusionRelax(atoms).run()          # then hand atoms to BFGS with xTB or DFT

Names are imported on first use, so ``import ase_diffrelax`` (and ``ase-diffrelax --help``)
does not load torch.
"""
from __future__ import annotations

import importlib

__version__ = "0.14.0"

_EXPORTS = {
    "DiffusionRelax": "adapters.optimizer",
    "TopologyChangedError": "adapters.optimizer",
    "DiffusionCalculator": "adapters.calculator",
    "relax_many": "adapters.batch",
    "sample_ensemble": "adapters.ensemble",
    "with_temperature_map": "adapters.ensemble",
    "RelaxResult": "adapters.batch",
    "load_model": "core.checkpoint",
    "available_models": "core.checkpoint",
    "save_model": "core.checkpoint",
    "Policy": "core.policy",
    "make_policy": "core.policy",
    "InputError": "core.validate",
    "atoms_from_smiles": "chem.rdkit_interop",
    "run_pipeline": "workflows.pipeline",
    "default_stages": "workflows.pipeline",
    "tune_allocator": "core.allocator",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'ase_diffrelax' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)
