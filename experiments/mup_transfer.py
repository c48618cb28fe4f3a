"""Experiment 1, muP LR transfer: does the optimal LR stay put across widths 32..256 with muP, under each
weight-decay rule, while it falls with sp? And does the answer change when training is 4x longer?

    python experiments/mup_transfer.py --workers 1      # ~2.5 hours on a 2-core CPU, 828 runs

Main sweeps, the three files ``mup_coupled``, ``mup_independent`` and ``sp`` in experiments/mup_transfer/:
3 seeds x 6 LRs x widths 32, 64, 128, 256 x budgets of 128, 256 and 512 steps each (the budgets of a
setting share one WSD trunk). The horizon check, ``horizon.toml``: both muP rules at widths 32, 64, 128
for 512, 1024 and 2048 steps, 2 seeds x 5 LRs. Per variant and budget, ``run_fit`` (the pipeline of ``plsweep fit``) finds lr_opt per
width (the seeds' mean loss per LR; their spread is the loss noise) and the transfer check (the shift of
lr_opt over the width range, its 95% interval and verdict). Also reported: lr_opt of each seed on its
own, the best loss per width, the plateau criterion (the loss curves must have left the initial plateau
at the unigram entropy by 0.5 nats at the budget judged; the widths' separation is reported), and whether the
variants are the same model, bit for bit, at the base width. Writes mup_transfer.{md,json} and
mup_transfer{,_curves,_horizon}.png into docs/figures/.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from common import HERE, arguments, curves, fmt, markdown_table, run_sweep, write_outputs  # noqa: E402

from powerlaw_cli.config import RunConfig  # noqa: E402
from powerlaw_cli.data import load_source  # noqa: E402
from powerlaw_cli.fit import FitError, run_fit  # noqa: E402
from powerlaw_cli.plots import save  # noqa: E402
from powerlaw_cli.spec import load_sweep  # noqa: E402

NAME = "mup_transfer"
VARIANTS = {  # label: sweep file in experiments/mup_transfer/
    "mup, coupled wd": "mup_coupled.toml",
    "mup, independent wd": "mup_independent.toml",
    "sp": "sp.toml",
}
HORIZON = "horizon.toml"  # both muP rules in one sweep, told apart by optimizer.weight_decay_rule
DIAGNOSIS = (
    "diagnosis.toml",
    "diagnosis_init.toml",
)  # muP at 256 steps, seed 0, with sp's init or attention scale
RULE_LABELS = {"coupled": "mup, coupled wd", "independent": "mup, independent wd"}
PLATEAU_GAP = 0.5  # nats: the best loss must be this far below the unigram entropy (the initial plateau)


def main() -> None:
    parser = arguments(__doc__.splitlines()[0])
    parser.add_argument(
        "--sweeps", type=Path, default=HERE / "mup_transfer", help="folder of the sweep files"
    )
    args = parser.parse_args()
    runs, curve_tables, spans = {}, {}, {}
    for label, file in VARIANTS.items():
        runs[label], curve_tables[label], spans[file] = sweep(args.sweeps / file, args)
    horizon_runs, _, spans[HORIZON] = sweep(args.sweeps / HORIZON, args)
    diagnosis_runs = []
    for file in DIAGNOSIS:
        part, _, spans[file] = sweep(args.sweeps / file, args)
        diagnosis_runs.append(part)
    horizon = {
        RULE_LABELS[rule]: part for rule, part in horizon_runs.groupby(horizon_runs["config"].map(rule_of))
    }
    entropy = unigram_entropy(RunConfig.from_dict(json.loads(runs["sp"]["config"].iloc[0])))
    results = {
        "unigram_entropy": entropy,
        "variants": {label: analyse(part, entropy) for label, part in runs.items()},
        "horizon": {label: analyse(part, entropy) for label, part in horizon.items()},
        "base_width_identical": base_width_check(runs),
        "diagnosis": diagnose(pd.concat(diagnosis_runs), runs),
        "sweep_hours": spans,
    }
    budgets = sorted(int(t) for t in runs["sp"]["tokens"].unique())
    figures = [
        plot_lr_curves(results["variants"], budgets[-1], args.figures / f"{NAME}.png"),
        plot_loss_curves(runs, curve_tables, results, args.figures / f"{NAME}_curves.png"),
        plot_horizon(results, args.figures / f"{NAME}_horizon.png"),
    ]
    results["figures"] = [path.name for path in figures]
    text = "\n".join(
        [
            "## Main sweeps\n",
            variant_tables(results["variants"], entropy),
            f"At the base width the three variants are the same model; their final losses are identical bit for "
            f"bit: {results['base_width_identical']}.\n",
            "## Horizon check (muP only, widths 32, 64, 128)\n",
            variant_tables(results["horizon"], entropy),
            "## Diagnosis: muP against sp at the widest width\n",
            diagnosis_tables(results["diagnosis"]),
            "Sweep wall time, hours (first start to last finish): "
            + ", ".join(f"{file} {hours:.2f}" for file, hours in spans.items())
            + "\n",
        ]
    )
    write_outputs(NAME, args.figures, text, results)


def sweep(spec: Path, args) -> tuple[pd.DataFrame, pd.DataFrame, float]:
    """Run (or resume) one sweep file; its runs, its curves, and its wall time in hours."""
    out = args.results / load_sweep(spec).name
    runs = run_sweep(spec, out, args.workers)
    span = pd.to_datetime(runs["finished_at"]).max() - pd.to_datetime(runs["started_at"]).min()
    return runs, curves(out), span.total_seconds() / 3600


def rule_of(config: str) -> str:
    """The weight-decay rule of a run from its config JSON (runs from before the setting existed: coupled)."""
    return json.loads(config)["optimizer"].get("weight_decay_rule", "coupled")


def analyse(runs: pd.DataFrame, entropy: float) -> dict:
    """Per budget: the fit (optima per width with seeds pooled, the transfer check), lr_opt per seed,
    the best loss per width, and the plateau criterion."""
    out = {}
    for tokens, part in runs.groupby("tokens"):
        cells, transfer, noise = fit_budget(part)
        best = best_losses(part)
        n_seeds = int(part["seed"].nunique())
        separation = (
            (best[0]["loss"] - best[-1]["loss"]) / (noise["std"] * math.sqrt(2 / n_seeds))
            if noise["std"]
            else math.nan
        )
        out[str(int(tokens))] = {
            "steps": int(part["steps"].max()),
            "cells": cells,
            "transfer": transfer,
            "loss_noise": noise,
            "per_seed_lr_opt": per_seed_optima(part),
            "best": best,
            "plateau": {
                "below_entropy": entropy - max(b["loss"] for b in best),
                "separation_sigmas": separation,
                "passed": bool(entropy - max(b["loss"] for b in best) >= PLATEAU_GAP),
            },
        }
    return out


def fit_budget(runs: pd.DataFrame) -> tuple[list[dict], dict, dict]:
    """The cells (one per width), the transfer check and the loss noise of ``run_fit`` on one budget.
    When it cannot fit (fewer than 3 usable widths), every width is reported excluded with the reason."""
    try:
        fit = fit_widths(runs, n_boot=1000)
    except FitError as err:
        ok = runs[runs["status"] == "ok"]
        cells = [
            {
                "width": int(width),
                "status": "excluded",
                "reason": f"no fit: {err}",
                "method": "",
                "lr_opt": math.nan,
                "lr_low": math.nan,
                "lr_high": math.nan,
                "points": group.groupby("lr")["loss"]
                .agg(["mean", "count"])
                .reset_index()
                .to_numpy()
                .tolist(),
            }
            for width, group in ok.groupby("width")
        ]
        return cells, {"status": "skipped", "reason": f"no fit: {err}"}, {"std": None, "source": "unknown"}
    keys = ("width", "status", "reason", "method", "lr_opt", "lr_low", "lr_high", "points")
    cells = [{k: c[k] for k in keys} for c in sorted(fit["cells"], key=lambda c: c["width"])]
    return cells, fit["transfer"], fit["loss_noise"]


def fit_widths(runs: pd.DataFrame, n_boot: int) -> dict:
    """The fit pipeline of ``plsweep fit`` on runs of one budget: lr_opt per width, the law
    lr_opt ~ width and the transfer check (the content of fit.json)."""
    return run_fit(runs, laws={"width": "lr_opt ~ width"}, default_laws=False, n_boot=n_boot, plots=False).fit


def best_losses(runs: pd.DataFrame) -> list[dict]:
    """Per width, the LR with the lowest seed-mean final loss, that mean and the seeds' std."""
    ok = runs[runs["status"] == "ok"]
    stats = ok.groupby(["width", "lr"])["loss"].agg(["mean", "std", "count"]).reset_index()
    rows = []
    for width, group in stats.groupby("width"):
        top = group.loc[group["mean"].idxmin()]
        rows.append(
            {
                "width": int(width),
                "lr": float(top["lr"]),
                "loss": float(top["mean"]),
                "seed_std": float(top["std"]),
                "seeds": int(top["count"]),
            }
        )
    return rows


