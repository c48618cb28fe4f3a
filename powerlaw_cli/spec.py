"""Sweep files: load and validate a TOML spec, expand its grid into runs with stable ids.

A sweep file is data (TOML, never executed)::

    [sweep]                     name (default: the file's stem) and description
    [model] ... [averaging]     the base settings of every run (the sections of config.py)
    [grid]                      axes: any setting becomes a list or a range
    optimizer.lr = { log = [1e-4, 1e-1], num = 13 }
    training.batch_size = { pow2 = [16, 512] }
    training.seed = [0, 1]
    [[grid.zip]]                settings that move together (equal-length lists)
    model.width = [64, 128, 256]
    model.n_heads = [1, 2, 4]
    [launch]                    cluster defaults (config.LaunchConfig)
    [trainer] and [params]      your own trainer instead of the built-in proxy (trainer_spec.py)

Runs are the product of all axes (each zip group is one axis). A wsd_s run whose tokens are not an
axis expands to one run per decay point. Relative data paths are resolved against the spec file's folder.
"""

from __future__ import annotations

import itertools
import math
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import (
    SECTION_NAMES,
    SECTION_TYPES,
    ConfigError,
    RunConfig,
    coerce_section,
    section_from_dict,
    stable_hash,
)
from .schedules import build_schedule
from .sweep_settings import AdaptiveSettings, LaunchConfig, override_launch
from .trainer_spec import parse_external

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

TOP_LEVEL = ("sweep", *SECTION_NAMES, "grid", "launch", "adaptive", "trainer", "params")
GRID_SECTIONS = (*SECTION_NAMES, "params")
SWEEP_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,99}")
"""A sweep's name names its directory and its Slurm jobs: a safe alphabet, no path or shell characters."""
RANGE_FORMS = "a list, {log = [lo, hi], num = N}, {lin = [lo, hi], num = N}, {pow2 = [lo, hi]} or {start = x, ratio = r, num = N}"


@dataclass
class Sweep:
    """A validated sweep: its runs (unique by run_id, in grid order) and launch defaults.

    An adaptive sweep (``[adaptive]``) has no runs in its file: its ``templates`` are the grid without the
    LR (one run per cell and seed, at the file's base LR), and rounds add runs at LRs of its lattice.
    """

    name: str
    path: Path
    text: str
    description: str
    runs: list[RunConfig]
    launch: LaunchConfig
    axes: dict[str, list[Any]] = field(default_factory=dict)
    duplicates: int = 0
    adaptive: AdaptiveSettings | None = None
    templates: list[RunConfig] = field(default_factory=list)

    @property
    def sweep_hash(self) -> str:
        """The sweep's identity: its name and the set of its runs (not their order, not [launch]); for an
        adaptive sweep, its cells and LR lattice (its stopping rules may change between launches)."""
        if self.adaptive is not None:
            lattice = {"lr_min": self.adaptive.lr_min, "lr_step_log2": self.adaptive.lr_step_log2}
            cells = sorted(run.run_id for run in self.templates)
            return stable_hash({"name": self.name, "cells": cells, "lattice": lattice})
        return stable_hash({"name": self.name, "runs": sorted(run.run_id for run in self.runs)})


def load_sweep(path: str | Path, launch_overrides: dict[str, Any] | None = None) -> Sweep:
    """Read, validate and expand a sweep file; every error is one line naming the file and setting.

    ``launch_overrides``: ``[launch]`` settings from the command line, applied before the grid is counted
    (so that ``--set max_runs=N`` is the limit the guard uses).
    """
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as err:
        raise ConfigError(f"{path}: cannot read the sweep file ({err.strerror})") from None
    return parse_sweep(parse_toml(text, str(path)), path, text, launch_overrides)


MAX_NESTING = 32
"""Tables and lists nested deeper than this are refused (a sweep file needs 5 levels: grid.zip[i].a.b list)."""


class InvalidToml(ConfigError):
    """Text that is not TOML (``--set`` takes such a value as a plain string)."""


