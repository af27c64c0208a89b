"""Ship a trained run as a named checkpoint: copy weights + card into checkpoints/, register it.

The registry entry's element list and size ranges come from the training data (what the model has
seen), its sha256 from the copied weights, so nothing in it is typed by hand but the name, the
level of theory and the data description.

    python benchmarks/ship_checkpoint.py runs/moses-painn128-jt/best moses-painn128-jt \\
        --level "GFN2-xTB" --data data/moses_xtb/dataset.npz \\
        --training-data "MOSES train (molsets 0.3.1), 12,593 molecules, GFN2-xTB minima"
    python benchmarks/ship_checkpoint.py --bonded-pairs-only - qm9-painn128-jt --data qm9 --level - --training-data -
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np
from ase.data import chemical_symbols

from ase_diffrelax.core.checkpoint import checkpoint_dir, sha256
from ase_diffrelax.files import atomic_write_json
from ase_diffrelax.training.xtb_dataset import load_xtb_dataset


def data_ranges(path: str) -> dict:
    """Elements, atom and heavy-atom ranges and the bonded element pairs of a built dataset's
    train split (or of QM9's train split for path 'qm9')."""
    from ase_diffrelax.chem.topology import training_bonded_pairs

    if path == "qm9":
        from ase_diffrelax.training.data import load_qm9

        ms = load_qm9("train")
    else:
        ms = load_xtb_dataset(path, "train")
    sizes = ms.sizes()
    heavy = np.add.reduceat((ms.numbers > 1).astype(np.int64), ms.offsets[:-1])
    return {"elements": [chemical_symbols[int(z)] for z in np.unique(ms.numbers)],
            "atoms": [int(sizes.min()), int(sizes.max())], "heavy_atoms": [int(heavy.min()), int(heavy.max())],
            "bonded_pairs": training_bonded_pairs(ms)}


def add_bonded_pairs(name: str, data: str) -> list[str]:
    """Record a shipped checkpoint's training bonded pairs in the registry (the only field it changes)."""
    reg_path = checkpoint_dir() / "registry.json"
    reg = json.loads(reg_path.read_text())
    pairs = data_ranges(data)["bonded_pairs"]
    reg["models"][name]["bonded_pairs"] = pairs
    atomic_write_json(reg_path, reg, indent=2)
    return pairs


def seal(names=None) -> dict:
    """Record the sha256 of each shipped checkpoint's weights and card in the registry (every load
    checks both); run after anything edits a shipped card (``update_card.py`` does it itself)."""
    reg_path = checkpoint_dir() / "registry.json"
    reg = json.loads(reg_path.read_text())
    for name in names or list(reg["models"]):
        entry = reg["models"][name]
        entry["sha256"] = sha256(checkpoint_dir() / entry["weights"])
        entry["card_sha256"] = sha256(checkpoint_dir() / entry["card"])
    atomic_write_json(reg_path, reg, indent=2)
    return reg


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seal", action="store_true", help="only record the sha256 of every shipped checkpoint's "
                   "weights and card in the registry (after a card was edited); the other arguments are ignored")
    p.add_argument("--bonded-pairs-only", action="store_true", help="only record the bonded element pairs of "
                   "the training data (--data, or 'qm9') for the registered checkpoint NAME; RUN is ignored")
    p.add_argument("run", help="checkpoint base path in a run folder (e.g. runs/NAME/best)")
    p.add_argument("name")
    p.add_argument("--level", required=True, help="level of theory the training minima were computed with")
    p.add_argument("--data", required=True, help="the built dataset (.npz) the run trained on")
    p.add_argument("--training-data", required=True, help="one line for the registry")
    p.add_argument("--choice-position", type=int, default=None,
                   help="insert into the registry's choice_order at this index (default: append)")
    if argv is None and "--seal" in sys.argv[1:] or argv is not None and "--seal" in argv:
        print(json.dumps({n: e["card_sha256"] for n, e in seal()["models"].items()}, indent=1))
        return
    args = p.parse_args(argv)
    if args.bonded_pairs_only:
        print(args.name, add_bonded_pairs(args.name, args.data))
        return

    src = Path(args.run.removesuffix(".safetensors").removesuffix(".json"))
    dst = checkpoint_dir() / args.name
    shutil.copyfile(src.with_suffix(".safetensors"), dst.with_suffix(".safetensors"))
    card = json.loads(src.with_suffix(".json").read_text())
    card["name"] = args.name
    card["level_of_theory"] = args.level
    atomic_write_json(dst.with_suffix(".json"), card, indent=2)

    reg_path = checkpoint_dir() / "registry.json"
    reg = json.loads(reg_path.read_text())
    reg["models"][args.name] = {
        "weights": dst.with_suffix(".safetensors").name, "card": dst.with_suffix(".json").name,
        "sha256": sha256(dst.with_suffix(".safetensors")), "level_of_theory": args.level,
        "training_data": args.training_data, **data_ranges(args.data), "charges": [0], "closed_shell": True,
    }
    order = [n for n in reg["choice_order"] if n != args.name]
    order.insert(len(order) if args.choice_position is None else args.choice_position, args.name)
    reg["choice_order"] = order
    atomic_write_json(reg_path, reg, indent=2)
    reg = seal([args.name])
    print(json.dumps(reg["models"][args.name], indent=1), "\nchoice_order:", order)


if __name__ == "__main__":
    main()
