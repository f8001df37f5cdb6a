"""Hugging Face models (LLaDA, Dream, Llama, Qwen2, GPT-2) in and out of run folders.

`import_hf` makes an ordinary run folder from a Hugging Face folder (config.json and safetensors
weights, one file or sharded): its `config.toml` (the architecture in [model], task mdlm for the
denoisers LLaDA and Dream, ar for the causal LMs), one committed checkpoint of the model weights
(float32; no optimizer, data or EMA state), the `finished` marker, `imported.json` recording
where the weights came from, the source's config.json, its shard plan and dtype, and its special
token ids, and the source's tokenizer files in `tokenizer/` (the run's `data.tokenizer_path`,
relative to the run folder) when it has them. Under torchrun each rank reads only the rows of the
tensors it holds (FSDP2's shards) and writes them into the checkpoint itself. Every check (layout,
keys, shapes, dtype, shards, tokenizer) happens before anything is written; the folder appears
only once complete.

`export_hf` writes a run's weights back in a Hugging Face layout: for an imported run, the
source's own config.json, shard files and dtype, so the round trip is bit for bit.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import get_model_state_dict
from torch.distributed.tensor import DTensor

from edlm_dist.config import TrainProgram, config_to_toml, validate_config
from edlm_dist.config.schema import (
    CheckpointConfig, DataConfig, ModelConfig, ParallelConfig, RunJobConfig, TrainingConfig,
)
from edlm_dist.data.errors import TokenizerError
from edlm_dist.data.tokenizers import GPT2_VOCAB_SIZE, HFTokenizer
from edlm_dist.distributed import build_mesh, first_nonfinite, local_rows, on_main_rank, parallelize_model
from edlm_dist.fileio import StorageError, atomic_folder
from edlm_dist.interop.hf_files import (
    CONFIG, DTYPES, DTYPE_NAMES, SafetensorsFolder, copy_tokenizer, open_folder, read_json, tokenizer_files,
    tokenizer_ids, write_safetensors,
)
from edlm_dist.interop.hf_layout import (
    GPT2_MASK_BUFFER, LAYOUTS, HFArchitecture, HFFormatError, TensorMap, architecture_matches, check_expressible,
    layout_for, read_architecture,
)
from edlm_dist.models import MODEL_KINDS, LanguageModel, build_model, meta_model
from edlm_dist.runs.checkpoint import CheckpointManager
from edlm_dist.runs.folder import CONFIG_NAME, IMPORTED_NAME, RunFolder
from edlm_dist.runs.weights import Checkpoint, load_weights

IMPORT_STEP = 0  # the step of an imported run's one checkpoint (no training steps of this project behind it)
MAX_SEQ_LEN = 4096  # the default data.seq_len: the config's context length, at most this
SHARD_BYTES = 5 * 2**30  # transformers' default max_shard_size ("5GB")
TOKENIZER_DIR = "tokenizer"  # an imported run's copy of its source's tokenizer files, inside the run folder
_TORCH_DTYPES = {name: DTYPES[key] for key, name in DTYPE_NAMES.items()}


@dataclass(frozen=True)
class HFSource:
    """A checked Hugging Face folder: its config.json, architecture and weights, our [model] for
    it, and the checkpoint tensor behind each of our parameters."""

    folder: Path
    config: dict[str, Any]
    arch: HFArchitecture
    weights: SafetensorsFolder
    model: ModelConfig
    vocab_from: str  # "tokenizer.json", "vocab.json" or "config.json": where model.vocab_size comes from
    prefix: str  # GPT-2: "transformer." when the tensors are GPT2LMHeadModel's, else ""
    maps: list[TensorMap]
    ignored: list[str]  # tensors known and never read (GPT-2's causal-mask buffers)
    tokenizer: HFTokenizer | None  # the folder's tokenizer, None where it ships none
    tokenizer_files: list[str]  # its files, copied into the run

    @property
    def kind(self) -> str:
        return MODEL_KINDS[self.arch.task]


def read_source(src: str | os.PathLike[str], start_token: int | None = None) -> HFSource:
    """The Hugging Face folder `src`, checked against our models without reading tensor data:
    its config.json, its tokenizer (when present: the number of token ids, read with the
    `tokenizers` library and checked against the model; else the config's rows), and every
    tensor's name, shape and dtype. `start_token` overrides a causal LM's bos_token_id."""
    folder = Path(os.path.expanduser(os.fspath(src)))
    if not folder.is_dir():
        raise HFFormatError(f"{src}: no such folder (give a Hugging Face model folder: config.json and safetensors)")
    config = read_json(folder / CONFIG, "model config")
    arch = read_architecture(config, str(folder / CONFIG))
    weights = open_folder(folder)
    counted = tokenizer_ids(folder)
    names = tokenizer_files(folder)
    vocab, vocab_from = (counted, "tokenizer.json") if counted is not None else (arch.rows, "config.json")
    if vocab > arch.rows:
        raise HFFormatError(f"{folder / 'tokenizer.json'} defines {vocab} token ids, more than the {arch.rows} rows "
                            "of the model's embedding")
    mask = arch.fields.get("mask_id", -1)
    if arch.task == "mdlm" and not 0 <= mask < vocab:
        raise HFFormatError(f"{folder}: mask_token_id {mask} is not one of the {vocab} token ids ({vocab_from})")
    tokenizer = _read_tokenizer(folder, names, vocab if counted is not None else arch.rows, mask)
    if tokenizer is not None and counted is None:
        vocab, vocab_from = tokenizer.vocab_size, "vocab.json"
    if arch.task == "ar":
        start_token = arch.special_ids.get("bos") if start_token is None else start_token
        if not isinstance(start_token, int):
            raise HFFormatError(f"{folder / CONFIG}: bos_token_id is {start_token!r}; the causal LM reads a start "
                                "token before the first position (give --start-token ID)")
        if not 0 <= start_token < arch.rows:
            raise HFFormatError(f"{folder}: start token {start_token} is not one of the {arch.rows} rows of the "
                                "model's embedding")
    model = arch.model_config(vocab, -1 if start_token is None else start_token)
    gpt2_lm_head_model = arch.layout == "gpt2" and any(n.startswith("transformer.") for n in weights.tensors)
    prefix = "transformer." if gpt2_lm_head_model else ""
    meta = meta_model(MODEL_KINDS[arch.task], model, vocab)
    maps = LAYOUTS[arch.layout].tensor_maps([name for name, _ in meta.named_parameters()], prefix)
    shapes = {m.theirs: tuple(reversed(p.shape)) if m.transposed else tuple(p.shape)
              for m, (_, p) in zip(maps, meta.named_parameters())}
    ignored = sorted(n for n in weights.tensors if arch.layout == "gpt2" and GPT2_MASK_BUFFER.match(n))
    _check_tensors(weights, shapes, ignored, f"{folder} ({arch.layout} layout of its config.json)")
    return HFSource(folder, config, arch, weights, model, vocab_from, prefix, maps, ignored, tokenizer, names)


def _read_tokenizer(folder: Path, names: list[str], vocab: int, mask: int) -> HFTokenizer | None:
    """The tokenizer of `folder` (None without tokenizer files), checked against the model: at
    most `vocab` token ids, and a denoiser's `mask` id (>= 0) its mask token."""
    if not names:
        return None
    try:
        tokenizer = HFTokenizer(str(folder))
    except TokenizerError as err:
        raise HFFormatError(f"{folder}: its tokenizer cannot be read: {err}") from None
    if tokenizer.vocab_size > vocab:
        raise HFFormatError(f"{folder}: its tokenizer has {tokenizer.vocab_size} token ids, more than the model's "
                            f"{vocab}")
    if mask >= 0 and tokenizer.mask_id != mask:
        raise HFFormatError(f"{folder}: the model's mask_token_id is {mask} but its tokenizer's mask token is "
                            f"{'none' if tokenizer.mask_id == tokenizer.vocab_size else tokenizer.mask_id}")
    return tokenizer


def _check_tensors(weights: SafetensorsFolder, expected: dict[str, tuple[int, ...]], ignored: list[str],
                   where: str) -> None:
    """Refuse missing, unexpected or mis-shaped tensors, naming the first few of each."""
    stored = {name: info.shape for name, info in weights.tensors.items() if name not in ignored}
    missing = [name for name in expected if name not in stored]
    unexpected = sorted(name for name in stored if name not in expected)
    misshaped = [f"{n} {list(stored[n])} (expected {list(expected[n])})"
                 for n in expected if n in stored and stored[n] != expected[n]]
    problems = []
    for label, names in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped)):
        if names:
            more = f" and {len(names) - 3} more" if len(names) > 3 else ""
            problems.append(f"{label} tensors {', '.join(names[:3])}{more}")
    if problems:
        raise HFFormatError(f"{where}: {'; '.join(problems)}")


