"""A shop: its names, address, numbers, label wording, formats and prices, fixed across its receipts.

A real shop prints every receipt from one template, so everything a template decides is drawn once per
shop from ``random.Random(f"tuneloop-receipt-shop:{style}:{index}")``; the receipts of one shop share a
skeleton (and so a split).
"""

from __future__ import annotations

import functools
import random
import re
from dataclasses import dataclass

from tuneloop.demo.receipts import vocab
from tuneloop.demo.synth import vocab as us_vocab

# Every strftime format a receipt prints a date in; none reads as another date under another (no %m/%d/%Y).
DATE_FORMATS = (
    "%d/%m/%Y", "%d-%m-%Y", "%d.%m.%Y", "%Y-%m-%d", "%Y/%m/%d",
    "%d/%m/%y", "%d.%m.%y", "%d %b %Y", "%d-%b-%Y", "%b %d, %Y",
)  # fmt: skip
_REGION_DATE_FORMATS = {
    "MY": ("%d/%m/%Y", "%d/%m/%Y", "%d-%m-%Y", "%d/%m/%y", "%d-%b-%Y", "%d %b %Y", "%Y-%m-%d"),
    "SG": ("%d/%m/%Y", "%d %b %Y", "%d-%m-%Y", "%d/%m/%y", "%Y-%m-%d", "%d-%b-%Y"),
    "US": ("%Y-%m-%d", "%b %d, %Y", "%b %d, %Y", "%d %b %Y", "%Y/%m/%d"),
    "DE": ("%d.%m.%Y", "%d.%m.%Y", "%d.%m.%y", "%Y-%m-%d"),
    "NL": ("%d-%m-%Y", "%d.%m.%Y", "%Y-%m-%d", "%d/%m/%Y"),
    "FR": ("%d/%m/%Y", "%d/%m/%y", "%d.%m.%Y", "%Y-%m-%d"),
}
_TIME_FORMATS = ("%H:%M", "%H:%M:%S", "%I:%M %p", "%I:%M:%S %p", "%H:%M")

