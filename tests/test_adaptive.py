"""The adaptive-sweep policy (``powerlaw_cli.adaptive``), driven by a stand-in trainer.

Only the loop's choices are under test, so runs are not trained: the stand-in's final loss is a known
function of LR, batch and budget, an asymmetric bowl in log2 LR (rising faster above the optimum) around
lr_opt = a * B^alpha * T^gamma with the demo's fitted constants, runs more than 2.5 doublings above it
diverge, and each run has its own seeded Gaussian noise (the same whenever and in whatever order it is
trained). Its cost is the tokens a run adds to its WSD trunk (20% decay): a new budget at a (batch, LR)
already trained to a smaller budget costs only the trunk's extension and the decay branch, as in the
lead's cost model.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from powerlaw_cli.adaptive import (
    CellSpec,
    Observation,
    RoundPlan,
    completed_rounds,
    plan_round,
    run_rounds,
)
from powerlaw_cli.config import ConfigError, section_from_dict
from powerlaw_cli.sweep_settings import AdaptiveSettings

DECAY = 0.2
DEMO = {"batches": (8, 16, 32), "tokens": (131072, 262144, 524288)}
LARGE = {"batches": (8, 16, 32, 64, 128), "tokens": (65536, 131072, 262144, 524288, 1048576)}
DEMO_RANGE = {"lr_min": 0.002, "lr_max": 0.064}  # the demo's fixed grid: 6 LRs, x2


def grid(batches, tokens) -> list[CellSpec]:
    return [CellSpec((("batch_size", b), ("tokens", t)), b, t) for t in tokens for b in batches]


class StandIn:
    """A sweep's records and spent FLOPs (tokens) under a known loss (module docstring)."""

    def __init__(self, cells, *, seeds=2, noise=0.004, curvature=0.02, flat=(), fail=(), group_scale=None):
        self.cells = {c.key: c for c in cells}
        self.group_scale = group_scale or {}  # lr_opt multiplied by this in a group (default 1)
        self.seeds, self.noise, self.curvature = seeds, noise, curvature
        self.flat, self.fail = set(flat), set(fail)  # cells with a flat curve; (cell, lr) runs that fail
        self.records: dict[tuple, Observation] = {}
        self.trunks: dict[tuple, float] = {}  # (batch, lr, seed) -> stable tokens trained
        self.trained: list[tuple] = []
        self.spent = 0.0

    def lr_opt(self, cell: CellSpec) -> float:
        return self.group_scale.get(cell.group, 1.0) * 0.633 * cell.batch_size**0.9 * cell.tokens**-0.5

    def loss(self, cell: CellSpec, lr: float, seed: int) -> float:
        dx = math.log2(lr / self.lr_opt(cell))
        if dx > 2.5:
            return math.nan
        curvature = 0.0 if cell.key in self.flat else self.curvature
        bowl = 2 * (math.exp(0.5 * dx) - 1 - 0.5 * dx) / 0.5**2
        salt = [len(cell.group[0][1])] if cell.group else []  # the groups' runs get different noise
        rng = np.random.default_rng([int(cell.batch_size), int(cell.tokens), round(lr * 1e9), seed, *salt])
        return 3 - 0.1 * math.log10(cell.tokens) + curvature * bowl + rng.normal(0, self.noise)

    def run_cost(self, cell: CellSpec, lr: float, seed: int) -> float:
        stable = self.trunks.get((cell.batch_size, lr, seed), 0.0)
        return max(0.0, (1 - DECAY) * cell.tokens - stable) + DECAY * cell.tokens

    def cost(self, cell: CellSpec, lr: float) -> float:
        """What training (cell, lr) at every seed would add now."""
        return sum(self.run_cost(cell, lr, seed) for seed in range(self.seeds))

    def train(self, plan: RoundPlan) -> None:
        for p in sorted(plan.proposals, key=lambda p: self.cells[p.cell].tokens):  # trunks grow in order
            cell = self.cells[p.cell]
            for seed in range(self.seeds):
                self.spent += self.run_cost(cell, p.lr, seed)
                trunk = (cell.batch_size, p.lr, seed)
                self.trunks[trunk] = max(self.trunks.get(trunk, 0.0), (1 - DECAY) * cell.tokens)
                self.trained.append((p.cell, p.lr, seed))
                loss = self.loss(cell, p.lr, seed)
                status = "failed" if (p.cell, p.lr) in self.fail else "diverged" if math.isnan(loss) else "ok"
                self.records[(p.cell, p.lr, seed)] = Observation(p.cell, p.lr, seed, loss, status)

    def observe(self) -> tuple[list[Observation], float]:
        return list(self.records.values()), self.spent

    def run(self, settings: AdaptiveSettings) -> list[RoundPlan]:
        return run_rounds(list(self.cells.values()), settings, self.observe, self.train, self.cost)

    def full_grid(self, lrs: int) -> tuple[float, float]:
        """FLOPs of a fixed grid of ``lrs`` LRs at every cell: every run alone, and with shared trunks."""
        cells = list(self.cells.values())
        alone = lrs * self.seeds * sum(c.tokens for c in cells)
        trunks = 0.0
        for batch in {c.batch_size for c in cells}:
            budgets = [c.tokens for c in cells if c.batch_size == batch]
            trunks += lrs * self.seeds * ((1 - DECAY) * max(budgets) + DECAY * sum(budgets))
        return alone, trunks


