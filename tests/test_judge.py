"""Free-text tasks and the LLM judge: the spec's text output, the position swap, the cache, the win-rate
interval and the judge's agreement with human labels.

The position swap runs on a real model: the bundled SmolLM2-135M through llama.cpp is the judge (its verdict
decoded under the verdict's grammar, a few dozen tokens), and it is a judge that prefers position A, so it
must come out as ties, never wins. The answers it judges come from a local fake upstream, and so do the
judges of the other tests (one that always says A, one that is consistent, one that does not answer in
JSON): those tests are about our side of the wire (pairing, both orders, the cache, the counts, the CLI),
so the other side costs nothing.
"""

from __future__ import annotations

import io
import json
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console
from typer.testing import CliRunner

from tuneloop.answers import score_record
from tuneloop.cli.main import app
from tuneloop.data.datasets import judge_answer
from tuneloop.data.jsonl import write_rows
from tuneloop.errors import TuneloopError
from tuneloop.evals.judge import JudgeOptions, cohen_kappa, combine, parse_verdict, wilson_interval
from tuneloop.evals.runner import EvalOptions, judge_agreement, run_eval
from tuneloop.evals.store import run_results
from tuneloop.review.policy import check_answer
from tuneloop.task import Task, TaskSpecError, load_task
from tuneloop.testing.fake_upstream import FakeUpstream
from tuneloop.train.config import TrainConfig, resolve_config

MESSAGES = [
    (
        "Dana from Rocket Mortgage: your escrow payment of $412.50 is due May 1, 2026. Call 800-555-0101.",
        "Rocket Mortgage (Dana): escrow payment of $412.50 due May 1, 2026; asks the borrower to call 800-555-0101.",
    ),
    (
        "Mr. Cooper confirms that loan 9911 was paid off on March 3, 2026. No action is needed.",
        "Mr. Cooper confirms loan 9911 was paid off on March 3, 2026; nothing to do.",
    ),
    (
        "Chase: the rate on your loan changes to 4.5% from June 1, 2026.",
        "Chase says the loan's rate changes to 4.5% from June 1, 2026.",
    ),
]


@pytest.fixture(scope="module")
def task() -> Task:
    return load_task("message-summary")


@pytest.fixture
def gold(tmp_path: Path, task: Task) -> Path:
    rows = [
        {"id": f"m{index}", "messages": [*task.build_messages({"text": text}), {"role": "assistant", "content": note}]}
        for index, (text, note) in enumerate(MESSAGES)
    ]
    path = tmp_path / "gold.jsonl"
    write_rows(path, rows)
    return path


def _answer_part(body: dict[str, Any], name: str) -> str:
    user = body["messages"][-1]["content"]
    return user.split(f"# Answer {name}\n", 1)[1].split("\n\n# ", 1)[0]


def answers(body: dict[str, Any]) -> str:
    """The fake upstream's models: a candidate, a baseline, and judges of three kinds."""
    model = body["model"]
    if model == "cand":  # a note that names the sender (the consistent judge's mark of a good note)
        return "GOOD: " + body["messages"][-1]["content"][:60]
    if model == "base":
        return "A message about a loan."
    if model == "judge-first":  # position bias in its purest form
        return '{"winner": "A", "reason": "the first is better"}'
    if model == "judge-fair":  # decides by content, so both orders agree
        winner = "A" if _answer_part(body, "A").startswith("GOOD") else "B"
        if _answer_part(body, "A").startswith("GOOD") and _answer_part(body, "B").startswith("GOOD"):
            winner = "tie"
        return json.dumps({"winner": winner, "reason": "the GOOD one"})
    if model == "judge-chatty":
        return "I would say A is better, because it is longer."
    return "?"


@pytest.fixture
def upstream() -> Iterator[tuple[FakeUpstream, str]]:
    fake = FakeUpstream(answers, models=("cand", "base", "judge-first", "judge-fair", "judge-chatty"))
    fake.keep_requests = True
    with fake.running() as url:
        yield fake, url