def imported_config(source: HFSource, out: Path, seq_len: int | None = None) -> TrainProgram:
    """The run config of an imported model: its architecture, its task, `seq_len` tokens per
    sequence (default: the config's context length, at most MAX_SEQ_LEN), no EMA; GPT-2 itself
    (its 50,257 token ids) reads GPT-2 tokens of OpenWebText (MDLM's mdlm-owt corpus), the others
    their own tokenizer: the copy of their source's files in the run (`TOKENIZER_DIR`, relative
    to the run folder), or, without tokenizer files, `hf` with no path, which decoding refuses."""
    arch = source.arch
    seq_len = seq_len or min(arch.context, MAX_SEQ_LEN)
    if arch.layout == "gpt2" and source.model.vocab_size == GPT2_VOCAB_SIZE:
        data = DataConfig(dataset="openwebtext", tokenizer="gpt2", seq_len=seq_len)
    else:
        data = DataConfig(seq_len=seq_len, tokenizer="hf", tokenizer_path=TOKENIZER_DIR if source.tokenizer else "")
    cfg = TrainProgram(
        job=RunJobConfig(name=out.name, dump_folder=str(out.parent),
                         description=f"{arch.layout} weights imported from {source.folder}"),
        model=source.model, data=data,
        training=TrainingConfig(task=arch.task, steps=1, ema_decay=0.0),
        checkpoint=CheckpointConfig(keep_last=1),
    )
    validate_config(cfg)
    return cfg


