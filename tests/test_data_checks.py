"""Data that a worker could not load is refused by ``plan`` and ``launch``, before anything is queued: the same
one line, naming the setting and the path, that the worker would have recorded."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_data import MALFORMED, T, ids, write
from test_rounds import ADAPTIVE, write_spec
from tiny import TINY_MODEL
from typer.testing import CliRunner

from powerlaw_cli.cli import app
from powerlaw_cli.config import DataConfig
from powerlaw_cli.data import DataError, load_source
from powerlaw_cli.data_files import check_data

IN_THE_TOKENS = ("only binary files", "val id >= vocab", "negative id")
"""Cases only a pass over the data finds: the workers' to report."""


@pytest.mark.parametrize("case", [case for case in MALFORMED if case not in IN_THE_TOKENS])
def test_the_check_refuses_what_the_loader_refuses_with_the_same_line(tmp_path: Path, case: str) -> None:
    kind, make = MALFORMED[case]
    path, _ = make(tmp_path)
    cfg = DataConfig(source=kind, path=str(path), val_tokens=256)
    with pytest.raises(DataError) as loaded:
        load_source(cfg, 256, T)
    with pytest.raises(DataError) as checked:
        check_data(cfg, 256, T)
    assert str(checked.value) == str(loaded.value)


def test_an_empty_token_file_is_named_as_empty(tmp_path: Path) -> None:
    path = write(tmp_path / "empty.bin", b"")
    with pytest.raises(DataError, match=f"data.path: '{path}': empty file"):
        check_data(DataConfig(source="tokens", path=str(path), val_tokens=256), 256, T)


def _spec(folder: Path, paths: list[Path]) -> Path:
    spec = folder / "data.toml"
    values = ", ".join(f'"{p}"' for p in paths)
    spec.write_text(
        '[sweep]\nname = "data"\n' + TINY_MODEL + '[data]\nsource = "tokens"\nval_tokens = 256\n'
        f"[grid]\ndata.path = [{values}]\noptimizer.lr = [1e-3, 1e-2]\n"
    )
    return spec


def test_plan_and_launch_refuse_data_a_worker_could_not_load_before_anything_is_queued(
    tmp_path: Path,
) -> None:
    good = write(tmp_path / "good.bin", ids(2000))
    odd = write(tmp_path / "odd.bin", ids(2000) + b"\x01")
    runner = CliRunner()
    result = runner.invoke(app, ["plan", str(_spec(tmp_path, [good, good.with_name("good.bin")]))])
    assert result.exit_code == 0, result.output
    spec = _spec(tmp_path, [good, odd])
    out = tmp_path / "out"
    for args in (["plan", str(spec)], ["launch", str(spec), "--out", str(out)]):
        result = runner.invoke(app, args, env={"COLUMNS": "80"})
        lines = result.stderr.strip().splitlines()
        assert result.exit_code == 2 and len(lines) == 1, result.output
        assert lines[0] == (
            f"error: data.path: '{odd}': 4001 bytes is not a multiple of 2 (data.dtype=uint16)"
        ), lines
    assert [p.name for p in out.iterdir()] == ["launch.lock"]  # nothing written, nothing submitted


def test_an_adaptive_sweep_on_data_a_worker_could_not_load_plans_no_round(tmp_path: Path) -> None:
    missing = tmp_path / "missing.bin"
    spec = write_spec(
        tmp_path, ADAPTIVE.replace("[data]\n", f'[data]\nsource = "tokens"\npath = "{missing}"\n')
    )
    for args in (["plan", str(spec)], ["launch", str(spec), "--out", str(tmp_path / "out")]):
        result = CliRunner().invoke(app, args, env={"COLUMNS": "80"})
        assert result.exit_code == 2, result.output
        assert result.stderr.strip() == f"error: data.path: '{missing}': no such file or folder"
    assert not (tmp_path / "out").exists()  # no round planned, nothing written