# Label wording per region: a shop picks one option per label.
_LABELS: dict[str, dict[str, tuple[str, ...]]] = {
    "MY": {
        "table": ("Table", "TABLE", "MEJA"),
        "pax": ("Pax", "PAX"),
        "date": ("DATE", "Date", "TARIKH", "DATE ", "Tarikh"),
        "time": ("TIME", "Time", "MASA"),
        "doc_no": ("INVOICE NO", "RECEIPT #", "BILL NO", "DOC NO", "CASH BILL NO", "TRANS NO", "No. Resit", "INV NO"),
        "cashier": ("CASHIER", "Cashier", "JURUWANG", "SALESPERSON", "OPERATOR"),
        "subtotal": ("SUB TOTAL", "SUBTOTAL", "Sub-Total", "JUMLAH KECIL", "Total Sales"),
        "pre_round": ("TOTAL INCL. GST", "Total Sales (Inclusive GST)", "TOTAL (INCL TAX)", "TOTAL AMOUNT", "Total"),
        "rounding": ("ROUNDING ADJ", "Rounding", "ROUNDING ADJUSTMENT", "PEMBUNDARAN", "Round Adj"),
        "total": ("TOTAL", "GRAND TOTAL", "NETT TOTAL", "TOTAL (RM)", "Total Amount Payable", "JUMLAH", "NET TOTAL"),
        "cash": ("CASH", "TUNAI", "Cash Received", "TENDERED", "CASH TENDERED"),
        "change": ("CHANGE", "BAKI", "Change Due", "CHANGE DUE"),
        "discount": ("DISCOUNT", "DISKAUN", "MEMBER DISC", "Promo Discount"),
        "service": ("SERVICE CHARGE 10%", "SVC CHG 10%", "Service Charge (10%)"),
        "qty": ("QTY", "Qty", "Total Qty", "ITEM COUNT"),
    },
    "SG": {
        "table": ("Table", "TABLE", "Tbl"),
        "pax": ("Pax", "Covers"),
        "date": ("Date", "DATE", "Txn Date"),
        "time": ("Time", "TIME"),
        "doc_no": ("Receipt No", "Bill No", "Rcpt #", "Invoice No", "Order #", "Trans #"),
        "cashier": ("Cashier", "Staff", "Served by", "Operator"),
        "subtotal": ("Subtotal", "SUB-TOTAL", "Sub Total", "Item Total"),
        "pre_round": ("Total", "Total Amount", "Total (incl. GST)"),
        "rounding": ("Rounding", "Rounding Adj"),
        "total": ("TOTAL", "Total", "Grand Total", "TOTAL DUE", "Nett Total", "Amount Due"),
        "cash": ("Cash", "CASH", "Cash Tendered"),
        "change": ("Change", "CHANGE"),
        "discount": ("Discount", "Member Discount", "Promo"),
        "service": ("Svc Chg 10%", "Service Charge 10%", "10% Svc Charge"),
        "qty": ("Qty", "Total Items", "No. of Items"),
    },
    "US": {
        "table": ("Table", "TBL", "Table #"),
        "pax": ("Guests", "Covers"),
        "date": ("Date", "DATE", "Trans Date"),
        "time": ("Time", "TIME"),
        "doc_no": ("Receipt #", "Trans #", "Check #", "Order #", "Ticket", "Invoice #"),
        "cashier": ("Cashier", "Server", "Associate", "Clerk", "Your cashier today was"),
        "subtotal": ("SUBTOTAL", "Subtotal", "Sub Total", "Food & Bev"),
        "pre_round": ("Total",),
        "rounding": ("Rounding",),
        "total": ("TOTAL", "Total", "Balance Due", "AMOUNT DUE", "Total Due", "GRAND TOTAL"),
        "cash": ("CASH TEND", "Cash", "CASH", "Tendered"),
        "change": ("CHANGE DUE", "Change", "CHANGE"),
        "discount": ("Discount", "Coupon", "Rewards Savings", "Member Savings"),
        "service": ("Service Charge 18%", "Gratuity 18%"),
        "qty": ("ITEMS SOLD", "# Items", "Item Count"),
    },
    "DE": {
        "table": ("Tisch", "TISCH"),
        "pax": ("Gäste", "Pers."),
        "date": ("Datum", "DATUM"),
        "time": ("Uhrzeit", "Zeit"),
        "doc_no": ("Bon-Nr.", "Beleg-Nr.", "Bon", "Rechnungs-Nr.", "Beleg"),
        "cashier": ("Kasse", "Bediener", "Es bediente Sie", "Kassierer"),
        "subtotal": ("Zwischensumme", "Summe Artikel", "Zw.-Summe"),
        "pre_round": ("Summe",),
        "rounding": ("Rundung",),
        "total": ("SUMME EUR", "Summe", "Gesamtbetrag", "zu zahlen", "SUMME", "Gesamt EUR"),
        "cash": ("Bar", "Gegeben", "BAR EUR", "Gegeben Bar"),
        "change": ("Rückgeld", "Zurück", "RÜCKGELD EUR"),
        "discount": ("Rabatt", "Preisvorteil", "Treuerabatt"),
        "service": ("Bedienung",),
        "qty": ("Anzahl Artikel", "Positionen", "Artikel"),
    },
    "NL": {
        "table": ("Tafel", "TAFEL"),
        "pax": ("Personen", "Pers."),
        "date": ("Datum", "DATUM"),
        "time": ("Tijd", "TIJD"),
        "doc_no": ("Bonnr", "Bon", "Transactie", "Factuurnr"),
        "cashier": ("Kassa", "Medewerker", "U werd geholpen door"),
        "subtotal": ("Subtotaal", "SUBTOTAAL"),
        "pre_round": ("Totaal",),
        "rounding": ("Afronding", "Afrondingsverschil"),
        "total": ("TOTAAL", "Te betalen", "Totaal", "TOTAAL EUR"),
        "cash": ("Contant", "Ontvangen", "CONTANT"),
        "change": ("Wisselgeld", "Terug", "WISSELGELD"),
        "discount": ("Korting", "Bonus korting", "Actiekorting"),
        "service": ("Bediening",),
        "qty": ("Aantal artikelen", "Artikelen"),
    },
    "FR": {
        "table": ("Table", "TABLE"),
        "pax": ("Couverts", "Pers."),
        "date": ("Date", "Le", "DATE"),
        "time": ("Heure", "HEURE"),
        "doc_no": ("Ticket", "N° ticket", "Facture n°", "Ticket n°", "Transaction"),
        "cashier": ("Caisse", "Vendeur", "Vous avez été servi par", "Serveur"),
        "subtotal": ("Sous-total", "SOUS TOTAL", "Total articles"),
        "pre_round": ("Total",),
        "rounding": ("Arrondi",),
        "total": ("TOTAL TTC", "Total TTC", "TOTAL", "Net à payer", "A PAYER", "Montant TTC"),
        "cash": ("Espèces", "ESPECES", "Reçu"),
        "change": ("Rendu", "Rendu monnaie", "A RENDRE"),
        "discount": ("Remise", "Remise fidélité"),
        "service": ("Service",),
        "qty": ("Nb articles", "Articles"),
    },
}
_CURRENCY_FORMS = {
    "MY": ("RM{}", "RM {}", "{}", "{}", "RM{}"),
    "SG": ("${}", "S${}", "SGD {}", "{}", "$ {}"),
    "US": ("${}", "$ {}", "{}", "${}"),
    "DE": ("{} €", "{} EUR", "EUR {}", "{}", "€ {}"),
    "NL": ("€ {}", "{} EUR", "EUR {}", "€{}"),
    "FR": ("{} €", "{} EUR", "{}€", "€ {}"),
}