@torch.no_grad()
def fill_from_source(model: LanguageModel, source: HFSource) -> None:
    """Set every parameter of `model` (sharded or not) from the source's tensors, each rank
    reading only the rows it holds."""
    params = dict(model.named_parameters())
    for m in source.maps:
        param = params[m.ours]
        start, end = local_rows(param)
        local = param.to_local() if isinstance(param, DTensor) else param
        if end > start:
            local.copy_(source.weights.read(m.theirs, start, end, m.transposed))


def import_hf(source: HFSource, out: str | os.PathLike[str], seq_len: int | None = None) -> Path:
    """Write the run folder `out` (which must not exist) for `source`; returns its path. Under a
    process group every rank calls this: the model is sharded over all ranks (FSDP2), each reads
    its rows and writes its shards."""
    out = Path(out).absolute()
    cfg = imported_config(source, out, seq_len)
    is_main = not dist.is_initialized() or dist.get_rank() == 0
    on_main_rank(lambda: _refuse_existing(out), is_main)  # before the slow part
    mesh = build_mesh(ParallelConfig(), dist.get_world_size(), "cpu") if dist.is_initialized() else None
    prepare = partial(parallelize_model, cfg=ParallelConfig(), mesh=mesh, param_dtype=torch.float32)
    model = build_model(source.kind, cfg.model, cfg.model.vocab_size, "cpu", prepare=prepare, initialize=False)
    fill_from_source(model, source)
    theirs = {m.ours: m.theirs for m in source.maps}
    bad = first_nonfinite(((theirs[n], p) for n, p in model.named_parameters()), collective=mesh is not None)
    if bad is not None:
        raise HFFormatError(f"{source.folder}: tensor {bad} is not finite; nothing non-finite is imported")
    provenance = {"source": str(source.folder), "layout": source.arch.layout, "task": source.arch.task,
                  "step": IMPORT_STEP, "weights": ["model"], "dtype": source.weights.dtype,
                  "vocab_size": cfg.model.vocab_size, "vocab_size_from": source.vocab_from,
                  "special_ids": source.arch.special_ids, "prefix": source.prefix, "ignored": source.ignored,
                  "weight_map": source.weights.weight_map, "index_metadata": source.weights.index_metadata,
                  "config": source.config, "world_size": dist.get_world_size() if mesh is not None else 1}

    def finish(folder: Path) -> None:
        run = RunFolder(folder)
        if source.tokenizer is not None:
            _copy_tokenizer(source, folder / TOKENIZER_DIR)
        (folder / CONFIG_NAME).write_text(config_to_toml(cfg))
        run.write_json(IMPORTED_NAME, {**provenance, "imported_at": time.time()})
        run.mark("finished", step=IMPORT_STEP)

    state = {"model": get_model_state_dict(model)}
    with _shared_folder(out, is_main) as (tmp, commit):
        CheckpointManager(str(tmp / cfg.checkpoint.folder), keep_last=1).save(IMPORT_STEP, state, is_main=is_main)
        on_main_rank(lambda: commit(finish), is_main)
    return out


