"""Multi-head attention kernel dispatch: flash-attn on CUDA half precision, PyTorch SDPA otherwise."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

try:
    from flash_attn import flash_attn_func
except ImportError:  # optional dependency (the `gpu` extra)
    flash_attn_func = None

_FLASH_DTYPES = (torch.float16, torch.bfloat16)


def attention(q: Tensor, k: Tensor, v: Tensor, *, causal: bool, dropout_p: float = 0.0) -> Tensor:
    """Scaled dot-product attention softmax(q k^T / sqrt(D)) v over q [B, L, H, D] and k, v
    [B, L, H_kv, D]; with fewer key/value heads (grouped-query attention) query head h reads
    key/value head h // (H / H_kv), as Llama's `repeat_kv` arranges them.

    flash-attn is used when installed and q is a CUDA fp16/bf16 tensor (it only supports
    those); otherwise `scaled_dot_product_attention`, which wants heads before length.
    `dropout_p` is applied as given: callers pass 0 in eval mode.
    """
    if flash_attn_func is not None and q.is_cuda and q.dtype in _FLASH_DTYPES:
        return flash_attn_func(q, k, v, dropout_p=dropout_p, causal=causal)
    grouped = k.shape[2] != q.shape[2]
    out = F.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), dropout_p=dropout_p, is_causal=causal,
        enable_gqa=grouped,
    )
    return out.transpose(1, 2)
