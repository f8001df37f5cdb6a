"""Enumerable toy distributions over V^L sequences, with exact denoisers for testing the math."""

from __future__ import annotations

import itertools
import math

import torch

from edlm_dist.diffusion import TokenSpace


class ToyDistribution:
    """A correlated distribution p over all V^L sequences, known exactly by enumeration."""

    def __init__(self, vocab: int, length: int, seed: int = 0, temperature: float = 1.5):
        g = torch.Generator().manual_seed(seed)
        self.vocab, self.length, self.mask_id = vocab, length, vocab
        self.seqs = torch.tensor(list(itertools.product(range(vocab), repeat=length)))  # [N, L]
        logits = torch.randn(len(self.seqs), generator=g, dtype=torch.float64) * temperature
        self.probs = torch.softmax(logits, 0)
        self.one_hot = torch.nn.functional.one_hot(self.seqs, vocab).double()  # [N, L, V]

    def index(self, x: torch.Tensor) -> torch.Tensor:
        """Row of each sequence of x [B, L] in `seqs`."""
        weights = self.vocab ** torch.arange(self.length - 1, -1, -1)
        return (x * weights).sum(-1)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        return self.probs.log()[self.index(x)]

    def marginals(self) -> torch.Tensor:
        """p(x_i = v), [L, V]."""
        return torch.einsum("n,nlv->lv", self.probs, self.one_hot)

    def conditional_marginals(self, xt: torch.Tensor) -> torch.Tensor:
        """p(x0_i = v | unmasked tokens of xt) for every position, [B, L, V] float64."""
        consistent = ((xt[:, None, :] == self.mask_id) | (xt[:, None, :] == self.seqs[None])).all(-1)
        weights = consistent.double() * self.probs[None]
        marg = torch.einsum("bn,nlv->blv", weights, self.one_hot)
        return marg / marg.sum(-1, keepdim=True)

    def histogram(self, x: torch.Tensor) -> torch.Tensor:
        return torch.bincount(self.index(x), minlength=len(self.seqs)).double() / len(x)

    def product_of_marginals(self) -> torch.Tensor:
        """q(x) = prod_i p(x_i), over `seqs`."""
        m = self.marginals()
        return m[torch.arange(self.length), self.seqs].prod(-1)


def total_variation(p: torch.Tensor, q: torch.Tensor) -> float:
    return 0.5 * (p - q).abs().sum().item()


def logits_with_padding(log_probs: torch.Tensor, pad_to: int, mask_logit: float) -> torch.Tensor:
    """Logits [B, L, pad_to]: the data log-probs, a (large) mask logit, and garbage padding."""
    b, l, v = log_probs.shape
    g = torch.Generator().manual_seed(123)
    out = torch.randn(b, l, pad_to, generator=g, dtype=torch.float64) * 5 + 30
    out[..., :v] = log_probs
    out[..., v] = mask_logit
    return out.float()


