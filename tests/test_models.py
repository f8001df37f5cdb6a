"""Tests for the DiT / AR models and their layers (tiny sizes, CPU)."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from edlm_dist.config import ModelConfig
from edlm_dist.models import (
    ARTransformer,
    DiT,
    LayerNorm,
    apply_rotary,
    attention,
    build_model,
    padded_vocab_size,
    rotary_tables,
)

V = 11
L = 8
B = 3


def tiny_config(**overrides) -> ModelConfig:
    fields = dict(n_layers=2, hidden_size=32, n_heads=4, cond_dim=16, mlp_ratio=2, dropout=0.0)
    fields.update(overrides)
    return ModelConfig(**fields)


def randomize(model: torch.nn.Module, seed: int = 0, std: float = 0.3) -> torch.nn.Module:
    """Overwrite every parameter with N(0, std) noise so no layer is zero or the identity."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * std)
    return model.eval()


def tokens(batch: int = B, length: int = L, high: int = V, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, high, (batch, length), generator=torch.Generator().manual_seed(seed))


def naive_attention(q, k, v, causal):
    q, k, v = (x.transpose(1, 2) for x in (q, k, v))  # [B, H, L, D]
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    if causal:
        n = q.shape[2]
        scores = scores.masked_fill(~torch.ones(n, n, dtype=torch.bool).tril(), float("-inf"))
    return (scores.softmax(-1) @ v).transpose(1, 2)


@pytest.mark.parametrize("causal", [False, True])
def test_attention_matches_naive(causal):
    q, k, v = torch.randn(3, 2, 5, 3, 8).unbind(0)
    out = attention(q, k, v, causal=causal)
    assert out.shape == q.shape
    torch.testing.assert_close(out, naive_attention(q, k, v, causal), atol=1e-5, rtol=1e-5)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("causal", [False, True])
def test_attention_cuda_bf16_matches_naive(causal):
    q, k, v = torch.randn(3, 2, 64, 4, 64, device="cuda").unbind(0)
    out = attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), causal=causal)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), naive_attention(q, k, v, causal), atol=3e-2, rtol=3e-2)


def test_layernorm_computes_in_float32():
    norm = LayerNorm(16)
    with torch.no_grad():
        norm.weight.normal_()
    x = (torch.randn(2, 3, 16) * 10 + 5).bfloat16()
    expected = F.layer_norm(x.float(), (16,), norm.weight, None, norm.eps).bfloat16()
    assert torch.equal(norm(x), expected)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(norm(x), expected)
        assert norm(x.float()).dtype == torch.float32


def test_rotary_preserves_norm_and_is_relative():
    cos, sin = rotary_tables(6, 8, torch.device("cpu"))
    assert cos.shape == sin.shape == (6, 8) and cos.dtype == torch.float32
    q = torch.randn(8).expand(1, 6, 1, 8)  # the same vector at every position
    k = torch.randn(8).expand(1, 6, 1, 8)
    rq, rk = apply_rotary(q, cos, sin)[0, :, 0], apply_rotary(k, cos, sin)[0, :, 0]
    torch.testing.assert_close(rq.norm(dim=-1), q[0, :, 0].norm(dim=-1))
    scores = rq @ rk.T  # depends only on the offset between positions
    torch.testing.assert_close(scores.diagonal(1), scores.diagonal(1)[:1].expand(5))
    with pytest.raises(ValueError):
        rotary_tables(6, 7, torch.device("cpu"))


@pytest.mark.parametrize("kind", ["dit", "ar"])
def test_shapes_and_padded_vocab(kind):
    model = build_model(kind, tiny_config(), V, seed=0)
    assert model.padded_vocab == padded_vocab_size(V) == 64
    assert padded_vocab_size(63) == 64 and padded_vocab_size(64) == 128 and padded_vocab_size(50257) == 50304
    x = tokens()
    out = model(x, torch.rand(B)) if kind == "dit" else model(x)
    assert out.shape == (B, L, 64) and out.dtype == torch.float32
    assert isinstance(model.blocks, torch.nn.ModuleList) and len(model.blocks) == 2


@pytest.mark.parametrize("kind", ["dit", "ar"])
def test_meta_build_matches_build_model_and_keeps_global_rng(kind):
    cfg = tiny_config(time_conditioning=True)
    torch.manual_seed(123)
    state = torch.random.get_rng_state()
    built = build_model(kind, cfg, V, seed=7)
    assert torch.equal(torch.random.get_rng_state(), state)

    with torch.device("meta"):
        meta = (DiT if kind == "dit" else ARTransformer)(cfg, V)
    assert all(p.is_meta for p in meta.parameters())
    meta.to_empty(device="cpu")
    meta.init_weights(7)

    sd_built, sd_meta = built.state_dict(), meta.state_dict()
    assert sd_built.keys() == sd_meta.keys()
    for name in sd_built:
        assert torch.equal(sd_built[name], sd_meta[name]), name
    assert list(built.buffers()) == []
    x = tokens()
    args = (x, torch.rand(B)) if kind == "dit" else (x,)
    assert torch.equal(built(*args), meta(*args))
    assert not torch.equal(build_model(kind, cfg, V, seed=8).embed.weight, built.embed.weight)


