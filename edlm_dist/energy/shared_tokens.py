"""The tokenizer a scoring run (an `ar`/`coar`/`nce` energy, a project Gen PPL oracle) must share
with the denoiser whose samples it reads: the same token at every id the denoiser writes.

When both sides have tokenizer files at hand (`data.tokenizer = "hf"` with a folder, or GPT-2's
BPE against an `hf` one), they are compared id by id over the denoiser's data tokens (its token
space: the mask and excluded ids left out, so Dream's mask 151,666 may lie past Qwen2.5's ids);
otherwise their settings must agree: the tokenizer kind, the vocabulary size and the special ids
the runs state. Every mismatch is one line naming both runs.
"""

from __future__ import annotations

from dataclasses import dataclass

from edlm_dist.data.errors import TokenizerError
from edlm_dist.data.tokenizers import Tokenizer, build_tokenizer, check_same_token_ids
from edlm_dist.diffusion.tokens import TokenSpace
from edlm_dist.runs.folder import IMPORTED_NAME, RunFolder
from edlm_dist.runs.weights import Checkpoint, WeightsError, checkpoint_vocab_size


@dataclass(frozen=True)
class SideTokens:
    """What one side says about its tokens: its name for messages, the tokenizer kind
    (`data.tokenizer`), its vocabulary size, its EOS id where it states one, and the tokenizer
    itself where its files are at hand (None: only the settings can be compared)."""

    name: str
    kind: str
    vocab_size: int
    eos_id: int | None
    tokenizer: Tokenizer | None
    seq_len: int | None = None


def run_tokens(ckpt: Checkpoint, name: str) -> SideTokens:
    """The tokens of the run of `ckpt` (called `name`): its hf tokenizer when `data.tokenizer_path`
    names its files, else its settings (an imported run's EOS from imported.json)."""
    data = ckpt.config.data
    tokenizer = None
    if data.tokenizer == "hf" and data.tokenizer_path:
        try:
            tokenizer = build_tokenizer("hf", data.tokenizer_path)
        except TokenizerError as err:
            raise WeightsError(f"{name}: its tokenizer (data.tokenizer_path in {ckpt.run_dir / 'config.toml'}) "
                               f"cannot be read: {err}") from None
    special = (RunFolder(ckpt.run_dir).read_json(IMPORTED_NAME) or {}).get("special_ids") or {}
    eos = tokenizer.eos_id if tokenizer is not None else special.get("eos")
    return SideTokens(name, data.tokenizer, checkpoint_vocab_size(ckpt), eos, tokenizer, data.seq_len)


def tokenizer_tokens(tokenizer: Tokenizer, name: str) -> SideTokens:
    """The tokens of samples decoded by `tokenizer` (called `name`)."""
    table = tokenizer if tokenizer.name == "hf" else None
    return SideTokens(name, tokenizer.name, tokenizer.vocab_size, tokenizer.eos_id, table)


def _table(side: SideTokens, other: SideTokens) -> Tokenizer | None:
    """The side's tokenizer to compare id by id: its hf files, or GPT-2's BPE against hf files."""
    if side.tokenizer is not None:
        return side.tokenizer
    if side.kind == "gpt2" and other.tokenizer is not None:
        try:
            return build_tokenizer("gpt2")
        except TokenizerError as err:
            raise WeightsError(f"{side.name}: GPT-2's tokenizer is needed to compare it with {other.name}'s: {err}") \
                from None
    return None


def check_same_tokens(scorer: SideTokens, denoiser: SideTokens, tokens: TokenSpace) -> None:
    """Refuse, in one line naming both, a `scorer` whose tokens are not the `denoiser`'s: id by id
    over the denoiser's data tokens (`tokens`) when both have tokenizer files, else by settings;
    and, where both state one, a different data.seq_len."""
    if scorer.seq_len is not None and denoiser.seq_len is not None and scorer.seq_len != denoiser.seq_len:
        raise WeightsError(f"data.seq_len of {scorer.name} ({scorer.seq_len}) does not match "
                           f"{denoiser.name} ({denoiser.seq_len})")
    mine, theirs = _table(scorer, denoiser), _table(denoiser, scorer)
    if mine is not None and theirs is not None:
        ids = tokens.data_ids().tolist()
        if ids[-1] >= scorer.vocab_size:
            raise WeightsError(f"{scorer.name} has {scorer.vocab_size} token ids; {denoiser.name} writes "
                               f"data token {ids[-1]} (only its mask and excluded ids may lie outside)")
        try:
            check_same_token_ids(mine, theirs, ids)
        except TokenizerError as err:
            raise WeightsError(f"{scorer.name} does not share the tokenizer of {denoiser.name}: "
                               f"{err}") from None
        return
    for what, a, b in (("data.tokenizer", scorer.kind, denoiser.kind), ("vocabulary size", scorer.vocab_size,
                                                                          denoiser.vocab_size)):
        if a != b:
            raise WeightsError(f"{what} of {scorer.name} ({a}) does not match {denoiser.name} ({b}), "
                               f"and tokenizer files to compare id by id are not at hand on both sides")
    if None not in (scorer.eos_id, denoiser.eos_id) and scorer.eos_id != denoiser.eos_id:
        raise WeightsError(f"the EOS id of {scorer.name} ({scorer.eos_id}) does not match "
                           f"{denoiser.name} ({denoiser.eos_id})")
