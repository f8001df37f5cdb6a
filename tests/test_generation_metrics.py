"""Generation-quality metrics: unigram entropy, the Gen PPL EOS rule, the project-AR and Hugging
Face oracles (against direct computations), token-weighted aggregation, and building oracles
from runs (with the errors a wrong run must give)."""

from __future__ import annotations

import json
import math
import sys

import pytest
import torch

from edlm_dist.config import ModelConfig
from edlm_dist.data import build_dataset
from edlm_dist.diffusion import SamplingStats
from edlm_dist.evaluation import (
    HFOracle,
    OracleError,
    ProjectAROracle,
    build_oracle,
    gen_ppl,
    scored_span,
    unigram_entropy,
)
from edlm_dist.evaluation.sampler import format_summary, mean_ess_of
from edlm_dist.models import build_model
from edlm_dist.runs import find_checkpoint
from edlm_dist.training import Trainer
from run_utils import debug_config

TINY = ModelConfig(n_layers=2, hidden_size=32, n_heads=2, cond_dim=16, dropout=0.0)
EOS = 8  # the debug config's synthetic source has 8 states; EOS is id 8, vocabulary 9


def test_unigram_entropy_exact_values():
    tokens = torch.tensor([[3, 3, 3, 3], [1, 2, 1, 2], [0, 1, 2, 3], [5, 5, 6, 7]])
    bits, nats = unigram_entropy(tokens)
    assert bits.dtype == nats.dtype == torch.float64
    assert bits.tolist() == pytest.approx([0.0, 1.0, 2.0, 1.5], abs=1e-12)
    torch.testing.assert_close(bits, nats / math.log(2))


def test_unigram_entropy_matches_a_per_row_count():
    tokens = torch.randint(0, 50, (6, 40), generator=torch.Generator().manual_seed(0))
    bits, _ = unigram_entropy(tokens)
    for row, value in zip(tokens, bits):
        p = torch.bincount(row).double() / row.numel()
        p = p[p > 0]
        assert value.item() == pytest.approx(-(p * p.log2()).sum().item(), abs=1e-12)
    with pytest.raises(ValueError, match=r"\[N, L\]"):
        unigram_entropy(tokens[0])


def test_scored_span_is_the_eos_rule():
    tokens = torch.tensor([
        [8, 1, 2, 8, 3],  # leading EOS = BOS, not scored; the closing EOS scored, the rest not
        [1, 8, 8, 0, 0],  # no BOS: scored from position 0 through the first EOS
        [8, 8, 5, 0, 0],  # an empty document: only its EOS is scored
        [1, 2, 3, 4, 5],  # no EOS: all of it
    ])
    start, end = scored_span(tokens, EOS)
    assert start.tolist() == [1, 0, 1, 0]
    assert end.tolist() == [4, 2, 2, 5]
    start, end = scored_span(tokens, None)
    assert start.tolist() == [0] * 4 and end.tolist() == [5] * 4


@pytest.fixture(scope="module")
def ar_model():
    """A tiny AR with random weights everywhere (at init its logits are all zero)."""
    model = build_model("ar", TINY, vocab_size=9, seed=0)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=generator))
    return model.eval()


def test_project_ar_oracle_sums_the_ar_log_probs_over_the_scored_span(ar_model):
    tokens = torch.randint(0, 8, (5, 12), generator=torch.Generator().manual_seed(2))
    tokens[0, 0] = tokens[0, 6] = EOS
    tokens[1, 4] = EOS
    nll, counts = ProjectAROracle(ar_model, EOS, max_batch=2).score(tokens)
    with torch.no_grad():
        log_probs = ar_model.token_log_probs(tokens).double()
    expected = [-log_probs[0, 1:7].sum(), -log_probs[1, :5].sum(), *(-log_probs[2:].sum(dim=1))]
    assert nll.dtype == torch.float64
    torch.testing.assert_close(nll, torch.stack(expected), rtol=1e-6, atol=1e-6)
    assert counts.tolist() == [6, 5, 12, 12, 12]
    one_by_one, _ = ProjectAROracle(ar_model, EOS, max_batch=1).score(tokens)
    torch.testing.assert_close(one_by_one, nll, rtol=1e-6, atol=1e-6)
    capped, capped_counts = ProjectAROracle(ar_model, EOS, max_length=4).score(tokens)
    assert capped_counts.tolist() == [3, 4, 4, 4, 4]
    torch.testing.assert_close(capped[2], -log_probs[2, :4].sum(), rtol=1e-6, atol=1e-6)


def test_tokens_after_the_closing_eos_do_not_count(ar_model):
    tokens = torch.randint(0, 8, (1, 12), generator=torch.Generator().manual_seed(3))
    tokens[0, 0] = tokens[0, 5] = EOS
    oracle = ProjectAROracle(ar_model, EOS)
    nll, counts = oracle.score(tokens)
    changed = tokens.clone()
    changed[0, 6:] = (changed[0, 6:] + 1) % 8
    torch.testing.assert_close(oracle.score(changed)[0], nll, rtol=0, atol=1e-9)
    without_eos = tokens.clone()
    without_eos[0, 5] = 0  # the closing EOS itself is scored: replacing it changes the score
    assert oracle.score(without_eos)[0].item() != pytest.approx(nll.item())
    assert counts.item() == 5


