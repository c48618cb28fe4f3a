"""Experiment 2, schedules side by side at three budgets (131072, 262144, 524288 tokens): cosine tuned per
budget, WSD with decay branches, WSD-S, constant LR + averaging, 1/sqrt(t) + averaging, and Power.

    python experiments/schedules.py               # ~15 minutes on a 2-core CPU

One proxy (the demo's: width 32, 2 blocks, synthetic Markov language, batch 16 x 64 tokens), one sweep
file per schedule in experiments/schedules/, each tuned on the same x2 grid of 6 peak LRs (Power: of
its constant a, with the paper's b = -0.51). Per budget, a schedule's loss is its best grid point's
final validation loss (averaged weights for the averaging schedules, read from the curves at each
budget: their schedule and averaging do not depend on the budget, so one run serves all budgets).
Compute is the tokens plsweep trains (``plan.chain_tokens``): per setting for all budgets, and for
the whole tuning grid. Writes ``schedules.{md,json,png}`` into docs/figures/.
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from common import HERE, arguments, curves, markdown_table, run_sweep, write_outputs  # noqa: E402

from powerlaw_cli.config import RunConfig  # noqa: E402
from powerlaw_cli.plan import make_plan  # noqa: E402
from powerlaw_cli.plots import save
from powerlaw_cli.schedules import PowerSchedule, build_schedule  # noqa: E402
from powerlaw_cli.spec import load_sweep  # noqa: E402

NAME = "schedules"
BUDGETS = (131072, 262144, 524288)
SCHEDULES = {  # label: (sweep file, how budgets are read)
    "cosine, tuned per budget": ("cosine.toml", "runs"),
    "WSD, decay branches": ("wsd.toml", "runs"),
    "WSD-S": ("wsd_s.toml", "runs"),
    "constant + anytime EMA": ("constant_avg.toml", "curves_averaged"),
    "constant, raw weights": ("constant_avg.toml", "curves_raw"),
    "1/sqrt(t) + anytime EMA": ("inverse_sqrt_avg.toml", "curves_averaged"),
    "Power (b = -0.51)": ("power.toml", "runs"),
}


def budget_losses(runs: pd.DataFrame, out: Path, how: str) -> pd.DataFrame:
    """One row per (setting, budget): lr, power_a, the LR held in the stable phase, and the loss."""
    configs = {row.run_id: RunConfig.from_dict(json.loads(row.config)) for row in runs.itertuples()}
    if how == "runs":
        table = runs[["run_id", "tokens", "loss"]]
    else:  # the budgets are evaluation points of one run per setting
        column = "val_loss_averaged" if how == "curves_averaged" else "val_loss"
        c = curves(out)
        table = c[c["tokens"].isin(BUDGETS) & c[column].notna()][["run_id", "tokens", column]]
        table = table.rename(columns={column: "loss"})
    table = table[table["tokens"].isin(BUDGETS)].copy()
    table["lr"] = [configs[r].optimizer.lr for r in table["run_id"]]
    table["power_a"] = [configs[r].schedule.power_a for r in table["run_id"]]
    table["stable_lr"] = [
        stable_lr(configs[r], t) for r, t in zip(table["run_id"], table["tokens"], strict=True)
    ]
    return table


def stable_lr(run: RunConfig, tokens: int) -> float:
    """The LR a setting holds in its stable phase: the peak, or the Power schedule's lr_power where its
    decay starts (the package's own schedule, at the budget ``tokens``)."""
    schedule = build_schedule(run.schedule, run.optimizer.lr, tokens, run.training.batch_size)
    return (
        schedule.lr_power(schedule.decay_start) if isinstance(schedule, PowerSchedule) else run.optimizer.lr
    )


def run_schedule(spec: Path, how: str, args) -> tuple[pd.DataFrame, dict[str, int]]:
    """Run one schedule's sweep; its losses per setting and budget, and the tokens it trains."""
    sweep = load_sweep(spec)
    out = args.results / sweep.name
    table = budget_losses(run_sweep(spec, out, args.workers), out, how)
    settings = len(sweep.axes.get("optimizer.lr", sweep.axes.get("schedule.power_a", [])))
    trained = make_plan(sweep, sweep.launch, 1001, 1e14).tokens_trained
    return table, {"per_setting": trained // settings, "sweep": trained, "settings": settings}


def table_row(label: str, part: pd.DataFrame, compute: dict[str, int]) -> tuple[dict[str, str], dict]:
    """A schedule's row: its best loss and setting per budget (flagged at a grid edge), and its compute."""
    row, best_of = {"schedule": label}, {}
    for budget in BUDGETS:
        at = part[part["tokens"] == budget]
        best = at.loc[at["loss"].idxmin()]
        knob = f"a={best.power_a:g}" if label.startswith("Power") else f"lr={best.lr:g}"
        edge = " (grid edge)" if best.stable_lr in (at["stable_lr"].min(), at["stable_lr"].max()) else ""
        row[f"loss @ {budget}"] = f"{best.loss:.4f} ({knob}{edge})"
        best_of[str(budget)] = {"loss": best.loss, "lr": best.lr, "power_a": best.power_a}
    row["tokens per setting, all budgets"] = f"{compute['per_setting'] / 1e6:.2f}M"
    row["tokens, whole grid"] = f"{compute['sweep'] / 1e6:.1f}M"
    return row, best_of


def main() -> None:
    args = arguments(__doc__.splitlines()[0]).parse_args()
    frames, compute = [], {}
    for label, (file, how) in SCHEDULES.items():
        table, compute[label] = run_schedule(HERE / "schedules" / file, how, args)
        frames.append(table.assign(schedule=label))
    losses = pd.concat(frames, ignore_index=True)
    rows, results = [], {"budgets": BUDGETS, "compute": compute, "best": {}}
    for label in SCHEDULES:
        row, results["best"][label] = table_row(label, losses[losses["schedule"] == label], compute[label])
        rows.append(row)
    results["losses"] = losses.drop(columns=["run_id"]).to_dict(orient="records")
    results["figure"] = plot(losses, args.figures / f"{NAME}.png").name
    write_outputs(NAME, args.figures, markdown_table(rows), results)


def plot(losses: pd.DataFrame, path: Path) -> Path:
    """Final loss against the stable-phase LR, one panel per budget, one line per schedule."""
    fig, axes = plt.subplots(1, len(BUDGETS), figsize=(5 * len(BUDGETS), 4.2), sharey=True)
    for ax, budget in zip(axes, BUDGETS, strict=True):
        for k, (label, part) in enumerate(losses[losses["tokens"] == budget].groupby("schedule", sort=False)):
            part = part.sort_values("stable_lr")
            ax.plot(part["stable_lr"], part["loss"], "o-", ms=3, color=f"C{k}", label=label)
        ax.set(
            xscale="log",
            xlabel="stable-phase LR (Power: lr_power at the decay start)",
            title=f"{budget} tokens",
        )
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("final val loss (nats/token)")
    lo = losses.groupby("tokens")["loss"].min().min()
    axes[0].set_ylim(lo - 0.02, lo + 0.35)
    axes[-1].legend(fontsize=7)
    return save(fig, path)


if __name__ == "__main__":
    main()
