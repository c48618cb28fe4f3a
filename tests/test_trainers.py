"""A user's own trainer as the proxy: [trainer] and [params] sweep files, the command contract (environment,
result, failures, stop and resume), entry points, and plan / launch / status / collect / fit / export."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from powerlaw_cli.chains import plan_chains
from powerlaw_cli.cli import app
from powerlaw_cli.collect import collect
from powerlaw_cli.config import ConfigError
from powerlaw_cli.launch import launch
from powerlaw_cli.spec import load_sweep
from powerlaw_cli.status import sweep_status
from powerlaw_cli.store import SweepDir
from powerlaw_cli.sweep_settings import LaunchConfig
from powerlaw_cli.trainer_command import stderr_tail

FAKE = """
import json, math, os, sys, time
settings = json.load(open(os.environ["PLSWEEP_SETTINGS"]))
mode = settings["params"].get("mode", "ok")
lr, tokens = settings["optimizer"]["lr"], settings["training"]["tokens"]
loss = (math.log10(lr) + 2.5 + 0.3 * math.log10(tokens)) ** 2 + 3 + 0.01 * settings["training"]["seed"]
result = os.environ["PLSWEEP_RESULT"]
curve = [{"step": s, "tokens": s * 100, "lr": lr, "train_loss": loss + 1 / s, "val_loss": None} for s in (1, 2)]
good = {"final_val_loss": loss, "curve": curve, "params_non_embedding": 1000}
if mode == "exit1":
    print("Traceback: something broke\\nValueError: bad batch", file=sys.stderr)
    sys.exit(1)
if mode == "hang":
    time.sleep(600)
if mode == "sigterm":  # as Slurm's requeue, which signals every process of the job step, would end it
    os.kill(os.getpid(), 15)
if mode == "badjson":
    open(result, "w").write("{final_val_loss: 1")
elif mode == "strloss":
    json.dump({"final_val_loss": "2.5"}, open(result, "w"))
elif mode == "negloss":
    json.dump({"final_val_loss": -1.0}, open(result, "w"))
elif mode == "noresult":
    pass
elif mode == "extra":
    json.dump({**good, "accuracy": 0.5}, open(result, "w"))
else:
    json.dump(good, open(result, "w"))
if mode == "then_exit3":
    print("crashed in teardown", file=sys.stderr)
    sys.exit(3)
if mode == "megabytes":
    for i in range(200_000):
        sys.stderr.write(f"line {i} of noise " + "x" * 40 + "\\n")
    print("the last line", file=sys.stderr)
    sys.exit(2)
with open(os.path.join(os.environ["PLSWEEP_RUN_DIR"], "seen.json"), "w") as f:
    json.dump({"argv": sys.argv[1:], "cuda": os.environ.get("CUDA_VISIBLE_DEVICES"),
               "run_id": os.environ["PLSWEEP_RUN_ID"], "cwd": os.getcwd()}, f)
