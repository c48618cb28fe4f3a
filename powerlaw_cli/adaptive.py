"""Adaptive sweeps: which runs to train next, round after round, until every cell's lr_opt is known to a
target precision or a compute budget is spent.

A *cell* is one combination of every grid axis but the LR and the seed: one LR curve. The module is pure:
it reads finished runs (``Observation``) and returns the next round's runs (``Proposal``, one per cell and
LR; the caller trains each at every seed of the grid). Launching, records and the sweep directory are the
caller's; ``run_rounds`` drives the loop through the caller's ``observe``, ``train`` and ``cost``.

**Optima as the fit finds them.** Every round fits every cell with ``plsweep fit``'s own pipeline and
defaults (``fit_cells.cell_curves`` -> ``point_noise`` -> ``find_cell_optima``: the mean loss over seeds
per LR, a parabola in log2 LR through the best LR and its two neighbours, divergences as markers, an
optimum next to a divergence bracketed). The statuses below are therefore what the final fit will report.

**The lattice.** Every LR is a point of one log lattice, lr_min * 2^(k * lr_step_log2), spelled to 12
significant digits as sweep files spell ranges. So the same LR recurs across cells and the WSD trunks of
one batch size are shared between budgets; a fixed grid written as ``{start = lr_min, ratio = 2}`` has the
same LRs, hence the same run ids; and "never the same run twice" is a comparison of lattice indices. A
cell is never proposed an LR it has tried (failed runs included: rerunning those is ``--retry-failed``'s
decision), nor one at or above an LR that diverged in it. The step is the resolution: the fit's window is
the best LR and its neighbours, and a finer step narrows that window, which widens the noise part of the
interval (about noise / (curvature * step)); x2 (the default) is the demo's and the Power paper's grid.

**Each round**, every cell gets a status and the lattice points it needs next:

- ``coarse``: a cell of the first round (``initial_cells``) with no runs: ``initial_lrs`` points spread
  evenly over [lr_min, lr_max].
- ``predicted``: an untried cell within ``extrapolate_steps`` grid steps (of batch size or budget) of its
  group's cells with an optimum, once a law exists: three consecutive points around the law's prediction
  (of the two windows whose middle step holds it, the one with more LRs already trained at a smaller
  budget of the same batch, whose trunks the new runs extend rather than start). Three, however wide
  the law's interval: a window that misses is ``extending`` a round later, one point at a time.
- ``waiting``: an untried cell that no law reaches yet. When nothing else would be trained, the reach
  grows by one step until a waiting cell is predicted.
- ``extending`` / ``bracketing``: a cell whose best LR is its lowest or highest (``edge_low`` /
  ``edge_high``; bracketing: fewer than 3 finite LRs): the one point beyond that edge, one spacing of the
  LRs at the edge away (a coarse grid goes on at its own spacing, a predicted window one lattice step at
  a time); going up, the step halves until the point falls below the lowest divergence; when every LR
  diverged, down. [lr_min, lr_max] only seeds the first round: a cell goes on past it until bracketed.
- ``refining``: a cell with an optimum that is not done: the untried lattice points next to its best LR
  (no other point changes the parabola's window).
- ``done``: its 95% interval is within the precision (1.96 sigma_log2 <= ``precision_log2``), its curve
  is not flat, and the LRs tried next to its best LR are within max(lattice step, 2 * precision_log2).
- ``stuck``: not done, and nothing left to try (the points next to its best LR are tried, or no run of
  it is usable). Flat or noisy cells end here: more seeds are the remedy, not more LRs.

Why a predicted window is not widened to the law's 95% interval: a point added for the interval is
paid in every cell, an extension only in the cells whose window missed, and it is one point. With one
seed the law's bootstrap intervals are wide (+-1 to 2 octaves on ``bench/larger.toml``, whose cells'
optima scatter about the law), so widening gave most predicted cells 4 or 5 LRs, at the largest budget
too. Measured on that grid (``bench/bench_compute.py``, FLOPs charged exactly): widened, 59 (cell, LR)
runs and 38.6% of the FLOPs of every run alone; three points, 50 runs and 29.5%, with the same fit. On
the stand-in below, whose law is tight, the two agree to 0.3 point.

Why the two extra conditions of ``done``:

- *Neighbours within 2 * precision.* ``sigma_log2`` is the noise's part of the error only. On a curve that
  rises faster above the optimum than below, the 3-point vertex is also biased (measured: up to 0.08
  octave at a x2 step for the tests' bowl), and the best LR alone is within half its neighbours' spacing
  of a noiseless optimum. Close neighbours bound that error by the precision whatever sigma says. In the
  tests the largest actual error over 8 noise draws of 25 cells was 0.28 octave against a target of 0.5.
- *Not flat.* The vertex -c1 / (2 c2) is a ratio, and its delta-method interval holds only when the
  curvature c2 is clearly positive: the exact (Fieller) interval is bounded only when c2 differs from 0 at
  the interval's own level. So a cell fitted by the parabola must have its window's curvature at least
  1.96 standard errors (``_curvature_z``); otherwise a chance curvature on a flat, noisy curve passes
  for a narrow interval. Measured: a flat cell among the demo grid's is reported stuck in 35 of 40 noise
  draws (the rest pass by chance as its best LR wanders over several windows).

**The law** is fitted per group (``CellSpec.group``: the settings other than batch and budget, e.g. the
width) with ``fit_laws.fit_law`` over the group's cells with an optimum. The form is the richest those
cells determine: ``lr_opt ~ batch_size + tokens`` (free exponents: both vary, 4 cells), else
``lr_opt ~ batch_size^1 + tokens`` (the Power paper's form: 3 cells over two budgets), else
``lr_opt ~ batch_size`` (3 cells at one budget: the budget is left out, so the next budget is predicted
at the same LR and its window catches the shift, about half an octave per doubling on the demo), else
``lr_opt ~ batch_size^1`` (2 cells). A form that fails (e.g. collinear variables) falls to the next.
``predict_law`` gives the prediction and its 95% bootstrap interval (200 resamples, seed 0:
deterministic). The law reaches one grid step beyond the cells with an optimum (``extrapolate_steps``)
because a wrong prediction at a large budget is the most expensive mistake a sweep can make: budgets are
covered one step a round, each round extending the trunks of the last.

**The first round** (``initial_cells``): ``cheapest`` (the default) is every batch size at its group's
smallest budget, enough for a first law over the batch sizes. ``corners``, only the smallest and largest
batch there, trains fewer coarse runs but waits for both corners before any law: on the tests'
5 x 5 grid, where one corner's optimum lies above the range, it took 7.4 rounds against 5.5 and 0.8
points more of the full grid's FLOPs (same cost on the 3 x 3 grid). ``all`` is every cell (2 rounds on
the demo grid, 65% of the FLOPs of training each run alone). A group with one batch size starts from its
two smallest budgets, so that a law can be fitted.

**Stopping**, checked in this order: every cell done; ``max_rounds`` reached (allow at least the number
of budgets plus 2 with the default reach); ``budget_flops`` spent; nothing proposed (every unconverged
cell stuck or waiting); nothing affordable. ``RoundPlan.why`` then lists the cells that did not converge and
why; ``RoundPlan.cells`` gives every cell's status, reason, lr_opt with its interval, and LRs proposed.

**Cost.** ``cost(cell, lr)`` is the FLOPs the run would add now (the caller's model knows the trunks). It
only cuts a round to ``budget_flops``, whole cells at a time (a cell's runs are of little use apart),
cheapest cell first (the most cells advanced per FLOP), and gives ``RoundPlan.flops``. Summing single
runs overestimates a round that trains one (batch, LR) at two budgets, so an exact single-run cost never
lets the budget be exceeded (``rounds.round_flops`` charges a launched round exactly, chain by chain). Which LRs are proposed never depends on ``cost``: that keeps every plan a
function of the observations, which a resumed loop can replay. Trunk sharing is preferred through the
observations instead (LRs already trained at a smaller budget of the batch).

**Determinism and resume.** ``plan_round`` depends only on the cells, the observations (in any order),
the settings, the round number and the FLOPs spent. ``run_rounds`` continues from ``start_round`` when the
caller kept count, else from ``completed_rounds``, which replays the loop on the observations. A loop
interrupted between rounds therefore trains exactly the runs the uninterrupted one would have. The replay
is exact unless a round was cut by the budget, or observations came from outside the loop.

**Seeds.** Give the grid two seeds. With one, ``point_noise`` estimates the loss noise from the
residuals of 5-point cubics around each best LR, and an adaptive sweep has few cells with five LRs there:
on the demo grid the estimate was often about half the true noise, and the intervals covered the
truth in ~60% of cells against ~77% with two seeds. The actual errors stayed within the precision in
both cases.

**Intervals.** Even with two seeds the fit's 95% intervals cover the true lr_opt in about 77% of cells,
as they do on fixed grids (79-87% measured on a x2 grid of the tests' bowl): ``find_optimum``'s
``sigma_log2`` omits the vertex's bias. Adding 0.1 grid step in quadrature restored 95-100% coverage in
that measurement. That is a change to ``fit_optimum``, not made here.

**Measured** (``tests/test_adaptive.py``: the stand-in loss is an asymmetric bowl in log2 LR around
lr_opt = 0.633 B^0.9 T^-0.5, the demo's fitted law, with seed noise 0.004, two seeds; costs are tokens
with WSD trunks, 20% decay). The demo's grid (batches 8, 16, 32; budgets 131k, 262k, 524k tokens; range
0.002..0.064): 4 rounds, 37 (cell, LR) runs, every cell done, 43.8% of the FLOPs of the 6-LR grid
trained run by run and 66.7% of it with shared trunks. An oracle that trains just the 3 lattice points
around each true optimum needs 36.0% and 54.8% there, so no 3-point policy reaches 30% and 50% on this
grid. A 5 x 5 grid (batches 8..128, budgets 65k..1M tokens, range 0.001..0.064, 6 cells' optima above
it): 5 rounds, 102 runs, every cell done, 30.7% and 50.1% of the 7-LR grid (oracle: 28.5% and 46.5%).
``bench/larger.toml``'s shape (batches 8, 16, 32; budgets 65k..524k; 8 LRs 0.002..0.256): 6 rounds, 50
runs, every cell done, 31.1% and 49.6% (oracle: 26.2% and 41.8%).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd

from .fit_cells import cell_curves, find_cell_optima, point_noise
from .fit_laws import FitError, fit_law, parse_law, predict_law
from .fit_optimum import normal_z
from .store import json_ready
from .sweep_settings import AdaptiveSettings

LAW_BOOTSTRAP = 200  # resamples of each round's law: enough for a bracket's 95% interval, and fast
LAW_FREE = (("batch_size", "tokens"), ("tokens",), ("batch_size",), ())  # free exponents, most first
ON_LATTICE = 1e-6  # lattice units: an LR this close to a lattice point is that point
CI = 0.95


@dataclass(frozen=True)
class CellSpec:
    """One cell: a combination of every grid axis but the LR (and the seed)."""

    key: tuple  # hashable and opaque: only compared for equality
    batch_size: float  # sequences
    tokens: float  # the run's budget
    group: tuple = ()  # the cell's other settings (e.g. the width): a law is fitted per group

    @property
    def label(self) -> str:
        group = ", ".join(f"{k}={v}" for k, v in self.group) if self.group else ""
        return f"batch {self.batch_size:.12g}, tokens {self.tokens:.12g}" + (f" ({group})" if group else "")


@dataclass(frozen=True)
class Observation:
    """One finished run."""

    cell: tuple  # CellSpec.key
    lr: float
    seed: int
    loss: float  # final validation loss; NaN when diverged
    status: str  # ok | diverged | failed (failed: ignored for the optimum, but counts as tried)


@dataclass(frozen=True)
class Proposal:
    """One run to train next (the caller trains it at every seed of the grid)."""

    cell: tuple
    lr: float
    reason: str


@dataclass
class RoundPlan:
    """One round: its runs, whether the loop stops, and every cell's state (JSON-ready)."""

    round: int
    proposals: list[Proposal]
    done: bool
    why: str
    cells: list[dict]
    laws: list[dict] = field(default_factory=list)
    flops: float = 0.0  # the proposals' cost as estimated by ``cost`` when planned

    def to_dict(self) -> dict[str, Any]:
        """Plain data for JSON (NaN as None)."""
        return json_ready(asdict(self))


