"""Field-level scoring: comparators, hallucinations and misses, invalid outputs, the interval."""

from __future__ import annotations

import json
from datetime import date

import pytest

from tuneloop.comparators import Verdict, compare_field, parse_date, parse_number
from tuneloop.evals.scoring import clustered_wilson_interval, score_record, summarize
from tuneloop.task import FieldSpec, load_task

GOLD = {
    "payoff_amount": 1234.56,
    "escrow_balance": None,
    "next_due_date": "2026-04-15",
    "interest_rate": 6.125,
    "account_last4": "0042",
    "servicer": "Rocket Mortgage",
}


@pytest.mark.parametrize("text", ["$1,234.56", "1234.56 USD", "1,234.56", "USD 1,234.56", "1234.56", 1234.56])
def test_money_formats_parse(text) -> None:
    assert parse_number(text) == pytest.approx(1234.56)


@pytest.mark.parametrize(
    "text", ["April 15, 2026", "04/15/2026", "2026-04-15", "4/15/26", "15 April 2026", "Apr. 15th, 2026"]
)
def test_date_formats_are_equal(text) -> None:
    assert parse_date(text) == date(2026, 4, 15)
    assert compare_field(FieldSpec(compare="date"), text, "2026-04-15") is Verdict.CORRECT


@pytest.mark.parametrize(
    ("spec", "predicted", "gold", "verdict"),
    [
        (FieldSpec(compare="number", tolerance=0.005), "$1,234.56", 1234.56, Verdict.CORRECT),
        (FieldSpec(compare="number", tolerance=0.005), 1234.57, 1234.56, Verdict.WRONG),
        (FieldSpec(compare="number", relative_tolerance=0.01), 101, 100, Verdict.CORRECT),
        (FieldSpec(compare="number"), "about a thousand", 1000, Verdict.WRONG),
        (FieldSpec(compare="exact"), "  ACME  corp ", "acme corp", Verdict.CORRECT),
        (FieldSpec(compare="exact"), "ACME inc", "acme corp", Verdict.WRONG),
        (FieldSpec(compare="fuzzy", threshold=0.9), "Rocket Mortgage LLC", "Rocket Mortgage", Verdict.WRONG),
        (FieldSpec(compare="fuzzy", threshold=0.8), "Rocket Mortgage LLC", "Rocket Mortgage", Verdict.CORRECT),
        (FieldSpec(compare="fuzzy", threshold=0.9), "rocket mortgage", "Rocket Mortgage", Verdict.CORRECT),
        (FieldSpec(compare="enum", values=["fixed", "arm"]), "ARM", "arm", Verdict.CORRECT),
        (FieldSpec(compare="enum", values=["fixed", "arm"]), "variable", "arm", Verdict.WRONG),
        (FieldSpec(compare="list"), ["b", "A"], ["a", "b"], Verdict.CORRECT),
        (FieldSpec(compare="list"), ["a"], ["a", "b"], Verdict.WRONG),
        (FieldSpec(compare="exact"), "x", None, Verdict.HALLUCINATION),
        (FieldSpec(compare="exact"), None, "x", Verdict.MISS),
        (FieldSpec(compare="exact"), None, None, Verdict.CORRECT),
    ],
)
def test_comparators(spec: FieldSpec, predicted, gold, verdict: Verdict) -> None:
    assert compare_field(spec, predicted, gold) is verdict


@pytest.fixture(scope="module")
def task():
    return load_task("liability-extraction")


def test_a_right_record_in_a_code_fence(task) -> None:
    output = "```json\n" + json.dumps({**GOLD, "payoff_amount": "$1,234.56"}) + "\n```"
    # a string where the schema wants a number makes the output invalid, comparators notwithstanding
    assert not score_record(task, "a", output, GOLD).valid
    score = score_record(task, "a", "```json\n" + json.dumps(GOLD) + "\n```", GOLD)
    assert score.valid and score.exact


def test_hallucination_and_miss_are_counted(task) -> None:
    output = json.dumps({**GOLD, "escrow_balance": 99.0, "servicer": None})
    score = score_record(task, "a", output, GOLD)
    assert score.verdicts["escrow_balance"] is Verdict.HALLUCINATION
    assert score.verdicts["servicer"] is Verdict.MISS
    assert score.errors == 2


@pytest.mark.parametrize("output", ["not json", '{"payoff_amount": 1}', "[1, 2]", None, json.dumps({**GOLD, "x": 1})])
def test_invalid_output_makes_every_field_wrong(task, output) -> None:
    score = score_record(task, "a", output, GOLD)
    assert not score.valid and score.errors == len(task.field_names) and score.invalid_reason


def test_summary_counts_fields_not_records(task) -> None:
    right = score_record(task, "a", json.dumps(GOLD), GOLD)
    one_wrong = score_record(task, "b", json.dumps({**GOLD, "interest_rate": 7.0}), GOLD)
    invalid = score_record(task, "c", "oops", GOLD)
    summary = summarize(task, [right, one_wrong, invalid])
    assert summary.field_error_rate == pytest.approx(7 / 18)
    assert summary.per_field["interest_rate"] == pytest.approx(2 / 3)
    assert summary.exact_match_rate == pytest.approx(1 / 3)
    assert summary.invalid_rate == pytest.approx(1 / 3)
    lo, hi = summary.field_error_ci95
    assert lo < 7 / 18 < hi


def test_interval_widens_when_errors_cluster_in_records() -> None:
    spread = [1] * 60 + [0] * 40  # 60 errors, one in each of 60 records
    clustered = [6] * 10 + [0] * 90  # 60 errors, all in 10 records
    lo_s, hi_s = clustered_wilson_interval(spread, 6)
    lo_c, hi_c = clustered_wilson_interval(clustered, 6)
    assert lo_s < 0.1 < hi_s and lo_c < 0.1 < hi_c
    assert (hi_c - lo_c) > 1.5 * (hi_s - lo_s)
    lo0, hi0 = clustered_wilson_interval([0] * 50, 6)
    assert lo0 == 0.0 and 0.0 < hi0 < 0.1  # zero errors still has an upper bound


def test_a_wrong_copied_value_absent_from_the_input_is_invented() -> None:
    from tuneloop.evals.scoring import score_record, summarize
    from tuneloop.task import parse_task

    task = parse_task(
        """name: t
instructions: x
output_schema:
  type: object
  properties: {shop: {type: [string, "null"]}, total: {type: [number, "null"]}}
fields:
  shop: {compare: exact, extract: verbatim}
  total: {compare: number}
""",
        "t.yaml",
    )
    source = "KEDAI AH SENG total 9.54 cash 10.00"
    gold = {"shop": "KEDAI AH SENG", "total": 9.54}
    copied_wrong = score_record(task, "a", '{"shop": "AH SENG", "total": 9.54}', gold, source)
    invented = score_record(task, "b", '{"shop": "AH SENG SDN BHD", "total": 7.0}', gold, source)
    assert copied_wrong.verdicts["shop"] is Verdict.WRONG  # a span of the input, just the wrong one
    assert invented.verdicts["shop"] is Verdict.INVENTED and invented.verdicts["total"] is Verdict.WRONG  # not copied
    assert score_record(task, "c", '{"shop": "AH SENG SDN BHD", "total": 9.54}', gold).verdicts["shop"] is Verdict.WRONG
    summary = summarize(task, [copied_wrong, invented])
    assert summary.invented == 1 and summary.field_error_rate == 3 / 4
