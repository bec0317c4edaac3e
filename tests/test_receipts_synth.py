"""The receipt generator (second packaged task): honest gold that keeps the task's `extract` promises,
distractors around it, OCR noise that spares the answers, a leak-free split, and the `--task` dispatch."""

from __future__ import annotations

import contextlib
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
from tuneloop.comparators import Verdict, compare_field, parse_number
from tuneloop.data.jsonl import read_rows
from tuneloop.demo.generators import SYNTHESIZERS, synthesize, synthesizer_for
from tuneloop.demo.receipts import DATE_FORMATS, STYLE_NAMES, generate_receipt
from tuneloop.demo.synth.split import NEAR_COPY_THRESHOLD, jaccard, shingles
from tuneloop.errors import TuneloopError
from tuneloop.extraction import find_dates, value_in_input
from tuneloop.task import load_task

N_DOCS = 600
FIELDS = ["company", "address", "date", "total"]


@pytest.fixture(scope="module")
def task():
    return load_task("receipt-extraction")


@pytest.fixture(scope="module")
def rows(task) -> list[dict]:
    return synthesize(task, N_DOCS, seed=7)


def _text(row: dict) -> str:
    return row["messages"][1]["content"]


def _fields(row: dict) -> dict:
    return row["metadata"]["fields"]


def _collapsed(text: str) -> str:
    return " ".join(text.split())


def _printed_amounts(text: str) -> set[float]:
    """Every amount printed in ``text``, read independently of the generator: digit runs with separators."""
    amounts = set()
    for token in re.findall(r"\d[\d.,]*\d|\d", text):
        value = parse_number(token)
        if value is not None:
            amounts.add(round(value, 2))
    return amounts


def _printed_forms(day: dt.date, text: str, formats: list[str]) -> list[str]:
    """The listed formats' renderings of ``day`` that ``text`` prints as a whole token."""
    forms = {day.strftime(fmt) for fmt in formats}
    return [form for form in forms if re.search(rf"(?<![0-9A-Za-z]){re.escape(form)}(?![0-9A-Za-z])", text)]


# ---------------------------------------------------------------- the task spec and the rows


def test_the_task_lists_exactly_the_date_formats_the_generator_prints(task):
    spec = task.field_spec("date")
    assert sorted(spec.formats) == sorted(DATE_FORMATS)
    assert spec.canonical == "%Y-%m-%d" and spec.extract == "verbatim"
    assert task.field_spec("address").extract == "spans"
    assert task.extraction.whitespace == "collapse" and task.extraction.case == "exact"


def test_no_listed_format_prints_a_date_another_listed_format_reads_differently():
    rng = random.Random(0)
    days = [dt.date(2016, 1, 1) + dt.timedelta(days=rng.randrange(3653)) for _ in range(300)]
    for day in days:
        for printed_as in DATE_FORMATS:
            printed = day.strftime(printed_as)
            for read_as in DATE_FORMATS:
                with contextlib.suppress(ValueError):  # not a date in that format at all: fine
                    assert dt.datetime.strptime(printed, read_as).date() == day, (printed, read_as)


def test_same_seed_gives_the_same_rows_and_another_seed_differs(task, rows):
    again = synthesize(task, N_DOCS, seed=7)
    assert again == rows
    assert synthesize(task, 50, seed=8) != rows[:50]


def test_rows_are_chat_rows_whose_answer_is_the_gold_and_fits_the_schema(task, rows):
    assert len({row["id"] for row in rows}) == len(rows)
    assert len({_text(row) for row in rows}) == len(rows)
    for row in rows:
        assert [m["role"] for m in row["messages"]] == ["system", "user", "assistant"]
        assert row["messages"][:2] == task.build_messages({"text": _text(row)})
        assert json.loads(row["messages"][2]["content"]) == _fields(row)
        assert list(_fields(row)) == FIELDS
        assert set(row["metadata"]) == {"fields", "split", "style", "noise"}
        assert not task.schema_errors(_fields(row)), _fields(row)
        assert not task.run_checks(_fields(row))


def test_every_style_is_well_represented_and_a_third_is_noisy(rows):
    styles = Counter(row["metadata"]["style"] for row in rows)
    assert set(styles) == set(STYLE_NAMES)
    assert min(styles.values()) >= 0.03 * N_DOCS
    noisy = sum(row["metadata"]["noise"] for row in rows) / len(rows)
    assert 0.25 <= noisy <= 0.45