@dataclass(frozen=True)
class Shop:
    """What a shop's template prints; the same on every receipt of the shop."""

    key: str  # style and index: the receipt's skeleton
    style: str
    region: str  # MY, SG, US, DE, NL, FR
    kind: str  # retail, restaurant, invoice
    name: str  # the legal / printed name: the gold company
    brand: str | None  # a trading name printed above the legal name, or None
    reg_no: str | None  # company registration printed next to or under the name
    address: tuple[str, ...]  # the address lines as printed
    contact: tuple[str, ...]  # phone, fax, e-mail, web
    tax_id: str | None  # GST/SST/VAT registration line
    labels: dict[str, str]
    date_format: str
    time_format: str
    currency: str  # how the total line decorates an amount, e.g. "RM{}"
    thousands: bool  # print 1,234.50 (else 1234.50)
    items: tuple[tuple[str, float], ...]  # the shop's goods and prices
    footer: tuple[str, ...]
    staff: tuple[str, ...]
    layout: dict[str, int]  # template choices (item line shape, where the date goes, ...)
    width: int  # characters across the slip

    @property
    def decimal_comma(self) -> bool:
        return self.region in ("DE", "NL", "FR")

    def amount(self, value: float) -> str:
        """An amount as this shop prints it: 1,234.50, 1234.50 or 1.234,50."""
        text = f"{value:,.2f}" if self.thousands else f"{value:.2f}"
        if self.decimal_comma:
            text = text.replace(",", "\x00").replace(".", ",").replace("\x00", ".")
        return text

    def money(self, value: float) -> str:
        return self.currency.format(self.amount(value))


@functools.lru_cache(maxsize=8192)
def make_shop(style: str, region: str, kind: str, goods: str, index: int) -> Shop:
    """Shop ``index`` of ``style``: a pure function of its arguments (cached: a shop is met again and again)."""
    rng = random.Random(f"tuneloop-receipt-shop:{style}:{index}")
    if region == "EU":
        region = rng.choice(["DE", "DE", "NL", "FR"])
    name, brand = _names(rng, region, kind, goods)
    prices = vocab.ITEMS.get(f"{goods}_{region}", vocab.ITEMS.get(goods, ()))
    items = tuple(
        (item, round(rng.uniform(low, high) * 20) / 20 if region in ("MY", "SG") else round(rng.uniform(low, high), 2))
        for item, low, high in rng.sample(prices, min(len(prices), rng.randint(8, 14)))
    )
    labels = {key: rng.choice(options) for key, options in _LABELS[region].items()}
    return Shop(
        key=f"{style}:{index}",
        style=style,
        region=region,
        kind=kind,
        name=name,
        brand=brand,
        reg_no=_reg_no(rng, region),
        address=_address(rng, region),
        contact=_contact(rng, region),
        tax_id=_tax_id(rng, region),
        labels=labels,
        date_format=rng.choice(_REGION_DATE_FORMATS[region]),
        time_format=rng.choice(_TIME_FORMATS),
        currency=rng.choice(_CURRENCY_FORMS[region]),
        thousands=rng.random() < 0.7,
        items=items,
        footer=tuple(rng.sample(_footers(region, kind), rng.randint(1, 3))),
        staff=tuple(rng.sample(_staff_names(region), 3)),
        layout={
            "item_shape": rng.randrange(4),
            "date_place": rng.randrange(4),
            "rule": rng.randrange(4),
            "title": rng.randrange(6),
            "name_line": rng.randrange(4),
            "meta_order": rng.randrange(3),
            "tax_summary": rng.randrange(3),
            "center": rng.randrange(3),
            "no_address": int(rng.random() < 0.08),
        },
        width=rng.choice([32, 40, 42, 48]),
    )


