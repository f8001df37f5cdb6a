"""The Hugging Face layouts of LLaDA, Dream, Llama, Qwen2 and GPT-2 in this project's terms: what
their `config.json` says about the forward pass (read into our [model] keys, or refused in one
line when our models cannot compute it exactly), the `config.json` written back, and the name
(and orientation) of every tensor against our parameters.

Every rule here comes from the models' public code, cited per layout (docs/hf_models.md lists
them): LLaDA's `configuration_llada.py` / `modeling_llada.py` and Dream's
`configuration_dream.py` / `modeling_dream.py` as they ship with GSAI-ML/LLaDA-8B-* and
Dream-org/Dream-v0-*-7B; transformers' `models/llama`, `models/qwen2` and `models/gpt2`. A key a
config.json leaves out takes the default of that model's own config class.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields
from typing import Any, Callable, Literal

from edlm_dist.config.schema import ModelConfig

Task = Literal["mdlm", "ar"]
_ABSENT = object()


class HFFormatError(ValueError):
    """A Hugging Face folder or config that this project cannot read exactly, named in the message."""

    user_error = True  # `exit_on_user_error` prints it as one line and exits 2


@dataclass(frozen=True)
class TensorMap:
    """One of our parameters and the checkpoint tensor it is (`transposed`: theirs is ours.T)."""

    ours: str
    theirs: str
    transposed: bool = False


@dataclass(frozen=True)
class HFArchitecture:
    """A checkpoint's architecture: its `layout`, our [model] keys for it (but the vocabulary and
    start token, which `model_config` completes), the task of its model, the context length its
    config states and its special token ids."""

    layout: str
    fields: dict[str, Any]
    task: Task
    rows: int  # embedding rows (the config's vocab_size, LLaDA's embedding_size)
    context: int
    special_ids: dict[str, Any] = field(default_factory=dict)

    def model_config(self, vocab_size: int, start_token: int = -1) -> ModelConfig:
        """Our ModelConfig for this checkpoint with `vocab_size` token ids (the causal LM's
        `start_token`: the id it reads before the first token)."""
        return ModelConfig(**self.fields, vocab_size=vocab_size, embedding_rows=self.rows,
                           start_token=start_token if self.task == "ar" else -1)


class _Config:
    """A config.json's values, each checked for its type; a missing key takes `default`."""

    def __init__(self, values: dict[str, Any], where: str) -> None:
        self.values, self.where = values, where

    def get(self, key: str, kind: type | tuple[type, ...], default: Any = _ABSENT) -> Any:
        value = self.values.get(key, default)
        if value is _ABSENT:
            raise HFFormatError(f"{self.where}: key {key!r} is missing")
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if float in kinds and type(value) is int:
            value = float(value)
        if type(value) not in kinds:  # exact types: a JSON true is not an integer
            raise HFFormatError(f"{self.where}: {key} must be {_kind_name(kinds)}, got {value!r}")
        return value

    def expect(self, key: str, allowed: tuple[Any, ...], default: Any, why: str) -> Any:
        """The value of `key` (default `default`), which must be one of `allowed`: our models
        compute only those (`why` says what the others would need)."""
        value = self.values.get(key, default)
        if not any(type(value) is type(choice) and value == choice for choice in allowed):
            shown = " or ".join(repr(a) for a in allowed)
            raise HFFormatError(f"{self.where}: {key} = {value!r} is not supported ({why}); expected {shown}")
        return value


def _kind_name(kinds: tuple[type, ...]) -> str:
    names = {int: "an integer", float: "a number", bool: "true or false", dict: "an object", list: "a list",
             type(None): "null"}
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def _rope(config: _Config) -> dict[str, Any]:
    """Our rope_* keys from `rope_theta` and `rope_scaling` (the published configs) or from
    `rope_parameters` (what transformers 5 writes): the default rotary embedding or Llama 3's."""
    parameters = config.get("rope_parameters", (dict, type(None)), None)
    if parameters is None:
        parameters = dict(config.get("rope_scaling", (dict, type(None)), None) or {})
        parameters.setdefault("rope_theta", config.get("rope_theta", float, _THETA_DEFAULT))
    kind = parameters.get("rope_type", parameters.get("type", "default"))
    theta = _Config(parameters, f"{config.where} (rope parameters)").get("rope_theta", float, _THETA_DEFAULT)
    if kind == "default":
        return {"rope_theta": theta}
    if kind != "llama3":
        raise HFFormatError(f"{config.where}: rope type {kind!r} is not supported (this project computes the "
                            "default rotary embedding and Llama 3's 'llama3' scaling)")
    scaled = _Config(parameters, f"{config.where} (rope_scaling)")
    return {"rope_theta": theta, "rope_scaling": "llama3", "rope_factor": scaled.get("factor", float),
            "rope_low_freq_factor": scaled.get("low_freq_factor", float),
            "rope_high_freq_factor": scaled.get("high_freq_factor", float),
            "rope_original_max_positions": scaled.get("original_max_position_embeddings", int)}


