"""Experiment 1b, muP that pays: tune the base model once, transfer it, and compare the widths with sp.

    python experiments/mup_payoff.py --workers 2       # ~35 min on a shared 2-core CPU, 84 runs

1. Base tuning: ``mup_payoff/base.toml``, ``sweeps/mup-base.toml`` with seed 0 only (LR x init_std x
   output_multiplier at the base width 32, 128 steps, experiment 1's setup), and ``run_fit`` (what
   ``plsweep fit`` runs), whose ``base`` record gives the tuned settings (no intervals with one seed).
2. Transfer: ``experiments/mup_payoff/mup_tuned.toml``, muP with the tuned init_std and output_multiplier
   (written into the file from step 1, rounded) at widths 32..256, 6 LRs around the tuned LR, seed 0, the
   same 128 steps; experiment 1's ``fit_widths`` (``run_fit`` with the law lr_opt ~ width) gives lr_opt
   per width and the transfer verdict.
3. Against experiment 1 at the same budget (its recorded results, docs/figures/mup_transfer.json: sp with
   its own init 0.02 at its best LR per width, and muP with the untuned base, 3 seeds each).
Writes mup_payoff.{md,json,png} into docs/figures/.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from common import FIGURES, HERE, arguments, fmt, markdown_table, run_sweep, write_outputs  # noqa: E402
from mup_transfer import best_losses, fit_widths  # noqa: E402

from powerlaw_cli.fit import run_fit  # noqa: E402
from powerlaw_cli.plots import save  # noqa: E402
from powerlaw_cli.spec import load_sweep  # noqa: E402

NAME = "mup_payoff"
BASE = HERE / "mup_payoff" / "base.toml"  # sweeps/mup-base.toml with seed 0 only
TUNED = (HERE / "mup_payoff" / "mup_tuned.toml",)  # seed 0 (a second seed file would join the tuple)
EXPERIMENT_1 = FIGURES / "mup_transfer.json"
BUDGET = "131072"  # tokens: 128 steps, the budget of both sweeps


def main() -> None:
    args = arguments(__doc__.splitlines()[0]).parse_args()
    base_fit = run_fit(sweep_runs(BASE, args), plots=False).fit
    tuned_runs = pd.concat([sweep_runs(spec, args) for spec in TUNED])
    tuned_fit = fit_widths(tuned_runs, n_boot=1000)
    earlier = json.loads(EXPERIMENT_1.read_text())["variants"]
    compare = {
        f"mup, tuned base (seeds {sorted(tuned_runs['seed'].unique().tolist())})": {
            b["width"]: b for b in best_losses(tuned_runs)
        },
        "mup, untuned base (experiment 1, 3 seeds)": from_experiment_1(earlier["mup, coupled wd"]),
        "sp, init 0.02 (experiment 1, 3 seeds)": from_experiment_1(earlier["sp"]),
    }
    results = {
        "base": base_fit["base"],
        "tuned_file": {name: setting(TUNED[0], name) for name in ("init_std", "output_multiplier")},
        "transfer": tuned_fit["transfer"],
        "lr_opt": {int(c["width"]): lr_of(c) for c in tuned_fit["cells"]},
        "loss_noise": tuned_fit["loss_noise"],
        "best_loss": compare,
        "warnings": tuned_fit["warnings"],
    }
    rows = [
        {
            "variant": label,
            **{f"width {w}": cell(b) for w, b in sorted(best.items())},
        }
        for label, best in compare.items()
    ]
    lr_rows = [{"width": w, "lr_opt [95%]": text} for w, text in sorted(results["lr_opt"].items())]
    shift = tuned_fit["transfer"].get("shift_factor", {})
    table = (
        "Best loss per width at 128 steps (nats/byte, seed mean ± std at the best grid LR):\n\n"
        + markdown_table(rows)
        + "\nmuP with the tuned base, lr_opt per width (its seeds pooled):\n\n"
        + markdown_table(lr_rows)
        + f"\nTuned base: {results['tuned_file']}; transfer "
        + f"{tuned_fit['transfer'].get('verdict', '-')}: shift "
        + f"{fmt(shift.get('value'), shift.get('low'), shift.get('high'))}\n"
    )
    write_outputs(NAME, args.figures, table, results)
    figure(compare, args.figures / f"{NAME}.png")


def cell(best: dict) -> str:
    """``2.3906 ± 0.0121 (lr 0.004)``, without the std for one seed."""
    std = "" if math.isnan(best["seed_std"]) else f" ± {best['seed_std']:.4f}"
    return f"{best['loss']:.4f}{std} (lr {best['lr']:.3g})"


def sweep_runs(spec: Path, args) -> pd.DataFrame:
    """Run (or resume) a sweep file; its runs table."""
    return run_sweep(spec, args.results / load_sweep(spec).name, args.workers)


def setting(spec: Path, name: str) -> float:
    """A model setting of a sweep file's base section."""
    return float(load_sweep(spec).runs[0].model.values[name])


def lr_of(cell: dict) -> str:
    return (
        fmt(cell["lr_opt"], cell["lr_low"], cell["lr_high"]) if cell["status"] == "used" else cell["reason"]
    )


def from_experiment_1(variant: dict) -> dict[int, dict]:
    return {
        int(b["width"]): {"lr": b["lr"], "loss": b["loss"], "seed_std": b["seed_std"]}
        for b in variant[BUDGET]["best"]
    }


def figure(compare: dict[str, dict[int, dict]], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, best in compare.items():
        widths = sorted(best)
        ax.errorbar(
            widths,
            [best[w]["loss"] for w in widths],
            yerr=[0.0 if math.isnan(best[w]["seed_std"]) else best[w]["seed_std"] for w in widths],
            marker="o",
            capsize=3,
            label=label,
        )
    ax.set_xscale("log", base=2)
    ax.set_xlabel("width")
    ax.set_ylabel("best validation loss at 128 steps, nats/byte")
    ax.set_title("muP with a tuned base against sp (bars: seed std)")
    ax.legend(fontsize=8, loc="center right")
    save(fig, path)


if __name__ == "__main__":
    pd.set_option("display.width", 200)
    main()