"""


def write_sweep(tmp_path: Path, body: str, name: str = "mine") -> Path:
    (tmp_path / "fake.py").write_text(FAKE)
    path = tmp_path / f"{name}.toml"
    path.write_text(f'[sweep]\nname = "{name}"\n' + textwrap.dedent(body))
    return path


def records(out: Path) -> dict[str, dict]:
    sweep = SweepDir(out)
    return {run_id: sweep.read_result(run_id) for run_id in sweep.manifest_run_ids()}


def by_mode(out: Path) -> dict[str, dict]:
    return {record["config"]["params"]["mode"]: record for record in records(out).values()}


def invoke(*args: object) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "200"})
    return result.exit_code, result.stdout, result.stderr


# --- sweep files -----------------------------------------------------------------------------------


def test_proxy_run_ids_are_unchanged():
    """A sweep without [trainer] keeps the run ids it had before trainers existed (pinned from main)."""
    sweep = load_sweep(Path(__file__).parent.parent / "sweeps" / "tiny.toml")
    assert sweep.sweep_hash == "7a1227dcbbe9e736"
    assert all(run.trainer is None and run.params == {} for run in sweep.runs)


def test_params_are_sweepable_part_of_the_id_and_placeholders(tmp_path):
    spec = write_sweep(
        tmp_path,
        """
        [trainer]
        command = ["python", "fake.py", "--lr={optimizer.lr}", "{params.hidden}", "{params.tags}", "{run_dir}"]
        [params]
        hidden = 16
        tags = ["a", "b"]
        [grid]
        params.hidden = [16, 32]
        optimizer.lr = [0.001, 0.01]
        """,
    )
    sweep = load_sweep(spec)
    assert len({run.run_id for run in sweep.runs}) == 4
    assert sorted(run.params["hidden"] for run in sweep.runs) == [16, 16, 32, 32]
    assert sweep.axes["params.hidden"] == [16, 32]
    # the same settings trained by the built-in proxy are another run
    proxy = load_sweep(write_sweep(tmp_path, "[grid]\noptimizer.lr = [0.001, 0.01]\n", "proxy"))
    assert not {r.run_id for r in proxy.runs} & {r.run_id for r in sweep.runs}
    # a command trains each run alone: no shared trunks whatever share_trunks says
    assert all(chain.kind == "single" for chain in plan_chains(sweep.runs, share_trunks=True))
    code, out, _ = invoke("plan", spec)
    assert code == 0 and "params.hidden" in out


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            '[trainer]\ncommand = ["python", "fake.py", "{optimizer.lrr}"]\n',
            "trainer.command: placeholder {optimizer.lrr} names no setting",
        ),
        (
            '[trainer]\ncommand = ["python", "fake.py", "{params.depth}"]\n[params]\nhidden = 3\n',
            "placeholder {params.depth} names no setting",
        ),
        (
            '[trainer]\ncommand = ["python", "fake.py"]\n[params]\nlr = 0.1\n',
            "params.lr: 'lr' is the standard setting optimizer.lr",
        ),
        (
            '[trainer]\ncommand = ["python", "fake.py"]\n[params]\nrun_dir = "x"\n',
            "params.run_dir: 'run_dir' is a name plsweep gives itself",
        ),
        (
            '[trainer]\ncommand = ["python", "fake.py"]\n[schedule]\nname = "cosine"\n',
            "schedule.name: a setting of the built-in proxy; a [trainer] sweep sets it only if its command passes it on",
        ),
        (
            '[trainer]\ncommand = ["no-such-trainer-program"]\n',
            "program 'no-such-trainer-program' not found on PATH",
        ),
        (
            '[trainer]\ncommand = ["./missing.sh"]\n',
            "program './missing.sh': no such file next to the sweep file",
        ),
        ('[trainer]\ncommand = "python fake.py"\n', "trainer.command: expected a list of non-empty strings"),
        (
            '[trainer]\nentry_point = "not a module"\n',
            'trainer.entry_point: expected "package.module:function"',
        ),
        ("[trainer]\n", "give either command (an argv list) or entry_point"),
        ("[params]\nhidden = 3\n", "[params] are the settings of your own trainer: add a [trainer] section"),
        (
            '[trainer]\ncommand = ["python", "fake.py"]\n[params]\nx = {a = 1}\n',
            "params.x: expected a number",
        ),
        (
            '[trainer]\ncommand = ["python", "fake.py"]\n[grid]\nparams.x = [1, "a"]\n',
            "grid.params.x: an axis of a param holds one kind of value",
        ),
    ],
)
def test_bad_trainer_sections_are_one_line_at_plan(tmp_path, body, message):
    spec = write_sweep(tmp_path, body)
    with pytest.raises(ConfigError, match=None) as err:
        load_sweep(spec)
    assert message in str(err.value) and str(spec) in str(err.value)
    code, out, stderr = invoke("plan", spec)
    assert code == 2 and stderr.count("\n") == 1 and stderr.startswith("error: ") and message in stderr


def test_a_passed_on_proxy_setting_is_allowed(tmp_path):
    spec = write_sweep(
        tmp_path,
        '[trainer]\ncommand = ["python", "fake.py", "{schedule.name}"]\n[schedule]\nname = "cosine"\n',
    )
    (run,) = load_sweep(spec).runs
    assert "schedule.name" in run.trainer["settings"]


# --- the contract ------------------------------------------------------------------------------------

CONTRACT = """
[trainer]
command = ["python", "fake.py", "--lr", "{optimizer.lr}", "--tokens", "{training.tokens}", "{run_id}"]
[params]
mode = "ok"
[training]
tokens = 300
[grid]
params.mode = ["ok", "exit1", "badjson", "strloss", "negloss", "noresult", "extra", "then_exit3", "megabytes"]
"""


def test_faults_are_recorded_errors_and_touch_no_other_run(tmp_path, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    out = tmp_path / "out"
    launch(load_sweep(write_sweep(tmp_path, CONTRACT)), out, "debug", LaunchConfig())
    runs = by_mode(out)
    ok = runs.pop("ok")
    assert ok["status"] == "ok" and ok["final_val_loss"] > 3 and ok["params_non_embedding"] == 1000
    assert (
        ok["tokens_seen"] == 200 and ok["steps"] == 2 and ok["final_train_loss"] == ok["final_val_loss"] + 0.5
    )
    assert ok["resumes"] == 0 and ok["device"] == "cuda:3" and ok["torch_version"] is None
    # proxy-only settings the trainer was not given are null: a fit never groups by them
    assert ok["schedule"] is None and ok["lr"] == 3e-3 and ok["width"] == 128
    seen = json.loads((SweepDir(out).run_dir(ok["run_id"]) / "seen.json").read_text())
    assert seen["argv"] == ["--lr", "0.003", "--tokens", "300", ok["run_id"]]
    assert seen["cuda"] == "3" and seen["run_id"] == ok["run_id"] and seen["cwd"] == str(tmp_path)
    settings = json.loads((SweepDir(out).run_dir(ok["run_id"]) / "settings.json").read_text())
    assert settings["optimizer"] == {"lr": 3e-3} and settings["params"] == {"mode": "ok"}
    assert settings["training"] == {"batch_size": 16, "seed": 0, "tokens": 300}
    expected = {
        "exit1": "the command failed (exit code 1): Traceback: something broke | ValueError: bad batch",
        "badjson": "result.json: not valid JSON",
        "strloss": "result.final_val_loss: expected a finite number >= 0, got '2.5'",
        "negloss": "result.final_val_loss: expected a finite number >= 0, got -1.0",
        "noresult": "no result file at",
        "extra": "result.accuracy: unknown field",
        "then_exit3": "the command failed (exit code 3): crashed in teardown",
        "megabytes": "the command failed (exit code 2): ",
    }
    for mode, message in expected.items():
        record = runs[mode]
        assert record["status"] == "failed" and message in record["error"], (mode, record["error"])
        assert "\n" not in record["error"] and len(record["error"]) <= 1000
    assert runs["megabytes"]["error"].endswith("the last line")
    assert (SweepDir(out).run_dir(runs["megabytes"]["run_id"]) / "stderr.log").stat().st_size > 8_000_000
    status = sweep_status(SweepDir(out))
    assert (status.counts["finished"], status.counts["failed"]) == (1, 8)
    assert sorted(f.error for f in status.failures) == sorted(r["error"] for r in runs.values())


def test_stderr_tail_reads_only_the_end(tmp_path):
    log = tmp_path / "stderr.log"
    log.write_bytes(b"x" * 50_000_000 + b"\nfirst\n\nsecond   line\n")
    tail = stderr_tail(log)
    assert tail.endswith("x | first | second line") and len(tail) <= 1000
    assert stderr_tail(tmp_path / "none.log") == ""


def test_hang_past_its_timeout_fails_the_run(tmp_path):
    spec = write_sweep(
        tmp_path, '[trainer]\ncommand = ["python", "fake.py"]\ntimeout_seconds = 1\n[params]\nmode = "hang"\n'
    )
    out = tmp_path / "out"
    launch(load_sweep(spec), out, "debug", LaunchConfig())
    (record,) = records(out).values()
    assert record["status"] == "failed" and record["error"].startswith("timed out after 1 s")


def test_retry_failed_reruns_in_the_same_folder(tmp_path):
    spec = write_sweep(tmp_path, '[trainer]\ncommand = ["python", "fake.py"]\n[params]\nmode = "exit1"\n')
    out = tmp_path / "out"
    launch(load_sweep(spec), out, "debug", LaunchConfig())
    spec.write_text(spec.read_text())  # same sweep; the trainer gets fixed in place
    (tmp_path / "fake.py").write_text(FAKE.replace('if mode == "exit1":', 'if mode == "never":'))
    launch(load_sweep(spec), out, "debug", LaunchConfig(), retry_failed=True)
    (record,) = records(out).values()
    assert record["status"] == "ok" and record["resumes"] == 1


# --- stop and resume (local executor, real signals) ---------------------------------------------------

RESUMABLE = """
import json, os, signal, sys, time
steps = int(sys.argv[1])
run_dir = os.environ["PLSWEEP_RUN_DIR"]
state_path = os.path.join(run_dir, "state.json")
state = json.load(open(state_path)) if os.path.exists(state_path) else {"step": 0, "starts": 0, "executed": 0}
state["starts"] += 1
stop = []
signal.signal(signal.SIGTERM, lambda *a: stop.append(1))
while state["step"] < steps:
    if stop:
        print(f"stopped at step {state['step']}", flush=True)
        sys.exit(143)
    time.sleep(0.1)
    state["step"] += 1
    state["executed"] += 1
    json.dump(state, open(state_path + ".tmp", "w"))
    os.replace(state_path + ".tmp", state_path)
