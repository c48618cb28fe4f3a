"""Every command through Typer's CliRunner (and ``plsweep --help`` as a real process): exit codes, what
they print, what they write, and one-line errors on bad input."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_fit import synthetic_runs
from typer.testing import CliRunner

from powerlaw_cli.cli import app
from powerlaw_cli.config import ScheduleConfig
from powerlaw_cli.schedules import WSDSchedule, build_schedule
from powerlaw_cli.synthetic import SEQ_LEN, batch_opt_tokens, loss, lr_opt, steplaw_table

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
TINY_RUN = [
    "-s",
    "model.width=32",
    "-s",
    "model.depth=2",
    "-s",
    "model.n_heads=2",
    "-s",
    "model.seq_len=16",
    "-s",
    "model.base_width=32",
    "-s",
    "training.batch_size=8",
    "-s",
    "training.tokens=2048",
    "-s",
    "data.val_tokens=512",
    "-s",
    "training.eval_every_tokens=1024",
]


def invoke(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "200"})
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


def test_help_as_a_real_process_lists_every_command():
    done = subprocess.run(
        [sys.executable, "-m", "powerlaw_cli", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 0, done.stderr
    for command in (
        "train",
        "schedule",
        "coord-check",
        "plan",
        "launch",
        "status",
        "collect",
        "fit",
        "export",
        "demo",
    ):
        assert f" {command} " in done.stdout


# --- train ----------------------------------------------------------------------------------------


def test_train_writes_a_record_and_is_deterministic(tmp_path):
    code, out, _ = invoke("train", *TINY_RUN, "--out", tmp_path / "a", "--json")
    assert code == 0
    first = json.loads(out)
    assert first["status"] == "ok" and first["tokens_seen"] == 2048 and math.isfinite(first["final_val_loss"])
    assert json.loads((tmp_path / "a" / "record.json").read_text())["run_id"] == first["run_id"]
    assert len(pd.read_feather(tmp_path / "a" / "curve.arrow")) >= 2
    code, out, _ = invoke("train", *TINY_RUN, "--out", tmp_path / "b", "--json")
    assert json.loads(out)["final_val_loss"] == first["final_val_loss"]


def test_train_from_a_toml_file_prints_a_summary(tmp_path):
    config = tmp_path / "run.toml"
    config.write_text(
        "[model]\nwidth = 32\ndepth = 2\nn_heads = 2\nseq_len = 16\nbase_width = 32\n"
        "[training]\nbatch_size = 8\ntokens = 1024\neval_every_tokens = 1024\n"
        "[data]\nval_tokens = 512\n[optimizer]\nlr = 1e3\n"
    )
    code, out, _ = invoke("train", config, "--out", tmp_path / "run")
    assert code == 0
    # a huge LR is an outcome, not an error: the summary row says so and where it happened
    assert re.search(r"\bstatus\b[\s│|]+diverged\b", out), out
    assert re.search(r"diverged_at_tokens[\s│|]+[1-9]", out), out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-s", "model.widht=64"], "widht"),
        (["-s", "optimizer.lr=fast"], "optimizer.lr"),
        (["-s", "data.source=tokens", "-s", "data.path=/nonexistent/train.bin"], "/nonexistent/train.bin"),
    ],
)
def test_train_bad_settings_are_one_line_errors(tmp_path, args, message):
    code, out, err = invoke("train", *TINY_RUN, *args, "--out", tmp_path / "run")
    if message == "/nonexistent/train.bin":  # a missing data path is a recorded failure of the run
        assert code == 0 and "failed" in out and message in out
        return
    assert code == 2
    assert message in err and err.count("\n") == 1


def test_train_toml_errors_name_the_file(tmp_path):
    config = tmp_path / "bad.toml"
    config.write_text("[model\nwidth = 32\n")
    code, _, err = invoke("train", config)
    assert code == 2 and str(config) in err and "invalid TOML" in err


# --- schedule -------------------------------------------------------------------------------------


def test_schedule_table_matches_the_schedule_and_plot_is_a_png(tmp_path):
    code, out, _ = invoke(
        "schedule",
        "wsd",
        "--lr",
        "0.01",
        "--tokens",
        "1000",
        "--points",
        "11",
        "--json",
        "-s",
        "warmup_tokens=100",
        "-s",
        "decay_fraction=0.2",
        "-s",
        "decay_shape=linear",
        "-s",
        "final_lr_ratio=0",
        "--plot",
        tmp_path / "wsd.png",
    )
    assert code == 0
    points = {p["tokens"]: p["lr"] for p in json.loads(out)["points"]}
    reference = WSDSchedule(
        0.01, 1000, warmup_tokens=100, decay_tokens=200, decay_shape="linear", final_ratio=0.0
    )
    assert points[500] == pytest.approx(0.01)
    assert points[900] == pytest.approx(0.005)
    assert points[900] == pytest.approx(reference(900))
    assert points[1000] == pytest.approx(0.0, abs=1e-12)
    assert (tmp_path / "wsd.png").read_bytes()[:8] == PNG_MAGIC


def test_schedule_prints_a_table_and_rejects_unknown_names():
    code, out, _ = invoke("schedule", "power", "--lr", "0.02", "--tokens", "1e9", "--batch-size", "256")
    assert code == 0 and "power schedule" in out
    rows = [
        [float(cell) for cell in re.findall(r"[-+.\de]+", line)] for line in out.splitlines() if "│" in line
    ]
    reference = build_schedule(ScheduleConfig(name="power"), 0.02, 10**9, 256)
    assert [t for t, _ in rows] == pytest.approx([i * 1e8 for i in range(11)])
    assert [lr for _, lr in rows] == pytest.approx([reference(t) for t, _ in rows], rel=1e-3, abs=1e-12)
    assert rows[0][1] > 0 and rows[-1][1] < rows[0][1]  # the decay at the end is in the table
    code, _, err = invoke("schedule", "triangle")
    assert code == 2 and "triangle" in err and "wsd" in err


# --- coord-check ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("parametrization", "exit_code"), [("mup", 0), ("sp", 1)])
def test_coord_check_exit_status_is_the_verdict(tmp_path, parametrization, exit_code):
    code, out, _ = invoke(
        "coord-check",
        "--widths",
        "64,128,256",
        "--parametrization",
        parametrization,
        "--steps",
        "4",
        "--plot",
        tmp_path / "coord.png",
    )
    assert code == exit_code
    assert ("PASS" if exit_code == 0 else "FAIL") in out.upper()
    assert (tmp_path / "coord.png").read_bytes()[:8] == PNG_MAGIC


# --- plan, launch, status, collect ----------------------------------------------------------------


def test_plan_counts_runs_tasks_and_arrays(tiny_spec):
    code, out, _ = invoke("plan", tiny_spec, "--json", "--max-array-size", "3", "-s", "runs_per_task=4")
    assert code == 0
    plan = json.loads(out)
    assert plan["runs"] == 16 and plan["runs_per_task"] == 4
    assert plan["tasks"] == 4 and plan["arrays"] == 2
    assert plan["flops"] > 0 and len(plan["first_runs"]) == 10


def test_plan_table_and_bad_launch_override(tiny_spec):
    code, out, _ = invoke("plan", tiny_spec)
    assert code == 0 and "first 10 of 16 runs" in out and "optimizer.lr" in out
    code, _, err = invoke("plan", tiny_spec, "-s", "partitoin=gpu")
    assert code == 2 and "partitoin" in err and "partition" in err


def test_malformed_sweep_file_fails_before_launch_naming_file_and_setting(tmp_path):
    spec = tmp_path / "bad.toml"
    spec.write_text('[sweep]\nname = "bad"\n[grid]\noptimizer.lr = { log = [1e-4, 1e-1] }\n')
    code, _, err = invoke("launch", spec, "--out", tmp_path / "sweep")
    assert code == 2 and str(spec) in err and "optimizer.lr" in err
    assert not (tmp_path / "sweep").exists()


def test_relaunch_status_and_collect_on_a_finished_sweep(tiny_spec, tiny_sweep_dir):
    code, out, _ = invoke("launch", tiny_spec, "--out", tiny_sweep_dir, "--json")
    assert code == 0
    launched = json.loads(out)
    assert (
        launched["runs_total"] == 16 and launched["skipped_recorded"] == 16 and launched["runs_launched"] == 0
    )
    code, out, _ = invoke("status", tiny_sweep_dir, "--json")
    assert code == 0
    status = json.loads(out)
    assert status["counts"]["finished"] + status["counts"]["diverged"] == 16 and status["done"]
    code, out, _ = invoke("status", tiny_sweep_dir)
    assert code == 0 and "finished" in out
    code, out, _ = invoke("collect", tiny_sweep_dir, "--json")
    assert code == 0 and json.loads(out)["runs"] == 16
    assert len(pd.read_parquet(tiny_sweep_dir / "runs.parquet")) == 16


def test_launch_local_runs_and_status_counts_them(tmp_path, tiny_spec):
    spec = tmp_path / "two.toml"
    spec.write_text(
        tiny_spec.read_text()
        .replace('name = "fixture"', 'name = "two"')
        .replace("optimizer.lr = { start = 1e-3, ratio = 4, num = 4 }", "optimizer.lr = [1e-3]")
        .replace("training.tokens = [2048, 4096]", "training.tokens = [2048]")
    )
    code, out, _ = invoke("launch", spec, "--out", tmp_path / "sweep", "--workers", "1")
    assert code == 0 and "launching 2 in" in out and "2 ok" in out
    code, out, _ = invoke("status", tmp_path / "sweep", "--json")
    assert json.loads(out)["counts"]["finished"] == 2
    code, _, err = invoke("launch", spec, "--out", tmp_path / "sweep", "--executor", "kubernetes")
    assert code == 2 and "kubernetes" in err


# --- fit and export -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def their_table(tmp_path_factory) -> Path:
    """A CSV of another trainer's runs (a known law, lr_opt = 4.6 B T^-0.51) with its own column names."""
    runs = synthetic_runs(0, batches=(16, 32, 64), tokens=(1e8, 4e8, 1.6e9))
    runs = runs.rename(
        columns={"lr": "peak_lr", "batch_size": "bs", "tokens": "train_tokens", "final_val_loss": "eval/loss"}
    )
    path = tmp_path_factory.mktemp("table") / "their_runs.csv"
    runs.to_csv(path, index=False)
    return path


