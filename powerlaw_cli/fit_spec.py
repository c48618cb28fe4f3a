"""What a law is: its quantity, its variables, their units, and how ``--law`` text is read.

A law is written ``"Y ~ X1 + X2"``. Y is one of the three quantities a sweep measures:

- ``lr_opt``: the optimal LR. With the batch among its variables (``lr_opt ~ batch + tokens``) it is fitted
  to the optimum of every LR curve (one per cell: every setting but LR and seed fixed); without the batch
  (``lr_opt ~ N + D``) to the optimal LR *at the optimal batch* of every group (every setting but LR,
  batch and seed fixed), which is the same thing when the batch does not vary inside a group.
- ``batch_opt``: the optimal batch size of every group, in sequences (``B_opt`` is accepted).
- ``loss_opt``: the loss at the optimum of every group (``loss`` is accepted), or the final loss of a
  plain table of runs without an LR sweep.

``lr_opt`` and ``batch_opt`` laws are power laws, Y = a * prod(X_i ^ e_i) (``X^1`` fixes an exponent, the
Power paper's form is ``lr_opt ~ batch^1 + tokens``); ``loss_opt`` laws have the form of Hoffmann et al.
(2022), L = E + sum_i A_i * X_i ^ -alpha_i (``loss ~ N + D`` is their L(N, D)). Short variable names:
batch, B, bs -> batch_size; tokens, T, D -> tokens; N, params -> params_non_embedding.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal, get_args

from .errors import PlsweepError

ALIASES = {
    "batch": "batch_size",
    "b": "batch_size",
    "bs": "batch_size",
    "t": "tokens",
    "d": "tokens",
    "n": "params_non_embedding",
    "params": "params_non_embedding",
}
TARGET_ALIASES = {"loss": "loss_opt", "b_opt": "batch_opt", "bs_opt": "batch_opt"}
TARGETS = ("lr_opt", "batch_opt", "loss_opt")
SHORT = {"params_non_embedding": "N", "tokens": "D", "batch_size": "B", "batch_tokens": "B_tokens"}
BATCH_COLUMNS = ("batch_size", "batch_tokens")
BatchUnit = Literal["sequences", "tokens"]
BATCH_UNITS: tuple[str, ...] = get_args(BatchUnit)
"""The unit of a table's batch column (``--batch-unit``); defined here, with no heavy imports, for the CLI."""
MAX_EXPONENT_CI_WIDTH = 0.5  # a free exponent whose interval is wider than this is "poorly determined"
CELLS_PER_PARAMETER = 3  # fewer points than this times the coefficients: a warning
UNITS = {
    "lr": "base Adam LR at width == base_width, before muP multipliers",
    "lr_opt": "base Adam LR at width == base_width, before muP multipliers",
    "batch_opt": "sequences",
    "loss_opt": "nats/token (the table's loss)",
    "batch_size": "sequences",
    "batch_tokens": "tokens per step",
    "tokens": "tokens (planned budget)",
    "params_non_embedding": "parameters (non-embedding)",
    "width": "d_model",
    "seq_len": "tokens per sequence",
}
"""The unit of every quantity and of the usual variables (others: the table's own unit)."""
SHORT_UNITS = {
    "lr_opt": "base LR",
    "batch_opt": "sequences",
    "loss_opt": "loss",
    "batch_size": "sequences",
    "batch_tokens": "tokens",
    "tokens": "tokens",
    "params_non_embedding": "parameters",
    "width": "d_model",
}
"""The same, in a word, for table columns and figure axes."""


class FitError(PlsweepError):
    """The data or the options cannot support the requested fit; the message says why, in one line."""


def canonical(name: str) -> str:
    """Our column name for a variable name or alias (``batch`` -> ``batch_size``, ``N`` -> params)."""
    name = name.strip()
    return ALIASES.get(name.lower(), name)


def canonical_target(name: str) -> str:
    """Our name of a law's quantity (``loss`` -> ``loss_opt``)."""
    name = name.strip()
    return TARGET_ALIASES.get(name.lower(), name)


@dataclass(frozen=True)
class LawSpec:
    """A law: its quantity ``y``, its variables, and the exponents fixed by the formula (power form)."""

    name: str
    y: str
    variables: tuple[str, ...]
    fixed: dict[str, float] = field(default_factory=dict)

    @property
    def form(self) -> str:
        """``power`` (y = a * prod x^e) or ``hoffmann`` (y = E + sum A x^-alpha)."""
        return "hoffmann" if self.y == "loss_opt" else "power"

    @property
    def free(self) -> list[str]:
        return [v for v in self.variables if v not in self.fixed]

    @property
    def per_cell(self) -> bool:
        """An lr_opt law with the batch among its variables is fitted to every LR curve's optimum;
        every other law to the joint optimum of every group."""
        return self.y == "lr_opt" and any(v in BATCH_COLUMNS for v in self.variables)

    def formula(self) -> str:
        if self.form == "hoffmann":
            return f"{self.y} = E + " + " + ".join(f"A_{v} * {v}^-alpha_{v}" for v in self.variables)
        terms = [f"{v}^{self.fixed[v]:g}" if v in self.fixed else f"{v}^e_{v}" for v in self.variables]
        return f"{self.y} = a * " + " * ".join(terms)

    def units(self) -> dict[str, str]:
        return {v: UNITS.get(v, "as in the table") for v in (self.y, *self.variables)}


