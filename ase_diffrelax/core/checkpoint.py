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

from ..files import atomic_save_tensors, atomic_write_json
from .model import Denoiser
from .schedule import NoiseSchedule

_LOADED: dict = {}


def checkpoint_dir() -> Path:
    """The folder of the shipped checkpoints (package data; the repository's checkpoints/ in a checkout)."""
    return Path(str(resources.files("ase_diffrelax.checkpoints")))


def registry() -> dict:
    """The registry, checked for the shape the loader relies on (one line naming what is wrong)."""
    path = checkpoint_dir() / "registry.json"
    try:
        reg = json.loads(path.read_text())
    except ValueError as exc:
        raise IntegrityError(f"{path}: not JSON ({exc}); reinstall ase_diffrelax") from None
    if not isinstance(reg, dict) or not isinstance(reg.get("models"), dict) or not reg["models"]:
        raise IntegrityError(f"{path}: no 'models' table naming the shipped checkpoints; reinstall ase_diffrelax")
    for name, entry in reg["models"].items():
        if not isinstance(entry, dict) or not all(isinstance(entry.get(k), str) for k in ("weights", "card", "sha256")):
            raise IntegrityError(f"{path}: entry {name!r} needs 'weights', 'card' and 'sha256' strings")
        if not isinstance(entry.get("elements", []), list):
            raise IntegrityError(f"{path}: entry {name!r}: 'elements' must be a list of element symbols")
    return reg


def available_models() -> dict[str, dict]:
    """Shipped checkpoints by name: level of theory, elements, size range, charges."""
    return {name: {k: v for k, v in entry.items() if k not in ("weights", "card")}
            for name, entry in registry()["models"].items()}


def choose_model(atoms_list, label: str = "input", level: str | None = None) -> str:
    """The shipped checkpoint for these molecules: the first in the registry's ``choice_order`` that
    knows every element and whose ``atoms`` (and, where given, ``heavy_atoms``) range, widened by
    the registry's ``size_tolerance`` (default 1.5), holds the largest molecule; else, of those
    that know every element, the one trained on the largest molecules. The order and tolerance
    are set by measurement (docs/benchmarks.md, choice study). ``level``: the level the start is
    handed to next ("xtb", "dft"); where the registry's ``choice_by_level`` has a rule measured
    at that level, its order and tolerance replace the general ones. ``ASE_DIFFRELAX_MODEL``
    overrides. No checkpoint knows an element: InputError listing what is shipped."""
    from ase.data import atomic_numbers, chemical_symbols

    from .validate import InputError

    if os.environ.get("ASE_DIFFRELAX_MODEL"):
        return os.environ["ASE_DIFFRELAX_MODEL"]
    reg = registry()
    rule = {**reg, **reg.get("choice_by_level", {}).get(level, {})} if level else reg
    order = rule.get("choice_order", list(reg["models"]))
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
    tol = float(rule.get("size_tolerance", 1.5))
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


