"""Tables from known laws, in other labs' layouts: to test the fit, for the README's examples, and to try
``plsweep fit`` without running a sweep.

- ``steplaw_table``: the Step Law study's layout (columns ``N, D, lr, bs, smooth loss``; every (N, D)
  sweeps LR and batch together, the batch in tokens). The loss of a run is
  L(N, D) + C_BATCH * log2(B / B_opt)^2 + C_LR * bowl(log2(lr / lr_opt(B))) + noise, with
  lr_opt(N, D) = 1.79 N^-0.713 D^0.307 at B_opt(D) = 0.58 D^0.571 tokens (Li et al. 2025),
  lr_opt(B) = lr_opt(N, D) * (B / B_opt)^0.5 away from it, L(N, D) the Chinchilla law below, and runs
  more than 2.5 LR doublings above lr_opt(B) diverged (a NaN loss).
- ``chinchilla_table``: final losses of one run per (N, D) (``params, tokens, loss``), from
  L(N, D) = 1.69 + 406.4 N^-0.34 + 410.7 D^-0.28 (Hoffmann et al. 2022) times log-normal noise.

    python -m powerlaw_cli.synthetic steplaw steplaw.csv     # or: chinchilla chinchilla.csv
"""

from __future__ import annotations

import math
import sys

import numpy as np
import pandas as pd

LR_LAW = (1.79, -0.713, 0.307)  # lr_opt = a * N^alpha * D^beta at the optimal batch
BATCH_LAW = (0.58, 0.571)  # B_opt = a * D^b, tokens
LOSS_LAW = (1.69, 406.4, 0.34, 410.7, 0.28)  # L = E + A N^-alpha + B D^-beta
SEQ_LEN = 2048
C_BATCH, C_LR, LR_PER_BATCH = 0.004, 0.02, 0.5
BATCHES = 2 ** np.arange(3, 12)  # 8 .. 2048 sequences
LRS = 2.0 ** np.arange(-15, -1)  # 3e-5 .. 0.25
CHINCHILLA_PARAMS = np.geomspace(4e7, 1.6e10, 7)
CHINCHILLA_TOKENS = np.geomspace(5e9, 5e11, 6)


def lr_opt(n, d):
    """The optimal LR at the optimal batch (Step Law's fit)."""
    a, alpha, beta = LR_LAW
    return a * np.asarray(n, float) ** alpha * np.asarray(d, float) ** beta


def batch_opt_tokens(d):
    """The optimal batch in tokens (Step Law's fit)."""
    a, b = BATCH_LAW
    return a * np.asarray(d, float) ** b


def loss(n, d):
    """The loss at the optimum (Chinchilla's approach-3 fit)."""
    e, a, alpha, b, beta = LOSS_LAW
    return e + a * np.asarray(n, float) ** -alpha + b * np.asarray(d, float) ** -beta


def bowl(dx, skew: float = 0.5):
    """A bowl in log2 LR with its minimum 0 at dx = 0, ~dx^2 near it, rising faster above it when skew > 0:
    2 (e^(skew dx) - 1 - skew dx) / skew^2 (dx^2 for skew 0)."""
    if skew == 0:
        return np.square(dx)
    return 2 * (np.exp(skew * dx) - 1 - skew * dx) / skew**2


def steplaw_table(
    seed: int = 0,
    *,
    noise: float = 0.002,
    params=(1e7, 4.6e7, 2.2e8, 1e9),
    tokens=(1e9, 4.6e9, 2.2e10, 1e11),
    batches=BATCHES,
    lrs=LRS,
    lr_skew: float = 0.5,
) -> pd.DataFrame:
    """A Step-Law-style table (see the module docstring); ``batches`` in sequences of ``SEQ_LEN`` tokens;
    ``lr_skew`` 0 makes every LR curve a parabola in log2 LR."""
    rng = np.random.default_rng(seed)
    rows = []
    for n in params:
        for d in tokens:
            b_opt = batch_opt_tokens(d) / SEQ_LEN
            for b in batches:
                u = math.log2(b / b_opt)
                lr_b = lr_opt(n, d) * 2.0 ** (LR_PER_BATCH * u)
                for lr in lrs:
                    dx = math.log2(lr / lr_b)
                    value = loss(n, d) + C_BATCH * u**2 + C_LR * bowl(dx, lr_skew) + rng.normal(0, noise)
                    rows.append(
                        {
                            "N": n,
                            "D": d,
                            "lr": lr,
                            "bs": int(b) * SEQ_LEN,
                            "smooth loss": math.nan if dx > 2.5 else value,
                        }
                    )
    return pd.DataFrame(rows)


def chinchilla_table(
    seed: int = 0,
    *,
    noise: float = 0.005,
    params=CHINCHILLA_PARAMS,
    tokens=CHINCHILLA_TOKENS,
) -> pd.DataFrame:
    """A Chinchilla-style table of final losses, one run per (N, D), with relative noise ``noise``."""
    rng = np.random.default_rng(seed)
    grid = [(n, d) for n in params for d in tokens]
    values = [loss(n, d) * math.exp(rng.normal(0, noise)) for n, d in grid]
    return pd.DataFrame({"params": [n for n, _ in grid], "tokens": [d for _, d in grid], "loss": values})


def main(argv: list[str]) -> None:
    """``python -m powerlaw_cli.synthetic steplaw|chinchilla OUT.csv``."""
    tables = {"steplaw": steplaw_table, "chinchilla": chinchilla_table}
    if len(argv) != 2 or argv[0] not in tables:
        sys.exit("usage: python -m powerlaw_cli.synthetic steplaw|chinchilla OUT.csv")
    tables[argv[0]]().to_csv(argv[1], index=False)


if __name__ == "__main__":
    main(sys.argv[1:])