THEIR_COLUMNS = (
    "--col",
    "lr=peak_lr",
    "--col",
    "batch_size=bs",
    "--col",
    "tokens=train_tokens",
    "--loss-column",
    "eval/loss",
)


@pytest.fixture(scope="module")
def their_fit(their_table) -> Path:
    out = their_table.parent / "fit"
    code, _, err = invoke(
        "fit",
        their_table,
        *THEIR_COLUMNS,
        "--bootstrap",
        "100",
        "--out",
        out,
        "--no-plots",
    )
    assert code == 0, err
    return out / "fit.json"


@pytest.fixture(scope="module")
def steplaw_csv(tmp_path_factory) -> Path:
    """A small Step-Law-style table: columns N, D, lr, bs (tokens, sequences of 2048), smooth loss."""
    path = tmp_path_factory.mktemp("steplaw") / "steplaw.csv"
    steplaw_table(
        0,
        params=(1e7, 1e8, 1e9),
        tokens=(1e9, 1e10, 1e11),
        batches=2 ** np.arange(3, 12, 2),
        lrs=2.0 ** np.arange(-14, -2),
    ).to_csv(path, index=False)
    return path


STEPLAW_COLUMNS = (
    "--col",
    "N=N",
    "--col",
    "D=D",
    "--col",
    "batch=bs",
    "--loss-column",
    "smooth loss",
    "--batch-unit",
    "tokens",
    "--seq-len",
    str(SEQ_LEN),
)


