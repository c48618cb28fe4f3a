"""Experiment 3, the Power paper's workflow at small scale: fit lr_opt against batch and tokens on the
demo's sweep, predict lr_opt at a 4x larger budget, and check the prediction by running that budget.

    python experiments/power_workflow.py     # ~10 minutes on a 2-core CPU (~4 fewer after `plsweep demo`)

Steps: ``sweeps/demo.toml`` into ``results/demo`` (54 runs; those ``plsweep demo`` recorded are
skipped) -> ``run_fit`` (the free law, the Power form, and the Power form fitted the paper's way:
gamma = lr_opt / batch averaged over the 2 best batch sizes per budget) -> ``export`` at the check
budget -> ``experiments/power_check.toml`` (5 LRs at batch 8 and 32, 2097152 tokens) -> its per-cell
optima with the same estimator. Writes ``power_workflow.{md,json,png}`` into docs/figures/.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from common import HERE, ROOT, arguments, fmt, markdown_table, run_sweep, write_outputs  # noqa: E402

from powerlaw_cli.export import export  # noqa: E402
from powerlaw_cli.fit import FitError, predict, run_fit  # noqa: E402
from powerlaw_cli.fit_cells import cell_curves, find_cell_optima  # noqa: E402
from powerlaw_cli.plots import save
from powerlaw_cli.spec import load_sweep  # noqa: E402

NAME = "power_workflow"
PAPER = {"a": 4.6, "b": -0.51}  # Shen et al. 2024: lr_opt = batch * 4.6 * T^-0.51 (sequences of 4096 tokens)


def main() -> None:
    parser = arguments(__doc__.splitlines()[0])
    parser.add_argument(
        "--demo-dir",
        type=Path,
        default=ROOT / "results" / "demo",
        help="the demo's sweep directory (default: results/demo, where `plsweep demo` puts it)",
    )
    args = parser.parse_args()
    demo = run_sweep(ROOT / "sweeps" / "demo.toml", args.demo_dir, args.workers)
    fits = {"free": run_fit(demo, n_boot=1000, out=args.demo_dir / "fit", plots=False).fit}
    fits["power"] = fits["free"]  # one fit holds both default laws
    top2 = args.results / "power-workflow-top2"
    fits["power, top-2 batches"] = run_fit(demo, n_boot=1000, top_k_batches=2, out=top2, plots=False).fit
    check_spec = HERE / "power_check.toml"
    tokens = load_sweep(check_spec).runs[0].training.tokens
    check = run_sweep(check_spec, args.results / "power-check", args.workers)
    measured = find_cell_optima(
        cell_curves(check, ["batch_size", "tokens"]), fits["free"]["loss_noise"]["std"]
    )
    laws = {name: fit["laws"][name.split(",")[0]] for name, fit in fits.items()}
    checks = [check_cell(cell, fits, tokens) for cell in measured.itertuples()]
    results = {
        "tokens": tokens,
        "checks": checks,
        "export": export_at(fits["free"], 32, tokens),
        "laws": {
            n: {k: law[k] for k in ("formula", "a", "exponents", "r2", "n_points", "warnings")}
            for n, law in laws.items()
        },
    }
    results["figure"] = plot(fits["free"], measured, tokens, args.figures / f"{NAME}.png").name
    table = markdown_table(law_rows(laws)) + "\n" + markdown_table([c.pop("row") for c in checks])
    write_outputs(NAME, args.figures, table, results)


def check_cell(cell, fits: dict, tokens: int) -> dict:
    """One checked cell: the measured optimum against each law's prediction and the paper's law."""
    batch = int(cell.batch_size)
    preds = {
        "free law": predict(fits["free"], law="free", batch_size=batch, tokens=tokens),
        "power law": predict(fits["power"], law="power", batch_size=batch, tokens=tokens),
        "power law, top-2": predict(
            fits["power, top-2 batches"], law="power", batch_size=batch, tokens=tokens
        ),
    }
    paper = batch * PAPER["a"] * tokens ** PAPER["b"]
    used = cell.status == "used"
    row = {
        "batch": batch,
        "tokens": tokens,
        "measured lr_opt [95%]": fmt(cell.lr_opt, cell.lr_low, cell.lr_high) if used else cell.reason,
        **{f"{k} [95%]": fmt(*p) for k, p in preds.items()},
        "paper's law": fmt(paper),
        "measured / free law": fmt(cell.lr_opt / preds["free law"].value, digits=2) if used else "-",
    }
    measured = {
        "status": cell.status,
        "lr_opt": cell.lr_opt,
        "low": cell.lr_low,
        "high": cell.lr_high,
        "points": cell.points,
    }
    return {
        "batch_size": batch,
        "measured": measured,
        "predicted": {k: p._asdict() for k, p in preds.items()},
        "paper": paper,
        "row": row,
    }


def law_rows(laws: dict[str, dict]) -> list[dict[str, str]]:
    """The fitted laws as table rows, and the paper's for comparison."""
    rows = []
    for name, law in laws.items():
        exponents = {
            f"e_{v} [95%]": fmt(e["value"], e["low"], e["high"]) + (" (fixed)" if e["fixed"] else "")
            for v, e in law["exponents"].items()
        }
        rows.append(
            {
                "law": name,
                "a [95%]": fmt(law["a"]["value"], law["a"]["low"], law["a"]["high"]),
                **exponents,
                "R2": f"{law['r2']:.3f}",
                "points": law["n_points"],
            }
        )
    rows.append(
        {
            "law": "paper (Shen et al.)",
            "a [95%]": "4.6",
            "e_batch_size [95%]": "1 (fixed)",
            "e_tokens [95%]": "-0.51",
            "R2": "-",
            "points": "-",
        }
    )
    return rows


