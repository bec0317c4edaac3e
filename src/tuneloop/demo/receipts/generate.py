"""One receipt at a time: pick a style and one of its shops, ring up a sale, decide what survived the
scan, lay it out, and (for a share of documents) add OCR damage."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from tuneloop.demo.receipts import blocks, document
from tuneloop.demo.receipts.document import FIELD_NAMES, Writer
from tuneloop.demo.receipts.noise import add_ocr_noise
from tuneloop.demo.receipts.sale import Sale, sample_sale
from tuneloop.demo.receipts.shop import Shop, make_shop

SHOPS_PER_STYLE = 300  # receipts of one shop share a skeleton, so the split never puts a shop on both sides
NOISE_SHARE = 0.35
MIN_CHARS, MAX_CHARS = 380, 1100  # about 150 to 500 tokens of the bundled model's tokenizer


_INVOICE_FOOTERS = (
    "This is a computer generated invoice. No signature is required.",
    "Thank you for your business.",
    "E. & O. E.",
)


@dataclass(frozen=True)
class Style:
    name: str
    region: str  # MY, SG, US, or EU (each shop is then German, Dutch or French)
    kind: str  # retail, restaurant, invoice
    goods: str  # the vocab.ITEMS pool
    weight: float = 1.0


STYLES: tuple[Style, ...] = (
    Style("my_grocery", "MY", "retail", "my_grocery", 1.3),
    Style("my_hardware", "MY", "retail", "my_hardware", 1.3),
    Style("my_restaurant", "MY", "restaurant", "my_restaurant", 1.2),
    Style("my_invoice", "MY", "invoice", "invoice", 0.8),
    Style("sg_retail", "SG", "retail", "sg_retail"),
    Style("sg_restaurant", "SG", "restaurant", "sg_restaurant"),
    Style("sg_invoice", "SG", "invoice", "invoice", 0.6),
    Style("us_retail", "US", "retail", "us_retail"),
    Style("us_restaurant", "US", "restaurant", "us_restaurant"),
    Style("eu_retail", "EU", "retail", "eu_retail"),
    Style("eu_cafe", "EU", "restaurant", "eu_restaurant"),
)


@dataclass(frozen=True)
class Receipt:
    text: str
    fields: dict[str, Any]  # the gold answer, None where the text does not print the field
    style: str
    skeleton: str  # the shop: its receipts share a split
    noise: bool


def generate_receipt(seed: int, index: int, *, noise: bool | None = None) -> Receipt:
    """The ``index``-th receipt of ``seed``; ``noise`` forces OCR damage on or off (default: by chance).

    The receipt's content comes from one random stream and its damage from another, so forcing
    ``noise`` changes the damage and nothing else.
    """
    for attempt in range(100):
        rng = random.Random(f"tuneloop-receipt:{seed}:{index}:{attempt}")
        noise_rng = random.Random(f"tuneloop-receipt-noise:{seed}:{index}:{attempt}")
        receipt = _try_receipt(rng, noise_rng, noise)
        if receipt is not None:
            return receipt
    raise RuntimeError(f"could not generate receipt {index} for seed {seed}")  # a generator bug, not user input


def _try_receipt(rng: random.Random, noise_rng: random.Random, noise: bool | None) -> Receipt | None:
    style = rng.choices(STYLES, weights=[s.weight for s in STYLES], k=1)[0]
    shop = make_shop(style.name, style.region, style.kind, style.goods, rng.randrange(SHOPS_PER_STYLE))
    sale = sample_sale(rng, shop)
    show = _shown(rng, shop)
    merge_contact = "address" in show and len(shop.address) > 1 and rng.random() < 0.05
    noisy = rng.random() < NOISE_SHARE
    noisy = noisy if noise is None else noise
    writer = Writer(rng, shop.date_format, center_width=shop.width if shop.layout["center"] == 0 else 0)
    _write(writer, shop, sale, show, merge_contact)
    clean = document.render(writer.lines)
    if not MIN_CHARS <= len(clean) <= MAX_CHARS:
        return None
    fields = document.gold_fields(writer.lines)
    lines = add_ocr_noise(noise_rng, writer.lines, noise_rng.uniform(0.01, 0.05)) if noisy else writer.lines
    text = document.render(lines)
    document.check_printed(text, fields, lines)
    return Receipt(text=text, fields=fields, style=style.name, skeleton=shop.key, noise=noisy)


def _shown(rng: random.Random, shop: Shop) -> frozenset[str]:
    """Which answers the slip still prints: a torn top or bottom, a faded date, a shop without an address."""
    show = set(FIELD_NAMES)
    if rng.random() < 0.04:
        show -= {"company", "address"} if rng.random() < 0.5 else {"company"}
    if shop.layout["no_address"]:
        show.discard("address")
    if rng.random() < 0.05:
        show.discard("date")
    if rng.random() < 0.03:
        show.discard("total")
    return frozenset(show)


def _write(w: Writer, shop: Shop, sale: Sale, show: frozenset[str], merge_contact: bool) -> None:
    blocks.header(w, shop, sale, show, merge_contact=merge_contact)
    if shop.kind == "invoice":
        _invoice(w, shop, sale, show)
        return
    extra: list[str] = []
    if shop.kind == "restaurant":
        table, pax = shop.labels["table"], shop.labels["pax"]
        extra.append(f"{table}: {sale.table}   {pax}: {sale.pax}" if w.chance(0.7) else f"{table} {sale.table}")
        if w.chance(0.4):
            extra.append(f"Order #{sale.order_no}")
    blocks.rule(w, shop)
    blocks.meta(w, shop, sale, show, extra)
    blocks.rule(w, shop)
    blocks.items(w, shop, sale)
    blocks.rule(w, shop)
    blocks.totals(w, shop, sale, show)
    if "total" not in show:
        return
    blocks.tips(w, shop, sale)
    blocks.payment(w, shop, sale)
    blocks.tax_summary(w, shop, sale)
    if shop.kind == "retail":
        blocks.extras(w, shop, sale)
    blocks.bottom_date(w, shop, sale, show)
    blocks.footer(w, shop, sale)


def _invoice(w: Writer, shop: Shop, sale: Sale, show: frozenset[str]) -> None:
    """A business tax invoice: invoice and due dates, the customer's name and address, amount in words."""
    rng = w.rng
    customer = make_shop(f"{shop.style}-customer", shop.region, "invoice", "invoice", rng.randrange(5000))
    w.add(f"Invoice No: {sale.doc_no}")
    if "date" in show:
        w.add(rng.choice(["Invoice Date: ", "Date: ", "DATE : "]), document.date(sale.when.date(), shop.date_format))
    if rng.random() < 0.6:
        w.add(f"Due Date: {w.dated(sale.other_dates['due'])}")
    else:
        w.add(f"Terms: {rng.choice([14, 30, 60])} Days")
    if rng.random() < 0.4:
        w.add(f"DO No: DO-{sale.order_no:05d}   Delivery Date: {w.dated(sale.other_dates['delivery'])}")
    w.blank()
    w.add(rng.choice(["Bill To:", "BILL TO", "Sold To:", "Customer:"]))
    w.add(customer.name)
    for line in customer.address:
        w.add(line)
    if rng.random() < 0.5:
        w.add(f"Attn: {rng.choice(['Mr. Tan', 'Ms. Lee', 'Encik Ahmad', 'Puan Siti', 'Mr. Kumar'])}")
    blocks.rule(w, shop)
    w.add("No  Description                 Qty   Unit Price    Amount")
    for number, item in enumerate(sale.items, start=1):
        unit, amount = shop.amount(item.unit), shop.amount(item.amount)
        w.add(f"{number:<3} {item.name:<27} {item.qty:>3}   {unit:>10}  {amount:>9}")
    blocks.rule(w, shop)
    blocks.totals(w, shop, sale, show)
    if "total" not in show:
        return
    if rng.random() < 0.6:
        w.add(blocks.amount_in_words(sale, shop))
    if rng.random() < 0.6:
        bank = rng.choice(["MAYBANK", "CIMB BANK", "PUBLIC BANK", "DBS", "OCBC", "UOB"])
        w.add(f"Payment to: {bank} A/C {rng.randint(1000, 9999)} {rng.randint(1000, 9999)} {rng.randint(1000, 9999)}")
    w.add(rng.choice(_INVOICE_FOOTERS))