def quiet() -> Console:
    return Console(file=io.StringIO(), width=140)


def judge_requests(fake: FakeUpstream, model: str) -> int:
    return sum(request.get("model") == model for request in fake.requests)


# --- the spec ---------------------------------------------------------------------------------------------

TEXT_TASK = textwrap.dedent(
    """\
    name: reply-draft
    instructions: Draft a short reply to the customer.
    input: "{text}"
    output: text
    rubric: Polite, answers the question, promises nothing the message does not support.
    checks:
      - {min_confidence: 0.3}
    """
)


def test_text_task_spec_problems_name_file_line_and_key(tmp_path: Path) -> None:
    path = tmp_path / "reply.yaml"
    path.write_text(
        textwrap.dedent(
            """\
            name: reply-draft
            instructions: Draft a short reply to the customer.
            output: text
            output_schema: {type: object, properties: {reply: {type: string}}}
            fields:
              reply: {compare: fuzzy}
            checks:
              - {field: reply, not_null: true}
              - {min_confidence: 0.3}
            requirements: {max_error_rate: 0.1}
            """
        )
    )
    with pytest.raises(TaskSpecError) as caught:
        load_task(path)
    assert caught.value.problems == [
        f"{path}:1: rubric: a text task needs a rubric: what a good answer does, for the judge (eval run --judge)",
        f"{path}:4: output_schema: a text task has no schema: leave output_schema out, or set output: json",
        f"{path}:5: fields: fields are compared in JSON answers; a text task has none",
        f"{path}:8: checks[0]: a text task has no fields to check: only {{min_confidence: ...}} applies",
        f"{path}:10: requirements.max_error_rate: the field error rate is measured on JSON answers; judge text "
        "with `tuneloop eval run --judge`",
    ]


def test_a_json_task_needs_a_schema_and_takes_no_rubric(tmp_path: Path) -> None:
    path = tmp_path / "json.yaml"
    path.write_text("name: j\ninstructions: Extract.\nrubric: Be right.\n")
    with pytest.raises(TaskSpecError) as caught:
        load_task(path)
    assert f"{path}:3: rubric: a rubric judges free text" in caught.value.problems[1]
    assert caught.value.problems[0].startswith(f"{path}:1: output_schema: a JSON task needs output_schema")


def test_a_text_answer_is_checked_stored_and_scored_as_text(tmp_path: Path, task: Task) -> None:
    path = tmp_path / "reply.yaml"
    path.write_text(TEXT_TASK)
    reply = load_task(path)
    assert reply.is_text and reply.field_names == []
    assert check_answer(reply, "Thanks, we will call you.", confidence=0.9).passed
    low = check_answer(reply, "Thanks.", confidence=0.1)
    assert low.failures == ["confidence: 0.100 is below 0.3"] and low.fields is None
    assert not check_answer(reply, "   ").passed
    stored, fields, failures = judge_answer(reply, {"role": "assistant", "content": "  Thanks.\n"})
    assert stored["content"] == "Thanks." and fields is None and failures == []
    assert judge_answer(reply, {"role": "assistant", "content": " "})[2] == ["invalid answer: the answer is empty"]
    score = score_record(task, "m0", "A note.", {})
    assert score.valid and score.verdicts == {}
    assert not score_record(task, "m0", "", {}).valid
    with pytest.raises(TuneloopError, match="answers in free text"):
        task.answer_json({})


