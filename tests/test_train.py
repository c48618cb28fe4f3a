"""One run and chains of runs: determinism, resume, micro-batching, divergence, trunks and WSD-S."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from powerlaw_cli.chains import fork_step, plan_chains
from powerlaw_cli.config import RunConfig
from powerlaw_cli.data import load_source, markov_language
from powerlaw_cli.model import GPT
from powerlaw_cli.runner import ChainRunner, train_standalone
from powerlaw_cli.train import Control, StopRequested

TINY = {
    "model.width": 32,
    "model.depth": 2,
    "model.n_heads": 2,
    "model.seq_len": 16,
    "model.base_width": 32,
    "data.val_tokens": 1024,
    "training.batch_size": 8,
    "training.tokens": 4096,
    "optimizer.lr": 1e-2,
    "schedule.warmup_tokens": 256,
    "schedule.decay_fraction": 0.25,
}


def tiny(**overrides) -> RunConfig:
    return RunConfig().replace({**TINY, **{k.replace("__", "."): v for k, v in overrides.items()}})


class StopAt(Control):
    """Asks for a stop (save, then StopRequested) at the n-th step boundary, like a preemption signal would."""

    def __init__(self, n: int):
        super().__init__()
        self.n, self.boundaries = n, 0

    def at_step_boundary(self) -> None:
        self.boundaries += 1
        if self.boundaries == self.n:
            self.stop_after_save = True
        super().at_step_boundary()


def run_chain(
    runs: list[RunConfig],
    checkpoint: Path | None = None,
    control: Control | None = None,
    share: bool = True,
    done: dict | None = None,
    keep_trunk: bool = False,
) -> dict[str, dict]:
    """Train runs as chains; returns {run_id: record} (records of earlier calls in ``done`` are skipped)."""
    results = {} if done is None else done
    for chain in plan_chains(runs, share):
        ChainRunner(
            chain,
            checkpoint,
            lambda rec, curve: results.__setitem__(rec["run_id"], rec | {"curve": curve}),
            lambda run_id: run_id in results,
            control or Control(),
            keep_trunk=keep_trunk,
        ).run()
    return results


class CountSteps(Control):
    """Counts the optimizer steps trained (one step boundary each)."""

    def __init__(self):
        super().__init__()
        self.steps = 0

    def at_step_boundary(self) -> None:
        self.steps += 1
        super().at_step_boundary()


def test_same_config_and_seed_give_the_identical_loss(tmp_path):
    run = tiny()
    first = train_standalone(run, tmp_path / "a")
    second = train_standalone(run, tmp_path / "b")
    assert first["status"] == "ok" and first["steps"] == 32 and first["tokens_seen"] == 4096
    assert first["final_val_loss"] == second["final_val_loss"]
    assert first["final_train_loss"] == second["final_train_loss"]
    other_seed = train_standalone(tiny(training__seed=1), tmp_path / "c")
    assert other_seed["final_val_loss"] != first["final_val_loss"]
    curve = pd.read_feather(tmp_path / "a" / "curve.arrow")
    assert list(curve["step"]) == list(range(1, 33)) and curve["val_loss"].notna().sum() == 1
    assert json.loads((tmp_path / "a" / "record.json").read_text())["run_id"] == run.run_id
    assert not (tmp_path / "a" / "checkpoint.pt").exists()  # removed once recorded


def test_micro_batching_matches_the_whole_batch_within_float_tolerance(tmp_path):
    whole = train_standalone(tiny(), tmp_path / "whole")
    micro = train_standalone(tiny(training__micro_batch_size=2), tmp_path / "micro")
    assert micro["run_id"] == whole["run_id"]  # micro-batching does not change what the run is
    assert math.isclose(micro["final_val_loss"], whole["final_val_loss"], rel_tol=1e-4)
    # and the run learned: between the uniform guess and the language's entropy (its loss floor)
    assert markov_language(0, 256, 1.1).entropy < whole["final_val_loss"] < math.log(256)


def validation_loss(model: torch.nn.Module, run: RunConfig) -> float:
    """Mean validation loss of ``model`` on ``run``'s data, computed here (not by the trainer)."""
    source = load_source(run.data, run.model.vocab_size, run.model.seq_len)
    total, count = 0.0, 0
    with torch.no_grad():
        for x, y in source.val_batches(64):
            logits = model(x)
            total += float(
                torch.nn.functional.cross_entropy(
                    logits.reshape(-1, logits.size(-1)), y.reshape(-1), reduction="sum"
                )
            )
            count += y.numel()
    return total / count


