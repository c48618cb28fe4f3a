"""The README stays true to the code: generated reference tables are current, every command has its
section, and CI runs the test command the README gives."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from powerlaw_cli.cli import app
from powerlaw_cli.reference import refreshed

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def test_reference_tables_match_the_code():
    assert refreshed(README) == README, "run: python -m powerlaw_cli.reference README.md"


def test_reference_refresh_rejects_a_readme_without_markers():
    with pytest.raises(ValueError, match="settings:begin"):
        refreshed("# no tables here\n")


def test_every_command_has_a_readme_section():
    commands = {command.name or command.callback.__name__ for command in app.registered_commands}
    documented = set(re.findall(r"^### `plsweep ([a-z-]+)`", README, re.M))
    assert commands == documented


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in README.split("## The workflow")[0]
    assert re.search(r"^make test$", ci, re.M)
    assert "PLSWEEP_REQUIRE_SLURM=1" in ci