def test_a_text_answer_is_reviewed_as_text_and_becomes_a_dataset_entry(task: Task) -> None:
    from tuneloop.data.datasets import export_rows
    from tuneloop.review import queue

    request = {"model": "message-summary@1", "messages": task.build_messages({"text": MESSAGES[0][0]})}
    made = [
        queue.create_item(
            task=task.name, request=request, draft_text=draft, draft_fields=None, failed_checks=[], model="m"
        )
        for draft in ("Rocket Mortgage wrote.", "Dana of Rocket Mortgage: $412.50 escrow due May 1, 2026.")
    ]
    with pytest.raises(TuneloopError) as caught:
        queue.correct_item(made[0], "ann", {"payoff_amount": 1.0})
    assert "--set text=" in (caught.value.hint or "")
    assert queue.parse_field_value(task, "text", "  A better note. ") == "A better note."
    fixed = queue.correct_item(made[0], "ann", {"text": MESSAGES[0][1]})
    assert fixed.item.correction == MESSAGES[0][1] and fixed.entry_id is not None
    approved = queue.approve_item(made[1], "ann")
    assert approved.entry_id is not None and approved.dataset == fixed.dataset
    rows = export_rows(fixed.dataset or "", everything=True)  # two human answers to one input
    contents = sorted(row["messages"][-1]["content"] for row in rows)
    assert contents == sorted([MESSAGES[0][1], "Dana of Rocket Mortgage: $412.50 escrow due May 1, 2026."])


def test_the_review_page_edits_a_text_answer_as_one_text(task: Task) -> None:
    from starlette.testclient import TestClient

    from test_ui import SECRET, login
    from tuneloop.review import get_item, queue
    from tuneloop.store.keys import create_key
    from tuneloop.ui import create_ui_app

    request = {"model": "message-summary@1", "messages": task.build_messages({"text": MESSAGES[1][0]})}
    item = queue.create_item(
        task=task.name, request=request, draft_text="Mr. Cooper wrote.", draft_fields=None, failed_checks=[], model="m"
    )
    with TestClient(create_ui_app(SECRET), follow_redirects=False) as client:
        token = login(client, create_key("ana", role="admin").key)
        page = client.get(f"/review/{item}")
        assert page.status_code == 200 and '<textarea id="field-text"' in page.text and "Mr. Cooper wrote." in page.text
        decided = client.post(
            f"/review/{item}/decide", data={"csrf_token": token, "action": "correct", "field.text": MESSAGES[1][1]}
        )
        assert decided.status_code == 303, decided.text
    assert get_item(item).correction == MESSAGES[1][1]


def test_training_a_text_task_refuses_the_json_only_keys_and_keeps_the_last_adapter(tmp_path: Path) -> None:
    resolved = resolve_config(TrainConfig(), examples=40, longest=100, parameters=10**6, text_answers=True)
    assert resolved.field_error_rows == 0 and resolved.value_weight == 1.0
    config = tmp_path / "train.yaml"
    config.write_text("value_weight: 3.0\n")
    from tuneloop.train.config import load_config

    with pytest.raises(TuneloopError) as caught:
        resolve_config(load_config(config), examples=40, longest=100, parameters=10**6, text_answers=True)
    assert caught.value.where == f"{config}:1" and "free text" in caught.value.message


def test_a_text_task_trains_registers_and_answers_free_text(
    tiny_base: Path, gold: Path, task: Task, tmp_path: Path
) -> None:
    """The whole loop on a text task with the tiny in-process base: rows → train → task@1 → eval (no grammar)."""
    from tuneloop.train import train

    rows = [
        {"messages": [*task.build_messages({"text": f"{text} (copy {n})"}), {"role": "assistant", "content": note}]}
        for n in range(8)
        for text, note in MESSAGES
    ]
    data = tmp_path / "train.jsonl"
    write_rows(data, rows)
    config = tmp_path / "train.yaml"
    config.write_text(
        "sft: {max_steps: 3, per_device_train_batch_size: 4, logging_steps: 1, bf16: false}\nlora: {r: 4}\n"
    )
    result = train(task.name, data, str(tiny_base), config)
    assert result.version.id == "message-summary@1"
    assert result.version.config["train"]["field_error_rows"] == 0  # nothing to score: the last adapter is kept
    report = run_eval(task, str(gold), ["message-summary@1"], EvalOptions(max_tokens=8), console=quiet())
    (model,) = report.models
    assert model.results == 3 and model.summary.field_error_rate is None
    outputs = [r.output for r in run_results(report.run_id)]
    assert all(isinstance(output, str) for output in outputs)  # decoded freely: no JSON grammar on a text task

    # Served as `tuneloop serve` serves it: free text under the task's checks (min_confidence only).
    import asyncio

    from tuneloop.protocol import ChatCompletionRequest
    from tuneloop.serve.engine import build_engine

    engine = build_engine(backend="transformers", base=str(tiny_base), models=["message-summary@1"])
    try:
        request = ChatCompletionRequest(
            model="message-summary@1", messages=task.build_messages({"text": MESSAGES[2][0]}), max_tokens=8
        )
        served = asyncio.run(engine.complete(request))
    finally:
        engine.close()
    assert served["model"] == "message-summary@1" and isinstance(served["choices"][0]["message"]["content"], str)
    assert "schema_valid" not in json.dumps(served)  # no schema was applied to a text answer


