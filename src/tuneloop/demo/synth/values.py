"""How values are written: money, dates and rates in the many ways real documents write them.

Every renderer returns the text *and* the value that text states. Some formats lose precision
("$12.3k", "$245,000"), so the caller must take the returned value as the gold answer: the gold
always equals what the document says, never what the generator first had in mind.
"""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import Callable

Register = str  # "formal" | "table" | "informal" | "spoken"

_ONES = [
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
    "seventeen",
    "eighteen",
    "nineteen",
]
_TENS = ["_", "_", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]
_SCALES = ((1_000_000_000, "billion"), (1_000_000, "million"), (1_000, "thousand"))


def number_to_words(number: int) -> str:
    """English words for a non-negative integer: 12340 -> 'twelve thousand three hundred forty'."""
    if number < 0:
        raise ValueError("number_to_words takes non-negative integers")
    if number < 1000:
        return _below_thousand(number)
    parts: list[str] = []
    for scale, name in _SCALES:
        if number >= scale:
            parts.append(f"{_below_thousand(number // scale)} {name}")
            number %= scale
    if number:
        parts.append(_below_thousand(number))
    return " ".join(parts)


def _below_thousand(number: int) -> str:
    if number < 20:
        return _ONES[number]
    if number < 100:
        tens, ones = divmod(number, 10)
        return _TENS[tens] + (f"-{_ONES[ones]}" if ones else "")
    hundreds, rest = divmod(number, 100)
    words = f"{_ONES[hundreds]} hundred"
    return f"{words} {_below_thousand(rest)}" if rest else words


# ---------------------------------------------------------------- money


def _cents(value: float) -> int:
    return round(abs(value) * 100) % 100


def _dollars(value: float) -> int:
    return round(abs(value) * 100) // 100


def _commas(value: float) -> str:
    return f"{abs(value):,.2f}"


def _words_check(value: float) -> str:
    words = number_to_words(_dollars(value))
    return f"{words} dollars and {_cents(value):02d}/100"


def _words_check_title(value: float) -> str:
    words = number_to_words(_dollars(value)).title()
    return f"{words} and {_cents(value):02d}/100 Dollars (${_commas(value)})"


def _words_spoken(value: float) -> str:
    words = number_to_words(_dollars(value)) + " dollars"
    cents = _cents(value)
    return f"{words} and {number_to_words(cents)} cents" if cents else words


def _euro_style(value: float) -> str:
    # Rare, seen in documents typed by people used to European notation.
    return "USD " + _commas(value).replace(",", "_").replace(".", ",").replace("_", ".")


MoneyFormat = Callable[[float], str]

# name -> (renderer, quantum): the quantum is the rounding the written form implies.
_MONEY_FORMATS: dict[str, tuple[MoneyFormat, float]] = {
    "dollar_commas": (lambda v: f"${_commas(v)}", 0.01),
    "dollar_plain": (lambda v: f"${abs(v):.2f}", 0.01),
    "usd_suffix": (lambda v: f"{_commas(v)} USD", 0.01),
    "usd_suffix_plain": (lambda v: f"{abs(v):.2f} USD", 0.01),
    "usd_prefix": (lambda v: f"USD {_commas(v)}", 0.01),
    "us_dollar": (lambda v: f"US${_commas(v)}", 0.01),
    "dollars_word": (lambda v: f"{_commas(v)} dollars", 0.01),
    "bare_commas": (lambda v: _commas(v), 0.01),
    "bare_plain": (lambda v: f"{abs(v):.2f}", 0.01),
    "euro_style": (_euro_style, 0.01),
    "no_cents": (lambda v: f"${_dollars(v):,}", 1.0),
    "no_cents_plain": (lambda v: f"${_dollars(v)}", 1.0),
    "words_check": (_words_check, 0.01),
    "words_check_title": (_words_check_title, 0.01),
    "words_spoken": (_words_spoken, 0.01),
    "k_short": (lambda v: f"${abs(v) / 1000:.1f}k", 100.0),
    "k_round": (lambda v: f"{round(abs(v) / 1000)}k", 1000.0),
}

_MONEY_WEIGHTS: dict[Register, dict[str, float]] = {
    "formal": {
        "dollar_commas": 60,
        "usd_suffix": 5,
        "usd_prefix": 5,
        "us_dollar": 2,
        "dollar_plain": 5,
        "dollars_word": 3,
        "usd_suffix_plain": 2,
        "euro_style": 1,
        "words_check": 4,
        "words_check_title": 5,
        "no_cents": 3,
    },
    "table": {
        "dollar_commas": 60,
        "bare_commas": 18,
        "bare_plain": 6,
        "dollar_plain": 10,
        "usd_suffix": 5,
        "usd_prefix": 5,
        "euro_style": 1,
    },
    "informal": {
        "dollar_commas": 35,
        "dollar_plain": 20,
        "no_cents": 10,
        "no_cents_plain": 5,
        "k_short": 10,
        "k_round": 4,
        "usd_suffix": 4,
        "usd_suffix_plain": 3,
        "dollars_word": 4,
        "words_check": 1,
    },
    "spoken": {"words_spoken": 70, "dollar_commas": 20, "no_cents": 10},
}