def final_cells(sim: StandIn, plan: RoundPlan) -> list[tuple[CellSpec, dict, float]]:
    """(cell, its row in the plan, log2 error of its lr_opt against the truth) for every cell."""
    return [
        (sim.cells[row["key"]], row, math.log2(row["lr_opt"] / sim.lr_opt(sim.cells[row["key"]])))
        for row in plan.cells
    ]


# --- the whole loop ----------------------------------------------------------------------------------------


def test_demo_grid_meets_the_precision_in_every_cell_for_less_than_the_full_grid():
    sim = StandIn(grid(**DEMO))
    settings = AdaptiveSettings(**DEMO_RANGE)
    plans = sim.run(settings)
    last = plans[-1]
    assert last.done and last.why.startswith("every cell meets the precision"), last.why
    assert [p.round for p in plans] == list(range(len(plans))) and len(plans) - 1 == 4  # rounds trained
    rows = final_cells(sim, last)
    assert all(row["status"] == "done" for _, row, _ in rows)
    assert all(row["half_width_log2"] <= settings.precision_log2 for _, row, _ in rows)
    assert max(abs(error) for *_, error in rows) < 0.3  # the real error is within the target everywhere
    # fit_optimum's interval omits the 3-point parabola's bias on a skewed curve (~0.07 octave here), so it
    # covers the truth in ~80% of cells even on a fixed grid; here 7 of 9
    assert sum(row["lr_low"] <= sim.lr_opt(cell) <= row["lr_high"] for cell, row, _ in rows) >= 7
    assert len(sim.trained) == len(set(sim.trained)) == 2 * 37  # 37 (cell, LR) runs at 2 seeds, none twice
    alone, trunks = sim.full_grid(lrs=6)
    # measured 43.8% and 66.7%; a perfect oracle (3 LRs around each true optimum, no exploration) needs
    # 36% and 55% on this grid, so the 30% and 50% are out of reach of any 3-point policy here
    assert sim.spent < 0.45 * alone and sim.spent < 0.68 * trunks
    assert sim.spent == pytest.approx(sum(p.flops for p in plans), rel=0.1)  # the plans' own estimates


def test_large_grid_extends_cells_whose_optimum_is_above_the_range():
    sim = StandIn(grid(**LARGE))
    settings = AdaptiveSettings(lr_min=0.001, lr_max=0.064)
    plans = sim.run(settings)
    assert plans[-1].why.startswith("every cell meets the precision") and len(plans) - 1 == 5
    rows = final_cells(sim, plans[-1])
    above = [(cell, row, error) for cell, row, error in rows if sim.lr_opt(cell) > settings.lr_max * 1.2]
    assert len(above) == 4  # batch 64 and 128 at the smallest budget, 128 at the next two
    for cell, row, error in above:
        tried = [lr for (key, lr, _) in sim.trained if key == cell.key]
        assert max(tried) > settings.lr_max and row["status"] == "done" and abs(error) < 0.5
    assert any(p.reason.startswith("extend above") for plan in plans for p in plan.proposals)
    assert max(abs(error) for *_, error in rows) < 0.3
    assert sum(row["lr_low"] <= sim.lr_opt(cell) <= row["lr_high"] for cell, row, _ in rows) >= 19  # 20 of 25
    assert len(sim.trained) == len(set(sim.trained))
    alone, trunks = sim.full_grid(lrs=7)  # the 7 lattice LRs of [lr_min, lr_max]
    assert (
        sim.spent < 0.31 * alone and sim.spent < 0.51 * trunks
    )  # measured 30.7% and 50.1% (oracle: 28.5, 46.5)


