"""Synthetic data for the ``receipt-extraction`` task: shop receipts and invoices as OCR text, with gold answers.

Receipts as a scanner reads them: Malaysian, Singaporean, US and European shops (groceries, hardware and
stationery shops, restaurants and cafés, business tax invoices), each with its own template, so a shop's
receipts look alike and shops differ. What makes them hard is what makes real ones hard: many amounts
(item prices, subtotal, discount, service charge, GST/SST/sales tax/VAT, the total before rounding, the
rounding adjustment, cash tendered and change, a tip guide) around the one that is the answer; several dates
(voucher and points expiry, member since, due and delivery dates, reprints) and digit runs that look like
dates (document numbers built from the date, postcodes, phone and registration numbers); header and footer
lines that are not the shop's name (a trading name above the legal one, "YOUR ORDER NUMBER IS 123", thank-you
and no-refund lines, the customer's name and address on an invoice). Fields are sometimes genuinely absent
(a torn top or bottom, a faded date, a shop that prints no address): the gold is then null.

The gold answer is read from what was printed, and each value keeps the task's ``extract`` promise: the
company is one span of the text and the address one span or (rarely, when OCR runs a phone number into it)
several, once whitespace is collapsed; the total is an amount printed on the slip; the date is printed in one
of :data:`DATE_FORMATS` (the task's ``formats``). An OCR noise mode (about a third of documents; metadata
``noise: true``) breaks and merges lines, confuses characters, misspells labels and scatters specks, never
inside an answer value.

Determinism: receipt ``i`` of seed ``s`` comes from ``random.Random("tuneloop-receipt:s:i:attempt")`` (its
damage from a second stream), so the same ``(n, seed)`` gives the same rows, byte for byte. The split uses
the liability generator's (:func:`tuneloop.demo.synth.split.assign_splits`): a receipt's skeleton is its
shop, so no shop has receipts on both sides, and near-copies are kept on one side.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from tuneloop.demo.receipts.document import FIELD_NAMES
from tuneloop.demo.receipts.generate import STYLES, Receipt, generate_receipt
from tuneloop.demo.receipts.shop import DATE_FORMATS
from tuneloop.demo.synth import check_arguments, dataset_row, unique_documents
from tuneloop.demo.synth.split import assign_splits

if TYPE_CHECKING:
    from tuneloop.task import Task

SUPPORTED_TASK = "receipt-extraction"
STYLE_NAMES = tuple(style.name for style in STYLES)

__all__ = ["DATE_FORMATS", "STYLE_NAMES", "SUPPORTED_TASK", "Receipt", "generate_receipt", "synthesize"]


def synthesize(
    task: Task,
    n: int,
    seed: int,
    test_fraction: float = 0.2,
    *,
    on_progress: Callable[[int, int], None] | None = None,
) -> list[dict[str, Any]]:
    """``n`` dataset rows (OpenAI chat ``messages`` plus ``id`` and ``metadata``) for ``task``.

    ``metadata`` holds the gold ``fields``, the ``split`` ("train"/"test"), the ``style`` and ``noise``
    (whether OCR damage was added). ``on_progress(done, n)`` is called as documents are generated.
    """
    check_arguments(task, n, test_fraction, task_name=SUPPORTED_TASK, field_names=FIELD_NAMES)
    receipts = unique_documents(generate_receipt, n, seed, on_progress)
    splits = assign_splits(
        [r.text for r in receipts], [r.skeleton for r in receipts], [r.style for r in receipts], test_fraction, seed
    )
    return [
        dataset_row(task, r.text, r.fields, {"split": split, "style": r.style, "noise": r.noise}, prefix="receipt")
        for r, split in zip(receipts, splits, strict=True)
    ]
