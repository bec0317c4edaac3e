"""The synthetic demo data generator: determinism, diversity, honest gold, leak-free split."""

from __future__ import annotations

import datetime as dt
import json
import random
import re
from collections import Counter
from importlib import resources
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tuneloop.cli.main import app
from tuneloop.data.jsonl import read_rows
from tuneloop.demo.synth import NEAR_COPY_THRESHOLD, jaccard, near_copy_pairs, shingles, synthesize
from tuneloop.errors import TuneloopError
from tuneloop.task import load_task

N_DOCS = 500
FIELDS = ["payoff_amount", "escrow_balance", "next_due_date", "interest_rate", "account_last4", "servicer"]


@pytest.fixture(scope="module")
def task():
    return load_task("liability-extraction")


@pytest.fixture(scope="module")
def rows(task) -> list[dict]:
    return synthesize(task, N_DOCS, seed=11)


def _text(row: dict) -> str:
    return row["messages"][1]["content"]


def _fields(row: dict) -> dict:
    return row["metadata"]["fields"]


# ---------------------------------------------------------------- CLI and determinism


def _run_synth(tmp_path: Path, name: str, *args: str) -> Path:
    out = tmp_path / name
    result = CliRunner().invoke(app, ["data", "synth", "-o", str(out), *args])
    assert result.exit_code == 0, result.output
    return out


def test_same_seed_gives_byte_identical_file_and_other_seed_differs(tmp_path):
    first = _run_synth(tmp_path, "a.jsonl", "-n", "300", "--seed", "5")
    again = _run_synth(tmp_path, "b.jsonl", "-n", "300", "--seed", "5")
    other = _run_synth(tmp_path, "c.jsonl", "-n", "300", "--seed", "6")
    assert first.read_bytes() == again.read_bytes()
    assert first.read_bytes() != other.read_bytes()
    assert len(read_rows(first)) == 300
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_cli_rejects_a_task_the_generator_does_not_know(tmp_path):
    source = (resources.files("tuneloop") / "tasks" / "liability-extraction.yaml").read_text(encoding="utf-8")
    other = tmp_path / "invoice-extraction.yaml"
    other.write_text(source.replace("name: liability-extraction", "name: invoice-extraction"))
    out = tmp_path / "x.jsonl"
    result = CliRunner().invoke(app, ["data", "synth", "--task", str(other), "-n", "5", "-o", str(out)])
    assert isinstance(result.exception, TuneloopError)
    assert "only supports the `liability-extraction` task" in str(result.exception)
    assert not out.exists()


def test_rejects_bad_arguments(task):
    with pytest.raises(TuneloopError, match="test-fraction"):
        synthesize(task, 10, seed=0, test_fraction=1.0)
    with pytest.raises(TuneloopError, match="-n"):
        synthesize(task, 0, seed=0)


# ---------------------------------------------------------------- row shape


def test_rows_are_chat_rows_whose_answer_is_the_gold(rows, task):
    assert len({row["id"] for row in rows}) == len(rows)
    assert len({_text(row) for row in rows}) == len(rows)  # no exact duplicates
    for row in rows:
        assert [m["role"] for m in row["messages"]] == ["system", "user", "assistant"]
        assert row["messages"][:2] == task.build_messages({"text": _text(row)})
        assert json.loads(row["messages"][2]["content"]) == _fields(row)
        assert list(_fields(row)) == FIELDS
        assert row["metadata"]["split"] in ("train", "test")
        assert not task.schema_errors(_fields(row))


def test_at_least_twelve_styles_each_well_represented(rows):
    styles = Counter(row["metadata"]["style"] for row in rows)
    assert len(styles) >= 12
    assert min(styles.values()) >= N_DOCS * 0.03


