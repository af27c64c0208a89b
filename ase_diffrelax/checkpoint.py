"""Checkpoints: weights as safetensors plus a JSON model card. Loading never unpickles.

A checkpoint is ``NAME.safetensors`` + ``NAME.json`` (config, schedule, training data, split,
steps, measured metrics). ``load_model()`` loads the shipped default; a registry name or a
path to either file loads others.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .model import Denoiser, ModelConfig
from .schedule import NoiseSchedule

CHECKPOINT_DIR = Path(__file__).resolve().parent.parent / "checkpoints"
# a wheel install puts checkpoints/ under <prefix>/share (pyproject data-files)
PACKAGED_DIR = Path(sys.prefix) / "share" / "ase_diffrelax" / "checkpoints"
REGISTRY = {"qm9-painn128-jt": "qm9-painn128-jt"}
DEFAULT = "qm9-painn128-jt"
_LOADED: dict = {}


def atomic_write_json(path: Path, data: dict) -> None:
    tmp = Path(str(path) + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")
    os.replace(tmp, path)


def atomic_save_tensors(path: Path, tensors: dict) -> None:
    tmp = Path(str(path) + ".tmp")
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp))
    os.replace(tmp, path)


class LoadedModel:
    """A denoiser with its schedule and model card, ready for the sampler."""

    def __init__(self, net: Denoiser, schedule: NoiseSchedule, card: dict, path: Path | None = None):
        self.net, self.schedule, self.card, self.path = net, schedule, card, path

    @property
    def elements(self) -> tuple:
        return self.net.config.elements

    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device

    def to(self, device) -> "LoadedModel":
        self.net.to(device)
        return self

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
    if name_or_path is None:
        name_or_path = os.environ.get("ASE_DIFFRELAX_MODEL", DEFAULT)
    name = str(name_or_path)
    if name in REGISTRY:
        for folder in (CHECKPOINT_DIR, PACKAGED_DIR):
            base = folder / REGISTRY[name]
            if base.with_suffix(".safetensors").exists():
                return base
        raise FileNotFoundError(f"checkpoint {name!r} is registered but its files are not in {CHECKPOINT_DIR}")
    base = Path(name.removesuffix(".safetensors").removesuffix(".json"))
    if not base.with_suffix(".safetensors").exists() or not base.with_suffix(".json").exists():
        known = ", ".join(sorted(REGISTRY))
        raise FileNotFoundError(
            f"no checkpoint {name!r}: expected {base}.safetensors and {base}.json, or one of: {known}"
        )
    return base


def load_model(name_or_path: str | os.PathLike | None = None, device=None) -> LoadedModel:
    """Load a checkpoint by registry name or path (no argument: the shipped default)."""
    if isinstance(name_or_path, LoadedModel):
        return name_or_path.to(device) if device is not None else name_or_path
    base = resolve(name_or_path)
    from .device import pick_device

    dev = pick_device(device)
    weights = base.with_suffix(".safetensors")
    key = (str(base.resolve()), str(dev), weights.stat().st_mtime_ns)
    if key in _LOADED:  # many DiffusionRelax objects in a loop share one read-only model
        return _LOADED[key]
    card = json.loads(base.with_suffix(".json").read_text())
    net = Denoiser(ModelConfig.fromdict(card["config"]))
    state = load_file(str(base.with_suffix(".safetensors")))
    net.load_state_dict(state)
    net.eval()
    schedule = NoiseSchedule(**card.get("schedule", {}))
    model = LoadedModel(net, schedule, card, base).to(dev)
    _LOADED[key] = model
    return model
