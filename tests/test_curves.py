"""plsweep curves: the multi-power law's sums, recovery of known parameters, prediction of a held-out
schedule, bad curves, and the command on a real tiny sweep."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from test_cli import invoke

from powerlaw_cli.curve_laws import MPL, Design, fit_law, law_loss, metrics
from powerlaw_cli.schedules import ConstantSchedule, CosineSchedule, WSDSchedule

TRUE = np.array([3.0, 0.5, 0.5, 100.0, 2.0, 0.6, 0.5])  # L0, A, alpha, B, C, beta, gamma
PEAK, WARMUP = 3e-3, 20


def per_step(schedule, steps: int) -> np.ndarray:
    """The LR of steps 1..steps (step k trains with schedule(k - 1), one token per step)."""
    return np.array([schedule(k) for k in range(steps)])


def schedules(steps: int) -> dict[str, np.ndarray]:
    return {
        "constant": per_step(ConstantSchedule(PEAK, WARMUP), steps),
        "cosine": per_step(CosineSchedule(PEAK, steps, WARMUP, 0.1), steps),
        "wsd": per_step(WSDSchedule(PEAK, steps, WARMUP, steps // 5), steps),
    }


def naive_mpl(params: np.ndarray, eta: np.ndarray, t: int) -> float:
    """The law's formula summed term by term (O(t^2)), from the first largest LR on."""
    L0, A, alpha, B, C, beta, gamma = params
    peak = int(np.argmax(eta))
    ld = 0.0
    for k in range(peak + 1, t):  # 0-based step k; eta[k - 1] is the step before
        s = eta[k:t].sum()
        ld += (eta[k - 1] - eta[k]) * (1 - (C * eta[k] ** -gamma * s + 1) ** -beta)
    return L0 + A * eta[:t].sum() ** -alpha - B * ld


def test_the_cumulative_form_equals_the_law_summed_term_by_term():
    at = np.array([25, 100, 217, 250, 300])
    wsd = schedules(300)["wsd"]  # 60 LR changes: exact
    fast = law_loss("mpl", TRUE, Design.build(wsd, at))
    assert np.allclose(fast, [naive_mpl(TRUE, wsd, t) for t in at], rtol=1e-12)
    cosine = schedules(300)["cosine"]  # a change at every step
    fast = law_loss("mpl", TRUE, Design.build(cosine, at))
    assert np.allclose(fast, [naive_mpl(TRUE, cosine, t) for t in at], rtol=1e-12)


@pytest.fixture(scope="module")
def synthetic_fit():
    """The MPL fitted (Huber, block bootstrap) on noisy constant, cosine and WSD curves of TRUE."""
    rng = np.random.default_rng(0)
    designs, losses = [], []
    for eta in schedules(1000).values():
        design = Design.build(eta, np.arange(WARMUP + 1, 1001, 9))
        designs.append(design)
        losses.append(law_loss("mpl", TRUE, design) + rng.normal(0, 0.003, len(design.at)))
    return fit_law("mpl", designs, losses, n_boot=30)


def test_known_parameters_are_recovered_within_their_intervals(synthetic_fit):
    assert synthetic_fit.converged and not synthetic_fit.on_bound
    for name, true in zip(MPL.params, TRUE, strict=True):
        row = synthetic_fit.intervals()[name]
        assert row["low"] <= true <= row["high"], (name, row)
    assert abs(synthetic_fit.params["L0"] - 3.0) < 0.01 and abs(synthetic_fit.params["alpha"] - 0.5) < 0.02