def _names(rng: random.Random, region: str, kind: str, goods: str) -> tuple[str, str | None]:
    """The legal name (the gold) and, for some shops, a trading name printed above it."""
    pool = "hardware" if goods == "my_hardware" else "grocery" if kind == "retail" else kind
    if region == "MY":
        core, word = rng.choice(vocab.MY_NAME_CORES), rng.choice(vocab.MY_SHOP_WORDS[pool])
        name = f"{word} {core}" if word in ("KEDAI RUNCIT", "RESTORAN", "PASARAYA") else f"{core} {word}"
        legal = rng.choice([suffix for suffix in vocab.MY_LEGAL if suffix not in name])
        name = rng.choice([f"{name} {legal}", f"{name} {legal}", name if kind != "invoice" else f"{name} SDN BHD"])
    elif region == "SG":
        core, word = rng.choice(vocab.SG_NAME_CORES), rng.choice(vocab.SG_SHOP_WORDS[_pool(kind)])
        name = f"{core} {word} {rng.choice(vocab.SG_LEGAL)}"
        name = name.upper() if rng.random() < 0.5 else name
    elif region == "US":
        core = rng.choice([*vocab.US_NAME_CORES, f"{rng.choice(us_vocab.LAST_NAMES)}'s"])
        word = rng.choice(vocab.US_SHOP_WORDS[_pool(kind)])
        name = rng.choice([f"{core} {word}", f"{core} {word} {rng.choice(vocab.US_LEGAL)}"])
        name = name.upper() if rng.random() < 0.4 else name
    else:
        cores, words, legal = {
            "DE": (vocab.DE_NAME_CORES, vocab.DE_SHOP_WORDS, vocab.DE_LEGAL),
            "NL": (vocab.NL_NAME_CORES, vocab.NL_SHOP_WORDS, vocab.NL_LEGAL),
            "FR": (vocab.FR_NAME_CORES, vocab.FR_SHOP_WORDS, vocab.FR_LEGAL),
        }[region]
        name = f"{rng.choice(words[_pool(kind)])} {rng.choice(cores)} {rng.choice(legal)}"
    brand = None
    if rng.random() < 0.3:
        short = name.split()[0].strip(".,").upper()
        brand = rng.choice([f"*** {short} ***", f"{short}", f"~ {short} ~"])
        if region in ("MY", "SG", "US"):
            brand = rng.choice([brand, f"{short} MART", f"{short} EXPRESS"])
        brand = None if brand.strip("*~ ") == name else brand
    return name, brand


def _footers(region: str, kind: str) -> tuple[str, ...]:
    lines = vocab.FOOTERS[region]
    if kind != "retail":  # no exchange terms or tax-inclusive prices on a restaurant bill or an invoice
        lines = tuple(
            line for line in lines if not re.search(r"(?i)exchange|return|refund|umtausch|ruilen|inclusive of", line)
        )
    return lines


def _pool(kind: str) -> str:
    return kind if kind in ("restaurant", "invoice") else "retail"


def _reg_no(rng: random.Random, region: str) -> str | None:
    digits = "".join(str(rng.randint(0, 9)) for _ in range(7))
    options = {
        "MY": [f"({digits[:6]}-{rng.choice('AKMPTVWX')})", f"Co. No. {digits}-{rng.choice('AHKMPTU')}", None],
        "SG": [f"UEN: 20{rng.randint(10, 23)}{digits[:5]}{rng.choice('CDKMNRZ')}", f"Co Reg No: 19{digits}K", None],
        "US": [None, None],
        "DE": [f"HRB {digits[:5]}", None],
        "NL": [f"KvK {digits}{rng.randint(0, 9)}", None],
        "FR": [f"SIRET {digits[:3]} {digits[3:6]} {rng.randint(100, 999)} {rng.randint(10000, 99999)}", None],
    }[region]
    return rng.choice(options)


