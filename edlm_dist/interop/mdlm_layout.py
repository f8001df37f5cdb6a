"""MDLM's two backbones (the DiT of `models/dit.py` and the causal AR of
`models/autoregressive.py` in kuleshov-group/mdlm) in this project's terms: their parameter
names and shapes, and the exact correspondence with `DiT` and `ARTransformer`.

The DiT maps one to one (MDLM's `sigma_map` is our `time_embed`, evaluated at sigma = 0 and
t = 0 alike when the model is not time-conditioned; our output layer has extra zero rows up to a
multiple of 64). MDLM's AR has no adaLN and no time embedder: it is our AR with every block's
modulation fixed to the identity (shift 0, scale 0, gate 1), which its adaLN biases express
exactly, reading BOS as its start token.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from edlm_dist.config.schema import ModelConfig
from edlm_dist.models import padded_vocab_size

FREQ_DIM = 256  # the sinusoidal features of MDLM's TimestepEmbedder
MLP_RATIO = 4  # fixed in MDLM's DDiTBlock
ROTARY_BASE = 10_000.0
INV_FREQ = "rotary_emb.inv_freq"  # MDLM's only buffer


class MDLMFormatError(ValueError):
    """MDLM weights or a config that this project cannot express exactly, named in the message."""

    user_error = True  # `exit_on_user_error` prints it as one line and exits 2


@dataclass(frozen=True)
class MDLMArchitecture:
    """The fields of an MDLM backbone: `vocab_size` counts the mask token (50258 for GPT-2)."""

    kind: Literal["dit", "ar"]
    vocab_size: int
    hidden: int
    n_blocks: int
    n_heads: int
    cond_dim: int
    dropout: float
    length: int
    time_conditioning: bool = False

    def check(self, where: str) -> None:
        """Refuse what our models cannot reproduce exactly (`where` names the source)."""
        if self.time_conditioning and self.kind == "dit":
            raise MDLMFormatError(
                f"{where}: time_conditioning is true; MDLM's time-conditioned DiT embeds sigma = -log alpha_t, "
                "this project's embeds t, so it cannot be imported exactly (only time-independent models can)"
            )
        for name in ("vocab_size", "hidden", "n_blocks", "n_heads", "cond_dim", "length"):
            if getattr(self, name) < 1:
                raise MDLMFormatError(f"{where}: {name} must be >= 1, got {getattr(self, name)}")
        if self.hidden % self.n_heads or (self.hidden // self.n_heads) % 2:
            raise MDLMFormatError(f"{where}: hidden size {self.hidden} over {self.n_heads} heads must give an even "
                                  "head size (rotary embedding)")

    def keys(self) -> dict[str, tuple[int, ...]]:
        """Every state-dict entry of MDLM's backbone, in its own (registration) order."""
        h, c, v = self.hidden, self.cond_dim, self.vocab_size
        keys: dict[str, tuple[int, ...]] = {"vocab_embed.embedding": (v, h)}
        if self.kind == "dit":
            keys |= {"sigma_map.mlp.0.weight": (c, FREQ_DIM), "sigma_map.mlp.0.bias": (c,),
                     "sigma_map.mlp.2.weight": (c, c), "sigma_map.mlp.2.bias": (c,)}
        keys[INV_FREQ] = (h // self.n_heads // 2,)
        for i in range(self.n_blocks):
            b = f"blocks.{i}."
            keys |= {b + "norm1.weight": (h,), b + "attn_qkv.weight": (3 * h, h), b + "attn_out.weight": (h, h),
                     b + "norm2.weight": (h,), b + "mlp.0.weight": (MLP_RATIO * h, h), b + "mlp.0.bias": (MLP_RATIO * h,),
                     b + "mlp.2.weight": (h, MLP_RATIO * h), b + "mlp.2.bias": (h,)}
            if self.kind == "dit":
                keys |= {b + "adaLN_modulation.weight": (6 * h, c), b + "adaLN_modulation.bias": (6 * h,)}
        keys |= {"output_layer.norm_final.weight": (h,), "output_layer.linear.weight": (v, h),
                 "output_layer.linear.bias": (v,)}
        if self.kind == "dit":
            keys |= {"output_layer.adaLN_modulation.weight": (2 * h, c),
                     "output_layer.adaLN_modulation.bias": (2 * h,)}
        return keys

    def parameter_names(self) -> list[str]:
        """The names of MDLM's `backbone.parameters()`, in order: how its EMA lists `shadow_params`."""
        return [name for name in self.keys() if name != INV_FREQ]

    def model_config(self, start_token: int) -> ModelConfig:
        """Our ModelConfig for this backbone (`start_token`: the BOS id the AR reads)."""
        return ModelConfig(n_layers=self.n_blocks, hidden_size=self.hidden, n_heads=self.n_heads, cond_dim=self.cond_dim,
                           mlp_ratio=MLP_RATIO, dropout=self.dropout, time_conditioning=False,
                           start_token=start_token if self.kind == "ar" else -1)


def architecture_of(config: ModelConfig, vocab_size: int, kind: Literal["dit", "ar"], length: int) -> MDLMArchitecture:
    """The MDLM backbone matching our model of `config` over `vocab_size` data tokens, or a
    one-line refusal naming what MDLM's code cannot express."""
    if config.mlp_ratio != MLP_RATIO:
        raise MDLMFormatError(f"model.mlp_ratio is {config.mlp_ratio}; MDLM's DiT and AR have {MLP_RATIO}")
    if config.time_conditioning:
        raise MDLMFormatError("model.time_conditioning is true; MDLM's time-conditioned DiT embeds sigma, "
                              "this project's embeds t, so MDLM's code would read it differently")
    return MDLMArchitecture(kind, vocab_size + 1, config.hidden_size, config.n_layers, config.n_heads,
                            config.cond_dim, config.dropout, length)


def inv_freq(head_dim: int) -> Tensor:
    """MDLM's rotary buffer: 1 / base^(2i / head_dim), float32."""
    return 1.0 / (ROTARY_BASE ** (torch.arange(0, head_dim, 2).float() / head_dim))


def _ours(name: str) -> str:
    """Our parameter name for MDLM's `name` (both backbones)."""
    for theirs, mine in (("vocab_embed.embedding", "embed.weight"), ("sigma_map.", "time_embed."),
                         ("output_layer.norm_final.", "final.norm."), ("output_layer.", "final.")):
        if name.startswith(theirs):
            return mine + name[len(theirs):]
    return name.replace(".attn_qkv.", ".qkv.")


def check_keys(arch: MDLMArchitecture, shapes: dict[str, tuple[int, ...]], where: str) -> None:
    """Refuse a state dict (MDLM names -> shapes) with missing, unexpected or mis-shaped keys,
    naming the first few; the rotary buffer may be absent (it is recomputed)."""
    expected = arch.keys()
    problems = []
    if "blocks.0.mlp.0.weight" in shapes and shapes["blocks.0.mlp.0.weight"][0] != MLP_RATIO * arch.hidden:
        width = shapes["blocks.0.mlp.0.weight"][0]
        raise MDLMFormatError(f"{where}: the MLP of blocks.0 is {width} wide, {width / arch.hidden:g} x the hidden "
                              f"size {arch.hidden}; MDLM's blocks (and this project's import) have {MLP_RATIO} x")
    missing = [name for name in expected if name not in shapes and name != INV_FREQ]
    unexpected = [name for name in shapes if name not in expected]
    misshaped = [f"{n} {list(shapes[n])} (expected {list(expected[n])})"
                 for n in expected if n in shapes and tuple(shapes[n]) != expected[n]]
    for label, names in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped)):
        if names:
            more = f" and {len(names) - 3} more" if len(names) > 3 else ""
            problems.append(f"{label} keys {', '.join(names[:3])}{more}")
    if problems:
        raise MDLMFormatError(f"{where} does not hold MDLM's {arch.kind} backbone of its config: {'; '.join(problems)}")