def test_a_held_out_3x_longer_schedule_is_predicted_and_beats_the_tissue_law(synthetic_fit):
    eta = per_step(WSDSchedule(PEAK, 3000, WARMUP, 600, "1-sqrt"), 3000)
    design = Design.build(eta, np.arange(WARMUP + 1, 3001, 10))
    truth = law_loss("mpl", TRUE, design)
    mpl = metrics(law_loss("mpl", synthetic_fit.vector(), design), truth)
    assert mpl["pred_e"] < 1e-3 and mpl["worst_e"] < 3e-3 and mpl["r2"] > 0.999
    rng = np.random.default_rng(0)
    tissue_designs, tissue_losses = [], []
    for eta_fit in schedules(1000).values():
        d = Design.build(eta_fit, np.arange(WARMUP + 1, 1001, 9))
        tissue_designs.append(d)
        tissue_losses.append(law_loss("mpl", TRUE, d) + rng.normal(0, 0.003, len(d.at)))
    tissue = fit_law("tissue", tissue_designs, tissue_losses, n_boot=0)
    assert metrics(law_loss("tissue", tissue.vector(), design), truth)["rmse"] > 3 * mpl["rmse"]


# --- tables of curves: bad input ----------------------------------------------------------------


def curve_rows(run: str, eta: np.ndarray, every: int = 5, **extra) -> pd.DataFrame:
    steps = np.arange(every, len(eta) + 1, every)
    design = Design.build(eta, steps[steps > WARMUP])
    loss = np.r_[np.full((steps <= WARMUP).sum(), 6.0), law_loss("mpl", TRUE, design)]
    return pd.DataFrame({"name": run, "it": steps, "rate": eta[steps - 1], "nll": loss, **extra})


def write_curves(path, frames) -> str:
    pd.concat(frames).to_csv(path, index=False)
    return str(path)


OPTIONS = ("--col", "run=name", "--col", "step=it", "--col", "lr=rate", "--loss-column", "nll")


def test_bad_curves_are_one_line_each_naming_the_run_and_the_good_ones_are_fitted(tmp_path):
    sched = schedules(200)
    good = [curve_rows("const", sched["constant"][:120]), curve_rows("wsd", sched["wsd"])]
    decreasing = curve_rows("back", sched["constant"])
    decreasing.loc[decreasing.index[3], "it"] = 2
    no_lr = curve_rows("no_lr", sched["constant"])
    no_lr.loc[no_lr.index[4], "rate"] = np.nan
    negative = curve_rows("negative", sched["constant"])
    negative.loc[negative.index[5], "rate"] = -1e-3
    nan_loss = curve_rows("nan_loss", sched["constant"])
    nan_loss.loc[nan_loss.index[6], "nll"] = np.nan
    single = curve_rows("single", sched["constant"]).iloc[:1]
    alone = curve_rows("alone", sched["constant"], model="other")
    frames = [
        f.assign(model=f.get("model", "m")) for f in [*good, decreasing, no_lr, negative, nan_loss, single]
    ]
    path = write_curves(tmp_path / "curves.csv", [*frames, alone])
    code, out, err = invoke("curves", path, *OPTIONS, "--bootstrap", "3", "--no-plots")
    assert code == 0, err
    lines = out.splitlines()

    def line(run):
        found = [x for x in lines if f"run {run}:" in x]
        assert len(found) == 1, (run, out)
        return found[0]

    assert "steps do not increase: step 2 follows 15" in line("back")
    assert "LR is missing or NaN at step 25" in line("no_lr")
    assert "negative LR -0.001 at step 30" in line("negative")
    assert "loss is missing or NaN at step 35" in line("nan_loss")
    assert "a single logged point" in line("single")
    assert any("group model=other" in x and "one curve only" in x and "alone" in x for x in lines), out
    data = json.loads((tmp_path / "curves" / "curves.json").read_text())
    fitted = [g for g in data["groups"] if g["status"] == "fitted"]
    assert len(fitted) == 1 and fitted[0]["fitted"] == ["const"] and fitted[0]["predicted"] == ["wsd"]
    assert fitted[0]["laws"]["mpl"]["metrics"]["pred_e"] < 0.02