def per_seed_optima(runs: pd.DataFrame) -> dict[str, list[float | None]]:
    """lr_opt of each seed on its own (noise from local-fit residuals), per width; None where excluded or
    where the seed has too few usable widths to fit."""
    out: dict[str, list[float | None]] = {}
    for _seed, part in runs.groupby("seed"):
        try:
            cells = fit_widths(part, n_boot=10)["cells"]
        except FitError:  # fewer than 3 usable widths for this seed: none of its optima is shown
            cells = [{"width": width, "status": "excluded"} for width in sorted(part["width"].unique())]
        for cell in cells:
            value = float(cell["lr_opt"]) if cell["status"] == "used" else None
            out.setdefault(str(int(cell["width"])), []).append(value)
    return out


def base_width_check(runs: dict[str, pd.DataFrame]) -> bool:
    """At width == base_width every variant is the same model: their final losses must be equal, bit for bit."""
    keyed = []
    for part in runs.values():
        base = part[(part["width"] == part["base_width"]) & (part["status"] == "ok")]
        keyed.append(base.set_index(["lr", "seed", "tokens"])["loss"])
    common = keyed[0].index
    for series in keyed[1:]:
        common = common.intersection(series.index)
    return len(common) > 0 and all((s.loc[common] == keyed[0].loc[common]).all() for s in keyed[1:])


