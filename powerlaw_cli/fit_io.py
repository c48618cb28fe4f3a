"""``fit.json``: where it goes, writing and reading it, and predictions from it (all ``plsweep export``
and ``--predict`` need)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from .fit_laws import FitError, Prediction, predict_law
from .fit_schema import check_fit
from .store import atomic_write

if TYPE_CHECKING:
    from .fit import FitResult


def default_fit_dir(path: str | Path) -> Path:
    """Where ``fit`` writes: ``DIR/fit`` for a sweep directory, ``fit`` beside a table file."""
    path = Path(path)
    return path / "fit" if path.is_dir() else path.parent / "fit"


def write_fit(result: FitResult | dict, out_dir: str | Path) -> Path:
    """Write ``fit.json`` into ``out_dir`` atomically; return its path."""
    data = result.to_dict() if hasattr(result, "to_dict") else result
    path = Path(out_dir) / "fit.json"
    atomic_write(path, json.dumps(data, indent=1, allow_nan=False).encode())
    return path


def find_fit(path: str | Path) -> Path:
    """The ``fit.json`` that ``path`` names: the file itself, or ``DIR/fit.json``, or ``DIR/fit/fit.json``."""
    path = Path(path)
    for candidate in (path, path / "fit.json", path / "fit" / "fit.json"):
        if candidate.is_file():
            return candidate
    raise FitError(f"{path}: no fit.json; run `plsweep fit` first")


def read_fit(path: str | Path) -> dict:
    """Read the ``fit.json`` that ``path`` names (see ``find_fit``), checked against ``fit_schema``: a key
    missing or of the wrong kind is one line naming the file and the key."""
    found = find_fit(path)
    try:
        data = json.loads(found.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise FitError(f"{found}: not a valid fit.json ({err})") from None
    except RecursionError:
        raise FitError(f"{found}: not a valid fit.json (nested too deeply)") from None
    return check_fit(data, str(found))


def predict(
    fit: FitResult | dict, values: dict[str, float] | None = None, law: str = "power", **kw: float
) -> Prediction:
    """A law's value with its bootstrap interval, e.g. ``predict(fit, batch=1024, tokens=1e12)``."""
    data = fit.to_dict() if hasattr(fit, "to_dict") else fit
    if law not in data["laws"]:
        raise FitError(f"no law {law!r} in the fit; laws: {', '.join(data['laws'])}")
    return predict_law(data["laws"][law], {**(values or {}), **kw})


def predict_all(fit: FitResult | dict, values: dict[str, float]) -> dict[str, Prediction | str]:
    """Every law at ``values`` (for ``--predict``): a Prediction, or why that law cannot answer."""
    data = fit.to_dict() if hasattr(fit, "to_dict") else fit
    out: dict[str, Prediction | str] = {}
    for name, law in data["laws"].items():
        try:
            out[name] = predict_law(law, values)
        except FitError as err:
            out[name] = str(err)
    return out