def test_cells_whose_optimum_is_below_the_range_are_extended_downwards():
    sim = StandIn(grid(**DEMO))
    settings = AdaptiveSettings(lr_min=0.016, lr_max=0.256)  # the batch-8 optima (0.006..0.011) lie below
    plans = sim.run(settings)
    assert plans[-1].why.startswith("every cell meets the precision"), plans[-1].why
    for cell, row, error in final_cells(sim, plans[-1]):
        if cell.batch_size == 8:
            assert min(lr for (key, lr, _) in sim.trained if key == cell.key) < settings.lr_min
            assert abs(error) < 0.5 and row["half_width_log2"] <= 0.5
    assert any(p.reason.startswith("extend below") for plan in plans for p in plan.proposals)


@pytest.mark.parametrize("interrupted_after", [1, 2, 3])
def test_a_loop_interrupted_between_rounds_and_resumed_trains_the_same_runs(interrupted_after):
    settings = AdaptiveSettings(**DEMO_RANGE)
    whole = StandIn(grid(**DEMO))
    uninterrupted = whole.run(settings)

    class Interrupted(Exception):
        pass

    sim = StandIn(grid(**DEMO))

    def train_then_stop(plan: RoundPlan) -> None:
        sim.train(plan)
        if plan.round + 1 == interrupted_after:
            raise Interrupted

    cells = list(sim.cells.values())
    with pytest.raises(Interrupted):
        run_rounds(cells, settings, sim.observe, train_then_stop, sim.cost)
    assert completed_rounds(cells, sim.observe()[0], settings) == interrupted_after
    counted = run_rounds(
        cells, settings, sim.observe, lambda plan: None, sim.cost, start_round=interrupted_after
    )
    assert counted[0].to_dict() == uninterrupted[interrupted_after].to_dict()  # the caller's own count
    resumed = sim.run(settings)  # a fresh loop: it only sees the records
    assert resumed[0].round == interrupted_after
    assert [p.to_dict() for p in resumed] == [p.to_dict() for p in uninterrupted[interrupted_after:]]
    assert sorted(sim.trained) == sorted(whole.trained) and sim.spent == whole.spent


def test_budget_stops_the_loop_with_a_reason_and_is_never_exceeded():
    unlimited = StandIn(grid(**DEMO))
    unlimited.run(AdaptiveSettings(**DEMO_RANGE))
    budget = 0.6 * unlimited.spent
    sim = StandIn(grid(**DEMO))
    plans = sim.run(AdaptiveSettings(**DEMO_RANGE, budget_flops=budget))
    assert plans[-1].done and plans[-1].why.startswith(("budget spent", "budget:")), plans[-1].why
    assert "did not converge" in plans[-1].why
    assert sim.spent <= budget and len(sim.trained) < len(unlimited.trained)
    assert any(row["deferred"] for row in plans[-1].cells)  # the cells the budget could not pay for


def test_a_flat_cell_is_reported_as_not_converged():
    cells = grid(**DEMO)
    flat = cells[4].key  # batch 16, 262144 tokens: the loss does not depend on the LR
    sim = StandIn(cells, flat=[flat])
    plans = sim.run(AdaptiveSettings(**DEMO_RANGE))
    last = plans[-1]
    assert last.done and "1 cell(s) did not converge: batch 16, tokens 262144" in last.why, last.why
    status = {row["label"]: row["status"] for row in last.cells}
    assert status.pop("batch 16, tokens 262144") in ("stuck", "extending", "refining", "bracketing")
    assert set(status.values()) == {"done"}


def test_each_group_has_its_own_law():
    cells = [
        CellSpec(c.key + (("width", width),), c.batch_size, c.tokens, (("width", width),))
        for width in ("64", "256")
        for c in grid(**DEMO)
    ]
    sim = StandIn(cells, group_scale={(("width", "256"),): 4.0})  # lr_opt 4x higher at width 256
    plans = sim.run(AdaptiveSettings(lr_min=0.002, lr_max=0.128))
    assert plans[-1].why.startswith("every cell meets the precision"), plans[-1].why
    laws = {law["group"][0][1]: law for law in plans[-1].to_dict()["laws"]}
    assert set(laws) == {"64", "256"} and laws["64"]["n_points"] == laws["256"]["n_points"] == 9
    at = {"batch_size": 16, "tokens": 262144}
    value = {
        w: law["a"] * math.prod(at[v] ** e for v, e in law["exponents"].items()) for w, law in laws.items()
    }
    assert value["256"] / value["64"] == pytest.approx(4, rel=0.2)
    assert max(abs(error) for *_, error in final_cells(sim, plans[-1])) < 0.3


