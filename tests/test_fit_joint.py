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


# --- Step Law's own estimator: --method band --band-mode steplaw ---------------------------------------

STEPLAW_LAWS = {"lr": "lr_opt ~ N + D", "bopt": "batch_opt ~ D"}


def symmetric_steplaw_table() -> pd.DataFrame:
    """Per (N, D): LRs and batches on x2 grids centred on the true optimum, and a tilted bowl that is the
    same seen from the optimum in either direction, so the band's geometric mean is the truth exactly."""
    rows = []
    for n in (1e7, 1e8, 1e9):
        for d in (1e9, 1e10, 1e11):
            lr_star, b_star = float(synthetic.lr_opt(n, d)), float(synthetic.batch_opt_tokens(d))
            for j in range(-3, 4):
                for k in range(-3, 4):
                    loss = float(synthetic.loss(n, d)) * (1 + 0.001 * (j * j + 2 * k * k + j * k))
                    rows.append(
                        {
                            "N": n,
                            "D": d,
                            "lr": lr_star * 2.0**k,
                            "bs": b_star / synthetic.SEQ_LEN * 2.0**j,
                            "smooth loss": loss,
                        }
                    )
    return pd.DataFrame(rows)


def test_steplaw_band_recovers_the_laws_of_a_symmetric_table_exactly():
    runs = prepare_runs(symmetric_steplaw_table(), COLUMNS, "smooth loss")  # batch in sequences
    fit = fit_sweep(
        runs, method="band", band_mode="steplaw", laws=STEPLAW_LAWS, default_laws=False, n_boot=50
    )
    data = fit.to_dict()
    groups = fit.groups
    assert (groups["method"] == "band_steplaw").all() and (groups["n_band"] > 1).all()
    lr, bopt = data["laws"]["lr"], data["laws"]["bopt"]
    a, alpha, beta = synthetic.LR_LAW
    assert lr["a"]["value"] == pytest.approx(a, rel=1e-9) and lr["weighted"]
    assert lr["exponents"]["params_non_embedding"]["value"] == pytest.approx(alpha, abs=1e-9)
    assert lr["exponents"]["tokens"]["value"] == pytest.approx(beta, abs=1e-9)
    assert bopt["a"]["value"] == pytest.approx(synthetic.BATCH_LAW[0] / synthetic.SEQ_LEN, rel=1e-9)
    assert bopt["exponents"]["tokens"]["value"] == pytest.approx(synthetic.BATCH_LAW[1], abs=1e-9)
    # today's profile method on the same table is a different estimator (and, here, also near the truth)
    profile = fit_sweep(runs, method="band", laws=STEPLAW_LAWS, default_laws=False, n_boot=0)
    assert "n_band" not in profile.groups


def test_steplaw_band_is_least_squares_over_every_point_within_the_band():
    """The paper's procedure on a table with noise and grids not centred on the optimum: per (N, D) keep
    every run within 0.25% of the best loss, then least squares of ln lr on (ln N, ln D) and of ln B on
    ln D over all kept runs. Computed here from the raw table, it must equal the fitted laws."""
    raw = synthetic.steplaw_table(3, noise=0.004)
    runs = prepare_runs(raw, COLUMNS, "smooth loss", "tokens", synthetic.SEQ_LEN)
    fit = fit_sweep(
        runs, method="band", band_mode="steplaw", laws=STEPLAW_LAWS, default_laws=False, n_boot=50
    )
    finite = raw[np.isfinite(raw["smooth loss"])]
    best = finite.groupby(["N", "D"])["smooth loss"].transform("min")
    kept = finite[finite["smooth loss"] <= best * 1.0025]
    assert int(fit.groups["n_band"].sum()) == len(kept)
    X = np.column_stack([np.ones(len(kept)), np.log(kept["N"]), np.log(kept["D"])])
    coef = np.linalg.lstsq(X, np.log(kept["lr"]), rcond=None)[0]
    lr = fit.laws["lr"]
    assert [
        math.log(lr["a"]["value"]),
        *(lr["exponents"][v]["value"] for v in ("params_non_embedding", "tokens")),
    ] == (pytest.approx(coef.tolist(), abs=1e-9))
    coef_b = np.linalg.lstsq(X[:, [0, 2]], np.log(kept["bs"]), rcond=None)[0]
    bopt = fit.laws["bopt"]
    assert math.log(bopt["in_tokens"]["a"]["value"]) == pytest.approx(coef_b[0], abs=1e-9)
    assert bopt["exponents"]["tokens"]["value"] == pytest.approx(coef_b[1], abs=1e-9)
    assert (
        lr["n_points"] == len(fit.groups) == 16
    )  # intervals: a bootstrap over groups, not over the kept runs


def test_band_mode_is_checked_and_the_cli_takes_it(tmp_path):
    steplaw_csv = tmp_path / "steplaw.csv"
    synthetic.steplaw_table(0, params=(1e7, 1e8, 1e9), tokens=(1e9, 1e10, 1e11)).to_csv(
        steplaw_csv, index=False
    )
    with pytest.raises(FitError, match="--band-mode 'x'"):
        fit_sweep(steplaw_runs(), method="band", band_mode="x")
    with pytest.raises(FitError, match="--weighted and --band-mode steplaw"):
        fit_sweep(steplaw_runs(), method="band", band_mode="steplaw", weighted=True)
    code, stdout, stderr = invoke(
        "fit",
        steplaw_csv,
        *STEPLAW_COLUMNS,
        *LAWS[:4],
        "--method",
        "band",
        "--band-mode",
        "steplaw",
        "--bootstrap",
        "20",
        "--out",
        tmp_path,
        "--json",
    )
    assert code == 0, stderr
    data = json.loads(stdout)
    assert data["options"]["band_mode"] == "steplaw"
    assert {g["method"] for g in data["groups"]} == {"band_steplaw"}
    assert (
        tmp_path / "groups.png"
    ).stat().st_size > 5000  # the batch profiles are drawn for these groups too
