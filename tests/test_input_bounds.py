"""Inputs at their edges (issue 23): the sweep-size guard counts a grid before expanding it, every number a
setting, an option, a table or a fit.json holds is finite and in its range (``bounds``, one rule), a
budget below one batch is refused at plan time, and ``--plot FOLDER`` writes into the folder."""

from __future__ import annotations

import dataclasses
import math
import tracemalloc
import typing
from pathlib import Path

import pandas as pd
import pytest
from tiny import TINY_MODEL
from typer.testing import CliRunner

from powerlaw_cli.bounds import INT64_MAX, Range
from powerlaw_cli.cli import app
from powerlaw_cli.config import SECTION_TYPES, ConfigError, field_types, section_from_dict
from powerlaw_cli.fit_data import prepare_runs
from powerlaw_cli.spec import load_sweep
from powerlaw_cli.sweep_settings import AdaptiveSettings, LaunchConfig

SPEC = '[sweep]\nname = "edges"\n' + TINY_MODEL + '[schedule]\nname = "constant"\n[grid]\n'


def write(tmp_path: Path, text: str, name: str = "s.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# --- the sweep-size guard -------------------------------------------------------------------------


def test_a_huge_grid_is_refused_from_its_axis_lengths_before_anything_is_expanded(tmp_path):
    """The issue's typo: 1e8 seeds. Refused with the count and the axes, without making the 1e8 values
    (that took 3.4 GB and more than a minute before; a few MB here)."""
    path = write(
        tmp_path,
        SPEC + "training.seed = { lin = [0, 99999999], num = 100000000 }\noptimizer.lr = [1e-3, 2e-3]\n",
    )
    tracemalloc.start()
    try:
        with pytest.raises(ConfigError) as info:
            load_sweep(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    message = str(info.value)
    assert message.startswith(f"{path}: the grid has 200,000,000 runs"), message
    assert (
        "training.seed 100,000,000 x optimizer.lr 2" in message and "launch.max_runs = 1,000,000" in message
    )
    assert "\n" not in message
    assert peak < 50e6, peak


def test_the_guard_counts_zipped_axes_once_and_wsd_s_decay_points(tmp_path):
    zipped = (
        SPEC
        + "optimizer.lr = [1e-3, 2e-3, 4e-3]\n[[grid.zip]]\ntraining.seed = [0, 1]\ntraining.batch_size = [8, 16]\n"
    )
    assert len(load_sweep(write(tmp_path, zipped), {"max_runs": 6}).runs) == 6
    with pytest.raises(
        ConfigError, match=r"6 runs \(optimizer.lr 3 x zip\(training.seed, training.batch_size\) 2\)"
    ):
        load_sweep(write(tmp_path, zipped), {"max_runs": 5})
    wsd_s = (
        SPEC.replace('"constant"', '"wsd_s"\ndecay_points = [4096, 8192, 16384]')
        + "optimizer.lr = [1e-3, 2e-3]\n"
    )
    assert len(load_sweep(write(tmp_path, wsd_s), {"max_runs": 6}).runs) == 6
    with pytest.raises(ConfigError, match=r"6 runs \(optimizer.lr 2 x 3 decay points\)"):
        load_sweep(write(tmp_path, wsd_s), {"max_runs": 5})


def test_max_runs_comes_from_the_file_or_the_command_line(tmp_path):
    path = write(
        tmp_path, SPEC + "optimizer.lr = { log = [1e-4, 1e-1], num = 13 }\n" + "[launch]\nmax_runs = 12\n"
    )
    with pytest.raises(ConfigError, match=r"13 runs \(optimizer.lr 13\), more than launch.max_runs = 12"):
        load_sweep(path)
    sweep = load_sweep(path, {"max_runs": 13})
    assert len(sweep.runs) == 13 and sweep.launch.max_runs == 13


# --- every number is finite and in range ------------------------------------------------------------

NUMBER_SETTINGS = [
    (section_type, name)
    for section_type in (*SECTION_TYPES.values(), LaunchConfig, AdaptiveSettings)
    for name, annotation in field_types(section_type).items()
    if annotation in (int, float)
]


@pytest.mark.parametrize(
    ("section_type", "name"), NUMBER_SETTINGS, ids=[f"{t.__name__}.{n}" for t, n in NUMBER_SETTINGS]
)
def test_every_number_setting_is_finite_and_an_integer_fits_in_64_bits(section_type, name):
    """inf was accepted where nan was refused (lr, weight_decay, init_std, eps, zipf_exponent, ...), and
    mlp_ratio or mem_gb = inf ended in an OverflowError: the one rule refuses them all, naming the field."""
    integer = field_types(section_type)[name] is int
    for value in (math.inf, -math.inf, math.nan, *([2**63, -(2**63) - 1] if integer else [10**400])):
        with pytest.raises(ConfigError) as info:
            section_from_dict(section_type, {name: value}, "file.toml: sec")
        message = str(info.value)
        assert message.startswith(f"file.toml: sec.{name}: "), message
        expected = (
            "expected an integer" if integer and isinstance(value, float) else "must be a finite number"
        )
        assert expected in message or (integer and "must be a 64-bit integer" in message), message


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"mlp_ratio": 1e300}, "model.mlp_ratio: must be in (0, 1024]"),
        (
            {"width": 2**62, "n_heads": 3},
            "model.n_heads: must divide width",
        ),  # in 64 bits: the section's checks
    ],
)
def test_a_finite_number_out_of_a_settings_range_is_refused_by_its_section(values, message):
    with pytest.raises(ConfigError) as info:
        section_from_dict(SECTION_TYPES["model"], values, "f.toml: model")
    assert message in str(info.value)


