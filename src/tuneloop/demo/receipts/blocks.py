"""The blocks a receipt is written from: header, meta lines, items, totals, payment, extras, footer.

Each block prints the answer pieces it holds only when the field is shown (``show``), and prints the
distractors around them: brand lines, registration and tax numbers, phone numbers, document numbers
built from the date, amounts before and after tax and rounding, cash and change, other dates.
"""

from __future__ import annotations

import re
import zlib

from tuneloop.demo.receipts import document as doc
from tuneloop.demo.receipts.document import Writer
from tuneloop.demo.receipts.sale import Sale
from tuneloop.demo.receipts.shop import Shop
from tuneloop.demo.synth.values import number_to_words

_TITLES = ("TAX INVOICE", "RECEIPT", "CASH BILL", "SIMPLIFIED TAX INVOICE", "OFFICIAL RECEIPT", None)
_EU_TITLES = {"DE": ("Kassenbon", "Rechnung", None), "NL": ("Kassabon", "Bon", None), "FR": ("Ticket", "Facture", None)}


def header(w: Writer, shop: Shop, sale: Sale, show: frozenset[str], *, merge_contact: bool) -> None:
    """Brand, legal name and registration, address, contact lines, tax number, title."""
    if "company" in show:
        if shop.brand:
            w.centered(shop.brand)
        _name(w, shop)
    contact = list(shop.contact)
    if "address" in show:
        lines = shop.address
        for index, line in enumerate(lines):
            if merge_contact and index == 0 and len(lines) > 1 and contact:
                # Two columns read as one line by OCR: the phone lands between two address lines.
                w.add(doc.address(line), " " * w.rng.randint(3, 8), contact.pop(0))
            else:
                w.centered(doc.address(line))
    tax_id = _tax_id(shop, sale)
    tax_first = shop.layout["meta_order"] == 1
    if tax_first and tax_id:
        w.centered(tax_id)
    for line in contact:
        w.centered(line)
    if not tax_first and tax_id:
        w.centered(tax_id)
    title = _title(shop)
    if title:
        w.centered(title)


def _tax_id(shop: Shop, sale: Sale) -> str | None:
    """The shop's tax registration as of the sale: a Malaysian shop shows its GST number until SST replaced it."""
    if shop.region != "MY" or shop.tax_id is None:
        return shop.tax_id
    digits = re.sub(r"[^0-9]", "", shop.tax_id.removeprefix("SST REG NO: W10"))[:12].ljust(12, "0")
    if sale.tax is not None and sale.tax.label == "GST":
        return shop.tax_id if "GST" in shop.tax_id else f"GST REG NO: {digits}"
    return shop.tax_id if "SST" in shop.tax_id else f"SST REG NO: W10-{digits[:4]}-{digits[4:]}"


def _name(w: Writer, shop: Shop) -> None:
    shape = shop.layout["name_line"]
    words = shop.name.split()
    if shape == 1 and shop.reg_no:
        w.centered(doc.company(shop.name), " ", shop.reg_no)
        return
    if shape == 2 and len(words) >= 3:
        cut = w.rng.randint(1, len(words) - 1)  # a long name wraps over two lines
        w.centered(doc.company(" ".join(words[:cut])))
        w.centered(doc.company(" ".join(words[cut:])))
    else:
        w.centered(doc.company(shop.name))
    if shop.reg_no and shape != 3:
        w.centered(shop.reg_no)


def _title(shop: Shop) -> str | None:
    if shop.region in _EU_TITLES:
        options = _EU_TITLES[shop.region]
        return options[shop.layout["title"] % len(options)]
    if shop.kind == "invoice":
        return ("TAX INVOICE", "INVOICE", "Tax Invoice")[shop.layout["title"] % 3]
    if shop.region == "US":
        return (None, None, "SALES RECEIPT", "CUSTOMER RECEIPT", None, None)[shop.layout["title"]]
    return _TITLES[shop.layout["title"]]


