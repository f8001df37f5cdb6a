"""The token space of a denoiser: which logit columns are data tokens, which id is the mask.

MDLM numbers V data tokens 0..V-1 and puts the mask at V, after them; LLaDA (mask 126,336 of
126,464 ids, chat tokens above it) and Dream (mask 151,666, logits padded to 152,064) put the
mask among the tokens. A `TokenSpace` states either: ids 0..num_tokens-1 are the tokenizer's
tokens, the mask among them; logit columns from num_tokens on are padding of the output layer;
`excluded` names further ids that are never drawn or scored. The data tokens are the others,
and the SUBS parameterisation normalises over exactly their columns. Models only return logits.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch


@dataclass(frozen=True)
class TokenSpace:
    """Ids 0..num_tokens-1 are tokens, `mask_id` among them; the data tokens are those ids but
    the mask and `excluded` (sorted), in id order. Logit columns >= num_tokens are padding."""

    mask_id: int
    num_tokens: int
    excluded: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "excluded", tuple(self.excluded))
        if not 0 <= self.mask_id < self.num_tokens:
            raise ValueError(f"mask id {self.mask_id} is not a token id of [0, {self.num_tokens})")
        if list(self.excluded) != sorted(set(self.excluded)) or any(
                not 0 <= i < self.num_tokens or i == self.mask_id for i in self.excluded):
            raise ValueError(f"excluded ids {self.excluded} must be distinct sorted token ids other than the mask id")
        if self.num_data < 1:
            raise ValueError(f"token space with mask id {self.mask_id} of {self.num_tokens} ids has no data token")

    @classmethod
    def mdlm(cls, vocab_size: int) -> TokenSpace:
        """MDLM's convention: data ids 0..V-1 (V = `vocab_size`), the mask id V, logits padded past V."""
        return cls(mask_id=vocab_size, num_tokens=vocab_size + 1)

    def without(self, ids: list[int] | tuple[int, ...]) -> TokenSpace:
        """This space with the data ids `ids` excluded as well (never drawn or scored)."""
        return TokenSpace(self.mask_id, self.num_tokens, tuple(sorted({*self.excluded, *ids})))

    @property
    def num_data(self) -> int:
        """How many data tokens there are: the width of `data_logits`."""
        return self.num_tokens - 1 - len(self.excluded)

    @property
    def _data_are_a_prefix(self) -> bool:
        """Whether the data ids are 0..num_data-1 (MDLM): then data logits are a slice, indices are ids."""
        return self.mask_id == self.num_tokens - 1 and not self.excluded

    def describe_data(self) -> str:
        """The data tokens in words, for messages."""
        if self._data_are_a_prefix:
            return f"the data vocabulary [0, {self.mask_id})"
        excluded = f" and {len(self.excluded)} excluded ids" if self.excluded else ""
        return f"the data tokens (ids [0, {self.num_tokens}) but the mask id {self.mask_id}{excluded})"

    def data_ids(self, device: torch.device | str = "cpu") -> torch.Tensor:
        """The data token ids in order, int64 [num_data], on `device` (cached: do not modify it)."""
        return _data_ids(self, torch.device(device))

    def data_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """The columns of the data tokens of `logits` [..., >= num_tokens]: [..., num_data], a
        view in the MDLM layout, else a copy (so select rows first). Column j is data token j."""
        if self._data_are_a_prefix:
            return logits[..., : self.mask_id]
        return logits.index_select(-1, self.data_ids(logits.device))

    def token_ids(self, columns: torch.Tensor) -> torch.Tensor:
        """The token ids of columns of `data_logits` (e.g. the draws of a categorical over them)."""
        if self._data_are_a_prefix:
            return columns
        return self.data_ids(columns.device)[columns]

    def data_columns(self, ids: torch.Tensor) -> torch.Tensor:
        """The columns of `data_logits` of data token `ids` (the inverse of `token_ids`)."""
        if self._data_are_a_prefix:
            return ids
        return torch.searchsorted(self.data_ids(ids.device), ids)

    def is_data(self, tokens: torch.Tensor) -> torch.Tensor:
        """Whether each id of `tokens` is a data token, bool of the same shape."""
        inside = (tokens >= 0) & (tokens < self.num_tokens) & (tokens != self.mask_id)
        if self.excluded:
            inside &= ~torch.isin(tokens, torch.tensor(self.excluded, device=tokens.device))
        return inside


@lru_cache(maxsize=32)
def _data_ids(tokens: TokenSpace, device: torch.device) -> torch.Tensor:
    """`TokenSpace.data_ids`, built once per space and device."""
    keep = torch.ones(tokens.num_tokens, dtype=torch.bool)
    keep[[tokens.mask_id, *tokens.excluded]] = False
    return keep.nonzero().squeeze(-1).to(device)


def resolve_tokens(tokens: TokenSpace | int | None, mask_id: int | None = None) -> TokenSpace:
    """The token space a call names: `tokens`, or MDLM's convention for the mask id V (`mask_id`,
    or an int `tokens`), whose data ids are 0..V-1. Exactly one of the two must be given."""
    if (tokens is None) == (mask_id is None):
        raise ValueError(f"give the token space (tokens) or MDLM's mask id (mask_id), not both or neither: "
                         f"got tokens={tokens!r}, mask_id={mask_id!r}")
    chosen = tokens if tokens is not None else mask_id
    return chosen if isinstance(chosen, TokenSpace) else TokenSpace.mdlm(chosen)