def test_every_launch_integer_has_a_lower_bound_sbatch_accepts():
    """cpus_per_task = 0 passed plan and failed at sbatch."""
    for name, annotation in field_types(LaunchConfig).items():
        if annotation is not int:
            continue
        with pytest.raises(ConfigError, match=f"launch.{name}: must be"):
            section_from_dict(LaunchConfig, {name: -1}, "launch")
    for name in ("cpus_per_task", "time_minutes", "array_parallelism", "runs_per_task", "max_runs"):
        with pytest.raises(ConfigError, match=f"launch.{name}: must be > 0"):
            section_from_dict(LaunchConfig, {name: 0}, "launch")


def test_the_range_rule_in_words_and_at_its_edges():
    half_open = Range(0.0, 1.0, open_high=True)
    assert half_open.describe() == "a finite number in [0, 1)"
    assert [half_open.holds(v) for v in (0.0, 0.5, 1.0, math.nan, True, "0.5")] == [
        True,
        True,
        False,
        False,
        False,
        False,
    ]
    assert Range(0.0, open_low=True).describe() == "a finite number > 0"
    assert Range().holds(INT64_MAX) and not Range().holds(INT64_MAX + 1) and not Range().holds(math.inf)


def test_every_number_option_of_the_cli_is_checked_by_the_one_rule():
    """A float option without the rule took inf (``schedule --lr inf``) or crashed on it (``--tokens``)."""
    import typer.main

    group = typer.main.get_command(app)
    unchecked = []
    for command_name, command in group.commands.items():
        hints = typing.get_type_hints(command.callback, include_extras=True)
        for name, hint in hints.items():
            base, *meta = typing.get_args(hint) if typing.get_origin(hint) is typing.Annotated else (hint,)
            if float not in (base, *typing.get_args(base)):
                continue
            parser = next((m.parser for m in meta if hasattr(m, "parser")), None)
            if not isinstance(getattr(parser, "rule", None), Range):
                unchecked.append(f"{command_name} {name}")
    assert not unchecked


# --- a budget below one batch ---------------------------------------------------------------------


def test_a_budget_below_one_batch_is_refused_at_plan_time_naming_the_run(tmp_path):
    """Before, it trained one whole batch (twice the planned tokens here) without a word."""
    path = write(tmp_path, SPEC + "training.batch_size = [8, 16]\n[training]\ntokens = 200\n")
    with pytest.raises(ConfigError) as info:
        load_sweep(path)
    message = str(info.value)
    assert message.startswith(
        f"{path}: grid point training.batch_size=16: training.tokens: 200 is less than one batch "
        "(training.batch_size 16 x model.seq_len 16 = 256 tokens)"
    ), message  # batch 8 (128 tokens a step) is a run of 2 steps
    assert "\n" not in message


def test_a_budget_of_exactly_one_batch_is_a_run(tmp_path):
    sweep = load_sweep(
        write(tmp_path, SPEC + "optimizer.lr = [1e-3]\n[training]\ntokens = 256\nbatch_size = 16\n")
    )
    assert [run.steps for run in sweep.runs] == [1]


# --- tables for fit -------------------------------------------------------------------------------


def test_a_table_without_status_still_counts_an_infinite_loss_as_diverged():
    """The loss rule refuses negative losses, and non-finite ones of runs that say they finished; a table
    without a status column keeps its documented meaning (non-finite: diverged)."""
    rows = [{"lr": lr, "batch_size": 16, "tokens": 1e8, "final_val_loss": 3 + lr} for lr in (0.1, 0.2, 0.4)]
    rows.append({"lr": 0.8, "batch_size": 16, "tokens": 1e8, "final_val_loss": math.inf})
    runs = prepare_runs(pd.DataFrame(rows))
    assert list(runs["status"]) == ["ok", "ok", "ok", "diverged"]


# --- --plot FOLDER --------------------------------------------------------------------------------


def test_schedule_plot_into_an_existing_folder_writes_name_png_there_and_prints_it(tmp_path):
    """Before, ``--plot DIR`` wrote DIR.png beside the folder and printed the folder's path."""
    folder = tmp_path / "figures"
    folder.mkdir()
    result = CliRunner().invoke(app, ["schedule", "wsd", "--plot", str(folder)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.stderr
    assert (folder / "wsd.png").is_file() and not (tmp_path / "figures.png").exists()
    assert f"plot: {folder / 'wsd.png'}" in result.stdout
    bare = tmp_path / "bare"
    result = CliRunner().invoke(app, ["schedule", "cosine", "--plot", str(bare)], env={"COLUMNS": "200"})
    assert (tmp_path / "bare.png").is_file() and f"plot: {bare}.png" in result.stdout


def test_launch_overrides_name_the_option_not_the_file(tmp_path):
    with pytest.raises(ConfigError, match=r"^launch\.cpus_per_task: must be > 0$"):
        load_sweep(write(tmp_path, SPEC + "optimizer.lr = [1e-3]\n"), {"cpus_per_task": 0})
    assert (
        dataclasses.asdict(
            load_sweep(write(tmp_path, SPEC + "optimizer.lr = [1e-3]\n"), {"qos": "high"}).launch
        )["qos"]
        == "high"
    )
