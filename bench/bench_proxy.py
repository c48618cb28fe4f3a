"""Benchmark plsweep's proxy training step on this machine's CPU, against a plain PyTorch GPT.

Run by hand, never by the test suite::

    python bench/bench_proxy.py --quick              # 2 shapes, ~1 minute
    python bench/bench_proxy.py --json bench.json    # 4 shapes, a few minutes

For every shape and thread count (1 and all cores, ``torch.set_num_threads``) it measures, side by side:

* plsweep: ``Trajectory.train_step()`` (LR from the schedule, param groups, micro-batching loop,
  grad clip, AdamW, curve bookkeeping, a fresh batch from the data source);
* plain: the same model written nanoGPT-style in this file, with a plain loop over batches already
  in memory (AdamW with nanoGPT's two groups, grad clip): what the machinery costs is the ratio;
* matmul: a large fp32 ``torch.mm``, this machine's peak, for the model FLOP utilisation (MFU);
* one evaluation pass over the validation set, and one ``train_batch`` of the data source.

The machine is shared and its load drifts, so absolute figures wander from run to run; the
measurements are interleaved (plsweep, plain, matmul, ... then plain before plsweep in the next round)
and medians of several rounds are reported, so drift hits both sides alike. Trust the ratios more
than the absolute figures. FLOPs are ``GPT.flops_per_token`` (6N + readout + attention, PaLM's
convention); MFU = achieved FLOP/s / the matmul FLOP/s measured with the same thread count.

When another process keeps the other cores busy, OpenMP threads that spin while waiting for a
descheduled partner can make a multi-threaded step of a small model 10-50x slower than one thread
(a large matmul barely notices). The header shows ``OMP_WAIT_POLICY``; compare with
``OMP_WAIT_POLICY=PASSIVE python bench/bench_proxy.py`` (it must be set before torch starts).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from rich.console import Console
from rich.table import Table

from powerlaw_cli.config import ModelConfig, RunConfig
from powerlaw_cli.data import load_source
from powerlaw_cli.runner import _schedule
from powerlaw_cli.train import Trajectory


@dataclass(frozen=True)
class Shape:
    """One proxy shape to time; the rest of the run config keeps plsweep's defaults (base_width 128)."""

    name: str
    width: int
    depth: int
    n_heads: int
    seq_len: int
    batch_size: int
    micro_batch_size: int = 0  # 0: the whole batch in one forward/backward

    def run_config(self, data: str) -> RunConfig:
        return RunConfig().replace(
            {
                "model.width": self.width,
                "model.depth": self.depth,
                "model.n_heads": self.n_heads,
                "model.seq_len": self.seq_len,
                "training.batch_size": self.batch_size,
                "training.micro_batch_size": self.micro_batch_size,
                "training.device": "cpu",
                # A budget far beyond the benchmark keeps the WSD schedule in its stable phase: a real LR, no decay to 0.
                "training.tokens": 10**12,
                "data.source": data,
            }
        )


SHAPES = {
    "S": Shape("S", width=64, depth=2, n_heads=4, seq_len=64, batch_size=16),
    "M": Shape("M", width=128, depth=4, n_heads=4, seq_len=128, batch_size=32),
    "L": Shape("L", width=256, depth=4, n_heads=4, seq_len=128, batch_size=32),
    "M/mb8": Shape("M/mb8", width=128, depth=4, n_heads=4, seq_len=128, batch_size=32, micro_batch_size=8),
}


@dataclass(frozen=True)
class Plan:
    """How much to measure: ``--quick`` keeps the run under ~1 minute, the full one under ~5."""

    shapes: tuple[str, ...]
    rounds: int  # interleaved rounds per (shape, threads); medians over these
    eval_rounds: int  # rounds that also time an evaluation pass (seconds each for the larger shapes)
    block_seconds: float  # each timed block repeats its call to last about this long
    matmul_size: int