# --- statistics -------------------------------------------------------------------------------------------


def test_wilson_interval_and_cohen_kappa_known_values() -> None:
    low, high = wilson_interval(5, 10)
    assert (round(low, 4), round(high, 4)) == (0.2366, 0.7634)
    low, high = wilson_interval(0, 10)
    assert low == 0.0 and round(high, 4) == 0.2775
    assert wilson_interval(0, 0) == (0.0, 1.0)
    # All ties from a position-biased judge: the point is 0.5, never certain, and narrower with more pairs.
    few, many = wilson_interval(0.5 * 4, 4), wilson_interval(0.5 * 400, 400)
    assert few[0] < many[0] < 0.5 < many[1] < few[1]
    # Cohen's 1960 example shape: 20 yes-yes, 5 yes-no, 10 no-yes, 15 no-no → kappa 0.4.
    pairs = [("y", "y")] * 20 + [("y", "n")] * 5 + [("n", "y")] * 10 + [("n", "n")] * 15
    assert round(cohen_kappa(pairs) or 0, 6) == 0.4
    assert cohen_kappa([("A", "A"), ("B", "B"), ("tie", "tie")]) == 1.0
    assert cohen_kappa([("A", "tie"), ("B", "tie"), ("tie", "tie")]) == 0.0  # a constant judge knows nothing
    assert cohen_kappa([("A", "A")]) is None
    assert combine("A", "B") == ("win", True) and combine("B", "A") == ("loss", True)
    assert combine("A", "A") == ("tie", False) and combine("tie", "B") == ("tie", False)
    assert parse_verdict('```json\n{"winner": "tie", "reason": "same"}\n```').winner == "tie"
    assert parse_verdict('{"winner": "C"}').problem == "winner is 'C', not one of A, B, tie"


# --- the position swap on a real model --------------------------------------------------------------------


def test_position_swap_on_the_bundled_model_turns_its_bias_into_ties(
    task: Task, gold: Path, upstream: tuple[FakeUpstream, str]
) -> None:
    _, url = upstream
    # One pair, asked in both orders (two calls of the real model, ~5 s each on 2 cores; the rest is loading).
    options = EvalOptions(limit=1, judge=JudgeOptions("smollm2-135m-instruct", baseline=f"{url}#base", max_tokens=32))
    report = run_eval(task, str(gold), [f"{url}#cand"], options, console=quiet())
    rows = [r for r in run_results(report.run_id) if r.model.startswith("judge|")]
    assert sorted((r.model.split("|")[1], r.example_id) for r in rows) == [("AB", "m0"), ("BA", "m0")]
    verdicts = {(r.model.split("|")[1], r.example_id): parse_verdict(r.output).winner for r in rows}
    # What the 135M model does as a judge, greedy under the verdict grammar: it names whichever answer
    # comes first (so on every one of 24 calls over 12 labelled pairs, docs/evals.md). Counted naively
    # (candidate as A) that is a win; both orders make it a tie.
    assert set(verdicts.values()) == {"A"}, verdicts
    (judged,) = report.judged
    assert (judged.wins, judged.ties, judged.losses) == (0, 1, 0)
    assert judged.inconsistent == 1 and judged.inconsistent_share == 1.0
    assert judged.win_rate == 0.5 and judged.win_rate_ci95 is not None
    assert judged.win_rate_ci95[0] < 0.5 < judged.win_rate_ci95[1]
    assert judged.judge_calls == 2 and judged.unparseable == 0

    # The same run again: every verdict is a cached answer, so the judge is not even loaded.
    again = run_eval(task, str(gold), [f"{url}#cand"], options, console=quiet())
    (cached,) = again.judged
    assert cached.judge_calls == 0 and cached.verdicts_cached == 2
    assert (cached.wins, cached.ties, cached.losses, cached.inconsistent) == (0, 1, 0, 1)


