"""Hugging Face ``transformers``: a GPT-2 trained from scratch by its ``Trainer``, swept by plsweep as an entry
point (``entry_point = "hf_train:train"`` in sweep.toml). Nothing is downloaded: the config is built here
and the data is a seeded synthetic Markov language; put your model, tokenizer and data set here instead.

plsweep calls ``train(settings, run_dir)`` in its worker process, with the run's settings and its own folder
(the same folder after a requeue: the Trainer's checkpoints there are resumed), and records what it returns.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for the hub: everything is built here

import torch  # noqa: E402
from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments  # noqa: E402
from transformers.trainer_utils import get_last_checkpoint  # noqa: E402


class MarkovTokens(torch.utils.data.Dataset):
    """``n`` sequences of a seeded Zipf-like Markov language over ``vocab`` tokens."""

    def __init__(self, n: int, seq_len: int, vocab: int, seed: int, zipf: float = 1.2):
        language = torch.Generator().manual_seed(1234)
        ranks = torch.arange(1, vocab + 1, dtype=torch.float32) ** -zipf
        table = torch.stack([ranks[torch.randperm(vocab, generator=language)] for _ in range(vocab)])
        table = table / table.sum(1, keepdim=True)
        g = torch.Generator().manual_seed(seed)
        x = torch.empty(n, seq_len, dtype=torch.long)
        x[:, 0] = torch.randint(vocab, (n,), generator=g)
        for t in range(1, seq_len):
            x[:, t] = torch.multinomial(table[x[:, t - 1]], 1, generator=g).squeeze(1)
        self.x = x

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.x[i], "labels": self.x[i]}


def train(settings: dict, run_dir: Path) -> dict:
    """Train one run; the result plsweep records (docs/trainers.md)."""
    lr = settings["optimizer"]["lr"]
    batch_size = settings["training"]["batch_size"]
    seq_len = settings["model"]["seq_len"]
    width = settings["model"]["width"]
    params = settings["params"]
    steps = math.ceil(settings["training"]["tokens"] / (batch_size * seq_len))
    config = GPT2Config(
        vocab_size=params["vocab"],
        n_positions=seq_len,
        n_embd=width,
        n_layer=settings["model"]["depth"],
        n_head=params["heads"],
    )
    torch.manual_seed(settings["training"]["seed"])
    model = GPT2LMHeadModel(config)
    args = TrainingArguments(
        output_dir=str(run_dir),
        max_steps=steps,
        per_device_train_batch_size=batch_size,
        per_device_eval_batch_size=64,
        learning_rate=lr,
        lr_scheduler_type="cosine",
        warmup_steps=max(1, steps // 10),
        weight_decay=0.0,
        logging_steps=1,
        save_strategy="steps" if params["save_steps"] else "no",  # 0: no checkpoints (a test's tiny runs)
        save_steps=params["save_steps"] or 1,
        save_total_limit=1,
        report_to=[],
        use_cpu=True,
        seed=settings["training"]["seed"],
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=MarkovTokens(
            steps * batch_size, seq_len, params["vocab"], settings["training"]["seed"], params["zipf"]
        ),
        eval_dataset=MarkovTokens(64, seq_len, params["vocab"], 999_999, params["zipf"]),
    )
    trainer.train(resume_from_checkpoint=get_last_checkpoint(str(run_dir)))
    val_loss = trainer.evaluate()["eval_loss"]
    tokens_per_step = batch_size * seq_len
    curve = [
        {
            "step": row["step"],
            "tokens": row["step"] * tokens_per_step,
            "lr": row["learning_rate"],
            "train_loss": row["loss"],
        }
        for row in trainer.state.log_history
        if "loss" in row and "learning_rate" in row
    ]
    if not math.isfinite(val_loss):
        return {"status": "diverged", "final_val_loss": None, "curve": curve}
    blocks = sum(p.numel() for name, p in model.named_parameters() if ".h." in name or "ln_f" in name)
    return {
        "final_val_loss": val_loss,
        "tokens_seen": steps * tokens_per_step,
        "params_non_embedding": blocks,
        "curve": curve,
    }
