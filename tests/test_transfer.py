"""The muP transfer check's verdict on synthetic optima whose truth is known.

``transfer_check`` says ``transfers`` when the shift of lr_opt over the width range and its interval are
within a factor 2, ``shifts`` when the whole interval is beyond it, else ``uncertain``. Each verdict is
asserted on per-cell optima drawn around a known law, and once end to end from loss curves through
``fit_sweep``.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from powerlaw_cli.fit import fit_sweep
from powerlaw_cli.fit_groups import transfer_check

WIDTHS = (32, 64, 128, 256)
BUDGETS = (131072, 262144, 524288)  # one group of widths per budget


def flat(width: float) -> float:
    return 0.01


def inverse_width(width: float) -> float:
    return 0.01 * 32 / width  # sp's expected lr_opt ~ 1/width: 8x lower at 8x the width


def optima(law, sigma_log2: float, seed: int) -> pd.DataFrame:
    """Per-cell optima as ``fit.find_cell_optima`` returns them: the true lr_opt times 2^N(0, sigma_log2)."""
    rng = np.random.default_rng(seed)
    rows = [
        {
            "tokens": tokens,
            "width": width,
            "status": "used",
            "sigma_log2": sigma_log2,
            "lr_opt": law(width) * 2.0 ** rng.normal(0.0, sigma_log2),
        }
        for tokens in BUDGETS
        for width in WIDTHS
    ]
    return pd.DataFrame(rows)


def check(cells: pd.DataFrame) -> dict:
    return transfer_check(cells, ["tokens", "width"], n_boot=500, seed=0)


@pytest.mark.parametrize("seed", range(5))
def test_flat_optimum_with_small_noise_transfers(seed):
    result = check(optima(flat, 0.15, seed))
    assert result["verdict"] == "transfers"
    shift = result["shift_factor"]
    assert 0.5 <= shift["low"] <= shift["value"] <= shift["high"] <= 2.0
    assert result["widths"] == list(WIDTHS) and result["n_groups"] == len(BUDGETS)


@pytest.mark.parametrize("seed", range(5))
def test_optimum_falling_as_one_over_width_shifts(seed):
    result = check(optima(inverse_width, 0.15, seed))
    assert result["verdict"] == "shifts"
    shift = result["shift_factor"]
    assert shift["value"] == pytest.approx(1 / 8, rel=0.5)
    assert shift["high"] < 0.5  # all of the interval beyond x2


@pytest.mark.parametrize(("law", "sigma_log2"), [(flat, 1.5), (inverse_width, 2.0)])
def test_noise_too_large_to_tell_is_uncertain(law, sigma_log2):
    """The optima lie exactly on the law, but each is known only to +-1.5 (flat) or +-2 (x1/8) doublings:
    the interval reaches both inside and beyond the x2 tolerance."""
    result = check(optima(law, 0.0, seed=0).assign(sigma_log2=sigma_log2))
    shift = result["shift_factor"]
    assert shift["value"] == pytest.approx(law(256) / law(32))
    assert shift["low"] < 0.5 and shift["high"] > 0.5
    assert result["verdict"] == "uncertain"


@pytest.mark.parametrize("seed", range(10))
def test_a_flat_optimum_under_large_noise_is_never_called_a_shift(seed):
    """Estimates scattered by 1.5 doublings each around a flat truth: the point estimate is often beyond x2."""
    result = check(optima(flat, 1.5, seed))
    assert result["verdict"] == "uncertain", result["shift_factor"]


def test_a_shift_beyond_the_tolerance_whose_interval_reaches_inside_it_is_uncertain():
    """One group: the point estimate is x3 (beyond x2), but each optimum is known only to +-1 doubling."""
    cells = pd.DataFrame(
        {
            "tokens": 131072,
            "width": WIDTHS,
            "status": "used",
            "sigma_log2": 1.0,
            "lr_opt": [0.01 * (w / 32) ** (math.log2(3) / 3) for w in WIDTHS],
        }
    )
    result = check(cells)
    assert result["shift_factor"]["value"] == pytest.approx(3.0)
    assert result["shift_factor"]["low"] < 2.0
    assert result["verdict"] == "uncertain"


def synthetic_runs(law, seeds: int = 3, noise: float = 0.003, seed: int = 0) -> pd.DataFrame:
    """Runs whose final loss is a bowl in log2 LR around ``law(width)``, with per-run noise, on a x2 grid."""
    rng = np.random.default_rng(seed)
    rows = []
    for width in WIDTHS:
        for lr in 0.0005 * 2.0 ** np.arange(9):  # 0.0005 .. 0.128
            for s in range(seeds):
                distance = math.log2(lr) - math.log2(law(width))
                loss = 3.0 - 0.1 * math.log2(width) + 0.02 * distance**2 + rng.normal(0, noise)
                rows.append(
                    {
                        "width": width,
                        "lr": lr,
                        "seed": s,
                        "batch_size": 16,
                        "tokens": 131072,
                        "status": "ok",
                        "final_val_loss": loss,
                    }
                )
    return pd.DataFrame(rows)


@pytest.mark.parametrize("law, verdict", [(flat, "transfers"), (inverse_width, "shifts")])
def test_fit_sweep_finds_the_verdict_from_loss_curves(law, verdict):
    fit = fit_sweep(synthetic_runs(law), laws={"width": "lr_opt ~ width"}, default_laws=False, n_boot=300)
    assert (fit.cells["status"] == "used").all()
    assert fit.transfer["verdict"] == verdict
    expected = law(256) / law(32)
    assert fit.transfer["shift_factor"]["low"] <= expected <= fit.transfer["shift_factor"]["high"]
