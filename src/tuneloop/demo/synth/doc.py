"""The facts about one loan, and the builder a style uses to write a document about it.

A style never writes an answer value directly: it asks the builder (``b.payoff()``,
``b.due_date()``, ...), which renders the value, records the value as stated, and wraps the span
in protect markers. Noise functions leave protected spans alone, and the gold answer is read
back from the markers that survive in the final text, so the gold always matches the text even
when a style drops an optional section after rendering it.
"""

from __future__ import annotations

import datetime as dt
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from tuneloop.demo.synth import values, vocab
from tuneloop.demo.synth.values import Register

FIELD_NAMES = ("payoff_amount", "escrow_balance", "next_due_date", "interest_rate", "account_last4", "servicer")

# Control characters never produced by the templates: \x02 field \x1f text \x03.
_OPEN, _SEP, _CLOSE = "\x02", "\x1f", "\x03"
PROTECTED_SPAN = re.compile(f"{_OPEN}([a-z_0-9]+){_SEP}(.*?){_CLOSE}", re.DOTALL)
# The anchor is the dated statement line that lets a year-less due date ("Apr. 15th") imply its year.
ANCHOR = "anchor"

T = TypeVar("T")


@dataclass
class LoanFacts:
    """Everything the generator knows about one loan: the answers and the distractors around them."""

    servicer: vocab.Servicer
    prior_servicer: vocab.Servicer
    borrower_first: str
    borrower_last: str
    co_borrower: str | None
    street: str
    city: str
    state: str
    zip_code: str
    loan_number: str
    other_loan_last4: str
    principal: float
    accrued_interest: float
    per_diem: float
    fees: dict[str, float]
    payoff: float
    escrow: float
    rate: float
    apr: float
    original_amount: float
    monthly_pi: float
    escrow_monthly: float
    next_due: dt.date
    statement_date: dt.date
    good_through: dt.date
    prior_due: dt.date
    last_paid: dt.date
    late_fee: float
    reference: str
    case_number: str
    routing: str
    agent: str
    servicer_box: str
    servicer_city: tuple[str, str]
    servicer_zip: str
    nmls: str

    @property
    def borrower(self) -> str:
        return f"{self.borrower_first} {self.borrower_last}"

    @property
    def last4(self) -> str:
        return self.loan_number[-4:]

    @property
    def monthly_payment(self) -> float:
        return round(self.monthly_pi + self.escrow_monthly, 2)


def sample_facts(rng: random.Random) -> LoanFacts:
    servicer, prior = rng.sample(vocab.SERVICERS, 2)
    rate = _sample_rate(rng)
    next_due = _sample_due_date(rng)
    statement_date, good_through, prior_due, last_paid = _dates_around(rng, next_due)
    principal = _sample_principal(rng)
    days_accrued = max((good_through - prior_due).days, 1)
    per_diem = round(principal * rate / 100 / 365, 2)
    fees = {
        "Recording fee": rng.choice([0.0, 0.0, 35.0, 50.0, 75.0, 125.5]),
        "Payoff statement fee": rng.choice([0.0, 0.0, 0.0, 25.0, 30.0]),
        "Late charges": rng.choice([0.0, 0.0, 0.0, round(rng.uniform(25, 180), 2)]),
    }
    accrued_interest = round(per_diem * days_accrued, 2)
    payoff = round(principal + accrued_interest + sum(fees.values()), 2)
    original = round(principal * rng.uniform(1.05, 1.7), -3)
    monthly_rate = rate / 100 / 12
    monthly_pi = round(original * monthly_rate / (1 - (1 + monthly_rate) ** -360), 2)
    loan_number = _digits(rng, 10, leading_zero_ok=True)
    other_last4 = _digits(rng, 4, leading_zero_ok=True)
    while other_last4 == loan_number[-4:]:
        other_last4 = _digits(rng, 4, leading_zero_ok=True)
    city, state = rng.choice(vocab.CITIES)
    co_borrower = None
    if rng.random() < 0.3:
        co_borrower = f"{rng.choice(vocab.FIRST_NAMES)} {rng.choice(vocab.LAST_NAMES)}"
    return LoanFacts(
        servicer=servicer,
        prior_servicer=prior,
        borrower_first=rng.choice(vocab.FIRST_NAMES),
        borrower_last=rng.choice(vocab.LAST_NAMES),
        co_borrower=co_borrower,
        street=f"{rng.randint(2, 19999)} {rng.choice(vocab.STREET_NAMES)} {rng.choice(vocab.STREET_TYPES)}",
        city=city,
        state=state,
        zip_code=_digits(rng, 5, leading_zero_ok=False),
        loan_number=loan_number,
        other_loan_last4=other_last4,
        principal=principal,
        accrued_interest=accrued_interest,
        per_diem=per_diem,
        fees=fees,
        payoff=payoff,
        escrow=_sample_escrow(rng, payoff),
        rate=rate,
        apr=round(rate + rng.uniform(0.04, 0.45), 3),
        original_amount=original,
        monthly_pi=monthly_pi,
        escrow_monthly=round(rng.uniform(120, 1250), 2),
        next_due=next_due,
        statement_date=statement_date,
        good_through=good_through,
        prior_due=prior_due,
        last_paid=last_paid,
        late_fee=round(monthly_pi * rng.choice([0.04, 0.05]), 2),
        reference=_digits(rng, rng.choice([7, 8, 9]), leading_zero_ok=False),
        case_number=f"{rng.choice(['C', 'CS', 'SR', 'INC'])}-{_digits(rng, 6, leading_zero_ok=True)}",
        routing=_digits(rng, 9, leading_zero_ok=True),
        agent=rng.choice(vocab.AGENT_FIRST_NAMES),
        servicer_box=str(rng.randint(1000, 99999)),
        servicer_city=rng.choice(vocab.SERVICER_CITIES),
        servicer_zip=_digits(rng, 5, leading_zero_ok=False),
        nmls=str(rng.randint(1000, 999999)),
    )


