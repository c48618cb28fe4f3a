"""A plain PyTorch trainer that plsweep can sweep: the template to copy. It does not import plsweep.

The contract (docs/trainers.md), all through four environment variables:
  PLSWEEP_SETTINGS  a JSON file of the run's settings: {"optimizer": {"lr": ...}, "training": {...},
                    "model": {...}, "params": {...}, "run_id": ...}
  PLSWEEP_RUN_DIR   this run's own folder, the same after a requeue: checkpoint there and resume
  PLSWEEP_RESULT    write the result here, as JSON, once the run is finished
  PLSWEEP_RUN_ID    the run's id
On SIGTERM (preemption, requeue, the time limit) save a checkpoint and exit: plsweep starts the script
again in the same folder. The model is a tiny GRU language model on a seeded synthetic Markov language,
so that the example needs no data; put your model, data and optimizer here instead.
"""

from __future__ import annotations

import json
import math
import os
import signal
import sys
import time
from pathlib import Path

import torch
from torch import nn

settings = json.loads(Path(os.environ["PLSWEEP_SETTINGS"]).read_text())
run_dir = Path(os.environ["PLSWEEP_RUN_DIR"])
lr = settings["optimizer"]["lr"]
batch_size = settings["training"]["batch_size"]
tokens = settings["training"]["tokens"]
seed = settings["training"]["seed"]
seq_len = settings["model"]["seq_len"]
width = settings["model"]["width"]
vocab = settings["params"].get("vocab", 64)
warmup = settings["params"].get("warmup_fraction", 0.1)
steps = math.ceil(tokens / (batch_size * seq_len))

stop = False


def request_stop(signum, frame):
    global stop
    stop = True


signal.signal(signal.SIGTERM, request_stop)
torch.set_num_threads(1)

# A synthetic language: next-token probabilities from a fixed, seeded Zipf-like transition table.
language = torch.Generator().manual_seed(1234)
ranks = torch.arange(1, vocab + 1, dtype=torch.float32) ** -1.2
table = torch.stack([ranks[torch.randperm(vocab, generator=language)] for _ in range(vocab)])
table = table / table.sum(1, keepdim=True)


def batch(step: int, size: int, stream: int) -> torch.Tensor:
    """Sequences of step ``step`` (a pure function of seed and step: a resumed run sees the same batches)."""
    g = torch.Generator().manual_seed(stream * 1_000_003 + step)
    x = torch.empty(size, seq_len + 1, dtype=torch.long)
    x[:, 0] = torch.randint(vocab, (size,), generator=g)
    for t in range(seq_len):
        x[:, t + 1] = torch.multinomial(table[x[:, t]], 1, generator=g).squeeze(1)
    return x


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.rnn = nn.GRU(width, width, batch_first=True)
        self.out = nn.Linear(width, vocab)

    def forward(self, x):
        return self.out(self.rnn(self.embed(x))[0])


def loss_of(model, x):
    logits = model(x[:, :-1])
    return nn.functional.cross_entropy(logits.reshape(-1, vocab), x[:, 1:].reshape(-1))


def lr_at(step: int) -> float:
    """Linear warmup, then cosine decay to 10%."""
    warm = max(1, round(warmup * steps))
    if step < warm:
        return lr * (step + 1) / warm
    return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, steps - warm))))


torch.manual_seed(seed)
model = Model()
optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
checkpoint = run_dir / "checkpoint.pt"
step, curve = 0, []
if checkpoint.exists():
    state = torch.load(checkpoint, weights_only=False)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    step, curve = state["step"], state["curve"]
    print(f"resumed from step {step}", flush=True)


def save():
    tmp = checkpoint.with_suffix(".tmp")
    torch.save(
        {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step, "curve": curve}, tmp
    )
    os.replace(tmp, checkpoint)  # atomic: a kill while saving leaves the previous checkpoint


last_save = time.monotonic()
status, diverged_at = "ok", None
while step < steps:
    if stop:
        save()
        print(f"stopped at step {step} after saving a checkpoint", flush=True)
        sys.exit(143)
    for group in optimizer.param_groups:
        group["lr"] = lr_at(step)
    loss = loss_of(model, batch(step, batch_size, seed))
    if not math.isfinite(loss.item()) or loss.item() > 3 * math.log(vocab):
        status, diverged_at = "diverged", step * batch_size * seq_len
        break
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    step += 1
    curve.append(
        {
            "step": step,
            "tokens": step * batch_size * seq_len,
            "lr": lr_at(step - 1),
            "train_loss": loss.item(),
        }
    )
    if time.monotonic() - last_save > 60:
        save()
        last_save = time.monotonic()

result = {"status": status, "curve": curve, "tokens_seen": step * batch_size * seq_len}
if status == "ok":
    with torch.no_grad():
        result["final_val_loss"] = loss_of(model, batch(0, 64, 999_999)).item()
    result["params_non_embedding"] = sum(
        p.numel() for n, p in model.named_parameters() if not n.startswith("embed")
    )
else:
    result["diverged_at_tokens"] = diverged_at
Path(os.environ["PLSWEEP_RESULT"]).write_text(json.dumps(result))
