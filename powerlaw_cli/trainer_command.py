"""Train one run with a user's trainer: a command (an argv list, never through a shell) or an entry point.

The contract (docs/trainers.md): the trainer is given ``PLSWEEP_RUN_ID``, ``PLSWEEP_RUN_DIR`` (the run's
own folder, the same on every attempt: checkpoint there), ``PLSWEEP_SETTINGS`` (a JSON file of the run's
settings) and ``PLSWEEP_RESULT`` (where to write its result, ``trainer_result``). A command's stdout and
stderr go to ``stdout.log`` and ``stderr.log`` in the run's folder; a non-zero exit, or no result, fails
the run with the last lines of its stderr. A stop request of the worker (SIGTERM, or submitit's timeout
signal USR2) is passed on to the command as SIGTERM; once it exits the run is left unrecorded
(``StopRequested``) for the requeued task or the next launch, which starts it again in the same folder. So
is a command that ends by SIGTERM (killed by it, or exit code 143) without a result: it was stopped, not failed.
No torch here.
"""

from __future__ import annotations

import importlib
import json
import os
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .config import RunConfig
from .control import Control, StopRequested
from .store import atomic_write
from .trainer_result import ResultError, check_result, external_record, read_result_file
from .trainer_spec import GIVEN, fill, run_settings

KILL_GRACE_SECONDS = 30.0
"""After passing a stop on (or at its timeout), seconds a command has to exit before it is killed."""
POLL_SECONDS = 0.2
STDERR_TAIL_BYTES = 4096
STDERR_TAIL_LINES = 5
STATE_FILE = ".plsweep-attempts.json"
"""In the run's folder: the attempts so far and their wall-clock seconds (a run's resumes and wall_seconds)."""


