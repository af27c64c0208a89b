"""Checkpoints: weights as safetensors plus a JSON model card, found through a small registry.

``checkpoints/registry.json`` (installed as package data ``ase_diffrelax.checkpoints``) names
each shipped checkpoint with its files, sha256, level of theory, elements and size range.
``load_model(name)`` loads a registered one, ``load_model(path)`` any ``.safetensors`` +
``.json`` pair; loading never unpickles. ``available_models()`` lists the registry.
"""
from __future__ import annotations

import hashlib
import json
import os
from importlib import resources
from pathlib import Path

import torch
from safetensors.torch import load_file

from ..files import atomic_save_tensors, atomic_write_json
from .model import Denoiser, ModelConfig
from .schedule import NoiseSchedule

_LOADED: dict = {}


def checkpoint_dir() -> Path:
    """The folder of the shipped checkpoints (package data; the repository's checkpoints/ in a checkout)."""
    return Path(str(resources.files("ase_diffrelax.checkpoints")))


def registry() -> dict:
    return json.loads((checkpoint_dir() / "registry.json").read_text())


def available_models() -> dict[str, dict]:
    """Shipped checkpoints by name: level of theory, elements, size range, charges."""
    return {name: {k: v for k, v in entry.items() if k not in ("weights", "card")}
            for name, entry in registry()["models"].items()}


def choose_model(atoms_list, label: str = "input") -> str:
    """The shipped checkpoint for these molecules: the first in the registry's ``choice_order`` that
    knows every element and whose ``atoms`` (and, where given, ``heavy_atoms``) range, widened by
    the registry's ``size_tolerance`` (default 1.5), holds the largest molecule; else, of those
    that know every element, the one trained on the largest molecules. The order and tolerance
    are set by measurement (docs/benchmarks.md, choice study). ``ASE_DIFFRELAX_MODEL`` overrides.
    No checkpoint knows an element: InputError listing what is shipped."""
    from ase.data import atomic_numbers, chemical_symbols

    from .validate import InputError

    if os.environ.get("ASE_DIFFRELAX_MODEL"):
        return os.environ["ASE_DIFFRELAX_MODEL"]
    reg = registry()
    order = reg.get("choice_order", list(reg["models"]))
    elements = set()
    largest = largest_heavy = 0
    for atoms in atoms_list:
        elements |= {int(z) for z in atoms.numbers}
        largest = max(largest, len(atoms))
        largest_heavy = max(largest_heavy, int((atoms.numbers > 1).sum()))
    knows = [name for name in order
             if elements <= {atomic_numbers[e] for e in reg["models"][name]["elements"]}]
    if not knows:
        shipped = "; ".join(f"{n} ({' '.join(e['elements'])})" for n, e in reg["models"].items())
        missing = sorted(elements - set().union(*({atomic_numbers[x] for x in e["elements"]}
                                                  for e in reg["models"].values())))
        names = ", ".join(chemical_symbols[z] if 0 <= z < len(chemical_symbols) else str(z) for z in missing)
        raise InputError(f"{label}: element(s) {names} unknown to every shipped checkpoint: {shipped}")
    tol = float(reg.get("size_tolerance", 1.5))
    for name in knows:
        entry = reg["models"][name]
        if (largest <= tol * entry.get("atoms", [0, 10**9])[1]
                and largest_heavy <= tol * entry.get("heavy_atoms", [0, 10**9])[1]):
            return name
    return max(knows, key=lambda n: reg["models"][n].get("atoms", [0, 10**9])[1])  # the one trained largest


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class LoadedModel:
    """A denoiser with its schedule and model card, ready for the sampler."""

    def __init__(self, net: Denoiser, schedule: NoiseSchedule, card: dict, path: Path | None = None):
        self.net, self.schedule, self.card, self.path = net, schedule, card, path
        self._compiled: LoadedModel | None = None

    def compiled(self) -> "LoadedModel":
        """A twin whose network blocks are ``torch.compile``-d (made once, then shared). Worth it for
        batches: ~5x faster CPU inference on drug-size molecules after a 5-20 s warm-up
        (``benchmarks/inference_compile.py``); the shared eager model stays as it is."""
        if self._compiled is None:
            import copy

            net = copy.deepcopy(self.net)
            net.compile_blocks()
            self._compiled = LoadedModel(net, self.schedule, self.card, self.path)
            self._compiled._compiled = self._compiled
        return self._compiled

    @property
    def name(self) -> str:
        return str(self.card.get("name") or (self.path.name if self.path else "unnamed"))

    @property
    def level_of_theory(self) -> str:
        return str(self.card.get("level_of_theory") or "unknown")

    @property
    def elements(self) -> tuple:
        return self.net.config.elements

    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device

    def to(self, device) -> "LoadedModel":
        """This model on ``device``: itself if already there, else a copy (a shared cached model is never moved)."""
        device = torch.device(device)
        if self.device == device:
            return self
        import copy

        twin = LoadedModel(copy.deepcopy(self.net).to(device), self.schedule, self.card, self.path)
        return twin.compiled() if self._compiled is self else twin  # a deep copy drops the compilation

    def __repr__(self) -> str:
        name = self.card.get("name", self.path)
        return f"LoadedModel({name!r}, elements={list(self.elements)}, steps={self.card.get('training', {}).get('steps')})"


