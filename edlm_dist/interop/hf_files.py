"""The files of a Hugging Face model folder: `config.json`, the safetensors weights (one
`model.safetensors`, or shards listed by `model.safetensors.index.json`), `tokenizer.json` and
the other tokenizer files (`TOKENIZER_FILES`, copied into an imported run by `copy_tokenizer`).

Headers are read without touching tensor data, so every check (a missing shard, an index that
disagrees with its shards, a truncated file, a dtype that is not a float, mixed dtypes) happens
before anything is written. Tensors are read by slice (`safe_open(...).get_slice`), one tensor at
a time with the file closed after it, so a rank holds only its own rows.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor

from edlm_dist.interop.hf_layout import HFFormatError

CONFIG = "config.json"
SINGLE = "model.safetensors"
INDEX = "model.safetensors.index.json"
TOKENIZER = "tokenizer.json"
# the data files a model folder's tokenizer is read from (edlm_dist.data.hf_files), besides config.json's ids
TOKENIZER_FILES = (TOKENIZER, "vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json",
                   "generation_config.json", "chat_template.jinja")
TOKEN_ID_KEYS = ("bos_token_id", "eos_token_id", "pad_token_id", "mask_token_id")  # what config.json says of them
DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}
DTYPE_NAMES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16"}
SAFETENSORS_METADATA = {"format": "pt"}  # what transformers' save_pretrained writes


def read_json(path: Path, what: str) -> dict[str, Any]:
    """A JSON object from `path`, or one line saying why it cannot be read."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise HFFormatError(f"{path} not found: a Hugging Face folder holds its {what} there") from None
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise HFFormatError(f"cannot read {path}: {err}") from None
    if not isinstance(value, dict):
        raise HFFormatError(f"{path} must hold a JSON object, got {type(value).__name__}")
    return value


@dataclass(frozen=True)
class TensorInfo:
    """Where a tensor is and what its header says."""

    file: str
    dtype: str  # safetensors' name: F32, F16, BF16, ...
    shape: tuple[int, ...]