def diagnose(diagnosis: pd.DataFrame, runs: dict[str, pd.DataFrame]) -> dict:
    """Seed 0 at the diagnosis budget (256 steps): at width 256, the final loss per LR of muP with each
    (init_std, base_head_dim) and of the main sweeps' muP and sp; per width, the best loss of muP at
    init_std 0.02 and 0.0566 and of sp, with the LR that gave it."""
    tokens = int(diagnosis["tokens"].iloc[0])

    def seed0(part: pd.DataFrame) -> pd.DataFrame:
        return part[(part["seed"] == 0) & (part["tokens"] == tokens) & (part["status"] == "ok")]

    mup, sp = seed0(runs["mup, coupled wd"]), seed0(runs["sp"])
    diagnosis = seed0(diagnosis).drop_duplicates("run_id")  # both files have width 256 at 0.008 and 0.016
    variants = {
        f"mup, init_std {init:g}, " + ("sp's attention scale" if head else "muP's attention scale"): part
        for (init, head), part in diagnosis.groupby(["init_std", "base_head_dim"])
    }
    at_256 = {label: part[part["width"] == 256] for label, part in variants.items()}
    at_256["sp (main sweep)"] = sp[sp["width"] == 256]
    by_width = {
        "mup, init_std 0.02 (main sweep)": mup,
        "mup, init_std 0.0566": diagnosis[(diagnosis["init_std"] > 0.02) & (diagnosis["base_head_dim"] == 0)],
        "sp (main sweep)": sp,
    }
    same = mup[mup["width"] == 256].set_index("lr")["loss"]
    base = at_256["mup, init_std 0.02, muP's attention scale"].set_index("lr")["loss"]
    return {
        "steps": int(diagnosis["steps"].iloc[0]),
        "loss_at_256": {
            label: dict(zip(part["lr"].astype(float), part["loss"].astype(float), strict=True))
            for label, part in at_256.items()
        },
        "best_per_width": {
            label: {
                str(int(width)): [
                    float(group.loc[group["loss"].idxmin(), "loss"]),
                    float(group.loc[group["loss"].idxmin(), "lr"]),
                ]
                for width, group in part.groupby("width")
            }
            for label, part in by_width.items()
        },
        "reproduces_main_sweep": bool((same.reindex(base.index) == base).all()),
    }