def parse_law(text: str, name: str | None = None) -> LawSpec:
    """Parse ``"lr_opt ~ batch_size^1 + tokens"`` (``var^value`` fixes that exponent of a power law)."""
    if "~" not in text:
        raise FitError(f"law {text!r}: expected 'Y ~ X1 + X2', e.g. 'lr_opt ~ N + D' or 'loss ~ N + D'")
    left, right = text.split("~", 1)
    y = canonical_target(left)
    if y not in TARGETS:
        raise FitError(
            f"law {text!r}: the left side {left.strip()!r} must be one of lr_opt, batch_opt, loss (loss_opt)"
        )
    variables, fixed = [], {}
    for term in filter(None, (t.strip() for t in right.split("+"))):
        match = re.fullmatch(r"([A-Za-z_][\w]*)\s*(?:\^\s*([-+0-9.eE]+))?", term)
        if not match:
            raise FitError(f"law {text!r}: cannot read the term {term!r}; write NAME or NAME^EXPONENT")
        var = canonical(match.group(1))
        if var in ("lr", "loss", *TARGETS) or var in variables:
            raise FitError(f"law {text!r}: {match.group(1)!r} cannot be a variable here")
        variables.append(var)
        if match.group(2) is not None:
            try:
                fixed[var] = float(match.group(2))
            except ValueError:
                raise FitError(f"law {text!r}: exponent {match.group(2)!r} is not a number") from None
    if not variables:
        raise FitError(f"law {text!r}: no variables on the right of '~'")
    if y == "loss_opt" and fixed:
        raise FitError(f"law {text!r}: a loss law (E + A * X^-alpha) takes no fixed exponents")
    return LawSpec(name or default_name(y, variables, fixed), y, tuple(variables), fixed)


def default_name(y: str, variables: list[str], fixed: dict[str, float]) -> str:
    """``lr_opt_N_D`` for ``lr_opt ~ N + D`` (``_B1`` for a fixed exponent 1): usable in file names."""
    parts = [
        SHORT.get(v, v) + (f"{fixed[v]:g}".replace("-", "m").replace(".", "p") if v in fixed else "")
        for v in variables
    ]
    return "_".join([y, *parts])


def parse_law_options(items: list[str]) -> dict[str, str]:
    """``--law`` values, ``"NAME=Y ~ X + ..."`` or ``"Y ~ X + ..."`` (named after its terms), checked."""
    out: dict[str, str] = {}
    for item in items:
        head, sep, tail = item.partition("=")
        named = sep and "~" not in head
        name, formula = (head.strip(), tail.strip()) if named else (None, item.strip())
        if named and not re.fullmatch(r"[\w.-]+", name):
            raise FitError(
                f"--law {item!r}: the name {name!r} may hold letters, digits, '_', '.' and '-' only"
            )
        spec = parse_law(formula, name)
        if spec.name in out:
            raise FitError(f"--law {item!r}: a second law named {spec.name!r}; name them NAME=FORMULA")
        out[spec.name] = formula
    return out


def law_data(points, spec: LawSpec):
    """The columns ``spec`` needs from ``points`` as floats, checked: present, known, positive.

    The error names the column and why, e.g. a variable that varies inside a cell or group is unknown
    (NaN) there, and says what to do about it.
    """
    for column in (spec.y, *spec.variables):
        if column not in points:
            hint = (
                "" if column in TARGETS else f"; map yours with --col {SHORT.get(column, column)}=YOUR_COLUMN"
            )
            raise FitError(f"law {spec.name!r}: no column {column!r} in the table{hint}")
    data = points[[spec.y, *spec.variables]].astype(float)
    for column in data:
        unknown, bad = int(data[column].isna().sum()), int((data[column] <= 0).sum())
        if unknown and column in spec.variables:
            raise FitError(
                f"law {spec.name!r}: {column} is unknown in {unknown} of {len(data)} points: it varies "
                f"inside a cell or group; add it to --group-by"
            )
        if unknown or bad:
            raise FitError(
                f"law {spec.name!r}: {column} is {'missing' if unknown else 'not positive'} in "
                f"{unknown or bad} of {len(data)} points"
            )
    return data


def few_points_warnings(n_points: int, n_coef: int) -> list[str]:
    """A warning when a law has fewer than ``CELLS_PER_PARAMETER`` points per coefficient."""
    if n_points < CELLS_PER_PARAMETER * n_coef:
        return [f"few points: {n_points} for {n_coef} coefficients (want >= {CELLS_PER_PARAMETER * n_coef})"]
    return []


def bootstrap_warnings(boot: dict) -> list[str]:
    """A warning when more than 10% of the bootstrap resamples could not be fitted."""
    if boot["n_ok"] < 0.9 * boot["n"]:
        return [f"only {boot['n_ok']} of {boot['n']} bootstrap resamples were fittable"]
    return []
