"""Attention over packed (padding-free) batches, with no attention across examples, on any device.

Padding-free training concatenates a micro-batch's examples into one row and restarts ``position_ids`` at 0
for each example. transformers honours that with FlashAttention's varlen kernels (GPU) or by building a
dense block-diagonal mask for ``sdpa``/``eager``: correct, but the mask is (tokens x tokens) and attention
does the work of one long sequence, most of it masked away: its cost grows with the square of the whole
row's length rather than of each example's. ``varlen_sdpa`` runs PyTorch's fused SDPA once per example
with ``is_causal=True`` instead: exact, no mask, and the attention work of the examples alone.

Shared prefix: every example of a task starts with the same tokens (the chat template's system turn with
the task's instructions, ~100 tokens for the demo task). ``collate.py`` puts that prefix once at the start
of the row, followed by each example's remaining tokens (their positions continuing after the prefix), and
passes ``shared_prefix_length``. Each remainder then attends to the prefix and causally to itself
(``causal_lower_right``): the same numbers as running the examples separately, since a causal prefix does
not depend on what follows it, and its gradient is the sum over the examples, as it would be.

It is registered with transformers' ``AttentionInterface`` as ``"tuneloop_varlen_sdpa"``; a model loaded
with ``attn_implementation="tuneloop_varlen_sdpa"`` uses it. Inputs with a padding mask (batched
generation) and single sequences take the stock ``sdpa`` path unchanged.
"""

from __future__ import annotations

import itertools
from typing import Any

import torch
import torch.nn.functional as F
from torch.nn.attention.bias import causal_lower_right
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

VARLEN_SDPA = "tuneloop_varlen_sdpa"


def sequence_bounds(
    position_ids: torch.Tensor | None, cu_seq_lens: torch.Tensor | None, length: int
) -> list[int] | None:
    """Segment offsets plus the end, e.g. [0, 300, 720]; None for one plain sequence."""
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


def autocast_dtype(tensor: torch.Tensor) -> torch.dtype:
    """The dtype autocast computes attention in for this device, or the tensor's own outside autocast."""
    device = tensor.device.type
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else tensor.dtype


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
    prefix = int(kwargs.get("shared_prefix_length") or 0)
    if attention_mask is None and query.shape[0] == 1 and query.shape[2] == key.shape[2]:
        bounds = sequence_bounds(kwargs.get("position_ids"), kwargs.get("cu_seq_lens_q"), query.shape[2])
    if bounds is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout, scaling, **kwargs)
    gqa = getattr(module, "num_key_value_groups", 1) > 1
    pieces = []
    for start, end in itertools.pairwise(bounds):
        if prefix and start >= prefix:  # an example's remainder: the shared prefix, then itself causally
            # A CausalBias mask dispatches around autocast, so the inputs are brought to one dtype here
            # (under bf16 autocast the rotary embedding leaves query/key in float32, value in bf16).
            dtype = autocast_dtype(query)
            keys = torch.cat([key[:, :, :prefix], key[:, :, start:end]], dim=2).to(dtype)
            values = torch.cat([value[:, :, :prefix], value[:, :, start:end]], dim=2).to(dtype)
            mask = causal_lower_right(end - start, prefix + end - start)
            piece = F.scaled_dot_product_attention(
                query[:, :, start:end].to(dtype),
                keys,
                values,
                attn_mask=mask,
                dropout_p=dropout,
                scale=scaling,
                enable_gqa=gqa,
            )
        else:
            piece = F.scaled_dot_product_attention(
                query[:, :, start:end],
                key[:, :, start:end],
                value[:, :, start:end],
                dropout_p=dropout,
                scale=scaling,
                is_causal=True,
                enable_gqa=gqa,
            )
        pieces.append(piece)
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
