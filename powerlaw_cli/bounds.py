"""The one rule for every number a user gives plsweep: it is finite and within its range.

Run settings, ``[launch]`` and ``[adaptive]`` settings (``config.coerce``), command-line options
(``cli.number_option``), the cells of a runs table (``fit_data``) and the numbers of ``fit.json``
(``fit_io.read_fit``) are all checked with ``Range``, so that ``inf`` is refused wherever ``nan`` is. Integers
are always finite; their range is that of a 64-bit integer (a column of the runs table) unless narrower.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from .errors import PlsweepError

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


@dataclass(frozen=True)
class Range:
    """An interval of numbers: ``low`` and ``high`` included unless ``open_low``/``open_high`` (the default
    is the whole real line: any finite number)."""

    low: float = -math.inf
    high: float = math.inf
    open_low: bool = False
    open_high: bool = False

    def holds(self, value: Any) -> bool:
        """Whether ``value`` is a number (not a bool), finite (a float) or a 64-bit integer, in the range."""
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if isinstance(value, float) and not math.isfinite(value):
            return False
        if isinstance(value, int) and not INT64_MIN <= value <= INT64_MAX:
            return False
        above = value > self.low if self.open_low else value >= self.low
        below = value < self.high if self.open_high else value <= self.high
        return above and below

    def mask(self, values: Any) -> Any:
        """``holds`` element by element for an array of floats (a numpy bool array)."""
        import numpy as np  # only where tables are checked

        x = np.asarray(values, dtype=float)
        with np.errstate(invalid="ignore"):
            above = x > self.low if self.open_low else x >= self.low
            below = x < self.high if self.open_high else x <= self.high
        return np.isfinite(x) & above & below

    def describe(self) -> str:
        """The range in words, e.g. "a finite number > 0", "a finite number in [0, 1)"."""
        low, high = math.isfinite(self.low), math.isfinite(self.high)
        if low and high:
            left, right = "(" if self.open_low else "[", ")" if self.open_high else "]"
            return f"a finite number in {left}{self.low:g}, {self.high:g}{right}"
        if low:
            return f"a finite number {'>' if self.open_low else '>='} {self.low:g}"
        if high:
            return f"a finite number {'<' if self.open_high else '<='} {self.high:g}"
        return "a finite number"

    def check(self, value: Any, where: str, error: type[PlsweepError] = PlsweepError) -> Any:
        """``value`` if it holds, else ``error("WHERE: must be RANGE, got VALUE")`` (one line)."""
        if not self.holds(value):
            wide = isinstance(value, int) and not INT64_MIN <= value <= INT64_MAX
            raise error(f"{where}: must be {'a 64-bit integer' if wide else self.describe()}, got {value!r}")
        return value


FINITE = Range()
"""Any finite number (and any 64-bit integer)."""
POSITIVE = Range(0.0, open_low=True)
NON_NEGATIVE = Range(0.0)
UNIT = Range(0.0, 1.0)
"""A fraction, 0 to 1."""
