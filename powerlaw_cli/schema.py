"""The result schema: one typed table of runs and one of loss curves, kept in this one place.

``runs.parquet`` has one row per run, ``curves.parquet`` one row per logged step. The README's
schema table is generated from ``RUN_COLUMNS`` and ``CURVE_COLUMNS``. Units: batch sizes in
sequences, token counts in tokens, LR is the base LR (width == base_width) before muP multipliers,
losses in nats per token.
"""

from __future__ import annotations

import pyarrow as pa

STATUSES = ("ok", "diverged", "failed")
"""ok: trained to the end; diverged: stopped early by a non-finite or exploding loss (a result);
failed: an error stopped it (not a result; ``--retry-failed`` reruns it)."""

_TIME = pa.timestamp("us", tz="UTC")

RUN_COLUMNS: list[tuple[str, pa.DataType, str]] = [
    ("run_id", pa.string(), "hash of the settings that change the result"),
    ("sweep", pa.string(), "sweep name"),
    ("sweep_hash", pa.string(), "hash of the sweep file the run was launched from"),
    ("status", pa.string(), "ok | diverged | failed"),
    ("error", pa.string(), "failed: the error, one line"),
    ("parametrization", pa.string(), "mup | sp"),
    ("width", pa.int64(), "d_model"),
    ("depth", pa.int64(), "transformer blocks"),
    ("n_heads", pa.int64(), "attention heads"),
    ("base_width", pa.int64(), "muP base width"),
    ("seq_len", pa.int64(), "tokens per sequence"),
    ("vocab_size", pa.int64(), "vocabulary size"),
    ("params_non_embedding", pa.int64(), "parameters without token embedding, positions and readout"),
    ("batch_size", pa.int64(), "sequences per step"),
    ("batch_tokens", pa.int64(), "tokens per step = batch_size * seq_len"),
    ("tokens", pa.int64(), "planned training tokens (the budget)"),
    ("tokens_seen", pa.int64(), "tokens actually trained on (less if diverged)"),
    ("steps", pa.int64(), "optimizer steps taken"),
    ("lr", pa.float64(), "base peak LR (power: the cap lr_max)"),
    ("schedule", pa.string(), "schedule name"),
    ("warmup_tokens", pa.int64(), "warmup length, tokens"),
    ("decay_tokens", pa.int64(), "decay length, tokens (0 when the schedule has none)"),
    ("decay_shape", pa.string(), "decay shape"),
    ("weight_decay", pa.float64(), "AdamW weight decay"),
    ("averaging", pa.string(), "weight averaging kind"),
    ("seed", pa.int64(), "training seed"),
    ("data", pa.string(), "data source and path"),
    ("final_val_loss", pa.float64(), "validation loss of the final raw weights, nats/token (null unless ok)"),
    ("final_val_loss_averaged", pa.float64(), "validation loss of the averaged weights (null without averaging)"),
    ("final_train_loss", pa.float64(), "train loss of the last step"),
    ("diverged_at_tokens", pa.int64(), "diverged: tokens seen when it was stopped"),
    ("flops", pa.float64(), "training FLOPs spent: flops_per_token * tokens_seen"),
    ("wall_seconds", pa.float64(), "wall-clock seconds of training (over all restarts)"),
    ("resumes", pa.int64(), "times the run resumed from a checkpoint"),
    ("device", pa.string(), "cpu | cuda:N"),
    ("trunk_id", pa.string(), "id of the shared WSD trunk or WSD-S main branch (null when trained alone)"),
    ("slurm_job_id", pa.string(), "Slurm job id (ARRAY_TASK form), null outside Slurm"),
    ("host", pa.string(), "host name"),
    ("started_at", _TIME, "UTC start of training"),
    ("finished_at", _TIME, "UTC end of training"),
    ("plsweep_version", pa.string(), "plsweep version"),
    ("torch_version", pa.string(), "torch version"),
    ("config", pa.string(), "the run's full settings as JSON {section: {field: value}}"),
]

CURVE_COLUMNS: list[tuple[str, pa.DataType, str]] = [
    ("run_id", pa.string(), "the run"),
    ("step", pa.int64(), "optimizer steps done"),
    ("tokens", pa.int64(), "tokens seen after this step"),
    ("lr", pa.float64(), "base LR used for this step"),
    ("train_loss", pa.float64(), "train loss of this step"),
    ("val_loss", pa.float64(), "validation loss (null except at evaluation points)"),
    ("val_loss_averaged", pa.float64(), "validation loss of the averaged weights (null except at evaluations with averaging)"),
]

RUNS_SCHEMA = pa.schema([pa.field(name, dtype) for name, dtype, _ in RUN_COLUMNS])
CURVES_SCHEMA = pa.schema([pa.field(name, dtype) for name, dtype, _ in CURVE_COLUMNS])
