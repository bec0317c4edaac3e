"""One sale at a shop: the items, the arithmetic down to the amount paid, payment, numbers and dates.

Taxes follow the region and the date of sale (Malaysia's GST until May 2018, then SST; Singapore's GST at
7, 8 or 9 %; US sales tax on top; European VAT included in the prices), Malaysian totals are rounded to
5 sen, and every amount on the way to the total is kept so the receipt can print it as a distractor.
"""

from __future__ import annotations

import datetime as dt
import math
import random
from dataclasses import dataclass, field

from tuneloop.demo.receipts.shop import Shop

FIRST_DAY, LAST_DAY = dt.date(2016, 1, 1), dt.date(2025, 12, 31)
_NOTES = {"MY": (1, 5, 10, 20, 50, 100), "SG": (2, 5, 10, 50, 100), "US": (1, 5, 10, 20, 50, 100)}
_EU_NOTES = (5, 10, 20, 50, 100)
_VAT = {"DE": (19, 7), "NL": (21, 9), "FR": (20, 10, 5.5)}


@dataclass(frozen=True)
class Item:
    name: str
    qty: int
    unit: float
    amount: float


@dataclass(frozen=True)
class Tax:
    label: str  # GST, SST, Sales Tax, MwSt, TVA, BTW
    rate: float  # percent
    amount: float
    base: float  # the amount the tax is computed on (net of tax)
    included: bool  # already in the prices (printed as a summary) or added on top


@dataclass
class Sale:
    when: dt.datetime
    items: list[Item]
    subtotal: float
    discount: float  # >= 0, printed as a deduction
    service: float
    tax: Tax | None
    before_rounding: float
    rounding: float
    total: float  # the amount paid: the gold
    payment: str  # cash, card, wallet
    tendered: float | None
    change: float | None
    card: str | None  # the scheme or wallet paid with: VISA, girocard, TNG EWALLET...
    card_number: str | None  # the masked card number, None for a wallet
    approval: str
    doc_no: str
    order_no: int
    table: int
    pax: int
    staff: str
    terminal: str
    member_no: str
    tips: list[tuple[int, float]] = field(default_factory=list)
    other_dates: dict[str, dt.date] = field(default_factory=dict)


def sample_sale(rng: random.Random, shop: Shop) -> Sale:
    day = FIRST_DAY + dt.timedelta(days=rng.randrange((LAST_DAY - FIRST_DAY).days + 1))
    when = dt.datetime.combine(day, dt.time(rng.randint(8, 22), rng.randint(0, 59), rng.randint(0, 59)))
    items = _items(rng, shop)
    subtotal = round(sum(item.amount for item in items), 2)
    discount = round(subtotal * rng.choice([0.05, 0.1]), 2) if rng.random() < 0.15 else 0.0
    net = round(subtotal - discount, 2)
    service = 0.0
    if shop.kind == "restaurant" and shop.region in ("MY", "SG") and rng.random() < 0.7:
        service = round(net * 0.10, 2)
    tax = _tax(rng, shop, day, round(net + service, 2))
    before_rounding = round(net + service + (tax.amount if tax and not tax.included else 0.0), 2)
    total = before_rounding
    if shop.region == "MY" or (shop.region == "SG" and shop.layout["rule"] == 0):
        total = round(round(before_rounding * 20) / 20, 2)  # cash rounding to 5 cents
    payment = rng.choices(["cash", "card", "wallet"], weights=[5, 4, 1 if shop.region in ("MY", "SG") else 0])[0]
    tendered = _tendered(rng, shop.region, total) if payment == "cash" else None
    digits = "".join(str(rng.randint(0, 9)) for _ in range(12))
    card, card_number = _card(rng, shop.region, digits[:4]) if payment != "cash" else (None, None)
    sale = Sale(
        when=when,
        items=items,
        subtotal=subtotal,
        discount=discount,
        service=service,
        tax=tax,
        before_rounding=before_rounding,
        rounding=round(total - before_rounding, 2),
        total=total,
        payment=payment,
        tendered=tendered,
        change=round(tendered - total, 2) if tendered is not None else None,
        card=card,
        card_number=card_number,
        approval=digits[4:10],
        doc_no=_doc_no(rng, when),
        order_no=rng.randint(1, 999),
        table=rng.randint(1, 40),
        pax=rng.randint(1, max(1, min(8, sum(item.qty for item in items)))),
        staff=rng.choice(shop.staff),
        terminal=f"{rng.randint(1, 12):02d}",
        member_no=digits[: rng.choice([8, 10, 12])],
    )
    if shop.region == "US" and shop.kind == "restaurant":
        sale.tips = [(pct, round(before_rounding * pct / 100, 2)) for pct in (15, 18, 20)]
    sale.other_dates = _other_dates(rng, day)
    return sale


