"""Plausibility checks: field rules, cross-field rules with null logic, schema validity, confidence."""

from __future__ import annotations

import pytest

from tuneloop.checks import evaluate_rule, parse_rule, rule_names
from tuneloop.task import load_task

GOOD = {
    "payoff_amount": 250000.0,
    "escrow_balance": 1800.5,
    "next_due_date": "2026-04-01",
    "interest_rate": 6.125,
    "account_last4": "0042",
    "servicer": "Mr. Cooper",
}


@pytest.fixture(scope="module")
def task():
    return load_task("liability-extraction")


def test_plausible_answer_passes(task) -> None:
    assert task.run_checks(GOOD) == []


def test_each_failure_is_described(task) -> None:
    bad = {**GOOD, "interest_rate": 61.25, "payoff_amount": 100.0, "account_last4": "42", "next_due_date": "2026-02-30"}
    failures = task.run_checks(bad)
    assert "interest_rate: 61.25 is outside [0, 30]" in failures
    assert any(f.startswith("rule: payoff_amount is null") for f in failures)
    assert any(f.startswith("schema: account_last4") for f in failures)
    assert any(f.startswith("schema: next_due_date") for f in failures)


def test_nulls_never_fail_a_rule_by_themselves(task) -> None:
    assert task.run_checks(dict.fromkeys(GOOD)) == []


@pytest.mark.parametrize(
    ("rule", "answer", "expected"),
    [
        ("a >= b", {"a": 2, "b": 1}, True),
        ("a >= b", {"a": 1, "b": 2}, False),
        ("a >= b", {"a": 1, "b": None}, None),  # unknown, not false
        ("a is null or a >= b", {"a": None, "b": 5}, True),
        ("a is not null and a > 0", {"a": None}, False),
        ("a > 0 or b > 0", {"a": None, "b": 1}, True),
        ("a > 0 and b > 0", {"a": None, "b": -1}, False),
        ("not (a > 0)", {"a": None}, None),
        ("a + b == c", {"a": 1, "b": 2, "c": 3}, True),
        ("abs(a - b) < 0.01", {"a": 1.0, "b": 1.001}, True),
        ("kind in ['fixed', 'arm']", {"kind": "arm"}, True),
        ("len(code) == 4", {"code": "1234"}, True),
        ("0 <= rate <= 30", {"rate": 31}, False),
        ("a > 'x'", {"a": 3}, None),  # type mismatch is undecided, not a crash
    ],
)
def test_rule_semantics(rule: str, answer: dict, expected: bool | None) -> None:
    assert evaluate_rule(rule, answer) is expected


@pytest.mark.parametrize("rule", ["__import__('os').system('x')", "a.b > 1", "[x for x in a]", "lambda: 1", "a[0] > 1"])
def test_rules_cannot_reach_python(rule: str) -> None:
    with pytest.raises(ValueError):
        parse_rule(rule)


def test_rule_names_are_the_fields_it_reads() -> None:
    assert rule_names("payoff_amount is null or abs(payoff_amount) >= escrow_balance") == {
        "payoff_amount",
        "escrow_balance",
    }