def export_at(fit: dict, batch_size: int, tokens: int) -> dict:
    """The Power constants and peak LR ``plsweep export`` gives for this target (or why it gives none)."""
    try:
        rec = export(fit, batch_size, tokens, 64, law="power")
    except FitError as err:
        return {"error": str(err)}
    return {"batch_size": batch_size, "constants": rec["constants"], "peak_lr": rec["recommended"]["peak_lr"]}


def plot(fit: dict, measured, check_tokens: int, path: Path) -> Path:
    """Left: lr_opt against tokens per batch size with the free law extended to the check budget, and
    the check's optima (stars). Right: the check's loss curves with the law's predictions."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    used = [c for c in fit["cells"] if c["status"] == "used"]
    batches = sorted({int(c["batch_size"]) for c in used} | {int(b) for b in measured["batch_size"]})
    grid = np.geomspace(min(c["tokens"] for c in used), check_tokens, 50)
    for k, batch in enumerate(batches):
        color = f"C{k}"
        cells = sorted((c for c in used if int(c["batch_size"]) == batch), key=lambda c: c["tokens"])
        if cells:
            t = [c["tokens"] for c in cells]
            v = [c["lr_opt"] for c in cells]
            err = [
                [x - c["lr_low"] for x, c in zip(v, cells, strict=True)],
                [c["lr_high"] - x for x, c in zip(v, cells, strict=True)],
            ]
            left.errorbar(t, v, yerr=err, fmt="o", color=color, capsize=3, label=f"batch {batch}")
        line = [predict(fit, law="free", batch_size=batch, tokens=x) for x in grid]
        left.plot(grid, [p.value for p in line], "-", color=color, lw=1)
        left.fill_between(grid, [p.low for p in line], [p.high for p in line], color=color, alpha=0.12)
        for cell in measured[measured["batch_size"] == batch].itertuples():
            if cell.status == "used":
                left.errorbar(
                    [check_tokens],
                    [cell.lr_opt],
                    yerr=[[cell.lr_opt - cell.lr_low], [cell.lr_high - cell.lr_opt]],
                    fmt="*",
                    ms=12,
                    color=color,
                    capsize=3,
                )
            pts = np.asarray(cell.points, float)
            right.plot(pts[:, 0], pts[:, 1], "o-", color=color, ms=3, label=f"batch {batch} (measured)")
            pred = predict(fit, law="free", batch_size=batch, tokens=check_tokens)
            right.axvline(pred.value, color=color, ls="--", lw=1)
            right.axvspan(pred.low, pred.high, color=color, alpha=0.1)
    left.axvline(check_tokens, color="0.5", lw=0.8, ls=":")
    left.set(
        xscale="log",
        yscale="log",
        xlabel="tokens",
        ylabel="lr_opt",
        title="demo sweep: lr_opt, free law (band: 95%), check at 4x (stars)",
    )
    left.legend(fontsize=8)
    left.grid(alpha=0.3, which="both")
    right.set(
        xscale="log",
        xlabel="base LR",
        ylabel="final val loss",
        title=f"check at {check_tokens:.3g} tokens; dashed: free law's prediction",
    )
    right.legend(fontsize=8)
    right.grid(alpha=0.3)
    return save(fig, path)


if __name__ == "__main__":
    main()