@dataclass
class _Step:
    """What one cell needs next: its status, why, and the lattice points to train."""

    status: str  # coarse | predicted | waiting | bracketing | extending | refining | done | stuck
    reason: str
    points: list[int] = field(default_factory=list)
    beyond: int = 0  # waiting: grid steps beyond the law's reach


@dataclass
class _Cell:
    """One cell's data: its optimum (a ``find_cell_optima`` row) and the lattice positions tried."""

    optimum: dict | None
    tried: list[float]  # every run's lattice index, failed ones included
    finite: list[tuple[float, float]]  # (index, mean loss) of the LRs with a finite loss, sorted
    diverged: list[float]
    curvature_z: float = math.inf  # of the 3 points around the best LR (``_curvature_z``)

    @property
    def used(self) -> bool:
        """Whether the fit found an optimum (interior, or bracketed by a divergence)."""
        return self.optimum is not None and self.optimum["status"] == "used"


def plan_round(
    cells: list[CellSpec],
    observations: list[Observation],
    settings: AdaptiveSettings,
    round_number: int,
    spent_flops: float,
    cost: Callable[[CellSpec, float], float],
) -> RoundPlan:
    """The next round's runs (one Proposal per (cell, lr); the caller expands each to every seed).

    Which LRs are proposed depends on the observations alone; ``cost`` (the FLOPs a run would add now)
    only decides what a round can afford under ``budget_flops``.
    """
    data = _cell_data(cells, observations, settings)
    laws = {group: _group_law(members, data) for group, members in _groups(cells).items()}
    steps = _steps(cells, data, laws, settings)
    report = [_cell_report(cell, data[cell.key], steps[cell.key], settings) for cell in cells]
    law_report = [_law_report(group, law, why) for group, (law, why) in laws.items()]
    plan = RoundPlan(round_number, [], True, "", report, law_report)
    unconverged = [c for c in cells if steps[c.key].status != "done"]
    stop = _stop(unconverged, settings, round_number, spent_flops)
    if stop:
        plan.why = stop + _not_converged(unconverged, steps)
        return plan
    proposals = [
        Proposal(cell.key, settings.lattice_lr(k), steps[cell.key].reason)
        for cell in cells
        for k in steps[cell.key].points
    ]
    proposals, costs, deferred = _afford(proposals, cells, settings, spent_flops, cost)
    for cell, row in zip(cells, report, strict=True):
        row["deferred"] = cell.key in deferred
    if proposals:
        plan.proposals, plan.flops, plan.done = proposals, sum(costs), False
        plan.why = _summary(proposals, steps, cells, deferred)
    elif deferred:
        left = settings.budget_flops - spent_flops
        plan.why = f"budget: the cheapest cell's runs need more than the {left:.3g} FLOPs left; "
        plan.why += _not_converged(unconverged, steps)
    else:
        plan.why = "nothing left to try; " + _not_converged(unconverged, steps)
    return plan


