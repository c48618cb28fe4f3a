"""The fit as rows for the terminal: plain dicts of strings and numbers, read from ``fit.json``.

Each row holds only its own columns (a law over N and D has ``e_N`` and ``e_D``, a law over batch and
tokens ``e_B`` and ``e_D``); the renderer takes the union of the columns, so every value sits under its
own header. ``units_lines`` says what N, D, B stand for and the unit of every quantity.
"""

from __future__ import annotations

from typing import Any

from .fit_spec import SHORT, SHORT_UNITS


def interval(d: dict | None) -> str:
    """``0.0123 [0.0101, 0.015]``, or ``-`` when there is no value."""
    if not d or d.get("value") is None:
        return "-"
    low, high = d.get("low"), d.get("high")
    return f"{d['value']:.4g}" + (f" [{low:.4g}, {high:.4g}]" if low is not None and high is not None else "")


def _short(variable: str) -> str:
    return SHORT.get(variable, variable)


def _unit(quantity: str, seq_len: float | None = None) -> str:
    if seq_len and quantity in ("batch_opt", "batch_size"):
        return f"tokens, sequences of {seq_len:g}"
    return SHORT_UNITS.get(quantity, "the table's unit")


def units_lines(fit: dict) -> list[str]:
    """What every law's quantity and short variable names mean, with their units: one line per law (and
    per batch-in-tokens form)."""
    lines = []
    for name, law in fit["laws"].items():
        forms = [(name, None)] + (
            [(f"{name} (tokens)", law["in_tokens"]["seq_len"])] if law.get("in_tokens") else []
        )
        for label, seq_len in forms:
            variables = ", ".join(
                "B_tokens = batch_tokens [tokens]"
                if seq_len and v == "batch_size"
                else f"{_short(v)} = {v} [{_unit(v)}]"
                for v in law["variables"]
            )
            lines.append(f"{label}: {law['y']} [{_unit(law['y'], seq_len)}] against {variables}")
    return lines


def power_law_rows(fit: dict) -> list[dict[str, Any]]:
    """One row per power law y = a * prod(x^e_x) (lr_opt, batch_opt), plus its form with the batch in
    tokens when the sequence length is known; failed laws with their formula and error. Exponents are
    headed by the short variable names (``e_N``, ``e_D``, ``e_B``)."""
    rows = []
    for name, law in fit["laws"].items():
        if law.get("form", "power") != "power":
            continue
        if law["status"] != "fitted":
            rows.append({"law": name, "formula": law["formula"], "status": "failed: " + law["error"]})
            continue
        exponents = {
            f"e_{_short(v)}": interval(e) + (" (fixed)" if e["fixed"] else "")
            for v, e in law["exponents"].items()
        }
        row = {
            "law": name,
            "y": law["y"],
            "fitted on": law.get("fitted_on", "cells").split(" ")[0],
            "a": interval(law["a"]),
            **exponents,
            "R2": _round(law["r2"]),
            "n": law["n_points"],
            "pools": ", ".join(_short(k) for k in law.get("pools", [])),
            "warnings": len(law["warnings"]),
        }
        rows.append(row)
        if law.get("in_tokens"):  # the same law with the batch in tokens: another a, e_B_tokens for e_B
            tokens = {"law": f"{name} (tokens)", "a": interval(law["in_tokens"]["a"])}
            rows.append({("e_B_tokens" if k == "e_B" else k): tokens.get(k, v) for k, v in row.items()})
    return rows


def loss_law_rows(fit: dict) -> list[dict[str, Any]]:
    """One row per loss law: E, and A and alpha of every variable (``A_N``, ``alpha_N``, ...)."""
    rows = []
    for name, law in fit["laws"].items():
        if law.get("form") != "hoffmann":
            continue
        if law["status"] != "fitted":
            rows.append({"law": name, "formula": law["formula"], "status": "failed: " + law["error"]})
            continue
        row = {"law": name, "E": interval(law["E"])}
        for v, term in law["terms"].items():
            row |= {f"A_{_short(v)}": interval(term["A"]), f"alpha_{_short(v)}": interval(term["alpha"])}
        rows.append(
            row
            | {
                "R2 (ln)": _round(law["r2"]),
                "rmse_ln": _round(law["rmse_ln"]),
                "n": law["n_points"],
                "pools": ", ".join(_short(k) for k in law.get("pools", [])),
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


def base_rows(fit: dict) -> list[dict[str, Any]]:
    """The tuned base settings (``fit_base``): per context, each setting's optimum, the LR and the loss."""
    rows = []
    for b in fit.get("base") or []:
        if b["status"] != "tuned":
            rows.append({"context": b["context"], "status": b["status"], "reason": b.get("reason", "")})
            continue
        settings = {
            name: interval(s) + ("" if s["status"] == "used" else f" ({s['status']})")
            for name, s in b["settings"].items()
        }
        rows.append(
            {
                "context": b["context"],
                "status": b["status"],
                **settings,
                "lr_opt": interval(b["lr_opt"]),
                "loss_opt": interval(b["loss_opt"]),
                "best_group": b["best_group"],
            }
        )
    return rows


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