def diagnosis_tables(diagnosis: dict) -> str:
    """Markdown: final loss per LR at width 256 per variant; best loss per width per variant."""
    lrs = sorted({lr for losses in diagnosis["loss_at_256"].values() for lr in losses})
    at_256 = [
        {"variant": label, **{f"lr {lr:g}": f"{losses[lr]:.4f}" if lr in losses else "" for lr in lrs}}
        for label, losses in diagnosis["loss_at_256"].items()
    ]
    widths = sorted({w for best in diagnosis["best_per_width"].values() for w in best}, key=int)
    per_width = [
        {
            "variant": label,
            **{f"width {w}": f"{best[w][0]:.4f} (lr {best[w][1]:.3g})" if w in best else "" for w in widths},
        }
        for label, best in diagnosis["best_per_width"].items()
    ]
    return "\n".join(
        [
            f"Final val loss at width 256, {diagnosis['steps']} steps, seed 0 (the baseline row equals the main "
            f"sweep's runs bit for bit: {diagnosis['reproduces_main_sweep']}):\n",
            markdown_table(at_256),
            f"Best loss per width (over the LRs tried), {diagnosis['steps']} steps, seed 0:\n",
            markdown_table(per_width),
        ]
    )


def unigram_entropy(cfg: RunConfig, batches: int = 16) -> float:
    """Entropy (nats/token) of the training tokens' unigram distribution: the loss of a model that has
    learned the token frequencies and nothing else, which every run passes on its way down (~30 steps here)."""
    source = load_source(cfg.data, cfg.model.vocab_size, cfg.model.seq_len)
    counts = np.zeros(cfg.model.vocab_size)
    for step in range(batches):
        inputs, _ = source.train_batch(seed=12345, step=step, batch_size=256)
        counts += np.bincount(inputs.flatten().numpy(), minlength=cfg.model.vocab_size)
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


# --- tables ------------------------------------------------------------------------------------------