def _stop(
    unconverged: list[CellSpec], settings: AdaptiveSettings, round_number: int, spent_flops: float
) -> str:
    """Why the loop stops before proposing anything (empty: it goes on)."""
    if not unconverged:
        return f"every cell meets the precision (95% interval within ±{settings.precision_log2:g} log2)"
    if round_number >= settings.max_rounds:
        return f"max_rounds ({settings.max_rounds}) reached; "
    if settings.budget_flops and spent_flops >= settings.budget_flops:
        return f"budget spent: {spent_flops:.3g} of {settings.budget_flops:.3g} FLOPs; "
    return ""


def run_rounds(
    cells: list[CellSpec],
    settings: AdaptiveSettings,
    observe: Callable[[], tuple[list[Observation], float]],
    train: Callable[[RoundPlan], None],
    cost: Callable[[CellSpec, float], float],
    start_round: int | None = None,
) -> list[RoundPlan]:
    """Round after round: observe (records so far, FLOPs spent) -> ``plan_round`` -> train(plan), until a
    plan is done; returns the plans made by this call (the last one done).

    Deterministic: the same observations give the same plans, so a loop interrupted between rounds and
    restarted (observe now sees the runs already trained) proposes exactly what the uninterrupted loop
    would have. The round number to continue from is ``start_round`` when the caller kept count, else
    ``completed_rounds`` of what observe returns.
    """
    observations, spent = observe()
    number = completed_rounds(cells, observations, settings) if start_round is None else start_round
    plans = []
    while True:
        plan = plan_round(cells, observations, settings, number, spent, cost)
        plans.append(plan)
        if plan.done:
            return plans
        train(plan)
        observations, spent = observe()
        number += 1


