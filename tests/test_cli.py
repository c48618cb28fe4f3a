"""Every command through Typer's CliRunner (and ``plsweep --help`` as a real process): exit codes, what
they print, what they write, and one-line errors on bad input."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from test_fit import synthetic_runs
from typer.testing import CliRunner

from powerlaw_cli.cli import app
from powerlaw_cli.schedules import WSDSchedule

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
TINY_RUN = ["-s", "model.width=32", "-s", "model.depth=2", "-s", "model.n_heads=2", "-s", "model.seq_len=16",
            "-s", "model.base_width=32", "-s", "training.batch_size=8", "-s", "training.tokens=2048",
            "-s", "data.val_tokens=512", "-s", "training.eval_every_tokens=1024"]


def invoke(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "200"})
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


def test_help_as_a_real_process_lists_every_command():
    done = subprocess.run([sys.executable, "-m", "powerlaw_cli", "--help"], capture_output=True, text=True,
                          timeout=120, env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    for command in ("train", "schedule", "coord-check", "plan", "launch", "status", "collect", "fit", "export", "demo"):
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
    config.write_text('[model]\nwidth = 32\ndepth = 2\nn_heads = 2\nseq_len = 16\nbase_width = 32\n'
                      '[training]\nbatch_size = 8\ntokens = 1024\neval_every_tokens = 1024\n'
                      '[data]\nval_tokens = 512\n[optimizer]\nlr = 1e3\n')
    code, out, _ = invoke("train", config, "--out", tmp_path / "run")
    assert code == 0
    assert "status" in out and "diverged" in out  # a huge LR is an outcome, not an error


@pytest.mark.parametrize(("args", "message"), [
    (["-s", "model.widht=64"], "widht"),
    (["-s", "optimizer.lr=fast"], "optimizer.lr"),
    (["-s", "data.source=tokens", "-s", "data.path=/nonexistent/train.bin"], "/nonexistent/train.bin"),
])
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
    code, out, _ = invoke("schedule", "wsd", "--lr", "0.01", "--tokens", "1000", "--points", "11", "--json",
                          "-s", "warmup_tokens=100", "-s", "decay_fraction=0.2", "-s", "decay_shape=linear",
                          "-s", "final_lr_ratio=0", "--plot", tmp_path / "wsd.png")
    assert code == 0
    points = {p["tokens"]: p["lr"] for p in json.loads(out)["points"]}
    reference = WSDSchedule(0.01, 1000, warmup_tokens=100, decay_tokens=200, decay_shape="linear", final_ratio=0.0)
    assert points[500] == pytest.approx(0.01)
    assert points[900] == pytest.approx(0.005)
    assert points[900] == pytest.approx(reference(900))
    assert points[1000] == pytest.approx(0.0, abs=1e-12)
    assert (tmp_path / "wsd.png").read_bytes()[:8] == PNG_MAGIC


def test_schedule_prints_a_table_and_rejects_unknown_names():
    code, out, _ = invoke("schedule", "power", "--lr", "0.02", "--tokens", "1e9", "--batch-size", "256")
    assert code == 0 and "power schedule" in out and out.count("\n") > 11
    code, _, err = invoke("schedule", "triangle")
    assert code == 2 and "triangle" in err and "wsd" in err


# --- coord-check ----------------------------------------------------------------------------------

@pytest.mark.parametrize(("parametrization", "exit_code"), [("mup", 0), ("sp", 1)])
def test_coord_check_exit_status_is_the_verdict(tmp_path, parametrization, exit_code):
    code, out, _ = invoke("coord-check", "--widths", "64,128,256", "--parametrization", parametrization,
                          "--steps", "4", "--plot", tmp_path / "coord.png")
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
    assert launched["runs_total"] == 16 and launched["skipped_recorded"] == 16 and launched["runs_launched"] == 0
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
    spec.write_text(tiny_spec.read_text().replace('name = "fixture"', 'name = "two"')
                    .replace("optimizer.lr = { start = 1e-3, ratio = 4, num = 4 }", "optimizer.lr = [1e-3]")
                    .replace("training.tokens = [2048, 4096]", "training.tokens = [2048]"))
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
    runs = runs.rename(columns={"lr": "peak_lr", "batch_size": "bs", "tokens": "train_tokens",
                                "final_val_loss": "eval/loss"})
    path = tmp_path_factory.mktemp("table") / "their_runs.csv"
    runs.to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def their_fit(their_table) -> Path:
    out = their_table.parent / "fit"
    code, _, err = invoke("fit", their_table, "--col", "lr=peak_lr", "--col", "batch_size=bs",
                          "--col", "tokens=train_tokens", "--loss-column", "eval/loss", "--bootstrap", "100",
                          "--out", out, "--no-plots")
    assert code == 0, err
    return out / "fit.json"


def test_fit_reads_a_csv_with_other_column_names(their_fit):
    data = json.loads(their_fit.read_text())
    power = data["laws"]["power"]
    assert power["exponents"]["tokens"]["low"] <= -0.51 <= power["exponents"]["tokens"]["high"]
    assert data["n_cells"]["used"] == 9


def test_fit_json_output_and_predict(their_table, tmp_path):
    code, out, _ = invoke("fit", their_table, "--col", "lr=peak_lr", "--col", "batch_size=bs",
                          "--col", "tokens=train_tokens", "--loss-column", "eval/loss", "--bootstrap", "50",
                          "--predict", "batch_size=64", "--predict", "tokens=1e9", "--out", tmp_path, "--json")
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
    assert code == 2 and str(their_table) in err and "--col" in err


def test_fit_on_a_real_tiny_sweep_directory(tiny_sweep_dir):
    code, out, _ = invoke("fit", tiny_sweep_dir, "--bootstrap", "50")
    assert code == 0
    assert "cells: 4 used of 4" in out
    data = json.loads((tiny_sweep_dir / "fit" / "fit.json").read_text())
    assert data["n_cells"]["total"] == 4
    assert (tiny_sweep_dir / "runs.parquet").exists() and (tiny_sweep_dir / "fit" / "cells.png").exists()


@pytest.mark.parametrize("fmt", ["json", "yaml", "lm-engine", "torch"])
def test_export_every_format_gives_the_same_schedule(their_fit, tmp_path, fmt):
    out = tmp_path / f"rec.{fmt}"
    code, _, err = invoke("export", their_fit, "--batch-size", "64", "--tokens", "1e9", "--seq-len", "1024",
                          "--format", fmt, "--out", out, "--plot", tmp_path / "schedule.png")
    assert code == 0, err
    assert (tmp_path / "schedule.png").read_bytes()[:8] == PNG_MAGIC
    _, reference, _ = invoke("export", their_fit, "--batch-size", "64", "--tokens", "1e9", "--seq-len", "1024")
    rec = json.loads(reference)
    step = 5000  # inside the stable phase: 5000 steps x 65536 tokens of 1e9
    tokens = step * rec["target"]["batch_tokens"]
    a, b = rec["constants"]["a"]["value"], rec["constants"]["b"]["value"]
    expected = min(rec["constants"]["lr_max"], a * 64 * tokens**b)
    text = out.read_text()
    if fmt in ("json", "yaml"):
        assert (json.loads(text) if fmt == "json" else yaml.safe_load(text)) == rec
        peak = rec["recommended"]["peak_lr"]
        assert peak["low"] <= 4.6 * 64 * 1e9**-0.51 <= peak["high"]
    elif fmt == "lm-engine":
        args = yaml.safe_load(text)
        extra = args["extra_lr_scheduler_args"]
        lm_engine_lr = min(args["max_lr"], extra["a"] * (step * extra["c"]) ** extra["b"])
        assert lm_engine_lr == pytest.approx(expected, rel=1e-9)
    else:
        namespace = {"model": torch.nn.Linear(2, 2)}
        exec(compile(text, str(out), "exec"), namespace)  # the snippet we generated, run as a user would
        optimizer, scheduler = namespace["optimizer"], namespace["scheduler"]
        for _ in range(step):
            optimizer.step()
            scheduler.step()
        assert optimizer.param_groups[0]["lr"] == pytest.approx(expected, rel=1e-9)


def test_export_prints_to_stdout_and_refuses_a_missing_fit(their_fit, tmp_path):
    code, out, err = invoke("export", their_fit.parent, "--batch-size", "64", "--tokens", "1e9")
    assert code == 0 and json.loads(out)["target"]["batch_size"] == 64
    assert "schedule plot:" in err and str(their_fit.parent) in err
    code, _, err = invoke("export", tmp_path, "--batch-size", "64", "--tokens", "1e9")
    assert code == 2 and "no fit.json" in err