def test_samples_with_a_mask_id_are_refused(ar_model):
    with pytest.raises(ValueError, match=r"token id 9, outside the data vocabulary \[0, 9\)"):
        ProjectAROracle(ar_model, EOS).score(torch.tensor([[1, 9, 2]]))


class FakeOracle:
    name = "fake"

    def __init__(self, nll: list[float], counts: list[int]) -> None:
        self.result = torch.tensor(nll, dtype=torch.float64), torch.tensor(counts)

    def score(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.result


def test_gen_ppl_is_token_weighted():
    metrics = gen_ppl(FakeOracle([2.0, 30.0, 0.0], [1, 10, 0]), torch.zeros(3, 4, dtype=torch.long))
    assert metrics["gen_ppl"] == pytest.approx(math.exp(32 / 11))
    assert metrics["nll_per_token"] == pytest.approx(32 / 11)
    assert metrics["mean_sample_nll_per_token"] == pytest.approx((2.0 + 3.0) / 2)  # each sample weighs the same
    assert (metrics["scored_tokens"], metrics["samples"], metrics["empty_samples"]) == (11, 3, 1)
    with pytest.raises(ValueError, match="has a token to score"):
        gen_ppl(FakeOracle([0.0], [0]), torch.zeros(1, 4, dtype=torch.long))


@pytest.mark.parametrize("nll, reason", [
    ([2.0, math.inf, 1.0], "not finite: infinite for 1 of 3 samples"),  # the oracle gave a token zero probability
    ([2.0, math.nan, 1.0], "not finite: NaN for 1 of 3 samples"),  # a diverged oracle
    ([-2.0, -30.0, 1.0], "impossible: -2.8182 nats per token, below 0 (a perplexity below 1)"),
])
def test_a_gen_ppl_that_is_not_finite_or_impossible_is_withheld_with_its_reason(nll, reason):
    metrics = gen_ppl(FakeOracle(nll, [1, 10, 0]), torch.zeros(3, 4, dtype=torch.long))
    assert metrics["gen_ppl"] is metrics["nll_per_token"] is metrics["mean_sample_nll_per_token"] is None
    assert metrics["not_reported"] == reason and metrics["scored_tokens"] == 11
    summary = {"num_samples": 3, "steps": 8, "num_candidates": 4, "window": 1.0, "mode": "batch", "world_size": 1,
               "wall_time_per_sample_s": 0.5, "wall_time_per_step_s": 0.01, "entropy_bits": 1.5, "entropy_nats": 1.04,
               "mean_ess": None, "not_reported": {"mean_ess": "not finite: a candidate's energy was NaN or -inf"},
               "gen_ppl": metrics}
    summary["reference"] = {"gen_ppl": gen_ppl(FakeOracle([2.0], [1]), torch.zeros(1, 4, dtype=torch.long))}
    json.dumps(summary, allow_nan=False)
    printed = format_summary(summary)
    assert f"Gen PPL: not reported ({reason})" in printed and "reference Gen PPL (held-out data): 7.39" in printed
    assert "mean ESS of the importance weights: not reported (not finite: a candidate's energy" in printed


def test_the_mean_ess_of_the_importance_weights_is_withheld_where_an_energy_was_nan():
    stats = [SamplingStats(ess_sum=6.0, ess_count=2), SamplingStats(ess_sum=2.0, ess_count=2)]
    assert mean_ess_of(stats) == (2.0, None) and mean_ess_of([SamplingStats()]) == (None, None)
    stats[1].ess_sum = math.nan
    assert mean_ess_of(stats) == (None, "not finite: a candidate's energy was NaN or -inf")


# ---- oracles built from runs -----------------------------------------------------------------

@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Tiny checkpoints: an AR and an MDLM on the debug config's synthetic data."""
    root = tmp_path_factory.mktemp("runs")
    for name, task in (("ar", "ar"), ("mdlm", "mdlm")):
        Trainer(debug_config(root, f"--job.name={name}", "--training.steps=2", f"--training.task={task}")).run()
    return root


@pytest.fixture(scope="module")
def run_tokenizer(runs):
    return build_dataset(find_checkpoint(runs / "ar").config.data).tokenizer


def test_an_ar_run_becomes_an_oracle_from_its_folder_or_step_folder(runs, run_tokenizer):
    tokens = torch.randint(0, 8, (3, 16), generator=torch.Generator().manual_seed(4))
    tokens[:, 0] = EOS
    step_folder = find_checkpoint(runs / "ar").path
    oracle = build_oracle(step_folder, vocab_size=9, eos_id=EOS)
    assert isinstance(oracle, ProjectAROracle) and oracle.max_length == 16
    with torch.no_grad():
        expected = -oracle.model.token_log_probs(tokens).double()[:, 1:].sum(dim=1)
    nll, counts = oracle.score(tokens)
    torch.testing.assert_close(nll, expected, rtol=1e-6, atol=1e-6)
    assert counts.tolist() == [15] * 3
    torch.testing.assert_close(build_oracle(str(runs / "ar"), vocab_size=9, eos_id=EOS).score(tokens)[0], nll)


def test_wrong_runs_are_refused_in_one_line(runs, run_tokenizer):
    with pytest.raises(OracleError, match="is a 'mdlm' run; a Gen PPL oracle is an 'ar' run") as err:
        build_oracle(runs / "mdlm", vocab_size=9, eos_id=EOS)
    with pytest.raises(OracleError, match=r"step_00000002 has vocabulary size 9 but the samples have 13") as err:
        build_oracle(runs / "ar", vocab_size=13, eos_id=12)
    assert "\n" not in str(err.value)
    with pytest.raises(OracleError, match="names no model"):
        build_oracle("hf:", vocab_size=9, eos_id=EOS, tokenizer=run_tokenizer)
    with pytest.raises(OracleError, match="pass the samples' tokenizer"):
        build_oracle("hf:gpt2", vocab_size=9, eos_id=EOS)


# ---- the Hugging Face oracle ----------------------------------------------------------------

def test_a_missing_transformers_is_named(monkeypatch, run_tokenizer):
    monkeypatch.setitem(sys.modules, "transformers", None)  # makes `import transformers` fail
    with pytest.raises(OracleError, match="needs the `transformers` package"):
        build_oracle("hf:gpt2", vocab_size=9, eos_id=EOS, tokenizer=run_tokenizer)


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory, run_tokenizer):
    """A tiny random GPT-2 with an offline word-level tokenizer over the synthetic syllables,
    its ids in another order than the project's (so retokenisation is exercised)."""
    transformers = pytest.importorskip("transformers")
    tokenizers = pytest.importorskip("tokenizers")
    words = list(reversed(run_tokenizer.words))
    vocab = {"<|endoftext|>": 0, "<unk>": 1, **{w: i + 2 for i, w in enumerate(words)}}
    backend = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
    hf_tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<|endoftext|>", eos_token="<|endoftext|>", unk_token="<unk>"
    )
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=len(vocab), n_positions=12, n_embd=16, n_layer=1, n_head=2)
    folder = tmp_path_factory.mktemp("tiny_gpt2")
    transformers.GPT2LMHeadModel(config).save_pretrained(folder)
    hf_tokenizer.save_pretrained(folder)
    return folder, {i: vocab[w] for i, w in enumerate(run_tokenizer.words)}


