"""Attention over packed (padding-free) batches, with no attention across examples, on any device.

Padding-free training concatenates a micro-batch's examples into one row and restarts ``position_ids`` at 0
for each example. transformers honours that with FlashAttention's varlen kernels (GPU) or by building a
dense block-diagonal mask for ``sdpa``/``eager``: correct, but the mask is (tokens x tokens) and attention
does the work of one long sequence, most of it masked away. ``varlen_sdpa`` runs PyTorch's fused SDPA once
per example with ``is_causal=True`` instead: exact, no mask, and the attention work of the examples alone.

It is registered with transformers' ``AttentionInterface`` as ``"tuneloop_varlen_sdpa"``; a model loaded
with ``attn_implementation="tuneloop_varlen_sdpa"`` uses it. Inputs with a padding mask (batched
generation) and single sequences take the stock ``sdpa`` path unchanged.
"""

from __future__ import annotations

import itertools
from typing import Any

import torch
import torch.nn.functional as F
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

VARLEN_SDPA = "tuneloop_varlen_sdpa"


def sequence_bounds(
    position_ids: torch.Tensor | None, cu_seq_lens: torch.Tensor | None, length: int
) -> list[int] | None:
    """Start offsets of the packed examples plus the end, e.g. [0, 300, 720]; None for one plain sequence."""
    if cu_seq_lens is not None:
        bounds = [int(x) for x in cu_seq_lens.tolist()]
    elif position_ids is not None and position_ids.shape[0] == 1:
        starts = (position_ids[0] == 0).nonzero().flatten().tolist()
        bounds = [*starts, length] if starts and starts[0] == 0 else None
    else:
        return None
    if bounds is None or len(bounds) <= 2:
        return None
    return bounds


def varlen_sdpa(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """``query`` (1, heads, tokens, dim), ``key``/``value`` (1, kv_heads, tokens, dim) -> (1, tokens, heads, dim)."""
    bounds = None
    if attention_mask is None and query.shape[0] == 1 and query.shape[2] == key.shape[2]:
        bounds = sequence_bounds(kwargs.get("position_ids"), kwargs.get("cu_seq_lens_q"), query.shape[2])
    if bounds is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout, scaling, **kwargs)
    groups = getattr(module, "num_key_value_groups", 1)
    pieces = []
    for start, end in itertools.pairwise(bounds):
        pieces.append(
            F.scaled_dot_product_attention(
                query[:, :, start:end],
                key[:, :, start:end],
                value[:, :, start:end],
                dropout_p=dropout,
                scale=scaling,
                is_causal=True,
                enable_gqa=groups > 1,
            )
        )
    return torch.cat(pieces, dim=2).transpose(1, 2).contiguous(), None


def _varlen_mask(*args: Any, attention_mask: torch.Tensor | None = None, **kwargs: Any) -> torch.Tensor | None:
    """No mask for padding-free rows (the attention splits them itself); a padding mask as ``sdpa`` makes it."""
    if attention_mask is None:
        return None
    return sdpa_mask(*args, attention_mask=attention_mask, **kwargs)


def register() -> str:
    """Make ``attn_implementation="tuneloop_varlen_sdpa"`` available (idempotent); returns the name."""
    AttentionInterface.register(VARLEN_SDPA, varlen_sdpa)
    AttentionMaskInterface.register(VARLEN_SDPA, _varlen_mask)
    return VARLEN_SDPA
