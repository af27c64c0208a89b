"""Model cards and weights checked before a network is built: a wrong type, range or shape is one
line naming the field, never a TypeError or a state_dict dump from deep inside torch."""
from __future__ import annotations

import math

from .model import ModelConfig

# (type, low, high) of each config field; elements are checked apart
_CONFIG_FIELDS = {"features": (int, 1, 4096), "blocks": (int, 1, 32), "rbf": (int, 1, 1024),
                  "cutoff": (float, 0.5, 50.0), "time_features": (int, 1, 1024), "schedule_T": (int, 2, 100_000),
                  "schedule_s": (float, 0.0, 1.0)}


class CardError(ValueError):
    """A model card or weights file that does not describe a usable network."""


def _number(value, kind, low, high, where: str):
    ok_type = (isinstance(value, int) and not isinstance(value, bool)) if kind is int else (
        isinstance(value, (int, float)) and not isinstance(value, bool))
    if not ok_type or not math.isfinite(float(value)) or not low <= value <= high:
        raise CardError(f"{where} = {value!r}: must be {'a whole number' if kind is int else 'a number'} "
                        f"in [{low}, {high}]")
    return kind(value)


def check_card(card: dict, label: str) -> ModelConfig:
    """The network config of a card, every field typed and in range; the card's limits too."""
    cfg = card["config"]
    fields = {}
    for name, (kind, low, high) in _CONFIG_FIELDS.items():
        if name in cfg:
            fields[name] = _number(cfg[name], kind, low, high, f"{label}: config.{name}")
    elements = cfg.get("elements")
    if elements is not None:
        if not isinstance(elements, list) or not elements:
            raise CardError(f"{label}: config.elements = {elements!r}: must be a non-empty list of atomic numbers")
        zs = [_number(z, int, 1, 118, f"{label}: config.elements[{k}]") for k, z in enumerate(elements)]
        if len(set(zs)) != len(zs):
            raise CardError(f"{label}: config.elements {zs} lists an element twice")
        fields["elements"] = tuple(zs)
    target = cfg.get("time_target", "log_sigma")
    if target not in ("log_sigma", "t_frac"):
        raise CardError(f"{label}: config.time_target = {target!r}: must be 'log_sigma' or 't_frac'")
    fields["time_target"] = target
    if "max_atoms" in card:
        _number(card["max_atoms"], int, 2, 100_000, f"{label}: max_atoms")
    if "min_atoms" in card:
        _number(card["min_atoms"], int, 1, 100_000, f"{label}: min_atoms")
    if "charges" in card:
        charges = card["charges"]
        if not isinstance(charges, list) or not charges:
            raise CardError(f"{label}: charges = {charges!r}: must be a non-empty list of whole numbers")
        for k, q in enumerate(charges):
            _number(q, int, -20, 20, f"{label}: charges[{k}]")
    calib = card.get("time_calibration")
    if calib is not None:
        if not isinstance(calib, dict):
            raise CardError(f"{label}: time_calibration must be a table")
        if "t_scale" in calib:
            _number(calib["t_scale"], float, 1e-3, 1e3, f"{label}: time_calibration.t_scale")
        if "t_scale_cap" in calib:
            _number(calib["t_scale_cap"], int, 1, 100_000, f"{label}: time_calibration.t_scale_cap")
        finish = calib.get("finish")
        if finish is not None:  # the jt policy's finish measured for these weights (core.policy)
            if not isinstance(finish, dict):
                raise CardError(f"{label}: time_calibration.finish must be a table")
            from .policy import FINISH_FLOATS, FINISH_KEYS, FINISH_MAX

            unknown = sorted(set(finish) - set(FINISH_KEYS) - {"measured"})
            if unknown:
                raise CardError(f"{label}: time_calibration.finish has unknown keys {unknown}; known: {list(FINISH_KEYS)}")
            for name in FINISH_KEYS:
                if name in FINISH_FLOATS and name in finish:
                    _number(finish[name], float, 1e-3, 4.0, f"{label}: time_calibration.finish.{name}")
                elif name in finish:
                    _number(finish[name], int, 0, FINISH_MAX[name], f"{label}: time_calibration.finish.{name}")
            if finish.get("hold_steps") and not finish.get("hold_t"):
                raise CardError(f"{label}: time_calibration.finish.hold_steps needs hold_t")
            if finish.get("smooth_steps") and not (finish.get("smooth_t") and finish.get("smooth_copies")):
                raise CardError(f"{label}: time_calibration.finish.smooth_steps needs smooth_t and smooth_copies")
    return ModelConfig(**fields)


def load_weights(data: bytes, net, label: str) -> dict:
    """Tensors from safetensors bytes, refused in one line unless they are exactly ``net``'s."""
    from safetensors.torch import load

    try:
        tensors = load(data)
    except Exception as exc:  # SafetensorError and friends: a pickle renamed, a truncated file, ...
        raise CardError(f"{label}: not a safetensors weights file ({type(exc).__name__}: {exc}); checkpoints are "
                        "never unpickled") from None
    want = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    have = {k: tuple(v.shape) for k, v in tensors.items()}
    missing, extra = sorted(set(want) - set(have)), sorted(set(have) - set(want))
    wrong = [k for k in want if k in have and want[k] != have[k]]
    if missing or extra or wrong:
        what = (f"{wrong[0]} is {list(have[wrong[0]])} but the card's config needs {list(want[wrong[0]])}" if wrong
                else f"{len(missing)} tensor(s) missing (e.g. {missing[0]})" if missing
                else f"{len(extra)} tensor(s) the config has no place for (e.g. {extra[0]})")
        raise CardError(f"{label}: the weights do not fit the card's config: {what}")
    return tensors