def _address(rng: random.Random, region: str) -> tuple[str, ...]:
    number = rng.randint(1, 250)
    if region == "MY":
        town, state, low, high = rng.choice(vocab.MY_TOWNS)
        postcode = f"{rng.randint(low, high) // 10 * 10:05d}"
        street = rng.choice(vocab.MY_STREETS)
        unit = rng.choice([f"NO. {number}", f"NO {number}", f"LOT {number}", f"{number}-G", f"{number}, {number + 2}"])
        lines = [f"{unit}, {street},", f"{rng.choice(vocab.MY_AREAS)},", f"{postcode} {town}, {state}."]
        if rng.random() < 0.4:
            lines = [f"{lines[0]} {lines[1]}", lines[2]]
        elif rng.random() < 0.3:
            lines = [lines[0], lines[1], f"{postcode} {town},", f"{state}."]
    elif region == "SG":
        unit = f"#{rng.randint(1, 12):02d}-{rng.randint(1, 199):02d}"
        street, building = rng.choice(vocab.SG_STREETS), rng.choice(vocab.SG_BUILDINGS)
        postcode = f"{rng.randint(1, 82):02d}{rng.randint(0, 9999):04d}"
        lines = rng.choice(
            [
                [f"{number} {street}", f"{unit} {building}", f"Singapore {postcode}"],
                [f"{number} {street} {unit}", f"SINGAPORE {postcode}"],
                [f"{building} {unit}", f"{number} {street}, S({postcode})"],
            ]
        )
    elif region == "US":
        city, state = rng.choice(us_vocab.CITIES)
        street = f"{rng.randint(10, 9999)} {rng.choice(us_vocab.STREET_NAMES)} {rng.choice(us_vocab.STREET_TYPES)}"
        lines = [street, f"{city}, {state} {rng.randint(10000, 99999)}"]
        if rng.random() < 0.25:
            lines.insert(1, rng.choice(["Suite 100", f"Unit {rng.randint(1, 40)}", "Plaza Shopping Center"]))
    else:
        streets, towns = {"DE": (vocab.DE_STREETS, vocab.DE_TOWNS), "NL": (vocab.NL_STREETS, vocab.NL_TOWNS)}.get(
            region, (vocab.FR_STREETS, vocab.FR_TOWNS)
        )
        town, postcode = rng.choice(towns)
        street = rng.choice(streets)
        first = f"{number} {street}" if region == "FR" else f"{street} {number}"
        lines = rng.choice([[first, f"{postcode} {town}"], [f"{first}, {postcode} {town}"]])
    return tuple(lines)


def _contact(rng: random.Random, region: str) -> tuple[str, ...]:
    def digits(count: int) -> str:
        return "".join(str(rng.randint(0, 9)) for _ in range(count))

    phone = {
        "MY": f"0{rng.choice('3345679')}-{digits(4)} {digits(4)}",
        "SG": f"+65 6{digits(3)} {digits(4)}",
        "US": f"({rng.randint(201, 989)}) {digits(3)}-{digits(4)}",
        "DE": f"0{rng.randint(30, 89)} {digits(7)}",
        "NL": f"0{rng.randint(10, 79)}-{digits(7)}",
        "FR": f"0{rng.randint(1, 5)} {digits(2)} {digits(2)} {digits(2)} {digits(2)}",
    }[region]
    label = rng.choice(["TEL", "Tel", "Tel.", "Phone", "T", "TEL NO"])
    lines = [f"{label}: {phone}" if rng.random() < 0.9 else phone]
    if region == "MY" and rng.random() < 0.35:
        lines[0] += f"  FAX: {phone[:2]}-{digits(4)} {digits(4)}"
    if rng.random() < 0.2:
        domain = {"MY": "com.my", "SG": "com.sg", "US": "com", "DE": "de", "NL": "nl", "FR": "fr"}[region]
        lines.append(rng.choice(["www.facebook.com/ourshop", f"Email: sales@shop.{domain}", f"www.shop.{domain}"]))
    return tuple(lines)


def _tax_id(rng: random.Random, region: str) -> str | None:
    digits = "".join(str(rng.randint(0, 9)) for _ in range(12))
    options = {
        "MY": [f"GST REG NO: {digits}", f"GST ID : {digits}", f"SST REG NO: W10-{digits[:4]}-{digits[4:12]}", None],
        "SG": [f"GST Reg No: M2-{digits[:7]}-{digits[7]}", f"GST REG NO. 20{digits[:7]}K", None],
        "US": [None, None, f"Store #{digits[:4]}"],
        "DE": [f"USt-IdNr. DE{digits[:9]}", f"St.-Nr. {digits[:3]}/{digits[3:6]}/{digits[6:11]}"],
        "NL": [f"BTW NL{digits[:9]}B01", None],
        "FR": [f"TVA FR{digits[:11]}", None],
    }[region]
    return rng.choice(options)


def _staff_names(region: str) -> tuple[str, ...]:
    if region in ("MY", "SG"):
        return vocab.MY_CASHIERS
    if region == "US":
        return vocab.US_SERVERS
    return ("Anna", "Lukas", "Sophie", "Jan", "Emma", "Noah", "Léa", "Hugo", "Mia", "Daan")
