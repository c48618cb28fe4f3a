"""The muP coord check: mup passes and sp fails on the same widths; the verdict's bounds; the plot."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from powerlaw_cli.coord_check import coord_check, growth_per_doubling, verdict
from powerlaw_cli.plots import plot_coord_check

WIDTHS = [64, 128, 256, 512]  # the CLI's default adds 1024; 64..512 keeps the test fast


@pytest.fixture(scope="module")
def checks() -> dict[str, pd.DataFrame]:
    return {p: coord_check(WIDTHS, p) for p in ("mup", "sp")}


def test_table_has_every_width_step_and_module(checks: dict[str, pd.DataFrame]) -> None:
    df = checks["mup"]
    modules = [
        "embedding",
        "block0.attn",
        "block0.mlp",
        "block0",
        "block1.attn",
        "block1.mlp",
        "block1",
        "final_norm",
        "logits",
    ]
    assert list(df["module"].unique()) == modules
    assert sorted(df["width"].unique()) == WIDTHS
    assert sorted(df["step"].unique()) == [0, 1, 2, 3]
    assert len(df) == len(WIDTHS) * 4 * len(modules)
    assert (df["l1"] > 0).all()
    # mup and sp start from the same model at the base (smallest) width.
    base = {p: d[d["width"] == 64].reset_index(drop=True) for p, d in checks.items()}
    assert base["mup"]["l1"].equals(base["sp"]["l1"])


def test_mup_passes_and_sp_fails_on_the_same_widths(checks: dict[str, pd.DataFrame]) -> None:
    mup, sp = verdict(checks["mup"]), verdict(checks["sp"])
    assert mup.passed, mup.summary()
    assert mup.table["growth"].max() < 1.1  # calibrated margin: mup's worst growth was 1.03 over seeds 0..4
    assert not sp.passed, sp.summary()
    assert {"block0.attn", "block0.mlp", "block1.attn", "block1.mlp", "block1"} <= set(sp.failed)
    assert sp.worst_growth > 3.0  # sp grows 5x or more per doubling: far from the 1.2 bound
    assert {"embedding", "final_norm"}.isdisjoint(sp.failed)  # vector-like and normalised outputs stay flat


def test_mup_passes_with_learned_positions_and_other_seeds() -> None:
    df = coord_check([64, 128, 256], "mup", seed=1, n_seeds=2, positions="learned")
    assert sorted(df["seed"].unique()) == [1, 2]
    assert verdict(df).passed


def test_mup_passes_with_width_independent_multipliers_away_from_1(checks) -> None:
    """muP's rule for the embedding and output multipliers is "the same constant at every width"."""
    df = coord_check(WIDTHS[:3], "mup", embedding_multiplier=4.0, output_multiplier=0.25)
    assert verdict(df).passed, verdict(df).summary()
    at_init = df[df["step"] == 0].set_index(["width", "module"])["l1"]
    default = checks["mup"].query("step == 0 and width in @WIDTHS[:3]").set_index(["width", "module"])["l1"]
    # The multipliers act: the embedding's x4 enters block 0, and the logits are x0.25 at init (up to the
    # final norm's input, which the larger embedding changes slightly).
    for width in WIDTHS[:3]:
        assert at_init[(width, "embedding")] == pytest.approx(default[(width, "embedding")])
        assert at_init[(width, "block0")] > 2 * default[(width, "block0")]
        assert at_init[(width, "logits")] == pytest.approx(0.25 * default[(width, "logits")], rel=0.02)


def synthetic(growth: dict[str, float], widths=(64, 128, 256, 512)) -> pd.DataFrame:
    """l1 = c * growth ** log2(width / 64), at one step."""
    return pd.DataFrame(
        [
            {"width": w, "step": 3, "module": m, "l1": 0.5 * g ** math.log2(w / 64)}
            for m, g in growth.items()
            for w in widths
        ]
    )


def test_growth_per_doubling_reads_the_slope_of_a_power_law() -> None:
    table = growth_per_doubling(synthetic({"a": 1.0, "b": 2.0, "c": 0.75})).set_index("module")["growth"]
    assert table.to_dict() == pytest.approx({"a": 1.0, "b": 2.0, "c": 0.75})


def test_verdict_fails_growth_above_tolerance_and_shrinkage_faster_than_one_over_sqrt_width() -> None:
    ok = verdict(synthetic({"flat": 1.0, "mild": 1.15, "init_logits": 2**-0.5}))
    assert ok.passed and ok.failed == []
    bad = verdict(synthetic({"flat": 1.0, "grows": 1.3, "vanishes": 0.5}))
    assert not bad.passed and bad.failed == ["grows", "vanishes"]
    assert bad.worst_module == "vanishes" and bad.worst_growth == pytest.approx(0.5)
    assert bad.min_growth == pytest.approx(1 / (math.sqrt(2) * 1.2))
    assert verdict(synthetic({"grows": 1.3}), tolerance=1.4).passed
    # Only the last step counts: an early excursion (here at step 0) does not fail the check.
    early = pd.concat([synthetic({"m": 3.0}).assign(step=0), synthetic({"m": 1.0})])
    assert verdict(early).passed


def test_result_serialises_for_the_cli(checks: dict[str, pd.DataFrame]) -> None:
    result = verdict(checks["sp"])
    data = result.to_dict()
    assert data["passed"] is False and data["failed"] == result.failed
    assert [r["module"] for r in data["modules"]] == list(result.table["module"])
    assert "FAIL" in result.summary() and result.worst_module in result.summary()


def test_plot_coord_check_writes_a_png(checks: dict[str, pd.DataFrame], tmp_path) -> None:
    path = plot_coord_check(pd.concat(checks.values()), tmp_path / "a dir" / "coord check.png")
    assert path.exists() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