def _sample_rate(rng: random.Random) -> float:
    roll = rng.random()
    if roll < 0.7:  # most note rates are quoted in eighths
        return rng.randint(16, 72) / 8
    if roll < 0.9:
        return round(rng.uniform(2.0, 9.0), 3)
    return round(rng.uniform(2.0, 9.0), 2)


def _sample_due_date(rng: random.Random) -> dt.date:
    year, month = rng.choice([2025, 2026, 2027]), rng.randint(1, 12)
    roll = rng.random()
    day = 1 if roll < 0.62 else 15 if roll < 0.74 else rng.randint(2, 28)
    return dt.date(year, month, day)


def _dates_around(rng: random.Random, next_due: dt.date) -> tuple[dt.date, dt.date, dt.date, dt.date]:
    """Statement date, payoff good-through date, previous due date and last payment date."""
    statement_date = next_due - dt.timedelta(days=rng.randint(12, 28))
    good_through = statement_date + dt.timedelta(days=rng.randint(7, 30))
    prior_due = _add_months(next_due, -1)
    last_paid = prior_due + dt.timedelta(days=rng.randint(-4, 12))
    return statement_date, good_through, prior_due, last_paid


def _sample_principal(rng: random.Random) -> float:
    roll = rng.random()
    if roll < 0.1:
        return round(rng.uniform(5_000, 50_000), 2)
    if roll < 0.85:
        return round(rng.uniform(50_000, 440_000), 2)
    return round(rng.uniform(440_000, 870_000), 2)


def _sample_escrow(rng: random.Random, payoff: float) -> float:
    roll = rng.random()
    if roll < 0.05:
        return 0.0
    if roll < 0.09:  # an escrow shortage: the account is overdrawn
        return -round(rng.uniform(40, 2500), 2)
    return round(rng.uniform(150, min(15_000, payoff * 0.6)), 2)


def _add_months(date: dt.date, months: int) -> dt.date:
    month_index = date.year * 12 + date.month - 1 + months
    year, month = divmod(month_index, 12)
    return dt.date(year, month + 1, min(date.day, 28))


def _digits(rng: random.Random, count: int, *, leading_zero_ok: bool) -> str:
    first = str(rng.randint(0 if leading_zero_ok else 1, 9))
    return first + "".join(str(rng.randint(0, 9)) for _ in range(count - 1))


