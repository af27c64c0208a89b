"""What the ASE adapters share: fixed atoms, batch size per device, trajectories for ase gui."""
from __future__ import annotations

import numpy as np
import torch


def fixed_mask(atoms) -> np.ndarray:
    """Atoms held by FixAtoms do not move."""
    from ase.constraints import FixAtoms

    mask = np.zeros(len(atoms), dtype=bool)
    for c in atoms.constraints:
        if isinstance(c, FixAtoms):
            mask[c.get_indices()] = True
    return mask


def default_batch_size(device) -> int:
    """Molecules in flight at once: on a CPU the per-pair tensors of a large batch fall out of
    cache (docs/benchmarks.md, batch speed); a GPU wants large batches."""
    return 256 if torch.device(device).type == "cuda" else 16


def write_history(path: str, atoms, history) -> None:
    """Input frame plus one frame per reverse-diffusion step, readable by ``ase gui``; each frame
    carries the predicted step (``diffusion_t``) and the step denoised at (``diffusion_t_used``)."""
    from ase.io.trajectory import Trajectory

    with Trajectory(path, "w") as traj:
        first = atoms.copy()
        first.calc = None
        traj.write(first)
        for positions, t_hat, t_used in history:
            frame = first.copy()
            frame.set_positions(positions, apply_constraint=False)
            frame.info["diffusion_t"] = float(t_hat)
            frame.info["diffusion_t_used"] = int(t_used)
            traj.write(frame)