def test_hf_oracle_scores_the_retokenised_span_from_bos(hf_folder, run_tokenizer):
    transformers = pytest.importorskip("transformers")
    folder, hf_id = hf_folder
    tokens = torch.tensor([
        [8, 1, 2, 3, 8, 4, 5, 6, 7, 0, 1, 2, 3, 4, 5, 6],  # BOS, a document, EOS, ignored rest
        [0, 1, 2, 3, 4, 5, 6, 7, 0, 1, 2, 3, 4, 5, 6, 7],  # no EOS, longer than the context of 12
        [8, 8, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1],  # an empty document
    ])
    expected_ids = [
        [0, hf_id[1], hf_id[2], hf_id[3], 0],
        [0, *(hf_id[i] for i in tokens[1, :11].tolist())],  # cut to the context: BOS + 11 tokens
        [0, 0],
    ]
    model = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
    expected = []
    with torch.no_grad():
        for ids in expected_ids:
            logits = model(torch.tensor([ids])).logits[0, :-1].double()
            expected.append(-logits.log_softmax(-1).gather(-1, torch.tensor(ids[1:])[:, None]).sum())
    oracle = build_oracle(f"hf:{folder}", vocab_size=9, eos_id=EOS, tokenizer=run_tokenizer, max_batch=2)
    assert isinstance(oracle, HFOracle) and oracle.max_length == 12
    with pytest.warns(UserWarning, match="1 of 3 samples exceed"):
        nll, counts = oracle.score(tokens)
    assert counts.tolist() == [4, 11, 1]
    torch.testing.assert_close(nll, torch.stack(expected), rtol=1e-5, atol=1e-5)
    with pytest.warns(UserWarning):
        one_by_one, _ = HFOracle(str(folder), run_tokenizer, max_batch=1).score(tokens)
    torch.testing.assert_close(one_by_one, nll, rtol=1e-5, atol=1e-5)


def test_hf_oracle_does_not_reach_the_network(run_tokenizer, tmp_path):
    pytest.importorskip("transformers")
    with pytest.raises(OracleError, match="offline"):
        HFOracle(str(tmp_path / "absent"), run_tokenizer)
