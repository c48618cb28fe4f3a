"""What the tests share: the tiny proxy of the test sweeps (the smallest model that still learns: a run
takes seconds on a CPU), and reading a sweep directory's trusted records."""

from __future__ import annotations

from typing import Any

from powerlaw_cli.store import SweepDir

TINY_MODEL = """[model]
width = 32
depth = 2
n_heads = 2
seq_len = 16
base_width = 32
"""

TINY_WSD = (
    TINY_MODEL
    + """[data]
val_tokens = 1024
[schedule]
name = "wsd"
warmup_tokens = 256
decay_fraction = 0.25
"""
)
"""The tiny model on the synthetic language with a short WSD schedule: the body of the test sweeps."""


def trusted_records(sweep_dir: SweepDir) -> dict[str, dict[str, Any]]:
    """run_id -> record of every record file the store trusts (parses, belongs to the sweep, fits the schema)."""
    out = {}
    for run_id, (path, _) in sweep_dir.record_files().items():
        record = sweep_dir.read_record(path)
        if isinstance(record, dict):
            out[run_id] = record
    return out


def record_paths(sweep_dir: SweepDir) -> list:
    """Every record file of the sweep directory, sorted."""
    return sorted(path for path, _ in sweep_dir.record_files().values())
