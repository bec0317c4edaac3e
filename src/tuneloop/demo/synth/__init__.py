"""Synthetic demo data for the ``liability-extraction`` task: servicer documents with gold answers.

The data trains a model that is then measured on real servicer documents nobody has seen, so the
generator aims at diversity: 15 document styles (letters, statements, notices, portal pages,
emails, call notes, chats, texts, voicemails, forwards, scanned faxes), each assembled from pools
of phrasings, label synonyms, layouts and optional sections; money, dates and rates in many
written forms; distractor numbers (principal, monthly payment, fees, statement dates, phone
numbers, reference and routing numbers, SSN digits, another loan's last four); fields that are
genuinely absent (gold ``null``); typos and OCR damage that never touch the answer values.

Determinism: document ``i`` of seed ``s`` comes from ``random.Random("tuneloop-synth:s:i:attempt")``
alone, so the same ``(n, seed)`` always gives the same rows, byte for byte.

Split without leakage. A document's *skeleton* is its style plus the structural phrasing choices
it made (layout, opener, title, ...). A *near-copy* is a pair of documents whose word 3-shingle
sets (lower-cased, every digit run masked as ``#``) have Jaccard similarity >= 0.5, so documents
that differ only in their numbers are near-copies. Documents are grouped by shared skeleton and
by chains of near-copies, and whole groups are assigned to a split: no test document shares a
skeleton with, or is a near-copy of, any train document. Exact duplicate texts are never emitted.

``check_arguments``, ``unique_documents`` and ``dataset_row`` are shared with the other generators
(``demo/receipts``); ``tuneloop.demo.generators`` picks the generator for a task.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from tuneloop.demo.synth.doc import FIELD_NAMES
from tuneloop.demo.synth.generate import STYLES, generate_document
from tuneloop.demo.synth.split import NEAR_COPY_THRESHOLD, assign_splits, jaccard, near_copy_pairs, shingles
from tuneloop.errors import TuneloopError

if TYPE_CHECKING:
    from tuneloop.task import Task

SUPPORTED_TASK = "liability-extraction"
STYLE_NAMES = tuple(style.name for style in STYLES)

__all__ = [
    "NEAR_COPY_THRESHOLD",
    "STYLE_NAMES",
    "SUPPORTED_TASK",
    "check_arguments",
    "dataset_row",
    "jaccard",
    "near_copy_pairs",
    "shingles",
    "synthesize",
    "unique_documents",
]


def synthesize(
    task: Task,
    n: int,
    seed: int,
    test_fraction: float = 0.2,
    *,
    on_progress: Callable[[int, int], None] | None = None,
) -> list[dict[str, Any]]:
    """``n`` dataset rows (OpenAI chat ``messages`` plus ``id`` and ``metadata``) for ``task``.

    ``metadata`` holds the gold ``fields``, the ``split`` ("train"/"test") and the ``style``.
    ``on_progress(done, n)`` is called as documents are generated.
    """
    check_arguments(task, n, test_fraction, task_name=SUPPORTED_TASK, field_names=FIELD_NAMES)
    documents = unique_documents(generate_document, n, seed, on_progress)
    splits = assign_splits(
        [d.text for d in documents], [d.skeleton for d in documents], [d.style for d in documents], test_fraction, seed
    )
    return [
        dataset_row(task, d.text, d.fields, {"split": split, "style": d.style})
        for d, split in zip(documents, splits, strict=True)
    ]


def check_arguments(task: Task, n: int, test_fraction: float, *, task_name: str, field_names: Sequence[str]) -> None:
    """Refuse a task the generator was not written for, and out-of-range ``n`` / ``test_fraction``."""
    if task.name != task_name:
        raise TuneloopError(
            f"this generator writes documents for the `{task_name}` task, not `{task.name}`",
            where="--task",
            hint="other tasks need real data: OpenAI chat JSONL or captured traffic",
        )
    missing = sorted(set(field_names) - set(task.field_names))
    if missing:
        raise TuneloopError(
            f"task `{task.name}` lacks the field(s) {', '.join(missing)} that the generator fills",
            where="--task",
            hint=f"use the packaged {task_name} task spec",
        )
    if n < 1:
        raise TuneloopError(f"-n must be at least 1, got {n}", where="-n")
    if not 0.0 <= test_fraction < 1.0:
        raise TuneloopError(f"--test-fraction must be in [0, 1), got {test_fraction}", where="--test-fraction")


class _HasText(Protocol):
    @property
    def text(self) -> str: ...


D = TypeVar("D", bound=_HasText)


def unique_documents(
    generate: Callable[[int, int], D], n: int, seed: int, on_progress: Callable[[int, int], None] | None
) -> list[D]:
    """The first ``n`` documents ``generate(seed, index)`` gives for index 0, 1, ..., exact duplicates skipped."""
    documents: list[D] = []
    seen: set[str] = set()
    index = 0
    while len(documents) < n:
        document = generate(seed, index)
        index += 1
        if document.text in seen:  # exact duplicates are skipped; the next index replaces them
            continue
        seen.add(document.text)
        documents.append(document)
        if on_progress is not None:
            on_progress(len(documents), n)
    return documents


def dataset_row(
    task: Task, text: str, fields: dict[str, Any], metadata: dict[str, Any], *, prefix: str = "synth"
) -> dict[str, Any]:
    """A chat row whose assistant turn is the task's canonical JSON of ``fields`` (in ``metadata.fields`` too)."""
    answer = {name: fields.get(name) for name in task.field_names}
    messages = [*task.build_messages({"text": text}), {"role": "assistant", "content": task.answer_json(answer)}]
    digest = hashlib.sha256(text.encode()).hexdigest()[:16]
    return {"id": f"{prefix}-{digest}", "messages": messages, "metadata": {"fields": answer, **metadata}}