# --- our side of the wire: pairing, counting, the cache ---------------------------------------------------


def test_an_always_first_judge_is_all_ties_and_a_consistent_one_wins(
    task: Task, gold: Path, upstream: tuple[FakeUpstream, str]
) -> None:
    fake, url = upstream
    run = lambda judge: run_eval(  # noqa: E731
        task,
        str(gold),
        [f"{url}#cand"],
        EvalOptions(judge=JudgeOptions(f"{url}#{judge}", baseline=f"{url}#base")),
        console=quiet(),
    )
    (first,) = run("judge-first").judged
    assert (first.wins, first.ties, first.losses, first.inconsistent) == (0, 3, 0, 3)
    assert first.win_rate == 0.5
    (fair,) = run("judge-fair").judged
    assert (fair.wins, fair.ties, fair.losses, fair.inconsistent) == (3, 0, 0, 0)
    assert fair.win_rate == 1.0 and fair.win_rate_ci95 == pytest.approx((0.4385, 1.0), abs=1e-4)
    (chatty,) = run("judge-chatty").judged
    assert chatty.unparseable == 3 and chatty.decided == 0 and chatty.win_rate is None  # reported, not guessed
    # The verdict is asked for as strict JSON (the endpoint's structured output).
    request = next(r for r in fake.requests if r["model"] == "judge-fair")
    assert request["response_format"]["json_schema"]["schema"]["properties"]["winner"]["enum"] == ["A", "B", "tie"]

    # A second run asks the judge nothing: its answers are in the cache, keyed by the judge and its input.
    before = judge_requests(fake, "judge-fair")
    (again,) = run("judge-fair").judged
    assert judge_requests(fake, "judge-fair") == before
    assert again.judge_calls == 0 and again.verdicts_cached == 6 and again.wins == 3


def test_the_judge_is_refused_where_it_cannot_apply(gold: Path, upstream: tuple[FakeUpstream, str], task: Task) -> None:
    _, url = upstream
    with pytest.raises(TuneloopError) as caught:
        run_eval(
            "liability-extraction",
            str(gold),
            [f"{url}#cand"],
            EvalOptions(judge=JudgeOptions(f"{url}#judge-fair", baseline=f"{url}#base")),
        )
    assert caught.value.where == "--judge" and "scored field by field" in caught.value.message
    with pytest.raises(TuneloopError) as caught:
        run_eval(task, str(gold), [f"{url}#cand"], EvalOptions(judge=JudgeOptions(f"{url}#judge-fair")))
    assert caught.value.where == "--baseline"
    # An engine is a local judge's choice; an endpoint judge is refused it from the CLI, naming the option.
    common = ["eval", "run", "--task", "message-summary", "--data", str(gold), "--model", f"{url}#cand"]
    result = CliRunner().invoke(
        app, [*common, "--judge", f"{url}#judge-fair", "--baseline", f"{url}#base", "--judge-backend", "transformers"]
    )
    assert result.exit_code != 0 and result.exception.where == "--judge-backend"
    result = CliRunner().invoke(app, [*common, "--judge-backend", "transformers"])
    assert result.exit_code != 0 and result.exception.where == "--judge-backend"  # it goes with --judge


# --- agreement with human labels --------------------------------------------------------------------------