def test_init_follows_the_scheme_per_parameter():
    model = build_model("dit", tiny_config(n_layers=2), V, seed=3)
    residual_std = 0.02 / 2  # 0.02 / sqrt(2 * n_layers)
    for name, param in model.named_parameters():
        rule = model.init_rule(name)
        if rule.kind == "normal":
            assert rule.std == (residual_std if name.endswith(("attn_out.weight", "blocks.0.mlp.2.weight", "blocks.1.mlp.2.weight")) else 0.02), name
        else:
            assert torch.all(param == (1.0 if rule.kind == "ones" else 0.0)), name
    assert model.init_rule("time_embed.mlp.2.weight").std == 0.02
    assert model.init_rule("blocks.1.norm2.weight").kind == "ones"


def test_direct_cpu_construction_is_initialised():
    model = DiT(tiny_config(), V)
    assert torch.count_nonzero(model.final.linear.weight) == 0
    assert torch.count_nonzero(model.blocks[0].adaLN_modulation.weight) == 0
    assert 0.015 < model.embed.weight.std().item() < 0.025


@pytest.mark.parametrize("kind", ["dit", "ar"])
def test_init_gives_zero_logits_and_identity_blocks(kind):
    model = build_model(kind, tiny_config(time_conditioning=True), V, seed=0)
    x = tokens()
    logits = model(x, torch.rand(B)) if kind == "dit" else model(x)
    assert torch.count_nonzero(logits) == 0
    h = torch.randn(B, L, 32)
    c = torch.randn(B, 16)
    cos, sin = rotary_tables(L, model.head_dim, h.device)
    for block in model.blocks:
        assert torch.equal(block(h, c, cos, sin), h)


def test_dit_is_bidirectional():
    model = randomize(build_model("dit", tiny_config(), V, seed=0))
    x = tokens()
    y = x.clone()
    j = L - 1
    y[:, j] = (x[:, j] + 1) % V
    diff = (model(x) - model(y)).abs().amax(dim=(0, 2))
    assert (diff[:j] > 1e-4).all()


def test_ar_is_causal():
    model = randomize(build_model("ar", tiny_config(), V, seed=0))
    x = tokens()
    base = model(x)
    for j in range(L):
        y = x.clone()
        y[:, j] = (x[:, j] + 1) % V
        out = model(y)
        torch.testing.assert_close(out[:, : j + 1], base[:, : j + 1], atol=1e-5, rtol=0)
        if j + 1 < L:
            assert (out[:, j + 1 :] - base[:, j + 1 :]).abs().amax(dim=(0, 2)).min() > 1e-4


def test_ar_log_prob_matches_manual_sum_and_mask():
    model = randomize(build_model("ar", tiny_config(), V, seed=0))
    x = tokens()
    logits = model(x)
    manual = torch.log_softmax(logits[..., :V], dim=-1).gather(-1, x[..., None]).squeeze(-1)
    torch.testing.assert_close(model.log_prob(x), manual.sum(-1))
    valid = torch.ones(B, L, dtype=torch.bool)
    valid[:, 5:] = False
    torch.testing.assert_close(model.log_prob(x, valid), manual[:, :5].sum(-1))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert model.log_prob(x).dtype == torch.float32


def test_ar_log_prob_normalises_over_all_sequences():
    vocab, length = 3, 3
    model = randomize(build_model("ar", tiny_config(), vocab, seed=0), std=0.5)
    seqs = torch.tensor(list(itertools.product(range(vocab), repeat=length)))
    log_probs = model.log_prob(seqs).double()
    assert log_probs.std() > 0.1
    torch.testing.assert_close(log_probs.exp().sum(), torch.tensor(1.0, dtype=torch.double), atol=1e-5, rtol=0)


def test_time_conditioning():
    x = tokens()
    t0, t1 = torch.full((B,), 0.1), torch.full((B,), 0.9)
    off = randomize(build_model("dit", tiny_config(time_conditioning=False), V, seed=0))
    assert not off.reads_time
    assert torch.equal(off(x, t0), off(x, t1))
    assert torch.equal(off(x, t0), off(x))
    on = randomize(build_model("dit", tiny_config(time_conditioning=True), V, seed=0))
    assert on.reads_time
    assert not torch.allclose(on(x, t0), on(x, t1))
    with pytest.raises(ValueError):
        on(x)
    assert not build_model("ar", tiny_config(time_conditioning=True), V, seed=0).reads_time


def test_bf16_autocast_runs():
    model = randomize(build_model("dit", tiny_config(time_conditioning=True), V, seed=0))
    x, t = tokens(), torch.rand(B)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x, t)
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
    torch.testing.assert_close(out.float(), model(x, t), atol=0.15, rtol=0.05)


def test_dropout_only_in_train_mode():
    model = randomize(build_model("dit", tiny_config(dropout=0.5), V, seed=0))
    x = tokens()
    assert torch.equal(model(x), model(x))
    model.train()
    assert not torch.equal(model(x), model(x))


def test_param_count_and_flops():
    cfg = tiny_config()
    model = build_model("dit", cfg, V, seed=0)
    total = sum(p.numel() for p in model.parameters())
    assert model.num_params(exclude_input_embedding=False) == total
    assert model.num_params() == total - (V + 1) * cfg.hidden_size
    assert model.flops_per_token(L) == 6 * model.num_params() + 12 * 2 * 4 * 8 * L