def rule(w: Writer, shop: Shop) -> None:
    w.add(("-" * shop.width, "=" * shop.width, "*" * (shop.width // 2), "- " * (shop.width // 2))[shop.layout["rule"]])


def date_time(shop: Shop, sale: Sale, show: frozenset[str]) -> list[str | doc.Piece | None]:
    """The parts of a 'date and time' line; the date left out when it is not shown (faded)."""
    labels = shop.labels
    time = sale.when.strftime(shop.time_format)
    day = doc.date(sale.when.date(), shop.date_format) if "date" in show else None
    if shop.layout["date_place"] == 1:
        return [day, " " if day else None, time]
    return [f"{labels['date']}: " if day else None, day, "  " if day else None, f"{labels['time']}: {time}"]


def meta(w: Writer, shop: Shop, sale: Sale, show: frozenset[str], extra: list[str]) -> None:
    """Date, time, document number, cashier, terminal and the kind's own lines (table, pax, order)."""
    labels = shop.labels
    doc_line = f"{labels['doc_no']}: {sale.doc_no}"
    staff_line = f"{labels['cashier']}: {sale.staff}"
    lines: list[list[str | doc.Piece | None]] = [[doc_line], [staff_line]]
    if shop.layout["date_place"] != 2:  # 2: the date goes at the bottom, after the payment
        lines.insert(0, date_time(shop, sale, show))
    if w.chance(0.4):
        till = {"DE": "Kasse", "NL": "Kassa", "FR": "Caisse"}.get(shop.region, "POS:")
        lines.append([f"{till} {sale.terminal}"])
    lines += [[line] for line in extra]
    order = shop.layout["meta_order"]
    if order == 2 and len(lines) > 2:
        lines[0], lines[1] = lines[1], lines[0]
    if order == 1 and len(lines) >= 2 and w.chance(0.5):  # two short lines side by side
        lines[:2] = [[*lines[0], "   ", *lines[1]]]
    for parts in lines:
        w.add(*parts)


def items(w: Writer, shop: Shop, sale: Sale) -> None:
    shape = shop.layout["item_shape"]
    width = shop.width
    code = " SR" if sale.tax and sale.tax.label == "GST" and shop.region == "MY" else ""
    if shop.region in ("DE", "NL", "FR"):
        code = " A" if shop.layout["rule"] % 2 else ""
    for number, item in enumerate(sale.items, start=1):
        amount = shop.amount(item.amount) + code
        if shape == 0 or (shape == 2 and item.qty > 1):
            w.add(item.name)
            w.pair(f"   {item.qty} x {shop.amount(item.unit)}", amount, width)
        elif shape == 1:
            w.pair(f"{item.qty:<3} {item.name}", amount, width)
        elif shape == 2:
            w.pair(item.name, amount, width)
        else:
            w.add(f"{number:>2}. {zlib.crc32(item.name.encode()) % 100000:05d} {item.name}")
            w.pair(f"    {item.qty} @ {shop.amount(item.unit)}", amount, width)


def totals(w: Writer, shop: Shop, sale: Sale, show: frozenset[str]) -> None:
    """Subtotal, discount, service, tax, rounding and the total; torn off after the subtotal when hidden."""
    labels, width = shop.labels, shop.width
    if len(sale.items) > 1 or sale.discount or sale.service or (sale.tax and not sale.tax.included) or w.chance(0.4):
        w.pair(labels["subtotal"], shop.amount(sale.subtotal), width)
    if "total" not in show:
        return  # the bottom of the slip is torn off
    if sale.discount:
        w.pair(labels["discount"], f"-{shop.amount(sale.discount)}", width)
    if sale.service:
        w.pair(labels["service"], shop.amount(sale.service), width)
    if sale.tax and not sale.tax.included:
        w.pair(f"{sale.tax.label} {sale.tax.rate:g}%", shop.amount(sale.tax.amount), width)
    if sale.rounding or (shop.region == "MY" and w.chance(0.5)):
        pre_round = labels["pre_round"]
        if "GST" in pre_round and (sale.tax is None or sale.tax.label != "GST"):
            pre_round = pre_round.replace("GST", sale.tax.label if sale.tax else "TAX")
        w.pair(pre_round, shop.amount(sale.before_rounding), width)
        w.pair(labels["rounding"], f"{'-' if sale.rounding < 0 else ''}{shop.amount(abs(sale.rounding))}", width)
    w.pair(labels["total"], doc.total(sale.total, shop.money(sale.total)), width)
    if w.chance(0.35):
        w.add(f"{labels['qty']}: {sum(item.qty for item in sale.items)}")


def payment(w: Writer, shop: Shop, sale: Sale) -> None:
    labels, width = shop.labels, shop.width
    if sale.payment == "cash" and sale.tendered is not None and sale.change is not None:
        w.pair(labels["cash"], shop.money(sale.tendered) if w.chance(0.3) else shop.amount(sale.tendered), width)
        w.pair(labels["change"], shop.amount(sale.change), width)
        return
    assert sale.card is not None
    w.pair(sale.card, shop.amount(sale.total), width)
    if w.chance(0.6):
        if sale.card_number:
            w.add(sale.card_number)
        w.add(f"{w.pick(['APPROVAL CODE', 'AUTH', 'Appr Code', 'AUTH CODE'])}: {sale.approval}")


def tax_summary(w: Writer, shop: Shop, sale: Sale) -> None:
    """Included tax written out: the GST summary table, or the VAT block of a European till."""
    tax = sale.tax
    if tax is None or not tax.included or shop.layout["tax_summary"] == 2:
        return
    if shop.region in ("DE", "NL", "FR"):
        rate = f"{tax.rate:g}".replace(".", ",")
        net, gross = {"DE": ("Netto", "Brutto"), "NL": ("Excl.", "Incl."), "FR": ("HT", "TTC")}[shop.region]
        w.add(f"{tax.label}   {net}   {tax.label}   {gross}")
        w.add(f"A {rate}%   {shop.amount(tax.base)}   {shop.amount(tax.amount)}   {shop.amount(sale.before_rounding)}")
        return
    if shop.layout["tax_summary"] == 0 and shop.region == "MY":  # SR: Malaysia's standard-rated GST code
        w.add(f"{tax.label} SUMMARY     AMOUNT    TAX")
        w.add(f"SR @ {tax.rate:g}%        {shop.amount(tax.base)}    {shop.amount(tax.amount)}")
    else:
        w.pair(f"Total Excl. {tax.label}", shop.amount(tax.base), shop.width)
        w.pair(f"{tax.label} {tax.rate:g}% included", shop.amount(tax.amount), shop.width)


def extras(w: Writer, shop: Shop, sale: Sale) -> None:
    """Member points, vouchers, return windows, reprints: more numbers and more dates."""
    dates = sale.other_dates
    if w.chance(0.35):
        w.add(f"{w.pick(['Member No', 'MEMBER', 'Card No', 'Loyalty #'])}: {sale.member_no}")
        if w.chance(0.5):
            w.add(f"{w.pick(['Member since', 'MEMBER SINCE', 'Joined'])}: {w.dated(dates['member_since'])}")
        points = int(sale.total)
        w.add(f"Points earned: {points}   Balance: {points + w.rng.randint(0, 4000)}")
        if w.chance(0.5):
            w.add(f"Points expire on {w.dated(dates['points_expiry'])}")
    if w.chance(0.2):
        offer = w.pick(["VOUCHER", "Next visit 10% OFF", "FREE DRINK VOUCHER"])
        w.add(f"{offer} - valid until {w.dated(dates['voucher_until'])}")
    if w.chance(0.15):
        w.add(f"{w.pick(['Exchange before', 'Returns by', 'Return/exchange by'])} {w.dated(dates['return_by'])}")
    if w.chance(0.05):
        w.add(f"*** REPRINT *** {w.dated(dates['reprint'])} {sale.when:%H:%M}")


def bottom_date(w: Writer, shop: Shop, sale: Sale, show: frozenset[str]) -> None:
    """Tills that print the date of sale under the payment, next to the document number."""
    if shop.layout["date_place"] == 2:
        w.add(*date_time(shop, sale, show), "  ", f"#{sale.doc_no}" if w.chance(0.5) else None)


def footer(w: Writer, shop: Shop, sale: Sale) -> None:
    if shop.kind == "restaurant" and shop.region in ("MY", "SG") and w.chance(0.5):
        w.centered(f"{w.pick(['YOUR ORDER NUMBER IS', 'ORDER NO.', 'Queue No'])} {sale.order_no}")
    for line in shop.footer:
        w.centered(line)


def tips(w: Writer, shop: Shop, sale: Sale) -> None:
    """A US restaurant slip: suggested tips (more amounts) and blank tip and total lines."""
    if not sale.tips or sale.payment != "card":
        return
    w.add(w.pick(["Suggested Gratuity:", "TIP GUIDE", "For your convenience:"]))
    for pct, amount in sale.tips:
        w.add(f"  {pct}% = {shop.amount(amount)}")
    w.blank()
    w.add("Tip: ____________")
    w.add("Total: __________")
    w.add("x_________________ Signature")


def amount_in_words(sale: Sale, shop: Shop) -> str:
    whole, cents = int(sale.total), round(sale.total * 100) % 100
    words = number_to_words(whole).upper()
    if shop.region == "MY":
        return f"RINGGIT MALAYSIA {words} AND CENTS {number_to_words(cents).upper()} ONLY"
    return f"SINGAPORE DOLLARS {words} AND CENTS {cents:02d} ONLY"