def test_every_field_is_sometimes_absent_but_mostly_present(rows):
    for name in FIELDS:
        nulls = sum(_fields(row)[name] is None for row in rows) / len(rows)
        assert 0.005 < nulls < 0.15, (name, nulls)


# ---------------------------------------------------------------- the gold is printed as the task promises


def test_company_is_one_span_and_address_one_or_a_few_spans_of_the_collapsed_text(rows):
    split_addresses = 0
    for row in rows:
        text, fields = _collapsed(_text(row)), _fields(row)
        if fields["company"] is not None:
            assert fields["company"] in text, (fields["company"], text)
        address = fields["address"]
        if address is not None and address not in text:
            split_addresses += 1  # `extract: spans`: its lines in order, something printed between them
            position = 0
            for word in address.split(" "):
                found = text.find(word, position)
                assert found >= 0, (address, text)
                position = found + len(word)
    assert 0 < split_addresses <= 0.05 * len(rows)


def test_total_is_an_amount_printed_on_the_receipt(rows):
    for row in rows:
        total = _fields(row)["total"]
        if total is not None:
            assert round(total, 2) in _printed_amounts(_text(row)), (total, _text(row))


def test_date_is_printed_in_a_listed_format_and_the_comparator_reads_it_back(task, rows):
    spec = task.field_spec("date")
    used = Counter()
    for row in rows:
        gold = _fields(row)["date"]
        if gold is None:
            continue
        day = dt.date.fromisoformat(gold)
        forms = _printed_forms(day, _text(row), spec.formats)
        assert forms, (gold, _text(row))
        for form in forms:
            assert compare_field(spec, form, gold) is Verdict.CORRECT, (form, gold)
        used.update(fmt for fmt in spec.formats if day.strftime(fmt) in forms)
    assert set(used) == set(spec.formats)  # every listed format is printed, none is listed for nothing


def test_the_extraction_rules_find_every_gold_value_in_its_input(task, rows):
    for row in rows:
        for name, value in _fields(row).items():
            assert value_in_input(task, name, value, _text(row)), (name, value, _text(row))


# ---------------------------------------------------------------- what makes it hard


def test_distractors_surround_the_answers(task, rows):
    texts = [_text(row) for row in rows]
    many_amounts = sum(len(_printed_amounts(text)) >= 6 for text in texts)
    assert many_amounts >= 0.9 * len(texts)
    bigger_amount = sum(
        any(amount > _fields(row)["total"] for amount in _printed_amounts(_text(row)))  # cash tendered, a tip
        for row in rows
        if _fields(row)["total"] is not None
    )
    assert bigger_amount >= 0.4 * len(rows)
    formats = task.field_spec("date").formats
    several_dates = sum(len({day for _, day in find_dates(text, formats)}) >= 2 for text in texts)
    assert several_dates >= 0.2 * len(texts)
    dated_numbers = 0  # document numbers built from the date of sale: digits that look like the answer
    for row in rows:
        if _fields(row)["date"] is not None:
            day = dt.date.fromisoformat(_fields(row)["date"])
            dated_numbers += bool(re.search(rf"{day:%y%m%d}\d{{3,5}}\b", _text(row)))
    assert dated_numbers >= 0.1 * len(texts)
    assert sum(bool(re.search(r"(?i)thank|terima kasih|danke|merci|bedankt", text)) for text in texts) >= 0.35 * N_DOCS
    assert sum("ORDER" in text.upper() for text in texts) >= 0.1 * N_DOCS
    invoices = [row for row in rows if row["metadata"]["style"].endswith("_invoice") and not row["metadata"]["noise"]]
    assert invoices and all(re.search(r"(?i)bill to|sold to|customer", _text(row)) for row in invoices)  # a 2nd name


def test_noise_damages_the_text_but_never_the_gold():
    changed = 0
    for index in range(80):
        clean = generate_receipt(5, index, noise=False)
        noisy = generate_receipt(5, index, noise=True)
        assert noisy.fields == clean.fields
        assert not clean.noise and noisy.noise
        changed += noisy.text != clean.text
        clean_lines, noisy_lines = set(clean.text.splitlines()), set(noisy.text.splitlines())
        assert clean_lines - noisy_lines  # some line was damaged, broken or merged
        flat = _collapsed(noisy.text)
        for name in ("company", "address"):
            if clean.fields[name] is not None and clean.fields[name] in _collapsed(clean.text):
                assert clean.fields[name] in flat
    assert changed == 80