class ExactDenoiser:
    """p(x0_i | xt) of the toy distribution: the best possible denoiser. Ignores t."""

    reads_time = False

    def __init__(self, dist: ToyDistribution, pad_to: int = 8, mask_logit: float = 50.0):
        self.dist, self.pad_to, self.mask_logit = dist, pad_to, mask_logit
        self.calls = 0

    def __call__(self, xt: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        logp = self.dist.conditional_marginals(xt).clamp_min(1e-300).log()
        return logits_with_padding(logp, self.pad_to, self.mask_logit)


class ContextFreeDenoiser:
    """Outputs the marginals at masked positions and garbage (a confident wrong token) elsewhere."""

    reads_time = False

    def __init__(self, dist: ToyDistribution, pad_to: int = 8, mask_logit: float = 50.0):
        self.dist, self.pad_to, self.mask_logit = dist, pad_to, mask_logit

    def __call__(self, xt: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        logp = self.dist.marginals().log().expand(xt.shape[0], -1, -1).clone()
        observed = xt != self.dist.mask_id
        wrong = (xt + 1) % self.dist.vocab
        garbage = torch.full_like(logp, -20.0).scatter(-1, wrong[..., None], 20.0)
        logp = torch.where(observed[..., None], garbage, logp)
        return logits_with_padding(logp, self.pad_to, self.mask_logit)


def implied_sampler_distribution(
    dist: ToyDistribution, unmask_probs: list[float], init: tuple[int, ...] | None = None
) -> torch.Tensor:
    """Exact distribution over `seqs` of plain ancestral sampling with the exact denoiser.

    `unmask_probs[k]` is the probability that a masked token unmasks at step k. Propagates the
    probability of every partially masked state; given a state, positions move independently.
    """
    m, length = dist.mask_id, dist.length
    states = {init or (m,) * length: 1.0}
    for p in unmask_probs:
        nxt: dict[tuple[int, ...], float] = {}
        for state, mass in states.items():
            cond = dist.conditional_marginals(torch.tensor([state]))[0]
            options = [
                [(m, 1.0 - p)] + [(v, p * float(cond[i, v])) for v in range(dist.vocab)]
                if tok == m else [(tok, 1.0)]
                for i, tok in enumerate(state)
            ]
            for combo in itertools.product(*options):
                weight = math.prod(w for _, w in combo)
                if weight > 0:
                    key = tuple(tok for tok, _ in combo)
                    nxt[key] = nxt.get(key, 0.0) + mass * weight
        states = nxt
    return law_of_final_states(dist, states)


def law_of_final_states(dist: ToyDistribution, states: dict[tuple[int, ...], float]) -> torch.Tensor:
    """The probabilities of the V^L sequences from the mass of each final (fully unmasked) state."""
    out = torch.zeros(len(dist.seqs), dtype=torch.float64)
    for state, mass in states.items():
        assert dist.mask_id not in state, "the last step must unmask everything"
        out[dist.index(torch.tensor(state))] += mass
    return out


class ToyAR:
    """A peaked random autoregressive source over V^L: p(x_i | x_<i) is a softmax of a random
    table row per prefix (scaled by `temperature`). Has the AR model interface `AREnergy`
    reads (`vocab_size`, logits by `__call__`, `conditional_log_probs`, `token_log_probs`), and
    `distribution()` gives it as an enumerable `ToyDistribution`."""

    def __init__(self, vocab: int, length: int, seed: int = 0, temperature: float = 2.5):
        g = torch.Generator().manual_seed(seed)
        self.vocab_size, self.length = vocab, length
        self.tables = [torch.log_softmax(torch.randn(vocab**i, vocab, generator=g, dtype=torch.float64) * temperature, -1)
                       for i in range(length)]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Log-probabilities [N, L, V] (normalised logits): position i from the prefix x_<i."""
        code = torch.zeros(x.shape[0], dtype=torch.long)
        rows = []
        for i in range(x.shape[1]):
            rows.append(self.tables[i][code])
            code = code * self.vocab_size + x[:, i].clamp(max=self.vocab_size - 1)  # a mask read later is never used
        return torch.stack(rows, 1)

    def conditional_log_probs(self, x: torch.Tensor, *targets: torch.Tensor) -> list[torch.Tensor]:
        log_probs = self(x)
        return [log_probs.gather(-1, target[..., None]).squeeze(-1) for target in targets]

    def token_log_probs(self, x: torch.Tensor) -> torch.Tensor:
        return self.conditional_log_probs(x, x)[0]

    def distribution(self) -> ToyDistribution:
        toy = ToyDistribution(self.vocab_size, self.length)
        toy.probs = self.token_log_probs(toy.seqs).sum(-1).exp()
        return toy


class MarginalsAR(ToyAR):
    """An 'AR model' that ignores the prefix: p(x_i | x_<i) = the source's marginal at i. With
    the `ContextFreeDenoiser` of the same source as proposal, the coAR energy is exactly 0."""

    def __init__(self, dist: ToyDistribution):
        self.vocab_size, self.length = dist.vocab, dist.length
        self.marginals = dist.marginals().log()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.marginals.expand(x.shape[0], -1, -1)


class BlurredDenoiser(ExactDenoiser):
    """A poor proposal: the exact conditional marginals mixed with the uniform distribution."""

    def __init__(self, dist: ToyDistribution, blur: float = 0.5):
        super().__init__(dist)
        self.blur = blur

    def __call__(self, xt: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        probs = (1 - self.blur) * self.dist.conditional_marginals(xt) + self.blur / self.dist.vocab
        return logits_with_padding(probs.log(), self.pad_to, self.mask_logit)


def exact_marginal_terms(dist: ToyDistribution, x0: torch.Tensor, xt: torch.Tensor, log_weights: torch.Tensor) -> torch.Tensor:
    """sum over masked i of -log P(x_i = x0_i), P the distribution over the sequences consistent
    with xt with unnormalised log weights `log_weights` [B, N] (per row), float64 [B]."""
    consistent = ((xt[:, None, :] == dist.mask_id) | (xt[:, None, :] == dist.seqs[None])).all(-1)
    weights = torch.softmax(log_weights.masked_fill(~consistent, -math.inf), dim=-1)  # [B, N]
    agrees = dist.seqs[None] == x0[:, None, :]  # [B, N, L]
    marginal = torch.einsum("bn,bnl->bl", weights, agrees.double())
    return -(marginal.log() * (xt == dist.mask_id)).sum(-1)


def middle_mask_space(vocab: int) -> TokenSpace:
    """A token space of `vocab` data tokens laid out as LLaDA's and Dream's are, not as MDLM's:
    id 0 is data, the mask id is 1, data tokens follow it, id 3 is excluded (never drawn or
    scored), and `relabel` pads the logits past the last token."""
    return TokenSpace(mask_id=1, num_tokens=vocab + 2, excluded=(3,))


class Relabelling:
    """The id map between an MDLM-convention toy (data ids 0..V-1, mask V) and a `TokenSpace` of
    V data tokens: MDLM's data id j is the space's j-th data token (the order is kept, so draws
    over the data logits take the same noise in both) and MDLM's mask is the space's mask. Logits
    move to the space's layout with the mask, excluded and padded columns large: they would win
    every draw if they counted."""

    def __init__(self, vocab: int, tokens: TokenSpace, pad: int = 3) -> None:
        data = tokens.data_ids()
        assert len(data) == vocab
        self.vocab, self.tokens, self.width = vocab, tokens, tokens.num_tokens + pad
        self.to_space = torch.cat([data, torch.tensor([tokens.mask_id])])  # MDLM id -> space id
        self.to_mdlm = torch.full((tokens.num_tokens,), -1, dtype=torch.long)  # -1: excluded
        self.to_mdlm[self.to_space] = torch.arange(vocab + 1)

    def ids(self, x: torch.Tensor) -> torch.Tensor:
        """MDLM ids -> the space's ids."""
        return self.to_space[x]

    def mdlm_ids(self, x: torch.Tensor) -> torch.Tensor:
        """The space's ids -> MDLM ids (an excluded id has none and raises)."""
        out = self.to_mdlm[x]
        assert (out >= 0).all(), "an excluded id was drawn"
        return out

    def logits(self, mdlm_logits: torch.Tensor) -> torch.Tensor:
        """MDLM logits [..., >= V] -> logits [..., width] in the space's layout."""
        g = torch.Generator().manual_seed(321)
        out = torch.randn(*mdlm_logits.shape[:-1], self.width, generator=g, dtype=mdlm_logits.dtype) * 5 + 30
        out[..., self.tokens.mask_id] = 50.0
        out[..., list(self.tokens.excluded)] = 60.0
        out[..., self.tokens.data_ids()] = mdlm_logits[..., : self.vocab]
        return out


class RelabelledDenoiser:
    """An MDLM-convention toy denoiser seen through a `Relabelling`: reads and returns the space's ids."""

    def __init__(self, inner, relabelling: Relabelling) -> None:
        self.inner, self.relabelling = inner, relabelling
        self.reads_time = getattr(inner, "reads_time", True)

    def __call__(self, xt: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.relabelling.logits(self.inner(self.relabelling.mdlm_ids(xt), t))


class RelabelledAR:
    """A `ToyAR` seen through a `Relabelling`: logits in the space's layout, conditionals over its data tokens."""

    def __init__(self, inner: ToyAR, relabelling: Relabelling) -> None:
        self.inner, self.relabelling = inner, relabelling

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.relabelling.logits(self.inner(self.relabelling.mdlm_ids(x)))

    def conditional_log_probs(self, x: torch.Tensor, *targets: torch.Tensor) -> list[torch.Tensor]:
        mdlm = self.relabelling.mdlm_ids
        return self.inner.conditional_log_probs(mdlm(x), *(mdlm(target) for target in targets))

    def token_log_probs(self, x: torch.Tensor) -> torch.Tensor:
        return self.conditional_log_probs(x, x)[0]