def test_fit_reads_a_csv_with_other_column_names(their_fit):
    data = json.loads(their_fit.read_text())
    power = data["laws"]["power"]
    assert power["exponents"]["tokens"]["low"] <= -0.51 <= power["exponents"]["tokens"]["high"]
    assert data["n_cells"]["used"] == 9


def test_fit_json_output_and_predict(their_table, tmp_path):
    code, out, _ = invoke(
        "fit",
        their_table,
        *THEIR_COLUMNS,
        "--bootstrap",
        "50",
        "--predict",
        "batch_size=64",
        "--predict",
        "tokens=1e9",
        "--out",
        tmp_path,
        "--json",
    )
    assert code == 0
    data = json.loads(out)
    predicted = data["predictions"]["power"]
    truth = 4.6 * 64 * 1e9**-0.51
    assert predicted["low"] <= truth <= predicted["high"]
    assert {Path(f).name for f in data["figures"]} >= {"cells.png", "law_power.png", "residuals.png"}


def test_fit_missing_column_names_the_file_and_option(their_table):
    code, _, err = invoke("fit", their_table, "--no-plots")
    assert code == 2 and str(their_table) in err and "--loss-column" in err
    code, _, err = invoke("fit", their_table, "--loss-column", "eval/loss", "--no-plots")
    assert code == 2 and str(their_table) in err and "--col lr=YOUR_COLUMN" in err