@dataclass
class DocBuilder:
    """What a style writes with: random choices, answer renderers, distractor renderers."""

    rng: random.Random
    facts: LoanFacts
    present: frozenset[str]
    register: Register
    skeleton: list[str] = field(default_factory=list)
    stated: dict[str, Any] = field(default_factory=dict)

    def move_due_date(self, next_due: dt.date) -> None:
        """Re-date the loan (before anything is written) for styles tied to a time of year."""
        f = self.facts
        f.next_due = next_due
        f.statement_date, f.good_through, f.prior_due, f.last_paid = _dates_around(self.rng, next_due)

    # ------------------------------------------------------------ choices

    def pick(self, options: Sequence[T], key: str | None = None) -> T:
        """Choose one option; a ``key`` records the choice in the document's skeleton."""
        index = self.rng.randrange(len(options))
        if key is not None:
            self.skeleton.append(f"{key}={index}")
        return options[index]

    def chance(self, probability: float) -> bool:
        return self.rng.random() < probability

    def shuffled(self, items: Sequence[T]) -> list[T]:
        items = list(items)
        self.rng.shuffle(items)
        return items

    def has(self, field_name: str) -> bool:
        return field_name in self.present

    # ------------------------------------------------------------ answers (protected, recorded)

    def _protect(self, field_name: str, text: str, value: Any) -> str:
        self.stated[field_name] = value
        return f"{_OPEN}{field_name}{_SEP}{text}{_CLOSE}"

    def _money_answer(self, field_name: str, value: float, register: Register | None, lossy: bool) -> str:
        if field_name in self.stated:
            # A second mention repeats exactly what the first one stated.
            value, lossy = self.stated[field_name], False
        text, stated = values.render_money(self.rng, value, register or self.register, allow_lossy=lossy)
        return self._protect(field_name, text, stated)

    def payoff(self, register: Register | None = None, *, lossy: bool = True) -> str:
        return self._money_answer("payoff_amount", self.facts.payoff, register, lossy)

    def escrow(self, register: Register | None = None, *, lossy: bool = True) -> str:
        return self._money_answer("escrow_balance", self.facts.escrow, register, lossy)

    def due_date(self, register: Register | None = None, *, yearless_ok: bool = False) -> str:
        anchor = self.facts.statement_date if yearless_ok else None
        text = values.render_date(self.rng, self.facts.next_due, register or self.register, year_known_from=anchor)
        return self._protect("next_due_date", text, self.facts.next_due.isoformat())

    def rate(self, register: Register | None = None) -> str:
        text = values.render_rate(self.rng, self.facts.rate, register or self.register)
        return self._protect("interest_rate", text, self.facts.rate)

    def last4(self, form: str | None = None) -> str:
        """The loan number in a masked or full form; the gold is always its last four digits."""
        number = self.facts.loan_number
        last4 = number[-4:]
        forms = {
            "stars": f"{'*' * self.rng.choice([4, 6, 6, 8])}{last4}",
            "xs": f"{'X' * self.rng.choice([5, 6])}{last4}",
            "xs_lower": f"xxxx{last4}",
            "dots": f"...{last4}",
            "full": number,
            "dashed_full": f"{number[:3]}-{number[3:6]}-{number[6:]}",
            "bare": last4,
            "spaced": " ".join(last4),
        }
        chosen = form or self.pick(["stars", "stars", "xs", "xs_lower", "dots", "full", "dashed_full"])
        return self._protect("account_last4", forms[chosen], last4)

    def servicer(self, *, canonical: bool = False, upper: bool = False) -> str:
        s = self.facts.servicer
        name = s.canonical if canonical or self.chance(0.45) else self.pick(s.variants)
        return self._protect("servicer", name.upper() if upper else name, s.canonical)

    def anchor_date(self, register: Register | None = None) -> str:
        """The statement/letter date, written with its year; lets later dates drop theirs."""
        text = values.render_date(self.rng, self.facts.statement_date, register or self.register)
        while str(self.facts.statement_date.year) not in text:
            text = values.render_date(self.rng, self.facts.statement_date, "formal")
        return f"{_OPEN}{ANCHOR}{_SEP}{text}{_CLOSE}"

    # ------------------------------------------------------------ distractors (free text)

    def money(self, value: float, register: Register | None = None) -> str:
        return values.render_amount(self.rng, value, register or self.register)

    def date(self, date: dt.date, register: Register | None = None) -> str:
        return values.render_date(self.rng, date, register or self.register)

    def pct(self, rate: float) -> str:
        return f"{rate:.3f}%"

    # ------------------------------------------------------------ common pieces

    def sender_name(self) -> str:
        """The servicer's name if the document states it, else a nameless department."""
        if self.has("servicer"):
            return self.servicer()
        return self.pick(["Loan Servicing", "Customer Care", "Mortgage Servicing Center", "Payoff Department"])

    def phone(self) -> str:
        if self.has("servicer") and self.chance(0.7):
            return self.facts.servicer.phone
        area = self.rng.choice(["800", "833", "844", "855", "866", "877", "888"])
        return f"1-{area}-{self.rng.randint(200, 999)}-{self.rng.randint(1000, 9999)}"

    def borrower_block(self) -> str:
        f = self.facts
        name = self.pick(
            [f.borrower, f.borrower.upper(), f"{f.borrower_first} {self.rng.choice('ABCDEJKLMRST')}. {f.borrower_last}"]
        )
        if f.co_borrower and self.chance(0.6):
            name += self.pick([f"\n{f.co_borrower}", f" and {f.co_borrower}", f" & {f.co_borrower}"])
        return f"{name}\n{f.street}\n{f.city}, {f.state} {f.zip_code}"

    def servicer_address(self) -> str:
        f = self.facts
        city, state = f.servicer_city
        return f"P.O. Box {f.servicer_box}\n{city}, {state} {f.servicer_zip}"


def finalize(text_with_markers: str) -> tuple[str, dict[str, list[str]]]:
    """Strip the markers; returns the plain text and, per field, the spans that survived in it."""
    found: dict[str, list[str]] = {}

    def unwrap(match: re.Match[str]) -> str:
        found.setdefault(match.group(1), []).append(match.group(2))
        return match.group(2)

    text = PROTECTED_SPAN.sub(unwrap, text_with_markers)
    if any(marker in text for marker in (_OPEN, _SEP, _CLOSE)):
        raise AssertionError(f"a style damaged a protected span: {text!r}")  # a generator bug
    return text, found


def protected_segments(text: str) -> list[tuple[str, bool]]:
    """Split text into (segment, is_protected) pieces for noise functions."""
    pieces: list[tuple[str, bool]] = []
    position = 0
    for match in PROTECTED_SPAN.finditer(text):
        if match.start() > position:
            pieces.append((text[position : match.start()], False))
        pieces.append((match.group(0), True))
        position = match.end()
    if position < len(text):
        pieces.append((text[position:], False))
    return pieces
