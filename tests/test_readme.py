"""The README and docs/ stay true to the code: generated reference tables are current, every command has
its section and its line in the README, every link resolves, CI runs the test command the README gives,
and the fit examples run and find what they say."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
from typer.testing import CliRunner

from powerlaw_cli import synthetic
from powerlaw_cli.cli import app
from powerlaw_cli.reference import PAGES, main, refreshed, tables

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
COMMANDS = (ROOT / "docs" / "commands.md").read_text()
PAGES_WITH_LINKS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def test_reference_tables_match_the_code():
    assert main(["--check", str(ROOT)]) == 0, "run: python -m powerlaw_cli.reference"


def test_every_generated_table_has_one_page():
    placed = [name for names in PAGES.values() for name in names]
    assert sorted(placed) == sorted(tables())
    for page, names in PAGES.items():
        text = (ROOT / page).read_text()
        assert refreshed(text, names) == text


def test_reference_refresh_rejects_a_page_without_markers():
    with pytest.raises(ValueError, match="settings:begin"):
        refreshed("# no tables here\n", ("settings",))


def test_every_command_has_a_section_and_a_readme_line():
    commands = {command.name or command.callback.__name__ for command in app.registered_commands}
    assert set(re.findall(r"^## plsweep ([a-z-]+)$", COMMANDS, re.M)) == commands
    assert set(re.findall(r"\[`plsweep ([a-z-]+)`\]\(docs/commands\.md#plsweep-\1\)", README)) == commands


def anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
    return {anchor(h) for h in re.findall(r"^#+ (.+)$", text, re.M)}


@pytest.mark.parametrize("page", PAGES_WITH_LINKS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_relative_link_resolves(page):
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    links = re.findall(r"\]\(([^)\s]+)\)", text)
    for link in links:
        if re.match(r"[a-z]+://", link):
            continue
        target, _, fragment = link.partition("#")
        path = (page.parent / target).resolve() if target else page
        assert path.exists(), f"{page.name}: {link}: no such file"
        if fragment:
            assert fragment in anchors(path), f"{page.name}: {link}: no such heading"


def test_the_readme_links_every_docs_page():
    for page in sorted((ROOT / "docs").glob("*.md")):
        assert f"(docs/{page.name})" in README, page.name


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in README.split("## A first sweep")[0]
    assert re.search(r"^make test$", ci, re.M)
    assert "PLSWEEP_REQUIRE_SLURM=1" in ci


def docs_commands(heading: str) -> list[list[str]]:
    """The commands of the ```bash blocks under a heading of docs/commands.md (continuation lines joined,
    comments cut)."""
    section = COMMANDS.split(heading, 1)[1].split("\n#", 1)[0]
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", section, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            if line.strip():
                commands.append(shlex.split(line, comments=True))
    return commands


def run_docs_command(args: list[str]) -> str:
    """A command of the docs, run here: the synthetic-table writer, or plsweep (fewer resamples, no figures)."""
    if args[:3] == ["python", "-m", "powerlaw_cli.synthetic"]:
        synthetic.main(args[3:])
        return ""
    assert args[0] == "plsweep", args
    extra = ["--bootstrap", "40", "--no-plots"] if args[1] == "fit" else []
    result = CliRunner().invoke(app, args[1:] + extra, env={"COLUMNS": "200"})
    assert result.exit_code == 0, (args, result.output, result.stderr)
    return result.stdout


def test_docs_fit_examples_run_and_find_what_the_docs_say(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = "".join(run_docs_command(c) for c in docs_commands("### A Step-Law-style table"))
    assert "groups (joint LR x batch optimum): 16 used of 16" in out
    assert (
        "lr_opt_N_D: lr_opt [base LR] against N = params_non_embedding [parameters], D = tokens [tokens]"
        in out
    )
    export = [c for c in docs_commands("## plsweep export") if c[:3] == ["plsweep", "export", "fit"]]
    assert len(export) == 1
    recommended = json.loads(run_docs_command(export[0]))["recommended"]
    assert recommended["peak_lr"]["law"] == "lr_opt_N_D" and recommended["loss"]["law"] == "loss_opt_N_D"
    out = "".join(run_docs_command(c) for c in docs_commands("### A Chinchilla-style table"))
    assert "table of final losses: 42 of 42 settings used" in out and "predict loss_opt_N_D: " in out


def test_the_first_sweep_names_real_commands_and_files_and_plans(monkeypatch):
    monkeypatch.chdir(ROOT)
    section = README.split("## A first sweep", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    commands = [shlex.split(line, comments=True) for line in block.splitlines() if line.strip()]
    assert [c[1] for c in commands] == ["plan", "launch", "status", "fit", "export"]
    spec = ROOT / commands[0][2]
    assert spec.is_file() and all(c[2] in (commands[0][2], f"results/{spec.stem}") for c in commands)
    result = CliRunner().invoke(app, [*commands[0][1:], "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["runs"] == int(re.search(r"# (\d+) runs", block).group(1))
