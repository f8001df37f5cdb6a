"""The embedded default corpus: a seeded sparse Markov source with a closed-form entropy.

Nothing is downloaded. Each of `num_states` states has exactly `branching` successors with
Dirichlet(`concentration`) transition probabilities, so the next token depends strongly on
the previous one: a context-free model pays about H(pi) nats per token, while the best
possible model pays only the entropy rate. Training runs report both figures, showing how
close a model gets to the floor. All randomness comes from `torch.rand` in float64 on the
CPU under a seeded `torch.Generator`, so the source and the data are the same everywhere.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

import torch

from edlm_dist.data.dataset import InMemoryBlocks
from edlm_dist.data.tokenizers import Tokenizer, TokenizerError, register_tokenizer
from edlm_dist.diffusion.noise import seed_from_key

MAX_PRIMITIVE_DRAWS = 100
CONSONANTS = "bdfgklmnprstvz"
VOWELS = "aeiou"
SYLLABLES = [c + v for c in CONSONANTS for v in VOWELS]
SPLITS = ("train", "val")


def _entropy(p: torch.Tensor) -> torch.Tensor:
    """Shannon entropy in nats over the last dimension (0 log 0 = 0)."""
    return -torch.special.xlogy(p, p).sum(-1)


def _uniform(shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    """Float64 uniforms in (0, 1], safe to take logs of."""
    return 1.0 - torch.rand(shape, dtype=torch.float64, generator=generator)


def _log_gamma(shape: float, n: int, generator: torch.Generator) -> torch.Tensor:
    """Logs of `n` Gamma(shape, 1) draws (Marsaglia-Tsang), in log space so that tiny draws
    at small shapes do not underflow to zero."""
    boosted = shape < 1.0  # Gamma(a) = Gamma(a + 1) * U^(1/a)
    d = (shape + 1.0 if boosted else shape) - 1.0 / 3.0
    c = 1.0 / math.sqrt(9.0 * d)
    out = torch.empty(n, dtype=torch.float64)
    pending = torch.arange(n)
    while pending.numel():
        u1, u2, u3 = _uniform((3, pending.numel()), generator)
        x = torch.sqrt(-2.0 * torch.log(u1)) * torch.cos(2.0 * math.pi * u2)  # Box-Muller normal
        v = (1.0 + c * x) ** 3
        log_v = torch.log(v.clamp_min(1e-300))
        accept = (v > 0) & (torch.log(u3) < 0.5 * x * x + d - d * v + d * log_v)
        out[pending[accept]] = math.log(d) + log_v[accept]
        pending = pending[~accept]
    if boosted:
        out += torch.log(_uniform((n,), generator)) / shape
    return out


def is_primitive(adjacency: torch.Tensor) -> bool:
    """Whether the 0/1 matrix has a strictly positive power (irreducible and aperiodic).
    By Wielandt's bound it suffices to look at a power >= (S - 1)^2 + 1."""
    a = (adjacency > 0).to(torch.float64)
    power = 1
    while power < (a.shape[0] - 1) ** 2 + 1:
        a = ((a @ a) > 0).to(torch.float64)
        power *= 2
    return bool((a > 0).all())


def _inverse_cdf_table(probs: torch.Tensor) -> torch.Tensor:
    """Cumulative sums for inverse-CDF sampling, with +inf from each row's last possible
    outcome on, so rounding (a row summing to 1 - 1e-16) can never pick an impossible one."""
    cdf = probs.cumsum(-1)
    return torch.where(cdf >= cdf[..., -1:], math.inf, cdf)


