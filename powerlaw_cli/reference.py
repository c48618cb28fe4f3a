"""The docs' reference tables, generated from the code that defines them.

The settings come from ``config`` (each field's own doc), the result columns from ``schema``. Each table
sits in one page of ``docs/`` (``PAGES``) between ``<!-- NAME:begin -->`` and ``<!-- NAME:end -->``
markers; ``python -m powerlaw_cli.reference`` rewrites them in the repository it runs in, ``--check``
fails when one is stale.
"""

from __future__ import annotations

import re
import sys
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

from .config import NO_LEGACY, SECTION_TYPES, field_types, settings_table
from .schema import CURVE_COLUMNS, RUN_COLUMNS
from .sweep_settings import AdaptiveSettings, LaunchConfig


def _toml(value: object) -> str:
    """A default as it is written in a TOML file."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return str(value)


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def values_of(annotation: Any) -> str:
    """What a setting takes, from its type: the choices of a Literal, else the kind of value."""
    if get_origin(annotation) is Literal:
        return ", ".join(f"`{choice}`" for choice in get_args(annotation))
    if get_origin(annotation) is list:
        return f"list of {values_of(get_args(annotation)[0])}s"
    return {int: "integer", float: "number", str: "string", bool: "true, false"}[annotation]


def settings_markdown() -> str:
    """Every run setting: section.field, default, values, meaning, and whether it is part of the run id."""
    lines = ["| setting | default | values | meaning | in run id |", "|---|---|---|---|---|"]
    for section, name, default, doc, identity, legacy in settings_table():
        values = values_of(field_types(SECTION_TYPES[section])[name])
        in_id = (
            "no" if not identity else "yes" if legacy is NO_LEGACY else f"yes, except at `{_toml(legacy)}`"
        )
        lines.append(f"| `{section}.{name}` | `{_toml(default)}` | {values} | {_cell(doc)} | {in_id} |")
    return "\n".join(lines)


def section_markdown(section_type: type) -> str:
    """A sweep-file section such as ``[launch]``: every field, its default, values and meaning."""
    lines = ["| setting | default | values | meaning |", "|---|---|---|---|"]
    for f in fields(section_type):
        default = f.default_factory() if f.default is MISSING else f.default  # type: ignore[misc]
        values = values_of(field_types(section_type)[f.name])
        lines.append(f"| `{f.name}` | `{_toml(default)}` | {values} | {_cell(f.metadata['doc'])} |")
    return "\n".join(lines)


def columns_markdown(columns: list) -> str:
    """A schema as a table of column, Arrow type and meaning."""
    lines = ["| column | type | meaning |", "|---|---|---|"]
    lines += [f"| `{name}` | {dtype} | {_cell(doc)} |" for name, dtype, doc in columns]
    return "\n".join(lines)


def tables() -> dict[str, str]:
    """Marker name -> generated markdown."""
    return {
        "settings": settings_markdown(),
        "launch-settings": section_markdown(LaunchConfig),
        "adaptive-settings": section_markdown(AdaptiveSettings),
        "runs-schema": columns_markdown(RUN_COLUMNS),
        "curves-schema": columns_markdown(CURVE_COLUMNS),
    }


#: The page of the docs (relative to the repository's root) that holds each generated table.
PAGES: dict[str, tuple[str, ...]] = {
    "docs/sweep-files.md": ("settings", "adaptive-settings", "launch-settings"),
    "docs/results.md": ("runs-schema", "curves-schema"),
}


def refreshed(text: str, names: tuple[str, ...]) -> str:
    """``text`` with each of the named tables replaced by its generated version."""
    generated = tables()
    for name in names:
        pattern = re.compile(rf"(<!-- {name}:begin -->\n).*?(<!-- {name}:end -->)", re.S)
        if not pattern.search(text):
            raise ValueError(f"no <!-- {name}:begin --> ... <!-- {name}:end --> markers")
        text = pattern.sub(lambda m, table=generated[name]: m.group(1) + table + "\n" + m.group(2), text)
    return text


def main(argv: list[str]) -> int:
    """``python -m powerlaw_cli.reference [--check] [ROOT]``: refresh (or check) every page of ``PAGES``."""
    check = "--check" in argv
    root = Path(next((arg for arg in argv if arg != "--check"), "."))
    stale = []
    for page, names in PAGES.items():
        path = root / page
        text = path.read_text()
        new = refreshed(text, names)
        if new != text:
            stale.append(page)
            if not check:
                path.write_text(new)
    if check and stale:
        print(f"reference tables are stale in {', '.join(stale)}; run python -m powerlaw_cli.reference")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