# ---------------------------------------------------------------- split


def test_split_keeps_shops_and_near_copies_on_one_side(rows):
    splits = Counter(row["metadata"]["split"] for row in rows)
    assert 0.15 <= splits["test"] / len(rows) <= 0.22
    test_styles = {row["metadata"]["style"] for row in rows if row["metadata"]["split"] == "test"}
    assert test_styles == set(STYLE_NAMES)
    shops = {"train": set(), "test": set()}
    for row in rows:  # a shop is its name and address (two shops may share a name)
        if _fields(row)["company"] is not None and _fields(row)["address"] is not None:
            shops[row["metadata"]["split"]].add((_fields(row)["company"], _fields(row)["address"]))
    assert not shops["train"] & shops["test"]
    train = [shingles(_text(row)) for row in rows if row["metadata"]["split"] == "train"]
    test = [shingles(_text(row)) for row in rows if row["metadata"]["split"] == "test"]
    assert max(jaccard(a, b) for a in test for b in train) < NEAR_COPY_THRESHOLD


# ---------------------------------------------------------------- dispatch by task


def _run_synth(tmp_path: Path, name: str, *args: str) -> Path:
    out = tmp_path / name
    result = CliRunner().invoke(app, ["data", "synth", "--task", "receipt-extraction", "-o", str(out), *args])
    assert result.exit_code == 0, result.output
    return out


def test_data_synth_writes_receipts_for_the_receipt_task(tmp_path):
    first = _run_synth(tmp_path, "a.jsonl", "-n", "120", "--seed", "3")
    again = _run_synth(tmp_path, "b.jsonl", "-n", "120", "--seed", "3")
    assert first.read_bytes() == again.read_bytes()
    rows = read_rows(first)
    assert len(rows) == 120
    assert set(json.loads(rows[0]["messages"][2]["content"])) == set(FIELDS)
    assert {row["metadata"]["style"] for row in rows} <= set(STYLE_NAMES)


def _renamed_task(tmp_path: Path) -> Path:
    source = (resources.files("tuneloop") / "tasks" / "receipt-extraction.yaml").read_text(encoding="utf-8")
    other = tmp_path / "invoice-lines.yaml"
    other.write_text(source.replace("name: receipt-extraction", "name: invoice-lines"))
    return other


def test_a_task_without_a_generator_gets_an_error_naming_the_supported_tasks(tmp_path):
    other = _renamed_task(tmp_path)
    out = tmp_path / "x.jsonl"
    result = CliRunner().invoke(app, ["data", "synth", "--task", str(other), "-n", "5", "-o", str(out)])
    assert isinstance(result.exception, TuneloopError)
    message = str(result.exception)
    assert "invoice-lines" in message
    assert all(name in message for name in SYNTHESIZERS) and "receipt-extraction" in SYNTHESIZERS
    assert not out.exists()
    with pytest.raises(TuneloopError, match="liability-extraction"):
        synthesizer_for("invoice-lines")


def test_the_demo_takes_a_task_and_refuses_one_without_a_generator_before_writing(tmp_path):
    out = tmp_path / "demo"
    result = CliRunner().invoke(
        app, ["demo", "--task", str(_renamed_task(tmp_path)), "--out", str(out), "--no-fine-tune"]
    )
    assert isinstance(result.exception, TuneloopError)
    assert "receipt-extraction" in str(result.exception)
    assert not out.exists() or not any(out.iterdir())


def test_each_generator_refuses_the_other_task_and_bad_arguments(task):
    from tuneloop.demo import receipts, synth

    with pytest.raises(TuneloopError, match="receipt-extraction"):
        receipts.synthesize(load_task("liability-extraction"), 5, seed=0)
    with pytest.raises(TuneloopError, match="liability-extraction"):
        synth.synthesize(task, 5, seed=0)
    with pytest.raises(TuneloopError, match="-n"):
        receipts.synthesize(task, 0, seed=0)
    with pytest.raises(TuneloopError, match="test-fraction"):
        receipts.synthesize(task, 10, seed=0, test_fraction=1.0)