_THETA_DEFAULT = 10000.0  # LlamaConfig's, Qwen2Config's, DreamConfig's and LLaDA's ModelConfig's default base


def _rope_json(model: ModelConfig) -> dict[str, Any]:
    """`rope_theta` and `rope_scaling` as the published Llama-family configs write them."""
    scaling = None if model.rope_scaling == "none" else {
        "rope_type": "llama3", "factor": model.rope_factor, "low_freq_factor": model.rope_low_freq_factor,
        "high_freq_factor": model.rope_high_freq_factor,
        "original_max_position_embeddings": model.rope_original_max_positions}
    return {"rope_theta": model.rope_theta, "rope_scaling": scaling}


def _special_ids(config: _Config, *names: str) -> dict[str, Any]:
    return {name: config.values.get(f"{name}_token_id") for name in names}


def _head_dim(config: _Config, hidden: int, heads: int) -> None:
    """Refuse a `head_dim` other than hidden size / heads (what the attention of our models uses)."""
    head_dim = config.get("head_dim", (int, type(None)), None)
    if head_dim not in (None, hidden // heads):
        raise HFFormatError(f"{config.where}: head_dim {head_dim} differs from hidden size / heads = "
                            f"{hidden // heads}, which this project's attention uses")


def _heads(config: _Config, hidden: int, heads: int, kv_heads: int) -> None:
    """Refuse heads our attention cannot split: an odd or other head size, key/value heads that do not group."""
    if heads < 1 or hidden % heads or (hidden // heads) % 2:
        raise HFFormatError(f"{config.where}: hidden size {hidden} over {heads} heads must give an even head size "
                            "(rotary embedding)")
    if kv_heads < 1 or heads % kv_heads:
        raise HFFormatError(f"{config.where}: {heads} attention heads do not group over {kv_heads} key/value heads")


# ---- layouts ----------------------------------------------------------------------------------

_HF_NAMES = [  # ours -> transformers' LlamaForCausalLM names (also Qwen2's and Dream's)
    (r"embed\.weight", "model.embed_tokens.weight"),
    (r"blocks\.(\d+)\.attn_norm\.", r"model.layers.\1.input_layernorm."),
    (r"blocks\.(\d+)\.([qkvo])_proj\.", r"model.layers.\1.self_attn.\2_proj."),
    (r"blocks\.(\d+)\.mlp_norm\.", r"model.layers.\1.post_attention_layernorm."),
    (r"blocks\.(\d+)\.(gate|up|down)_proj\.", r"model.layers.\1.mlp.\2_proj."),
    (r"norm\.weight", "model.norm.weight"),
    (r"head\.weight", "lm_head.weight"),
]
_LLADA_NAMES = [  # ours -> LLaDA's LLaDAModelLM names (modeling_llada.py: LLaDAModel, LLaDALlamaBlock)
    (r"embed\.weight", "model.transformer.wte.weight"),
    (r"blocks\.(\d+)\.attn_norm\.", r"model.transformer.blocks.\1.attn_norm."),
    (r"blocks\.(\d+)\.([qkv])_proj\.", r"model.transformer.blocks.\1.\2_proj."),
    (r"blocks\.(\d+)\.o_proj\.", r"model.transformer.blocks.\1.attn_out."),
    (r"blocks\.(\d+)\.mlp_norm\.", r"model.transformer.blocks.\1.ff_norm."),
    (r"blocks\.(\d+)\.gate_proj\.", r"model.transformer.blocks.\1.ff_proj."),
    (r"blocks\.(\d+)\.up_proj\.", r"model.transformer.blocks.\1.up_proj."),
    (r"blocks\.(\d+)\.down_proj\.", r"model.transformer.blocks.\1.ff_out."),
    (r"norm\.weight", "model.transformer.ln_f.weight"),
    (r"head\.weight", "model.transformer.ff_out.weight"),
]
_GPT2_NAMES = [  # ours -> transformers' GPT2Model names (under the prefix); Conv1D weights are transposed
    (r"embed\.weight", "wte.weight"),
    (r"positions\.weight", "wpe.weight"),
    (r"blocks\.(\d+)\.ln_([12])\.", r"h.\1.ln_\2."),
    (r"blocks\.(\d+)\.qkv\.", r"h.\1.attn.c_attn."),
    (r"blocks\.(\d+)\.attn_out\.", r"h.\1.attn.c_proj."),
    (r"blocks\.(\d+)\.fc\.", r"h.\1.mlp.c_fc."),
    (r"blocks\.(\d+)\.proj\.", r"h.\1.mlp.c_proj."),
    (r"norm\.", "ln_f."),
]
# GPT-2's causal-mask buffers in checkpoints saved by older transformers (its GPT2PreTrainedModel
# ignores them on load, `_keys_to_ignore_on_load_unexpected`): known, never read
GPT2_MASK_BUFFER = re.compile(r"^(transformer\.)?h\.\d+\.attn\.(bias|masked_bias)$")


def _renamed(rules: list[tuple[str, str]], name: str) -> str:
    for pattern, replacement in rules:
        renamed, count = re.subn(f"^{pattern}", replacement, name)
        if count:
            return renamed
    raise KeyError(name)


@dataclass(frozen=True)
class Layout:
    """One published layout: which `model_type`s say it, its task, how its config.json reads
    (`parse`) and is written (`write`), and its tensor names (`their_name`)."""

    name: str
    model_types: tuple[str, ...]
    task: Task
    parse: Callable[[_Config], HFArchitecture]
    write: Callable[[ModelConfig, int], dict[str, Any]]  # (our model, context length) -> config.json
    their_name: Callable[[str, str], tuple[str, bool]]  # (our name, prefix) -> (theirs, transposed)

    def tensor_maps(self, names: list[str], prefix: str = "") -> list[TensorMap]:
        """The checkpoint tensor behind each of our parameter `names`."""
        return [TensorMap(ours, *self.their_name(ours, prefix)) for ours in names]


def _hf_name(ours: str, prefix: str) -> tuple[str, bool]:
    return _renamed(_HF_NAMES, ours), False


def _llada_name(ours: str, prefix: str) -> tuple[str, bool]:
    return _renamed(_LLADA_NAMES, ours), False


def _gpt2_name(ours: str, prefix: str) -> tuple[str, bool]:
    if ours == "head.weight":
        return "lm_head.weight", False
    transposed = ours.endswith(".weight") and any(f".{m}." in ours for m in ("qkv", "attn_out", "fc", "proj"))
    return prefix + _renamed(_GPT2_NAMES, ours), transposed


def _parse_llama_like(config: _Config, *, qkv_bias: bool, tie_default: bool) -> dict[str, Any]:
    """The keys transformers' Llama and Qwen2 configs (and Dream's, a copy of Qwen2's) share."""
    hidden, heads = config.get("hidden_size", int), config.get("num_attention_heads", int)
    kv_heads = config.get("num_key_value_heads", (int, type(None)), None) or heads
    _heads(config, hidden, heads, kv_heads)
    _head_dim(config, hidden, heads)
    config.expect("hidden_act", ("silu",), "silu", "the MLP is SwiGLU: silu(gate) * up")
    return {"family": "llama", "n_layers": config.get("num_hidden_layers", int), "hidden_size": hidden,
            "n_heads": heads, "n_kv_heads": kv_heads,
            "intermediate_size": config.get("intermediate_size", int),
            "norm_eps": config.get("rms_norm_eps", float, 1e-6), **_rope(config), "qkv_bias": qkv_bias,
            "tie_embeddings": config.get("tie_word_embeddings", bool, tie_default), "dropout": 0.0}


def _parse_llama(config: _Config) -> HFArchitecture:
    """transformers' LlamaConfig / LlamaForCausalLM (models/llama): attention_bias would add
    biases to all four attention projections, mlp_bias to the MLP; neither is supported."""
    config.expect("attention_bias", (False,), False, "a bias on o_proj too")
    config.expect("mlp_bias", (False,), False, "biases in the MLP")
    config.expect("pretraining_tp", (1, None), 1, "a tensor-parallel split of the linear layers")
    fields_ = _parse_llama_like(config, qkv_bias=False, tie_default=False)
    return HFArchitecture("llama", fields_, "ar", config.get("vocab_size", int),
                          config.get("max_position_embeddings", int, 2048), _special_ids(config, "bos", "eos", "pad"))


def _parse_qwen2(config: _Config) -> HFArchitecture:
    """transformers' Qwen2Config / Qwen2ForCausalLM (models/qwen2): q, k and v always have biases,
    o_proj none; sliding-window layers are not supported."""
    config.expect("use_sliding_window", (False,), False, "sliding-window attention")
    layer_types = config.get("layer_types", (list, type(None)), None) or []
    if any(kind != "full_attention" for kind in layer_types):
        raise HFFormatError(f"{config.where}: layer_types has sliding-window layers, which are not supported")
    fields_ = _parse_llama_like(config, qkv_bias=True, tie_default=False)
    return HFArchitecture("qwen2", fields_, "ar", config.get("vocab_size", int),
                          config.get("max_position_embeddings", int, 32768), _special_ids(config, "bos", "eos", "pad"))


def _parse_dream(config: _Config) -> HFArchitecture:
    """Dream's DreamConfig / DreamModel (modeling_dream.py): Qwen2's blocks with q, k, v biases
    hard-coded (o_proj and the MLP never have one, whatever attention_bias or mlp_bias say),
    attention never causal, and logits shifted by one position by its sampler
    (`logits = torch.cat([logits[:, :1], logits[:, :-1]], dim=1)` in generation_utils.py)."""
    fields_ = _parse_llama_like(config, qkv_bias=True, tie_default=False)
    mask = config.get("mask_token_id", int, 151666)
    return HFArchitecture("dream", {**fields_, "mask_id": mask, "logit_shift": True}, "mdlm",
                          config.get("vocab_size", int), config.get("max_position_embeddings", int, 32768),
                          {**_special_ids(config, "bos", "eos", "pad"), "mask": mask})


def _parse_llada(config: _Config) -> HFArchitecture:
    """LLaDA's LLaDAConfig (OLMo's ModelConfig keys) / LLaDAModelLM with block_type "llama":
    attention never causal (LLaDABlock calls SDPA with is_causal=False and no mask), SwiGLU as
    act(ff_proj(x)) * up_proj(x) with activation_type "silu", RMSNorm of eps rms_norm_eps."""
    config.expect("block_type", ("llama",), "sequential", "LLaDALlamaBlock is the block of LLaDA's checkpoints")
    config.expect("activation_type", ("silu",), "swiglu", "LLaDALlamaBlock computes silu(ff_proj(x)) * up_proj(x)")
    config.expect("layer_norm_type", ("rms",), "default", "RMSNorm")
    config.expect("rope", (True,), False, "rotary position embedding")
    config.expect("alibi", (False,), False, "ALiBi attention biases")
    config.expect("attention_layer_norm", (False,), False, "a norm on queries and keys")
    config.expect("include_bias", (False,), False, "biases on every linear layer and norm")
    config.expect("bias_for_layer_norm", (False, None), None, "norm biases")
    config.expect("layer_norm_with_affine", (True,), True, "norm weights")
    config.expect("input_emb_norm", (False,), False, "embeddings scaled by sqrt(d_model)")
    config.expect("scale_logits", (False,), False, "logits scaled by 1 / sqrt(d_model)")
    config.expect("block_group_size", (1,), 1, "grouped blocks")
    hidden, heads = config.get("d_model", int), config.get("n_heads", int)
    kv_heads = config.get("n_kv_heads", (int, type(None)), None)
    if kv_heads is None:
        kv_heads = 1 if config.get("multi_query_attention", (bool, type(None)), None) else heads
    _heads(config, hidden, heads, kv_heads)
    width = config.get("mlp_hidden_size", (int, type(None)), None) or config.get("mlp_ratio", int, 4) * hidden
    mask = config.get("mask_token_id", (int, type(None)), 50256)
    if mask is None:
        raise HFFormatError(f"{config.where}: mask_token_id is null; a LLaDA denoiser needs its mask id")
    fields_ = {"family": "llama", "n_layers": config.get("n_layers", int), "hidden_size": hidden, "n_heads": heads,
               "n_kv_heads": kv_heads, "intermediate_size": width, "norm_eps": config.get("rms_norm_eps", float, 1e-5),
               "rope_theta": config.get("rope_theta", float, _THETA_DEFAULT),
               "qkv_bias": config.get("include_qkv_bias", (bool, type(None)), False) or False,
               "tie_embeddings": config.get("weight_tying", bool, True), "mask_id": mask,
               "dropout": config.get("residual_dropout", float, 0.1)}
    rows = config.get("embedding_size", (int, type(None)), 50304) or config.get("vocab_size", int, 50257)
    return HFArchitecture("llada", fields_, "mdlm", rows, config.get("max_sequence_length", int, 1024),
                          {**_special_ids(config, "eos", "pad"), "mask": mask})


def _parse_gpt2(config: _Config) -> HFArchitecture:
    """transformers' GPT2Config / GPT2LMHeadModel (models/gpt2): tanh-approximated GELU
    ("gelu_new"), attention scaled by 1 / sqrt(head_dim) only, no cross-attention."""
    config.expect("activation_function", ("gelu_new", "gelu_pytorch_tanh"), "gelu_new", "GELU's tanh approximation")
    config.expect("scale_attn_weights", (True,), True, "attention scaled by 1 / sqrt(head dim)")
    config.expect("scale_attn_by_inverse_layer_idx", (False,), False, "attention scaled by the layer index")
    config.expect("add_cross_attention", (False,), False, "cross-attention")
    hidden = config.get("n_embd", int, 768)
    fields_ = {"family": "gpt2", "n_layers": config.get("n_layer", int, 12), "hidden_size": hidden,
               "n_heads": config.get("n_head", int, 12),
               "intermediate_size": config.get("n_inner", (int, type(None)), None) or 4 * hidden,
               "norm_eps": config.get("layer_norm_epsilon", float, 1e-5),
               "tie_embeddings": config.get("tie_word_embeddings", bool, True),
               "max_positions": config.get("n_positions", int, 1024), "dropout": config.get("resid_pdrop", float, 0.1)}
    if fields_["n_heads"] < 1 or hidden % fields_["n_heads"]:
        raise HFFormatError(f"{config.where}: n_embd {hidden} is not a multiple of n_head {fields_['n_heads']}")
    return HFArchitecture("gpt2", fields_, "ar", config.get("vocab_size", int, 50257), fields_["max_positions"],
                          _special_ids(config, "bos", "eos", "pad"))


def _write_llama(model: ModelConfig, context: int, *, model_type: str, architecture: str) -> dict[str, Any]:
    return {"architectures": [architecture], "model_type": model_type, "vocab_size": model.embedding_rows,
            "hidden_size": model.hidden_size, "intermediate_size": model.intermediate_size,
            "num_hidden_layers": model.n_layers, "num_attention_heads": model.n_heads,
            "num_key_value_heads": model.n_kv_heads or model.n_heads, "hidden_act": "silu",
            "max_position_embeddings": context, "rms_norm_eps": model.norm_eps, **_rope_json(model),
            "tie_word_embeddings": model.tie_embeddings}


def _write_causal(model: ModelConfig, context: int, model_type: str, architecture: str) -> dict[str, Any]:
    extra = {"attention_bias": False, "mlp_bias": False} if model_type == "llama" else {"use_sliding_window": False}
    return {**_write_llama(model, context, model_type=model_type, architecture=architecture), **extra,
            "bos_token_id": model.start_token}


def _write_dream(model: ModelConfig, context: int) -> dict[str, Any]:
    return {**_write_llama(model, context, model_type="Dream", architecture="DreamModel"),
            "auto_map": {"AutoConfig": "configuration_dream.DreamConfig", "AutoModel": "modeling_dream.DreamModel"},
            "mask_token_id": model.mask_id}


def _write_llada(model: ModelConfig, context: int) -> dict[str, Any]:
    return {"architectures": ["LLaDAModelLM"], "model_type": "llada",
            "auto_map": {"AutoConfig": "configuration_llada.LLaDAConfig", "AutoModel": "modeling_llada.LLaDAModelLM"},
            "block_type": "llama", "activation_type": "silu", "layer_norm_type": "rms", "rope": True,
            "rope_full_precision": True, "alibi": False, "attention_layer_norm": False, "include_bias": False,
            "bias_for_layer_norm": False, "layer_norm_with_affine": True, "input_emb_norm": False,
            "scale_logits": False, "block_group_size": 1, "d_model": model.hidden_size, "n_layers": model.n_layers,
            "n_heads": model.n_heads, "n_kv_heads": model.n_kv_heads or model.n_heads,
            "mlp_hidden_size": model.intermediate_size, "rms_norm_eps": model.norm_eps, "rope_theta": model.rope_theta,
            "include_qkv_bias": model.qkv_bias, "weight_tying": model.tie_embeddings,
            "vocab_size": model.embedding_rows, "embedding_size": model.embedding_rows, "mask_token_id": model.mask_id, "max_sequence_length": context,
            "residual_dropout": model.dropout, "attention_dropout": 0.0, "embedding_dropout": 0.0}


def _write_gpt2(model: ModelConfig, context: int) -> dict[str, Any]:
    return {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "vocab_size": model.embedding_rows,
            "n_embd": model.hidden_size, "n_layer": model.n_layers, "n_head": model.n_heads,
            "n_inner": model.intermediate_size, "n_positions": model.max_positions,
            "layer_norm_epsilon": model.norm_eps, "activation_function": "gelu_new",
            "tie_word_embeddings": model.tie_embeddings, "resid_pdrop": model.dropout,
            "bos_token_id": model.start_token}


LAYOUTS: dict[str, Layout] = {
    "llada": Layout("llada", ("llada",), "mdlm", _parse_llada, _write_llada, _llada_name),
    "dream": Layout("dream", ("Dream",), "mdlm", _parse_dream, _write_dream, _hf_name),
    "llama": Layout("llama", ("llama",), "ar", _parse_llama,
                    lambda m, c: _write_causal(m, c, "llama", "LlamaForCausalLM"), _hf_name),
    "qwen2": Layout("qwen2", ("qwen2",), "ar", _parse_qwen2,
                    lambda m, c: _write_causal(m, c, "qwen2", "Qwen2ForCausalLM"), _hf_name),
    "gpt2": Layout("gpt2", ("gpt2",), "ar", _parse_gpt2, _write_gpt2, _gpt2_name),
}
_BY_MODEL_TYPE = {model_type: layout for layout in LAYOUTS.values() for model_type in layout.model_types}


def read_architecture(values: dict[str, Any], where: str) -> HFArchitecture:
    """The architecture a config.json (`values`, read from `where`) describes, or a one-line
    refusal naming the key our models cannot follow."""
    model_type = values.get("model_type")
    if model_type not in _BY_MODEL_TYPE:
        known = ", ".join(repr(t) for t in _BY_MODEL_TYPE)
        raise HFFormatError(f"{where}: model_type {model_type!r} is not one of the supported layouts ({known})")
    return _BY_MODEL_TYPE[model_type].parse(_Config(values, where))


def layout_for(model: ModelConfig, task: str) -> str:
    """The layout a run's model is written in when nothing else says: GPT-2's for gpt2; for the
    llama family Dream's for a shifted denoiser, LLaDA's for another, Qwen2's for a causal LM with
    q, k, v biases and Llama's for one without."""
    if model.family == "gpt2":
        return "gpt2"
    if task == "mdlm":
        return "dream" if model.logit_shift else "llada"
    return "qwen2" if model.qkv_bias else "llama"


def check_expressible(layout: str, model: ModelConfig, task: str) -> None:
    """Refuse a model the layout's own code would compute differently, naming the difference."""
    wanted = LAYOUTS[layout]
    problems = []
    if task != wanted.task:
        problems.append(f"it holds a {wanted.task!r} model, this run is a {task!r} run")
    if (model.family == "gpt2") != (layout == "gpt2"):
        problems.append(f"model.family is {model.family!r}")
    if layout in ("dream", "qwen2") and not model.qkv_bias:
        problems.append("its q, k and v projections always have biases (model.qkv_bias is false)")
    if layout == "llama" and model.qkv_bias:
        problems.append("transformers' Llama has no q, k, v biases without an o_proj bias (model.qkv_bias is true)")
    if model.logit_shift != (layout == "dream"):
        problems.append(f"model.logit_shift is {str(model.logit_shift).lower()}")
    if layout == "llada" and model.rope_scaling != "none":
        problems.append("LLaDA's rotary embedding has no scaling")
    if problems:
        raise HFFormatError(f"the {layout} layout cannot hold this model: {'; '.join(problems)}")


def architecture_matches(arch: HFArchitecture, model: ModelConfig) -> bool:
    """Whether `model` is the architecture `arch` describes (dropout apart)."""
    ours = arch.model_config(model.vocab_size, model.start_token)
    return all(getattr(ours, f.name) == getattr(model, f.name) for f in fields(ModelConfig) if f.name != "dropout")