def save_model(path: str | os.PathLike, net: Denoiser, schedule: NoiseSchedule, card: dict) -> Path:
    """Write ``path.safetensors`` and ``path.json`` atomically (weights first, then card)."""
    base = Path(str(path).removesuffix(".safetensors").removesuffix(".json"))
    base.parent.mkdir(parents=True, exist_ok=True)
    atomic_save_tensors(base.with_suffix(".safetensors"), net.state_dict())
    card = dict(card)
    card["format"] = "ase_diffrelax/1"
    card["config"] = net.config.todict()
    card["schedule"] = schedule.todict()
    atomic_write_json(base.with_suffix(".json"), card)
    return base


def resolve(name_or_path: str | os.PathLike | None) -> Path:
    """Base path (without suffix) of a registered name or a checkpoint path."""
    reg = registry()
    if name_or_path is None:
        name_or_path = os.environ.get("ASE_DIFFRELAX_MODEL", reg["default"])
    name = str(name_or_path)
    if name in reg["models"]:
        entry = reg["models"][name]
        base = checkpoint_dir() / Path(entry["weights"]).stem
        if not base.with_suffix(".safetensors").exists():
            raise FileNotFoundError(f"checkpoint {name!r} is registered but {base}.safetensors is missing")
        return base
    base = Path(name.removesuffix(".safetensors").removesuffix(".json"))
    if not base.with_suffix(".safetensors").exists() or not base.with_suffix(".json").exists():
        known = ", ".join(sorted(reg["models"]))
        raise FileNotFoundError(
            f"no checkpoint {name!r}: expected {base}.safetensors and {base}.json, or one of: {known}"
        )
    return base


def load_model(name_or_path=None, device=None, compile: bool = False) -> LoadedModel:
    """Load a checkpoint by registry name or path (no argument: the shipped default), on
    ``device`` (None: CUDA when available). Loaded models are cached per file and device and
    shared read-only; asking for another device gives a separate copy. ``compile=True`` gives
    the model's ``torch.compile``-d twin (``LoadedModel.compiled``)."""
    from .device import pick_device

    if compile:
        return load_model(name_or_path, device).compiled()
    if isinstance(name_or_path, LoadedModel):
        return name_or_path.to(device) if device is not None else name_or_path
    base = resolve(name_or_path)
    dev = pick_device(device)
    weights = base.with_suffix(".safetensors")
    key = (str(base.resolve()), str(dev), weights.stat().st_mtime_ns)
    if key in _LOADED:
        return _LOADED[key]
    card = json.loads(base.with_suffix(".json").read_text())
    registered = {Path(e["weights"]).stem: e for e in registry()["models"].values()}
    entry = registered.get(base.name) if base.parent.resolve() == checkpoint_dir().resolve() else None
    if entry is not None:
        card.setdefault("level_of_theory", entry.get("level_of_theory"))
        card.setdefault("charges", entry.get("charges", [0]))
    net = Denoiser(ModelConfig.fromdict(card["config"]))
    net.load_state_dict(load_file(str(weights)))
    net.eval()
    if card.get("schedule", net.schedule.todict()) != net.schedule.todict():
        raise ValueError(f"{base}.json: card schedule {card['schedule']} differs from the model config's "
                         f"{net.schedule.todict()}")
    model = LoadedModel(net.to(dev), net.schedule, card, base)
    _LOADED[key] = model
    return model
