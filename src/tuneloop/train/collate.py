"""Padding-free batches: a micro-batch's examples concatenated into one row, their shared prefix stored once.

A row holds no padding: ``input_ids`` (1, tokens), ``labels`` alike, ``position_ids`` restarting for each
example, and the segment offsets (``cu_seq_lens_q``) that ``attention.varlen_sdpa`` splits the attention by,
so no example attends to another. When the examples start with the same tokens (the task's system prompt,
which every example of a task shares) and none of those is trained on, the prefix is written once and each
example contributes only its remainder; ``shared_prefix_length`` tells the attention to let every remainder
see the prefix. The result is exactly that of running the examples one by one (see ``attention.py``).

Examples that carry ``loss_weights`` (training under ``value_weight``, ``weights.py``) get a ``loss_weights``
row beside ``labels``, position for position.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from tuneloop.train.data import IGNORE_INDEX

MIN_SHARED_PREFIX = 8  # below this, sharing saves less than it costs in attention calls


def shared_prefix_length(input_ids: list[list[int]], labels: list[list[int]]) -> int:
    """Tokens all examples start with, stopping before any of them has a label (which must stay per example)."""
    if len(input_ids) < 2:
        return 0
    # The first token after the prefix is predicted from the prefix's last position, which is shared, so it
    # must not be a label of any example: P < first label.
    limit = min(_first_label(example) for example in labels) - 1
    limit = min(limit, *(len(ids) - 1 for ids in input_ids))
    first = input_ids[0]
    length = 0
    while length < limit and all(ids[length] == first[length] for ids in input_ids[1:]):
        length += 1
    return length if length >= MIN_SHARED_PREFIX else 0


def _first_label(labels: list[int]) -> int:
    for index, label in enumerate(labels):
        if label != IGNORE_INDEX:
            return index
    return len(labels)


@dataclass
class PaddingFreeCollator:
    share_prefix: bool = True

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        ids = [list(example["input_ids"]) for example in examples]
        labels = [list(example["labels"]) for example in examples]
        prefix = shared_prefix_length(ids, labels) if self.share_prefix else 0
        flat_ids: list[int] = list(ids[0][:prefix])
        flat_labels: list[int] = [IGNORE_INDEX] * prefix
        positions: list[int] = list(range(prefix))
        bounds = [0, prefix] if prefix else [0]
        weighted = "loss_weights" in examples[0]
        flat_weights: list[float] = [1.0] * prefix  # the prefix holds no label, so its weights never count
        for example, example_ids, example_labels in zip(examples, ids, labels, strict=True):
            start = len(flat_ids)
            flat_ids += example_ids[prefix:]
            flat_labels += example_labels[prefix:]
            if weighted:
                flat_weights += list(example["loss_weights"])[prefix:]
            flat_labels[start] = IGNORE_INDEX  # never predicted from the previous segment's last token
            positions += range(prefix, len(example_ids))
            bounds.append(len(flat_ids))
        cu_seq_lens = torch.tensor(bounds, dtype=torch.int32)
        longest = int(cu_seq_lens.diff().max())
        batch: dict[str, Any] = {
            "input_ids": torch.tensor([flat_ids], dtype=torch.long),
            "labels": torch.tensor([flat_labels], dtype=torch.long),
            "position_ids": torch.tensor([positions], dtype=torch.long),
            "cu_seq_lens_q": cu_seq_lens,
            "cu_seq_lens_k": cu_seq_lens,
            "max_length_q": longest,
            "max_length_k": longest,
            "shared_prefix_length": prefix,
            "example_tokens": sum(len(example) for example in ids),
        }
        if weighted:
            batch["loss_weights"] = torch.tensor([flat_weights], dtype=torch.float32)
        return batch
