"""The muP GPT proxy: muP's multipliers, equality with sp at base width, counts, causality, determinism."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from powerlaw_cli.config import ModelConfig, OptimizerConfig
from powerlaw_cli.model import GPT, apply_rotary


def config(**overrides) -> ModelConfig:
    base = dict(width=64, depth=2, n_heads=4, seq_len=16, vocab_size=64, base_width=64)
    return ModelConfig(**{**base, **overrides})


def tokens(cfg: ModelConfig, batch: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randint(cfg.vocab_size, (batch, cfg.seq_len), generator=torch.Generator().manual_seed(seed))


def rms_norm(x: torch.Tensor, gain: torch.Tensor) -> torch.Tensor:
    return x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * gain


@pytest.mark.parametrize("positions", ["rotary", "learned"])
def test_mup_and_sp_are_the_same_model_at_base_width(positions: str) -> None:
    mup = GPT(config(parametrization="mup", positions=positions), seed=3)
    sp = GPT(config(parametrization="sp", positions=positions), seed=3)
    mup_state, sp_state = mup.state_dict(), sp.state_dict()
    assert mup_state.keys() == sp_state.keys()
    for name in mup_state:
        assert torch.equal(mup_state[name], sp_state[name]), name
    assert mup.attn_scale == sp.attn_scale == 1 / math.sqrt(16)
    opt = OptimizerConfig(lr=1e-2)
    mup_groups, sp_groups = mup.param_groups(opt), sp.param_groups(opt)
    for a, b in zip(mup_groups, sp_groups, strict=True):
        assert (a["name"], a["lr"], a["lr_multiplier"], a["weight_decay"]) == (
            b["name"],
            b["lr"],
            b["lr_multiplier"],
            b["weight_decay"],
        )
        assert [p.shape for p in a["params"]] == [p.shape for p in b["params"]]
    # One AdamW step on the same batch: the same loss, the same updated weights, the same outputs.
    idx = tokens(mup.cfg)
    for model, groups in ((mup, mup_groups), (sp, sp_groups)):
        optimizer = torch.optim.AdamW(groups)
        model.loss(idx[:, :-1], idx[:, 1:]).backward()
        optimizer.step()
    assert torch.equal(mup(idx), sp(idx))


def test_mup_differs_from_sp_away_from_base_width() -> None:
    mup, sp = (
        GPT(config(width=128, parametrization="mup"), seed=0),
        GPT(config(width=128, parametrization="sp"), seed=0),
    )
    assert not torch.equal(mup.blocks[0].attn.qkv.weight, sp.blocks[0].attn.qkv.weight)
    assert torch.equal(mup.wte.weight, sp.wte.weight)  # embeddings keep init_std in both


def test_mup_init_std_scales_hidden_matrices_by_one_over_sqrt_m() -> None:
    cfg = config(width=512, base_width=64, depth=2, vocab_size=256, init_std=0.02)  # m = 8
    model = GPT(cfg, seed=0)
    hidden = 0.02 / math.sqrt(8)
    expected = {
        "wte.weight": 0.02,
        "lm_head.weight": 0.02,
        "blocks.0.attn.qkv.weight": hidden,
        "blocks.1.mlp.fc.weight": hidden,
        "blocks.0.attn.proj.weight": hidden / math.sqrt(2 * 2),
        "blocks.1.mlp.proj.weight": hidden / math.sqrt(2 * 2),
    }
    params = dict(model.named_parameters())
    for name, std in expected.items():
        assert params[name].std().item() == pytest.approx(std, rel=0.02), name
    assert torch.equal(params["blocks.0.ln_1.weight"], torch.ones(512))
    sp = dict(GPT(config(width=512, base_width=64, parametrization="sp"), seed=0).named_parameters())
    assert sp["blocks.0.attn.qkv.weight"].std().item() == pytest.approx(0.02, rel=0.02)


@pytest.mark.parametrize("parametrization", ["mup", "sp"])
def test_param_groups_lr_multipliers_and_weight_decay(parametrization: str) -> None:
    cfg = config(width=256, base_width=64, parametrization=parametrization, positions="learned")  # m = 4
    model = GPT(cfg)
    opt = OptimizerConfig(lr=0.01, weight_decay=0.1)
    groups = {g["name"]: g for g in model.param_groups(opt)}
    hidden_multiplier = 0.25 if parametrization == "mup" else 1.0
    assert {name: g["lr_multiplier"] for name, g in groups.items()} == {
        "embedding": 1.0,
        "hidden": hidden_multiplier,
        "norm": 1.0,
        "readout": 1.0,
    }
    for g in groups.values():
        assert g["lr"] == pytest.approx(0.01 * g["lr_multiplier"])
        assert g["weight_decay"] == (0.0 if g["name"] == "norm" else 0.1)
    # Membership, decided here from names and shapes, independently of the model's own rule.
    names = {id(p): n for n, p in model.named_parameters()}
    members = {k: sorted(names[id(p)] for p in g["params"]) for k, g in groups.items()}
    assert members["embedding"] == ["wpe.weight", "wte.weight"]
    assert members["readout"] == ["lm_head.weight"]
    assert all(n.endswith(("ln_1.weight", "ln_2.weight")) or n == "ln_f.weight" for n in members["norm"])
    assert len(members["norm"]) == 2 * 2 + 1
    assert sorted(n.split(".", 2)[2] for n in members["hidden"]) == sorted(
        ["attn.qkv.weight", "attn.proj.weight", "mlp.fc.weight", "mlp.proj.weight"] * 2
    )
    assert sum(len(m) for m in members.values()) == len(names)  # every parameter in exactly one group


def per_step_decay(model: GPT, opt: OptimizerConfig) -> dict[str, float]:
    """Per group, the fraction by which one real AdamW step shrinks its weights, measured.

    The gradients are zero, so Adam's own update is exactly 0 and only the weight decay moves the weights.
    """
    groups = model.param_groups(opt)
    before = {g["name"]: [p.detach().clone() for p in g["params"]] for g in groups}
    optimizer = torch.optim.AdamW(groups, betas=(opt.beta1, opt.beta2), eps=opt.eps)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    decay = {}
    for g in groups:
        old = torch.cat([p.flatten() for p in before[g["name"]]]).double()
        new = torch.cat([p.detach().flatten() for p in g["params"]]).double()
        decay[g["name"]] = 1.0 - float(new @ old / (old @ old))
    return decay


@pytest.mark.parametrize("rule", ["coupled", "independent"])
def test_weight_decay_rules_give_the_per_step_decay_they_promise(rule: str) -> None:
    """coupled: muP's hidden matrices decay lr/m * wd per step; independent: lr * wd at every width.
    Embeddings and readout decay lr * wd, norm gains not at all, under both rules; at base width both are sp."""
    lr, wd = 0.1, 0.4  # large, so that fp32 rounding of the decayed weights is far below the decay itself
    opt = OptimizerConfig(lr=lr, weight_decay=wd, weight_decay_rule=rule)
    for m in (1, 8):
        cfg = config(width=32 * m, base_width=32, n_heads=2, vocab_size=32, positions="learned")
        hidden = lr * wd if rule == "independent" else lr / m * wd
        expected = {"embedding": lr * wd, "hidden": hidden, "norm": 0.0, "readout": lr * wd}
        measured = per_step_decay(GPT(cfg, seed=0), opt)
        assert measured == pytest.approx(expected, rel=1e-4, abs=1e-9), (m, measured)
        sp = per_step_decay(GPT(ModelConfig(**{**vars(cfg), "parametrization": "sp"}), seed=0), opt)
        assert sp == pytest.approx(dict.fromkeys(expected, lr * wd) | {"norm": 0.0}, rel=1e-4, abs=1e-9)
        if m == 1:
            assert measured == sp  # at base width, mup under either rule is sp, bit for bit
    if rule == "coupled":  # the rule from before the setting existed: 8x less decay per step at m = 8
        assert measured["hidden"] == pytest.approx(lr * wd / 8, rel=1e-4)


def test_param_groups_work_with_adamw_and_a_schedule() -> None:
    model = GPT(config(width=128))
    optimizer = torch.optim.AdamW(model.param_groups(OptimizerConfig(lr=1.0)))
    for group in optimizer.param_groups:  # what the training loop does every step
        group["lr"] = 0.003 * group["lr_multiplier"]
    assert sorted(g["lr"] for g in optimizer.param_groups) == pytest.approx([0.0015, 0.003, 0.003, 0.003])


def test_logits_equal_a_manual_forward_with_the_one_over_m_multiplier() -> None:
    """One token at position 0: rotary is the identity and attention returns v, so the model is a few matmuls."""
    cfg = config(width=256, base_width=64, depth=2, vocab_size=64)  # m = 4
    model = GPT(cfg, seed=1)
    with torch.no_grad():  # non-trivial gains, so that a missing norm gain would show
        for p in model.parameters():
            if p.ndim == 1:
                p.uniform_(0.5, 1.5)
    token = 7
    x = model.wte.weight[token]
    for block in model.blocks:
        v = block.attn.qkv.weight[2 * cfg.width :] @ rms_norm(x, block.ln_1.weight)
        x = x + block.attn.proj.weight @ v
        x = x + block.mlp.proj.weight @ F.gelu(block.mlp.fc.weight @ rms_norm(x, block.ln_2.weight))
    manual = model.lm_head.weight @ rms_norm(x, model.ln_f.weight) / 4.0
    logits = model(torch.tensor([[token]]))[0, 0]
    torch.testing.assert_close(logits, manual, rtol=1e-4, atol=1e-6)
    assert not torch.allclose(logits, manual * 4.0, rtol=1e-2)


def attention_reference(attn: torch.nn.Module, x: torch.Tensor, scale: float) -> torch.Tensor:
    """Causal attention written out with an explicit score scale (no rotary)."""
    B, T, C = x.shape
    q, k, v = (t.view(B, T, attn.n_heads, -1).transpose(1, 2) for t in attn.qkv(x).split(C, dim=2))
    scores = (q @ k.transpose(-2, -1)) * scale  # (B, nh, T, T)
    scores = scores.masked_fill(~torch.ones(T, T, dtype=torch.bool).tril(), float("-inf"))
    y = scores.softmax(-1) @ v  # (B, nh, T, hs)
    return attn.proj(y.transpose(1, 2).reshape(B, T, C))


def test_attention_scale_is_sqrt_base_head_dim_over_head_dim_under_mup() -> None:
    cfg = config(width=256, base_width=64, n_heads=4, positions="learned")  # head_dim 64, base head_dim 16
    model = GPT(cfg, seed=0)
    assert model.attn_scale == pytest.approx(math.sqrt(16) / 64)
    assert GPT(config(width=256, base_width=64, parametrization="sp")).attn_scale == pytest.approx(1 / 8)
    attn = model.blocks[0].attn
    # large, so that the softmax is not flat
    x = 30 * torch.randn(1, 8, cfg.width, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = attn(x, None)
        torch.testing.assert_close(
            out, attention_reference(attn, x, math.sqrt(16) / 64), rtol=1e-4, atol=1e-5
        )
        assert not torch.allclose(out, attention_reference(attn, x, 1 / 8), rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("positions", ["rotary", "learned"])
def test_params_non_embedding_and_flops_per_token(positions: str) -> None:
    cfg = config(
        width=96,
        n_heads=4,
        base_width=64,
        depth=3,
        mlp_ratio=2.5,
        seq_len=32,
        vocab_size=50,
        positions=positions,
    )
    model = GPT(cfg)
    C, H, L = 96, 240, 3
    per_block = 3 * C * C + C * C + C * H + H * C + 2 * C  # qkv, attn proj, fc, mlp proj, two norm gains
    expected = L * per_block + C  # + final norm gain
    assert model.params_non_embedding == cfg.params_non_embedding == expected
    trained = {name: p.numel() for name, p in model.named_parameters()}
    assert (
        sum(n for name, n in trained.items() if not name.startswith(("wte.", "wpe.", "lm_head."))) == expected
    )
    total = sum(trained.values())
    embedding = 50 * C + (32 * C if positions == "learned" else 0)
    assert total == expected + embedding + 50 * C  # + readout
    assert model.flops_per_token == 6 * expected + 6 * C * 50 + 12 * L * C * 32


@pytest.mark.parametrize("positions", ["rotary", "learned"])
def test_causal_a_future_token_does_not_change_earlier_logits(positions: str) -> None:
    model = GPT(config(positions=positions, init_std=0.5), seed=0)
    idx = tokens(model.cfg)
    changed = idx.clone()
    changed[:, 9] = (changed[:, 9] + 1) % model.cfg.vocab_size
    a, b = model(idx), model(changed)
    torch.testing.assert_close(a[:, :9], b[:, :9], rtol=0, atol=1e-6)
    assert not torch.allclose(a[:, 9:], b[:, 9:], atol=1e-3)


@pytest.mark.parametrize("positions", ["rotary", "learned"])
def test_positions_make_the_model_order_sensitive(positions: str) -> None:
    """Without positions, one causal attention layer sees the last token's prefix as a set; with them, order matters.

    (One layer: with two, causal masking alone already leaks order through the earlier positions' outputs.)
    """
    model = GPT(config(positions=positions, init_std=0.5, depth=1), seed=0)
    idx = tokens(model.cfg, batch=1)
    swapped = idx.clone()
    swapped[0, [0, 1]] = idx[0, [1, 0]]
    assert idx[0, 0] != idx[0, 1]
    assert not torch.allclose(model(idx)[0, -1], model(swapped)[0, -1], atol=1e-4)
    assert (model.wpe is not None) == (positions == "learned")


def test_rotary_scores_depend_only_on_relative_position() -> None:
    from powerlaw_cli.model import rotary_tables

    cos, sin = rotary_tables(16, 8)
    q, k = torch.randn(8, generator=torch.Generator().manual_seed(0)), torch.randn(8)

    def rot(x: torch.Tensor, pos: int) -> torch.Tensor:
        return apply_rotary(x.view(1, 1, 1, 8), cos[pos], sin[pos]).flatten()

    assert torch.dot(rot(q, 5), rot(k, 3)).item() == pytest.approx(
        torch.dot(rot(q, 12), rot(k, 10)).item(), abs=1e-5
    )
    assert torch.dot(rot(q, 5), rot(k, 3)).item() != pytest.approx(
        torch.dot(rot(q, 5), rot(k, 4)).item(), abs=1e-3
    )
    assert rot(q, 7).norm().item() == pytest.approx(q.norm().item(), rel=1e-5)


def test_determinism_same_seed_same_model_different_seed_different_model() -> None:
    cfg = config(width=128)
    idx = tokens(cfg)
    a, b, c = GPT(cfg, seed=5), GPT(cfg, seed=5), GPT(cfg, seed=6)
    for (name, pa), pb in zip(a.named_parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb), name
    assert torch.equal(a(idx), b(idx))
    assert not torch.equal(a.wte.weight, c.wte.weight)
    assert not torch.allclose(a(idx), c(idx))
    c.init_weights(5)  # re-initialising with a seed reproduces the model built with it
    assert torch.equal(a(idx), c(idx))


def test_loss_is_mean_cross_entropy_and_sequences_longer_than_seq_len_are_refused() -> None:
    model = GPT(config())
    idx = tokens(model.cfg)
    logits = model(idx)
    expected = F.cross_entropy(logits.reshape(-1, logits.size(-1)), idx.roll(-1, 1).reshape(-1))
    assert model.loss(idx, idx.roll(-1, 1)).item() == pytest.approx(expected.item(), rel=1e-6)
    assert model.loss(idx, idx).item() == pytest.approx(math.log(64), rel=0.05)  # near-uniform at init
    with pytest.raises(ValueError, match="seq_len"):
        model(torch.zeros(1, 17, dtype=torch.long))


def test_bf16_autocast_forward_and_backward() -> None:
    model = GPT(config(width=128))
    idx = tokens(model.cfg)
    reference = model(idx)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(idx)
        loss = model.loss(idx, idx.roll(-1, 1))
    assert logits.dtype == torch.bfloat16 and loss.dtype == torch.float32
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    torch.testing.assert_close(logits.float(), reference, rtol=0.05, atol=0.02)


@pytest.mark.parametrize("parametrization", ["mup", "sp"])
def test_embedding_and_output_multipliers_scale_the_forward_pass(parametrization: str) -> None:
    cfg = config(width=128, base_width=32, parametrization=parametrization, positions="learned")
    plain = GPT(cfg, seed=0)
    idx = tokens(cfg)
    scaled = GPT(ModelConfig(**{**cfg.values, "output_multiplier": 3.0}), seed=0)
    assert torch.allclose(scaled(idx), 3.0 * plain(idx), rtol=1e-5, atol=1e-7)  # logits x 3 (on top of 1/m)
    seen = {}
    emb = GPT(ModelConfig(**{**cfg.values, "embedding_multiplier": 2.5}), seed=0)
    emb.blocks[0].ln_1.register_forward_hook(lambda m, args, out: seen.setdefault("x", args[0]))
    emb(idx)
    expected = 2.5 * (plain.wte(idx) + plain.wpe(torch.arange(cfg.seq_len)))  # tokens and positions, x2.5
    assert torch.allclose(seen["x"], expected)


def test_init_std_0_initialises_with_the_base_width_rule() -> None:
    model = GPT(config(width=64, base_width=32, init_std=0.0, vocab_size=256), seed=0)
    rule = 0.02 * math.sqrt(256 / 32)
    assert model.wte.weight.std().item() == pytest.approx(rule, rel=0.05)
    assert model.blocks[0].attn.qkv.weight.std().item() == pytest.approx(rule / math.sqrt(2), rel=0.05)