def test_no_usable_curve_is_one_error_line(tmp_path):
    frame = curve_rows("only", schedules(200)["constant"]).iloc[:1]
    code, _, err = invoke("curves", write_curves(tmp_path / "c.csv", [frame]), *OPTIONS)
    assert code == 2 and err.count("\n") == 1
    assert err.startswith("error: ") and "no usable curve" in err and "run only: a single logged point" in err
    code, _, err = invoke(
        "curves", write_curves(tmp_path / "d.csv", [frame]), "--col", "run=name", "--col", "step=nope"
    )
    assert code == 2 and "no step column 'nope'" in err and "--col step=COLUMN" in err
    code, _, err = invoke("curves", tmp_path / "d.csv", *OPTIONS, "--predict", "wsd")
    assert code == 2 and "--predict needs the run length: --tokens N" in err


# --- the command on a real tiny sweep ----------------------------------------------------------


def test_curves_on_a_real_tiny_sweep_fits_predicts_and_draws(tiny_sweep_dir):
    args = ("--bootstrap", "4", "--predict", "wsd", "--tokens", "8192", "-s", "decay_fraction=0.2")
    code, out, err = invoke("curves", tiny_sweep_dir, *args, "-s", "decay_shape=1-sqrt", "--json")
    assert code == 0, err
    data = json.loads(out)
    fitted = [g for g in data["groups"] if g["status"] == "fitted"]
    assert len(fitted) == 8 and set(data["group_by"]) >= {"lr", "batch_size", "width"}
    runs = pd.read_parquet(tiny_sweep_dir / "runs.parquet").set_index("run_id")
    for group in fitted:  # the 2048-token run fitted, the 4096-token one predicted
        assert [runs.loc[r, "tokens"] for r in group["fitted"] + group["predicted"]] == [2048, 4096]
        assert runs.loc[group["fitted"][0], "lr"] == group["group"]["lr"]
        law = group["laws"]["mpl"]
        assert set(law["params"]) == set(MPL.params) and set(law["metrics"]) == {
            "r2",
            "mae",
            "rmse",
            "pred_e",
            "worst_e",
        }
        pred = group["prediction"]
        assert pred["steps"] == 8192 // (group["group"]["batch_size"] * 16)
        assert pred["settings"] == {"decay_fraction": "0.2", "decay_shape": "1-sqrt"}
        final = pred["mpl"]["final"]
        assert 0 < final["value"] < 10 and final["low"] <= final["high"]
    assert (tiny_sweep_dir / "curves" / "curves.json").is_file()
    assert len(data["figures"]) == 8 and all(p.endswith(".png") for p in data["figures"])
    code, out, _ = invoke("curves", tiny_sweep_dir, "--bootstrap", "0", "--no-plots")
    assert code == 0 and "predicted curves" in out and "pred_e" in out


def test_fit_fills_an_untrained_budget_with_predicted_losses_flagged_predicted(tiny_sweep_dir):
    code, out, err = invoke(
        "fit", tiny_sweep_dir, "--predicted-budgets", "8192", "--bootstrap", "20", "--json"
    )
    assert code == 0, err
    fit = json.loads(out)
    predicted = [c for c in fit["cells"] if c.get("predicted")]
    assert fit["predicted_budgets"]["runs"] == 8 and fit["predicted_budgets"]["cells"] == 2 == len(predicted)
    assert {c["tokens"] for c in predicted} == {8192} and {c["batch_size"] for c in predicted} == {8, 16}
    for cell in predicted:
        assert len(cell["predicted_points"]) == 4
        for lr, loss, low, high in cell["predicted_points"]:
            assert lr in (1e-3, 4e-3, 1.6e-2, 6.4e-2) and low <= high and 0 < loss < 10
    assert not any(c.get("predicted") for c in fit["cells"] if c["tokens"] != 8192)
    code, _, err = invoke("fit", tiny_sweep_dir, "--predicted-budgets", "8k")
    assert code == 2 and "--predicted-budgets '8k': expected comma-separated token counts" in err
