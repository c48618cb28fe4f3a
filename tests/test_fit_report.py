"""The fit's terminal rows (fit_report) say what fit.json holds: every number under its own header, each
law's units, failed laws and skipped checks with their reasons."""

from __future__ import annotations

import copy

import pytest
from test_fit import synthetic_runs

from powerlaw_cli.fit import fit_sweep
from powerlaw_cli.fit_report import (
    cell_rows,
    group_rows,
    interval,
    loss_law_rows,
    power_law_rows,
    transfer_rows,
    units_lines,
)


@pytest.fixture(scope="module")
def fit() -> dict:
    """A fit of a synthetic LR x batch x tokens sweep whose loss has a batch optimum (one width)."""
    runs = synthetic_runs(0, batches=(16, 32, 64, 128), tokens=(1e8, 4e8, 1.6e9), batch_law=(0.05, 0.4))
    return fit_sweep(runs, n_boot=40, seed=0).to_dict()


def test_interval_formats_a_value_and_its_bounds():
    assert interval({"value": 0.012345, "low": 0.01, "high": 0.015}) == "0.01235 [0.01, 0.015]"
    assert interval({"value": 2.0, "low": None, "high": None}) == "2"
    assert interval(None) == "-" and interval({"value": None}) == "-"


def test_power_law_rows_hold_the_fitted_numbers_and_the_batch_in_tokens_form(fit):
    rows = {row["law"]: row for row in power_law_rows(fit)}
    power = fit["laws"]["power"]
    assert rows["power"]["a"] == interval(power["a"])
    assert rows["power"]["e_B"] == interval(power["exponents"]["batch_size"]) + " (fixed)"
    assert rows["power"]["e_D"] == interval(power["exponents"]["tokens"])
    assert rows["power"]["n"] == power["n_points"] and rows["power"]["R2"] == round(power["r2"], 4)
    if power.get("in_tokens"):
        tokens_row = rows["power (tokens)"]
        assert "e_B" not in tokens_row and tokens_row["a"] == interval(power["in_tokens"]["a"])
    failed = {name for name, law in fit["laws"].items() if law["status"] != "fitted"}
    assert {name for name, row in rows.items() if "status" in row} == failed
    assert {"free", "power"} <= set(rows) - failed


def test_a_failed_law_is_a_row_with_its_error_and_no_numbers(fit):
    broken = copy.deepcopy(fit)
    broken["laws"]["power"] |= {"status": "failed", "error": "too few cells"}
    row = next(r for r in power_law_rows(broken) if r["law"] == "power")
    assert row == {
        "law": "power",
        "formula": fit["laws"]["power"]["formula"],
        "status": "failed: too few cells",
    }


def test_units_name_every_variable_of_every_law(fit):
    lines = units_lines(fit)
    assert len(lines) == len(fit["laws"]) + sum(bool(law.get("in_tokens")) for law in fit["laws"].values())
    power = next(line for line in lines if line.startswith("power: "))
    assert (
        "lr_opt [base LR]" in power
        and "B = batch_size [sequences]" in power
        and "D = tokens [tokens]" in power
    )


def test_cell_and_group_rows_follow_fit_json(fit):
    cells = cell_rows(fit)
    assert [row["cell"] for row in cells] == [c["cell"] for c in fit["cells"]]
    first = fit["cells"][0]
    assert cells[0]["lr_opt"] == interval(
        {"value": first["lr_opt"], "low": first["lr_low"], "high": first["lr_high"]}
    )
    groups = group_rows(fit)
    assert len(groups) == sum(bool(g.get("batch_varied")) for g in fit["groups"]) > 0
    assert {row["status"] for row in groups} <= {"used", "excluded"}


def test_loss_law_rows_only_for_loss_laws_and_transfer_says_why_it_was_skipped(fit):
    assert loss_law_rows(fit) == []  # this fit has no loss law
    assert transfer_rows(fit) == [{"verdict": "skipped", "reason": fit["transfer"]["reason"]}]
