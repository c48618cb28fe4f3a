"""What a ``fit.json`` must hold for ``export`` and ``--predict`` to read it: checked once, when it is read
(``fit_io.read_fit``), so that a file edited by hand or cut short is one line naming the file and the key,
never a KeyError or TypeError where the value is used.

The shapes are data: a dict is a table with those keys (each required), ``PerVariable`` a table with one
entry per variable of the law, and the leaves are kinds (``NUMBER``: finite, by the one rule of
``bounds``; ``NUMBER_OR_NULL``: an interval's end, null when the bootstrap had no draws).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .bounds import FINITE
from .fit_spec import FitError

NUMBER, NUMBER_OR_NULL, TEXT, FLAG, TEXTS = (
    "a number",
    "a number or null",
    "a string",
    "true or false",
    "strings",
)
KINDS = {
    NUMBER: FINITE.holds,
    NUMBER_OR_NULL: lambda v: v is None or FINITE.holds(v),
    TEXT: lambda v: isinstance(v, str),
    FLAG: lambda v: isinstance(v, bool),
    TEXTS: lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v),
}


@dataclass(frozen=True)
class PerVariable:
    """A table with one entry of shape ``entry`` per variable of the law."""

    entry: Any


@dataclass(frozen=True)
class Pair:
    """A list of two numbers, [low, high]."""


ESTIMATE = {"value": NUMBER, "low": NUMBER_OR_NULL, "high": NUMBER_OR_NULL}
LAW = {"name": TEXT, "status": TEXT, "y": TEXT, "variables": TEXTS}
FITTED = {
    **LAW,
    "formula": TEXT,
    "warnings": TEXTS,
    "ranges": PerVariable(Pair()),
    "bootstrap": {"ci": NUMBER, "samples": list},
}
FORMS = {
    "power": {
        **FITTED,
        "a": ESTIMATE,
        "exponents": PerVariable(
            {"value": NUMBER, "low": NUMBER_OR_NULL, "high": NUMBER_OR_NULL, "fixed": FLAG}
        ),
    },
    "hoffmann": {**FITTED, "E": ESTIMATE, "terms": PerVariable({"A": ESTIMATE, "alpha": ESTIMATE})},
}
"""The keys of a fitted law of each form (``fit_laws`` and ``fit_loss`` write more; these are read)."""


def check_fit(data: Any, path: str) -> dict:
    """``data`` (a parsed fit.json) if it has every key export reads, of the right kind; else
    ``FitError("PATH: KEY: what is wrong")``."""
    if not isinstance(data, dict) or not isinstance(data.get("laws"), dict):
        raise FitError(f"{path}: not a fit.json of plsweep (no laws)")
    for key in ("transfer", "n_cells", "n_groups"):
        if key in data and not isinstance(data[key], dict):
            raise FitError(f"{path}: {key}: expected a table, got {data[key]!r}")
    for name, law in data["laws"].items():
        where = f"{path}: laws.{name}"
        _check(law, LAW, where, [])
        if law["status"] == "failed":
            continue
        if law["status"] != "fitted":
            raise FitError(f"{where}.status: expected fitted or failed, got {law['status']!r}")
        form = law.get("form", "power")
        if form not in FORMS:
            raise FitError(f"{where}.form: expected {' or '.join(FORMS)}, got {form!r}")
        _check(law, FORMS[form], where, law["variables"])
        _check_samples(law, form, where)
    return data


def _check(value: Any, shape: Any, where: str, variables: list[str]) -> None:
    if isinstance(shape, dict):
        if not isinstance(value, dict):
            raise FitError(f"{where}: expected a table, got {value!r}")
        for key, inner in shape.items():
            if key not in value:
                raise FitError(f"{where}.{key}: missing")
            _check(value[key], inner, f"{where}.{key}", variables)
    elif isinstance(shape, PerVariable):
        _check(value, dict.fromkeys(variables, shape.entry), where, variables)
    elif isinstance(shape, Pair):
        if not (isinstance(value, list) and len(value) == 2 and all(FINITE.holds(v) for v in value)):
            raise FitError(f"{where}: expected [low, high], two numbers, got {value!r}")
    elif shape is list:
        if not isinstance(value, list):
            raise FitError(f"{where}: expected a list, got {value!r}")
    elif not KINDS[shape](value):
        raise FitError(f"{where}: expected {shape}, got {value!r}")


def _check_samples(law: dict, form: str, where: str) -> None:
    """Each bootstrap draw holds one number per coefficient of the law."""
    if form == "power":
        width = 1 + sum(not law["exponents"][v]["fixed"] for v in law["variables"])
    else:
        width = 1 + 2 * len(law["variables"])
    for i, sample in enumerate(law["bootstrap"]["samples"]):
        if not (isinstance(sample, list) and len(sample) == width and all(FINITE.holds(v) for v in sample)):
            raise FitError(f"{where}.bootstrap.samples[{i}]: expected {width} numbers, got {sample!r}")