def variant_tables(variants: dict[str, dict], entropy: float) -> str:
    """Markdown: lr_opt per width (longest budget), verdicts per budget, best losses, the plateau criterion."""
    budgets = sorted(next(iter(variants.values())), key=int)
    last = budgets[-1]
    steps = {b: next(iter(variants.values()))[b]["steps"] for b in budgets}
    optima, verdicts, best, criterion = [], [], [], []
    for label, per_budget in variants.items():
        row = {"variant": label}
        seeds = per_budget[last]["per_seed_lr_opt"]
        for cell in per_budget[last]["cells"]:
            value = (
                fmt(cell["lr_opt"], cell["lr_low"], cell["lr_high"])
                if cell["status"] == "used"
                else cell["reason"]
            )
            per_seed = ", ".join(f"{v:.3g}" if v else "-" for v in seeds.get(str(cell["width"]), []))
            row[f"width {cell['width']}"] = f"{value}; seeds {per_seed}" if per_seed else value
        optima.append(row)
        row = {"variant": label}
        for budget in budgets:
            t = per_budget[budget]["transfer"]
            shift = t.get("shift_factor")
            row[f"{steps[budget]} steps"] = (
                f"{fmt(shift['value'], shift['low'], shift['high'])} {t['verdict']}" if shift else t["reason"]
            )
        verdicts.append(row)
        row = {"variant": label}
        for b in per_budget[last]["best"]:
            row[f"width {b['width']}"] = f"{b['loss']:.4f} ± {b['seed_std']:.4f} (lr {b['lr']:.3g})"
        best.append(row)
        row = {"variant": label}
        for budget in budgets:
            p = per_budget[budget]["plateau"]
            row[f"{steps[budget]} steps"] = (
                f"{p['below_entropy']:.2f} nats below: "
                + ("yes" if p["passed"] else "no")
                + f"; widths {p['separation_sigmas']:.1f} SE apart"
            )
        criterion.append(row)
    return "\n".join(
        [
            f"lr_opt per width at {steps[last]} steps [95%], seeds pooled; then each seed's own:\n",
            markdown_table(optima),
            "Shift of lr_opt over the width range [95%] and verdict (tolerance x2), per budget:\n",
            markdown_table(verdicts),
            f"Best loss per width at {steps[last]} steps (seed mean ± std, nats/byte; at the best grid LR):\n",
            markdown_table(best),
            f"Past the initial plateau (the criterion: the worst width's best loss at least {PLATEAU_GAP} nats "
            f"below the unigram entropy, {entropy:.3f} nats/byte, the loss of byte frequencies alone); "
            "and how far apart the narrowest and widest widths' best losses are, in standard errors of their "
            "difference:\n",
            markdown_table(criterion),
        ]
    )


# --- figures -----------------------------------------------------------------------------------------


def plot_lr_curves(variants: dict, budget: int, path):
    """Loss against LR per width (one panel per variant, seed mean), and lr_opt against width with 95%
    intervals."""
    fig, axes = plt.subplots(1, len(variants) + 1, figsize=(5 * (len(variants) + 1), 4.2))
    for ax, (label, per_budget) in zip(axes, variants.items(), strict=False):
        for k, cell in enumerate(per_budget[str(budget)]["cells"]):
            points = np.asarray(cell["points"], float)
            ax.plot(points[:, 0], points[:, 1], "o-", color=f"C{k}", ms=3, label=f"width {cell['width']}")
            if cell["status"] == "used":
                ax.axvline(cell["lr_opt"], color=f"C{k}", lw=0.8, ls="--")
        best = min(b["loss"] for b in per_budget[str(budget)]["best"])
        ax.set(
            xscale="log",
            xlabel="base LR",
            ylabel="final val loss (nats/byte), seed mean",
            title=f"{label}: {per_budget[str(budget)]['steps']} steps",
            ylim=(best - 0.02, best + 0.35),
        )
        ax.set_xscale("log", base=2)
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    ax = axes[-1]
    for k, (label, per_budget) in enumerate(variants.items()):
        cells = [c for c in per_budget[str(budget)]["cells"] if c["status"] == "used"]
        widths = np.array([c["width"] for c in cells]) * (1 + 0.04 * (k - 1))  # side by side
        lr = np.array([c["lr_opt"] for c in cells])
        err = [lr - [c["lr_low"] for c in cells], [c["lr_high"] for c in cells] - lr]
        ax.errorbar(widths, lr, yerr=err, fmt="o-", color=f"C{k}", capsize=3, label=label)
    ax.set(
        xscale="log",
        yscale="log",
        xlabel="width",
        ylabel="lr_opt (95% interval)",
        title="optimal LR against width",
    )
    ax.set_xscale("log", base=2)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, which="both")
    return save(fig, path)