def parse_toml(text: str, where: str) -> dict[str, Any]:
    """Parse TOML text from a file or an option: one line naming ``where`` for text that is not TOML
    (``InvalidToml``) and for tables or lists nested deeper than ``MAX_NESTING``, never a RecursionError."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise InvalidToml(f"{where}: invalid TOML: {err}") from None
    except RecursionError:
        raise ConfigError(f"{where}: tables or lists nested too deeply to parse") from None
    stack: list[tuple[Any, int]] = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > MAX_NESTING:
            raise ConfigError(f"{where}: tables and lists nested more than {MAX_NESTING} levels deep")
        children = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return data


def parse_sweep(
    data: dict[str, Any], path: Path, text: str = "", launch_overrides: dict[str, Any] | None = None
) -> Sweep:
    """Validate the parsed TOML of a sweep file and expand it (``launch_overrides``: see ``load_sweep``)."""
    unknown = sorted(set(data) - set(TOP_LEVEL))
    if unknown:
        raise ConfigError(f"{path}: unknown section [{unknown[0]}]; valid sections: {', '.join(TOP_LEVEL)}")
    header = data.get("sweep", {})
    extra = sorted(set(header) - {"name", "description"})
    if extra:
        raise ConfigError(f"{path}: sweep.{extra[0]}: unknown setting; valid: name, description")
    name = header.get("name", path.stem)
    if not isinstance(name, str) or not SWEEP_NAME.fullmatch(name):
        raise ConfigError(
            f"{path}: sweep.name: {name!r} must be 1 to 100 letters, digits and . _ + -, "
            "starting with a letter or digit"
        )
    base = {section: dict(data.get(section, {})) for section in SECTION_NAMES}
    for (
        section,
        section_type,
    ) in SECTION_TYPES.items():  # names and types: errors name the file, not a grid point
        coerce_section(section_type, base[section], f"{path}: {section}")
    launch = section_from_dict(LaunchConfig, data.get("launch", {}), f"{path}: launch")
    if launch_overrides:
        launch = override_launch(launch, launch_overrides)
    axes = parse_grid(data.get("grid", {}), path, launch.max_runs, base["schedule"])
    flat_axes = {key: values for group in axes for key, values in group.items()}
    base |= parse_external(data, path, flat_axes)  # a [trainer] sweep's trainer and params
    runs, duplicates = expand(base, axes, path)
    sweep = Sweep(name, path, text, str(header.get("description", "")), runs, launch, flat_axes, duplicates)
    if "adaptive" in data:
        if "optimizer.lr" in flat_axes:
            raise ConfigError(
                f"{path}: grid.optimizer.lr: an adaptive sweep chooses its LRs; give [adaptive] "
                "lr_min and lr_max instead of an LR axis"
            )
        sweep.adaptive = section_from_dict(AdaptiveSettings, data["adaptive"], f"{path}: adaptive")
        sweep.templates, sweep.runs = sweep.runs, []
    return sweep


def _resolve_data_path(data: dict[str, dict[str, Any]], spec_path: Path) -> dict[str, dict[str, Any]]:
    """A relative data.path is relative to the spec file's folder; workers get it absolute."""
    path = data["data"].get("path")
    if isinstance(path, str) and path:
        data = {
            **data,
            "data": {**data["data"], "path": str((spec_path.parent / Path(path).expanduser()).resolve())},
        }
    return data


def parse_grid(
    grid: dict[str, Any], path: Path, max_runs: int = LaunchConfig.max_runs, schedule: dict | None = None
) -> list[dict[str, list[Any]]]:
    """Grid axes as groups: one group per ordinary axis, one per [[grid.zip]] entry.

    The runs are counted from the axes' lengths first (a range's ``num``, never its values; a wsd_s base
    ``schedule`` multiplies them by its decay points): a grid of more than ``max_runs`` runs is refused
    before any value of an axis is made.
    """
    groups: list[dict[str, tuple[Any, str]]] = []
    for section, entries in grid.items():
        if section == "zip":
            groups.extend(_parse_zip(entries, path))
            continue
        if section not in GRID_SECTIONS or not isinstance(entries, dict):
            raise ConfigError(
                f"{path}: grid.{section}: grid keys are SECTION.FIELD with SECTION one of "
                f"{', '.join(GRID_SECTIONS)}, or [[grid.zip]]"
            )
        for name, axis in entries.items():
            key = f"{section}.{name}"
            groups.append({key: (axis, f"{path}: grid.{key}")})
    lengths = [axis_length(*next(iter(group.values()))) for group in groups]
    per_point = _runs_per_point(schedule or {}, {key for group in groups for key in group})
    count = math.prod(lengths) * per_point
    if count > max_runs:
        labels = [next(iter(g)) if len(g) == 1 else f"zip({', '.join(g)})" for g in groups]
        parts = [f"{label} {n:,}" for label, n in zip(labels, lengths, strict=True)]
        parts += [f"{per_point} decay points"] if per_point > 1 else []
        raise ConfigError(
            f"{path}: the grid has {count:,} runs ({' x '.join(parts)}), more than launch.max_runs = "
            f"{max_runs:,}; shrink the grid, or raise max_runs in [launch] if you mean it"
        )
    return [{key: axis_values(axis, where) for key, (axis, where) in group.items()} for group in groups]


