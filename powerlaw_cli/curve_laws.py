"""Loss-curve laws as pure numpy functions of the LR schedule, and their robust fit.

Time is the optimizer step t = 1..T; ``eta`` is the LR of every step (``eta[t - 1]`` is step t's).
Both laws count the LR area from the first step, so the warmup area S_W is inside S1(t) + S_W.

Multi-power law (Luo et al. 2025, arXiv 2503.12811), parameters (L0, A, alpha, B, C, beta, gamma)::

    L(t) = L0 + A (S1(t) + S_W)^-alpha - LD(t)
    LD(t) = B sum_{k<=t} (eta_{k-1} - eta_k) G(eta_k^-gamma S_k(t)),  S_k(t) = sum_{tau=k..t} eta_tau
    G(x) = 1 - (C x + 1)^-beta

The sum runs over the steps after the warmup (the warmup ends at the first step with the largest LR;
eta_{k-1} of the first such step is that LR). Only steps where the LR changes contribute, and
S_k(t) = cum(t) - cum(k - 1), so one evaluation costs O(M K) for M points and K changes (K is binned to
about ``MAX_CHANGES`` runs of consecutive steps, exact below that).

Tissue et al. 2024 ("Scaling law with learning rate annealing"), parameters (L0, A, alpha, C)::

    L(t) = L0 + A S1(t)^-alpha - C S2(t),  S2(t) = sum_{i<=t} m_i,  m_i = lam m_{i-1} + (eta_{i-1} - eta_i)

with the paper's momentum lam = 0.999 and the same post-warmup LR changes.

The fit is ``scipy.optimize.least_squares`` with the Huber loss (delta 1e-3 on the loss, as the MPL paper),
positive parameters in log space, several starts (the best kept); intervals come from a bootstrap over
contiguous blocks of each fitted curve's points (``fit_law``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

HUBER_DELTA = 1e-3
MAX_CHANGES = 1024
"""LR changes per curve beyond which consecutive changing steps are merged into about this many bins (split
at every point evaluated, so a bin is wholly before or after each point)."""
TISSUE_MOMENTUM = 0.999


@dataclass(frozen=True)
class Law:
    """A curve law: its parameter names, which are positive (fitted in log space), and its bounds."""

    name: str
    params: tuple[str, ...]
    low: tuple[float, ...]
    high: tuple[float, ...]

    def positive(self) -> np.ndarray:
        """True for the parameters fitted as logs (all but L0)."""
        return np.array([p != "L0" for p in self.params])


MPL = Law(
    "mpl",
    ("L0", "A", "alpha", "B", "C", "beta", "gamma"),
    (0.0, 1e-6, 1e-3, 1e-6, 1e-6, 1e-3, 1e-3),
    (np.inf, 1e4, 5.0, 1e8, 1e6, 20.0, 3.0),
)
TISSUE = Law("tissue", ("L0", "A", "alpha", "C"), (0.0, 1e-6, 1e-3, 1e-9), (np.inf, 1e4, 5.0, 1e4))
LAWS = {law.name: law for law in (MPL, TISSUE)}


@dataclass
class Design:
    """One curve made ready for fast law evaluations at its points ``at`` (steps, 1-based)."""

    at: np.ndarray
    area: np.ndarray  # S1(t) + S_W at each point
    changes: np.ndarray  # eta_{k-1} - eta_k of the (binned) post-warmup LR changes
    eta_k: np.ndarray  # eta_k of each change
    span: np.ndarray  # S_k(t): M x K, 0 where k > t
    s2: np.ndarray  # Tissue's S2(t) at each point
    peak: float  # the largest LR

    @classmethod
    def build(cls, eta: np.ndarray, at: np.ndarray) -> Design:
        """Precompute the sums of both laws for the per-step LRs ``eta`` at the steps ``at``."""
        eta = np.asarray(eta, float)
        at = np.asarray(at, int)
        cum = np.concatenate([[0.0], np.cumsum(eta)])  # cum[t] = sum of the first t steps
        peak = int(np.argmax(eta))  # 0-based index of the warmup's last step (the first largest LR)
        prev = np.concatenate([[eta[peak]], eta[peak:-1]])
        delta = prev - eta[peak:]
        steps = np.arange(peak + 1, len(eta) + 1)  # 1-based step k of each delta
        moving = delta != 0
        k, d = steps[moving], delta[moving]
        s2 = _tissue_s2(delta, at, peak)
        if len(k) > MAX_CHANGES:  # merge consecutive changes into bins that no point falls inside
            cuts = np.union1d(np.searchsorted(k, at, side="right"), np.linspace(0, len(k), MAX_CHANGES + 1))
            bins = [b for b in np.split(np.arange(len(k)), cuts.astype(int)[1:-1]) if len(b)]
            d = np.array([d[b].sum() for b in bins])
            k = np.array([k[b[len(b) // 2]] for b in bins])
        span = np.where(k[None, :] <= at[:, None], cum[at][:, None] - cum[k - 1][None, :], 0.0)
        return cls(at, cum[at], d, eta[k - 1], span, s2, float(eta[peak]))


def _tissue_s2(delta: np.ndarray, at: np.ndarray, peak: int) -> np.ndarray:
    """S2 at the steps ``at``: the running sum of the momentum m_i = lam m_{i-1} + delta_i."""
    m = np.zeros(len(delta))
    acc = 0.0
    for i, d in enumerate(delta):  # one pass over the steps (a linear recurrence)
        acc = TISSUE_MOMENTUM * acc + d
        m[i] = acc
    s2 = np.concatenate([[0.0], np.cumsum(m)])  # s2[j]: after the first j post-warmup steps
    return s2[np.clip(at - (peak + 1) + 1, 0, len(m))]


def mpl_loss(params: np.ndarray, design: Design) -> np.ndarray:
    """The multi-power law's loss at ``design.at`` for (L0, A, alpha, B, C, beta, gamma)."""
    return _mpl(params, design, False)[0]


