"""Sweep files: grid expansion, stable run ids, and one-line errors naming the file and setting."""

from __future__ import annotations

from pathlib import Path

import pytest

from powerlaw_cli.config import ConfigError, RunConfig
from powerlaw_cli.spec import load_sweep

BASE = """
[sweep]
name = "s"
[model]
width = 32
n_heads = 2
base_width = 32
[schedule]
name = "wsd"
"""


def write(tmp_path: Path, text: str, name: str = "s.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_product_of_axes_with_ranges_and_zipped_settings(tmp_path):
    sweep = load_sweep(
        write(
            tmp_path,
            BASE
            + """
[grid]
optimizer.lr = { log = [1e-4, 1e-2], num = 3 }
training.batch_size = { pow2 = [8, 32] }
training.seed = [0, 1]
[[grid.zip]]
model.width = [32, 64]
model.n_heads = [2, 4]
""",
        )
    )
    assert len(sweep.runs) == 3 * 3 * 2 * 2
    assert sweep.axes["optimizer.lr"] == [1e-4, 1e-3, 1e-2]
    assert sweep.axes["training.batch_size"] == [8, 16, 32]
    pairs = {(r.model.width, r.model.n_heads) for r in sweep.runs}
    assert pairs == {(32, 2), (64, 4)}  # zipped, not crossed
    assert len({r.run_id for r in sweep.runs}) == len(sweep.runs)


def test_geometric_range_is_the_papers_x2_grid(tmp_path):
    sweep = load_sweep(
        write(tmp_path, BASE + "[grid]\noptimizer.lr = { start = 2e-4, ratio = 2, num = 8 }\n")
    )
    assert sweep.axes["optimizer.lr"] == [0.0002, 0.0004, 0.0008, 0.0016, 0.0032, 0.0064, 0.0128, 0.0256]


def test_run_ids_do_not_depend_on_file_order_spelling_or_sweep(tmp_path):
    a = load_sweep(
        write(tmp_path, BASE + "[grid]\noptimizer.lr = [0.001, 0.01]\ntraining.seed = [0, 1]\n", "a.toml")
    )
    b_text = """
[grid.training]
seed = [1, 0]
[grid.optimizer]
lr = [1e-2, 1e-3]
[schedule]
name = "wsd"
[model]
base_width = 32
n_heads = 2
width = 32
[sweep]
name = "other"
"""
    b = load_sweep(write(tmp_path, b_text, "b.toml"))
    assert {r.run_id for r in a.runs} == {r.run_id for r in b.runs}
    assert a.sweep_hash != b.sweep_hash  # a different sweep (name) with the same runs
    one = RunConfig.from_dict(
        {"model": {"width": 32, "n_heads": 2, "base_width": 32}, "optimizer": {"lr": 0.01}}
    )
    assert one.run_id in {r.run_id for r in a.runs}  # the same run outside any sweep has the same id


def test_run_id_changes_with_results_settings_only(tmp_path):
    run = RunConfig()
    assert run.replace({"optimizer.lr": 1e-3}).run_id != run.run_id
    assert run.replace({"training.seed": 1}).run_id != run.run_id
    for key, value in {
        "training.micro_batch_size": 4,
        "training.eval_every_tokens": 1024,
        "training.device": "cpu",
        "training.checkpoint_seconds": 5.0,
    }.items():
        assert run.replace({key: value}).run_id == run.run_id, key


# Run ids computed by plsweep before optimizer.weight_decay_rule existed (commit 7f33f73), pinned.
IDS_BEFORE_WEIGHT_DECAY_RULE = {
    "default": ("c9cd185c67ed21a4", {}),
    "mup width 256": (
        "cbca29b3e23a4a24",
        {
            "model": {"width": 256, "base_width": 32, "parametrization": "mup"},
            "optimizer": {"lr": 0.01, "weight_decay": 0.1},
        },
    ),
    "sp width 256": (
        "a2dccc204c552010",
        {"model": {"width": 256, "base_width": 32, "parametrization": "sp"}},
    ),
}


@pytest.mark.parametrize("name", IDS_BEFORE_WEIGHT_DECAY_RULE)
def test_a_setting_at_its_legacy_value_keeps_the_run_ids_from_before_it_existed(name):
    old_id, data = IDS_BEFORE_WEIGHT_DECAY_RULE[name]
    coupled = RunConfig.from_dict(
        {**data, "optimizer": {**data.get("optimizer", {}), "weight_decay_rule": "coupled"}}
    )
    independent = coupled.replace({"optimizer.weight_decay_rule": "independent"})
    assert coupled.run_id == old_id
    assert "weight_decay_rule" not in coupled.identity()["optimizer"]
    assert independent.run_id != old_id
    assert independent.identity()["optimizer"]["weight_decay_rule"] == "independent"


@pytest.mark.parametrize("name", IDS_BEFORE_WEIGHT_DECAY_RULE)
def test_the_mup_multipliers_at_1_keep_old_run_ids_and_enter_the_id_elsewhere(name):
    old_id, data = IDS_BEFORE_WEIGHT_DECAY_RULE[name]
    model = {**data.get("model", {}), "embedding_multiplier": 1.0, "output_multiplier": 1}
    run = RunConfig.from_dict({**data, "model": model})
    assert run.run_id == old_id
    for key in ("model.embedding_multiplier", "model.output_multiplier"):
        other = run.replace({key: 2.0})
        assert other.run_id != old_id and other.identity()["model"][key.split(".")[1]] == 2.0


def test_init_std_0_is_the_base_width_rule_with_its_own_run_id():
    from powerlaw_cli.config import ConfigError, ModelConfig
    from powerlaw_cli.schema import setting_values

    auto = RunConfig.from_dict({"model": {"base_width": 32, "init_std": 0}})
    explicit = auto.replace({"model.init_std": 0.02 * (256 / 32) ** 0.5})
    assert auto.model.init_std_resolved == pytest.approx(0.0566, abs=1e-4)
    assert ModelConfig(base_width=256, init_std=0).init_std_resolved == pytest.approx(0.02)
    assert auto.run_id not in (explicit.run_id, RunConfig().run_id)
    assert setting_values(auto)["init_std"] == explicit.model.init_std  # the runs table holds the value used
    with pytest.raises(ConfigError, match="model.init_std"):
        ModelConfig(init_std=-0.01)


def test_the_sweep_hash_of_a_sweep_file_from_before_the_weight_decay_rule_is_unchanged():
    sweep = load_sweep(Path(__file__).resolve().parent.parent / "sweeps" / "demo.toml")
    assert all(run.optimizer.weight_decay_rule == "coupled" for run in sweep.runs)
    assert sweep.sweep_hash == "9a4e0f1ebba03a97"  # pinned before the rule existed


def test_a_legacy_value_is_only_for_settings_in_the_run_id():
    from powerlaw_cli.config import setting

    with pytest.raises(TypeError, match="legacy"):
        setting("a", "doc", identity=False, legacy="a")


def test_wsd_s_expands_over_its_decay_points(tmp_path):
    sweep = load_sweep(write(tmp_path, BASE.replace('"wsd"', '"wsd_s"') + "decay_points = [1e5, 2e5, 4e5]\n"))
    assert sorted(r.training.tokens for r in sweep.runs) == [100000, 200000, 400000]


def test_relative_data_path_is_resolved_against_the_spec_folder(tmp_path):
    sweep = load_sweep(write(tmp_path, BASE + '[data]\nsource = "tokens"\npath = "data/train.bin"\n'))
    assert sweep.runs[0].data.path == str((tmp_path / "data" / "train.bin").resolve())


@pytest.mark.parametrize(
    "text, expected",
    [
        ("[modle]\nwidth = 1\n", "unknown section [modle]; valid sections: sweep, model"),
        ("[model]\nwidht = 64\n", "model.widht: unknown setting; valid: width, depth, n_heads"),
        ("[model]\nwidth = 'big'\n", "model.width: expected an integer, got 'big'"),
        ("[model]\nparametrization = 'ntk'\n", "model.parametrization: 'ntk' is not one of mup, sp"),
        (
            "[grid]\noptimizer.lr = { log = [1e-4, 1e-2] }\n",
            "grid.optimizer.lr: expected a list, {log = [lo, hi], num = N}",
        ),
        ("[grid]\noptimizer.lrr = [1, 2]\n", "optimizer.lrr: unknown setting; valid: lr, beta1"),
        (
            "[grid]\ntraining.batch_size = { pow2 = [10, 64] }\n",
            "grid.training.batch_size: pow2 = [lo, hi] needs powers of two",
        ),
        (
            "[[grid.zip]]\nmodel.width = [32, 64]\nmodel.n_heads = [2]\n",
            "grid.zip[0]: zipped axes need equal lengths",
        ),
        ("[launch]\npartion = 'gpu'\n", "launch.partion: unknown setting; valid: partition, account, qos"),
        (
            "[launch]\nsbatch_extra = ['exclusive']\n",
            "launch.sbatch_extra: 'exclusive' must be an option --key or --key=value",
        ),
        (
            "[schedule]\nname = 'wsd'\nwarmup_tokens = 1e9\n",
            "schedule.warmup_tokens: must be below training.tokens",
        ),
        ("[model]\nwidth = [\n", "invalid TOML"),
    ],
)
def test_malformed_files_fail_with_one_line_naming_file_and_setting(tmp_path, text, expected):
    path = write(tmp_path, text, "bad.toml")
    with pytest.raises(ConfigError) as info:
        load_sweep(path)
    message = str(info.value)
    assert message.startswith(str(path)), message
    assert expected in message, message
    assert "\n" not in message


def test_impossible_schedule_fails_at_load_not_at_run_time(tmp_path):
    text = BASE.replace('name = "wsd"', 'name = "wsd"\nwarmup_tokens = 1000\ndecay_tokens = 2000')
    path = write(tmp_path, text + "[training]\ntokens = 2500\n")
    with pytest.raises(ConfigError, match="warmup_tokens .* decay_tokens .* exceed total_tokens"):
        load_sweep(path)


def test_missing_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read the sweep file"):
        load_sweep(tmp_path / "none.toml")