json.dump({"final_val_loss": 1.0 + state["starts"]}, open(os.environ["PLSWEEP_RESULT"], "w"))
"""
"""A trainer that checkpoints every step (its ``state.json``) and resumes from it; ``executed`` counts the steps
it ran over all its starts (equal to its steps when it never ran one twice)."""


def read_state(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def test_sigterm_is_passed_on_and_the_next_launch_resumes(tmp_path):
    (tmp_path / "resumable.py").write_text(RESUMABLE)
    spec = tmp_path / "resume.toml"
    spec.write_text('[trainer]\ncommand = ["python", "resumable.py", "40"]\n')
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    launcher = subprocess.Popen(
        [sys.executable, "-m", "powerlaw_cli", "launch", str(spec), "--out", str(out), "--executor", "local"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    (run,) = load_sweep(spec).runs
    state_path = SweepDir(out).run_dir(run.run_id) / "state.json"
    while (state := read_state(state_path)) is None or state["step"] < 3:
        assert launcher.poll() is None, "the launch ended before the trainer ran 3 steps"
        time.sleep(0.1)
    launcher.send_signal(signal.SIGINT)  # Ctrl-C: the launcher stops its workers, which stop the command
    launcher.wait(timeout=120)
    assert SweepDir(out).read_result(run.run_id) is None  # stopped, not failed: left for the next launch
    stopped = read_state(state_path)
    assert 3 <= stopped["step"] < 40 and stopped["starts"] == 1
    assert "stopped at step" in (SweepDir(out).run_dir(run.run_id) / "stdout.log").read_text()
    launch(load_sweep(spec), out, "local", LaunchConfig())
    record = SweepDir(out).read_result(run.run_id)
    assert record["status"] == "ok" and record["final_val_loss"] == 3.0 and record["resumes"] == 1
    assert read_state(state_path) == {"step": 40, "starts": 2, "executed": 40}  # resumed, no step twice


def test_a_command_ended_by_sigterm_is_stopped_not_failed(tmp_path):
    spec = write_sweep(tmp_path, '[trainer]\ncommand = ["python", "fake.py"]\n[params]\nmode = "sigterm"\n')
    out = tmp_path / "out"
    launch(load_sweep(spec), out, "local", LaunchConfig())
    (run_id,) = SweepDir(out).manifest_run_ids()
    assert SweepDir(out).read_result(run_id) is None  # left for the next launch (or the requeued task)
    assert sweep_status(SweepDir(out)).counts["failed"] == 0


# --- entry points ------------------------------------------------------------------------------------

ENTRY = """
import math, os
from pathlib import Path