def _mpl(params: np.ndarray, design: Design, jac: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """The MPL loss and, with ``jac``, its derivatives in the fitted coordinates (L0, then log of the rest)."""
    L0, A, alpha, B, C, beta, gamma = params
    log_eta = np.log(np.maximum(design.eta_k, 1e-12))
    x = design.span * np.exp(-gamma * log_eta)[None, :]
    base = C * x + 1.0
    power = base**-beta
    d = design.changes[None, :]
    head = A * design.area**-alpha
    loss = L0 + head - B * ((1.0 - power) * d).sum(axis=1)
    if not jac:
        return loss, None
    log_area = np.log(design.area)
    slope = beta * power / base  # dG/d(Cx) = beta (Cx + 1)^(-beta - 1)
    columns = [
        np.ones_like(loss),
        head,
        -alpha * head * log_area,
        -B * ((1.0 - power) * d).sum(axis=1),
        -B * C * (slope * x * d).sum(axis=1),
        -B * beta * (power * np.log(base) * d).sum(axis=1),
        B * gamma * C * (slope * x * log_eta[None, :] * d).sum(axis=1),
    ]
    return loss, np.stack(columns, axis=1)


def tissue_loss(params: np.ndarray, design: Design) -> np.ndarray:
    """Tissue et al.'s loss at ``design.at`` for (L0, A, alpha, C)."""
    return _tissue(params, design, False)[0]


def _tissue(params: np.ndarray, design: Design, jac: bool) -> tuple[np.ndarray, np.ndarray | None]:
    L0, A, alpha, C = params
    head = A * design.area**-alpha
    loss = L0 + head - C * design.s2
    if not jac:
        return loss, None
    columns = [np.ones_like(loss), head, -alpha * head * np.log(design.area), -C * design.s2]
    return loss, np.stack(columns, axis=1)


EVALUATE = {"mpl": _mpl, "tissue": _tissue}
"""law name -> (params, design, jac) -> (loss, jacobian in the fitted coordinates or None)."""


def law_loss(name: str, params: np.ndarray, design: Design) -> np.ndarray:
    """The loss of law ``name`` ("mpl" or "tissue") with ``params`` at ``design.at``."""
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        return EVALUATE[name](np.asarray(params, float), design, False)[0]


@dataclass
class FitOutcome:
    """A law fitted to curves: best parameters, bootstrap draws, the objective, and warnings."""

    law: str
    params: dict[str, float]
    draws: np.ndarray  # bootstrap x params
    cost: float
    converged: bool
    message: str
    on_bound: list[str] = field(default_factory=list)

    def vector(self) -> np.ndarray:
        """The best parameters in the law's order."""
        return np.array([self.params[p] for p in LAWS[self.law].params])

    def intervals(self, level: float = 0.95) -> dict[str, dict[str, float]]:
        """{param: {value, low, high}}: percentile intervals of the bootstrap (the value alone without)."""
        out = {}
        q = (1 - level) / 2
        for i, name in enumerate(LAWS[self.law].params):
            row = {"value": self.params[name]}
            if len(self.draws):
                row |= {
                    "low": float(np.quantile(self.draws[:, i], q)),
                    "high": float(np.quantile(self.draws[:, i], 1 - q)),
                }
            out[name] = row
        return out


def _to_free(law: Law, params: np.ndarray) -> np.ndarray:
    pos = law.positive()
    return np.where(pos, np.log(np.maximum(params, 1e-300)), params)


def _from_free(law: Law, free: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):  # a step out of range gives inf: a non-finite residual, rejected
        return np.where(law.positive(), np.exp(free), free)


def _free_bounds(law: Law) -> tuple[np.ndarray, np.ndarray]:
    low, high = np.array(law.low, float), np.array(law.high, float)
    pos = law.positive()
    with np.errstate(divide="ignore"):
        return np.where(pos, np.log(low), low), np.where(pos, np.log(high), high)


def _starts(law: Law, designs: list[Design], losses: list[np.ndarray]) -> list[np.ndarray]:
    """A small grid of starting points scaled to the data."""
    lo = float(min(y.min() for y in losses))
    hi = float(max(y[0] for y in losses))
    area0 = float(np.median([d.area[0] for d in designs]))
    peak = max(d.peak for d in designs)
    starts = []
    for floor in (0.8, 0.95):
        L0 = floor * lo
        for alpha in (0.3, 0.7):
            A = max(hi - L0, 1e-3) * area0**alpha
            if law.name == "tissue":
                starts.append(np.array([L0, A, alpha, 0.3 / peak]))
                continue
            for beta, gamma, C in ((0.5, 0.5, 2.0), (1.0, 0.3, 10.0)):
                starts.append(np.array([L0, A, alpha, 0.3 / peak, C, beta, gamma]))
    return starts


def _solve(law, designs, losses, start, lb, ub, max_nfev):
    from scipy.optimize import least_squares

    evaluate = EVALUATE[law.name]
    y = np.concatenate(losses)

    cache: dict[bytes, tuple[np.ndarray, np.ndarray]] = {}

    def both(free):
        key = free.tobytes()
        if key in cache:
            return cache[key]
        cache.clear()
        params = _from_free(law, free)
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            parts = [evaluate(params, d, True) for d in designs]
        r = np.concatenate([p[0] for p in parts]) - y
        jac = np.concatenate([p[1] for p in parts])
        bad = ~np.isfinite(r)
        cache[key] = np.where(bad, 1e3, r), np.where(np.isfinite(jac) & ~bad[:, None], jac, 0.0)
        return cache[key]

    x0 = np.clip(_to_free(law, start), lb + 1e-9, ub - 1e-9)
    return least_squares(
        lambda f: both(f)[0],
        x0,
        jac=lambda f: both(f)[1],
        bounds=(lb, ub),
        loss="huber",
        f_scale=HUBER_DELTA,
        max_nfev=max_nfev,
        x_scale="jac",
    )


def fit_law(
    name: str,
    designs: list[Design],
    losses: list[np.ndarray],
    n_boot: int = 100,
    blocks: int = 10,
    seed: int = 0,
) -> FitOutcome:
    """Fit law ``name`` to curves (one ``Design`` and loss array each) by Huber least squares.

    Several starts, the best (lowest Huber cost) kept. Intervals: ``n_boot`` refits, each on the curves'
    points resampled in ``blocks`` contiguous blocks per curve (a moving-block bootstrap: neighbouring
    points of a curve are correlated, so single points are not resampled), started from the best fit.
    """
    law = LAWS[name]
    lb, ub = _free_bounds(law)
    best = None
    for start in _starts(law, designs, losses):
        res = _solve(law, designs, losses, start, lb, ub, 400)
        if best is None or res.cost < best.cost:
            best = res
    params = _from_free(law, best.x)
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(n_boot):
        sub_d, sub_y = [], []
        for d, y in zip(designs, losses, strict=True):
            parts = np.array_split(np.arange(len(y)), min(blocks, len(y)))
            take = np.concatenate([parts[i] for i in rng.integers(0, len(parts), len(parts))])
            sub_d.append(subset(d, take))
            sub_y.append(y[take])
        res = _solve(law, sub_d, sub_y, params, lb, ub, 200)
        draws.append(_from_free(law, res.x))
    names = law.params
    on_bound = [
        names[i]
        for i in range(len(names))
        if np.isfinite(lb[i])
        and abs(best.x[i] - lb[i]) < 1e-3
        or np.isfinite(ub[i])
        and abs(best.x[i] - ub[i]) < 1e-3
    ]
    return FitOutcome(
        name,
        {p: float(v) for p, v in zip(names, params, strict=True)},
        np.array(draws).reshape(len(draws), len(names)),
        float(best.cost),
        bool(best.success) and bool(np.isfinite(best.cost)),
        str(best.message),
        on_bound,
    )


def subset(design: Design, take: np.ndarray) -> Design:
    """The design at a subset of its points (rows ``take``, repeats allowed)."""
    return Design(
        design.at[take],
        design.area[take],
        design.changes,
        design.eta_k,
        design.span[take],
        design.s2[take],
        design.peak,
    )


def metrics(pred: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """The MPL paper's metrics of a predicted curve: r2, mae, rmse, pred_e (mean relative error) and
    worst_e (largest relative error)."""
    pred, y = np.asarray(pred, float), np.asarray(y, float)
    err = pred - y
    ss = float(((y - y.mean()) ** 2).sum())
    rel = np.abs(err) / np.abs(y)
    return {
        "r2": float(1 - (err**2).sum() / ss) if ss > 0 else float("nan"),
        "mae": float(np.abs(err).mean()),
        "rmse": float(np.sqrt((err**2).mean())),
        "pred_e": float(rel.mean()),
        "worst_e": float(rel.max()),
    }