def plot_loss_curves(runs: dict, curve_tables: dict, results: dict, path):
    """Train loss (16-step mean, seed 0) at each width's best LR over the longest budget, per variant,
    with the unigram entropy (the initial plateau) and the shorter budgets marked."""
    fig, axes = plt.subplots(1, len(runs), figsize=(5 * len(runs), 4), sharey=True)
    for ax, (label, part) in zip(axes, runs.items(), strict=True):
        budgets = sorted(part["tokens"].unique())
        per_budget = results["variants"][label][str(int(budgets[-1]))]
        for k, best in enumerate(per_budget["best"]):
            run = part[
                (part["width"] == best["width"])
                & (part["lr"] == best["lr"])
                & (part["seed"] == 0)
                & (part["tokens"] == budgets[-1])
            ]
            curve = curve_tables[label]
            curve = curve[curve["run_id"] == run["run_id"].iloc[0]].sort_values("step")
            ax.plot(
                curve["step"],
                curve["train_loss"].rolling(16, min_periods=1).mean(),
                color=f"C{k}",
                lw=1,
                label=f"width {best['width']} (lr {best['lr']:.3g})",
            )
        ax.axhline(results["unigram_entropy"], color="0.4", ls=":", lw=1, label="unigram entropy")
        for tokens in budgets[:-1]:
            ax.axvline(tokens / part["batch_tokens"].iloc[0], color="0.7", lw=0.8)
        ax.set(
            xscale="log",
            xlabel="step",
            ylabel="train loss (16-step mean, seed 0)",
            title=label,
            ylim=(1.8, 4.0),
        )
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3, which="both")
    return save(fig, path)


def plot_horizon(results: dict, path):
    """Against the budget in steps, for the main sweeps and the horizon check: the shift of lr_opt over
    the width range with its 95% interval, and the best loss at the widest width."""
    fig, (shift_ax, loss_ax) = plt.subplots(1, 2, figsize=(12, 4.2))
    for part, marker, style in (("variants", "o", "-"), ("horizon", "s", "--")):
        for k, (label, per_budget) in enumerate(results[part].items()):
            budgets = sorted(per_budget, key=int)
            steps = np.array([per_budget[b]["steps"] for b in budgets], float) * (1 + 0.04 * (k - 1))
            shifts = [per_budget[b]["transfer"].get("shift_factor") for b in budgets]
            has = [i for i, sh in enumerate(shifts) if sh]
            value = np.array([shifts[i]["value"] for i in has])
            err = [value - [shifts[i]["low"] for i in has], [shifts[i]["high"] for i in has] - value]
            name = f"{label} ({'widths 32-256' if part == 'variants' else 'widths 32-128'})"
            shift_ax.errorbar(
                steps[has], value, yerr=err, fmt=marker + style, capsize=3, color=f"C{k}", label=name
            )
            widest = [per_budget[b]["best"][-1] for b in budgets]
            loss_ax.errorbar(
                steps,
                [w["loss"] for w in widest],
                yerr=[w["seed_std"] for w in widest],
                fmt=marker + style,
                capsize=3,
                color=f"C{k}",
                label=name,
            )
    shift_ax.axhspan(0.5, 2.0, color="0.88", zorder=0, label="x2 tolerance")
    shift_ax.axhline(1.0, color="0.4", lw=0.8)
    shift_ax.set(
        yscale="log",
        ylabel="lr_opt(widest) / lr_opt(32) [95%]",
        title="shift of the optimal LR over the widths",
    )
    loss_ax.set(ylabel="best loss at the widest width (nats/byte, seed mean ± std)", title="the widest model")
    for ax in (shift_ax, loss_ax):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("steps (budget)")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3, which="both")
    return save(fig, path)


if __name__ == "__main__":
    main()
