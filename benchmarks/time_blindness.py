"""How much of a start's deviation from the GFN2-xTB minimum the time head sees (issue 29 diagnostic).

For each MOSES molecule of the xTB dataset: the deviation of its MMFF94 start and of the diffusion
end from the dataset's xTB minimum as a noise scale (per-coordinate RMS after Kabsch alignment,
sqrt(sum |dx|^2 / (3 (N - 1))), the same scale the trainer turns into the step of an MMFF94 input),
the step t_dev whose sigma_t equals it, and the time head's prediction t_hat at the start and at
the end. t_hat << t_dev: most of the deviation looks clean to the model (large-amplitude
conformational shifts rather than local noise), so the sampler stops before it is undone.

Alignment is plain Kabsch on the dataset's atom order (no symmetry search), so methyl and
other symmetric groups can inflate t_dev a little; the start and the end are measured alike.

    python -m benchmarks.time_blindness --part train --n 200 --out docs/results/time_blindness_moses_train.json
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from ase_diffrelax.files import atomic_write_json

HERE = Path(__file__).resolve().parent
DATA = HERE.parent / "data" / "moses_xtb" / "dataset.npz"


def deviation(x: np.ndarray, ref: np.ndarray) -> float:
    from ase_diffrelax.chem.rmsd import kabsch_align

    ref = ref - ref.mean(0)
    x = kabsch_align(x - x.mean(0), ref)
    return float(np.sqrt(((x - ref) ** 2).sum() / (3 * (len(ref) - 1))))


@torch.no_grad()
def predicted_t(model, atoms) -> float:
    from ase_diffrelax.core.denoise import denoise

    net = model.net
    numbers = torch.as_tensor(atoms.numbers, dtype=torch.long)
    x = torch.as_tensor(atoms.positions - atoms.positions.mean(0), dtype=torch.float32)
    mol = torch.zeros(len(atoms), dtype=torch.long)
    return float(denoise(net, net.schedule, numbers, x, mol, 1).t_hat[0])


def run(model_name: str, part: str, n: int, data: Path = DATA) -> dict:
    from ase_diffrelax import load_model, relax_many
    from ase_diffrelax.training.xtb_dataset import mmff_start, read_dataset

    model = load_model(model_name, device="cpu")
    sched = model.net.schedule
    mols = read_dataset(data, part)[:n]
    starts = [mmff_start(a) for a in mols]
    ends = relax_many(starts, model=model, progress=False, batch_size=16, unseen_bonds="relax", on_error="skip")

    def t_of(dev: float) -> int:
        return int(sched.t_for_sigma(np.array([dev]))[0])

    rows = []
    for a, s, r in zip(mols, starts, ends):
        if r.status not in ("converged", "max_steps"):
            continue
        d0, d1 = deviation(s.positions, a.positions), deviation(r.atoms.positions, a.positions)
        rows.append({"id": int(a.info["id"]), "dev_start": d0, "t_dev_start": t_of(d0), "t_hat_start": predicted_t(model, s),
                     "dev_end": d1, "t_dev_end": t_of(d1), "t_hat_end": predicted_t(model, r.atoms), "steps": r.steps})
    med = {k: float(np.median([r[k] for r in rows])) for k in rows[0] if k != "id"}
    return {"model": model_name, "part": part, "n": len(rows), "median": med,
            "deviation": "per-coordinate RMS after Kabsch alignment (no symmetry search) to the dataset's GFN2-xTB "
                         "minimum, all atoms, A; t_dev = the step whose sigma_t equals it",
            "rows": rows}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="moses-painn128-jt2")
    p.add_argument("--part", default="val", choices=["train", "val", "test", "test_scaffolds"])
    p.add_argument("--n", type=int, default=200)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    report = run(args.model, args.part, args.n)
    print(json.dumps(report["median"], indent=1))
    if args.out:
        atomic_write_json(args.out, report)


if __name__ == "__main__":
    main()