QUICK = Plan(shapes=("S", "M"), rounds=4, eval_rounds=1, block_seconds=0.2, matmul_size=2048)
FULL = Plan(shapes=("S", "M", "L", "M/mb8"), rounds=7, eval_rounds=2, block_seconds=0.3, matmul_size=2048)


# ---------------------------------------------------------------- the plain PyTorch model (nanoGPT style)
# The same function as powerlaw_cli.model.GPT, written as one would by hand. Module names match
# plsweep's, so its state dict loads as is and the two start from identical weights; `check_same_model`
# verifies they compute the same loss, so the step-time ratio compares like with like.


class PlainRMSNorm(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * self.weight


def rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate (x[i], x[i + hs/2]) of x (B, nh, T, hs) by cos, sin (T, hs/2): GPT-NeoX layout."""
    x1, x2 = x.chunk(2, dim=-1)  # (B, nh, T, hs/2)
    return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)


class PlainAttention(nn.Module):
    def __init__(self, width: int, n_heads: int, scale: float) -> None:
        super().__init__()
        self.n_heads, self.scale = n_heads, scale
        self.qkv = nn.Linear(width, 3 * width, bias=False)
        self.proj = nn.Linear(width, width, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor | None, sin: torch.Tensor | None) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)  # (B, T, C) each
        q, k, v = (
            t.view(B, T, self.n_heads, C // self.n_heads).transpose(1, 2) for t in (q, k, v)
        )  # (B, nh, T, hs)
        if cos is not None:
            q, k = rope(q, cos, sin), rope(k, cos, sin)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=self.scale)  # (B, nh, T, hs)
        return self.proj(y.transpose(1, 2).reshape(B, T, C))


class PlainMLP(nn.Module):
    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.fc = nn.Linear(width, hidden, bias=False)
        self.proj = nn.Linear(hidden, width, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(F.gelu(self.fc(x)))


class PlainBlock(nn.Module):
    def __init__(self, cfg: ModelConfig, attn_scale: float) -> None:
        super().__init__()
        self.ln_1, self.attn = PlainRMSNorm(cfg.width), PlainAttention(cfg.width, cfg.n_heads, attn_scale)
        self.ln_2, self.mlp = PlainRMSNorm(cfg.width), PlainMLP(cfg.width, round(cfg.mlp_ratio * cfg.width))

    def forward(self, x: torch.Tensor, cos: torch.Tensor | None, sin: torch.Tensor | None) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), cos, sin)
        return x + self.mlp(self.ln_2(x))


class PlainGPT(nn.Module):
    """Pre-norm GPT, no biases, untied readout, rotary or learned positions.

    ``attn_scale`` and ``logit_scale`` are muP's two scalars (q.k scale, readout multiplier 1/m), taken
    from plsweep's model so that both compute the same function; a hand-written sp model has them too
    (1/sqrt(hs) and 1).
    """

    def __init__(self, cfg: ModelConfig, attn_scale: float, logit_scale: float) -> None:
        super().__init__()
        self.logit_scale = logit_scale
        self.wte = nn.Embedding(cfg.vocab_size, cfg.width)
        self.wpe = nn.Embedding(cfg.seq_len, cfg.width) if cfg.positions == "learned" else None
        self.blocks = nn.ModuleList(PlainBlock(cfg, attn_scale) for _ in range(cfg.depth))
        self.ln_f = PlainRMSNorm(cfg.width)
        self.lm_head = nn.Linear(cfg.width, cfg.vocab_size, bias=False)
        inv_freq = 1.0 / 10000.0 ** (torch.arange(0, cfg.head_dim, 2).float() / cfg.head_dim)  # (hs/2,)
        angles = torch.outer(torch.arange(cfg.seq_len).float(), inv_freq)  # (T, hs/2)
        self.register_buffer("rope_cos", angles.cos(), persistent=False)
        self.register_buffer("rope_sin", angles.sin(), persistent=False)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        B, T = idx.shape
        x = self.wte(idx)  # (B, T, C)
        cos = sin = None
        if self.wpe is not None:
            x = x + self.wpe(torch.arange(T))
        else:
            cos, sin = self.rope_cos[:T], self.rope_sin[:T]
        for block in self.blocks:
            x = block(x, cos, sin)
        return self.lm_head(self.ln_f(x)) * self.logit_scale  # (B, T, V)

    def loss(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logits = self(idx)
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))


class PlainTrainer:
    """nanoGPT's loop: AdamW with decay / no-decay groups and a constant LR, grad clip 1, cycled batches."""

    def __init__(
        self, model: PlainGPT, batches: list[tuple[torch.Tensor, torch.Tensor]], run: RunConfig
    ) -> None:
        self.model, self.batches, self.step = model, batches, 0
        opt = run.optimizer
        params = list(model.parameters())
        groups = [
            {"params": [p for p in params if p.dim() >= 2], "weight_decay": opt.weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
        ]
        # fused/foreach left at their defaults, as nanoGPT on a CPU and as plsweep: the same AdamW kernel.
        self.optimizer = torch.optim.AdamW(groups, lr=opt.lr, betas=(opt.beta1, opt.beta2), eps=opt.eps)
        self.grad_clip = opt.grad_clip

    def train_step(self) -> float:
        x, y = self.batches[self.step % len(self.batches)]
        loss = self.model.loss(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        self.optimizer.step()
        # Free the gradients right after the update (nanoGPT's place; plsweep frees them at the start of
        # the next step, the same point in steady state), so both forwards find the same free memory.
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        return loss.item()  # a host sync, like plsweep's float(total)


def check_same_model(traj: Trajectory, plain: PlainGPT, batch: tuple[torch.Tensor, torch.Tensor]) -> float:
    """Loss of both models on one batch; raise if they differ, as the ratio would then be meaningless."""
    with torch.no_grad():
        ours, theirs = float(traj.model.loss(*batch)), float(plain.loss(*batch))
    if not math.isclose(ours, theirs, rel_tol=1e-5):
        raise RuntimeError(f"plain model differs from plsweep's: loss {theirs} vs {ours}")
    return ours


# ---------------------------------------------------------------- timing


def seconds_per_call(fn: Callable[[], object], block_seconds: float, min_calls: int = 1) -> float:
    """Mean seconds per call of ``fn``, called until ``block_seconds`` have passed (and ``min_calls`` made).

    A time bound rather than a fixed count: under contention one call can take 50x its usual time,
    and a count calibrated beforehand would then blow the run's time budget.
    """
    calls, start = 0, time.perf_counter()
    while True:
        fn()
        calls += 1
        elapsed = time.perf_counter() - start
        if elapsed >= block_seconds and calls >= min_calls:
            return elapsed / calls


def median(values: list[float]) -> float:
    return statistics.median(values)


def bench_shape(
    shape: Shape, threads: list[int], plan: Plan, data: str, log: Callable[[str], None]
) -> list[dict]:
    """Interleaved rounds of plsweep step, plain step, matmul, data batch (and eval) at each thread count."""
    run = shape.run_config(data)
    source = load_source(run.data, run.model.vocab_size, run.model.seq_len)
    cpu = torch.device("cpu")
    traj = Trajectory(run, source, _schedule(run), cpu)
    # The plain loop cycles through batches already in memory (same distribution, no data pipeline).
    batches = [source.train_batch(1, step, shape.batch_size) for step in range(8)]
    plain_model = PlainGPT(run.model, traj.model.attn_scale, 1.0 / traj.model.m)
    plain_model.load_state_dict(traj.model.state_dict())
    plain = PlainTrainer(plain_model, batches, run)
    initial_loss = check_same_model(traj, plain_model, batches[0])
    a = torch.randn(plan.matmul_size, plan.matmul_size)
    b = torch.randn(plan.matmul_size, plan.matmul_size)
    matmul_flop = 2 * plan.matmul_size**3
    data_steps = itertools.count(10**6)  # steps the training run never reaches: fresh batches each call
    flops_per_token = traj.model.flops_per_token
    batch_tokens = run.batch_tokens
    rows = []
    for n_threads in threads:
        torch.set_num_threads(n_threads)
        # Warm-up: first calls at a thread count pay for allocations, oneDNN primitive creation, thread pools.
        for fn in (
            traj.train_step,
            plain.train_step,
            traj.train_step,
            plain.train_step,
            lambda: torch.mm(a, b),
        ):
            fn()
        samples: dict[str, list[float]] = {"plsweep": [], "plain": [], "matmul": [], "data": [], "eval": []}
        steps = {"plsweep": traj.train_step, "plain": plain.train_step}
        for r in range(plan.rounds):
            # ABBA order: whatever the first block of a round suffers (or gains), both sides get it equally.
            for name in ("plsweep", "plain") if r % 2 == 0 else ("plain", "plsweep"):
                samples[name].append(seconds_per_call(steps[name], plan.block_seconds))
            samples["matmul"].append(seconds_per_call(lambda: torch.mm(a, b), plan.block_seconds / 2))
            samples["data"].append(
                seconds_per_call(
                    lambda: source.train_batch(run.training.seed, next(data_steps), shape.batch_size), 0.02, 5
                )
            )
            if r < plan.eval_rounds:
                samples["eval"].append(seconds_per_call(traj.evaluate, 0.0))
        step_ours, step_plain = median(samples["plsweep"]), median(samples["plain"])
        peak = matmul_flop / median(samples["matmul"])
        ratios = [o / p for o, p in zip(samples["plsweep"], samples["plain"], strict=True)]
        row = {
            "shape": shape.name,
            **asdict(shape),
            "threads": n_threads,
            "params_non_embedding": traj.model.params_non_embedding,
            "flops_per_token": flops_per_token,
            "batch_tokens": batch_tokens,
            "initial_loss": initial_loss,
            "step_seconds": step_ours,
            "plain_step_seconds": step_plain,
            "tokens_per_second": batch_tokens / step_ours,
            "plain_tokens_per_second": batch_tokens / step_plain,
            "step_ratio": median(ratios),
            "step_ratio_min": min(ratios),
            "step_ratio_max": max(ratios),
            "achieved_gflops": flops_per_token * batch_tokens / step_ours / 1e9,
            "matmul_gflops": peak / 1e9,
            "mfu": flops_per_token * batch_tokens / step_ours / peak,
            "plain_mfu": flops_per_token * batch_tokens / step_plain / peak,
            "data_seconds": median(samples["data"]),
            "data_fraction": median(samples["data"]) / step_ours,
            "eval_seconds": median(samples["eval"]),
            "eval_fraction": median(samples["eval"]) / step_ours,
            "eval_tokens": source.val_sequences * run.model.seq_len,
            "samples": samples,
        }
        rows.append(row)
        log(
            f"{shape.name:>6} x{n_threads}: {row['tokens_per_second']:8.0f} tok/s, "
            f"ratio {row['step_ratio']:.3f}, MFU {row['mfu']:.1%}"
        )
    return rows


# ---------------------------------------------------------------- output


def results_table(rows: list[dict]) -> Table:
    table = Table(title="plsweep proxy step on this CPU (medians of interleaved rounds)")
    columns = {  # header: help for the caption; the first three left-aligned
        "thr": "torch threads",
        "shape": "",
        "W/D/T/B": "width/depth/seq_len/batch",
        "tok/s": "plsweep train_step",
        "plain tok/s": "the plain loop",
        "ratio": "plsweep / plain step time",
        "range": "of the per-round ratios",
        "GFLOP/s": "plsweep, achieved",
        "peak": "matmul GFLOP/s",
        "MFU": "",
        "data": "train_batch / step",
        "eval": "eval pass, in steps",
    }
    for i, column in enumerate(columns):
        table.add_column(column, justify="left" if i < 3 else "right", no_wrap=True)
    for r in rows:
        micro = f" mb{r['micro_batch_size']}" if r["micro_batch_size"] else ""
        table.add_row(
            str(r["threads"]),
            r["shape"],
            f"{r['width']}/{r['depth']}/{r['seq_len']}/{r['batch_size']}{micro}",
            f"{r['tokens_per_second']:,.0f}",
            f"{r['plain_tokens_per_second']:,.0f}",
            f"{r['step_ratio']:.3f}",
            f"{r['step_ratio_min']:.2f}-{r['step_ratio_max']:.2f}",
            f"{r['achieved_gflops']:.1f}",
            f"{r['matmul_gflops']:.1f}",
            f"{r['mfu']:.1%}",
            f"{r['data_fraction']:.2%}",
            f"{r['eval_fraction']:.1f}",
        )
    return table


def scaling_lines(rows: list[dict], threads: list[int]) -> list[str]:
    """Speed-up of all cores over one thread, per shape and for the matmul peak."""
    if len(threads) < 2:
        return []
    lo, hi = min(threads), max(threads)
    by_key = {(r["shape"], r["threads"]): r for r in rows}
    lines = []
    for shape in dict.fromkeys(r["shape"] for r in rows):
        one, many = by_key.get((shape, lo)), by_key.get((shape, hi))
        if one and many:
            lines.append(
                f"{shape}: {many['tokens_per_second'] / one['tokens_per_second']:.2f}x tokens/s, "
                f"matmul {many['matmul_gflops'] / one['matmul_gflops']:.2f}x"
            )
    return [f"{hi} threads over {lo}: " + "; ".join(lines)]


def environment() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        names = [
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        # How idle OpenMP threads wait: on a shared machine it decides whether more threads help (see docstring).
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "(unset)"),
        "load_average_start": os.getloadavg(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 shapes, fewer rounds: about 1 minute")
    parser.add_argument(
        "--json", type=Path, metavar="PATH", help="also write every figure (and raw samples) here"
    )
    parser.add_argument(
        "--threads",
        default=f"1,{os.cpu_count() or 1}",
        help="comma-separated thread counts (default: 1 and all cores)",
    )
    parser.add_argument(
        "--data", choices=("synthetic", "stdlib"), default="synthetic", help="plsweep's data source"
    )
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL
    threads = sorted({int(t) for t in args.threads.split(",")})
    console = Console()
    if not console.is_terminal:
        console = Console(width=150)  # piped to a file: keep the table's columns whole
    env = environment()
    console.print(
        f"[bold]plsweep bench[/]: {env['cpu']}, {env['cpu_count']} cores, torch {env['torch']}, "
        f"threads {threads}, data {args.data}, OMP_WAIT_POLICY {env['omp_wait_policy']}, "
        f"load average {env['load_average_start'][0]:.2f}"
    )
    started = time.perf_counter()
    rows = []
    for name in plan.shapes:
        rows += bench_shape(
            SHAPES[name], threads, plan, args.data, lambda line: console.print(line, style="dim")
        )
    env["load_average_end"] = os.getloadavg()
    env["wall_seconds"] = time.perf_counter() - started
    console.print(results_table(rows))
    for line in scaling_lines(rows, threads):
        console.print(line)
    console.print(
        "step ratio = plsweep step time / plain step time (median of per-round ratios, min-max in brackets); "
        "MFU = flops_per_token x tokens/s / matmul GFLOP/s at the same thread count; "
        f"matmul = fp32 torch.mm {plan.matmul_size}^2; data = one train_batch; eval = one pass over the "
        f"validation set ({rows[0]['eval_tokens']:,} tokens for {rows[0]['shape']}), in plsweep steps. "
        f"Load average {env['load_average_start'][0]:.2f} -> {env['load_average_end'][0]:.2f}; "
        f"{env['wall_seconds']:.0f} s.",
        style="dim",
    )
    if args.json:
        report = {
            "environment": env,
            "plan": asdict(plan),
            "argv": sys.argv,
            "data": args.data,
            "results": rows,
        }
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        console.print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