def _parse_zip(entries: Any, path: Path) -> list[dict[str, tuple[Any, str]]]:
    """The [[grid.zip]] groups, {key: (axis, where)} each, their axes of equal (counted) lengths."""
    if not isinstance(entries, list):
        raise ConfigError(f"{path}: grid.zip: write zipped axes as [[grid.zip]] tables")
    groups = []
    for i, entry in enumerate(entries):
        group: dict[str, tuple[Any, str]] = {}
        if not isinstance(entry, dict):
            raise ConfigError(f"{path}: grid.zip[{i}]: write zipped axes as [[grid.zip]] tables")
        for section, fields in entry.items():
            if section not in GRID_SECTIONS or not isinstance(fields, dict):
                raise ConfigError(
                    f"{path}: grid.zip[{i}].{section}: keys are SECTION.FIELD, SECTION one of "
                    f"{', '.join(GRID_SECTIONS)}"
                )
            for name, axis in fields.items():
                group[f"{section}.{name}"] = (axis, f"{path}: grid.zip[{i}].{section}.{name}")
        lengths = {key: axis_length(*axis) for key, axis in group.items()}
        if len(set(lengths.values())) > 1:
            raise ConfigError(f"{path}: grid.zip[{i}]: zipped axes need equal lengths, got {lengths}")
        if group:
            groups.append(group)
    return groups


def _runs_per_point(schedule: dict[str, Any], keys: set[str]) -> int:
    """Runs per grid point: a wsd_s sweep without a tokens axis has one per decay point of its base."""
    points = schedule.get("decay_points")
    wsd_s = schedule.get("name") == "wsd_s" or "schedule.name" in keys
    if wsd_s and "training.tokens" not in keys and isinstance(points, list) and points:
        return len(points)
    return 1


def axis_length(axis: Any, where: str) -> int:
    """How many values an axis has, counted without making them (an axis that is not one of
    ``RANGE_FORMS`` counts 1: ``axis_values`` names its error)."""
    if isinstance(axis, list):
        return len(axis)
    if not isinstance(axis, dict):
        return 1
    if "num" in axis:
        return _count(axis["num"], where)
    if set(axis) == {"pow2"}:
        try:
            lo, hi = _pair(axis["pow2"], where)
            return max(math.floor(math.log2(hi)) - math.ceil(math.log2(lo)) + 1, 1)
        except (TypeError, ValueError, OverflowError):
            return 1
    return 1


def axis_values(axis: Any, where: str) -> list[Any]:
    """The values of one grid axis: a list, or a range table (see RANGE_FORMS)."""
    if isinstance(axis, list):
        if not axis:
            raise ConfigError(f"{where}: an axis needs at least one value")
        return axis
    if not isinstance(axis, dict):
        raise ConfigError(f"{where}: expected {RANGE_FORMS}; got {axis!r}")
    keys = set(axis)
    try:
        if keys == {"log", "num"} or keys == {"lin", "num"}:
            lo, hi = _pair(axis["log"] if "log" in axis else axis["lin"], where)
            num = _count(axis["num"], where)
            if "log" in axis:
                if lo <= 0 or hi <= 0:
                    raise ConfigError(f"{where}: log range bounds must be > 0")
                return [
                    _round(math.exp(math.log(lo) + (math.log(hi) - math.log(lo)) * i / max(num - 1, 1)))
                    for i in range(num)
                ]
            return [_round(lo + (hi - lo) * i / max(num - 1, 1)) for i in range(num)]
        if keys == {"pow2"}:
            lo, hi = _pair(axis["pow2"], where)
            if lo <= 0 or hi < lo or not (math.log2(lo).is_integer() and math.log2(hi).is_integer()):
                raise ConfigError(f"{where}: pow2 = [lo, hi] needs powers of two with lo <= hi")
            return [2**k for k in range(int(math.log2(lo)), int(math.log2(hi)) + 1)]
        if keys == {"start", "ratio", "num"}:
            start, ratio, num = float(axis["start"]), float(axis["ratio"]), _count(axis["num"], where)
            if start <= 0 or ratio <= 0:
                raise ConfigError(f"{where}: start and ratio must be > 0")
            return [_round(start * ratio**i) for i in range(num)]
    except (TypeError, ValueError) as err:
        if isinstance(err, ConfigError):
            raise
        raise ConfigError(f"{where}: expected {RANGE_FORMS}; got {axis!r}") from None
    raise ConfigError(f"{where}: expected {RANGE_FORMS}; got {axis!r}")