def test_fit_on_a_real_tiny_sweep_directory(tiny_sweep_dir):
    code, out, _ = invoke("fit", tiny_sweep_dir, "--bootstrap", "50")
    assert code == 0
    assert "cells: 4 used of 4" in out
    data = json.loads((tiny_sweep_dir / "fit" / "fit.json").read_text())
    assert data["n_cells"]["total"] == 4
    assert (tiny_sweep_dir / "runs.parquet").exists() and (tiny_sweep_dir / "fit" / "cells.png").exists()


def table_rows(out: str, title: str) -> list[dict[str, str]]:
    """The rows of the rendered table under ``title``, each as {header: cell text} (split on the box
    characters rich draws)."""
    lines = out.split(title, 1)[1].splitlines()
    header = next(line for line in lines if line.startswith("┃"))
    names = [h.strip() for h in header.strip("┃").split("┃")]
    rows = []
    for line in lines[lines.index(header) + 1 :]:
        if line.startswith("└"):
            break
        if line.startswith("│"):
            rows.append(dict(zip(names, (c.strip() for c in line.strip("│").split("│")), strict=True)))
    return rows


def test_law_table_puts_every_number_under_its_own_header(steplaw_csv, tmp_path):
    """Laws over different variables in one table (lr_opt ~ N + D beside lr_opt ~ batch + tokens): each
    exponent under its variable's header, the cells of variables a law does not have empty, no number cut."""
    code, out, err = invoke(
        "fit",
        steplaw_csv,
        *STEPLAW_COLUMNS,
        "--law",
        "lr_opt ~ N + D",
        "--bootstrap",
        "30",
        "--out",
        tmp_path,
        "--no-plots",
    )
    assert code == 0, err
    assert "…" not in out
    fit = json.loads((tmp_path / "fit.json").read_text())
    rows = {r["law"]: r for r in table_rows(out, "power laws")}
    for name in ("lr_opt_N_D", "free"):
        law = fit["laws"][name]
        for var, short in (("params_non_embedding", "N"), ("tokens", "D"), ("batch_size", "B")):
            cell = rows[name][f"e_{short}"]
            if var in law["exponents"]:
                e = law["exponents"][var]
                assert cell == f"{e['value']:.4g} [{e['low']:.4g}, {e['high']:.4g}]", (name, var)
            else:
                assert cell == "", (name, var)
        assert rows[name]["a"].startswith(f"{law['a']['value']:.4g} [")
    batch = fit["laws"]["batch"]
    assert rows["batch (tokens)"]["a"].startswith(f"{batch['a']['value'] * 2048:.4g} [")
    assert "batch (tokens): batch_opt [tokens, sequences of 2048] against D = tokens [tokens]" in out
    assert (
        "lr_opt_N_D: lr_opt [base LR] against N = params_non_embedding [parameters], D = tokens [tokens]"
        in out
    )


