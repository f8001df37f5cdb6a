"""Whether a model's state is finite, over all its shards, cheaply enough to ask after every step.

A screen with one fused kernel (`_foreach_norm`: a NaN or inf anywhere makes a tensor's norm
non-finite) and one all-reduce of one flag per tensor; only when it flags something is each
flagged tensor checked element by element (a norm can also overflow on huge finite values), so
the answer is exact and names the first non-finite tensor, the same on every rank.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch.distributed.tensor import DTensor

from edlm_dist.distributed.env import all_reduce_sum


def _local(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.to_local() if isinstance(tensor, DTensor) else tensor


def first_nonfinite(named: Iterable[tuple[str, torch.Tensor]], *, collective: bool = True) -> str | None:
    """The name of the first tensor of `named` holding a NaN or an infinity (on any rank when
    `collective`: then every rank must call this with the same names), or None when all are finite.
    Integer tensors cannot be non-finite and are not read."""
    names, tensors = [], []
    for name, tensor in named:
        if tensor.is_floating_point():
            names.append(name)
            tensors.append(_local(tensor).detach())
    if not tensors:
        return None
    device = tensors[0].device
    nonempty = [i for i, t in enumerate(tensors) if t.numel()]
    norms = torch.zeros(len(tensors), dtype=torch.float32, device=device)
    if nonempty:
        found = torch._foreach_norm([tensors[i] for i in nonempty])
        norms[nonempty] = torch.stack([norm.float() for norm in found])
    flagged = (~torch.isfinite(norms)).float()
    if collective:
        all_reduce_sum(flagged)
    candidates = flagged.nonzero().flatten().tolist()
    if not candidates:
        return None
    exact = torch.stack([(~torch.isfinite(tensors[i])).any().float() for i in candidates])
    if collective:
        all_reduce_sum(exact)
    bad = [candidates[j] for j in exact.nonzero().flatten().tolist()]
    return names[bad[0]] if bad else None