def completed_rounds(
    cells: list[CellSpec], observations: list[Observation], settings: AdaptiveSettings
) -> int:
    """How many rounds the observations hold, found by replaying the loop: round r's runs are those of
    its plan (computed from the runs of rounds before r) that were trained.

    Exact when every observation came from the loop's own proposals and no round was cut by
    ``budget_flops`` (the replay plans without a budget; a cut round's remainder is then counted in it).
    """
    unlimited = replace(settings, budget_flops=0.0)
    by_run: dict[tuple, list[Observation]] = {}
    for obs in observations:
        by_run.setdefault((obs.cell, _lattice_key(settings, obs.lr)), []).append(obs)
    seen: list[Observation] = []
    for number in range(settings.max_rounds):
        plan = plan_round(cells, seen, unlimited, number, 0.0, lambda cell, lr: 0.0)
        took = [o for p in plan.proposals for o in by_run.get((p.cell, _lattice_key(settings, p.lr)), [])]
        if not took:
            return number
        seen += took
    return settings.max_rounds


# --- the state of every cell --------------------------------------------------------------------------


def _lattice_key(settings: AdaptiveSettings, lr: float) -> float:
    """A hashable position: the lattice index, rounded so that float noise does not split a point."""
    return round(settings.lattice_index(lr), 6)