class MarkovSource:
    """A seeded sparse first-order Markov chain with exactly known entropies.

    State i always reaches (i + 1) mod S, which makes the chain irreducible; its other
    `branching - 1` successors are drawn at random, and the draw is repeated until the chain
    is also aperiodic (primitive). With branching = 1 the chain is the deterministic cycle
    (periodic, but still with a unique, uniform stationary distribution).
    """

    def __init__(self, num_states: int, branching: int, concentration: float, seed: int) -> None:
        _validate_source_args(num_states, branching, concentration)
        self.num_states = num_states
        self.branching = branching
        self.concentration = float(concentration)
        self.seed = seed
        self.transition = self._draw_transition(torch.Generator().manual_seed(seed))
        self.stationary = self._solve_stationary()
        self.entropy_rate = float(self.stationary @ _entropy(self.transition))
        self.stationary_entropy = float(_entropy(self.stationary))
        self._log_stationary = torch.log(self.stationary)
        self._log_transition = torch.log(self.transition)
        self._stationary_cdf = _inverse_cdf_table(self.stationary)
        self._transition_cdf = _inverse_cdf_table(self.transition)

    def _draw_transition(self, generator: torch.Generator) -> torch.Tensor:
        """Transition matrix [S, S]: redrawn (deterministically) until primitive."""
        for _ in range(MAX_PRIMITIVE_DRAWS):
            transition = self._draw_once(generator)
            if self.branching == 1 or is_primitive(transition):
                return transition
        raise RuntimeError(f"no primitive chain in {MAX_PRIMITIVE_DRAWS} draws for {self.params()}")

    def _draw_once(self, generator: torch.Generator) -> torch.Tensor:
        s, b = self.num_states, self.branching
        keys = torch.rand((s, s), dtype=torch.float64, generator=generator)
        rows = torch.arange(s)
        keys[rows, (rows + 1) % s] = -1.0  # the cycle edge sorts first: always a successor
        successors = keys.argsort(dim=1, stable=True)[:, :b]
        probs = torch.softmax(_log_gamma(self.concentration, s * b, generator).view(s, b), dim=1)
        return torch.zeros((s, s), dtype=torch.float64).scatter_(1, successors, probs)

    def _solve_stationary(self) -> torch.Tensor:
        """pi with pi P = pi and sum(pi) = 1, by a linear solve (unique: the chain is irreducible)."""
        s = self.num_states
        system = self.transition.T - torch.eye(s, dtype=torch.float64)
        system[-1] = 1.0  # replace one redundant balance equation by the normalisation
        rhs = torch.zeros(s, dtype=torch.float64)
        rhs[-1] = 1.0
        pi = torch.linalg.solve(system, rhs).clamp_min(0.0)
        return pi / pi.sum()

    def params(self) -> dict[str, Any]:
        """The constructor arguments, enough to rebuild this source."""
        return {
            "num_states": self.num_states,
            "branching": self.branching,
            "concentration": self.concentration,
            "seed": self.seed,
        }

    def sample(self, batch_size: int, length: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """`batch_size` chains of `length` states [B, length], started from the stationary
        distribution (so every position has marginal pi). Inverse-CDF in float64."""
        if length < 1:
            raise ValueError(f"sample: length must be >= 1, got {length}")
        u = torch.rand((length, batch_size, 1), dtype=torch.float64, generator=generator)
        x = torch.empty((length, batch_size), dtype=torch.long)
        x[0] = torch.searchsorted(self._stationary_cdf, u[0, :, 0], right=True)
        for t in range(1, length):
            x[t] = torch.searchsorted(self._transition_cdf[x[t - 1]], u[t], right=True).squeeze(1)
        return x.T.contiguous()

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """Exact log-probability (float64 [B]) of chains x [B, n >= 1] started from pi."""
        if x.dim() != 2 or x.shape[1] == 0:
            raise ValueError(f"log_prob expects chains of shape [B, n >= 1], got {tuple(x.shape)}")
        x = x.long()
        return self._log_stationary[x[:, 0]] + self._log_transition[x[:, :-1], x[:, 1:]].sum(1)


def _validate_source_args(num_states: int, branching: int, concentration: float) -> None:
    if num_states < 2:
        raise ValueError(f"synthetic source: num_states must be >= 2, got {num_states}")
    if not 1 <= branching <= num_states:
        raise ValueError(f"synthetic source: branching must be in [1, num_states={num_states}], got {branching}")
    if not (concentration > 0 and math.isfinite(concentration)):
        raise ValueError(f"synthetic source: concentration must be a finite number > 0, got {concentration}")


def syllable(state: int) -> str:
    """A distinct pronounceable word per state: consonant+vowel, then bijective base-70
    combinations ("baba", ...) beyond the first 70 states."""
    head, tail = divmod(state, len(SYLLABLES))
    return (syllable(head - 1) if head else "") + SYLLABLES[tail]


class SyntheticTokenizer(Tokenizer):
    """Text view of the Markov source: one syllable per state, separated by spaces.

    EOS (= num_states) decodes to a newline and the mask to "_"; `encode` reads syllables
    and newlines back, so encode(decode(ids)) == ids for any data ids.
    """

    name = "synthetic"
    eos_marker = "\n"
    mask_marker = "_"

    def __init__(self, source: MarkovSource) -> None:
        self.source = source
        self.words = [syllable(i) for i in range(source.num_states)]
        self._ids = {w: i for i, w in enumerate(self.words)}
        self.eos_id = source.num_states
        self.vocab_size = source.num_states + 1

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SyntheticTokenizer:
        """Rebuild from `to_dict` (the source is regenerated from its parameters)."""
        try:
            source = MarkovSource(d["num_states"], d["branching"], d["concentration"], d["seed"])
        except (KeyError, TypeError, ValueError) as e:
            raise TokenizerError(f"cannot rebuild the synthetic tokenizer from {d!r}: {e}") from e
        return cls(source)

    def encode(self, text: str) -> list[int]:
        """Ids of the space-separated syllables; a newline is EOS."""
        ids = []
        for match in re.finditer(r"\n|[^\s]+", text):
            word = match.group()
            if word == self.eos_marker:
                ids.append(self.eos_id)
            elif word in self._ids:
                ids.append(self._ids[word])
            else:
                raise TokenizerError(
                    f"synthetic tokenizer: word {word!r} at position {match.start()} is not one of "
                    f"the {len(self.words)} state syllables"
                )
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        """Syllables joined by spaces; EOS as a newline (no spaces around it), the mask as "_"."""
        out: list[str] = []
        for i in self._check_ids(ids):
            word = self.words[i] if i < self.eos_id else self.eos_marker if i == self.eos_id else self.mask_marker
            if out and word != self.eos_marker and out[-1] != self.eos_marker:
                out.append(" ")
            out.append(word)
        return "".join(out)

    def to_dict(self) -> dict[str, Any]:
        """The source parameters: the vocabulary and the data follow from them."""
        return {"name": self.name, **self.source.params()}

    def _vocabulary_bytes(self) -> bytes:
        """Includes the source parameters: same words with another chain is different data."""
        return repr(sorted(self.to_dict().items())).encode()


class SyntheticBlocks(InMemoryBlocks):
    """Training/validation blocks [EOS, x_1 .. x_{seq_len-2}, EOS] of source chains.

    `batch(split, index, batch_size)` is a pure function of (seed, split, index, batch_size),
    so a restarted trainer refetches exactly the batches it would have seen.
    """

    def __init__(self, source: MarkovSource, seq_len: int, seed: int) -> None:
        if seq_len < 4:
            raise ValueError(f"synthetic blocks: seq_len must be >= 4 (BOS + 2 states + EOS), got {seq_len}")
        self.source = source
        self.seq_len = seq_len
        self.seed = seed
        self.eos_id = source.num_states

    def batch(self, split: str, index: int, batch_size: int) -> torch.Tensor:
        """Blocks [batch_size, seq_len] (long) for batch `index` of `split` ("train" or "val")."""
        if split not in SPLITS:
            raise ValueError(f"synthetic blocks: split must be one of {SPLITS}, got {split!r}")
        if index < 0 or batch_size < 1:
            raise ValueError(f"synthetic blocks: need index >= 0 and batch_size >= 1, got {index}, {batch_size}")
        generator = torch.Generator().manual_seed(self._batch_seed(split, index, batch_size))
        blocks = torch.full((batch_size, self.seq_len), self.eos_id, dtype=torch.long)
        blocks[:, 1:-1] = self.source.sample(batch_size, self.seq_len - 2, generator)
        return blocks

    def _batch_seed(self, split: str, index: int, batch_size: int) -> int:
        """A hash of the arguments; the lowest bit is the split, so train and val never share one."""
        return (seed_from_key(self.seed, split, index, batch_size) >> 1) * 2 + SPLITS.index(split)

    def entropy_per_token(self) -> float:
        """The floor no model can beat, nats/token over all seq_len positions: the first state
        costs H(pi), each later one the entropy rate, BOS/EOS nothing."""
        s = self.source
        return (s.stationary_entropy + (self.seq_len - 3) * s.entropy_rate) / self.seq_len

    def unigram_nll_per_token(self) -> float:
        """The best context-free (position-aware) model: every inner position costs H(pi)."""
        return (self.seq_len - 2) * self.source.stationary_entropy / self.seq_len


register_tokenizer("synthetic", SyntheticTokenizer.from_dict)