def read_header(path: Path) -> dict[str, TensorInfo]:
    """The tensors a safetensors file holds (its JSON header), checked against the file's size."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            (length,) = struct.unpack("<Q", f.read(8))
            if length > size - 8:
                raise ValueError(f"its header claims {length} bytes of a {size}-byte file")
            header = json.loads(f.read(length))
    except (OSError, struct.error, ValueError) as err:
        raise HFFormatError(f"{path} is not a readable safetensors file: {err}") from None
    header.pop("__metadata__", None)
    tensors, end = {}, 0
    try:
        for name, entry in header.items():
            tensors[name] = TensorInfo(path.name, str(entry["dtype"]), tuple(int(n) for n in entry["shape"]))
            end = max(end, int(entry["data_offsets"][1]))
    except (KeyError, TypeError, ValueError, IndexError) as err:
        raise HFFormatError(f"{path} is not a readable safetensors file: bad header entry ({err!r})") from None
    if 8 + length + end > size:
        raise HFFormatError(f"{path} is truncated: its tensors need {8 + length + end} bytes, the file has {size}")
    return tensors


@dataclass(frozen=True)
class SafetensorsFolder:
    """The weights of a model folder: every tensor's file, dtype and shape, and the index's
    `metadata` when the weights are sharded (None for one `model.safetensors`)."""

    folder: Path
    tensors: dict[str, TensorInfo]
    index_metadata: dict[str, Any] | None

    @property
    def weight_map(self) -> dict[str, str] | None:
        """Tensor name -> shard file, as the index states it (None for a single file)."""
        return None if self.index_metadata is None else {name: info.file for name, info in self.tensors.items()}

    @property
    def dtype(self) -> str:
        """The one dtype of every tensor (checked by `open_folder`), as torch names it."""
        return DTYPE_NAMES[next(iter(self.tensors.values())).dtype]

    def read(self, name: str, start: int, end: int, transposed: bool = False) -> Tensor:
        """Rows start..end-1 of tensor `name` as float32 (with `transposed`, of its transpose:
        its columns), reading only those bytes where they are contiguous."""
        path = self.folder / self.tensors[name].file
        try:
            with safe_open(path, framework="pt") as f:
                part = f.get_slice(name)
                rows = part[:, start:end].t() if transposed else part[start:end]
        except (SafetensorError, OSError) as err:
            raise HFFormatError(f"cannot read tensor {name} of {path}: {err}") from None
        return rows.to(torch.float32).contiguous()


def open_folder(folder: Path) -> SafetensorsFolder:
    """The safetensors weights of `folder`, every header read and checked: a missing shard, an
    index naming a tensor its shard lacks (or a shard holding one the index does not name), a
    dtype other than float32/float16/bfloat16, or mixed dtypes is a one-line HFFormatError."""
    index_path, single = folder / INDEX, folder / SINGLE
    if index_path.is_file():
        index = read_json(index_path, "shard index")
        weight_map = index.get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise HFFormatError(f"{index_path} has no weight_map")
        tensors: dict[str, TensorInfo] = {}
        for file in sorted(set(weight_map.values())):
            if not (folder / file).is_file():
                raise HFFormatError(f"shard {folder / file} is missing (named by {index_path})")
            header = read_header(folder / file)
            listed = {name for name, shard in weight_map.items() if shard == file}
            if header.keys() != listed:
                odd = sorted(header.keys() ^ listed)[0]
                where = "holds" if odd in header else "lacks"
                raise HFFormatError(f"shard {folder / file} {where} tensor {odd}, against {index_path}")
            tensors.update(header)
        metadata = index.get("metadata") if isinstance(index.get("metadata"), dict) else {}
    elif single.is_file():
        tensors, metadata = read_header(single), None
    else:
        raise HFFormatError(f"{folder} holds neither {SINGLE} nor {INDEX} (only safetensors weights are read)")
    dtypes = {info.dtype for info in tensors.values()}
    bad = sorted(name for name, info in tensors.items() if info.dtype not in DTYPES)
    if bad:
        raise HFFormatError(f"{folder}: tensor {bad[0]} is {tensors[bad[0]].dtype}; expected a float dtype "
                            f"({', '.join(DTYPES)})")
    if len(dtypes) > 1:
        first = next(iter(tensors.values())).dtype
        odd = next(name for name, info in tensors.items() if info.dtype != first)
        raise HFFormatError(f"{folder}: tensor {odd} is {tensors[odd].dtype} while others are {first}; "
                            "a checkpoint holds one dtype")
    return SafetensorsFolder(folder, tensors, metadata)


def tokenizer_ids(folder: Path) -> int | None:
    """How many token ids `tokenizer.json` in `folder` defines (1 + the largest id of its
    vocabulary and added tokens), or None without one."""
    path = folder / TOKENIZER
    if not path.is_file():
        return None
    tokenizer = read_json(path, "tokenizer")
    vocab = (tokenizer.get("model") or {}).get("vocab")
    ids = list(vocab.values()) if isinstance(vocab, dict) else list(range(len(vocab or [])))
    ids += [token["id"] for token in tokenizer.get("added_tokens") or []]
    if not ids or not all(isinstance(i, int) and i >= 0 for i in ids):
        raise HFFormatError(f"{path} defines no token ids (model.vocab and added_tokens)")
    return max(ids) + 1


def tokenizer_files(folder: Path) -> list[str]:
    """The names of `TOKENIZER_FILES` present in `folder` (none: the folder ships no tokenizer)."""
    names = [name for name in TOKENIZER_FILES if (folder / name).is_file()]
    has_tokens = TOKENIZER in names or {"vocab.json", "merges.txt"} <= set(names)
    return names if has_tokens else []


def copy_tokenizer(folder: Path, names: list[str], config: dict[str, Any], dest: Path) -> None:
    """Copy the tokenizer files `names` of `folder` into the new folder `dest`, with a config.json
    holding only the token ids of the model's `config` (`TOKEN_ID_KEYS`), so `dest` reads as the
    same tokenizer as `folder` and is no model folder."""
    dest.mkdir()
    for name in names:
        shutil.copyfile(folder / name, dest / name)
    ids = {key: config[key] for key in TOKEN_ID_KEYS if key in config}
    (dest / CONFIG).write_text(json.dumps(ids, indent=2) + "\n")


def write_safetensors(folder: Path, tensors: dict[str, Tensor], weight_map: dict[str, str] | None,
                      index_metadata: dict[str, Any] | None, max_shard_bytes: int) -> None:
    """Write `tensors` into `folder` as Hugging Face keeps them: in the files `weight_map` names
    (with the index and its `index_metadata`) when given; else one `model.safetensors` when they
    fit `max_shard_bytes`, or shards of at most that size with an index."""
    if weight_map is None:
        weight_map = _shard_plan(tensors, max_shard_bytes)
        if set(weight_map.values()) != {SINGLE}:
            index_metadata = {"total_size": sum(t.numel() * t.element_size() for t in tensors.values())}
    for file in sorted(set(weight_map.values())):
        save_file({name: tensors[name] for name, shard in weight_map.items() if shard == file}, folder / file,
                  metadata=SAFETENSORS_METADATA)
    if set(weight_map.values()) != {SINGLE}:
        index = {"metadata": index_metadata or {}, "weight_map": dict(sorted(weight_map.items()))}
        (folder / INDEX).write_text(json.dumps(index, indent=2) + "\n")


def _shard_plan(tensors: dict[str, Tensor], max_shard_bytes: int) -> dict[str, str]:
    """Tensor name -> file: in name order, a new shard whenever the next tensor would overflow one."""
    shards: list[list[str]] = [[]]
    size = 0
    for name in sorted(tensors):
        nbytes = tensors[name].numel() * tensors[name].element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += nbytes
    if len(shards) == 1:
        return {name: SINGLE for name in shards[0]}
    width = max(5, math.ceil(math.log10(len(shards) + 1)))
    return {name: f"model-{i + 1:0{width}d}-of-{len(shards):0{width}d}.safetensors"
            for i, names in enumerate(shards) for name in names}