def _cell_data(
    cells: list[CellSpec], observations: list[Observation], settings: AdaptiveSettings
) -> dict[tuple, _Cell]:
    """Every cell's optimum (as ``plsweep fit`` finds it: the same pipeline and defaults) and tried LRs."""
    index = {cell.key: i for i, cell in enumerate(cells)}
    known = sorted((o for o in observations if o.cell in index), key=lambda o: (index[o.cell], o.lr, o.seed))
    tried: dict[tuple, set[float]] = {cell.key: set() for cell in cells}
    for o in known:
        tried[o.cell].add(settings.lattice_index(o.lr))
    data = {cell.key: _Cell(None, sorted(tried[cell.key]), [], []) for cell in cells}
    runs = pd.DataFrame(
        [
            {"cell_index": index[o.cell], "lr": o.lr, "seed": o.seed, "loss": o.loss, "status": o.status}
            for o in known
        ],
        columns=["cell_index", "lr", "seed", "loss", "status"],
    )
    curves = cell_curves(runs, ["cell_index"], carry=()) if len(runs) else []
    if not curves:
        return data
    noise, _ = point_noise(curves)
    for row in find_cell_optima(curves, noise, ci=CI).to_dict(orient="records"):
        cell = data[cells[int(row["cell_index"])].key]
        cell.optimum = row
        cell.finite = [(settings.lattice_index(lr), mean) for lr, mean, _ in row["points"]]
        cell.diverged = [settings.lattice_index(lr) for lr in row["diverged_lrs"]]
        cell.curvature_z = _curvature_z(row["points"], noise)
    return data


def _curvature_z(points: list, noise: float | None) -> float:
    """The curvature of the loss over the best LR and its two neighbours in units of its standard error:
    their second divided difference in log2 LR (the curvature of the parabola through them) with the
    per-seed noise; inf when the best LR is an edge or the noise is unknown (other rules apply then).

    The delta-method interval of a parabola's vertex -c1 / (2 c2) holds only when c2 is clearly positive:
    the exact (Fieller) interval of the ratio is bounded only when c2 differs from 0 at the same level.
    On a flat, noisy curve a chance curvature would otherwise give a narrow interval.
    """
    means = [mean for _, mean, _ in points]
    best = int(np.argmin(means)) if means else 0
    if noise is None or not 0 < best < len(points) - 1:
        return math.inf
    (x0, y0, n0), (x1, y1, n1), (x2, y2, n2) = [
        (math.log2(lr), mean, count) for lr, mean, count in points[best - 1 : best + 2]
    ]
    weights = (1 / ((x1 - x0) * (x2 - x0)), -1 / ((x1 - x0) * (x2 - x1)), 1 / ((x2 - x1) * (x2 - x0)))
    curvature = weights[0] * y0 + weights[1] * y1 + weights[2] * y2
    return curvature / (noise * math.sqrt(sum(w**2 / n for w, n in zip(weights, (n0, n1, n2), strict=True))))


def _half_width(optimum: dict) -> float:
    """Half-width of the 95% interval of log2 lr_opt."""
    return normal_z(CI) * optimum["sigma_log2"]


@dataclass
class _Round:
    """What every cell's decision may look at: all cells, their data, the laws and the settings."""

    cells: list[CellSpec]
    data: dict[tuple, _Cell]
    laws: dict[tuple, tuple[dict | None, str]]  # per group: (law or None, why not)
    settings: AdaptiveSettings
    initial: set[tuple]  # keys of the first round's cells


def _steps(
    cells: list[CellSpec],
    data: dict[tuple, _Cell],
    laws: dict[tuple, tuple[dict | None, str]],
    settings: AdaptiveSettings,
) -> dict[tuple, _Step]:
    """What every cell needs next. Untried cells outside the law's reach wait; when nothing else would
    be trained, the reach grows until some waiting cell is predicted."""
    state = _Round(cells, data, laws, settings, _initial_cells(cells, settings.initial_cells))
    reach = settings.extrapolate_steps
    while True:
        steps = {cell.key: _step(state, cell, reach) for cell in cells}
        if any(s.points for s in steps.values()) or not any(s.beyond for s in steps.values()):
            return steps
        reach += 1


