"""Base tuning (``fit_base``): the joint optimum of the LR and the base settings muP transfers, on tables
made by a known bowl; and ``fit``'s warning when a muP sweep's best loss does not fall with width."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from powerlaw_cli.fit import fit_sweep

TRUTH = {"lr": 0.01, "init_std": 0.06, "output_multiplier": 1.4}
CURVATURE = {"lr": 0.05, "init_std": 0.03, "output_multiplier": 0.02}  # per log2 step squared


def base_runs(
    seed: int = 0,
    *,
    inits=(0.02, 0.04, 0.08, 0.16),
    outs=(0.5, 1.0, 2.0, 4.0),
    lrs=(2**-9, 2**-8, 2**-7, 2**-6, 2**-5),
    noise: float = 0.002,
    seeds: int = 2,
) -> pd.DataFrame:
    """A base-tuning sweep at width 32: loss = 2 + sum of quadratics in log2 of each setting."""
    rng = np.random.default_rng(seed)
    rows = []
    for init in inits:
        for out in outs:
            for lr in lrs:
                settings = {"lr": lr, "init_std": init, "output_multiplier": out}
                loss = 2.0 + sum(c * math.log2(settings[k] / TRUTH[k]) ** 2 for k, c in CURVATURE.items())
                rows += [
                    {
                        "width": 32,
                        "base_width": 32,
                        "parametrization": "mup",
                        "batch_size": 16,
                        "tokens": 131072,
                        "seq_len": 64,
                        **settings,
                        "seed": s,
                        "status": "ok",
                        "final_val_loss": loss + rng.normal(0, noise),
                    }
                    for s in range(seeds)
                ]
    return pd.DataFrame(rows)


def test_fit_reports_the_tuned_base_settings_with_intervals_that_hold_the_truth():
    fit = fit_sweep(base_runs(), n_boot=200).to_dict()  # no law can be fitted (one batch, one budget): fine
    (base,) = fit["base"]
    assert base["status"] == "tuned" and base["tuned"] == ["init_std", "output_multiplier"]
    assert base["n_groups_used"] == 16
    for name in ("init_std", "output_multiplier"):
        s = base["settings"][name]
        assert s["status"] == "used" and s["method"] == "parabola"
        assert s["low"] <= TRUTH[name] <= s["high"], (name, s)
        assert s["value"] == pytest.approx(TRUTH[name], rel=0.1)
        assert s["high"] / s["low"] < 2  # narrower than one grid step
    assert base["lr_opt"]["low"] <= TRUTH["lr"] <= base["lr_opt"]["high"]
    assert base["best_group"].startswith("init_std=0.08, output_multiplier=")  # init: the nearest grid point
    assert (
        base["loss_opt"]["low"] <= 2.0 + 0.03 * math.log2(0.04 / 0.06) ** 2 + 0.02 * math.log2(1 / 1.4) ** 2
    )
    assert all(law["status"] != "fitted" for law in fit["laws"].values())
    assert not any("base setting" in w for w in fit["warnings"])


def test_a_base_optimum_on_the_grid_edge_is_flagged_and_warned_about():
    fit = fit_sweep(base_runs(inits=(0.005, 0.01, 0.02)), n_boot=50).to_dict()
    s = fit["base"][0]["settings"]["init_std"]
    assert s["status"] == "edge_high" and s["value"] == 0.02
    assert any(w.startswith("base setting init_std: edge_high") for w in fit["warnings"])
    assert fit["base"][0]["settings"]["output_multiplier"]["status"] == "used"


def test_one_seed_gives_the_base_settings_without_intervals_and_says_why():
    fit = fit_sweep(base_runs(seeds=1, lrs=(2**-8, 2**-7, 2**-6)), n_boot=50).to_dict()
    (base,) = fit["base"]
    assert base["status"] == "tuned" and "low" not in base["settings"]["init_std"]
    assert (
        "base settings: no intervals: the groups' loss noise is unknown (run two or more seeds)"
        in fit["warnings"]
    )


def test_a_sweep_without_base_settings_has_no_base_record():
    runs = base_runs(inits=(0.02,), outs=(1.0,))
    runs = pd.concat([runs.assign(tokens=t) for t in (1e5, 2e5, 4e5)])
    assert fit_sweep(runs, n_boot=20).to_dict()["base"] == []


def width_runs(parametrization: str, losses: dict[int, float]) -> pd.DataFrame:
    """LR sweeps (2 seeds) at several widths whose best loss is ``losses[width]``."""
    rng = np.random.default_rng(0)
    rows = [
        {
            "width": w,
            "base_width": 32,
            "parametrization": parametrization,
            "batch_size": 16,
            "tokens": t,
            "lr": lr,
            "seed": s,
            "status": "ok",
            "final_val_loss": best + 0.05 * math.log2(lr / 0.008) ** 2 + rng.normal(0, 0.001),
        }
        for w, best in losses.items()
        for t in (1e5, 2e5, 4e5)
        for lr in 0.008 * 2.0 ** np.arange(-2, 3)
        for s in range(2)
    ]
    return pd.DataFrame(rows)


def test_fit_warns_when_a_wider_mup_model_is_not_better():
    flat = {32: 2.19, 64: 2.16, 128: 2.17, 256: 2.11}
    warnings = fit_sweep(width_runs("mup", flat), n_boot=20).to_dict()["warnings"]
    width = [w for w in warnings if w.startswith("muP best loss does not improve with width")]
    assert len(width) == 3  # one per budget: width 128 is not below width 64
    assert all("at width 128 against" in w and "at width 64" in w and "docs/mup.md" in w for w in width)
    improving = {32: 2.19, 64: 2.10, 128: 2.03, 256: 1.96}
    assert not any(
        "improve with width" in w for w in fit_sweep(width_runs("mup", improving), n_boot=20).warnings
    )
    # sp makes no such promise the check could hold it to
    assert not any("improve with width" in w for w in fit_sweep(width_runs("sp", flat), n_boot=20).warnings)


def test_plsweep_fit_prints_the_tuned_base_settings(tmp_path):
    from test_cli import invoke

    table = tmp_path / "base.csv"
    base_runs().to_csv(table, index=False)
    code, stdout, stderr = invoke("fit", table, "--bootstrap", "50", "--no-plots", "--out", tmp_path / "fit")
    assert code == 0, stderr
    assert "tuned base settings" in stdout and "init_std=0.08, output_multiplier=" in stdout
    assert "no law could be fitted" not in stdout + stderr
