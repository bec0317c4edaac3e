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
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from rich.console import Console

from tuneloop.demo.synth.doc import FIELD_NAMES
from tuneloop.demo.synth.generate import STYLES, Document, generate_document
from tuneloop.demo.synth.split import NEAR_COPY_THRESHOLD, assign_splits, jaccard, near_copy_pairs, shingles
from tuneloop.errors import TuneloopError
from tuneloop.progress import progress_bar

if TYPE_CHECKING:
    from tuneloop.task import Task

SUPPORTED_TASK = "liability-extraction"
STYLE_NAMES = tuple(style.name for style in STYLES)

__all__ = [
    "NEAR_COPY_THRESHOLD",
    "STYLE_NAMES",
    "SUPPORTED_TASK",
    "jaccard",
    "near_copy_pairs",
    "shingles",
    "synthesize",
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
    _check_arguments(task, n, test_fraction)
    documents = _unique_documents(n, seed, on_progress)
    splits = assign_splits(
        [d.text for d in documents], [d.skeleton for d in documents], [d.style for d in documents], test_fraction, seed
    )
    return [_row(task, document, split) for document, split in zip(documents, splits, strict=True)]


def _check_arguments(task: Task, n: int, test_fraction: float) -> None:
    if task.name != SUPPORTED_TASK:
        raise TuneloopError(
            f"the synthetic generator only supports the `{SUPPORTED_TASK}` task, not `{task.name}`",
            where="--task",
            hint="other tasks need real data: OpenAI chat JSONL or captured traffic",
        )
    missing = sorted(set(FIELD_NAMES) - set(task.field_names))
    if missing:
        raise TuneloopError(
            f"task `{task.name}` lacks the field(s) {', '.join(missing)} that the generator fills",
            where="--task",
            hint="use the packaged liability-extraction task spec",
        )
    if n < 1:
        raise TuneloopError(f"-n must be at least 1, got {n}", where="-n")
    if not 0.0 <= test_fraction < 1.0:
        raise TuneloopError(f"--test-fraction must be in [0, 1), got {test_fraction}", where="--test-fraction")


def _unique_documents(n: int, seed: int, on_progress: Callable[[int, int], None] | None) -> list[Document]:
    documents: list[Document] = []
    seen: set[str] = set()
    index = 0
    while len(documents) < n:
        document = generate_document(seed, index)
        index += 1
        if document.text in seen:  # exact duplicates are skipped; the next index replaces them
            continue
        seen.add(document.text)
        documents.append(document)
        if on_progress is not None:
            on_progress(len(documents), n)
    return documents


def _row(task: Task, document: Document, split: str) -> dict[str, Any]:
    fields = {name: document.fields.get(name) for name in task.field_names}
    messages = [
        *task.build_messages({"text": document.text}),
        {"role": "assistant", "content": task.answer_json(fields)},
    ]
    digest = hashlib.sha256(document.text.encode()).hexdigest()[:16]
    return {
        "id": f"synth-{digest}",
        "messages": messages,
        "metadata": {"fields": fields, "split": split, "style": document.style},
    }


def synthesize_with_progress(
    task: Task, n: int, seed: int, test_fraction: float = 0.2, console: Console | None = None
) -> list[dict[str, Any]]:
    """``synthesize`` under a progress bar (count, rate, ETA)."""
    with progress_bar(console, unit="doc") as progress:
        bar = progress.add_task("synthesizing", total=n)

        def advance(done: int, total: int) -> None:
            if done % 50 == 0 or done == total:  # rich redraws are not free; a few per second is plenty
                progress.update(bar, completed=done)
            if done == total:  # the split that follows has no count to show; say what is running
                progress.update(bar, description="near-copy check and split")

        return synthesize(task, n, seed, test_fraction, on_progress=advance)