def _step(state: _Round, cell: CellSpec, reach: int) -> _Step:
    """One cell's status and next lattice points (module docstring)."""
    own, settings = state.data[cell.key], state.settings
    if own.tried:
        return _refine(own, settings) if own.used else _bracket(own, settings)
    if cell.key in state.initial:
        grid = settings.coarse_grid()
        why = f"coarse grid: {len(grid)} LRs over [{settings.lr_min:g}, {settings.lr_max:g}]"
        return _Step("coarse", why, grid)
    return _predicted(state, cell, reach)


def _predicted(state: _Round, cell: CellSpec, reach: int) -> _Step:
    """An untried cell, once the law reaches it: three consecutive lattice points with the prediction
    inside the middle step's span (of the two such windows, the one with more LRs already trained at a
    smaller budget of the same batch, whose trunks the new runs extend). Never widened by the law's
    interval: a window that misses is extended by one point later, which costs less (module docstring)."""
    law, why = state.laws[cell.group]
    if law is None:
        return _Step("waiting", f"waiting for a law of lr_opt: {why}")
    distance = _distance(state, cell)
    if distance > reach:
        why = f"waiting: {distance} grid steps beyond the cells with an optimum"
        return _Step("waiting", why, beyond=distance)
    value, low, high = predict_law(law, {"batch_size": cell.batch_size, "tokens": cell.tokens})
    lattice = state.settings.lattice_index
    at, trunks = lattice(value), _trunk_points(state, cell)
    centre = max(
        dict.fromkeys([round(at), math.floor(at), math.ceil(at)]),
        key=lambda k: len({k - 1, k, k + 1} & trunks),
    )
    why = f"predicted by the law ({law['formula']}): lr_opt {value:.3g} [{low:.3g}, {high:.3g}]"
    return _Step("predicted", why, [centre - 1, centre, centre + 1])


def _trunk_points(state: _Round, cell: CellSpec) -> set[int]:
    """Lattice points tried in a cell of the same group and batch at a smaller budget."""
    return {
        round(x)
        for other in state.cells
        if other.group == cell.group and other.batch_size == cell.batch_size and other.tokens < cell.tokens
        for x in state.data[other.key].tried
        if abs(x - round(x)) <= ON_LATTICE
    }


def _distance(state: _Round, cell: CellSpec) -> int:
    """Grid steps (of batch or of budget, whichever is more) from ``cell`` to the range of its group's
    cells with an optimum."""
    group = [c for c in state.cells if c.group == cell.group]
    used = [c for c in group if state.data[c.key].used]
    distance = 0
    for axis in ("batch_size", "tokens"):
        values = sorted({getattr(c, axis) for c in group})
        position = values.index(getattr(cell, axis))
        have = [values.index(getattr(c, axis)) for c in used]
        distance = max(distance, min(have) - position, position - max(have))
    return distance


def _refine(own: _Cell, settings: AdaptiveSettings) -> _Step:
    """A cell with an optimum: done when its interval is within the precision, its curve is not flat and
    the LRs tried next to its best one are close enough; else the untried lattice points next to its best
    LR (the parabola's window is the best LR and its two neighbours, so no other point changes it)."""
    optimum = own.optimum
    best = min(own.finite, key=lambda point: point[1])[0]
    others = [*(x for x, _ in own.finite), *own.diverged]
    below = best - max((x for x in others if x < best - ON_LATTICE), default=-math.inf)
    above = min((x for x in others if x > best + ON_LATTICE), default=math.inf) - best
    allowed = max(1.0, 2 * settings.precision_log2 / settings.lr_step_log2) + ON_LATTICE
    width = _half_width(optimum)
    flat = optimum["method"] == "parabola" and own.curvature_z < normal_z(CI)
    precise = width <= settings.precision_log2 + 1e-12 and not flat
    if precise and below <= allowed and above <= allowed:
        return _Step("done", f"lr_opt {optimum['lr_opt']:.3g} ±{width:.2f} log2 ({optimum['method']})")
    if flat:
        why = (
            f"refine: the curve is flat around its best LR (curvature {own.curvature_z:.2g} standard errors)"
        )
    elif precise:
        why = f"refine: the LRs next to the best one are {below:.3g} and {above:.3g} lattice steps away"
    else:
        why = f"refine: interval ±{width:.2f} > {settings.precision_log2:g} log2 ({optimum['method']})"
    points = _untried([math.ceil(best - 1 - ON_LATTICE), math.floor(best + 1 + ON_LATTICE)], own)
    if not points:
        return _Step("stuck", why + "; the lattice points next to the best LR are tried")
    return _Step("refining", why, points)