def test_plans_are_json_ready():
    sim = StandIn(grid(**DEMO), flat=[grid(**DEMO)[0].key])
    for plan in sim.run(AdaptiveSettings(**DEMO_RANGE, budget_flops=3e6)):
        text = json.dumps(plan.to_dict(), allow_nan=False)
        assert json.loads(text)["round"] == plan.round
        json.dumps(plan.cells, allow_nan=False)
        assert all(p.reason and "\n" not in p.reason for p in plan.proposals)


# --- single rounds -----------------------------------------------------------------------------------------

SETTINGS = AdaptiveSettings(**DEMO_RANGE)
ONE = [CellSpec("c", 16, 262144)]


def observed(points: dict[int, float], cell="c", status=None) -> list[Observation]:
    """Observations at lattice points {k: loss} (NaN: diverged; ``status`` overrides)."""
    return [
        Observation(
            cell, SETTINGS.lattice_lr(k), 0, loss, status or ("diverged" if math.isnan(loss) else "ok")
        )
        for k, loss in points.items()
    ]


def proposed(observations, cells=ONE, settings=SETTINGS) -> tuple[list[int], RoundPlan]:
    plan = plan_round(cells, observations, settings, 1, 0.0, lambda cell, lr: 1.0)
    return [round(settings.lattice_index(p.lr)) for p in plan.proposals], plan


def test_round_zero_is_a_coarse_grid_on_the_lattice_of_the_fixed_grid():
    plan = plan_round(grid(**DEMO), [], SETTINGS, 0, 0.0, lambda cell, lr: 1.0)
    lrs = sorted({p.lr for p in plan.proposals})
    assert lrs == [0.002, 0.004, 0.008, 0.032, 0.064]  # 5 of the demo's 6 LRs, spelled as the sweep file's
    assert {p.cell for p in plan.proposals} == {c.key for c in grid(**DEMO) if c.tokens == 131072}
    statuses = {row["label"]: row["status"] for row in plan.cells}
    assert statuses["batch 8, tokens 131072"] == "coarse" and statuses["batch 8, tokens 524288"] == "waiting"
    corners = replace_settings(initial_cells="corners")
    plan = plan_round(grid(**DEMO), [], corners, 0, 0.0, lambda cell, lr: 1.0)
    assert {dict(p.cell)["batch_size"] for p in plan.proposals} == {8, 32}
    assert SETTINGS.lattice_index(SETTINGS.lattice_lr(7)) == pytest.approx(7)


def replace_settings(**changes) -> AdaptiveSettings:
    return AdaptiveSettings(**(DEMO_RANGE | changes))


def test_an_optimum_on_an_edge_extends_past_it_and_never_at_or_above_a_divergence():
    bowl = {k: 3 + 0.02 * (k - 6) ** 2 for k in range(7)}
    assert proposed(observed({k: bowl[k] for k in (0, 2, 4)}))[0] == [6]  # up, at the grid's spacing
    assert proposed(observed({k: bowl[k] for k in (0, 2, 4)} | {8: math.nan}))[0] == [6]  # below it
    assert proposed(observed({k: bowl[k] for k in (0, 2, 4)} | {6: math.nan}))[0] == [3, 5]  # bracketed
    low = {k: 3 + 0.02 * k**2 for k in range(2, 6)}
    points, plan = proposed(observed(low))
    assert points == [1] and plan.proposals[0].reason.startswith("extend below: edge_low")
    assert plan.cells[0]["status"] == "extending"
    assert proposed(observed({3: math.nan, 5: math.nan}))[0] == [2]  # all diverged: down (coarse spacing 1)
    assert proposed(observed({2: 3.01, 3: 3.0, 4: math.nan}))[0] == [1]  # too few points below a divergence


def test_refinement_fills_the_lattice_next_to_the_best_lr_and_stops_when_precise():
    bowl = {k: 3 + 0.02 * (k - 2.2) ** 2 for k in range(-2, 8)}
    points, plan = proposed(observed({k: bowl[k] for k in (0, 2, 4, 6)}))
    assert points == [1, 3] and plan.cells[0]["status"] == "refining"
    points, plan = proposed(observed({k: bowl[k] for k in (0, 1, 2, 3, 4, 6)}))
    assert points == [] and plan.done and plan.cells[0]["status"] == "done"
    assert plan.why.startswith("every cell meets the precision")


def test_failed_runs_count_as_tried_and_are_never_proposed_again():
    bowl = {k: 3 + 0.02 * (k - 2.2) ** 2 for k in range(8)}
    observations = observed({k: bowl[k] for k in (0, 2, 4, 6)}) + observed(
        {1: math.nan, 3: math.nan}, status="failed"
    )
    points, plan = proposed(observations)
    assert points == [] and plan.done and plan.cells[0]["status"] == "stuck"
    assert (
        "nothing left to try" in plan.why and "the lattice points next to the best LR are tried" in plan.why
    )


