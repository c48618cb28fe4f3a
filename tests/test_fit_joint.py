"""The joint (LR, batch) optimum of each group, laws over any variables, and the loss law, on tables made
by known laws (``powerlaw_cli.synthetic``): a Step-Law-style table (every (N, D) sweeps LR and batch
together) and a Chinchilla-style table of final losses."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from test_cli import STEPLAW_COLUMNS, invoke

from powerlaw_cli import synthetic
from powerlaw_cli.fit import FitError, fit_sweep
from powerlaw_cli.fit_data import prepare_runs
from powerlaw_cli.fit_joint import joint_optima

COLUMNS = {"N": "N", "D": "D", "batch": "bs"}
LAWS = ["--law", "lr_opt ~ N + D", "--law", "batch_opt ~ D", "--law", "loss ~ N + D"]


def steplaw_runs(seed: int = 0, **kwargs) -> pd.DataFrame:
    return prepare_runs(
        synthetic.steplaw_table(seed, **kwargs), COLUMNS, "smooth loss", "tokens", synthetic.SEQ_LEN
    )


def truths() -> dict[str, float]:
    """Every estimate the Step-Law-style fit reports, and its true value."""
    a, alpha, beta = synthetic.LR_LAW
    e, big_a, a_exp, big_b, b_exp = synthetic.LOSS_LAW
    return {
        "lr a": a,
        "lr e_N": alpha,
        "lr e_D": beta,
        "batch a (tokens)": synthetic.BATCH_LAW[0],
        "batch e_D": synthetic.BATCH_LAW[1],
        "loss E": e,
        "loss alpha_N": a_exp,
        "loss alpha_D": b_exp,
    }


def estimates(fit: dict) -> dict[str, dict]:
    lr, batch, loss = (fit["laws"][n] for n in ("lr_opt_N_D", "batch_opt_D", "loss_opt_N_D"))
    return {
        "lr a": lr["a"],
        "lr e_N": lr["exponents"]["params_non_embedding"],
        "lr e_D": lr["exponents"]["tokens"],
        "batch a (tokens)": batch["in_tokens"]["a"],
        "batch e_D": batch["exponents"]["tokens"],
        "loss E": loss["E"],
        "loss alpha_N": loss["terms"]["params_non_embedding"]["alpha"],
        "loss alpha_D": loss["terms"]["tokens"]["alpha"],
    }


def test_one_fit_command_recovers_every_law_of_a_steplaw_table(tmp_path):
    """One `plsweep fit` of a table whose (N, D) groups each sweep LR and batch: lr_opt(N, D) at B_opt,
    B_opt(D) and L(N, D) with their exponents, for several noise seeds; the 95% intervals cover the truth
    at about their rate, and are narrow enough to mean something."""
    covered, total = 0, 0
    for seed in range(4):
        path = tmp_path / f"steplaw{seed}.csv"
        synthetic.steplaw_table(seed).to_csv(path, index=False)
        code, out, err = invoke(
            "fit",
            path,
            *STEPLAW_COLUMNS,
            *LAWS,
            "--bootstrap",
            "60",
            "--seed",
            str(seed),
            "--no-plots",
            "--json",
            "--out",
            tmp_path / f"fit{seed}",
        )
        assert code == 0, err
        fit = json.loads(out)
        assert fit["n_groups"] == {"total": 16, "used": 16, "excluded": 0}
        for law in ("lr_opt_N_D", "batch_opt_D", "loss_opt_N_D"):  # none poorly determined (interval > 0.5)
            assert fit["laws"][law]["warnings"] == [], fit["laws"][law]["warnings"]
        for name, truth in truths().items():
            d = estimates(fit)[name]
            assert d["low"] < d["value"] < d["high"], name
            scale = math.log if name in ("lr a", "batch a (tokens)", "loss E") else (lambda v: v)
            width = scale(d["high"]) - scale(d["low"])
            assert abs(scale(d["value"]) - scale(truth)) < 2 * width, (seed, name, d, truth)  # never far off
            covered += d["low"] <= truth <= d["high"]
            total += 1
    assert covered >= 0.85 * total, f"{covered} of {total} intervals cover the truth"


def test_joint_optimum_of_noiseless_groups_is_the_truth():
    """Without noise, with parabolic LR curves (so that every cell's optimum is exact), each group's B_opt,
    lr_opt at B_opt and the loss there are the generating laws' values: the profile is a parabola in log2 B
    and lr_opt(B) a power of B, which the method recovers exactly."""
    runs = steplaw_runs(noise=0.0, lr_skew=0.0)
    fit = fit_sweep(runs, laws={"lr": "lr_opt ~ N + D"}, default_laws=False, n_boot=0).to_dict()
    assert (
        fit["group_keys"] == ["seq_len", "params_non_embedding", "tokens"]
        and "batch_size" in fit["cell_keys"]
    )
    for g in fit["groups"]:
        n, d = g["params_non_embedding"], g["tokens"]
        assert g["status"] == "used" and g["batch_varied"] and g["n_batches"] == 9
        assert g["batch_opt"] * synthetic.SEQ_LEN == pytest.approx(synthetic.batch_opt_tokens(d), rel=1e-9)
        assert g["lr_opt"] == pytest.approx(synthetic.lr_opt(n, d), rel=1e-9)
        assert g["loss_opt"] == pytest.approx(synthetic.loss(n, d), rel=1e-12)
    law = fit["laws"]["lr"]
    assert law["exponents"]["params_non_embedding"]["value"] == pytest.approx(synthetic.LR_LAW[1], rel=1e-9)
    assert law["exponents"]["tokens"]["value"] == pytest.approx(synthetic.LR_LAW[2], rel=1e-9)


def test_group_intervals_come_from_the_cells_and_cover_the_truth():
    """Three seeds per run give each cell a measured noise; the groups' 95% intervals for B_opt, lr_opt and
    the loss (drawn from their cells' sigmas) cover the truth for most groups, and widen with the noise."""
    tables = [synthetic.steplaw_table(s, noise=0.004).assign(seed=s) for s in range(3)]
    runs = prepare_runs(
        pd.concat(tables, ignore_index=True), COLUMNS, "smooth loss", "tokens", synthetic.SEQ_LEN
    )
    fit = fit_sweep(runs, laws={"lr": "lr_opt ~ N + D"}, default_laws=False, n_boot=200).to_dict()
    assert fit["loss_noise"]["source"] == "seeds" and fit["loss_noise"]["std"] == pytest.approx(
        0.004, rel=0.1
    )
    hits = {"batch": 0, "lr": 0, "loss": 0}
    for g in fit["groups"]:
        n, d = g["params_non_embedding"], g["tokens"]
        hits["batch"] += (
            g["batch_low"] <= synthetic.batch_opt_tokens(d) / synthetic.SEQ_LEN <= g["batch_high"]
        )
        hits["lr"] += g["lr_low"] <= synthetic.lr_opt(n, d) <= g["lr_high"]
        hits["loss"] += g["loss_low"] <= synthetic.loss(n, d) <= g["loss_high"]
    assert all(h >= 13 for h in hits.values()), hits  # of 16 groups at 95%
    quiet = fit_sweep(
        prepare_runs(
            pd.concat([synthetic.steplaw_table(s, noise=0.001).assign(seed=s) for s in range(3)]),
            COLUMNS,
            "smooth loss",
            "tokens",
            synthetic.SEQ_LEN,
        ),
        laws={"lr": "lr_opt ~ N + D"},
        default_laws=False,
        n_boot=200,
    ).to_dict()
    width = {
        k: np.median([math.log(g["batch_high"] / g["batch_low"]) for g in f["groups"]])
        for k, f in (("noisy", fit), ("quiet", quiet))
    }
    assert width["quiet"] < width["noisy"] / 1.5, width


def test_batch_optimum_on_the_edge_is_flagged_and_excluded():
    """Groups whose best batch is the largest one tested (B_opt above 256 / sqrt 2) are excluded (edge_high)
    from every group law, like an LR edge, and say so; the others still give the laws."""
    runs = steplaw_runs(batches=2 ** np.arange(3, 9))  # up to 256 sequences: B_opt(D = 1e11) = 540 is above
    fit = fit_sweep(
        runs, laws={"lr": "lr_opt ~ N + D", "b": "batch_opt ~ D"}, default_laws=False, n_boot=50
    ).to_dict()
    groups = pd.DataFrame(fit["groups"])
    nearest_is_last = synthetic.batch_opt_tokens(groups["tokens"]) / synthetic.SEQ_LEN > 256 / math.sqrt(2)
    edge = groups["reason"].str.startswith("edge_high")
    assert nearest_is_last.sum() == 8 and (edge == nearest_is_last).all()
    assert (groups.loc[edge, "status"] == "excluded").all() and groups.loc[edge, "batch_opt"].isna().all()
    for law in ("lr", "b"):
        assert set(fit["laws"][law]["points"]) == set(groups.loc[~edge, "group"])
    assert any("edge_high" in w and "groups excluded" in w for w in fit["warnings"])


def test_group_by_never_averages_other_settings():
    runs = steplaw_runs()
    with pytest.raises(FitError, match="'params_non_embedding' varies inside a group"):
        fit_sweep(runs, group_by=["D"])
    unmapped = prepare_runs(synthetic.steplaw_table(0), {"N": "N", "D": "D"}, "smooth loss")  # bs not mapped
    warnings = fit_sweep(unmapped, laws={"lr": "lr_opt ~ N + D"}, default_laws=False, n_boot=0).warnings
    assert any("average several runs and the table has no seed column" in w for w in warnings)
    with pytest.raises(FitError, match="--col batch=COLUMN"):
        prepare_runs(synthetic.steplaw_table(0), {"N": "N", "D": "D", "batch_tokens": "bs"}, "smooth loss")
    joint = fit_sweep(runs, group_by=["N", "D"], laws={"lr": "lr_opt ~ N + D"}, default_laws=False, n_boot=0)
    assert joint.group_keys == ["params_non_embedding", "tokens"]
    assert joint.cell_keys == ["params_non_embedding", "tokens", "batch_size"]
    assert (joint.cells.groupby(["params_non_embedding", "tokens"])["batch_size"].nunique() == 9).all()


def test_band_window_and_min_points_are_options_recorded_in_fit_json():
    runs = steplaw_runs()
    narrow = fit_sweep(
        runs, method="band", band=0.0005, n_boot=0, laws={"lr": "lr_opt ~ N + D"}, default_laws=False
    )
    wide = fit_sweep(
        runs,
        method="band",
        band=0.02,
        window=2,
        min_points=5,
        n_boot=0,
        laws={"lr": "lr_opt ~ N + D"},
        default_laws=False,
    )
    options = wide.to_dict()["options"]
    assert (options["method"], options["band"], options["window"], options["min_points"]) == (
        "band",
        0.02,
        2,
        5,
    )
    count = {
        name: np.mean([int(c["notes"][0].split()[0]) for c in r.to_dict()["cells"] if c["status"] == "used"])
        for name, r in (("narrow", narrow), ("wide", wide))
    }
    assert count["wide"] > count["narrow"] + 1, count  # the band's width decides how many LRs it keeps


def test_loss_law_of_a_chinchilla_style_table(tmp_path):
    """A plain table of final losses (no LR column): one command fits L(N, D) = E + A N^-alpha + B D^-beta
    and predicts the loss of a run inside the fitted range with an interval that holds the truth."""
    path = tmp_path / "chinchilla.csv"
    synthetic.chinchilla_table(0).to_csv(path, index=False)
    code, out, err = invoke(
        "fit",
        path,
        "--col",
        "N=params",
        "--col",
        "D=tokens",
        "--loss-column",
        "loss",
        "--law",
        "loss ~ N + D",
        "--predict",
        "N=2e9",
        "--predict",
        "D=1e11",
        "--bootstrap",
        "60",
        "--no-plots",
        "--json",
        "--out",
        tmp_path / "fit",
    )
    assert code == 0, err
    fit = json.loads(out)
    assert fit["mode"] == "losses" and fit["n_groups"]["used"] == 42 and fit["cells"] == []
    law = fit["laws"]["loss_opt_N_D"]
    assert (
        law["form"] == "hoffmann" and law["huber_delta"] == 1e-3 and law["optimizer"]["method"] == "L-BFGS-B"
    )
    e, _, alpha, _, beta = synthetic.LOSS_LAW
    assert law["warnings"] == []  # 42 points, no exponent interval wider than 0.5
    for d, truth in (
        (law["E"], e),
        (law["terms"]["params_non_embedding"]["alpha"], alpha),
        (law["terms"]["tokens"]["alpha"], beta),
    ):
        assert d["low"] <= truth <= d["high"], (d, truth)
    predicted = fit["predictions"]["loss_opt_N_D"]
    assert predicted["low"] <= synthetic.loss(2e9, 1e11) <= predicted["high"]
    assert predicted["high"] - predicted["low"] < 0.02  # the noise of one run is 0.5%, about 0.012 here


def test_single_variable_loss_law_when_only_d_varies():
    table = synthetic.chinchilla_table(1, params=(3e8,), tokens=np.geomspace(1e9, 1e12, 10))
    runs = prepare_runs(table, {"N": "params", "D": "tokens"}, "loss")
    law = fit_sweep(runs, laws={"d": "loss ~ D"}, n_boot=60).to_dict()["laws"]["d"]
    e, a, alpha, b, beta = synthetic.LOSS_LAW
    assert law["terms"]["tokens"]["alpha"]["low"] <= beta <= law["terms"]["tokens"]["alpha"]["high"]
    e_at_n = e + a * 3e8**-alpha  # with N fixed, the N term is part of the constant
    assert law["E"]["low"] <= e_at_n <= law["E"]["high"]
    with pytest.raises(Exception, match="params_non_embedding takes 1 values in the usable points"):
        fit_sweep(runs, laws={"nd": "loss ~ N + D"}, n_boot=0)


def test_loss_law_is_huber_robust_to_an_outlier():
    """One run with a 10% higher loss (a bad node) barely moves the Huber fit: its exponents stay inside
    the clean fit's intervals."""
    clean = synthetic.chinchilla_table(2)
    dirty = clean.copy()
    dirty.loc[17, "loss"] *= 1.10
    laws = {
        name: fit_sweep(
            prepare_runs(t, {"N": "params", "D": "tokens"}, "loss"), laws={"l": "loss ~ N + D"}, n_boot=40
        ).to_dict()["laws"]["l"]
        for name, t in (("clean", clean), ("dirty", dirty))
    }
    for var in ("params_non_embedding", "tokens"):
        c, d = laws["clean"]["terms"][var]["alpha"], laws["dirty"]["terms"][var]["alpha"]
        assert c["low"] <= d["value"] <= c["high"], (var, c, d)
    assert max(abs(r) for r in laws["dirty"]["residuals_ln"]) > 0.08  # the outlier is left as a residual


def test_joint_optima_of_one_batch_groups_are_their_cells():
    cells = pd.DataFrame(
        {
            "tokens": [1e9, 2e9],
            "batch_size": [64, 64],
            "status": ["used", "excluded"],
            "reason": ["", "edge_low: ..."],
            "method": ["parabola", ""],
            "lr_opt": [0.01, math.nan],
            "lr_low": [0.008, math.nan],
            "lr_high": [0.0125, math.nan],
            "sigma_log2": [0.16, math.nan],
            "loss_opt": [3.0, math.nan],
            "loss_sigma": [0.001, math.nan],
        }
    )
    groups = joint_optima(cells, ["tokens"], n_draws=10)
    assert groups["status"].tolist() == ["used", "excluded"] and not groups["batch_varied"].any()
    first = groups.iloc[0]
    assert (first["lr_opt"], first["lr_low"], first["lr_high"]) == (0.01, 0.008, 0.0125)
    assert first["loss_low"] == pytest.approx(3.0 - 1.959964 * 0.001) and math.isnan(first["batch_opt"])