def card_digest(card: dict) -> str:
    """sha256 of a saved card's content (canonical JSON, without the ``card_sha256`` field itself):
    a saved checkpoint's config, calibration and limits are covered as its weights are."""
    body = {k: v for k, v in card.items() if k != "card_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


class IntegrityError(ValueError):
    """A checkpoint's files do not match the hash they are shipped or saved with."""


def _registered_base(name: str, entry: dict) -> Path:
    """A registry entry's files, which must lie inside the checkpoint folder."""
    root = checkpoint_dir().resolve()
    weights = str(entry.get("weights", ""))
    base = (root / Path(weights).stem).resolve()
    if Path(weights).name != weights or not weights.endswith(".safetensors") or base.parent != root:
        raise IntegrityError(f"registry entry {name!r}: weights {weights!r} must be a .safetensors file name "
                             f"inside {root}")
    return base


class LoadedModel:
    """A denoiser with its schedule and model card, ready for the sampler."""

    def __init__(self, net: Denoiser, schedule: NoiseSchedule, card: dict, path: Path | None = None):
        self.net, self.schedule, self.card, self.path = net, schedule, card, path
        self.verified = "unverified (built in memory)"
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
            self._compiled.verified = self.verified
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
        twin.verified = self.verified
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
    card["weights_sha256"] = sha256(base.with_suffix(".safetensors"))
    card["format"] = "ase_diffrelax/1"
    card["config"] = net.config.todict()
    card["schedule"] = schedule.todict()
    card = json.loads(json.dumps(card, default=_plain))  # what the file will hold, so the digest matches on load
    card["card_sha256"] = card_digest(card)
    atomic_write_json(base.with_suffix(".json"), card)
    return base


def write_card(path: str | os.PathLike, card: dict) -> Path:
    """Rewrite a saved checkpoint's card (calibration, measured metrics) with its ``card_sha256``
    recomputed, so the tools that legitimately edit a card keep it verifiable. A shipped card is
    resealed in the registry instead (``benchmarks/ship_checkpoint.py --seal``)."""
    card = json.loads(json.dumps(card, default=_plain))
    if card.get("weights_sha256"):
        card["card_sha256"] = card_digest(card)
    return atomic_write_json(path, card)


def _plain(obj):
    if hasattr(obj, "tolist"):
        return obj.tolist()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def resolve(name_or_path: str | os.PathLike | None) -> Path:
    """Base path (without suffix) of a registered name or a checkpoint path."""
    reg = registry()
    if name_or_path is None:
        name_or_path = os.environ.get("ASE_DIFFRELAX_MODEL") or reg["default"]
        if str(name_or_path) not in reg["models"] and "ASE_DIFFRELAX_MODEL" not in os.environ:
            raise IntegrityError(f"registry default {name_or_path!r} is not a registered checkpoint name")
    name = str(name_or_path)
    if not name.strip():
        known = ", ".join(sorted(reg["models"]))
        raise FileNotFoundError(f"empty checkpoint name: give a registered name ({known}) or a path")
    if name in reg["models"]:
        entry = reg["models"][name]
        base = _registered_base(name, entry)
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
    from .allocator import tune_allocator
    from .device import pick_device

    tune_allocator()  # once per process: eager CPU inference otherwise re-faults its buffers (allocator.py)
    if compile:
        return load_model(name_or_path, device).compiled()
    if isinstance(name_or_path, LoadedModel):
        return name_or_path.to(device) if device is not None else name_or_path
    base = resolve(name_or_path)
    dev = pick_device(device)
    weights = base.with_suffix(".safetensors")
    weight_bytes, card_bytes = weights.read_bytes(), base.with_suffix(".json").read_bytes()
    # every load hashes the bytes it uses (2.6 MB: ~3 ms, docs/benchmarks.md): no size/mtime shortcut
    digests = hashlib.sha256(weight_bytes).hexdigest(), hashlib.sha256(card_bytes).hexdigest()
    key = (str(base.resolve()), str(dev), digests, str(checkpoint_dir()))
    if key in _LOADED:
        return _LOADED[key]
    try:
        card = json.loads(card_bytes)
    except ValueError as exc:
        raise ValueError(f"{base}.json: not a JSON model card ({exc})") from None
    if not isinstance(card, dict) or not isinstance(card.get("config"), dict):
        raise ValueError(f"{base}.json: model card without a 'config' section (the network's width, depth and "
                         "elements): not a checkpoint written by ase_diffrelax.save_model")
    card, verified = _verify(base, weights, card, digests)
    from .card import check_card, load_weights

    config = check_card(card, f"{base}.json")
    net = Denoiser(config)
    net.load_state_dict(load_weights(weight_bytes, net, str(weights)))
    net.eval()
    if card.get("schedule", net.schedule.todict()) != net.schedule.todict():
        raise ValueError(f"{base}.json: card schedule {card['schedule']} differs from the model config's "
                         f"{net.schedule.todict()}")
    model = LoadedModel(net.to(dev), net.schedule, card, base)
    model.verified = verified
    _LOADED[key] = model
    return model


def _verify(base: Path, weights: Path, card: dict, digests: tuple[str, str]) -> tuple[dict, str]:
    """Check the weights and the card against the registry's sha256s (shipped checkpoints) or the
    card's own ``weights_sha256`` and ``card_sha256`` (saved ones); for a shipped checkpoint the
    registry, not its card, says which elements, charges and level of theory it is for. A load
    that cannot be verified warns. Returns (card, how it was verified)."""
    import warnings

    from ase.data import atomic_numbers

    root = checkpoint_dir().resolve()
    entry = None
    if base.parent.resolve() == root:
        for name, e in registry()["models"].items():
            if _registered_base(name, e) == base.resolve():
                entry = e
    if entry is not None:
        digest = digests[0]
        if digest != entry.get("sha256"):
            raise IntegrityError(f"{weights}: sha256 {digest[:12]}... does not match the registry's "
                                 f"{str(entry.get('sha256'))[:12]}...: the shipped weights are damaged or were "
                                 "replaced; reinstall ase_diffrelax")
        if entry.get("card_sha256") and digests[1] != entry["card_sha256"]:
            raise IntegrityError(f"{base}.json: sha256 {digests[1][:12]}... does not match the registry's "
                                 f"{entry['card_sha256'][:12]}...: the shipped card was edited or damaged; "
                                 "reinstall ase_diffrelax")
        elements = sorted(atomic_numbers[e] for e in entry["elements"])
        if sorted(card["config"].get("elements", [])) != elements:
            raise IntegrityError(f"{base}.json: its elements {card['config'].get('elements')} differ from the "
                                 f"registry's {entry['elements']} for these weights: the card was edited")
        card = {**card, "level_of_theory": entry.get("level_of_theory"), "charges": entry.get("charges", [0])}
        if "heavy_atoms" in entry:
            card["max_heavy_atoms"] = int(entry["heavy_atoms"][1])
            card["min_training_heavy_atoms"] = int(entry["heavy_atoms"][0])
        if "atoms" in entry:
            card["min_training_atoms"] = int(entry["atoms"][0])
        if "bonded_pairs" in entry:
            card["bonded_pairs"] = list(entry["bonded_pairs"])
        return card, "registry sha256" if entry.get("card_sha256") else "registry sha256 (weights only)"
    if card.get("weights_sha256"):
        if digests[0] != card["weights_sha256"]:
            raise IntegrityError(f"{weights}: sha256 {digests[0][:12]}... does not match its card's weights_sha256 "
                                 f"{str(card['weights_sha256'])[:12]}...: the weights are damaged or belong to another card")
        if card.get("card_sha256"):
            if card_digest(card) != card["card_sha256"]:
                raise IntegrityError(f"{base}.json: its content does not match its card_sha256: the card (config, "
                                     "calibration or limits) was edited after it was saved")
            return card, "card sha256 (not a registered checkpoint)"
        verified = "unverified card (weights match its weights_sha256; the card itself carries no card_sha256)"
    else:
        verified = "unverified (loaded by path, no weights_sha256 in its card)"
    warnings.warn(f"{base}: {verified}: nothing vouches for this checkpoint's files", UserWarning, stacklevel=3)
    return card, verified