def test_evaluation_points_and_averaged_weights(tmp_path):
    """An EMA with an endless time constant keeps the initial weights: its loss is the untrained model's,
    computed here from a fresh model of the run's seed, while the raw weights learn."""
    run = tiny(training__eval_every_tokens=1024, averaging__kind="ema", averaging__ema_tokens=10**15)
    record = train_standalone(run, tmp_path / "r")
    curve = pd.read_feather(tmp_path / "r" / "curve.arrow")
    assert list(curve.loc[curve["val_loss"].notna(), "tokens"]) == [1024, 2048, 3072, 4096]
    assert curve["val_loss_averaged"].notna().sum() == 4
    untrained = validation_loss(GPT(run.model, seed=run.training.seed), run)
    assert record["final_val_loss_averaged"] == pytest.approx(untrained, abs=1e-5)
    assert record["final_val_loss"] < untrained
    assert record["final_val_loss"] == curve["val_loss"].iloc[-1]


def test_a_huge_lr_is_recorded_as_diverged_not_raised(tmp_path):
    record = train_standalone(tiny(optimizer__lr=1e4, training__tokens=16384), tmp_path / "d")
    assert record["status"] == "diverged"
    assert 0 < record["diverged_at_tokens"] < 16384
    assert record["diverged_at_tokens"] == record["tokens_seen"]
    assert record["final_val_loss"] is None and record["error"] is None


def test_a_missing_data_path_is_a_failed_record_naming_the_path(tmp_path):
    missing = tmp_path / "nope.bin"
    record = train_standalone(tiny(data__source="tokens", data__path=str(missing)), tmp_path / "f")
    assert record["status"] == "failed"
    assert str(missing) in record["error"] and "\n" not in record["error"]


def test_stopped_and_resumed_equals_uninterrupted(tmp_path):
    run = tiny(training__tokens=8192, averaging__kind="ema", averaging__ema_tokens=2048)
    straight = run_chain([run])[run.run_id]
    checkpoint = tmp_path / "ckpt.pt"
    with pytest.raises(StopRequested):
        run_chain([run], checkpoint, StopAt(20))
    assert checkpoint.exists()
    resumed = run_chain([run], checkpoint)[run.run_id]
    assert resumed["resumes"] == 1 and straight["resumes"] == 0
    assert resumed["final_val_loss"] == straight["final_val_loss"]
    assert resumed["final_val_loss_averaged"] == straight["final_val_loss_averaged"]
    assert not checkpoint.exists()


