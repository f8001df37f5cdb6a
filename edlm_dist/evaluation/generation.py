"""Generation-quality metrics of samples: unigram entropy and generative perplexity (Gen PPL).

Gen PPL is the perplexity of generated token ids under an *oracle* language model: a project
AR run on the samples' own tokenizer (`ProjectAROracle`) or any Hugging Face causal LM, which
reads the samples decoded to text and retokenised (`HFOracle`). Both apply the same rules
(docs/gen_ppl.md has the full protocol and why):

- EOS: a leading EOS is the sample's BOS (context, never scored); the sample then ends at its
  next EOS, which is scored; tokens after it are not scored.
- Context: only the first `max_length` positions the oracle reads are scored (BOS included
  for the HF oracle), the rest is dropped, never slid over.
- Aggregation (`gen_ppl`): token-weighted, exp(sum of NLL / number of scored tokens).

An oracle returns per-sample totals, so results gathered from many ranks or batches sum to the
same corpus figure whatever the batch size.
"""

from __future__ import annotations

import math
import os
import warnings
from types import ModuleType
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

from edlm_dist.data.tokenizers import Tokenizer
from edlm_dist.diffusion import TokenSpace
from edlm_dist.energy.shared_tokens import check_same_tokens, run_tokens, tokenizer_tokens
from edlm_dist.evaluation.reportable import NOT_REPORTED, impossible_reason, non_finite_reason
from edlm_dist.models import CausalLM
from edlm_dist.runs.weights import WeightsError, checkpoint_vocab_size, find_checkpoint, load_weights

HF_PREFIX = "hf:"


class OracleError(ValueError):
    """An oracle that cannot be built as asked (wrong run, vocabulary, missing package), in one line."""

    user_error = True  # `exit_on_user_error` prints it as one line and exits 2


