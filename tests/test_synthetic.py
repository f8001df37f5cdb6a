"""The synthetic Markov corpus: exact figures against sampling, determinism, tokenizer."""

from __future__ import annotations

import math

import pytest
import torch

from edlm_dist.data import (
    MarkovSource,
    SyntheticBlocks,
    SyntheticTokenizer,
    TokenizerError,
    syllable,
    tokenizer_from_dict,
)

DEFAULTS = dict(num_states=48, branching=3, concentration=0.5, seed=1234)


@pytest.fixture(scope="module")
def source() -> MarkovSource:
    return MarkovSource(**DEFAULTS)


def test_transition_structure(source: MarkovSource) -> None:
    p = source.transition
    assert p.dtype == torch.float64 and p.shape == (48, 48)
    assert torch.allclose(p.sum(1), torch.ones(48, dtype=torch.float64))
    assert ((p > 0).sum(1) == 3).all()
    pi = source.stationary
    assert torch.allclose(pi @ p, pi, atol=1e-12) and math.isclose(pi.sum().item(), 1.0)
    assert (pi > 0).all()


def test_chain_is_primitive(source: MarkovSource) -> None:
    a = (source.transition > 0).double()
    power = a.clone()
    for _ in range((48 - 1) ** 2):  # Wielandt's bound
        power = ((power @ a) > 0).double()
        if (power > 0).all():
            return
    pytest.fail("no strictly positive power of the adjacency matrix")


def test_default_gap(source: MarkovSource) -> None:
    blocks = SyntheticBlocks(source, seq_len=64, seed=0)
    assert blocks.unigram_nll_per_token() - blocks.entropy_per_token() >= 1.5
    assert 0 < source.entropy_rate < math.log(3)
    assert source.entropy_rate < source.stationary_entropy < math.log(48)


def test_empirical_entropy_matches_closed_form(source: MarkovSource) -> None:
    blocks = SyntheticBlocks(source, seq_len=32, seed=7)
    x = blocks.batch("val", 0, 4096)
    nll = -source.log_prob(x[:, 1:-1])
    expected = blocks.entropy_per_token() * blocks.seq_len
    stderr = nll.std().item() / math.sqrt(len(nll))
    assert abs(nll.mean().item() - expected) < 4 * stderr


def test_inner_positions_follow_stationary(source: MarkovSource) -> None:
    x = SyntheticBlocks(source, seq_len=64, seed=3).batch("train", 5, 4096)[:, 1:-1]
    freq = torch.bincount(x.flatten(), minlength=48).double() / x.numel()
    first = torch.bincount(x[:, 0], minlength=48).double() / len(x)
    pi = source.stationary
    assert (freq - pi).abs().max() < 0.01
    assert (first - pi).abs().max() < 5 * math.sqrt(pi.max().item() / len(x))


def test_batches_are_pure_functions(source: MarkovSource) -> None:
    blocks = SyntheticBlocks(source, seq_len=16, seed=1)
    a = blocks.batch("train", 3, 8)
    assert a.dtype == torch.long and a.shape == (8, 16)
    assert torch.equal(a, SyntheticBlocks(MarkovSource(**DEFAULTS), seq_len=16, seed=1).batch("train", 3, 8))
    assert (a[:, 0] == 48).all() and (a[:, -1] == 48).all() and (a[:, 1:-1] < 48).all()
    others = [blocks.batch("train", 4, 8), blocks.batch("val", 3, 8), SyntheticBlocks(source, 16, 2).batch("train", 3, 8)]
    assert not any(torch.equal(a, other) for other in others)
    assert blocks._batch_seed("train", 3, 8) % 2 != blocks._batch_seed("val", 3, 8) % 2


def test_source_determinism() -> None:
    a, b, c = MarkovSource(**DEFAULTS), MarkovSource(**DEFAULTS), MarkovSource(**{**DEFAULTS, "seed": 1235})
    assert torch.equal(a.transition, b.transition) and torch.equal(a.stationary, b.stationary)
    assert not torch.equal(a.transition, c.transition)


@pytest.mark.parametrize(
    "kwargs", [dict(num_states=2, branching=2, concentration=0.1), dict(num_states=3, branching=2, concentration=1.0),
               dict(num_states=6, branching=6, concentration=2.0)]
)
def test_small_sources(kwargs: dict) -> None:
    s = MarkovSource(**kwargs, seed=0)
    assert ((s.transition > 0).sum(1) == kwargs["branching"]).all()
    assert torch.allclose(s.stationary @ s.transition, s.stationary, atol=1e-12)


def test_branching_one_is_the_cycle() -> None:
    s = MarkovSource(num_states=5, branching=1, concentration=1.0, seed=0)
    assert torch.equal(s.transition, torch.eye(5, dtype=torch.float64).roll(1, dims=1))
    assert s.entropy_rate == 0 and math.isclose(s.stationary_entropy, math.log(5))


@pytest.mark.parametrize(
    "kwargs, message",
    [(dict(num_states=1, branching=1, concentration=1.0), "num_states"),
     (dict(num_states=4, branching=5, concentration=1.0), "branching"),
     (dict(num_states=4, branching=0, concentration=1.0), "branching"),
     (dict(num_states=4, branching=2, concentration=0.0), "concentration")],
)
def test_invalid_source_arguments(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        MarkovSource(**kwargs, seed=0)


def test_invalid_block_arguments(source: MarkovSource) -> None:
    with pytest.raises(ValueError, match="seq_len"):
        SyntheticBlocks(source, seq_len=3, seed=0)
    with pytest.raises(ValueError, match="split"):
        SyntheticBlocks(source, seq_len=8, seed=0).batch("test", 0, 1)


def test_tokenizer_round_trip(source: MarkovSource) -> None:
    tok = SyntheticTokenizer(source)
    assert (tok.vocab_size, tok.eos_id, tok.mask_id) == (49, 48, 49)
    ids = SyntheticBlocks(source, seq_len=20, seed=0).batch("train", 0, 2).flatten().tolist()
    assert tok.encode(tok.decode(ids)) == ids
    assert tok.decode([48, 0, 1, 49, 48, 48]) == "\nba be _\n\n"
    with pytest.raises(TokenizerError, match="'xy' at position 3"):
        tok.encode("ba xy")


def test_syllables_are_distinct() -> None:
    words = [syllable(i) for i in range(6000)]
    assert len(set(words)) == len(words) and all(w.isalpha() for w in words)


def test_tokenizer_dict_round_trip_and_fingerprint(source: MarkovSource) -> None:
    tok = SyntheticTokenizer(source)
    again = tokenizer_from_dict(tok.to_dict())
    assert isinstance(again, SyntheticTokenizer)
    assert torch.equal(again.source.transition, source.transition)
    assert again.fingerprint() == tok.fingerprint()
    assert SyntheticTokenizer(MarkovSource(**{**DEFAULTS, "seed": 1})).fingerprint() != tok.fingerprint()