def test_lengths_fit_the_base_model_context(rows):
    lengths = [len(_text(row)) for row in rows]
    assert max(lengths) < 2500
    assert sum(length < 1500 for length in lengths) >= 0.9 * len(lengths)
    words = sorted(len(_text(row).split()) for row in rows)
    assert 60 <= words[len(words) // 2] <= 400


# ---------------------------------------------------------------- nulls and plausibility


def test_null_share_is_realistic_and_every_field_is_sometimes_null(rows):
    values = [_fields(row)[name] for row in rows for name in FIELDS]
    null_share = sum(v is None for v in values) / len(values)
    assert 0.20 <= null_share <= 0.35
    for name in FIELDS:
        nulls = sum(_fields(row)[name] is None for row in rows)
        assert 0 < nulls < len(rows), name
    mostly_empty = sum(sum(v is None for v in _fields(row).values()) >= 4 for row in rows)
    assert mostly_empty >= 0.03 * len(rows)


def test_values_are_plausible(rows, task):
    for row in rows:
        f = _fields(row)
        if f["payoff_amount"] is not None:
            assert 4_000 <= f["payoff_amount"] <= 900_000
        if f["escrow_balance"] is not None:
            assert -5_000 <= f["escrow_balance"] <= 15_000
        if f["interest_rate"] is not None:
            assert 2 <= f["interest_rate"] <= 9
        if f["next_due_date"] is not None:
            assert 2025 <= dt.date.fromisoformat(f["next_due_date"]).year <= 2027
        if f["account_last4"] is not None:
            assert re.fullmatch(r"\d{4}", f["account_last4"])
        assert not task.run_checks(f)
    assert any((_fields(row)["escrow_balance"] or 0) < 0 for row in rows)  # an escrow shortage now and then


# ---------------------------------------------------------------- gold recoverable from the text

_MONTHS = [
    "january",
    "february",
    "march",
    "april",
    "may",
    "june",
    "july",
    "august",
    "september",
    "october",
    "november",
    "december",
]
_GENERIC_WORDS = {
    "mortgage",
    "bank",
    "home",
    "loan",
    "loans",
    "servicing",
    "lending",
    "services",
    "credit",
    "union",
    "company",
    "finance",
    "group",
    "llc",
    "inc",
    "na",
    "of",
    "the",
    "mr",
}


def _date_formats_found(date: dt.date, text: str) -> set[str]:
    """Which written forms of ``date`` occur in ``text`` (an independent re-implementation)."""
    month, mon = _MONTHS[date.month - 1], _MONTHS[date.month - 1][:3]
    day = rf"{date.day}(st|nd|rd|th)?"
    patterns = {
        "iso": date.isoformat(),
        "us_slash": rf"\b0?{date.month}/0?{date.day}/{date.year}\b",
        "us_slash_2y": rf"\b{date.month}/{date.day}/{date.year % 100:02d}\b",
        "us_dash": rf"\b{date.month:02d}-{date.day:02d}-{date.year}\b",
        "month_day_year": rf"\b{month},? {day},? {date.year}",
        "mon_day_year": rf"\b{mon}\.? {day},? {date.year}",
        "day_month_year": rf"\b{date.day} {month} {date.year}",
        "dd_mon_yyyy": rf"\b{date.day:02d}-{mon}-{date.year}",
        "ymd_slash": rf"\b{date.year}/{date.month:02d}/{date.day:02d}",
        "compact": rf"\b{date.month:02d}{date.day:02d}{date.year}\b",
        "yearless_words": rf"\b({month}|{mon}\.?) {day}\b(?!,? {date.year})",
        "ordinal_of_month": rf"the {day} of {month}",
        "yearless_slash": rf"\b{date.month}/{date.day}\b(?!/)",
    }
    lowered = text.lower()
    return {name for name, pattern in patterns.items() if re.search(pattern, lowered)}


def _money_found(value: float, text: str) -> bool:
    dollars = round(abs(value) * 100) // 100
    forms = [
        f"{dollars:,}",
        str(dollars),
        f"{dollars:,}".replace(",", "."),
        f"{abs(value) / 1000:.1f}k",
        f"{round(abs(value) / 1000)}k",
    ]
    in_words = "thousand" in text.lower() or "hundred" in text.lower()
    return any(form in text for form in forms) or (in_words and "dollars" in text.lower())


def _rate_found(rate: float, text: str) -> bool:
    whole, fraction = int(rate), round(rate - int(rate), 3)
    forms = [f"{rate:.3f}", f"{rate:g}", f"{rate:.2f}"]
    eighths = {0.125: "1/8", 0.25: "1/4", 0.375: "3/8", 0.5: "1/2", 0.625: "5/8", 0.75: "3/4", 0.875: "7/8"}
    if fraction in eighths:
        forms.append(f"{whole} {eighths[fraction]}")
    return any(form in text for form in forms) or "percent" in text.lower()


def _servicer_key(canonical: str) -> str:
    tokens = re.findall(r"[a-z0-9&]+", canonical.lower().replace(".", ""))
    return max((t for t in tokens if t not in _GENERIC_WORDS), key=len, default=tokens[0])


def test_every_gold_value_is_written_in_its_document(rows):
    for row in rows:
        text, f = _text(row), _fields(row)
        digits_joined = re.sub(r"(?<=\d)[ \-](?=\d)", "", text)
        if f["account_last4"] is not None:
            assert f["account_last4"] in digits_joined, (f, text)
        if f["servicer"] is not None:
            assert _servicer_key(f["servicer"]) in text.lower().replace(".", ""), (f, text)
        if f["payoff_amount"] is not None:
            assert _money_found(f["payoff_amount"], text), (f, text)
        if f["escrow_balance"] is not None:
            assert _money_found(f["escrow_balance"], text), (f, text)
        if f["interest_rate"] is not None:
            assert _rate_found(f["interest_rate"], text), (f, text)
        if f["next_due_date"] is not None:
            assert _date_formats_found(dt.date.fromisoformat(f["next_due_date"]), text), (f, text)


def test_money_dates_and_rates_come_in_many_written_forms(rows):
    texts = [_text(row) for row in rows]
    assert (
        sum(bool(re.search(r"dollars and (\d\d/100|[a-z\- ]+ cents)|and \d\d/100 dollars", t, re.I)) for t in texts)
        >= 10
    )
    assert sum(bool(re.search(r"\$\d+(\.\d)?k\b|\b\d+k\b", t)) for t in texts) >= 5
    assert sum(bool(re.search(r"\b(USD [\d,]+\.\d\d|[\d,]+\.\d\d USD)", t)) for t in texts) >= 10
    assert sum(bool(re.search(r"\$\d{4,}\.\d\d", t)) for t in texts) >= 10  # no thousands separator
    date_forms = Counter()
    for row in rows:
        due = _fields(row)["next_due_date"]
        if due is not None:
            date_forms.update(_date_formats_found(dt.date.fromisoformat(due), _text(row)))
    assert len([name for name, count in date_forms.items() if count >= 3]) >= 6
    assert sum("percent" in t for t in texts) >= 10


def test_distractors_surround_the_answers(rows):
    texts = [_text(row) for row in rows]
    assert sum(bool(re.search(r"principal", t, re.I)) for t in texts) >= 0.3 * len(texts)
    assert sum(bool(re.search(r"\(?\d{3}\)?[ -]\d{3}-\d{4}", t)) for t in texts) >= 0.3 * len(texts)  # phone numbers
    assert sum("SSN" in t for t in texts) >= 0.05 * len(texts)
    other_loans = 0
    for row in rows:
        last4 = _fields(row)["account_last4"]
        masked = set(re.findall(r"(?:\*{4,}|\.\.\.|ending in )(\d{4})\b", _text(row)))
        other_loans += bool(masked - {last4})
    assert other_loans >= 5  # another loan's last four digits, not the answer


# ---------------------------------------------------------------- split


def test_split_fraction_is_about_right_and_every_style_is_on_both_sides(rows):
    splits = Counter(row["metadata"]["split"] for row in rows)
    assert 0.15 <= splits["test"] / len(rows) <= 0.22
    test_styles = {row["metadata"]["style"] for row in rows if row["metadata"]["split"] == "test"}
    assert test_styles == {row["metadata"]["style"] for row in rows}


def test_no_test_document_is_a_near_copy_of_a_train_document(rows):
    train = [shingles(_text(row)) for row in rows if row["metadata"]["split"] == "train"]
    test = [shingles(_text(row)) for row in rows if row["metadata"]["split"] == "test"]
    worst = max(jaccard(a, b) for a in test for b in train)
    assert worst < NEAR_COPY_THRESHOLD


def test_near_copy_measure_ignores_numbers_but_not_wording():
    a = shingles("Your payoff amount good through 04/15/2026 is $245,112.08 for loan ending 1234.")
    b = shingles("Your payoff amount good through 11/02/2027 is $98,001.50 for loan ending 9876.")
    c = shingles("Please remit 245,112.08 USD by April 15 to release the lien on the property.")
    assert jaccard(a, b) == 1.0
    assert jaccard(a, c) < NEAR_COPY_THRESHOLD


def test_test_fraction_zero_puts_everything_in_train(task):
    rows = synthesize(task, 40, seed=1, test_fraction=0.0)
    assert {row["metadata"]["split"] for row in rows} == {"train"}


def test_near_copy_pairs_matches_brute_force():
    rng = random.Random(0)
    sets = [frozenset(str(rng.randrange(40)) for _ in range(rng.randint(1, 25))) for _ in range(200)]
    for threshold in (0.3, 0.5, 0.8):
        brute = [
            (i, j) for i in range(len(sets)) for j in range(i + 1, len(sets)) if jaccard(sets[i], sets[j]) >= threshold
        ]
        assert near_copy_pairs(sets, threshold) == brute