def _copy_tokenizer(source: HFSource, dest: Path) -> None:
    """Copy the source's tokenizer files into `dest` and check that they read as the same
    tokenizer: the same ids, special tokens and chat template."""
    assert source.tokenizer is not None
    copy_tokenizer(source.folder, source.tokenizer_files, source.config, dest)
    theirs, ours = source.tokenizer, HFTokenizer(str(dest))
    same = [(a.fingerprint(), a.eos_id, a.bos_id, a.mask_id, a.stop_ids, a.special_tokens, a.chat_template)
            for a in (theirs, ours)]
    if same[0] != same[1]:
        raise HFFormatError(f"{source.folder}: its tokenizer files read differently once copied out of the folder "
                            f"(another file of it decides its tokens); nothing is imported")


def _refuse_existing(out: Path) -> None:
    if os.path.lexists(out):
        raise StorageError(f"{out} exists; give a new folder (nothing is overwritten)")


Commit = Callable[[Callable[[Path], None]], None]


@contextlib.contextmanager
def _shared_folder(out: Path, is_main: bool) -> Iterator[tuple[Path, Commit]]:
    """`atomic_folder(out)` held by rank 0, its temporary path shared with every rank: yields the
    path and `commit(finish)`, which rank 0 calls to write the last files (`finish(path)`) and
    rename the folder to `out`. On an error before the commit the folder is removed."""
    with contextlib.ExitStack() as stack:
        tmp = on_main_rank(lambda: stack.enter_context(atomic_folder(out)), is_main)

        def commit(finish: Callable[[Path], None]) -> None:
            finish(Path(tmp))
            stack.close()  # rank 0: the rename

        yield Path(tmp), commit


# ---- export -----------------------------------------------------------------------------------


def export_hf(ckpt: Checkpoint, out: str | os.PathLike[str], *, weights: str | None = None, layout: str | None = None,
              dtype: str | None = None, max_shard_bytes: int = SHARD_BYTES) -> tuple[Path, str, str]:
    """Write the checkpoint's `weights` (None: EMA when it has them) as a Hugging Face folder
    `out` (which must not exist) in `layout` (default: the imported run's own, else
    `layout_for`), its tensors in `dtype` (default: the imported source's, else float32). An
    imported run keeps its source's config.json and shard files when its architecture is
    unchanged. Returns the folder, which weights and which layout were written."""
    cfg = ckpt.config
    task = cfg.training.task
    if cfg.model.family == "dit":
        raise HFFormatError(f"{ckpt.run_dir} is a dit-family run (MDLM's DiT): export it with tools/export_mdlm.py "
                            "or tools/export_safetensors.py")
    provenance = RunFolder(ckpt.run_dir).read_json(IMPORTED_NAME) or {}
    layout = layout or provenance.get("layout") or layout_for(cfg.model, task)
    if layout not in LAYOUTS:
        raise HFFormatError(f"unknown layout {layout!r}; expected one of {', '.join(LAYOUTS)}")
    check_expressible(layout, cfg.model, task)
    own = provenance if provenance.get("layout") == layout else {}
    dtype = dtype or own.get("dtype") or "float32"
    if dtype not in _TORCH_DTYPES:
        raise HFFormatError(f"unknown dtype {dtype!r}; expected one of {', '.join(_TORCH_DTYPES)}")
    model, weights = load_weights(ckpt, weights)
    named = list(model.named_parameters())
    maps = LAYOUTS[layout].tensor_maps([name for name, _ in named], own.get("prefix", ""))
    tensors = {m.theirs: (p.t() if m.transposed else p).detach().to(_TORCH_DTYPES[dtype]).contiguous()
               for m, (_, p) in zip(maps, named)}
    config = own.get("config")
    if config is None or not architecture_matches(read_architecture(config, f"{ckpt.run_dir}/{IMPORTED_NAME}"),
                                                  cfg.model):
        config = LAYOUTS[layout].write(cfg.model, cfg.data.seq_len)
    weight_map = own.get("weight_map")
    if weight_map is not None and set(weight_map) != set(tensors):
        weight_map = None
    with atomic_folder(out) as tmp:
        (Path(tmp) / CONFIG).write_text(json.dumps(config, indent=2) + "\n")
        write_safetensors(Path(tmp), tensors, weight_map, own.get("index_metadata"), max_shard_bytes)
    return Path(out), weights, layout
