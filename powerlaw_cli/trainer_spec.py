"""A sweep of the user's own trainer: the ``[trainer]`` and ``[params]`` sections of a sweep file.

::

    [trainer]
    command = ["python", "train.py", "--lr", "{optimizer.lr}", "--out", "{run_dir}"]
    # or: entry_point = "package.module:function"
    timeout_seconds = 0          # stop and fail an attempt that runs longer (0: no limit)
    [params]                     # free-form settings of the trainer, sweepable as params.NAME
    hidden = 64

A run of such a sweep carries its ``trainer`` (what the worker runs) and ``params`` in its config
(``RunConfig``); both enter its id, so it never shares one with a built-in proxy run. The settings the fit
reads keep their names (``STANDARD``); any other setting of the built-in proxy's sections is refused in a
``[trainer]`` sweep unless its command passes it on as a placeholder. Nothing here runs anything or
imports torch: ``trainer_command`` runs it.
"""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path
from typing import Any

from .config import SECTION_NAMES, SECTION_TYPES, ConfigError, RunConfig, field_types

TRAINER_KEYS = ("command", "entry_point", "timeout_seconds")
GIVEN = ("run_dir", "run_id", "settings", "result")
"""Placeholders plsweep fills in itself: the run's folder, its id, its settings file and its result file."""
STANDARD = (
    "optimizer.lr",
    "training.batch_size",
    "training.tokens",
    "training.seed",
    "model.width",
    "model.depth",
    "model.seq_len",
)
"""The settings a [trainer] sweep may set without passing them on: those the fit and export read."""
PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)?)\}")
ENTRY_POINT = re.compile(r"[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_]\w*")
OURS = {
    **{
        key.partition(".")[2]: f"the standard setting {key}, which the fit reads: set {key}"
        for key in STANDARD
    },
    **{name: "a name plsweep gives itself" for name in (*GIVEN, *SECTION_NAMES)},
}
"""The names a param may not take, and why (its column, ``params.NAME``, cannot collide with ours)."""


def parse_external(data: dict[str, Any], path: Path, axes: dict[str, list[Any]]) -> dict[str, Any]:
    """``{"trainer": ..., "params": ...}`` of a sweep file with a [trainer] section (``{}`` without one), checked:
    a command or an entry point; every placeholder names a setting; no setting of the built-in proxy is set
    unless the command passes it on; params are plain values, one kind per axis."""
    params_axes = {key: values for key, values in axes.items() if key.startswith("params.")}
    if "trainer" not in data:
        if "params" in data or params_axes:
            raise ConfigError(
                f"{path}: [params] are the settings of your own trainer: add a [trainer] section"
            )
        return {}
    raw = data["trainer"]
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: [trainer] must be a table")
    unknown = sorted(set(raw) - set(TRAINER_KEYS))
    if unknown:
        raise ConfigError(f"{path}: trainer.{unknown[0]}: unknown setting; valid: {', '.join(TRAINER_KEYS)}")
    if ("command" in raw) == ("entry_point" in raw):
        raise ConfigError(f"{path}: [trainer]: give either command (an argv list) or entry_point, not both")
    params = data.get("params", {})
    if not isinstance(params, dict):
        raise ConfigError(f"{path}: [params] must be a table of settings")
    for name, value in params.items():
        check_param(name, value, f"{path}: params.{name}")
    for key, values in params_axes.items():
        for value in values:
            check_param(key.partition(".")[2], value, f"{path}: grid.{key}")
        if len({_kind(v) for v in values}) > 1:
            raise ConfigError(
                f"{path}: grid.{key}: an axis of a param holds one kind of value, got {values!r}"
            )
    param_names = set(params) | {key.partition(".")[2] for key in params_axes}
    trainer: dict[str, Any] = {"root": str(path.resolve().parent)}
    named: set[str] = set()
    if "command" in raw:
        command = raw["command"]
        if not (isinstance(command, list) and command and all(isinstance(a, str) and a for a in command)):
            raise ConfigError(
                f'{path}: trainer.command: expected a list of non-empty strings, e.g. ["python", "train.py"]'
            )
        trainer["command"] = list(command)
        _check_program(command[0], path)
        for name in (n for arg in command for n in PLACEHOLDER.findall(arg)):
            if name not in GIVEN and not _is_setting(name, param_names):
                raise ConfigError(
                    f"{path}: trainer.command: placeholder {{{name}}} names no setting; use SECTION.NAME, "
                    f"params.NAME or one of {', '.join('{' + g + '}' for g in GIVEN)}"
                )
            named.add(name)
    else:
        entry = raw["entry_point"]
        if not (isinstance(entry, str) and ENTRY_POINT.fullmatch(entry)):
            raise ConfigError(
                f'{path}: trainer.entry_point: expected "package.module:function", got {entry!r}'
            )
        trainer["entry_point"] = entry
    timeout = raw.get("timeout_seconds", 0)
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout < 0:
        raise ConfigError(f"{path}: trainer.timeout_seconds: expected a number >= 0, got {timeout!r}")
    trainer["timeout_seconds"] = float(timeout)
    set_here = {f"{s}.{k}" for s in SECTION_NAMES for k in data.get(s, {})}
    set_here |= {key for key in axes if not key.startswith("params.")}
    for key in sorted(set_here - set(STANDARD) - named):
        raise ConfigError(
            f"{path}: {key}: a setting of the built-in proxy; a [trainer] sweep sets it only if its command "
            f"passes it on ({{{key}}}); put your trainer's own settings in [params]"
        )
    trainer["settings"] = sorted(set(STANDARD) | set_here)
    return {"trainer": trainer, "params": dict(params)}


