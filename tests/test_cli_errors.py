"""The CLI's error contract, table-driven: every command, fed each bad input a careless user could give,
exits with status 2 and one line on stderr that names the input, never a traceback."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from tiny import TINY_MODEL
from typer.testing import CliRunner

from powerlaw_cli.cli import app

GOOD_SPEC = (
    """[sweep]
name = "errors"
"""
    + TINY_MODEL
    + """[schedule]
name = "constant"
[grid]
optimizer.lr = [1e-3, 1e-2]
"""
)


def invoke(*args: object) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "80"})
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """Sweep files good and bad, a runs table, an empty and a corrupt one, a fit.json."""
    root = tmp_path_factory.mktemp("inputs")

    def write(name: str, text: str) -> Path:
        path = root / name
        path.write_text(text)
        return path

    rows = []
    rng = np.random.default_rng(0)
    for batch in (16, 32, 64):
        for tokens in (1e8, 4e8, 1.6e9):
            lr_opt = 4.6 * batch * tokens**-0.51
            for lr in lr_opt * 2.0 ** np.arange(-3, 4):
                rows.append(
                    {
                        "lr": lr,
                        "batch_size": batch,
                        "tokens": tokens,
                        "final_val_loss": 3 + 0.01 * math.log2(lr / lr_opt) ** 2 + rng.normal(0, 1e-4),
                    }
                )
    table = root / "runs.csv"
    pd.DataFrame(rows).to_csv(table, index=False)
    code, _, err = invoke("fit", table, "--bootstrap", "50", "--no-plots", "--out", root / "fit")
    assert code == 0, err
    unreadable = root / "unreadable.parquet"
    unreadable.write_bytes(b"PAR1 not really parquet PAR1")
    frame = pd.read_csv(table)
    broken_fits = {}
    for name, edit in FIT_EDITS.items():
        data = json.loads((root / "fit" / "fit.json").read_text())
        edit(data["laws"]["power"])
        broken_fits[name] = write(f"{name}.json", json.dumps(data))
    inf_specs = {
        f"inf_{key.replace('.', '_')}": write(f"inf_{key}.toml", GOOD_SPEC + f"{key} = [inf]\n")
        for key in INF_SETTINGS
    }
    return (
        broken_fits
        | inf_specs
        | {
            "inf_lr_table": write(
                "inf_lr.csv", frame.assign(lr=frame["lr"].where(frame.index != 4, math.inf)).to_csv()
            ),
            "negative_loss_table": write(
                "negative_loss.csv", frame.assign(final_val_loss=-frame["final_val_loss"]).to_csv(index=False)
            ),
            "nan_ok_table": write(
                "nan_ok.csv",
                frame.assign(
                    status="ok", final_val_loss=frame["final_val_loss"].where(frame.index != 2)
                ).to_csv(index=False),
            ),
            "inf_lr_spec": write("inf_lr.toml", GOOD_SPEC.replace("[1e-3, 1e-2]", "[4e-3, inf]")),
            "huge_grid": write(
                "huge.toml", GOOD_SPEC + "training.seed = { lin = [0, 99999999], num = 100000000 }\n"
            ),
            "tiny_budget": write("tiny_budget.toml", GOOD_SPEC + "training.tokens = [100]\n"),
            "deep": write("deep.toml", GOOD_SPEC + "training.seed = " + "[" * 3000 + "]" * 3000 + "\n"),
            "deep_tables": write("deep_tables.toml", "[" + "grid." * 3000 + "x]\n"),
            "spec": write("good.toml", GOOD_SPEC),
            "typo_section": write("typo.toml", GOOD_SPEC.replace("[schedule]", "[modle]")),
            "empty_grid": write("empty.toml", GOOD_SPEC.replace("[1e-3, 1e-2]", "[]")),
            "newline_name": write("newline.toml", GOOD_SPEC.replace('"errors"', '"a\\nb"')),
            "table": table,
            "fit": root / "fit" / "fit.json",
            "empty_table": write("empty.csv", ""),
            "no_lr_table": write("no_lr.csv", "batch_size,tokens,final_val_loss\n1,2,3\n"),
            "unreadable": unreadable,
            "not_a_sweep": root,
        }
    )


FIT_EDITS = {
    "fit_without_a": lambda law: law.pop("a"),
    "fit_without_exponent": lambda law: law["exponents"].pop("tokens"),
    "fit_without_bootstrap": lambda law: law.pop("bootstrap"),
    "fit_string_number": lambda law: law["a"].update(value="4.6"),
    "fit_short_sample": lambda law: law["bootstrap"]["samples"][0].pop(),
}
"""fit.json edited by hand: each must be one line naming the file and the key."""


INF_SETTINGS = (
    "optimizer.weight_decay",
    "optimizer.eps",
    "model.init_std",
    "model.mlp_ratio",
    "data.zipf_exponent",
    "training.divergence_factor",
)
"""Settings the issue found taking inf (nan was refused): each a grid axis [inf] of the good file."""


T = "{table}"
F = "{fit}"
S = "{spec}"
TARGET = ("--batch-size", "64", "--tokens", "1e12")
CASES = [
    # (arguments with {file} placeholders, what the one error line must name)
    (("nonsense",), "nonsense"),
    (("train", "-s", "model.widht=3"), "model.widht"),
    (("train", "-s", "model.width=abc"), "model.width"),
    (("train", "-s", "model.width=-4"), "model.width"),
    (("train", "{missing}"), "missing.toml"),
    (("schedule", "step"), "step"),
    (("schedule", "wsd", "--points", "1"), "--points"),
    (("schedule", "wsd", "--tokens", "0"), "--tokens"),
    (("schedule", "wsd", "--lr", "-1"), "--lr"),
    (("schedule", "wsd", "--lr", "inf"), "--lr"),
    (("schedule", "wsd", "--tokens", "inf"), "--tokens"),
    (("schedule", "wsd", "--points", "100000000"), "--points"),
    (("schedule", "wsd", "--plot", "a\nb.png"), "--plot"),
    (("schedule", "wsd", "--batch-size", "0"), "--batch-size"),
    (("schedule", "wsd", "-s", "decay_shape=step"), "decay_shape"),
    (("schedule", "wsd", "-s", "warmup_tokens=2e9"), "warmup_tokens"),
    (("coord-check", "--parametrization", "xx"), "--parametrization"),
    (("coord-check", "--widths", "a,b"), "--widths"),
    (("coord-check", "--widths", "64"), "--widths"),
    (("coord-check", "--steps", "0"), "--steps"),
    (("coord-check", "--lr", "inf"), "--lr"),
    (("coord-check", "--tolerance", "nan"), "--tolerance"),
    (("plan", S, "--throughput", "0"), "--throughput"),
    (("plan", S, "--throughput", "inf"), "--throughput"),
    (("plan", "{inf_lr_spec}"), "optimizer.lr"),
    *((("plan", f"{{inf_{key.replace('.', '_')}}}"), key) for key in INF_SETTINGS),
    (("plan", "{huge_grid}"), "100,000,000"),
    (("plan", "{huge_grid}"), "training.seed"),
    (("plan", S, "-s", "max_runs=1"), "the grid has 2 runs (optimizer.lr 2), more than launch.max_runs = 1"),
    (("plan", "{tiny_budget}"), "training.tokens"),
    (("plan", "{deep}"), "deep.toml"),
    (("plan", "{deep_tables}"), "deep_tables.toml"),
    (("plan", S, "-s", "cpus_per_task=0"), "cpus_per_task"),
    (("plan", S, "-s", "time_minutes=0"), "time_minutes"),
    (("plan", S, "-s", "mem_gb=inf"), "mem_gb"),
    (("plan", S, "-s", "mem_gb=nan"), "mem_gb"),
    (("plan", S, "-s", "signal_seconds=-1"), "signal_seconds"),
    (("plan", "{missing}"), "missing.toml"),
    (("plan", "{typo_section}"), "[modle]"),
    (("plan", "{empty_grid}"), "optimizer.lr"),
    (("plan", "{newline_name}"), "sweep.name"),
    (("plan", S, "-s", "runs_per_task=0"), "runs_per_task"),
    (("plan", S, "-s", "partition=gpu;rm -rf"), "partition"),
    (("plan", S, "-s", 'sbatch_extra=["--chdir=/tmp"]'), "sbatch_extra"),
    (("plan", S, "-s", 'sbatch_extra=["--comment=a\\nb"]'), "sbatch_extra"),
    (("plan", S, "-s", "colour=red"), "colour"),
    (("launch", S, "--executor", "cloud"), "--executor"),
    (("launch", S, "--workers", "-1"), "--workers"),
    (("launch", S, "--out", "{not_a_sweep}/a\nb"), "--out"),
    (("launch", S, "--out", "{not_a_sweep}/a\tb"), "--out"),
    (("train", "--out", "a\nb"), "--out"),
    (("launch", "{newline_name}", "--out", "{not_a_sweep}/new"), "sweep.name"),
    (("status", "{not_a_sweep}"), "not a sweep directory"),
    (("status", "{not_a_sweep}", "--interval", "-1"), "--interval"),
    (("status", "{not_a_sweep}", "--interval", "inf"), "--interval"),
    (("collect", "{not_a_sweep}/nowhere"), "not a sweep directory"),
    (("fit", "{missing}.csv"), "missing.toml.csv"),
    (("fit", "{empty_table}"), "empty.csv"),
    (("fit", "{no_lr_table}"), "lr"),
    (("fit", "{unreadable}"), "unreadable.parquet"),
    (("fit", T, "--method", "foo"), "--method"),
    (("fit", T, "--law", "nonsense"), "nonsense"),
    (("fit", T, "--law", "x=lr_opt ~ colour"), "colour"),
    (("fit", T, "--predict", "batch=abc"), "--predict"),
    (("fit", T, "--bootstrap", "-5"), "--bootstrap"),
    (("fit", T, "--batch-unit", "bytes"), "--batch-unit"),
    (("fit", T, "--band", "inf"), "--band"),
    (("fit", T, "--out", "a\nb"), "--out"),
    (("fit", "{inf_lr_table}"), "inf_lr.csv: column 'lr', row 5"),
    (("fit", "{negative_loss_table}"), "negative_loss.csv: column 'final_val_loss', row 1"),
    (("fit", "{nan_ok_table}"), "nan_ok.csv: column 'final_val_loss', row 3"),
    (("export", F, "--batch-size", "0", "--tokens", "1e12"), "--batch-size"),
    (("export", F, "--batch-size", "64", "--tokens", "-1"), "--tokens"),
    (("export", F, *TARGET, "--decay-shape", "step"), "--decay-shape"),
    (("export", F, *TARGET, "--format", "xml"), "--format"),
    (("export", F, *TARGET, "--law", "nope"), "nope"),
    (("export", F, *TARGET, "--warmup-fraction", "1.5"), "--warmup-fraction"),
    (("export", F, *TARGET, "--lr-max", "0"), "--lr-max"),
    (("export", "{not_a_sweep}/nowhere", *TARGET), "fit.json"),
    (("export", F, "--batch-size", "64", "--tokens", "inf"), "--tokens"),
    (("export", F, *TARGET, "--params", "inf"), "--params"),
    (("export", F, *TARGET, "--lr-max", "inf"), "--lr-max"),
    (("export", "{fit_without_a}", *TARGET), "fit_without_a.json: laws.power.a: missing"),
    (("export", "{fit_without_exponent}", *TARGET), "fit_without_exponent.json: laws.power.exponents.tokens"),
    (("export", "{fit_without_bootstrap}", *TARGET), "fit_without_bootstrap.json: laws.power.bootstrap"),
    (("export", "{fit_string_number}", *TARGET), "fit_string_number.json: laws.power.a.value"),
    (("export", "{fit_short_sample}", *TARGET), "fit_short_sample.json: laws.power.bootstrap.samples[0]"),
]


@pytest.mark.parametrize(("args", "names"), CASES, ids=[" ".join(a) for a, _ in CASES])
def test_bad_input_is_one_line_naming_it_with_exit_status_2(files, args, names):
    placeholders = {k: str(v) for k, v in files.items()} | {
        "missing": str(files["spec"].parent / "missing.toml")
    }
    code, out, err = invoke(*(a.format(**placeholders) for a in args))
    lines = err.strip().splitlines()
    assert code == 2, (code, out, err)
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert names in lines[0], err
    assert "Traceback" not in out + err
