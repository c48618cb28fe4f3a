"""The muP GPT proxy: a pre-norm decoder-only transformer, auditable against muP line by line.

Architecture: token embedding (+ learned absolute positions, or rotary on q/k), ``depth`` blocks of
RMSNorm -> causal self-attention -> residual add, RMSNorm -> GELU MLP -> residual add, a final RMSNorm
and an untied linear readout. No biases anywhere: the only 1-D parameters are the norm gains.

Parametrizations, with m = width / base_width (``cfg.width_multiplier``):

=====================  ==========================================  ============================
parameter              mup (Tensor Programs V, Adam)               sp (standard)
=====================  ==========================================  ============================
token/pos embedding    init init_std, LR x1, decay lr * wd,        init init_std, LR x1,
                       output x embedding_multiplier (constant)    decay lr * wd, same multiplier
hidden matrices        init init_std / sqrt(m), LR x 1/m           init init_std, LR x1
(qkv, attn proj,       (output projections also / sqrt(2 depth))   (same / sqrt(2 depth))
MLP fc, MLP proj)      decay: see below                            decay lr * wd
norm gains             init 1, LR x1, no weight decay              same
readout                init init_std, LR x1, logits x             init init_std, LR x1, logits
                       output_multiplier / m, decay lr * wd        x output_multiplier, decay lr * wd
attention scores       q.k * sqrt(base_head_dim) / head_dim        q.k / sqrt(head_dim)
=====================  ==========================================  ============================

Weight decay is AdamW's: a step multiplies a matrix by 1 - (its group's LR) x (its group's decay), so
"decay lr * wd" is that per-step fraction with lr the schedule's base LR and wd ``weight_decay``.
muP's hidden matrices have two rules (``optimizer.weight_decay_rule``):

- ``coupled``: the group's decay is wd, so the per-step decay is lr / m * wd and a wider model decays
  less per step (8x less at m = 8). What AdamW on muP's per-group LRs does by itself; the Power
  paper's code (IBM dolomite-engine) does this. plsweep's only rule before the setting existed.
- ``independent``: the group's decay is wd * m, so the per-step decay is lr * wd at every width, as in
  microsoft/mup's ``MuAdamW`` (weight decay x width_mult on matrix-like parameters). Wang & Aitchison
  (arXiv 2405.13698) argue that AdamW's weights are an EMA of updates over 1 / (lr * wd) steps and that
  this timescale should not change with width; Kosson et al. (arXiv 2510.19093) find that LR transfer
  over long training needs this form.

Both rules give sp's decay at m = 1, and for sp (m = 1 everywhere) they are the same.

The readout choice (init init_std, LR unscaled, logits multiplied by 1/m) is the one in the Power
scheduler paper's code (Shen et al. 2024); it is microsoft/mup's ``MuReadout`` with
output_mult = ``output_multiplier``. ``embedding_multiplier`` and ``output_multiplier`` are Tensor
Programs V's input and output multipliers (CerebrasGPT's m_emb, and the output logit multiplier): constants,
the same at every width, so muP's scaling rule for them is "x1": tune them at the base width and they
transfer (the coord check in ``tests/test_coord_check.py`` holds with them away from 1). Both default to 1,
today's model. ``init_std`` is ``cfg.init_std_resolved`` (0 selects the base-width rule, see config.py).
``base_head_dim`` (``cfg.base_head_dim_resolved``): the head_dim of the base model, by default
base_width / n_heads (n_heads the same at every width); with a fixed head size and heads growing with
width, set it to that head size, so the scale stays sp's. At width == base_width every mup multiplier
is exactly 1, so mup and sp are the same model.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import ModelConfig, OptimizerConfig

GROUP_NAMES = ("embedding", "hidden", "norm", "readout")
"""The optimizer groups, in the order ``param_groups`` returns them."""


class RMSNorm(nn.Module):
    """RMSNorm with a learned gain and no bias (computed in the input's dtype)."""

    def __init__(self, width: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def rotary_tables(seq_len: int, head_dim: int, base: float = 10000.0) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of RoPE's angles, each (seq_len, head_dim / 2)."""
    inv_freq = 1.0 / base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)  # (hs/2,)
    angles = torch.outer(torch.arange(seq_len, dtype=torch.float32), inv_freq)  # (T, hs/2)
    return angles.cos(), angles.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (x[i], x[i + hs/2]) of x (B, nh, T, hs) by position-dependent angles (GPT-NeoX layout)."""
    x1, x2 = x.chunk(2, dim=-1)  # (B, nh, T, hs/2) each
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)  # keep q and k in autocast's dtype, as v is
    return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention; ``scale`` multiplies q.k (muP: ~1/head_dim, sp: 1/sqrt(head_dim))."""

    def __init__(self, cfg: ModelConfig, scale: float) -> None:
        super().__init__()
        self.n_heads, self.scale = cfg.n_heads, scale
        self.qkv = nn.Linear(cfg.width, 3 * cfg.width, bias=False)
        self.proj = nn.Linear(cfg.width, cfg.width, bias=False)

    def forward(self, x: torch.Tensor, rotary: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)  # (B, T, C) each
        q, k, v = (
            t.view(B, T, self.n_heads, C // self.n_heads).transpose(1, 2) for t in (q, k, v)
        )  # (B, nh, T, hs)
        if rotary is not None:
            q, k = apply_rotary(q, *rotary), apply_rotary(k, *rotary)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=self.scale)  # (B, nh, T, hs)
        return self.proj(y.transpose(1, 2).reshape(B, T, C))  # (B, T, C)


class MLP(nn.Module):
    """width -> mlp_ratio * width -> GELU -> width."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        hidden = round(cfg.mlp_ratio * cfg.width)
        self.fc = nn.Linear(cfg.width, hidden, bias=False)
        self.proj = nn.Linear(hidden, cfg.width, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(F.gelu(self.fc(x)))  # (B, T, C)


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, cfg: ModelConfig, attn_scale: float) -> None:
        super().__init__()
        self.ln_1, self.attn = RMSNorm(cfg.width), CausalSelfAttention(cfg, attn_scale)
        self.ln_2, self.mlp = RMSNorm(cfg.width), MLP(cfg)

    def forward(self, x: torch.Tensor, rotary: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), rotary)
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    """The proxy model; its initialisation is a deterministic function of ``seed`` (see ``init_weights``)."""

    def __init__(self, cfg: ModelConfig, seed: int = 0) -> None:
        super().__init__()
        self.cfg = cfg
        # sp is mup with m = 1 everywhere except the attention scale, so one code path serves both.
        self.m = cfg.width_multiplier if cfg.parametrization == "mup" else 1.0
        attn_scale = 1.0 / math.sqrt(cfg.head_dim)
        if cfg.parametrization == "mup":
            # sqrt(base_hs) / hs written as 1/sqrt(hs) * sqrt(base_hs / hs): exactly sp's scale at base width.
            attn_scale *= math.sqrt(cfg.base_head_dim_resolved / cfg.head_dim)
        self.attn_scale = attn_scale
        self.wte = nn.Embedding(cfg.vocab_size, cfg.width)
        self.wpe = nn.Embedding(cfg.seq_len, cfg.width) if cfg.positions == "learned" else None
        self.blocks = nn.ModuleList(Block(cfg, attn_scale) for _ in range(cfg.depth))
        self.ln_f = RMSNorm(cfg.width)
        self.lm_head = nn.Linear(cfg.width, cfg.vocab_size, bias=False)
        if cfg.positions == "rotary":
            cos, sin = rotary_tables(cfg.seq_len, cfg.head_dim)
            self.register_buffer("rope_cos", cos, persistent=False)  # (T, hs/2)
            self.register_buffer("rope_sin", sin, persistent=False)
        self.init_weights(seed)

    def param_kind(self, name: str, p: nn.Parameter) -> str:
        """Which of ``GROUP_NAMES`` a parameter belongs to: what muP scales it by."""
        if name.startswith(("wte.", "wpe.")):
            return "embedding"
        if name.startswith("lm_head."):
            return "readout"
        return "norm" if p.ndim == 1 else "hidden"

    @torch.no_grad()
    def init_weights(self, seed: int) -> None:
        """Re-initialise every parameter from a CPU generator seeded with ``seed``, in a fixed order.

        Draws on the CPU and copies, so the same seed gives the same weights on any device.
        """
        g = torch.Generator(device="cpu").manual_seed(seed)
        for name, p in self.named_parameters():
            kind = self.param_kind(name, p)
            if kind == "norm":
                p.fill_(1.0)
                continue
            std = self.cfg.init_std_resolved
            if kind == "hidden":
                std /= math.sqrt(self.m)  # muP: variance ~ 1/fan_in, equal to init_std^2 at base width
                if name.endswith("proj.weight"):
                    std /= math.sqrt(
                        2 * self.cfg.depth
                    )  # GPT-2: keep the residual sum's variance O(1) in depth
            p.copy_(torch.randn(p.shape, generator=g, device="cpu") * std)

    def param_groups(self, opt: OptimizerConfig) -> list[dict]:
        """Groups for ``torch.optim.AdamW``: name, params, lr = opt.lr * lr_multiplier, weight_decay.

        muP's Adam rule: hidden matrices get LR x 1/m; embeddings, norm gains and the readout keep opt.lr.
        AdamW's per-step decay is a group's LR times its weight_decay: norm gains have none; the hidden
        matrices' weight_decay is opt.weight_decay (``coupled``, per-step decay lr / m * wd) or
        opt.weight_decay * m (``independent``, lr * wd at every width); see the module docstring.
        A training loop sets ``group["lr"] = lr_t * group["lr_multiplier"]``.
        """
        multiplier = {"embedding": 1.0, "hidden": 1.0 / self.m, "norm": 1.0, "readout": 1.0}
        decay = dict.fromkeys(GROUP_NAMES, opt.weight_decay) | {"norm": 0.0}
        if opt.weight_decay_rule == "independent":
            decay["hidden"] = (
                opt.weight_decay * self.m
            )  # undoes the 1/m of the hidden LR in lr * weight_decay
        params: dict[str, list[nn.Parameter]] = {name: [] for name in GROUP_NAMES}
        for name, p in self.named_parameters():
            params[self.param_kind(name, p)].append(p)
        return [
            {
                "name": name,
                "params": params[name],
                "lr": opt.lr * multiplier[name],
                "lr_multiplier": multiplier[name],
                "weight_decay": decay[name],
            }
            for name in GROUP_NAMES
        ]

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        """Logits (B, T, vocab_size) for token ids ``idx`` (B, T), T <= seq_len."""
        B, T = idx.shape
        if T > self.cfg.seq_len:
            raise ValueError(f"sequence of {T} tokens is longer than seq_len={self.cfg.seq_len}")
        x = self.wte(idx)  # (B, T, C)
        rotary = None
        if self.wpe is not None:
            x = x + self.wpe(torch.arange(T, device=idx.device))  # (T, C) broadcast over B
        else:
            rotary = (self.rope_cos[:T], self.rope_sin[:T])  # (T, hs/2) each
        x = x * self.cfg.embedding_multiplier  # x 1.0 is exact: runs from before the setting are unchanged
        for block in self.blocks:
            x = block(x, rotary)  # (B, T, C)
        # muP: once trained, the readout's rows align with h, so W h grows like width; 1/m keeps logits O(1)
        # output_multiplier / m is exactly 1 / m at the default 1.0, so older runs are unchanged
        return self.lm_head(self.ln_f(x)) * (self.cfg.output_multiplier / self.m)  # (B, T, V)

    def loss(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean next-token cross-entropy of ``idx`` against ``targets`` (see ``cross_entropy``)."""
        return cross_entropy(self(idx), targets)

    @property
    def params_non_embedding(self) -> int:
        """All parameters except the token embedding, learned positions and the readout (``ModelConfig``'s count)."""
        return self.cfg.params_non_embedding

    @property
    def flops_per_token(self) -> int:
        """Training FLOPs per token (``ModelConfig.flops_per_token``)."""
        return self.cfg.flops_per_token


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean next-token loss in nats of logits (B, T, V) against targets (B, T), in fp32 also under bf16 autocast."""
    return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())