def _pair(value: Any, where: str) -> tuple[float, float]:
    if not (isinstance(value, list) and len(value) == 2):
        raise ConfigError(f"{where}: a range needs [lo, hi], got {value!r}")
    return float(value[0]), float(value[1])


def _count(value: Any, where: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"{where}: num must be a positive integer, got {value!r}")
    return value


def _round(value: float) -> float:
    """12 significant digits: a range gives the same numbers however it is spelled (1e-3 == 0.001)."""
    return float(f"{value:.12g}")


def expand(
    base: dict[str, dict[str, Any]], axes: list[dict[str, list[Any]]], path: Path
) -> tuple[list[RunConfig], int]:
    """The product of all axis groups applied to the base settings; unique runs in grid order.

    Equal sections are built once and shared between runs, and each distinct (schedule, budget, batch)
    is checked once: a 100,000-run grid costs seconds, not minutes.
    """
    runs: dict[str, RunConfig] = {}
    duplicates = 0
    tokens_on_grid = any("training.tokens" in group for group in axes)
    choices = [
        [dict(zip(group, values, strict=True)) for values in zip(*group.values(), strict=True)]
        for group in axes
    ]
    shared: dict[tuple, Any] = {}
    checked: set[tuple[int, int, int]] = set()
    for combination in itertools.product(*choices):
        overrides = {key: value for part in combination for key, value in part.items()}
        for config in _configs_at(base, overrides, tokens_on_grid, path, shared, checked):
            if config.run_id in runs:
                duplicates += 1
            else:
                runs[config.run_id] = config
    return list(runs.values()), duplicates


def _configs_at(
    base: dict,
    overrides: dict[str, Any],
    tokens_on_grid: bool,
    path: Path,
    shared: dict[tuple, Any],
    checked: set[tuple[int, int, int]],
) -> list[RunConfig]:
    data = {section: dict(values) for section, values in base.items()}
    for key, value in overrides.items():
        section, name = key.split(".", 1)
        data[section][name] = value
    data = _resolve_data_path(data, path)
    where = f"{path}: grid point {_describe(overrides)}" if overrides else str(path)
    schedule = data["schedule"]
    if schedule.get("name") == "wsd_s" and not tokens_on_grid:
        points = schedule.get("decay_points", [])
        if not isinstance(points, list) or not points:
            raise ConfigError(f"{path}: schedule.decay_points: wsd_s needs a list of token budgets")
        runs = [
            RunConfig.from_dict({**data, "training": {**data["training"], "tokens": p}}, where, shared)
            for p in points
        ]
    else:
        runs = [RunConfig.from_dict(data, where, shared)]
    for (
        run
    ) in runs:  # an impossible schedule fails here, before anything is submitted (the LR cannot make it so)
        if run.trainer is None and run.training.tokens < run.batch_tokens:  # a trainer counts its own batches
            raise ConfigError(
                f"{where}: training.tokens: {run.training.tokens} is less than one batch (training.batch_size "
                f"{run.training.batch_size} x model.seq_len {run.model.seq_len} = {run.batch_tokens} tokens); "
                "a run trains whole batches, so raise tokens or lower the batch"
            )
        key = (id(run.schedule), run.training.tokens, run.training.batch_size)
        if key in checked:
            continue
        try:
            build_schedule(run.schedule, run.optimizer.lr, run.training.tokens, run.training.batch_size)
        except ConfigError as err:
            raise ConfigError(f"{where}: {err}") from None
        checked.add(key)
    return runs


def _describe(overrides: dict[str, Any]) -> str:
    return ", ".join(f"{key}={value}" for key, value in overrides.items())