def render_money(
    rng: random.Random, value: float, register: Register, *, allow_lossy: bool = True
) -> tuple[str, float]:
    """Write a dollar amount in a format typical of ``register``; returns (text, value stated)."""
    weights = dict(_MONEY_WEIGHTS[register])
    for name in list(weights):
        quantum = _MONEY_FORMATS[name][1]
        exact = abs(round(value / quantum) * quantum - value) < 0.005
        # Lossy forms only where asked for, and "$0.1k"-style nonsense never.
        if (not allow_lossy and not exact) or (quantum >= 100 and abs(value) < 1000):
            weights.pop(name)
    if value < 0:
        # Negative amounts only in explicit numeric forms; the sign is added below.
        weights = {"dollar_commas": 4, "dollar_plain": 1}
    name = weighted_choice(rng, weights)
    render, quantum = _MONEY_FORMATS[name]
    stated = round(round(value / quantum) * quantum, 2)
    if stated == 0 and value != 0:
        stated, render = round(value, 2), _MONEY_FORMATS["dollar_commas"][0]
    text = render(stated)
    if stated < 0:
        text = rng.choice([f"-{text}", f"-{text}", f"({text})"])
    return text, stated


def render_amount(rng: random.Random, value: float, register: Register) -> str:
    """Write a distractor amount (not an answer), in the same formats."""
    return render_money(rng, value, register)[0]


# ---------------------------------------------------------------- dates

_MONTHS = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
]
_MONTH_ABBR = [m[:3] for m in _MONTHS]


def ordinal(day: int) -> str:
    suffix = "th" if 11 <= day % 100 <= 13 else {1: "st", 2: "nd", 3: "rd"}.get(day % 10, "th")
    return f"{day}{suffix}"


_DATE_FORMATS: dict[str, Callable[[dt.date], str]] = {
    "iso": lambda d: d.isoformat(),
    "us_slash": lambda d: f"{d.month:02d}/{d.day:02d}/{d.year}",
    "us_slash_short": lambda d: f"{d.month}/{d.day}/{d.year}",
    "us_slash_2y": lambda d: f"{d.month}/{d.day}/{d.year % 100:02d}",
    "us_dash": lambda d: f"{d.month:02d}-{d.day:02d}-{d.year}",
    "long": lambda d: f"{_MONTHS[d.month - 1]} {d.day}, {d.year}",
    "long_ordinal": lambda d: f"{_MONTHS[d.month - 1]} {ordinal(d.day)}, {d.year}",
    "abbr": lambda d: f"{_MONTH_ABBR[d.month - 1]} {d.day}, {d.year}",
    "abbr_dot": lambda d: f"{_MONTH_ABBR[d.month - 1]}. {d.day}, {d.year}",
    "day_month_year": lambda d: f"{d.day} {_MONTHS[d.month - 1]} {d.year}",
    "dd_mon_yyyy": lambda d: f"{d.day:02d}-{_MONTH_ABBR[d.month - 1].upper()}-{d.year}",
    "weekday_long": lambda d: f"{d.strftime('%A')}, {_MONTHS[d.month - 1]} {d.day}, {d.year}",
    "ymd_slash": lambda d: f"{d.year}/{d.month:02d}/{d.day:02d}",
    "compact": lambda d: f"{d.month:02d}{d.day:02d}{d.year}",
}

# Formats without a year: only used when the document states a nearby date that has one.
_YEARLESS_FORMATS: dict[str, Callable[[dt.date], str]] = {
    "abbr_ordinal": lambda d: f"{_MONTH_ABBR[d.month - 1]}. {ordinal(d.day)}",
    "month_day": lambda d: f"{_MONTHS[d.month - 1]} {d.day}",
    "ordinal_of_month": lambda d: f"the {ordinal(d.day)} of {_MONTHS[d.month - 1]}",
    "slash_md": lambda d: f"{d.month}/{d.day}",
}