def _bracket(own: _Cell, settings: AdaptiveSettings) -> _Step:
    """A cell without an optimum: beyond the edge where its best LR is, or below its divergences."""
    spacing = _coarse_spacing(settings)
    reason = own.optimum["reason"] if own.optimum is not None else "every run failed"
    if not own.finite:
        if not own.diverged:
            return _Step("stuck", f"no usable run ({reason})")
        return _extend(own, min(own.diverged), -spacing, f"extend below: every LR tried diverged ({reason})")
    xs = [x for x, _ in own.finite]
    best = min(own.finite, key=lambda p: p[1])[0]
    if best == xs[0]:
        step = (xs[1] - xs[0]) if len(xs) > 1 else spacing
        return _extend(own, xs[0], -max(1, round(step)), f"extend below: {reason}")
    step = (xs[-1] - xs[-2]) if len(xs) > 1 else spacing
    above = _extend(own, xs[-1], max(1, round(step)), f"extend above: {reason}")
    if above.points or len(xs) >= 3:
        return above
    return _extend(own, xs[0], -spacing, f"extend below: {reason}; a divergence sits just above")


def _extend(own: _Cell, edge: float, step: int, why: str) -> _Step:
    """The lattice point ``step`` beyond ``edge`` (going up: the step halves until the point falls below
    the lowest divergence)."""
    status = (
        "bracketing" if own.optimum is None or own.optimum["reason"].startswith("too_few") else "extending"
    )
    while True:
        point = math.floor(edge + step + ON_LATTICE) if step < 0 else math.ceil(edge + step - ON_LATTICE)
        points = _untried([point], own)
        if points or abs(step) == 1:
            break
        step //= 2
    return _Step(status if points else "stuck", why if points else why + "; nothing left to try", points)


def _untried(points: list[int], own: _Cell) -> list[int]:
    """The lattice points not tried in the cell and below its lowest divergence (higher LRs diverge too)."""
    ceiling = min(own.diverged, default=math.inf) - ON_LATTICE
    return sorted({k for k in points if k < ceiling and all(abs(k - x) > ON_LATTICE for x in own.tried)})


def _coarse_spacing(settings: AdaptiveSettings) -> int:
    """The coarse grid's mean spacing in lattice steps: the step of an extension with nothing to go by."""
    grid = settings.coarse_grid()
    return max(1, round((grid[-1] - grid[0]) / (len(grid) - 1)))


def _initial_cells(cells: list[CellSpec], kind: str) -> set[tuple]:
    """The cells the first round covers with the coarse grid, per group: every cell (all); every batch
    at the smallest budget (cheapest); the smallest and largest batch there (corners). With one batch
    size in a group, the two smallest budgets, so that a first law can be fitted."""
    if kind == "all":
        return {c.key for c in cells}
    chosen = set()
    for members in _groups(cells).values():
        budgets = sorted({c.tokens for c in members})
        batches = sorted({c.batch_size for c in members})
        levels = budgets[:1] if len(batches) > 1 else budgets[:2]
        keep = batches if kind == "cheapest" else [batches[0], batches[-1]]
        chosen |= {c.key for c in members if c.tokens in levels and c.batch_size in keep}
    return chosen


def _groups(cells: list[CellSpec]) -> dict[tuple, list[CellSpec]]:
    """The cells of each group, in the cells' order."""
    groups: dict[tuple, list[CellSpec]] = {}
    for cell in cells:
        groups.setdefault(cell.group, []).append(cell)
    return groups


# --- the law ---------------------------------------------------------------------------------------------