def train(settings, run_dir):
    assert Path(os.environ["PLSWEEP_RUN_DIR"]) == run_dir
    if settings["params"]["mode"] == "boom":
        raise RuntimeError("out of\\nmemory")
    lr = settings["optimizer"]["lr"]
    return {"final_val_loss": (math.log10(lr) + 2) ** 2 + 3, "tokens_seen": settings["training"]["tokens"]}
"""


def test_entry_point(tmp_path):
    (tmp_path / "mytrainer.py").write_text(ENTRY)
    spec = write_sweep(
        tmp_path,
        '[trainer]\nentry_point = "mytrainer:train"\n[params]\nmode = "ok"\n[grid]\nparams.mode = ["ok", "boom"]\n',
    )
    out = tmp_path / "out"
    launch(load_sweep(spec), out, "debug", LaunchConfig())
    runs = by_mode(out)
    assert runs["ok"]["status"] == "ok" and runs["ok"]["final_val_loss"] == pytest.approx(
        (math.log10(3e-3) + 2) ** 2 + 3
    )
    assert runs["boom"]["status"] == "failed"
    assert runs["boom"]["error"] == "trainer.entry_point: RuntimeError: out of memory"
    assert "PLSWEEP_RUN_DIR" not in os.environ


# --- the whole way: plan, launch, status, collect, fit, export ----------------------------------------

SWEEP = """
[trainer]
command = ["python", "fake.py"]
[params]
mode = "ok"
[training]
batch_size = 8
[grid]
optimizer.lr = { log = [1e-4, 1e-1], num = 7 }
training.tokens = [300, 600, 1200]
params.mode = ["ok", "exit1"]
[launch]
runs_per_task = 7
"""


def test_collect_fit_export_a_trainer_sweep(tmp_path):
    spec = write_sweep(tmp_path, SWEEP)
    out = tmp_path / "out"
    code, _, stderr = invoke("launch", spec, "--out", out, "--executor", "local")
    assert code == 0, stderr
    code, text, _ = invoke("status", out)
    assert code == 0 and "21" in text
    assert len(SweepDir(out).tasks(0)) == 6  # 42 runs packed 7 to a task
    report = collect(SweepDir(out))
    assert report.runs == 42 and not report.problems
    table = pq.read_table(out / "runs.parquet")
    assert table.schema.field("params.mode").type == "string"
    assert sorted(set(table.column("params.mode").to_pylist())) == ["exit1", "ok"]
    assert collect(SweepDir(out)).new == 0  # incremental with the params columns
    code, text, stderr = invoke("fit", out)
    assert code == 0, stderr
    fit = json.loads((out / "fit" / "fit.json").read_text())
    cells = [c for c in fit["cells"] if c["status"] == "used"]
    assert len(cells) == 3  # the failed runs are no cells; params.mode=ok, tokens = 300, 600, 1200
    lr_opt = {c["tokens"]: c["lr_opt"] for c in cells}
    for tokens, lr in lr_opt.items():  # the fake's loss is lowest at log10 lr = -2.5 - 0.3 log10 tokens
        assert abs(math.log10(lr) + 2.5 + 0.3 * math.log10(tokens)) < 0.1
    code, text, stderr = invoke("export", out, "--tokens", "2400", "--batch-size", "8")
    assert code == 0, stderr
    peak = json.loads(text)["recommended"]["peak_lr"]
    assert abs(math.log10(peak["value"]) + 2.5 + 0.3 * math.log10(2400)) < 0.1


def test_the_command_trainer_imports_no_torch():
    code = "import sys, powerlaw_cli.trainer_command, powerlaw_cli.trainers; print('torch' in sys.modules)"
    assert (
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
        == "False\n"
    )


def test_an_adaptive_trainer_sweep_chooses_its_lrs(tmp_path):
    spec = write_sweep(
        tmp_path,
        """
        [trainer]
        command = ["python", "fake.py"]
        [params]
        mode = "ok"
        [grid]
        training.tokens = [300, 1200]
        [adaptive]
        lr_min = 1e-5
        lr_max = 1e-2
        max_rounds = 4
        """,
    )
    code, text, stderr = invoke("launch", spec, "--out", tmp_path / "out", "--executor", "debug")
    assert code == 0, stderr
    rounds = SweepDir(tmp_path / "out").rounds()
    assert len(rounds) >= 2  # a first coarse round, then LRs chosen around each cell's optimum
    runs = list(records(tmp_path / "out").values())
    assert all(r["status"] == "ok" and r["config"]["params"] == {"mode": "ok"} for r in runs)
    for tokens in (300, 1200):
        best = min((r for r in runs if r["tokens"] == tokens), key=lambda r: r["final_val_loss"])
        assert abs(math.log10(best["lr"]) + 2.5 + 0.3 * math.log10(tokens)) <= 0.5
