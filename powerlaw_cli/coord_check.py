"""The muP coordinate check (microsoft/mup style): activations must not blow up with width.

Train a model of each width for a few AdamW steps on one fixed batch of random tokens, with a larger LR
than training, and record the mean absolute value (l1) of every module's output at each step. Under
muP the curves are flat in width; under sp the hidden activations grow about 2x per doubling at
initialisation (fixed init std) and faster after the first update, because Adam's updates are
correlated with each layer's input and add up over fan_in coordinates.

``verdict`` fits log l1 against log width at the last step, per module, and reads off the growth per
doubling of width. A module fails when it grows by more than ``tolerance`` per doubling, or shrinks
faster than muP ever lets a quantity vanish (the readout's initial part of the logits, which decays
like 1/sqrt(width)) with the same tolerance: below 1 / (sqrt(2) * tolerance).

Calibration (defaults below, seeds 0..4; growth per doubling at the last step, worst module): on widths
64..1024 mup stays within 0.81..1.03 and sp's worst module grows 5.4..6.1x; on 64..512 (the tests) mup
0.76..1.03, sp 5.2..6.5x. Half the LR: mup 0.81..1.00, sp >= 5.3x; twice the LR: mup 0.69..1.04, sp
>= 4.4x. Past ~8 steps at this LR a loss spike can push one mup module to ~1.3: keep the check short.
Blind spots: the attention scale (1/head_dim vs 1/sqrt(head_dim)) does not show in a few steps on
random tokens, since q and k are not yet correlated; ``tests/test_model.py`` checks it directly.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd
import torch

from .config import ModelConfig, OptimizerConfig
from .model import GPT

DEFAULT_WIDTHS = (64, 128, 256, 512, 1024)


def modules_of_interest(model: GPT) -> dict[str, torch.nn.Module]:
    """The modules whose output the check records, by the name used in its table, in forward order."""
    out: dict[str, torch.nn.Module] = {"embedding": model.wte}  # before embedding_multiplier
    for i, block in enumerate(model.blocks):
        out[f"block{i}.attn"] = block.attn  # attention output projection, before the residual add
        out[f"block{i}.mlp"] = block.mlp  # MLP output projection, before the residual add
        out[f"block{i}"] = block  # the residual stream after the block
    out["final_norm"] = model.ln_f
    out["logits"] = model  # the model's output: logits after the readout multiplier
    return out


def coord_check(
    widths: Sequence[int] = DEFAULT_WIDTHS,
    parametrization: Literal["mup", "sp"] = "mup",
    *,
    steps: int = 4,
    lr: float = 1e-2,
    seed: int = 0,
    n_seeds: int = 1,
    depth: int = 2,
    n_heads: int = 4,
    seq_len: int = 32,
    batch_size: int = 8,
    vocab_size: int = 256,
    base_width: int | None = None,
    positions: Literal["rotary", "learned"] = "rotary",
    embedding_multiplier: float = 1.0,
    output_multiplier: float = 1.0,
) -> pd.DataFrame:
    """Mean |output| of every module of interest: columns parametrization, seed, width, step, module, l1.

    Step 0 is the forward pass at initialisation, step s the one after s AdamW updates (the model's own
    ``param_groups``, no weight decay, no clipping). Seed s initialises every width and draws the one
    batch of ``batch_size`` random sequences all widths train on; ``n_seeds`` repeats with seeds
    seed, seed + 1, ... ``base_width`` defaults to the smallest width, where mup and sp coincide.
    n_heads is fixed, so head_dim grows with width, as muP's attention scale assumes. The multipliers
    are muP's width-independent constants (``ModelConfig``): the same at every width, they must keep the
    curves flat.
    The batch is small (256 tokens) so that the check is fast and stable at a high LR on one repeated batch.
    """
    base_width = min(widths) if base_width is None else base_width
    rows: list[dict] = []
    for s in range(seed, seed + n_seeds):
        tokens = torch.randint(
            vocab_size, (batch_size, seq_len + 1), generator=torch.Generator().manual_seed(s)
        )
        idx, targets = tokens[:, :-1], tokens[:, 1:]  # (B, T) each
        for width in widths:
            cfg = ModelConfig(
                width=width,
                depth=depth,
                n_heads=n_heads,
                seq_len=seq_len,
                vocab_size=vocab_size,
                parametrization=parametrization,
                base_width=base_width,
                positions=positions,
                embedding_multiplier=embedding_multiplier,
                output_multiplier=output_multiplier,
            )
            rows += _train_and_record(GPT(cfg, seed=s), idx, targets, lr, steps, {"seed": s, "width": width})
    df = pd.DataFrame(rows)
    df.insert(0, "parametrization", parametrization)
    return df


def _train_and_record(
    model: GPT, idx: torch.Tensor, targets: torch.Tensor, lr: float, steps: int, tags: dict
) -> list[dict]:
    """``steps`` forward passes on (idx, targets), an AdamW update after each; a row per module and step."""
    opt_cfg = OptimizerConfig(lr=lr, weight_decay=0.0)
    opt = torch.optim.AdamW(
        model.param_groups(opt_cfg), betas=(opt_cfg.beta1, opt_cfg.beta2), eps=opt_cfg.eps
    )
    rows: list[dict] = []
    step = 0

    def recorder(name: str):
        def hook(module: torch.nn.Module, args: tuple, output: torch.Tensor) -> None:
            rows.append({**tags, "step": step, "module": name, "l1": output.detach().abs().mean().item()})

        return hook

    handles = [m.register_forward_hook(recorder(name)) for name, m in modules_of_interest(model).items()]
    try:
        for step in range(steps):  # noqa: B007 (the hooks read `step`)
            opt.zero_grad(set_to_none=True)
            model.loss(idx, targets).backward()
            opt.step()
    finally:
        for h in handles:
            h.remove()
    return rows


def growth_per_doubling(df: pd.DataFrame, step: int | None = None) -> pd.DataFrame:
    """Per module at ``step`` (default: the last): 2 ** slope of the least-squares fit of log2 l1 on log2 width.

    l1 is first averaged over seeds. Columns: module, step, growth.
    """
    step = int(df["step"].max()) if step is None else step
    at = df[df["step"] == step].groupby(["module", "width"], sort=False)["l1"].mean().reset_index()
    out = []
    for module, part in at.groupby("module", sort=False):
        slope = np.polyfit(np.log2(part["width"]), np.log2(part["l1"]), 1)[0]
        out.append({"module": module, "step": step, "growth": float(2.0**slope)})
    return pd.DataFrame(out)


@dataclass
class CoordCheckResult:
    """The decision of ``verdict``. ``table``: module, step, growth (per doubling of width), ok."""

    passed: bool
    table: pd.DataFrame
    failed: list[str]  # modules outside [min_growth, tolerance]
    worst_module: str  # the module farthest from flat (log scale)
    worst_growth: float
    tolerance: float
    min_growth: float

    def rows(self) -> list[dict]:
        """The per-module table as plain rows: module, step, growth, ok."""
        return [
            {"module": r.module, "step": int(r.step), "growth": float(r.growth), "ok": bool(r.ok)}
            for r in self.table.itertuples()
        ]

    def summary(self) -> str:
        """One line: the decision, the worst module and the bounds."""
        verdict = "PASS" if self.passed else f"FAIL ({', '.join(self.failed)})"
        return (
            f"coord check {verdict}: worst {self.worst_module} x{self.worst_growth:.3f} per doubling of width; "
            f"allowed x{self.min_growth:.3f}..x{self.tolerance:.3f}"
        )

    def to_dict(self) -> dict:
        """JSON-ready: passed, failed, worst_module, worst_growth, tolerance, min_growth, modules (``rows()``)."""
        return {
            "passed": self.passed,
            "failed": self.failed,
            "worst_module": self.worst_module,
            "worst_growth": self.worst_growth,
            "tolerance": self.tolerance,
            "min_growth": self.min_growth,
            "modules": self.rows(),
        }


def verdict(df: pd.DataFrame, tolerance: float = 1.2) -> CoordCheckResult:
    """Pass when no module's l1 at the last step grows by more than ``tolerance`` per doubling of width,
    nor shrinks below ``1 / (sqrt(2) * tolerance)`` per doubling (faster than any muP quantity vanishes).

    microsoft/mup's own test allows 1.2x between two widths; growth, not shrinkage, is sp's failure.
    """
    table = growth_per_doubling(df)
    min_growth = 1.0 / (math.sqrt(2.0) * tolerance)
    table["ok"] = (table["growth"] <= tolerance) & (table["growth"] >= min_growth)
    worst = int(np.argmax(np.abs(np.log(table["growth"]))))
    failed = table.loc[~table["ok"], "module"].tolist()
    return CoordCheckResult(
        passed=not failed,
        table=table,
        failed=failed,
        worst_module=str(table["module"][worst]),
        worst_growth=float(table["growth"][worst]),
        tolerance=tolerance,
        min_growth=min_growth,
    )