def _group_law(members: list[CellSpec], data: dict[tuple, _Cell]) -> tuple[dict | None, str]:
    """The law of lr_opt over the group's cells with an optimum, the richest form they determine (a free
    exponent needs two values of its variable, and the fit one cell more than coefficients): batch and
    budget free; the batch exponent fixed at 1 (the Power paper's form) and the budget free; the batch
    free without the budget; the batch at 1 alone. Returns (the law or None, why not)."""
    used = pd.DataFrame(
        [
            {
                "cell": c.label,
                "batch_size": c.batch_size,
                "tokens": c.tokens,
                "lr_opt": data[c.key].optimum["lr_opt"],
            }
            for c in members
            if data[c.key].used
        ],
        columns=["cell", "batch_size", "tokens", "lr_opt"],
    )
    why = f"{len(used)} cell(s) with an optimum; a law needs 2"
    for free in LAW_FREE:
        if len(used) < len(free) + 2 or any(used[v].nunique() < 2 for v in free):
            continue
        terms = [*free] if "batch_size" in free else ["batch_size^1", *free]
        try:
            return fit_law(used, parse_law("lr_opt ~ " + " + ".join(terms)), n_boot=LAW_BOOTSTRAP), ""
        except FitError as err:
            why = str(err)
    return None, why


# --- reports ---------------------------------------------------------------------------------------------


def _cell_report(cell: CellSpec, own: _Cell, step: _Step, settings: AdaptiveSettings) -> dict:
    """One row of ``RoundPlan.cells``."""
    optimum = own.optimum if own.used else None
    return {"key": cell.key} | json_ready(
        {
            "label": cell.label,
            "status": step.status,
            "reason": step.reason,
            "lr_opt": optimum["lr_opt"] if optimum else math.nan,
            "lr_low": optimum["lr_low"] if optimum else math.nan,
            "lr_high": optimum["lr_high"] if optimum else math.nan,
            "half_width_log2": _half_width(optimum) if optimum else math.nan,
            "lrs_tried": len(own.tried),
            "lrs_proposed": [settings.lattice_lr(k) for k in step.points],
            "deferred": False,  # True when the budget left this cell's runs out of the round
        }
    )


def _law_report(group: tuple, law: dict | None, why: str) -> dict:
    """One row of ``RoundPlan.laws``: the law's formula and constants, or why there is none."""
    if law is None:
        return json_ready({"group": group, "formula": None, "why": why})
    return json_ready(
        {
            "group": group,
            "formula": law["formula"],
            "a": law["a"]["value"],
            "exponents": {v: e["value"] for v, e in law["exponents"].items()},
            "n_points": law["n_points"],
            "r2": law["r2"],
        }
    )


def _afford(
    proposals: list[Proposal],
    cells: list[CellSpec],
    settings: AdaptiveSettings,
    spent_flops: float,
    cost: Callable[[CellSpec, float], float],
) -> tuple[list[Proposal], list[float], set]:
    """The proposals a round can afford: with a budget, whole cells, cheapest first, while the sum of
    their costs fits in what is left; returns them, their costs and the keys of the deferred cells."""
    by_key = {c.key: c for c in cells}
    costs = [cost(by_key[p.cell], p.lr) for p in proposals]
    if not settings.budget_flops:
        return proposals, costs, set()
    per_cell: dict[tuple, float] = {}
    for p, c in zip(proposals, costs, strict=True):
        per_cell[p.cell] = per_cell.get(p.cell, 0.0) + c
    left, kept = settings.budget_flops - spent_flops, set()
    for key in sorted(per_cell, key=lambda k: per_cell[k]):  # stable: ties keep the cells' order
        if per_cell[key] <= left:
            kept.add(key)
            left -= per_cell[key]
    chosen = [(p, c) for p, c in zip(proposals, costs, strict=True) if p.cell in kept]
    return [p for p, _ in chosen], [c for _, c in chosen], set(per_cell) - kept


def _summary(
    proposals: list[Proposal], steps: dict[tuple, _Step], cells: list[CellSpec], deferred: set
) -> str:
    """A round in one line: its runs by status and how many cells are done."""
    counts: dict[str, int] = {}
    for p in proposals:
        counts[steps[p.cell].status] = counts.get(steps[p.cell].status, 0) + 1
    done = sum(steps[c.key].status == "done" for c in cells)
    parts = ", ".join(f"{n} {status}" for status, n in counts.items())
    later = f"; {len(deferred)} cell(s) deferred by the budget" if deferred else ""
    return f"{len(proposals)} cell LRs ({parts}); {done} of {len(cells)} cells meet the precision{later}"


def _not_converged(unconverged: list[CellSpec], steps: dict[tuple, _Step]) -> str:
    """The cells that are not done, each with its status and why."""
    if not unconverged:
        return ""
    listed = "; ".join(f"{c.label}: {steps[c.key].status}, {steps[c.key].reason}" for c in unconverged)
    return f"{len(unconverged)} cell(s) did not converge: {listed}"
