"""Shared fixtures: the one-node Slurm cluster, and one real tiny local sweep (copied per test)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from slurm_cluster import slurm_cluster  # noqa: F401  (the session-scoped Slurm cluster fixture)
from tiny import TINY_WSD

from powerlaw_cli.launch import launch
from powerlaw_cli.spec import load_sweep
from powerlaw_cli.sweep_settings import LaunchConfig

TINY_SWEEP = (
    """
[sweep]
name = "fixture"
"""
    + TINY_WSD
    + """[training]
eval_every_tokens = 1024
[grid]
optimizer.lr = { start = 1e-3, ratio = 4, num = 4 }
training.batch_size = [8, 16]
training.tokens = [2048, 4096]
"""
)


@pytest.fixture(scope="session")
def tiny_spec(tmp_path_factory) -> Path:
    """A sweep file of 16 tiny runs (4 LRs x 2 batch sizes x 2 budgets) on the synthetic language."""
    path = tmp_path_factory.mktemp("spec") / "fixture.toml"
    path.write_text(TINY_SWEEP)
    return path


@pytest.fixture(scope="session")
def _tiny_sweep_dir(tiny_spec, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sweeps") / "fixture"
    launch(load_sweep(tiny_spec), out, "local", LaunchConfig(workers=2))
    return out


@pytest.fixture
def tiny_sweep_dir(_tiny_sweep_dir, tmp_path) -> Path:
    """A private copy of a finished real tiny sweep (launched once per session with the local executor)."""
    copy = tmp_path / "fixture"
    shutil.copytree(_tiny_sweep_dir, copy)
    copy.chmod(0o700)
    return copy