def test_fit_group_by_with_batch_inside_is_the_joint_optimum_or_a_clear_error(steplaw_csv, tmp_path):
    code, out, err = invoke(
        "fit",
        steplaw_csv,
        *STEPLAW_COLUMNS,
        "--group-by",
        "N,D",
        "--bootstrap",
        "30",
        "--out",
        tmp_path,
        "--no-plots",
        "--json",
    )
    assert code == 0, err
    fit = json.loads(out)
    assert fit["group_keys"] == ["params_non_embedding", "tokens"] and "batch_size" in fit["cell_keys"]
    assert len(fit["groups"]) == 9 and all(g["batch_varied"] and g["n_batches"] == 5 for g in fit["groups"])
    code, _, err = invoke("fit", steplaw_csv, *STEPLAW_COLUMNS, "--group-by", "D", "--no-plots")
    assert code == 2 and "'params_non_embedding' varies inside a group" in err and "--group-by" in err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--method", "foo"], "'foo' is not one of"),
        (["--band", "2"], "--band"),
        (["--band", "0"], "--band 0.0: must be in (0, 1)"),
        (["--min-points", "2"], "--min-points"),
        (["--bootstrap", "-1"], "--bootstrap"),
        (["--law", "foo ~ N"], "must be one of lr_opt, batch_opt, loss"),
        (["--law", "lr_opt N + D"], "expected 'Y ~ X1 + X2'"),
        (["--law", "lr_opt ~ N + N"], "cannot be a variable here"),
        (["--predict", "N=abc"], "--predict params_non_embedding=abc: not a number"),
        (["--predict", "N=-5"], "must be a positive number"),
        (["--batch-unit", "bytes"], "'bytes' is not one of"),
    ],
)
def test_fit_bad_options_are_one_clear_error(steplaw_csv, args, message):
    code, out, err = invoke("fit", steplaw_csv, *STEPLAW_COLUMNS, "--bootstrap", "5", "--no-plots", *args)
    assert code == 2 and message in err, err
    assert "Traceback" not in out + err


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("empty.csv", "N,D,lr,bs,smooth loss\n", "the table has no rows"),
        ("blank.csv", "", "cannot read it as csv"),
        ("broken.parquet", "not parquet at all", "cannot read it as parquet"),
        ("runs.txt", "a,b\n", "unknown table type"),
    ],
)
def test_fit_unreadable_or_empty_tables_are_one_clear_error(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_text(content)
    code, out, err = invoke("fit", path, "--loss-column", "smooth loss", "--no-plots")
    assert code == 2 and message in err and str(path) in err and err.count("\n") == 1, err


def test_export_files_of_every_format_describe_one_schedule_at_every_step(their_fit, tmp_path):
    from test_export import described_by_constants, described_by_lm_engine, described_by_torch, steps_to_check

    files = {}
    for fmt in ("json", "yaml", "lm-engine", "torch"):
        files[fmt] = tmp_path / f"rec.{fmt}"
        code, _, err = invoke(
            "export",
            their_fit,
            "--batch-size",
            "64",
            "--tokens",
            "1e9",
            "--seq-len",
            "1024",
            "--format",
            fmt,
            "--out",
            files[fmt],
            "--plot",
            tmp_path / "schedule.png",
        )
        assert code == 0, err
    assert (tmp_path / "schedule.png").read_bytes()[:8] == PNG_MAGIC
    rec = json.loads(files["json"].read_text())
    assert (
        rec["recommended"]["peak_lr"]["low"] <= 4.6 * 64 * 1e9**-0.51 <= rec["recommended"]["peak_lr"]["high"]
    )
    schedules = {
        "json": described_by_constants(files["json"].read_text(), "json"),
        "yaml": described_by_constants(files["yaml"].read_text(), "yaml"),
        "lm-engine": described_by_lm_engine(files["lm-engine"].read_text())[0],
        "torch": described_by_torch(files["torch"].read_text()),
    }
    steps = steps_to_check(rec)
    reference = [schedules["json"](step) for step in steps]
    for fmt, lr in schedules.items():
        assert lr(steps[len(steps) // 2]) > 0
        for step, expected in zip(steps, reference, strict=True):
            assert math.isclose(lr(step), expected, rel_tol=1e-9, abs_tol=1e-13), (fmt, step)


def test_export_prints_to_stdout_and_refuses_a_missing_fit(their_fit, tmp_path):
    code, out, err = invoke("export", their_fit.parent, "--batch-size", "64", "--tokens", "1e9")
    assert code == 0 and json.loads(out)["target"]["batch_size"] == 64
    assert "schedule plot:" in err and str(their_fit.parent) in err
    code, _, err = invoke("export", tmp_path, "--batch-size", "64", "--tokens", "1e9")
    assert code == 2 and "no fit.json" in err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--tokens", "-1"], "--tokens"),
        (["--tokens", "0"], "'--tokens': 0 must be a finite number > 0"),
        (["--tokens", "1e9", "--batch-size", "0"], "--batch-size"),
        (["--tokens", "1e9", "--decay-shape", "step"], "'step' is not one of"),
        (["--tokens", "1e9", "--format", "toml"], "'toml' is not one of"),
        (["--tokens", "1e9", "--law", "free2"], "the fit has no law 'free2'"),
        (["--tokens", "1e9", "--warmup-fraction", "0.6", "--decay-fraction", "0.6"], "together at most 1"),
    ],
)
def test_export_bad_input_is_one_clear_error(their_fit, args, message):
    code, out, err = (
        invoke("export", their_fit, "--batch-size", "64", *args)
        if "--batch-size" not in args
        else invoke("export", their_fit, *args)
    )
    assert code == 2 and message in err, err
    assert "Traceback" not in out + err


def test_export_an_n_d_target_from_a_steplaw_fit(steplaw_csv, tmp_path):
    code, _, err = invoke(
        "fit",
        steplaw_csv,
        *STEPLAW_COLUMNS,
        "--law",
        "lr_opt ~ N + D",
        "--law",
        "batch_opt ~ D",
        "--law",
        "loss ~ N + D",
        "--bootstrap",
        "40",
        "--out",
        tmp_path,
        "--no-plots",
    )
    assert code == 0, err
    code, out, err = invoke("export", tmp_path, "--params", "3e8", "--tokens", "3e10", "--seq-len", "2048")
    assert code == 0, err
    rec = json.loads(out)
    recommended = rec["recommended"]
    assert recommended["peak_lr"]["law"] == "lr_opt_N_D" and recommended["loss"]["law"] == "loss_opt_N_D"
    assert recommended["batch_size"]["batch_opt"]["law"] == "batch_opt_D"
    laws = json.loads((tmp_path / "fit.json").read_text())["laws"]
    lr, batch, loss_law = laws["lr_opt_N_D"], laws["batch_opt_D"], laws["loss_opt_N_D"]
    e = lr["exponents"]  # each recommendation is its law at the target, written out here from fit.json
    assert recommended["peak_lr"]["value"] == pytest.approx(
        lr["a"]["value"] * 3e8 ** e["params_non_embedding"]["value"] * 3e10 ** e["tokens"]["value"], rel=1e-9
    )
    assert recommended["batch_size"]["batch_opt"]["value"] == pytest.approx(
        batch["a"]["value"] * 3e10 ** batch["exponents"]["tokens"]["value"], rel=1e-9
    )
    terms = loss_law["terms"]
    assert recommended["loss"]["value"] == pytest.approx(
        loss_law["E"]["value"]
        + terms["params_non_embedding"]["A"]["value"]
        * 3e8 ** -terms["params_non_embedding"]["alpha"]["value"]
        + terms["tokens"]["A"]["value"] * 3e10 ** -terms["tokens"]["alpha"]["value"],
        rel=1e-9,
    )
    for key, truth, tolerance in (("peak_lr", lr_opt(3e8, 3e10), 0.1), ("loss", loss(3e8, 3e10), 0.002)):
        assert abs(recommended[key]["value"] / truth - 1) < tolerance, (key, recommended[key], truth)
        assert recommended[key]["low"] < recommended[key]["value"] < recommended[key]["high"]
    assert abs(math.log(recommended["batch_size"]["value"] / (batch_opt_tokens(3e10) / 2048))) < 0.3
    assert "not the Power form" in err
