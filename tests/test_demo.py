"""demo.run_demo on a finished sweep: nothing is retrained, and a sweep without a Power law is a finding
(``fit_error``), never an exception; the example target is the largest batch at 10x the largest budget."""

from __future__ import annotations

import pytest

from powerlaw_cli.config import ConfigError
from powerlaw_cli.demo import demo_spec, example_target, run_demo
from powerlaw_cli.fit import FitError, run_fit
from powerlaw_cli.spec import load_sweep


def test_example_target_is_the_largest_batch_at_ten_times_the_largest_budget(tiny_spec):
    runs = load_sweep(tiny_spec).runs
    assert example_target(runs) == (16, 40960)
    assert example_target(runs, scale=2.5) == (16, 10240)


def test_demo_spec_names_the_shipped_files():
    assert demo_spec(quick=True).name == "demo-quick.toml" and demo_spec(quick=False).name == "demo.toml"


def test_run_demo_on_a_finished_sweep_retrains_nothing_and_reports_what_the_fit_found(
    tiny_spec, tiny_sweep_dir
):
    result = run_demo(tiny_spec, tiny_sweep_dir, bootstrap=40)
    assert result.launched.runs_launched == 0 and result.launched.skipped_recorded == 16
    assert result.collected.runs == 16
    try:
        fitted = run_fit(tiny_sweep_dir, out=tiny_sweep_dir / "refit", n_boot=40, plots=False).fit
    except FitError as err:  # no law at all: the demo says why and has nothing to export
        assert result.fit_json is None and result.fit_error == str(err)
        return
    b = (
        fitted["laws"]["power"]["exponents"]["tokens"]["value"]
        if fitted["laws"]["power"]["status"] == "fitted"
        else 0
    )
    if b < 0:
        assert result.recommendation is not None and result.schedule_png.is_file() and not result.fit_error
    else:  # lr_opt does not fall with tokens: no Power schedule, said in words
        assert result.recommendation is None and "not negative" in result.fit_error
    assert result.fit_json == tiny_sweep_dir / "fit" / "fit.json" and result.fit_json.is_file()


def test_run_demo_refuses_a_missing_spec_in_one_line(tmp_path):
    with pytest.raises(ConfigError, match=r"nope.toml: cannot read the sweep file"):
        run_demo(tmp_path / "nope.toml", tmp_path / "out")
