"""A user's own ASE calculator as a pipeline stage: any QM code or ML potential ASE can drive.

``run_pipeline(start, target=calc)`` (and ``pre=calc`` for an intermediate stage) takes an ASE
``Calculator`` or a zero-argument factory returning one per molecule; on the command line
``--calc NAME -p key=value,...`` names one the way ``ase run`` does (ASE's calculator names) or
``--calc package.module:function`` for one outside ASE. Charge and unpaired electrons reach the
calculator through the keywords its ASE interface reads (``CHARGE_SPIN``); a calculator we cannot
tell them to refuses a charged or open-shell molecule in one line instead of running a neutral
singlet.
"""
from __future__ import annotations

import ast
import json

# class name -> how its ASE interface takes (total charge q, unpaired electrons u): keyword
# parameters, and "magmom" where the code reads the multiplicity from the initial magnetic moments
CHARGE_SPIN = {
    "NWChem": lambda q, u: ({"charge": q}, True),
    "MOPAC": lambda q, u: ({"charge": q}, True),
    "ORCA": lambda q, u: ({"charge": q, "mult": u + 1}, False),
    "Gaussian": lambda q, u: ({"charge": q, "mult": u + 1}, False),
    "Psi4": lambda q, u: ({"charge": q, "multiplicity": u + 1}, False),
    "QChem": lambda q, u: ({"charge": q, "multiplicity": u + 1}, False),
    "TBLite": lambda q, u: ({"charge": q, "multiplicity": u + 1}, False),
    "PySCFCalculator": lambda q, u: ({"charge": q, "spin": u}, False),
}


# keywords that change where or how a code runs, not its results: left out of a gradient cache's key
NOT_RESULTS = ("directory", "label", "command", "profile", "memory", "nthreads", "scratch")


def parse_params(text: str | None) -> dict:
    """``key=value,...`` as ``ase run -p`` writes it (values: Python literals, else strings;
    ``{a:1,b:x}`` nests), read with ``ast.literal_eval``: nothing typed on a command line runs."""
    if not text:
        return {}
    out, key, depth, buf = {}, None, 0, ""

    def value(raw: str):
        raw = raw.strip()
        if raw.startswith("{") and raw.endswith("}"):
            return parse_params(raw[1:-1].replace(":", "="))
        try:
            return ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            return raw

    for ch in text + ",":
        if ch in "{([":
            depth += 1
        elif ch in "})]":
            depth -= 1
        if ch == "=" and depth == 0 and key is None:
            key, buf = buf.strip(), ""
        elif ch == "," and depth == 0:
            if key is None:
                if buf.strip():
                    raise ValueError(f"-p {text!r}: {buf.strip()!r} is not key=value")
            else:
                out[key] = value(buf)
            key, buf = None, ""
        else:
            buf += ch
    return out


def calculator_factory(spec: str, params: dict | None = None):
    """A zero-argument factory for ``spec``: an ASE calculator name (``nwchem``, ``mopac``, ``orca``,
    ...) or ``package.module:function`` returning a calculator; ``params`` are its keywords."""
    import importlib

    params = dict(params or {})
    if ":" in spec:
        module, _, name = spec.partition(":")
        try:
            fn = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError) as exc:
            raise ValueError(f"--calc {spec}: cannot import {name} from {module} ({exc})") from None
        def make_from_function():
            return fn(**params)
        make_from_function.calc_name, make_from_function.calc_params = spec, params
        return make_from_function
    from ase.calculators.calculator import get_calculator_class

    try:
        cls = get_calculator_class(spec.lower())
    except (ImportError, KeyError, ValueError) as exc:
        raise ValueError(f"--calc {spec}: not an ASE calculator name ({exc}); see 'ase info --calculators', or "
                         "give package.module:function") from None

    def make():
        import tempfile

        kwargs = dict(params)
        if "directory" not in kwargs and _file_based(cls):
            kwargs["directory"] = tempfile.mkdtemp(prefix=f"ase_diffrelax_{spec.lower()}_")
        return cls(**kwargs)
    make.calc_name, make.calc_params = spec.lower(), params
    return make


def _file_based(cls) -> bool:
    from ase.calculators.calculator import FileIOCalculator
    try:
        from ase.calculators.genericfileio import GenericFileIOCalculator
    except ImportError:  # pragma: no cover - older ASE
        GenericFileIOCalculator = FileIOCalculator
    return issubclass(cls, (FileIOCalculator, GenericFileIOCalculator))


def resolve(calc):
    """A calculator instance from an instance or a zero-argument factory."""
    from ase.calculators.calculator import BaseCalculator

    if isinstance(calc, BaseCalculator):
        return calc
    if callable(calc):
        made = calc()
        if not isinstance(made, BaseCalculator):
            raise ValueError(f"the calculator factory returned {type(made).__name__}, not an ASE calculator")
        return made
    raise ValueError(f"target/pre must be an ASE calculator or a zero-argument factory, not {type(calc).__name__}")


def identity(calc, factory=None) -> tuple[str, str]:
    """(name, canonical parameters) of a calculator: what a gradient cache is keyed by."""
    name = getattr(factory, "calc_name", None) or getattr(calc, "name", None) or type(calc).__name__
    params = getattr(factory, "calc_params", None)
    if params is None:
        params = dict(getattr(calc, "parameters", {}) or {})
    params = {k: v for k, v in params.items() if k not in NOT_RESULTS}
    return str(name).lower(), json.dumps(params, sort_keys=True, default=str)


def apply_electronic_state(calc, atoms, charge: int, uhf: int, trusted: bool = False) -> str:
    """Tell ``calc`` the molecule's charge and unpaired electrons; returns how. Raises ValueError
    for a charged or open-shell molecule when the calculator's interface is unknown (unless the
    caller set them on it: ``trusted``)."""
    how = CHARGE_SPIN.get(type(calc).__name__)
    if how is None:
        if charge == 0 and uhf == 0 or trusted:
            return "not passed (neutral singlet)" if not trusted else "set on the calculator by the user"
        raise ValueError(f"{type(calc).__name__}: ase_diffrelax does not know how its ASE interface takes a charge "
                         f"({charge:+d}) or unpaired electrons ({uhf}); set them on the calculator yourself and pass "
                         "calc_state='set' (CLI: --calc-sets-charge), rather than run it as a neutral singlet")
    params, by_magmom = how(charge, uhf)
    calc.set(**params)
    if by_magmom:
        import numpy as np

        moments = np.zeros(len(atoms))
        moments[0] = uhf
        atoms.set_initial_magnetic_moments(moments)
    return ", ".join(f"{k}={v}" for k, v in params.items()) + (f", initial magnetic moment {uhf}" if by_magmom else "")
