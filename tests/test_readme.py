"""The README stays true to the code: generated reference tables are current, every command has its
section, CI runs the test command the README gives, and the fit examples run and find what they say."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
from typer.testing import CliRunner

from powerlaw_cli import synthetic
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


def readme_commands(heading: str) -> list[list[str]]:
    """The commands of the ```bash blocks under a README heading (continuation lines joined, comments cut)."""
    section = README.split(heading, 1)[1].split("\n#", 1)[0]
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", section, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            if line.strip():
                commands.append(shlex.split(line, comments=True))
    return commands


def run_readme_command(args: list[str]) -> str:
    """A README command, run here: the synthetic-table writer, or plsweep (fewer resamples, no figures)."""
    if args[:3] == ["python", "-m", "powerlaw_cli.synthetic"]:
        synthetic.main(args[3:])
        return ""
    assert args[0] == "plsweep", args
    extra = ["--bootstrap", "40", "--no-plots"] if args[1] == "fit" else []
    result = CliRunner().invoke(app, args[1:] + extra, env={"COLUMNS": "200"})
    assert result.exit_code == 0, (args, result.output, result.stderr)
    return result.stdout


def test_readme_fit_examples_run_and_find_what_the_readme_says(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = "".join(run_readme_command(c) for c in readme_commands("#### A Step-Law-style table"))
    assert "groups (joint LR x batch optimum): 16 used of 16" in out
    assert (
        "lr_opt_N_D: lr_opt [base LR] against N = params_non_embedding [parameters], D = tokens [tokens]"
        in out
    )
    export = [c for c in readme_commands("### `plsweep export`") if c[:3] == ["plsweep", "export", "fit"]]
    assert len(export) == 1
    recommended = json.loads(run_readme_command(export[0]))["recommended"]
    assert recommended["peak_lr"]["law"] == "lr_opt_N_D" and recommended["loss"]["law"] == "loss_opt_N_D"
    out = "".join(run_readme_command(c) for c in readme_commands("#### A Chinchilla-style table"))
    assert "table of final losses: 42 of 42 settings used" in out and "predict loss_opt_N_D: " in out