def train_run(
    run: RunConfig, run_dir: Path, control: Control, extra: dict[str, Any] | None = None
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Train ``run`` with its trainer in ``run_dir``; its record and curve. A failure of the trainer is a
    failed record; a stop request raises ``StopRequested`` (the run is not finished)."""
    assert run.trainer is not None, "a built-in proxy run is trained by runner.ChainRunner"
    run_dir.mkdir(parents=True, exist_ok=True)
    paths = {"run_dir": run_dir, "settings": run_dir / "settings.json", "result": run_dir / "result.json"}
    settings = run_settings(run)
    atomic_write(paths["settings"], json.dumps(settings, indent=1, sort_keys=True).encode())
    paths["result"].unlink(missing_ok=True)  # a result is this attempt's, never an earlier one's
    env = {
        "PLSWEEP_RUN_ID": run.run_id,
        "PLSWEEP_RUN_DIR": str(run_dir),
        "PLSWEEP_SETTINGS": str(paths["settings"]),
        "PLSWEEP_RESULT": str(paths["result"]),
    }
    state = _read_state(run_dir)
    state.setdefault("started_at", datetime.now(timezone.utc).isoformat())
    clock = time.monotonic()
    try:
        if "command" in run.trainer:
            outcome = _run_command(run, paths, env, control)
        else:
            outcome = _run_entry_point(run, settings, run_dir, env)
    finally:
        state["attempts"] += 1
        state["wall_seconds"] += time.monotonic() - clock
        atomic_write(run_dir / STATE_FILE, json.dumps(state).encode())
    times = {
        "started_at": state["started_at"],
        "wall_seconds": state["wall_seconds"],
        "resumes": state["attempts"] - 1,
    }
    if isinstance(outcome, str):
        return external_record(run, "failed", error=outcome, extra=extra, **times), []
    try:
        result, curve = check_result(outcome, run_dir)
    except ResultError as err:
        return external_record(run, "failed", error=str(err), extra=extra, **times), []
    record = external_record(run, result["status"], result=result, curve=curve, extra=extra, **times)
    return record, curve if record["status"] != "failed" else []


def _read_state(run_dir: Path) -> dict[str, Any]:
    try:
        state = json.loads((run_dir / STATE_FILE).read_text())
        if isinstance(state, dict) and isinstance(state.get("attempts"), int):
            return state
    except (OSError, ValueError):
        pass
    return {"attempts": 0, "wall_seconds": 0.0}


def command_argv(run: RunConfig, paths: dict[str, Path]) -> list[str]:
    """The command of ``run`` with its placeholders filled in. The program ``python`` is the worker's own
    interpreter; a relative program path (one with a /) is relative to the sweep file's folder."""
    assert run.trainer is not None
    values: dict[str, Any] = {
        **run.flat(),
        "run_id": run.run_id,
        **{k: str(paths[k]) for k in GIVEN if k in paths},
    }
    argv = [fill(arg, values) for arg in run.trainer["command"]]
    program = argv[0]
    if program == "python":
        argv[0] = sys.executable
    elif "/" in program and not os.path.isabs(program):
        argv[0] = str(Path(run.trainer["root"]) / program)
    return argv


def _run_command(run: RunConfig, paths: dict[str, Path], env: dict[str, str], control: Control) -> Any:
    """Run the command to its end; its result (parsed JSON), or a failure's one-line error."""
    assert run.trainer is not None
    argv = command_argv(run, paths)
    run_dir = paths["run_dir"]
    timeout = run.trainer.get("timeout_seconds", 0.0)
    with open(run_dir / "stdout.log", "wb") as out, open(run_dir / "stderr.log", "wb") as err:
        try:
            process = subprocess.Popen(
                argv,
                cwd=run.trainer["root"],
                env={**os.environ, **env},
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,  # a terminal's Ctrl-C reaches the launcher, which stops us
            )
        except OSError as error:
            return f"trainer.command: cannot run {argv[0]!r}: {error.strerror or error}"
        code, why = _wait(process, control, timeout)
    # Slurm signals every process of a job step: the command may end by SIGTERM before our own handler ran
    tail = stderr_tail(run_dir / "stderr.log")
    if why == "timeout":
        return f"timed out after {timeout:g} s (trainer.timeout_seconds){': ' + tail if tail else ''}"
    stopped = why == "stopped" or control.stop_after_save or code in (-signal.SIGTERM, 128 + signal.SIGTERM)
    if stopped and not (code == 0 and paths["result"].exists()):
        raise StopRequested(f"the command stopped after a signal (exit {code}); it restarts in {run_dir}")
    if code != 0:
        how = f"killed by signal {-code}" if code < 0 else f"exit code {code}"
        return f"the command failed ({how}){': ' + tail if tail else ''}"
    try:
        return read_result_file(paths["result"])
    except ResultError as error:
        return f"{error}{' (stderr: ' + tail + ')' if tail else ''}"


def _wait(process: subprocess.Popen, control: Control, timeout: float) -> tuple[int, str | None]:
    """Wait for the command; pass a stop request on as SIGTERM, stop it at its timeout, kill it when it
    does not exit within ``KILL_GRACE_SECONDS`` of either. Returns its exit code and why it was stopped."""
    started = time.monotonic()
    why: str | None = None
    signalled = 0.0
    while True:
        try:
            return process.wait(timeout=POLL_SECONDS), why
        except subprocess.TimeoutExpired:
            pass
        now = time.monotonic()
        if why is None and (control.stop_after_save or (timeout and now - started > timeout)):
            why = "stopped" if control.stop_after_save else "timeout"
            process.send_signal(signal.SIGTERM)
            signalled = now
        elif why is not None and now - signalled > KILL_GRACE_SECONDS:
            process.kill()


def stderr_tail(path: Path) -> str:
    """The last lines of a log as one line (its last ``STDERR_TAIL_BYTES`` only: a log may be gigabytes)."""
    try:
        with open(path, "rb") as handle:
            handle.seek(max(0, handle.seek(0, os.SEEK_END) - STDERR_TAIL_BYTES))
            text = handle.read().decode(errors="replace")
    except OSError:
        return ""
    lines = [" ".join(line.split()) for line in text.splitlines() if line.strip()]
    return " | ".join(lines[-STDERR_TAIL_LINES:])[-1000:]


def _run_entry_point(run: RunConfig, settings: dict[str, Any], run_dir: Path, env: dict[str, str]) -> Any:
    """Call ``package.module:function(settings, run_dir)`` in this process (the sweep file's folder first on
    the import path); its result, or a failure's one-line error."""
    assert run.trainer is not None
    module_name, _, name = run.trainer["entry_point"].partition(":")
    try:
        with _environment(env), _import_path(run.trainer["root"]):
            function = getattr(importlib.import_module(module_name), name)
            return function(settings, run_dir)
    except Exception as error:  # the trainer's failure is the run's: recorded, the next run goes on
        traceback.print_exc()
        text = " ".join(str(error).split())
        return f"trainer.entry_point: {type(error).__name__}{': ' + text if text else ''}"[:1000]


@contextmanager
def _environment(env: dict[str, str]) -> Iterator[None]:
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextmanager
def _import_path(folder: str) -> Iterator[None]:
    sys.path.insert(0, folder)
    try:
        yield
    finally:
        sys.path.remove(folder)