def _items(rng: random.Random, shop: Shop) -> list[Item]:
    count = rng.choice([1, 2, 2, 3, 3, 4, 4, 5, 6, 7]) if shop.kind != "invoice" else rng.randint(1, 4)
    items = []
    for name, unit in rng.sample(shop.items, min(count, len(shop.items))):
        qty = rng.choice([1, 1, 1, 1, 2, 2, 3, 4, 6]) if unit < 60 else rng.choice([1, 1, 2])
        items.append(Item(name, qty, unit, round(qty * unit, 2)))
    return items


def _tax(rng: random.Random, shop: Shop, day: dt.date, base: float) -> Tax | None:
    region, kind = shop.region, shop.kind
    if region == "MY":
        if day < dt.date(2018, 6, 1):
            return _added_or_included("GST", 6, base, included=kind == "retail" and shop.layout["rule"] != 3)
        if day < dt.date(2018, 9, 1):
            return _added_or_included("GST", 0, base, included=False)
        if kind == "retail":
            return None  # sales tax is in the shelf price and not itemised
        rate = 8 if day >= dt.date(2024, 3, 1) else 6
        return _added_or_included(rng.choice(["SST", "Service Tax"]), rate, base, included=False)
    if region == "SG":
        rate = 7 if day.year < 2023 else 8 if day.year == 2023 else 9
        return _added_or_included("GST", rate, base, included=kind == "retail")
    if region == "US":
        rate = random.Random(shop.key).choice([4.0, 5.5, 6.0, 6.25, 7.0, 7.25, 8.25, 8.875, 9.5])
        return _added_or_included(rng.choice(["Sales Tax", "TAX", "Tax"]), rate, base, included=False)
    label = {"DE": "MwSt", "NL": "BTW", "FR": "TVA"}[region]
    return _added_or_included(label, _VAT[region][1 if kind == "restaurant" else 0], base, included=True)


def _added_or_included(label: str, rate: float, base: float, *, included: bool) -> Tax:
    if included:
        net = round(base / (1 + rate / 100), 2)
        return Tax(label, rate, round(base - net, 2), net, included=True)
    return Tax(label, rate, round(base * rate / 100, 2), base, included=False)


def _tendered(rng: random.Random, region: str, total: float) -> float:
    notes = _NOTES.get(region, _EU_NOTES)
    options = [float(note) for note in notes if note >= total]
    options += [math.ceil(total / 10) * 10.0, math.ceil(total / 50) * 50.0, round(total, 2)]
    options = [option for option in options if option >= total] or [total]
    return rng.choice(sorted(set(options))[:3])


def _card(rng: random.Random, region: str, last4: str) -> tuple[str, str | None]:
    if rng.random() < 0.15 and region in ("MY", "SG"):
        return rng.choice(["TNG EWALLET", "GRABPAY", "BOOST", "PAYNOW", "NETS"]), None
    scheme = rng.choice(
        {"DE": ["girocard", "EC-Karte", "VISA"], "NL": ["PIN", "Maestro", "VISA"], "FR": ["CB", "CB VISA"]}.get(
            region, ["VISA", "MASTERCARD", "AMEX", "DEBIT"]
        )
    )
    mask = rng.choice(["************", "XXXXXXXXXXXX", "**** **** **** ", "xxxx"])
    return scheme, f"{mask}{last4}"


def _doc_no(rng: random.Random, when: dt.datetime) -> str:
    """Document numbers, some built from the date of sale (a digit run that looks like a date)."""
    serial = rng.randint(1, 99999)
    return rng.choice(
        [
            f"{rng.choice(['CS', 'INV', 'T01', 'R', 'OR'])}{when:%y%m%d}{serial % 1000:03d}",
            f"{when:%Y%m%d}{serial:05d}",
            f"{rng.randint(10, 99)}-{serial:06d}",
            f"{serial:08d}",
            f"CS{serial:07d}",
            f"{rng.choice('ABKT')}{rng.randint(100, 999)}/{serial % 10000:04d}",
        ]
    )


def _other_dates(rng: random.Random, day: dt.date) -> dict[str, dt.date]:
    """Dates a receipt may print besides the date of sale; the layout picks which."""
    return {
        "member_since": day - dt.timedelta(days=rng.randint(120, 2500)),
        "points_expiry": dt.date(day.year + rng.choice([1, 2]), rng.choice([3, 6, 12]), rng.choice([1, 28])),
        "voucher_until": day + dt.timedelta(days=rng.choice([14, 30, 60, 90])),
        "return_by": day + dt.timedelta(days=rng.choice([7, 14, 30])),
        "due": day + dt.timedelta(days=rng.choice([14, 30, 30, 60])),
        "delivery": day + dt.timedelta(days=rng.randint(0, 6)),
        "reprint": day + dt.timedelta(days=rng.randint(1, 20)),
    }