def labels_file(tmp_path: Path, task: Task) -> Path:
    """Six pairs a person labelled: the GOOD answer preferred, and two ties between equally good ones."""
    rows = []
    for index, (text, note) in enumerate(MESSAGES * 2):
        prompt = [*task.build_messages({"text": text}), {"role": "assistant", "content": note}]
        good, plain = f"GOOD {index}", f"plain {index}"
        a, b, label = [(good, plain, "A"), (plain, good, "B"), (good, f"GOOD again {index}", "tie")][index % 3]
        rows.append({"id": f"p{index}", "messages": prompt, "a": a, "b": b, "label": label})
    path = tmp_path / "labels.jsonl"
    write_rows(path, rows)
    return path


def test_agreement_with_human_labels_rate_interval_and_kappa(
    tmp_path: Path, task: Task, gold: Path, upstream: tuple[FakeUpstream, str]
) -> None:
    _, url = upstream
    labels = labels_file(tmp_path, task)
    measured = judge_agreement(task, labels, f"{url}#judge-fair", console=quiet())
    fair = measured.agreement
    assert fair is not None and (fair.judged, fair.agree, fair.kappa) == (6, 6, 1.0)
    # A later run with this judge shows that measurement beside its verdicts.
    options = EvalOptions(judge=JudgeOptions(f"{url}#judge-fair", baseline=f"{url}#base"))
    beside = run_eval(task, str(gold), [f"{url}#cand"], options, console=quiet()).agreement
    assert beside is not None and beside.measured_in == measured.run_id and beside.kappa == 1.0
    first = judge_agreement(task, labels, f"{url}#judge-first", console=quiet()).agreement
    # Debiased, an always-A judge says tie to everything: it agrees on the two ties, and kappa sees no skill.
    assert first is not None and (first.agree, first.inconsistent, first.kappa) == (2, 6, 0.0)
    assert first.rate_ci95 == pytest.approx(wilson_interval(2, 6))
    bad = tmp_path / "bad.jsonl"
    bad.write_text(labels.read_text().replace('"label": "B"', '"label": "b"', 1))
    with pytest.raises(TuneloopError) as caught:
        judge_agreement(task, bad, f"{url}#judge-fair", console=quiet())
    assert caught.value.where == f"{bad}:2" and "one of A, B, tie" in caught.value.message


def test_cli_eval_run_with_judge_baseline_and_labels(
    tmp_path: Path, task: Task, gold: Path, upstream: tuple[FakeUpstream, str]
) -> None:
    _, url = upstream
    out = tmp_path / "report.json"
    labels = labels_file(tmp_path, task)
    result = CliRunner().invoke(
        app,
        [
            "eval", "run", "--task", "message-summary", "--data", str(gold), "--model", f"{url}#cand",
            "--judge", f"{url}#judge-fair", "--baseline", f"{url}#base", "--judge-labels", str(labels),
            "--json", str(out), "--html", str(tmp_path / "report.html"),
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "judged by" in result.output and "agrees with human labels" in result.output
    report = json.loads(out.read_text())
    (pairs,) = report["judge"]["pairs"]
    assert pairs["wins"] == 3 and pairs["interval"] == "wilson"
    assert report["judge"]["agreement"]["kappa"] == 1.0
    assert {model["field_error_rate"] for model in report["models"]} == {None}  # a text task has no fields
    html = (tmp_path / "report.html").read_text()
    assert 'alt="win rate against the baseline" src="data:image/png;base64,' in html  # the win-rate plot
    listing = CliRunner().invoke(app, ["eval", "list"])
    assert listing.exit_code == 0 and "100% wins" in listing.output  # 3 of 3 won: the run's best, not "–"
    result = CliRunner().invoke(
        app,
        [
            "eval",
            "judge-agreement",
            "--task",
            "message-summary",
            "--judge",
            f"{url}#judge-first",
            "--labels",
            str(labels),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "Cohen's kappa 0.00" in result.output
