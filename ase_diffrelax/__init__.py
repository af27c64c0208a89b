"""ase_diffrelax: relax molecules with a diffusion denoiser (MoreRed-style) inside ASE.

    from ase_diffrelax import DiffusionRelax
    DiffusionRelax(atoms).run()          # then hand atoms to BFGS with xTB or DFT
"""
from .checkpoint import load_model, save_model
from .sampler import Sampler, make_policy, AdaptivePolicy, ITPPolicy, FixedPolicy
from .batch import relax_many, RelaxResult
from .optimizer import DiffusionRelax, TopologyChangedError
from .calculator import DiffusionCalculator
from .validate import InputError

__version__ = "0.1.0"
__all__ = ["load_model", "save_model", "Sampler", "make_policy", "AdaptivePolicy", "ITPPolicy", "FixedPolicy",
           "relax_many", "RelaxResult", "DiffusionRelax", "TopologyChangedError", "DiffusionCalculator",
           "InputError"]