def test_killed_process_resumes_from_its_checkpoint_to_the_same_loss(tmp_path):
    """A real SIGKILL of `plsweep train`, then the same command again: same final loss as never killed."""
    sets = [
        f"--set={k}={v}"
        for k, v in {**TINY, "training.tokens": 65536, "training.checkpoint_seconds": 0.2}.items()
    ]
    command = [sys.executable, "-m", "powerlaw_cli", "train", *sets]
    straight = subprocess.run(
        [*command, "--out", str(tmp_path / "straight"), "--json"], capture_output=True, text=True, timeout=600
    )
    assert straight.returncode == 0, straight.stderr
    out = tmp_path / "killed"
    process = subprocess.Popen(
        [*command, "--out", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 300
    while not (out / "checkpoint.pt").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert not (out / "record.json").exists(), "the run finished before it could be killed"
    resumed = subprocess.run(
        [*command, "--out", str(out), "--json"], capture_output=True, text=True, timeout=600
    )
    assert resumed.returncode == 0, resumed.stderr
    first, second = json.loads(straight.stdout), json.loads(resumed.stdout)
    assert second["resumes"] == 1
    assert second["final_val_loss"] == first["final_val_loss"]
    assert second["final_train_loss"] == first["final_train_loss"]


POWER = {
    "schedule__name": "power",
    "schedule__power_a": 0.05,  # the cap 0.02 until ~400 tokens, then n^-0.51
    "schedule__decay_shape": "exponential",
    "optimizer__lr": 0.02,
}


@pytest.mark.parametrize("schedule", [{}, POWER], ids=["wsd", "power"])
def test_trunk_branches_equal_runs_trained_alone(schedule):
    runs = [
        tiny(training__tokens=t, training__eval_every_tokens=1024, **schedule) for t in (2048, 4096, 8192)
    ]
    chains = plan_chains(runs, share_trunks=True)
    assert [c.kind for c in chains] == ["trunk"]
    shared = run_chain(runs, share=True)
    alone = run_chain(runs, share=False)
    for run in runs:
        assert shared[run.run_id]["final_val_loss"] == alone[run.run_id]["final_val_loss"], (
            run.training.tokens
        )
        assert shared[run.run_id]["curve"] == alone[run.run_id]["curve"]  # evaluations at forks included
        assert shared[run.run_id]["trunk_id"] == chains[0].key and alone[run.run_id]["trunk_id"] is None
    assert len({r["final_val_loss"] for r in shared.values()}) == 3
    assert sum(row["val_loss"] is not None for row in shared[runs[-1].run_id]["curve"]) == 8


def test_a_trunk_stopped_early_and_extended_later_gives_the_results_of_one_trained_to_the_end(tmp_path):
    """Round 1 wants only the smallest budget; round 2 adds the larger ones: the kept trunk is extended from
    its last fork, with exactly the branches of a trunk trained to the end at once, and no step trained twice."""
    runs = [tiny(training__tokens=t) for t in (2048, 4096, 8192)]
    at_once = CountSteps()
    straight = run_chain(runs, control=at_once)
    checkpoint = tmp_path / "trunk.pt"
    rounds = [CountSteps(), CountSteps()]
    done = run_chain(runs[:1], checkpoint, rounds[0], keep_trunk=True)
    kept = torch.load(checkpoint, weights_only=True)
    assert kept["kept"] and kept["trunk"]["step"] == fork_step(runs[0])
    done = run_chain(runs, checkpoint, rounds[1], done=done, keep_trunk=True)
    for run in runs:
        assert done[run.run_id]["final_val_loss"] == straight[run.run_id]["final_val_loss"], (
            run.training.tokens
        )
        assert done[run.run_id]["resumes"] == 0  # an extension is not a restart
    assert sum(r.steps for r in rounds) == at_once.steps  # extended, not retrained
    assert torch.load(checkpoint, weights_only=True)["trunk"]["step"] == fork_step(runs[-1])


def test_trunk_stopped_inside_a_branch_resumes_to_the_same_results(tmp_path):
    runs = [
        tiny(training__tokens=t, schedule__decay_shape=shape)
        for t in (2048, 4096)
        for shape in ("linear", "1-sqrt")
    ]
    straight = run_chain(runs)
    checkpoint = tmp_path / "trunk.pt"
    done: dict = {}
    with pytest.raises(StopRequested):
        run_chain(runs, checkpoint, StopAt(30), done=done)  # past the first fork: inside a branch
    assert 0 < len(done) < len(runs)
    resumed = run_chain(runs, checkpoint, done=done)
    for run in runs:
        assert resumed[run.run_id]["final_val_loss"] == straight[run.run_id]["final_val_loss"]


def test_wsd_s_budgets_equal_standalone_wsd_s_runs():
    points = [2048, 4096]
    runs = [tiny(schedule__name="wsd_s", schedule__decay_points=points, training__tokens=t) for t in points]
    assert [c.kind for c in plan_chains(runs)] == ["wsd_s"]
    together = run_chain(runs)
    for run in runs:
        alone = run_chain([run])[run.run_id]
        assert together[run.run_id]["final_val_loss"] == alone["final_val_loss"]
    assert together[runs[1].run_id]["steps"] == 32 and together[runs[0].run_id]["steps"] == 16


def test_a_diverged_trunk_diverges_every_later_branch():
    runs = [tiny(optimizer__lr=1e4, training__tokens=t) for t in (4096, 8192, 16384)]
    records = run_chain(runs)
    assert {r["status"] for r in records.values()} == {"diverged"}
    assert len({r["diverged_at_tokens"] for r in records.values()}) == 1


def test_compile_wraps_the_model_and_keeps_the_run_id():
    from powerlaw_cli.train import Trajectory

    eager, compiled = tiny(), tiny(training__compile=True)
    assert eager.run_id == compiled.run_id  # compilation changes speed, not the result
    trajectory = Trajectory(
        compiled,
        load_source(compiled.data, compiled.model.vocab_size, compiled.model.seq_len),
        lambda t: 1e-3,
        torch.device("cpu"),
    )
    assert isinstance(trajectory.forward, torch._dynamo.eval_frame.OptimizedModule)
    assert trajectory.forward._orig_mod is trajectory.model
