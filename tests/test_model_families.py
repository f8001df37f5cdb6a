"""The llama and gpt2 model families beside the DiT (tiny sizes, CPU): building on meta, tied
output layers, rotary frequencies and grouped-query attention against transformers', the
denoiser's bidirectionality and Dream's shift, causal scoring, the [model] rules of each family
and what may change on resume."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

from edlm_dist.config import ConfigError, ModelConfig, TrainProgram, check_resume, load_config
from edlm_dist.distributed import PLANS
from edlm_dist.models import FAMILIES, GPT2, LlamaCausalLM, LlamaDenoiser, attention, build_model, meta_model
from edlm_dist.models.layers import rope_frequencies
from run_utils import DEBUG_CONFIG

V = 50  # token ids; the embedding has padded_vocab_size(50) = 64 rows
B, L = 2, 8


def llama(**changes) -> ModelConfig:
    fields = dict(family="llama", n_layers=2, hidden_size=32, n_heads=4, n_kv_heads=2, intermediate_size=48,
                  vocab_size=V, dropout=0.0)
    return ModelConfig(**(fields | changes))


def gpt2(**changes) -> ModelConfig:
    fields = dict(family="gpt2", n_layers=2, hidden_size=32, n_heads=4, vocab_size=V, tie_embeddings=True,
                  max_positions=16, dropout=0.0)
    return ModelConfig(**(fields | changes))


def tokens(seed: int = 0) -> torch.Tensor:
    return torch.randint(0, V, (B, L), generator=torch.Generator().manual_seed(seed))


def randomize(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * 0.3)
    return model.eval()


CASES = [("dit", llama()), ("ar", llama(tie_embeddings=True, qkv_bias=True)), ("ar", gpt2())]


@pytest.mark.parametrize("kind,config", CASES)
def test_meta_build_matches_build_model_and_keeps_global_rng(kind, config):
    state = torch.random.get_rng_state()
    built = build_model(kind, config, V, seed=7)
    assert torch.equal(torch.random.get_rng_state(), state)
    direct = {"dit": LlamaDenoiser, "ar": GPT2 if config.family == "gpt2" else LlamaCausalLM}[kind](config)
    direct.init_weights(7)
    assert built.state_dict().keys() == direct.state_dict().keys() and list(built.buffers()) == []
    for name, tensor in built.state_dict().items():
        assert torch.equal(tensor, direct.state_dict()[name]), name
    assert built.padded_vocab == 64 and built(tokens()).shape == (B, L, 64)
    assert not torch.equal(build_model(kind, config, V, seed=8).embed.weight, built.embed.weight)


@pytest.mark.parametrize("config", [llama(tie_embeddings=True), gpt2()])
def test_a_tied_output_layer_is_the_embedding_after_build(config):
    model = build_model("ar", config, V)
    assert model.head.weight is model.embed.weight
    assert "head.weight" not in dict(model.named_parameters())
    with torch.no_grad():
        model.embed.weight[3] += 1.0
    assert torch.equal(model.head.weight[3], model.embed.weight[3])
    lookups = model.positions.weight.numel() if config.family == "gpt2" else 0
    assert model.num_params() == sum(p.numel() for p in model.parameters()) - lookups  # the shared table does matmuls


def test_flops_count_the_untied_head_but_not_the_embedding():
    model = build_model("ar", llama(), V)
    total = sum(p.numel() for p in model.parameters())
    assert model.num_params() == total - 64 * 32
    assert model.flops_per_token(L) == 6 * model.num_params() + 12 * 2 * 4 * 8 * L


@pytest.mark.parametrize("scaling", [None, {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                            "high_freq_factor": 4.0, "original_max_position_embeddings": 64}])
def test_rotary_frequencies_are_transformers_llama(scaling):
    config = LlamaConfig(hidden_size=256, num_attention_heads=2, rope_theta=500000.0, rope_scaling=scaling,
                         max_position_embeddings=1024)
    ours = rope_frequencies(128, 500000.0, torch.device("cpu"), "llama3" if scaling else "none", 8.0, 1.0, 4.0, 64)
    theirs = LlamaRotaryEmbedding(config).inv_freq
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=0)
    if scaling:  # low frequencies divided by the factor, high ones kept, some smoothed between
        plain = rope_frequencies(128, 500000.0, torch.device("cpu"))
        ratio = plain / ours
        assert ratio[0] == 1 and ratio[-1] == 8 and ((ratio > 1) & (ratio < 8)).any()


@pytest.mark.parametrize("causal", [False, True])
def test_grouped_query_attention_reads_the_repeated_key_value_heads(causal):
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(B, L, 4, 8, generator=gen)
    k, v = torch.randn(B, L, 2, 8, generator=gen), torch.randn(B, L, 2, 8, generator=gen)
    repeated = attention(q, k.repeat_interleave(2, dim=2), v.repeat_interleave(2, dim=2), causal=causal)
    torch.testing.assert_close(attention(q, k, v, causal=causal), repeated)


def test_the_denoiser_is_bidirectional_and_the_causal_lm_is_not():
    x = tokens()
    later = x.clone()
    later[:, -1] = (later[:, -1] + 1) % V
    denoiser = randomize(build_model("dit", llama(), V))
    assert not torch.allclose(denoiser(x)[:, 0], denoiser(later)[:, 0])
    causal = randomize(build_model("ar", llama(), V))
    torch.testing.assert_close(causal(x, next_token=True)[:, :-1], causal(later, next_token=True)[:, :-1])
    start = torch.full_like(x[:, :1], causal.start_token)  # forward reads the start token, then x0[:, :-1]
    torch.testing.assert_close(causal(x), causal(torch.cat((start, x[:, :-1]), 1), next_token=True))


def test_dreams_shift_takes_each_logit_from_the_previous_position():
    plain = randomize(build_model("dit", llama(mask_id=V - 1), V), seed=3)
    shifted = build_model("dit", llama(mask_id=V - 1, logit_shift=True), V)
    shifted.load_state_dict(plain.state_dict())
    x = tokens()
    expected = plain(x)
    torch.testing.assert_close(shifted.eval()(x), torch.cat((expected[:, :1], expected[:, :-1]), dim=1))
    assert shifted.mask_id == V - 1 and shifted.reads_time is False


def test_causal_scores_are_normalised_over_the_token_ids_only():
    model = randomize(build_model("ar", llama(), V))
    x = tokens()
    every = torch.stack([model.conditional_log_probs(x, torch.full_like(x, j))[0] for j in range(V)], -1)
    torch.testing.assert_close(every.logsumexp(-1), torch.zeros(B, L), atol=1e-5, rtol=0)
    torch.testing.assert_close(model.log_prob(x), model.token_log_probs(x).sum(-1))


def test_gpt2_refuses_more_tokens_than_its_positions():
    model = build_model("ar", gpt2(), V)
    with pytest.raises(ValueError, match="17 tokens exceed GPT-2's 16 positions"):
        model(torch.zeros(1, 17, dtype=torch.long), next_token=True)


def test_each_family_has_a_parallelisation_plan_and_refuses_roles_it_lacks():
    assert set(PLANS) == set(FAMILIES) == {"dit", "llama", "gpt2"}
    with pytest.raises(ConfigError, match="model.family = 'gpt2' has no model for training.task = 'mdlm'"):
        meta_model("dit", gpt2(), V)
    with pytest.raises(ConfigError, match="model.family = 'gpt2' has no model for training.task = 'nce'"):
        meta_model("energy", gpt2(), V)
    with pytest.raises(ConfigError, match="the tokenizer has 49 ids but model.vocab_size is 50"):
        meta_model("dit", llama(), V - 1)


# ---- [model] rules ----------------------------------------------------------------------------

def _train_config(*overrides: str) -> TrainProgram:
    return load_config(TrainProgram, DEBUG_CONFIG, list(overrides))


LLAMA = ["--model.family=llama", "--model.vocab_size=50"]


@pytest.mark.parametrize("overrides,message", [
    (["--model.family=llama"], "model.family = 'llama' requires model.vocab_size"),
    (["--model.n_kv_heads=1"], "model.n_kv_heads = 1 is not read by model.family = 'dit'"),
    (["--model.logit_shift=true"], "model.logit_shift = True is not read by model.family = 'dit'"),
    ([*LLAMA, "--model.n_heads=2", "--model.n_kv_heads=4"],
     "model.n_heads (2) must be a multiple of model.n_kv_heads (4)"),
    ([*LLAMA, "--model.mask_id=64"], "the mask id (model.mask_id) 64 is outside the 64 rows"),
    ([*LLAMA, "--model.embedding_rows=50"], "the mask id (model.mask_id) 50 is outside the 50 rows"),
    ([*LLAMA, "--model.time_conditioning=true"], "does not read the time"),
    ([*LLAMA, "--model.logit_shift=true", "--training.task=ar"], "belongs to a bidirectional denoiser"),
    ([*LLAMA, "--model.mask_id=64", "--training.task=nce", "--nce.denoiser=x"], "the mask id (model.mask_id) 64 is outside"),
    (["--model.family=gpt2", "--model.vocab_size=50"], "training.task must be 'ar'"),
    (["--model.family=gpt2", "--model.vocab_size=50", "--training.task=ar", "--model.max_positions=8"],
     "data.seq_len (16) exceeds model.max_positions (8)"),
    (["--model.family=gpt2", "--model.vocab_size=50", "--training.task=ar", "--model.qkv_bias=true"],
     "model.qkv_bias = True is not read by model.family = 'gpt2'"),
    ([*LLAMA, "--model.rope_scaling=llama3", "--model.rope_high_freq_factor=0.5"], "must exceed"),
])
def test_model_rules_of_each_family(overrides, message):
    with pytest.raises(ConfigError) as info:
        _train_config(*overrides)
    assert message in str(info.value)


def test_the_llama_family_takes_a_valid_config_and_an_old_one_is_a_dit():
    cfg = _train_config(*LLAMA, "--model.mask_id=49", "--model.n_kv_heads=1")
    assert cfg.model.family == "llama" and build_model("dit", cfg.model, V).mask_id == 49
    assert _train_config().model.family == "dit"


@pytest.mark.parametrize("key,value", [("family", "llama"), ("rope_theta", "500000.0"), ("vocab_size", "60"),
                                       ("logit_shift", "true"), ("tie_embeddings", "true")])
def test_the_model_of_a_run_cannot_change_on_resume(key, value):
    old = _train_config() if key == "family" else _train_config(*LLAMA)
    new = _train_config(*LLAMA, f"--model.{key}={value}")
    with pytest.raises(ConfigError, match=f"model.{key} cannot change when run resumes"):
        check_resume(old, new, "run")