def test_untried_cells_are_predicted_by_the_law_one_budget_at_a_time():
    sim = StandIn(grid(**DEMO))
    cells = list(sim.cells.values())
    smallest = [c for c in cells if c.tokens == 131072]
    sim.train(RoundPlan(0, [p for c in smallest for p in coarse(c)], False, "", []))
    plan = plan_round(cells, sim.observe()[0], SETTINGS, 1, sim.spent, sim.cost)
    rows = {row["label"]: row for row in plan.cells}
    for cell in cells:
        row = rows[cell.label]
        if (
            cell.tokens == 262144
        ):  # one budget step past the cells with an optimum: predicted around the truth
            assert row["status"] == "predicted" and row["reason"].startswith("predicted by the law")
            assert min(row["lrs_proposed"]) < sim.lr_opt(cell) < max(row["lrs_proposed"])
        if cell.tokens == 524288:
            assert row["status"] == "waiting" and not row["lrs_proposed"]
    assert plan.laws[0]["formula"] == "lr_opt = a * batch_size^e_batch_size"
    assert plan.laws[0]["exponents"]["batch_size"] == pytest.approx(0.9, abs=0.3)


def coarse(cell: CellSpec):
    plan = plan_round([cell], [], SETTINGS, 0, 0.0, lambda c, lr: 0.0)
    return plan.proposals


def test_plans_are_deterministic():
    sim = StandIn(grid(**DEMO))
    sim.run(AdaptiveSettings(**DEMO_RANGE, max_rounds=2))
    observations = sim.observe()[0]
    first = plan_round(list(sim.cells.values()), observations, SETTINGS, 2, sim.spent, sim.cost)
    again = plan_round(list(sim.cells.values()), observations[::-1], SETTINGS, 2, sim.spent, sim.cost)
    assert first.to_dict() == again.to_dict()


# --- settings ----------------------------------------------------------------------------------------------


def test_settings_parse_from_a_sweep_file_section_with_errors_naming_the_setting():
    settings = section_from_dict(
        AdaptiveSettings, {"lr_min": 1e-3, "lr_max": 0.1, "initial_cells": "corners"}, "s.toml: adaptive"
    )
    assert settings.initial_cells == "corners" and settings.precision_log2 == 0.5
    bad = [
        ({"lr_max": 0.1}, "s.toml: adaptive.lr_min: required"),
        ({"lr_min": 0.1, "lr_max": 0.01}, "s.toml: adaptive.lr_max: must be > lr_min"),
        ({"lr_min": 0.01, "lr_max": 0.04}, "s.toml: adaptive.initial_lrs: 5 LRs need"),
        ({"lr_min": 1e-3, "lr_max": 0.1, "initial_cells": "some"}, "s.toml: adaptive.initial_cells: 'some'"),
        (
            {"lr_min": 1e-3, "lr_max": 0.1, "precision_log2": 0},
            "s.toml: adaptive.precision_log2: must be > 0",
        ),
        ({"lr_min": 1e-3, "lr_max": 0.1, "rounds": 3}, "s.toml: adaptive.rounds: unknown setting"),
    ]
    for raw, message in bad:
        with pytest.raises(ConfigError, match=f"^{message}"):
            section_from_dict(AdaptiveSettings, raw, "s.toml: adaptive")


def test_a_predicted_window_is_three_points_however_wide_the_laws_interval():
    cells = grid(**DEMO)
    optima = {8: 1.0, 16: 4.0, 32: 2.5}  # lattice positions that batch size explains badly: a wide interval
    observations = [
        obs
        for cell in cells
        if cell.tokens == 131072
        for obs in observed({k: 3 + 0.02 * (k - optima[cell.batch_size]) ** 2 for k in range(6)}, cell.key)
    ]
    plan = plan_round(cells, observations, SETTINGS, 1, 0.0, lambda cell, lr: 1.0)
    predicted = [row for row in plan.cells if row["status"] == "predicted"]
    assert len(predicted) == 3
    for row in predicted:
        window = [SETTINGS.lattice_index(lr) for lr in row["lrs_proposed"]]
        assert window == pytest.approx([window[0], window[0] + 1, window[0] + 2])
        low, high = (float(v) for v in row["reason"].split("[")[1].rstrip("]").split(", "))
        assert SETTINGS.lattice_index(low) < window[0] - 1 or SETTINGS.lattice_index(high) > window[-1] + 1
