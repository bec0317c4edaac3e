"""Canary splits, live shadows and the guard: the registry's rules, the statistics, and the gateway on the wire.

The gateway tests send real calls with the official openai client through a running gateway to a fake
upstream (the tests are about the gateway's side: which arm answers, what is logged and linked, when the
guard trips). The fake answers the candidate version ``T@2`` with an interest rate of 61.25 %, which fails
the demo task's range check; every other model gets a plausible answer.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from test_capture_support import gateway_config, rows, wait_for_rows
from test_review_gateway import BAD, GOOD, MESSAGES
from test_serve import TASK, register_random_version
from tuneloop.capture.server import RunningGateway, running_gateway
from tuneloop.cli.main import app
from tuneloop.errors import TuneloopError
from tuneloop.monitor.canary import ArmFigures, _judge, canary_status, quantile
from tuneloop.monitor.live_shadow import ShadowStatus, compare_answers
from tuneloop.registry.promotion import alias_history, promote, rollback
from tuneloop.registry.rollouts import (
    Guard,
    get_rollout,
    list_rollouts,
    start_canary,
    start_shadow,
    stop_rollout,
)
from tuneloop.review.policy import ReviewPolicy
from tuneloop.stats import binomial_upper_tail
from tuneloop.store import RequestLog, ReviewItem, session_scope, utcnow
from tuneloop.task import load_task
from tuneloop.testing.fake_upstream import FakeUpstream

pytest_plugins = ["test_capture_support"]

PROD, CANDIDATE = f"{TASK}@1", f"{TASK}@2"
ROUTED = f"fake/{TASK}@prod"


@pytest.fixture
def versions(tmp_path: Path, tuneloop_home: Path) -> list:
    # Tiny adapters: the registry hashes them; nothing loads them (the fake upstream answers).
    found = [register_random_version(tmp_path, seed, layers=2) for seed in (1, 2)]
    promote(TASK, PROD, "prod", actor="ana")
    return found


def completion(fields: dict[str, Any] | str) -> dict[str, Any]:
    content = fields if isinstance(fields, str) else json.dumps(fields)
    return {"choices": [{"index": 0, "message": {"role": "assistant", "content": content}}]}


# --- the registry -----------------------------------------------------------------------------------


def test_a_canary_starts_once_per_alias_and_its_life_is_in_the_alias_history(versions) -> None:
    canary = start_canary(CANDIDATE, "prod", 5, sticky_tag="user", actor="ana", reason="try v2")
    assert (canary.candidate, canary.production, canary.percent, canary.state) == (CANDIDATE, PROD, 5.0, "active")
    with pytest.raises(TuneloopError, match="already has a canary") as again:
        start_canary(CANDIDATE, "prod", 10)
    assert "--stop" in (again.value.hint or "")
    shadow = start_shadow(CANDIDATE, "prod", 10)  # a shadow beside a canary is allowed
    stopped = stop_rollout(TASK, "prod", "canary", actor="bo", reason="enough")
    assert (stopped.state, stopped.ended_by, stopped.end_reason) == ("stopped", "bo", "enough")
    with pytest.raises(TuneloopError, match="has no canary running"):
        stop_rollout(TASK, "prod", "canary")
    kinds = [move.kind for move in alias_history(TASK, "prod")]
    assert kinds == ["move", "canary_start", "shadow_start", "canary_stopped"]
    start = alias_history(TASK, "prod")[1]
    assert (start.from_version, start.to_version, start.details["percent"]) == (PROD, CANDIDATE, 5.0)
    assert start.details["guard"]["min_calls"] == Guard().min_calls
    # Moving the alias to the candidate ends its shadow as promoted; rollback skips the rollout events.
    promote(TASK, CANDIDATE, "prod", actor="ana")
    assert get_rollout(shadow.id).state == "promoted"
    back = rollback(TASK, "prod")
    assert (back.from_version, back.to_version) == (CANDIDATE, PROD)
    assert [r.state for r in list_rollouts(TASK)] == ["promoted", "stopped"]


def test_a_rollout_that_cannot_work_is_refused_naming_what_and_where(versions, tmp_path: Path) -> None:
    with pytest.raises(TuneloopError, match="is not a version"):
        start_canary(f"{TASK}@prod", "prod", 5)
    with pytest.raises(TuneloopError, match="at most 100") as bad:
        start_canary(CANDIDATE, "prod", 150)
    assert bad.value.where == "--percent"
    with pytest.raises(TuneloopError, match="already"):
        start_canary(PROD, "prod", 5)  # the alias's own version
    with pytest.raises(TuneloopError, match="does not exist") as missing:
        start_shadow(CANDIDATE, "staging", 5)
    assert "promote" in (missing.value.hint or "")
    with pytest.raises(TuneloopError) as margin:
        Guard(max_error_increase=2)
    assert margin.value.where == "--max-error-increase"
    assert list_rollouts(TASK) == []


def test_the_cli_starts_lists_and_stops_a_canary(versions) -> None:
    runner = CliRunner(env={"COLUMNS": "250"})
    started = runner.invoke(app, ["models", "canary", CANDIDATE, "--alias", "prod", "--percent", "5", "--window", "1h"])
    assert started.exit_code == 0, started.output
    assert f"canary of {CANDIDATE} on 5 % of {TASK}@prod" in started.output
    assert get_rollout(list_rollouts(TASK)[0].id).guard.window_s == 3600
    listed = runner.invoke(app, ["models", "rollouts", TASK])
    assert listed.exit_code == 0 and "active" in listed.output and CANDIDATE in listed.output
    bad = runner.invoke(app, ["models", "canary", CANDIDATE, "--window", "soon"])
    assert bad.exit_code != 0 and "not a duration" in str(bad.exception)
    stopped = runner.invoke(app, ["models", "canary", TASK, "--alias", "prod", "--stop"])
    assert stopped.exit_code == 0, stopped.output
    history = runner.invoke(app, ["models", "history", TASK])
    assert "canary start" in history.output and "canary stopped" in history.output
    start_canary(CANDIDATE, "prod", 5)
    promoted = runner.invoke(app, ["models", "promote", CANDIDATE, "--alias", "prod"])
    assert promoted.exit_code == 0 and "ended: promoted" in promoted.output, promoted.output


# --- the statistics ---------------------------------------------------------------------------------


def arms(prod: dict[str, Any], cand: dict[str, Any]) -> dict[str, ArmFigures]:
    return {"production": ArmFigures(**prod), "candidate": ArmFigures(**cand)}


def test_the_guard_trips_on_a_real_difference_beyond_the_margin_only() -> None:
    guard = Guard(min_calls=50, max_check_failure_increase=0.05)
    now = utcnow()
    fast = [100.0] * 200
    worse = _judge(1, guard, arms(
        {"calls": 200, "checked": 200, "check_failures": 4, "latencies_ms": fast},
        {"calls": 200, "checked": 200, "check_failures": 60, "latencies_ms": fast},
    ), now)  # fmt: skip
    assert worse.trip and "check_failure_rate" in worse.reasons[0]
    # 3 points worse: real perhaps, but within the 5-point margin.
    within = _judge(1, guard, arms(
        {"calls": 2000, "checked": 2000, "check_failures": 40, "latencies_ms": fast},
        {"calls": 2000, "checked": 2000, "check_failures": 100, "latencies_ms": fast},
    ), now)  # fmt: skip
    assert not within.trip
    # 10 points worse on 8 calls is no evidence yet: the guard waits for min_calls.
    early = _judge(1, guard, arms({"calls": 8}, {"calls": 8, "checked": 8, "check_failures": 8}), now)
    assert not early.trip and early.waiting and "8/50" in early.waiting
    slow = _judge(1, guard, arms(
        {"calls": 200, "latencies_ms": fast},
        {"calls": 200, "latencies_ms": [100.0] * 150 + [400.0] * 50},
    ), now)  # fmt: skip
    assert slow.trip and slow.reasons[0].startswith("p95_latency")


def test_the_binomial_tail_and_the_quantile_are_exact() -> None:
    assert binomial_upper_tail(0, 10, 0.05) == 1.0
    assert binomial_upper_tail(11, 10, 0.05) == 0.0
    assert binomial_upper_tail(10, 10, 0.5) == pytest.approx(0.5**10)
    # P(X >= 2), X ~ Bin(3, 0.5) = 4/8
    assert binomial_upper_tail(2, 3, 0.5) == pytest.approx(0.5)
    assert quantile([1.0, 2.0, 3.0, 4.0, 5.0], 0.5) == 3.0
    assert quantile([0.0, 10.0], 0.95) == pytest.approx(9.5)
    assert quantile([], 0.5) is None


def test_an_unparseable_candidate_answer_disagrees_on_every_field() -> None:
    spec = load_task(TASK)
    same = compare_answers(spec, completion(GOOD), completion(GOOD))
    assert same["agreed"] and all(same["fields"].values()) and not same["check_failures"]
    one = compare_answers(spec, completion(GOOD), completion(BAD))
    assert not one["agreed"] and [name for name, ok in one["fields"].items() if not ok] == ["interest_rate"]
    assert one["check_failures"]
    for broken in ("not json at all", "[1, 2]", json.dumps({**GOOD, "extra": 1})):
        result = compare_answers(spec, completion(broken), completion(broken))
        assert not any(result["fields"].values()) and not result["agreed"], broken
    nothing = compare_answers(spec, completion(GOOD), None)
    assert not nothing["candidate_answered"] and not any(nothing["fields"].values())


def test_text_answers_agree_when_the_same_and_carry_their_similarity() -> None:
    spec = load_task("message-summary")  # output: text, no fields
    same = compare_answers(spec, completion("The order ships  Monday."), completion("the order ships monday."))
    assert same["agreed"] and same["similarity"] == 1.0 and same["fields"] == {}
    close = compare_answers(spec, completion("The order ships on Monday."), completion("The order ships Tuesday."))
    assert not close["agreed"] and 0.5 < close["similarity"] < 1.0  # 3 of 5 and 4 words shared: 2*3/9
    assert close["similarity"] == pytest.approx(2 * 3 / 9, abs=1e-4)
    empty = compare_answers(spec, completion("The order ships on Monday."), completion("   "))
    assert empty["similarity"] == 0.0 and not empty["candidate_valid"] and empty["candidate_answered"]
    nothing = compare_answers(spec, completion("The order ships on Monday."), None)
    assert nothing["similarity"] == 0.0 and not nothing["candidate_answered"]
    status = ShadowStatus(1, 60.0, calls=2, similarities=[same["similarity"], close["similarity"]])
    assert status.text_similarity == pytest.approx((1 + 2 / 3) / 2, abs=1e-4) and status.to_json()["text_similarity"]


def test_an_observed_answer_is_checked_and_never_queued(tuneloop_home: Path) -> None:
    policy = ReviewPolicy()
    outcome = asyncio.run(policy.apply({"metadata": {"task": TASK}}, completion(BAD), model="x", observe_only=True))
    assert outcome.action == "observed" and outcome.error is None
    assert outcome.completion["tuneloop"]["checks"]["passed"] is False
    with session_scope() as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(ReviewItem)) == 0


# --- through the gateway -----------------------------------------------------------------------------


def answer(body: dict[str, Any]) -> str:
    return json.dumps(BAD if body.get("model") == CANDIDATE else GOOD)


@pytest.fixture
def fake() -> Iterator[FakeUpstream]:
    upstream = FakeUpstream(answer, models=(f"{TASK}@prod", CANDIDATE))
    upstream.keep_requests = True
    yield upstream


@pytest.fixture
def gateway(tmp_path: Path, fake_url: str, versions) -> Iterator[RunningGateway]:
    sections = {"rollouts": {"refresh_s": 0.1}, "watch": {"every_s": 0.2}}
    with running_gateway(gateway_config(tmp_path, fake_url, **sections)) as running:
        yield running


def ask(gateway: RunningGateway, user: str | None = None, stream: bool = False) -> tuple[str | None, str]:
    """(the rollout header, the answer's text) of one call through the gateway."""
    client = openai.OpenAI(base_url=gateway.base_url, api_key="unused", max_retries=0)
    extra = {"user": user} if user else {}
    if stream:
        with client.chat.completions.with_streaming_response.create(
            model=ROUTED, messages=MESSAGES, stream=True, **extra
        ) as response:
            text = "".join(chunk.choices[0].delta.content or "" for chunk in response.parse() if chunk.choices)
            return response.headers.get("x-tuneloop-rollout"), text
    raw = client.chat.completions.with_raw_response.create(model=ROUTED, messages=MESSAGES, **extra)
    return raw.headers.get("x-tuneloop-rollout"), raw.parse().choices[0].message.content or ""


def wait_until(condition: Any, timeout: float = 15.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    return condition()


def test_a_canary_whose_candidate_fails_the_checks_is_switched_off_by_the_guard(gateway: RunningGateway) -> None:
    canary = start_canary(CANDIDATE, "prod", 50, guard=Guard(min_calls=12, window_s=600), actor="ana")
    time.sleep(0.3)  # the gateway re-reads rollouts every 0.1 s
    seen: Counter[str] = Counter()
    for index in range(40):
        header, text = ask(gateway, stream=index % 4 == 0)
        if header is None:  # the guard switched it off already
            assert get_rollout(canary.id).state == "tripped" and json.loads(text) == GOOD
            break
        assert header.startswith(f"{canary.id}; arm=")
        arm = header.split("arm=")[1].split(";")[0]
        seen[arm] += 1
        # Every response names the version that answered; the candidate's answers are its own.
        assert header.endswith(f"model={CANDIDATE if arm == 'candidate' else PROD}")
        assert json.loads(text)["interest_rate"] == (61.25 if arm == "candidate" else 6.125)
    assert seen["candidate"] and seen["production"]
    tripped = wait_until(lambda: get_rollout(canary.id).state == "tripped" and get_rollout(canary.id))
    assert tripped, get_rollout(canary.id)
    assert tripped.ended_by == "guard" and "check_failure_rate" in (tripped.end_reason or "")
    event = [move for move in alias_history(TASK, "prod") if move.kind == "canary_tripped"]
    assert len(event) == 1 and event[0].details["arms"]["candidate"]["check_failure_rate"] == 1.0
    assert event[0].details["arms"]["production"]["check_failure_rate"] == 0.0
    # Logged calls carry the rollout and their arm; after the trip every call is production's again.
    wait_for_rows(sum(seen.values()))
    logged = Counter(row.rollout_arm for row in rows(RequestLog.rollout_id == canary.id))
    assert logged["candidate"] >= seen["candidate"] - 1 and logged["production"] >= 1
    time.sleep(0.3)
    for _ in range(5):
        header, text = ask(gateway)
        assert header is None and json.loads(text) == GOOD
    metrics = httpx.get(gateway.base_url.removesuffix("/v1") + "/metrics").text
    assert f'tuneloop_canary_tripped{{alias="prod",candidate="{CANDIDATE}",rollout="{canary.id}"' in metrics


def test_a_sticky_canary_keeps_each_caller_on_one_arm(gateway: RunningGateway) -> None:
    start_canary(CANDIDATE, "prod", 50, sticky_tag="user", guard=Guard(min_calls=1000))
    time.sleep(0.3)
    arms_by_user: dict[str, set[str]] = {}
    for _ in range(3):
        for user in (f"caller-{n}" for n in range(12)):
            header, _ = ask(gateway, user=user)
            assert header is not None
            arms_by_user.setdefault(user, set()).add(header.split("arm=")[1].split(";")[0])
    assert all(len(arms) == 1 for arms in arms_by_user.values()), arms_by_user
    assert {arm for arms in arms_by_user.values() for arm in arms} == {"candidate", "production"}


def test_a_live_shadow_logs_the_candidates_answers_linked_and_compared(
    gateway: RunningGateway, fake: FakeUpstream
) -> None:
    shadow = start_shadow(CANDIDATE, "prod", 100)
    time.sleep(0.3)
    answers = [ask(gateway, stream=index == 0) for index in range(6)]
    # The clients got production's answers, unchanged and without a rollout header.
    assert all(header is None and json.loads(text) == GOOD for header, text in answers)
    wait_for_rows(12)
    production = {row.capture_id: row for row in rows(RequestLog.rollout_arm.is_(None))}
    shadows = rows(RequestLog.rollout_arm == "shadow")
    assert len(production) == 6 and len(shadows) == 6
    for row in shadows:
        assert row.shadow_of in production and row.rollout_id == shadow.id
        assert row.model_requested == CANDIDATE and "shadow" in row.tags
        assert row.comparison["fields"]["interest_rate"] is False and row.comparison["fields"]["payoff_amount"]
        assert row.checks_passed is False
    # The mirrored calls told the upstream they were shadows (a tuneloop server then only checks them).
    mirrored = [(body, headers) for body, headers in zip(fake.requests, fake.headers, strict=True)
                if body["model"] == CANDIDATE]  # fmt: skip
    assert len(mirrored) == 6 and all(headers.get("x-tuneloop-shadow") == str(shadow.id) for _, headers in mirrored)
    assert not any(body.get("stream") for body, _ in mirrored)
    figures = wait_until(lambda: get_rollout(shadow.id).figures.get("calls") == 6 and get_rollout(shadow.id).figures)
    assert figures["agreement"] == 0.0 and figures["field_agreement"]["payoff_amount"] == 1.0
    assert figures["check_failure_rate"] == 1.0
    with session_scope() as session:  # the shadow's failing answers are not in the review queue
        assert session.scalar(sa.select(sa.func.count()).select_from(ReviewItem)) == 0


def test_monitor_watch_once_prints_the_figures(versions) -> None:
    canary = start_canary(CANDIDATE, "prod", 5, guard=Guard(min_calls=5))
    runner = CliRunner(env={"COLUMNS": "250"})
    result = runner.invoke(app, ["monitor", "watch", "--once"])
    assert result.exit_code == 0, result.output
    assert f"rollout {canary.id}: production: 0 calls" in result.output and "guard waiting" in result.output
    assert canary_status(canary).waiting == "production 0/5 calls, candidate 0/5 calls"


# --- on PostgreSQL: concurrent starts and trips ---------------------------------------------------------


def test_concurrent_starts_and_trips_are_decided_once_on_postgres(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, tuneloop_home: Path
) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from tuneloop.registry.rollouts import trip_rollout

    monkeypatch.setenv("TUNELOOP_DATABASE_URL", postgres_url)
    for seed in (1, 2):
        register_random_version(tmp_path, seed, layers=2)
    promote(TASK, PROD, "prod")

    def start(_: int) -> str:
        try:
            return f"started {start_canary(CANDIDATE, 'prod', 5).id}"
        except TuneloopError as exc:
            return exc.message

    with ThreadPoolExecutor(4) as pool:
        outcomes = list(pool.map(start, range(4)))
    assert sum(outcome.startswith("started") for outcome in outcomes) == 1, outcomes
    assert all("already has a canary" in outcome for outcome in outcomes if not outcome.startswith("started"))
    canary = list_rollouts(TASK)[0]
    with ThreadPoolExecutor(4) as pool:  # four gateway workers' guards trip at once
        trips = list(pool.map(lambda _: trip_rollout(canary.id, "guard: test", {"kind": "canary"}), range(4)))
    assert sum(trip is not None for trip in trips) == 1
    assert [move.kind for move in alias_history(TASK)].count("canary_tripped") == 1