_DATE_WEIGHTS: dict[Register, dict[str, float]] = {
    "formal": {
        "long": 40,
        "us_slash": 25,
        "abbr": 6,
        "long_ordinal": 4,
        "day_month_year": 4,
        "weekday_long": 4,
        "iso": 4,
        "us_slash_short": 6,
        "abbr_dot": 4,
        "dd_mon_yyyy": 3,
        "abbr_ordinal": 3,
        "month_day": 4,
        "ordinal_of_month": 3,
    },
    "table": {
        "us_slash": 50,
        "iso": 12,
        "us_slash_short": 10,
        "dd_mon_yyyy": 8,
        "us_dash": 6,
        "ymd_slash": 6,
        "abbr": 6,
        "compact": 2,
    },
    "informal": {
        "us_slash_short": 25,
        "us_slash_2y": 20,
        "us_slash": 12,
        "abbr": 8,
        "long": 8,
        "iso": 5,
        "abbr_ordinal": 10,
        "month_day": 8,
        "ordinal_of_month": 8,
        "slash_md": 8,
    },
    "spoken": {"long": 30, "long_ordinal": 25, "month_day": 15, "ordinal_of_month": 20, "weekday_long": 10},
}


def render_date(
    rng: random.Random, date: dt.date, register: Register, *, year_known_from: dt.date | None = None
) -> str:
    """Write ``date`` in a format typical of ``register``.

    Year-less forms ("Apr. 15th", "the 15th of April") are only chosen when ``year_known_from``
    is a date the document also states and ``date`` follows it closely, so the year is implied.
    """
    weights = dict(_DATE_WEIGHTS[register])
    year_implied = year_known_from is not None and 0 <= (date - year_known_from).days <= 75
    if not year_implied:
        weights = {k: w for k, w in weights.items() if k not in _YEARLESS_FORMATS}
    name = weighted_choice(rng, weights)
    return (_DATE_FORMATS.get(name) or _YEARLESS_FORMATS[name])(date)


# ---------------------------------------------------------------- rates

_FRACTION_WORDS = {
    0.0: "",
    0.125: "one-eighth",
    0.25: "one-quarter",
    0.375: "three-eighths",
    0.5: "one-half",
    0.625: "five-eighths",
    0.75: "three-quarters",
    0.875: "seven-eighths",
}
_FRACTION_SYMBOLS = {0.125: "1/8", 0.25: "1/4", 0.375: "3/8", 0.5: "1/2", 0.625: "5/8", 0.75: "3/4", 0.875: "7/8"}


def _rate_decimals(rate: float) -> str:
    text = f"{rate:.3f}"
    return text.rstrip("0").rstrip(".") if text.endswith("0") else text


def _rate_words(rate: float) -> str | None:
    whole = int(rate)
    fraction = round(rate - whole, 3)
    if fraction not in _FRACTION_WORDS:
        return None
    words = number_to_words(whole)
    if fraction:
        words += f" and {_FRACTION_WORDS[fraction]}"
    return f"{words} percent"


def _rate_fraction(rate: float) -> str | None:
    whole = int(rate)
    fraction = round(rate - whole, 3)
    if fraction not in _FRACTION_SYMBOLS:
        return None
    return f"{whole} {_FRACTION_SYMBOLS[fraction]}%"


def render_rate(rng: random.Random, rate: float, register: Register) -> str:
    """Write an interest rate (a percentage) in a format typical of ``register``."""
    options: dict[str, float]
    if register == "spoken":
        options = {"words": 60, "percent_word": 40}
    elif register == "informal":
        options = {"pct": 45, "plain": 15, "pct_trimmed": 20, "percent_word": 10, "pct_abbr": 10}
    else:
        options = {
            "pct": 55,
            "pct_space": 8,
            "pct_padded": 12,
            "percent_word": 10,
            "words": 5,
            "fraction": 5,
            "pct_trimmed": 5,
        }
    while True:
        name = weighted_choice(rng, options)
        text = _render_rate_as(name, rate)
        if text is not None:
            return text
        options.pop(name)
        if not options:
            return f"{rate:.3f}%"


def _render_rate_as(name: str, rate: float) -> str | None:
    three = f"{rate:.3f}"
    renderers: dict[str, Callable[[], str | None]] = {
        "pct": lambda: f"{three}%",
        "pct_space": lambda: f"{three} %",
        "pct_padded": lambda: f"{rate:.5f}%",
        "pct_trimmed": lambda: f"{_rate_decimals(rate)}%",
        "plain": lambda: _rate_decimals(rate),
        "pct_abbr": lambda: f"{_rate_decimals(rate)} pct",
        "percent_word": lambda: f"{_rate_decimals(rate)} percent",
        "words": lambda: _rate_words(rate),
        "fraction": lambda: _rate_fraction(rate),
    }
    return renderers[name]()


# ---------------------------------------------------------------- helpers


def weighted_choice(rng: random.Random, weights: dict[str, float]) -> str:
    names = list(weights)
    return rng.choices(names, weights=[weights[n] for n in names], k=1)[0]
