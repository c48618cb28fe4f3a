"""What plsweep's commands cost at the scale it exists for: 1,000 to 100,000 runs on a Slurm cluster.

Run by hand, never by the test suite (as root, on a machine with Slurm's Debian packages)::

    python bench/bench_scale.py                                  # this tree only
    python bench/bench_scale.py --baseline ../plsweep-old        # and an older checkout, side by side

It starts the project's one-node Slurm cluster (``scripts/slurm-cluster.sh``, MaxArraySize 1001,
MaxJobCount 10000, on its own ports), writes sweep files of the smallest proxy model (width 32,
2 blocks, 16-token sequences, 1-5 optimizer steps per run) with 1,000 to 100,000 runs, and times
every command as a whole process (``python -m powerlaw_cli ...``, wall seconds, median of
``--repeat`` runs), once per code tree, the trees taking turns (A B A B ...) so that drift of this
shared machine's load hits both alike; the ratio this/baseline is the median of the pairwise ratios.

* ``plan`` at every size of ``--plan-runs`` (default 1k, 10k, 100k);
* for every size of ``--runs`` (default 1k, 10k): ``launch --executor slurm`` (submission only:
  the command returns once the arrays are queued), then the sweep runs on the cluster
  (``runs_per_task`` 100, one CPU per task); once it is done: ``status``, the first ``collect`` (on a
  fresh hard-linked copy of the directory each time), ``collect`` with nothing new, ``fit``;
* task startup: a worker process (``powerlaw_cli.worker.run_task``) on a task whose runs are all
  recorded, so it does everything but train (imports, reading the task, skipping); and from the
  records, the per-run overhead inside a task: (last finished - first started - training seconds) /
  runs; and from sacct, each task's start to its first run's start (1 s resolution);
* lost runs (no record once the queue is empty) and runs trained twice (a ``run RUN_ID:`` line in
  more than one worker log line).

Figures print as a table (and ``--json FILE``). The 10,000-run sweep takes ~10 minutes per tree on
2 cores. The machine is shared: trust medians and ratios, not single figures.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CLUSTER_SCRIPT = ROOT / "scripts" / "slurm-cluster.sh"
PORT_BASE = 17817  # away from the tests' cluster (16817)

SPEC = """[sweep]
name = "{name}"

[model]
width = 32
depth = 2
n_heads = 2
seq_len = 16
base_width = 32

[data]
val_tokens = 256

[schedule]
name = "constant"

[training]
device = "cpu"

[grid]
optimizer.lr = {{ log = [1e-3, 1.0], num = 10 }}
training.batch_size = [8, 16]
training.tokens = [128, 256, 384, 512, 640]
training.seed = {{ lin = [0, {last_seed}], num = {seeds} }}

[launch]
runs_per_task = 100
cpus_per_task = 1
gpus_per_task = 0
time_minutes = 30
"""


def write_spec(folder: Path, runs: int) -> Path:
    """A sweep file of ``runs`` runs (10 LRs x 2 batch sizes x 5 budgets x runs / 100 seeds): 10 cells."""
    seeds = max(1, runs // 100)
    path = folder / f"scale-{runs}.toml"
    path.write_text(SPEC.format(name=f"scale-{runs}", seeds=seeds, last_seed=seeds - 1))
    return path


class Tree:
    """One checkout of plsweep whose commands are timed (``python -m powerlaw_cli`` with it on PYTHONPATH)."""

    def __init__(self, name: str, root: Path, env: dict[str, str]) -> None:
        self.name, self.root = name, root.resolve()
        self.env = {**env, "PYTHONPATH": str(self.root), "COLUMNS": "200"}

    def run(self, *args: str, check: bool = True) -> tuple[float, subprocess.CompletedProcess]:
        """Wall seconds of ``python -m powerlaw_cli ARGS`` as a whole process, and its result."""
        started = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-m", "powerlaw_cli", *args],
            env=self.env,
            cwd=self.root,
            capture_output=True,
            text=True,
        )
        seconds = time.perf_counter() - started
        if check and done.returncode != 0:
            raise RuntimeError(
                f"{self.name}: plsweep {' '.join(args)} exited {done.returncode}:\n{done.stderr[-2000:]}"
            )
        return seconds, done

    def python(self, code: str) -> float:
        """Wall seconds of ``python -c CODE`` with this tree on PYTHONPATH."""
        started = time.perf_counter()
        subprocess.run(
            [sys.executable, "-c", code], env=self.env, cwd=self.root, check=True, capture_output=True
        )
        return time.perf_counter() - started


def interleaved(trees: list[Tree], repeat: int, measure) -> dict[str, list[float]]:
    """``measure(tree)`` for each tree in turn, ``repeat`` rounds (the order flips every round)."""
    out: dict[str, list[float]] = {tree.name: [] for tree in trees}
    for i in range(repeat):
        for tree in trees if i % 2 == 0 else trees[::-1]:
            out[tree.name].append(measure(tree))
    return out


class Report:
    """Rows of (figure, runs, seconds per tree); the ratio is the median of pairwise ratios."""

    def __init__(self, trees: list[Tree]) -> None:
        self.trees, self.rows = trees, []

    def add(self, figure: str, runs: int, samples: dict[str, list[float]], unit: str = "s") -> None:
        row = {
            "figure": figure,
            "runs": runs,
            "unit": unit,
            **{name: statistics.median(values) for name, values in samples.items()},
        }
        names = [tree.name for tree in self.trees]
        if len(names) == 2 and all(samples.get(n) for n in names):
            pairs = [a / b for a, b in zip(samples[names[0]], samples[names[1]], strict=False) if b > 0]
            row["ratio"] = statistics.median(pairs) if pairs else None
        self.rows.append(row)
        print(self.format(row), flush=True)

    def format(self, row: dict) -> str:
        values = "  ".join(f"{t.name} {row.get(t.name, float('nan')):9.3f}" for t in self.trees)
        ratio = f"  ratio {row['ratio']:.3f}" if row.get("ratio") is not None else ""
        return f"{row['figure']:<34} {row['runs']:>7}  {values} {row['unit']}{ratio}"


def start_cluster(folder: Path) -> dict[str, str]:
    """The project's one-node cluster at MaxArraySize 1001 (MaxJobCount 10000); its environment."""
    subprocess.run(
        [
            str(CLUSTER_SCRIPT),
            "start",
            str(folder),
            "--max-array-size",
            "1001",
            "--port-base",
            str(PORT_BASE),
        ],
        check=True,
    )
    return {**os.environ, "SLURM_CONF": str(folder / "slurm.conf")}


