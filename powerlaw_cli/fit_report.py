"""The fit as rows for the terminal: plain dicts of strings and numbers, read from ``fit.json``.

Each row holds only its own columns (a law over N and D has ``e_params_non_embedding`` and ``e_tokens``,
a law over batch and tokens has ``e_batch_size`` and ``e_tokens``); the renderer takes the union of the
columns, so every value sits under its own header.
"""

from __future__ import annotations

from typing import Any

from .fit_spec import SHORT_UNITS


def interval(d: dict | None) -> str:
    """``0.0123 [0.0101, 0.015]``, or ``-`` when there is no value."""
    if not d or d.get("value") is None:
        return "-"
    low, high = d.get("low"), d.get("high")
    return f"{d['value']:.4g}" + (f" [{low:.4g}, {high:.4g}]" if low is not None and high is not None else "")


def _units(law: dict, batch_tokens: bool = False) -> str:
    def unit(v: str) -> str:
        if batch_tokens and v in ("batch_opt", "batch_size"):
            return "tokens"
        return SHORT_UNITS.get(v, "table's unit")

    return ", ".join(f"{v} [{unit(v)}]" for v in (law["y"], *law["variables"]))


def power_law_rows(fit: dict) -> list[dict[str, Any]]:
    """One row per power law y = a * prod(x^e_x) (lr_opt, batch_opt), plus its batch-in-tokens form when
    the sequence length is known; failed laws with their formula and error."""
    rows = []
    for name, law in fit["laws"].items():
        if law.get("form", "power") != "power":
            continue
        if law["status"] != "fitted":
            rows.append({"law": name, "formula": law["formula"], "status": "failed: " + law["error"]})
            continue
        exponents = {
            f"e_{v}": interval(e) + (" (fixed)" if e["fixed"] else "") for v, e in law["exponents"].items()
        }
        row = {
            "law": name,
            "fitted on": law.get("fitted_on", "cells").split(" ")[0],
            "a": interval(law["a"]),
            **exponents,
            "R2": _round(law["r2"]),
            "n": law["n_points"],
            "units": _units(law),
            "warnings": len(law["warnings"]),
        }
        rows.append(row)
        tokens = law.get("in_tokens")
        if tokens:
            same = {k: v for k, v in row.items() if k not in exponents}
            renamed = {k.replace("e_batch_size", "e_batch_tokens"): v for k, v in exponents.items()}
            rows.append(
                same
                | {
                    "law": f"{name} (tokens)",
                    "a": interval(tokens["a"]),
                    **renamed,
                    "units": _units(law, batch_tokens=True),
                }
            )
    return rows


def loss_law_rows(fit: dict) -> list[dict[str, Any]]:
    """One row per loss law: E, A and alpha of every variable."""
    rows = []
    for name, law in fit["laws"].items():
        if law.get("form") != "hoffmann":
            continue
        if law["status"] != "fitted":
            rows.append({"law": name, "formula": law["formula"], "status": "failed: " + law["error"]})
            continue
        row = {"law": name, "E": interval(law["E"])}
        for v, term in law["terms"].items():
            row |= {f"A_{v}": interval(term["A"]), f"alpha_{v}": interval(term["alpha"])}
        rows.append(
            row
            | {
                "R2 (ln)": _round(law["r2"]),
                "rmse_ln": _round(law["rmse_ln"]),
                "n": law["n_points"],
                "units": _units(law),
                "warnings": len(law["warnings"]),
            }
        )
    return rows


def group_rows(fit: dict) -> list[dict[str, Any]]:
    """The joint optimum of every group whose batch varied: B_opt, lr_opt at B_opt, the loss there."""
    return [
        {
            "group": g["group"],
            "status": g["status"],
            "batch_opt": interval(
                {"value": g.get("batch_opt"), "low": g.get("batch_low"), "high": g.get("batch_high")}
            ),
            "lr_opt": interval({"value": g.get("lr_opt"), "low": g.get("lr_low"), "high": g.get("lr_high")}),
            "loss_opt": interval(
                {"value": g.get("loss_opt"), "low": g.get("loss_low"), "high": g.get("loss_high")}
            ),
            "reason": g.get("reason", ""),
        }
        for g in fit["groups"]
        if g.get("batch_varied")
    ]


def cell_rows(fit: dict) -> list[dict[str, Any]]:
    """The LR optimum of every cell."""
    return [
        {
            "cell": c["cell"],
            "status": c["status"],
            "method": c["method"],
            "lr_opt": interval({"value": c["lr_opt"], "low": c["lr_low"], "high": c["lr_high"]}),
            "reason": c["reason"],
        }
        for c in fit["cells"]
    ]


def transfer_rows(fit: dict) -> list[dict[str, Any]]:
    """The muP transfer verdict, or why it was skipped."""
    t = fit["transfer"]
    if t["status"] != "checked":
        return [{"verdict": "skipped", "reason": t["reason"]}]
    return [{"verdict": t["verdict"], "shift_factor": interval(t["shift_factor"]), "widths": t["widths"]}]


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)