def _check_program(program: str, path: Path) -> None:
    """The program of a command exists: ``python`` (the worker's interpreter), a path (relative to the sweep
    file's folder) or a name on PATH."""
    if program == "python" or PLACEHOLDER.search(program):
        return
    if "/" in program:
        if not (path.parent / program).expanduser().is_file():
            raise ConfigError(
                f"{path}: trainer.command: program {program!r}: no such file next to the sweep file"
            )
    elif shutil.which(program) is None:
        raise ConfigError(f"{path}: trainer.command: program {program!r} not found on PATH")


def check_param(name: str, value: Any, where: str) -> None:
    """A [params] setting: a plain name that is none of ours, holding a number, string, boolean or a list of them."""
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
        raise ConfigError(f"{where}: a param's name is letters, digits and _ (it becomes params.{name})")
    if name in OURS:
        raise ConfigError(f"{where}: {name!r} is {OURS[name]}; give the param another name")
    for item in value if isinstance(value, list) else [value]:
        finite = not isinstance(item, float) or math.isfinite(item)
        if not (isinstance(item, (bool, int, float, str)) and finite):
            raise ConfigError(f"{where}: expected a number, string, boolean or a list of them, got {value!r}")


def _is_setting(name: str, params: set[str]) -> bool:
    section, _, field = name.partition(".")
    if section == "params":
        return field in params
    return section in SECTION_TYPES and field in field_types(SECTION_TYPES[section])


def _kind(value: Any) -> str:
    return (
        "number" if isinstance(value, (int, float)) and not isinstance(value, bool) else type(value).__name__
    )


def run_settings(run: RunConfig) -> dict[str, Any]:
    """The settings a trainer is given (the PLSWEEP_SETTINGS file): {section: {name: value}} of the standard
    settings and those its sweep file sets, its params as {"params": {...}}, and its run id."""
    assert run.trainer is not None, "only a [trainer] run has settings for a trainer"
    flat = run.flat()
    out: dict[str, Any] = {"run_id": run.run_id}
    for key in run.trainer.get("settings", STANDARD):
        section, _, name = key.partition(".")
        out.setdefault(section, {})[name] = flat[key]
    out["params"] = dict(run.params)
    return out


def placeholder_value(value: Any) -> str:
    """A setting as one argv word: a string as it is, anything else as JSON (0.001, 64, true, [1, 2])."""
    return value if isinstance(value, str) else json.dumps(value)


def fill(arg: str, values: dict[str, Any]) -> str:
    """An argv word with its placeholders filled in from ``values`` ({"optimizer.lr": 0.001, ...})."""
    return PLACEHOLDER.sub(lambda m: placeholder_value(values[m.group(1)]), arg)