def unigram_entropy(tokens: Tensor) -> tuple[Tensor, Tensor]:
    """Per sample, the entropy of the empirical distribution of its token ids over all L
    positions: (bits [N], nats [N]), float64.

    EDLM reports it in bits as a diversity check next to Gen PPL (a sampler can lower Gen PPL by
    repeating itself; that shows here). Vectorised via sorting: O(N L) memory, not O(N V).
    """
    if tokens.dim() != 2 or tokens.shape[1] == 0 or tokens.dtype.is_floating_point:
        raise ValueError(f"tokens must be integer ids [N, L] with L >= 1, got {tuple(tokens.shape)} {tokens.dtype}")
    n, length = tokens.shape
    ordered = tokens.sort(dim=1).values
    starts_run = torch.ones_like(ordered, dtype=torch.bool)
    starts_run[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
    run = starts_run.cumsum(dim=1) - 1  # index of each position's distinct id within its row
    counts = torch.zeros(n, length, dtype=torch.float64, device=tokens.device)
    counts.scatter_add_(1, run, torch.ones_like(counts))
    p = counts / length
    nats = torch.special.xlogy(p, p.reciprocal()).sum(dim=1)  # p log(1/p); empty slots (p = 0) give 0
    return nats / math.log(2), nats


def scored_span(tokens: Tensor, eos_id: int | None) -> tuple[Tensor, Tensor]:
    """The EOS rule: per sample the positions [start, end) that Gen PPL scores, int64 [N] each.

    start = 1 when position 0 is EOS (the BOS of the data's `[EOS] + text + [EOS]` blocks),
    else 0; end = one past the first EOS at or after start, else L. `eos_id` None: all of L.
    """
    n, length = tokens.shape
    if eos_id is None:
        return torch.zeros(n, dtype=torch.long), torch.full((n,), length, dtype=torch.long)
    is_eos = (tokens == eos_id).cpu()
    start = is_eos[:, 0].long()
    positions = torch.arange(length)
    closing = is_eos & (positions >= start[:, None])
    first = torch.where(closing, positions, length).min(dim=1).values
    return start, torch.clamp(first + 1, max=length)


def _check_tokens(tokens: Tensor, space: TokenSpace) -> None:
    """Samples must be [N, L] data tokens of `space`: a mask id left in a sample is a sampler bug, not text."""
    if tokens.dim() != 2 or tokens.dtype.is_floating_point:
        raise ValueError(f"samples must be integer token ids [N, L], got {tuple(tokens.shape)} {tokens.dtype}")
    bad = tokens[~space.is_data(tokens)]
    if bad.numel():
        raise ValueError(f"samples hold token id {int(bad[0])}, outside {space.describe_data()}")


class Oracle(Protocol):
    """A language model that scores generated samples for Gen PPL.

    `score(tokens)`: tokens [N, L] are ids of the project's tokenizer (data ids only) ->
    (total NLL in nats float64 [N], number of scored tokens int64 [N]), following the EOS and
    context rules of the module docstring. `name` says which model it is, for reports.
    """

    name: str

    def score(self, tokens: Tensor) -> tuple[Tensor, Tensor]: ...


class ProjectAROracle:
    """Gen PPL oracle from a project AR model: the samples' own token ids, no retokenisation.

    The AR reads its start token before position 0, so it scores position 0 too; a leading
    EOS (the BOS) stays in its input but is not counted. `max_length` (the AR's training
    `data.seq_len`) caps the scored positions. Runs in chunks of `max_batch` rows under no_grad.
    """

    def __init__(
        self, model: CausalLM, eos_id: int | None, max_batch: int = 16,
        max_length: int | None = None, name: str = "project AR",
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.model = model.eval()
        self.eos_id = eos_id
        self.max_batch = max_batch
        self.max_length = max_length
        self.name = name

    @torch.no_grad()
    def score(self, tokens: Tensor) -> tuple[Tensor, Tensor]:
        _check_tokens(tokens, TokenSpace.mdlm(self.model.vocab_size))
        start, end = scored_span(tokens, self.eos_id)
        if self.max_length is not None:
            end = end.clamp(max=self.max_length)
        positions = torch.arange(tokens.shape[1])
        scored = (positions >= start[:, None]) & (positions < end[:, None])
        device = next(self.model.parameters()).device
        nll = torch.zeros(tokens.shape[0], dtype=torch.float64)
        for rows in torch.arange(tokens.shape[0]).split(self.max_batch):
            log_probs = self.model.token_log_probs(tokens[rows].to(device)).double().cpu()
            nll[rows] = -(log_probs * scored[rows]).sum(dim=1)
        return nll, scored.sum(dim=1)


def _import_transformers() -> ModuleType:
    """`transformers`, imported only for the HF route, with an error that says what to install."""
    try:
        import transformers
    except ImportError as e:
        raise OracleError(
            "the Hugging Face Gen PPL oracle (hf:<name>) needs the `transformers` package, which is not "
            "installed: pip install transformers (or use a project AR run as the oracle)"
        ) from e
    return transformers


class HFOracle:
    """Gen PPL oracle from a Hugging Face causal LM (e.g. GPT-2 large), loaded offline.

    Each sample's scored span (see `scored_span`) is decoded to text with the project
    `tokenizer` (without its closing EOS), retokenised with the model's tokenizer (no special
    tokens added), framed as [HF BOS] + text ids + [HF EOS if the span ended on EOS], and cut to
    the model's context (`max_length`, default its `max_position_embeddings`). Every token after
    the BOS is scored. Rows are scored shortest first in chunks of `max_batch`, right-padded.
    Samples must hold data tokens of `tokens`, the samples' token space (default: MDLM's for the
    tokenizer's vocabulary).
    """

    def __init__(
        self, path_or_name: str, tokenizer: Tokenizer, device: torch.device | str = "cpu",
        max_batch: int = 16, max_length: int | None = None, dtype: torch.dtype = torch.float32,
        tokens: TokenSpace | None = None,
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        transformers = _import_transformers()
        try:
            self.hf_tokenizer = transformers.AutoTokenizer.from_pretrained(path_or_name, local_files_only=True)
            model = transformers.AutoModelForCausalLM.from_pretrained(path_or_name, local_files_only=True)
        except (OSError, ValueError) as e:
            message = str(e).replace("\n", " ")
            raise OracleError(
                f"cannot load the Hugging Face model {path_or_name!r} offline (local_files_only): {message}; "
                "put it in the HF cache or pass a local folder"
            ) from e
        self.bos_id, self.hf_eos_id = self.hf_tokenizer.bos_token_id, self.hf_tokenizer.eos_token_id
        if self.bos_id is None or self.hf_eos_id is None:
            raise OracleError(f"the tokenizer of {path_or_name!r} defines no BOS or no EOS token; Gen PPL needs both")
        context = getattr(model.config, "max_position_embeddings", None)
        if max_length is None and context is None:
            raise OracleError(f"{path_or_name!r} does not state its context length; pass max_length")
        if max_length is not None and (max_length < 2 or (context is not None and max_length > context)):
            raise OracleError(f"max_length {max_length} must be in [2, {context}] for {path_or_name!r}")
        self.max_length = max_length or context
        self.model = model.to(device=device, dtype=dtype).eval()
        self.device = torch.device(device)
        self.tokenizer = tokenizer
        self.tokens = tokens or TokenSpace.mdlm(tokenizer.vocab_size)
        self.max_batch = max_batch
        self.name = f"{HF_PREFIX}{path_or_name}"

    def _retokenise(self, ids: list[int]) -> list[int]:
        """[BOS] + the HF ids of one scored span's text (+ [EOS] if the span closed on EOS), uncut."""
        closed = bool(ids) and ids[-1] == self.tokenizer.eos_id
        text = self.tokenizer.decode(ids[:-1] if closed else ids)
        body = self.hf_tokenizer.encode(text, add_special_tokens=False, verbose=False)
        return [self.bos_id, *body, *([self.hf_eos_id] if closed else [])]

    @torch.no_grad()
    def score(self, tokens: Tensor) -> tuple[Tensor, Tensor]:
        _check_tokens(tokens, self.tokens)
        start, end = scored_span(tokens, self.tokenizer.eos_id)
        rows = tokens.cpu().tolist()
        sequences = [self._retokenise(row[s:e]) for row, s, e in zip(rows, start.tolist(), end.tolist())]
        cut = sum(len(seq) > self.max_length for seq in sequences)
        if cut:
            warnings.warn(f"{cut} of {len(sequences)} samples exceed the {self.name} context of {self.max_length} "
                          "tokens after retokenisation; only their first tokens are scored", stacklevel=2)
        sequences = [seq[: self.max_length] for seq in sequences]
        nll = torch.zeros(len(sequences), dtype=torch.float64)
        order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
        for chunk in (order[i : i + self.max_batch] for i in range(0, len(order), self.max_batch)):
            width = max(len(sequences[i]) for i in chunk)
            ids = torch.full((len(chunk), width), self.bos_id, dtype=torch.long)
            valid = torch.zeros(len(chunk), width, dtype=torch.long)
            for row, i in enumerate(chunk):
                ids[row, : len(sequences[i])] = torch.tensor(sequences[i])
                valid[row, : len(sequences[i])] = 1
            logits = self.model(input_ids=ids.to(self.device), attention_mask=valid.to(self.device)).logits
            targets = ids[:, 1:].to(self.device)
            token_nll = F.cross_entropy(logits[:, :-1].float().transpose(1, 2), targets, reduction="none")
            nll[chunk] = (token_nll.double().cpu() * valid[:, 1:]).sum(dim=1)
        return nll, torch.tensor([len(seq) - 1 for seq in sequences], dtype=torch.long)


def build_oracle(
    spec: str | os.PathLike[str], device: torch.device | str = "cpu", *, vocab_size: int, eos_id: int | None,
    tokenizer: Tokenizer | None = None, max_batch: int = 16, weights: str | None = None,
    tokens: TokenSpace | None = None,
) -> Oracle:
    """The Gen PPL oracle `spec` names, for samples over `vocab_size` data ids with `eos_id`.

    `hf:<name or folder>`: a Hugging Face causal LM; it decodes samples to text, so it needs the
    samples' `tokenizer` (and their token space `tokens`, default MDLM's). Anything else: a
    project `ar` run folder (or one of its step folders) over the same vocabulary (`weights`:
    "ema"/"model", None = EMA when the run has it); given the samples' `tokenizer`, the run must
    share it (`check_same_tokens`: id by id over the data tokens of `tokens` where both have
    tokenizer files, else the same settings).
    """
    spec = os.fspath(spec)
    if spec.startswith(HF_PREFIX):
        name = spec[len(HF_PREFIX):]
        if not name:
            raise OracleError(f"oracle {spec!r} names no model: use hf:<name or local folder>")
        if tokenizer is None:
            raise OracleError(f"oracle {spec} retokenises the samples' text: pass the samples' tokenizer")
        return HFOracle(name, tokenizer, device=device, max_batch=max_batch, tokens=tokens)
    ckpt = find_checkpoint(os.path.expanduser(spec))
    task = ckpt.config.training.task
    if task != "ar":
        raise OracleError(f"oracle {spec} is a {task!r} run; a Gen PPL oracle is an 'ar' run or hf:<name>")
    if tokenizer is not None:
        try:
            check_same_tokens(run_tokens(ckpt, f"the oracle {ckpt.run_dir}"),
                              tokenizer_tokens(tokenizer, "the samples"), tokens or TokenSpace.mdlm(vocab_size))
        except WeightsError as err:
            raise OracleError(str(err)) from None
    oracle_vocab = checkpoint_vocab_size(ckpt)
    if tokenizer is None and oracle_vocab != vocab_size:
        raise OracleError(
            f"oracle {ckpt.path} has vocabulary size {oracle_vocab} but the samples have {vocab_size}: "
            "an AR oracle must share the samples' tokenizer (or use hf:<name>, which retokenises)"
        )
    model, _ = load_weights(ckpt, weights, device=device)
    assert isinstance(model, CausalLM)  # an 'ar' run builds one
    return ProjectAROracle(model, eos_id, max_batch, ckpt.config.data.seq_len, name=str(ckpt.path))


def gen_ppl(oracle: Oracle, tokens: Tensor) -> dict[str, float | int]:
    """Gen PPL of samples [N, L] under `oracle`, token-weighted over the corpus:
    exp(sum of NLL / sum of scored tokens), so long samples weigh more than short ones.

    Also reports the mean over samples of each one's NLL per token (each sample weighs the
    same; samples with no scored token left out), the scored-token count and how many samples
    had none: a sampler that ends documents early scores few tokens, so read both. When the
    oracle's NLL is not finite or impossible (below 0) the three figures are None and
    `not_reported` says why.
    """
    nll, counts = oracle.score(tokens)
    total = int(counts.sum())
    if total == 0:
        raise ValueError(f"none of the {tokens.shape[0]} samples has a token to score after the EOS rule")
    nonempty = counts > 0
    per_token = float(nll.sum()) / total
    reason = non_finite_reason(nll, "samples") or impossible_reason(per_token)
    figures = ({"gen_ppl": None, "nll_per_token": None, "mean_sample_nll_per_token": None} if reason else
               {"gen_ppl": math.exp(per_token), "nll_per_token": per_token,
                "mean_sample_nll_per_token": float((nll[nonempty] / counts[nonempty]).mean())})
    return {**figures, "scored_tokens": total, "samples": int(tokens.shape[0]), "empty_samples": int((~nonempty).sum()),
            **({NOT_REPORTED: reason} if reason else {})}
