"""Our own non-tensor state (the data loaders' positions) as one uint8 tensor, never a pickle.

The state is plain data (dicts with string keys, lists, tuples, strings, numbers, booleans,
None) and CPU tensors. It is stored in the safetensors format: the tensors as safetensors
tensors and the structure as JSON in its metadata, with each tensor replaced by a reference. A
checkpoint holds it as a uint8 tensor, so DCP saves and reshards it like any other tensor and
reading it back runs no code: a damaged or hostile blob is a `StateBlobError`, nothing else.
Checkpoints written before kept the loader states as a pickle and counters as plain integers;
they are still read, the pickle through the allow-list of `safe_pickle`.
"""

from __future__ import annotations

import json
import struct
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

from edlm_dist.runs.safe_pickle import legacy_loads

_STRUCTURE = "edlm_state"  # the metadata key holding the JSON structure
_TENSOR, _TUPLE = "__tensor__", "__tuple__"  # how a tensor and a tuple are written in the JSON


class StateBlobError(ValueError):
    """A state blob that cannot be decoded; the message names where it came from."""

    user_error = True


def _to_json(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, torch.Tensor):
        name = str(len(tensors))
        tensors[name] = obj.detach().cpu().contiguous().clone()  # safetensors refuses shared storage
        return {_TENSOR: name}
    if isinstance(obj, dict):
        if not all(isinstance(key, str) for key in obj):
            raise TypeError(f"a state blob's dict keys must be strings, got {sorted(map(repr, obj))[:3]}")
        return {key: _to_json(value, tensors) for key, value in obj.items()}
    if isinstance(obj, tuple):
        return {_TUPLE: [_to_json(value, tensors) for value in obj]}
    if isinstance(obj, list):
        return [_to_json(value, tensors) for value in obj]
    if obj is None or isinstance(obj, (str, bool, int, float)):
        return obj
    raise TypeError(f"a state blob cannot hold a {type(obj).__name__}")


def _from_json(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, dict):
        if set(obj) == {_TENSOR}:
            return tensors[obj[_TENSOR]]
        if set(obj) == {_TUPLE}:
            return tuple(_from_json(value, tensors) for value in obj[_TUPLE])
        return {key: _from_json(value, tensors) for key, value in obj.items()}
    if isinstance(obj, list):
        return [_from_json(value, tensors) for value in obj]
    return obj


def encode_state(state: Any) -> torch.Tensor:
    """`state` as a 1-D uint8 tensor (the same bytes for the same state)."""
    tensors: dict[str, torch.Tensor] = {}
    structure = json.dumps(_to_json(state, tensors), sort_keys=True)
    blob = save_tensors(tensors, metadata={_STRUCTURE: structure})
    return torch.frombuffer(bytearray(blob), dtype=torch.uint8)


def decode_state(blob: torch.Tensor, source: str) -> Any:
    """The state that `encode_state` turned into `blob`; `source` names it in errors."""
    if not (isinstance(blob, torch.Tensor) and blob.dtype == torch.uint8 and blob.dim() == 1):
        raise StateBlobError(f"{source} is not a state blob (a 1-D uint8 tensor)")
    data = blob.numpy().tobytes()
    try:
        (header_len,) = struct.unpack("<Q", data[:8])
        metadata = json.loads(data[8:8 + header_len]).get("__metadata__") or {}
        structure = json.loads(metadata[_STRUCTURE])
        return _from_json(structure, load_tensors(data))
    except (struct.error, ValueError, KeyError, TypeError, AttributeError, SafetensorError) as err:
        reason = (str(err).splitlines() or [""])[0]
        raise StateBlobError(f"{source} cannot be decoded ({type(err).__name__}: {reason})") from None


def stored_integer(value: Any, source: str) -> int:
    """An integer counter read back from a checkpoint (a 0-d tensor; a plain int in checkpoints
    written before counters were tensors)."""
    if isinstance(value, torch.Tensor) and value.numel() == 1 and not value.is_floating_point():
        return int(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise StateBlobError(f"{source} is not an integer counter")


def read_loader_states(value: Any, source: str) -> list[dict[str, Any]]:
    """Every rank's loader state as saved with a checkpoint: a state blob, or in checkpoints
    written before it was one, the bytes of a pickle (read through the allow-list)."""
    states = legacy_loads(value, source) if isinstance(value, bytes) else decode_state(value, source)
    if not (isinstance(states, list) and states and all(isinstance(s, dict) for s in states)):
        raise StateBlobError(f"{source} does not hold the loader states of a run")
    return states