def wait_for_queue(env: dict[str, str], name: str, timeout: float) -> float:
    """Seconds until no job named plsweep-NAME is pending or running."""
    started = time.monotonic()
    while True:
        out = subprocess.run(
            ["squeue", "-h", "-r", "-n", f"plsweep-{name}", "-o", "%i"],
            env=env,
            capture_output=True,
            text=True,
        ).stdout
        if not out.strip():
            return time.monotonic() - started
        if time.monotonic() - started > timeout:
            raise TimeoutError(f"sweep {name} still queued after {timeout} s")
        time.sleep(5)


def records(sweep_dir: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((sweep_dir / "runs").glob("*/*.json"))]


def when(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


def per_task_figures(sweep_dir: Path, env: dict[str, str]) -> dict[str, float]:
    """Per-run overhead inside tasks (from the records), task start to first run (sacct), lost, duplicated."""
    by_job: dict[str, list[dict]] = {}
    for record in records(sweep_dir):
        by_job.setdefault(record.get("slurm_job_id") or "?", []).append(record)
    overheads, starts = [], []
    jobs = list(by_job)
    sacct = subprocess.run(
        [
            "sacct",
            "-X",
            "-n",
            "-P",
            "-o",
            "JobID,Start",
            "-j",
            ",".join(sorted({j.split("_")[0] for j in jobs})),
        ],
        env=env,
        capture_output=True,
        text=True,
    ).stdout
    start_of = {}
    for line in sacct.splitlines():
        job, _, start = line.partition("|")
        if start and start not in ("Unknown", "None"):
            start_of[job] = datetime.fromisoformat(start).astimezone(timezone.utc).timestamp()
    for job, rows in by_job.items():
        first = min(when(r["started_at"]) for r in rows)
        last = max(when(r["finished_at"]) for r in rows)
        overheads.append((last - first - sum(r["wall_seconds"] for r in rows)) / len(rows))
        if job in start_of:
            starts.append(first - start_of[job])
    manifest_runs = len(
        json.loads(
            subprocess.run(
                [
                    sys.executable,
                    "-c",
                    "import pyarrow.parquet as pq, json, sys; "
                    "print(json.dumps(pq.read_table(sys.argv[1], columns=['run_id']).column('run_id').to_pylist()))",
                    str(sweep_dir / "manifest.parquet"),
                ],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
        )
    )
    lines: dict[str, int] = {}
    for log in (sweep_dir / "jobs").rglob("*_log.out"):
        for line in log.read_text(errors="replace").splitlines():
            if line.startswith("run ") and ":" in line:
                run_id = line[4:].split(":", 1)[0]
                lines[run_id] = lines.get(run_id, 0) + 1
    return {
        "per_run_overhead_ms": 1000 * statistics.median(overheads),
        "task_start_to_first_run_s": statistics.median(starts) if starts else float("nan"),
        "lost": manifest_runs - sum(len(rows) for rows in by_job.values()),
        "trained_twice": sum(1 for n in lines.values() if n > 1),
    }


def bench_sweep(
    trees: list[Tree], report: Report, n: int, work: Path, env: dict[str, str], repeat: int
) -> None:
    """Launch an ``n``-run sweep on Slurm with each tree, one after the other, then time the commands on it."""
    spec = write_spec(work, n)
    dirs = {}
    launch_seconds = {}
    for tree in trees:  # one sweep at a time: the cluster's two CPUs are the tasks' to share
        out = work / f"{tree.name}-{n}"
        seconds, _ = tree.run("launch", str(spec), "--executor", "slurm", "--out", str(out))
        launch_seconds[tree.name] = [seconds]
        print(f"  {tree.name}: {n} runs submitted in {seconds:.2f} s; waiting for the queue", flush=True)
        print(
            f"  {tree.name}: queue empty after {wait_for_queue(env, f'scale-{n}', 4 * 3600):.0f} s",
            flush=True,
        )
        dirs[tree.name] = out
    report.add("launch (submission)", n, launch_seconds)
    report.add("status", n, interleaved(trees, repeat, lambda t: t.run("status", str(dirs[t.name]))[0]))

    def first_collect(tree: Tree) -> float:
        copy = work / f"copy-{tree.name}"
        if copy.exists():
            shutil.rmtree(copy)
        shutil.copytree(  # hard links: the record files keep the keys (inodes) the workers' shards hold
            dirs[tree.name],
            copy,
            ignore=shutil.ignore_patterns("runs.parquet", "curves.parquet"),
            copy_function=os.link,
        )
        return tree.run("collect", str(copy))[0]

    report.add("collect (first)", n, interleaved(trees, repeat, first_collect))
    for tree in trees:
        tree.run("collect", str(dirs[tree.name]))
    report.add(
        "collect (nothing new)",
        n,
        interleaved(trees, repeat, lambda t: t.run("collect", str(dirs[t.name]))[0]),
    )
    report.add(
        "fit", n, interleaved(trees, repeat, lambda t: t.run("fit", str(dirs[t.name]), check=False)[0])
    )
    startup_code = (
        "import sys; from powerlaw_cli.worker import run_task; run_task(sys.argv[1], 0, int(sys.argv[2]))"
    )

    def startup(tree: Tree) -> float:
        started = time.perf_counter()
        subprocess.run(
            [sys.executable, "-c", startup_code, str(dirs[tree.name]), "0"],
            env=tree.env,
            cwd=tree.root,
            check=True,
            capture_output=True,
        )
        return time.perf_counter() - started

    report.add("task startup (no training)", n, interleaved(trees, repeat, startup))
    figures = {tree.name: per_task_figures(dirs[tree.name], env) for tree in trees}
    for key, unit in (
        ("per_run_overhead_ms", "ms"),
        ("task_start_to_first_run_s", "s"),
        ("lost", "runs"),
        ("trained_twice", "runs"),
    ):
        report.add(key.replace("_", " "), n, {name: [f[key]] for name, f in figures.items()}, unit)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", type=Path, help="another checkout of plsweep, timed side by side")
    parser.add_argument("--runs", default="1000,10000", help="sweep sizes launched on Slurm")
    parser.add_argument("--plan-runs", default="1000,10000,100000", help="sweep sizes planned")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs of each command per tree")
    parser.add_argument("--work", type=Path, default=Path("/tmp/plsweep-bench-scale"), help="scratch folder")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()

    if args.work.exists():
        shutil.rmtree(args.work)
    args.work.mkdir(parents=True)
    env = start_cluster(args.work / "slurm")
    trees = [Tree("this", ROOT, env)] + ([Tree("baseline", args.baseline, env)] if args.baseline else [])
    report = Report(trees)
    print(
        f"# {platform.node()}: {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}, "
        f"trees: {', '.join(f'{t.name}={t.root}' for t in trees)}",
        flush=True,
    )

    for n in [int(x) for x in args.plan_runs.split(",") if x]:
        spec = write_spec(args.work, n)
        report.add(
            "plan",
            n,
            interleaved(
                trees, args.repeat, lambda t, s=spec: t.run("plan", str(s), "--max-array-size", "1001")[0]
            ),
        )

    for n in [int(x) for x in args.runs.split(",") if x]:
        bench_sweep(trees, report, n, args.work, env, args.repeat)
    subprocess.run([str(CLUSTER_SCRIPT), "stop", str(args.work / "slurm")], check=False)
    if args.json:
        args.json.write_text(json.dumps(report.rows, indent=1))


if __name__ == "__main__":
    main()
