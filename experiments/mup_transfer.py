"""Experiment 1, muP LR transfer: does the optimal LR stay put across widths with muP, and shift with sp?

    python experiments/mup_transfer.py            # ~10 minutes on a 2-core CPU

Runs ``experiments/mup_transfer.toml`` (8 LRs x 4 widths x {mup, sp}), then fits each parametrization
on its own with ``run_fit`` (per-width optima and the transfer check: the shift of lr_opt over the
width range, and the law lr_opt = a * width^e; ``fit-mup/`` and ``fit-sp/`` in the sweep directory get
each fit.json). Writes ``mup_transfer.{md,json,png}`` into docs/figures/.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from common import HERE, arguments, fmt, markdown_table, run_sweep, write_outputs  # noqa: E402

from powerlaw_cli.fit import run_fit  # noqa: E402
from powerlaw_cli.plots import save

NAME = "mup_transfer"


def main() -> None:
    args = arguments(__doc__.splitlines()[0]).parse_args()
    out = args.results / "mup-transfer"
    runs = run_sweep(HERE / "mup_transfer.toml", out, args.workers)
    fits = {
        kind: run_fit(
            part,
            laws={"width": "lr_opt ~ width"},
            default_laws=False,
            n_boot=1000,
            out=out / f"fit-{kind}",
            plots=False,
        ).fit
        for kind, part in runs.groupby("parametrization")
    }
    rows, shifts, results = [], [], {}
    for kind, fit in fits.items():
        cells = sorted(fit["cells"], key=lambda c: c["width"])
        for cell in cells:
            optimum = (
                fmt(cell["lr_opt"], cell["lr_low"], cell["lr_high"])
                if cell["status"] == "used"
                else cell["reason"]
            )
            rows.append(
                {
                    "parametrization": kind,
                    "width": int(cell["width"]),
                    "lr_opt [95%]": optimum,
                    "best loss": f"{min(p[1] for p in cell['points']):.4f}",
                }
            )
        transfer, law = fit["transfer"], fit["laws"]["width"]
        shift = transfer.get("shift_factor") if transfer["status"] == "checked" else None
        exponent = law["exponents"]["width"] if law["status"] == "fitted" else None
        shifts.append(
            {
                "parametrization": kind,
                f"lr_opt({int(cells[-1]['width'])}) / lr_opt({int(cells[0]['width'])}) [95%]": _interval(
                    shift
                ),
                "verdict (tolerance x2)": transfer.get("verdict", transfer.get("reason")),
                "lr_opt ~ width^e: e [95%]": _interval(exponent),
            }
        )
        results[kind] = {
            "transfer": transfer,
            "width_law": {k: law.get(k) for k in ("status", "a", "exponents", "r2", "error")},
            "cells": [
                {k: c[k] for k in ("width", "status", "reason", "lr_opt", "lr_low", "lr_high", "points")}
                for c in cells
            ],
        }
    results["figure"] = plot(fits, args.figures / f"{NAME}.png").name
    write_outputs(NAME, args.figures, markdown_table(rows) + "\n" + markdown_table(shifts), results)


def _interval(estimate: dict | None) -> str:
    return fmt(estimate["value"], estimate["low"], estimate["high"]) if estimate else "-"


def plot(fits: dict, path):
    """Loss against LR per width (one panel per parametrization), and lr_opt against width."""
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for ax, (kind, fit) in zip(axes, fits.items(), strict=False):
        for k, cell in enumerate(sorted(fit["cells"], key=lambda c: c["width"])):
            lrs, losses = zip(*[(p[0], p[1]) for p in cell["points"]], strict=True)
            ax.plot(lrs, losses, "o-", color=f"C{k}", ms=3, label=f"width {int(cell['width'])}")
            if cell["status"] == "used":
                ax.axvline(cell["lr_opt"], color=f"C{k}", lw=0.8, ls="--")
        ax.set(
            xscale="log",
            xlabel="base LR",
            ylabel="final val loss (nats/byte)",
            title=f"{kind}: loss against LR",
        )
        ax.set_ylim(top=min(ax.get_ylim()[1], 3.6))
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    ax = axes[2]
    for k, (kind, fit) in enumerate(fits.items()):
        cells = sorted((c for c in fit["cells"] if c["status"] == "used"), key=lambda c: c["width"])
        widths = [c["width"] for c in cells]
        lr = [c["lr_opt"] for c in cells]
        err = [
            [v - c["lr_low"] for v, c in zip(lr, cells, strict=True)],
            [c["lr_high"] - v for v, c in zip(lr, cells, strict=True)],
        ]
        ax.errorbar(widths, lr, yerr=err, fmt="o-", color=f"C{k}", capsize=3, label=kind)
    ax.set(
        xscale="log",
        yscale="log",
        xlabel="width",
        ylabel="lr_opt (95% interval)",
        title="optimal LR against width",
    )
    ax.set_xscale("log", base=2)
    ax.legend()
    ax.grid(alpha=0.3, which="both")
    return save(fig, path)


if __name__ == "__main__":
    main()