def to_ours(arch: MDLMArchitecture, state: dict[str, Tensor], where: str) -> dict[str, Tensor]:
    """Our model's state dict (float32, output rows padded with zeros) for MDLM's `state`, whose
    keys `check_keys` accepted. A stored rotary buffer must be the standard one."""
    if INV_FREQ in state and not torch.allclose(state[INV_FREQ].float(), inv_freq(arch.hidden // arch.n_heads)):
        raise MDLMFormatError(f"{where}: {INV_FREQ} is not the standard rotary table (base {ROTARY_BASE:g}), "
                              "which this project's attention uses")
    ours = {_ours(name): state[name].detach().to(torch.float32).clone()
            for name in arch.parameter_names()}
    padded = padded_vocab_size(arch.vocab_size - 1)
    rows = padded - arch.vocab_size
    ours["final.linear.weight"] = torch.cat((ours["final.linear.weight"], ours["final.linear.weight"].new_zeros(rows, arch.hidden)))
    ours["final.linear.bias"] = torch.cat((ours["final.linear.bias"], ours["final.linear.bias"].new_zeros(rows)))
    if arch.kind == "ar":
        ours |= _identity_modulation(arch)
    return ours


def _identity_modulation(arch: MDLMArchitecture) -> dict[str, Tensor]:
    """The time embedder and adaLN parameters of our AR that make every modulation the identity:
    zero weights, biases giving shift 0, scale 0 and gate 1, whatever the conditioning vector."""
    h, c = arch.hidden, arch.cond_dim
    state = {"time_embed.mlp.0.weight": torch.zeros(c, FREQ_DIM), "time_embed.mlp.0.bias": torch.zeros(c),
             "time_embed.mlp.2.weight": torch.zeros(c, c), "time_embed.mlp.2.bias": torch.zeros(c),
             "final.adaLN_modulation.weight": torch.zeros(2 * h, c), "final.adaLN_modulation.bias": torch.zeros(2 * h)}
    for i in range(arch.n_blocks):
        state[f"blocks.{i}.adaLN_modulation.weight"] = torch.zeros(6 * h, c)
        state[f"blocks.{i}.adaLN_modulation.bias"] = _IDENTITY_GATES.repeat_interleave(h)
    return state


_IDENTITY_GATES = torch.tensor([0.0, 0.0, 1.0, 0.0, 0.0, 1.0])  # shift, scale, gate of attention, then of the MLP


def to_mdlm(arch: MDLMArchitecture, state: dict[str, Tensor]) -> dict[str, Tensor]:
    """MDLM's state dict (every key its backbone's strict load expects, the rotary buffer
    included, in its order) for our model's `state`; padded output rows are cut off. An AR whose
    modulations are not the identity is refused (MDLM's AR has none)."""
    if arch.kind == "ar":
        _check_identity(arch, state)
    mdlm = {}
    for name, shape in arch.keys().items():
        tensor = inv_freq(arch.hidden // arch.n_heads) if name == INV_FREQ else state[_ours(name)]
        mdlm[name] = tensor[: shape[0]].detach().to(torch.float32).contiguous().clone()
    return mdlm


def _check_identity(arch: MDLMArchitecture, state: dict[str, Tensor]) -> None:
    for name, value in _identity_modulation(arch).items():
        if name.startswith("time_embed."):
            continue  # read only through the zero adaLN weights
        if not torch.equal(state[name].float(), value):
            raise MDLMFormatError(
                f"{name} is not the identity modulation: this AR was trained with adaLN conditioning, "
                "which MDLM's AR (no adaLN) cannot express; only AR runs imported from MDLM can be exported"
            )
