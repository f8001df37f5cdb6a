"""Read a `torch.save` file written by another code base (a Lightning `.ckpt`) without its
packages and without running its code: tensors and Python's plain types are rebuilt, every other
class (omegaconf's config nodes, a transformers tokenizer, Lightning's containers, numpy scalars)
becomes an inert `Foreign` record of its name, arguments and state. Nothing is imported or called
but torch's tensor rebuilders, so a checkpoint needs neither `omegaconf`, `hydra`, `transformers`
nor `lightning` here, and an untrusted one cannot execute code on load.
"""

from __future__ import annotations

import builtins
import collections
import copyreg
import os
import pickle
import types
from typing import Any

import torch

_BUILTINS = {"dict", "list", "tuple", "set", "frozenset", "int", "float", "complex", "str", "bytes", "bytearray",
             "bool", "slice", "range", "object"}
_TORCH = {("torch", "Size"), ("torch", "device"), ("torch.nn.parameter", "Parameter"), ("torch", "Tensor"),
          ("torch._tensor", "_rebuild_from_type_v2"), ("torch.serialization", "_get_layout")}


class Foreign:
    """An object of a class not loaded here: `cls_name` ("module.Name"), the arguments it was
    rebuilt with, its pickled state, and the items pickle added (for list and dict subclasses)."""

    cls_name = ""

    def __new__(cls, *args: Any, **kwargs: Any) -> Foreign:
        obj = super().__new__(cls)
        obj.args, obj.kwargs, obj.state, obj.items, obj.entries = args, kwargs, None, [], {}
        return obj

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def append(self, item: Any) -> None:
        self.items.append(item)

    def extend(self, items: Any) -> None:
        self.items.extend(items)

    def __setitem__(self, key: Any, value: Any) -> None:
        self.entries[key] = value

    def __repr__(self) -> str:
        return f"<foreign {self.cls_name}>"


_FOREIGN: dict[str, type[Foreign]] = {}


def _foreign_class(module: str, name: str) -> type[Foreign]:
    full = f"{module}.{name}"
    if full not in _FOREIGN:
        _FOREIGN[full] = type(name, (Foreign,), {"cls_name": full})
    return _FOREIGN[full]


def _reconstructor(cls: type, base: type, state: Any) -> Any:
    """copyreg's protocol-0/1 object rebuild, confined to `Foreign` records and plain types."""
    if isinstance(cls, type) and issubclass(cls, Foreign):
        return cls.__new__(cls)
    return copyreg._reconstructor(cls, base, state)


def _allowed(module: str, name: str) -> Any:
    """The real object for the globals a checkpoint's tensors and plain data need, else None."""
    if module == "builtins" and name in _BUILTINS:
        return getattr(builtins, name)
    if module == "collections" and name in ("OrderedDict", "defaultdict"):
        return getattr(collections, name)
    if (module, name) == ("copyreg", "_reconstructor"):
        return _reconstructor
    if (module, name) == ("_codecs", "encode"):
        import codecs

        return codecs.encode
    if module == "torch._utils" and name.startswith("_rebuild"):
        return getattr(torch._utils, name, None)
    if (module, name) in _TORCH:
        value: Any = torch
        for part in module.split(".")[1:] + [name]:
            value = getattr(value, part)
        return value
    if module == "torch" and isinstance(getattr(torch, name, None), (torch.dtype, torch.layout, torch.memory_format)):
        return getattr(torch, name)
    return None


class _Unpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        found = _allowed(module, name)
        return found if found is not None else _foreign_class(module, name)


_PICKLE_MODULE = types.ModuleType("edlm_dist_foreign_pickle")
_PICKLE_MODULE.Unpickler = _Unpickler  # type: ignore[attr-defined]
_PICKLE_MODULE.load = lambda file, **kwargs: _Unpickler(file, **kwargs).load()  # type: ignore[attr-defined]


def load_foreign(path: str | os.PathLike[str]) -> Any:
    """The object `torch.save` wrote to `path`, tensors on the CPU, foreign classes as `Foreign`."""
    return torch.load(path, map_location="cpu", pickle_module=_PICKLE_MODULE, weights_only=False)


def plain(obj: Any) -> Any:
    """`obj` with omegaconf containers and nodes turned into dicts, lists and values (their
    `_content` and `_val`); interpolations such as `${.global_batch_size}` stay unresolved strings."""
    if isinstance(obj, Foreign):
        state = obj.state if isinstance(obj.state, dict) else {}
        if "_content" in state:
            return plain(state["_content"])
        if "_val" in state:
            return plain(state["_val"])
        if obj.entries:
            return {plain(k): plain(v) for k, v in obj.entries.items()}
        return obj
    if isinstance(obj, dict):
        return {plain(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    return obj
