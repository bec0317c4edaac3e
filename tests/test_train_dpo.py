"""Preference tuning: pairs built from a real store (review corrections, failed checks against verified labels,
a teacher's answers against logged ones), exported in TRL's format, and `train --method dpo` on a tiny base
from a tiny SFT version, registered with its method, parent and pairs."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import yaml
from safetensors.torch import load_file
from typer.testing import CliRunner

from test_train_support import TASK, rows, write_config, write_jsonl
from tuneloop.capture.logwriter import StoreSink
from tuneloop.capture.records import CallRecord
from tuneloop.cli.main import app
from tuneloop.data.datasets import dataset_from_logs, import_jsonl
from tuneloop.data.jsonl import read_rows, write_rows
from tuneloop.data.pairs import build_pairs, pairs_from_file
from tuneloop.data.relabel import relabel
from tuneloop.errors import TuneloopError
from tuneloop.review.queue import approve_item, correct_item, create_item, lock_item
from tuneloop.store import RequestLog, session_scope
from tuneloop.store.logs import build_filter
from tuneloop.task import load_task
from tuneloop.testing.fake_upstream import FakeUpstream

TEACHER = "openai/gpt-4o-mini"  # the `openai` upstream is pointed at the fake teacher below
SPEC = load_task(TASK)


def document(n: int) -> str:
    return f"Newrez letter {n}: the payoff is ${1000 + n:,.2f} for loan ending {1000 + n}."


def fields(n: int, **changes: Any) -> dict[str, Any]:
    values = {name: None for name in SPEC.field_names}
    values.update({"payoff_amount": 1000.0 + n, "account_last4": str(1000 + n), "servicer": "Newrez"})
    return {**values, **changes}


def answer(n: int, **changes: Any) -> str:
    return SPEC.answer_json(fields(n, **changes))


def prompt(n: int) -> list[dict[str, str]]:
    return SPEC.build_messages({"text": document(n)})


def log_call(n: int, reply: str, *, failed: bool = False, tags: dict[str, str] | None = None) -> int:
    """A logged call through the capture path (the store's log writer); ``failed``: the policy's checks
    failed it, recorded in the response's ``tuneloop.checks`` as the gateway does."""
    response: dict[str, Any] = {
        "id": "c",
        "object": "chat.completion",
        "created": 1,
        "model": f"{TASK}@1",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": reply}, "finish_reason": "stop"}],
    }
    if failed:
        response["tuneloop"] = {"checks": {"task": TASK, "passed": False, "failures": ["x"], "action": "escalate"}}
    record = CallRecord(
        model_requested=f"{TASK}@prod",
        request={"model": f"{TASK}@prod", "messages": prompt(n)},
        status="ok",
        http_status=200,
        response=response,
        metadata=tags or {},
        tags=[f"{key}={value}" for key, value in (tags or {}).items()],
    )
    StoreSink().write([record])
    with session_scope() as session:
        return session.scalar(sa.select(RequestLog.id).where(RequestLog.capture_id == record.capture_id))


def review(n: int, draft_text: str, draft_fields: dict[str, Any] | None) -> int:
    return create_item(
        task=TASK,
        request={"model": f"{TASK}@prod", "messages": prompt(n)},
        draft_text=draft_text,
        draft_fields=draft_fields,
        failed_checks=["payoff_amount looks wrong"],
        model=f"{TASK}@1",
    )


def teacher_answer(body: dict[str, Any]) -> str:
    """The teacher reads the letter's number and answers a payoff of 2000 + N."""
    number = int(re.search(r"letter (\d+)", body["messages"][-1]["content"]).group(1))
    return answer(number, payoff_amount=2000.0 + number)


@pytest.fixture
def teacher(tuneloop_home: Path) -> Iterator[FakeUpstream]:
    fake = FakeUpstream(teacher_answer)
    with fake.running() as url:
        (tuneloop_home / "config.yaml").write_text(yaml.safe_dump({"upstreams": {"openai": {"base_url": url}}}))
        yield fake


def fill_store(tmp_path: Path) -> None:
    """Letters 0-8, each a case of the three sources (the comments say which pair it should give)."""
    task_tag = {"task": TASK}
    # corrections: 0 (draft 1000 → 2000), 1 (a draft that is not JSON), 2 (corrected to what it was: no pair)
    log_call(0, answer(0), failed=True, tags=task_tag)  # also a failed check with a verified label: a duplicate
    for n, text, parsed, changes in (
        (0, answer(0), fields(0), {"payoff_amount": 2000.0}),
        (1, "the payoff is about a thousand", None, fields(1, payoff_amount=2001.0)),
        (2, answer(2), fields(2), {"servicer": "Newrez"}),
    ):
        item = review(n, text, parsed)
        lock_item(item, "ana")
        correct_item(item, "ana", changes)
    # checks: 3 (failed, a human label imported: a pair), 4 (failed, no label: none), 5 (failed, yet approved
    # by a person as it was: the same answer, no pair). 3 names its task only in the checks' record.
    log_call(3, answer(3, interest_rate=45.0), failed=True)
    write_rows(tmp_path / "verified.jsonl", [{"messages": [*prompt(3), {"role": "assistant", "content": answer(3)}]}])
    import_jsonl(tmp_path / "verified.jsonl", "verified", task=TASK, provenance="human")
    log_call(4, answer(4, interest_rate=45.0), failed=True, tags=task_tag)
    log_call(5, answer(5), failed=True, tags=task_tag)
    approve_item(review(5, answer(5), fields(5)), "ana")
    # teacher: 6 and 7 (a weak answer the teacher corrects: pairs), 8 (logged as the teacher says: no pair)
    weak = {**task_tag, "kind": "weak"}
    log_call(6, answer(6), tags=weak)
    log_call(7, "```json\n" + answer(7) + "\n```", tags=weak)  # fenced: canonicalised before comparing
    log_call(8, answer(8, payoff_amount=2008.0), tags=weak)
    dataset_from_logs("weak", build_filter(["tag.kind=weak"]), task=TASK, test_fraction=0.0)
    assert relabel("weak", TEACHER, concurrency=2).asked == 3  # 8 agrees with its logged answer


def test_pairs_come_from_corrections_checks_and_a_teacher_once_per_input(
    teacher: FakeUpstream, tmp_path: Path, tiny_base: Path
) -> None:
    fill_store(tmp_path)
    pair_set = build_pairs(TASK)
    counts = {name: (c.found, c.identical, c.duplicate, c.kept) for name, c in pair_set.counts.items()}
    assert counts == {"corrections": (3, 1, 0, 2), "checks": (3, 1, 1, 1), "teacher": (3, 1, 0, 2)}
    by_letter = {int(re.search(r"letter (\d+)", p.prompt[-1]["content"]).group(1)): p for p in pair_set.pairs}
    assert sorted(by_letter) == [0, 1, 3, 6, 7]
    assert by_letter[0].source == "corrections" and by_letter[0].prompt == prompt(0)  # the task's own messages
    assert (by_letter[0].chosen, by_letter[0].rejected) == (answer(0, payoff_amount=2000.0), answer(0))
    assert by_letter[1].rejected == "the payoff is about a thousand"  # a draft that did not parse, as written
    assert (by_letter[3].source, by_letter[3].chosen, by_letter[3].rejected) == (
        "checks",
        answer(3),
        answer(3, interest_rate=45.0),
    )
    assert by_letter[3].ids["request"] is not None and by_letter[3].ids["entry"] is not None
    assert (by_letter[7].source, by_letter[7].chosen, by_letter[7].rejected) == (
        "teacher",
        answer(7, payoff_amount=2007.0),
        answer(7),  # the fenced logged answer, canonicalised
    )
    assert by_letter[7].ids["teacher"] == TEACHER and by_letter[7].ids["teacher_label"] is not None

    # The hash covers what trains, in order: the same store gives the same hash; another selection another.
    assert build_pairs(TASK).sha256 == pair_set.sha256
    only_teacher = build_pairs(TASK, "teacher")
    assert only_teacher.sources == ("teacher",) and len(only_teacher.pairs) == 2
    assert only_teacher.sha256 != pair_set.sha256
    limited = build_pairs(TASK, limit=2)
    assert len(limited.pairs) == 2 and limited.counts["teacher"].limited == 2
    with pytest.raises(TuneloopError, match="unknown pair source") as error:
        build_pairs(TASK, "corrections,logs")
    assert error.value.where == "--source"

    # The CLI shows the counts and examples, and exports TRL's conversational preference format.
    out = tmp_path / "pairs.jsonl"
    shown = CliRunner().invoke(app, ["data", "pairs", "--task", TASK, "--out", str(out)], env={"COLUMNS": "200"})
    assert shown.exit_code == 0, shown.output
    assert "corrections" in shown.output and "teacher" in shown.output and pair_set.sha256[:16] in shown.output
    from transformers import AutoTokenizer
    from trl.data_utils import apply_chat_template, is_conversational

    tokenizer = AutoTokenizer.from_pretrained(tiny_base)
    exported = read_rows(out, require_messages=False)
    assert len(exported) == 5
    for row, pair in zip(exported, pair_set.pairs, strict=True):
        assert is_conversational(row)
        assert row["chosen"] == [{"role": "assistant", "content": pair.chosen}]
        assert row["rejected"] == [{"role": "assistant", "content": pair.rejected}]
        rendered = apply_chat_template({k: row[k] for k in ("prompt", "chosen", "rejected")}, tokenizer)
        assert rendered["prompt"].endswith("<|im_start|>assistant\n") and pair.chosen in rendered["chosen"]
    assert pairs_from_file(out, SPEC).sha256 == pair_set.sha256  # read back: the same pairs


def test_no_pairs_says_which_sources_were_empty_and_how_to_get_some() -> None:
    result = CliRunner().invoke(app, ["data", "pairs", "--task", TASK, "--source", "corrections,teacher"])
    assert result.exit_code == 1
    text = " ".join(result.output.split())
    assert "no preference pairs for task liability-extraction: no source gave one (corrections, teacher)" in text
    assert "tuneloop review correct" in text and "tuneloop data relabel" in text


def test_dpo_trains_an_sft_version_further_and_registers_it(
    teacher: FakeUpstream, tiny_base: Path, tmp_path: Path
) -> None:
    from tuneloop.registry.versions import list_versions
    from tuneloop.train import train

    sft = {"max_steps": 2, "per_device_train_batch_size": 4, "learning_rate": 5e-3, "eval_strategy": "no"}
    data = write_jsonl(tmp_path / "train.jsonl", rows(12, split="train"))
    parent = train(TASK, data, str(tiny_base), write_config(tmp_path / "sft.yaml", sft)).version
    assert parent.id == f"{TASK}@1"

    # Refused, each with the fix: no pairs yet, no parent, a parent that is no version or of another task or
    # base, options of SFT runs, a parent given to SFT.
    with pytest.raises(TuneloopError, match="no preference pairs") as error:
        train(TASK, method="dpo", parent=parent.id)
    assert "review" in str(error.value) and error.value.where == "--data pairs:"
    refusals = [
        ({"parent": None}, "--parent", "train an SFT version first"),
        ({"parent": "smollm2-135m-instruct"}, "--parent smollm2-135m-instruct", "name a version"),
        ({"parent": "receipt-extraction@1"}, "--parent receipt-extraction@1", "--task receipt-extraction"),
        ({"parent": parent.id, "base": "smollm2-135m-instruct"}, "--base smollm2-135m-instruct", "leave out --base"),
        ({"parent": parent.id, "time_budget": "5m"}, "--time-budget", "leave out --time-budget"),
    ]
    fill_store(tmp_path)
    for arguments, where, fix in refusals:
        with pytest.raises(TuneloopError) as error:
            train(TASK, **{"method": "dpo", **arguments})
        assert error.value.where == where and fix in (error.value.hint or ""), (arguments, str(error.value))
    with pytest.raises(TuneloopError, match="SFT trains a base") as error:
        train(TASK, data, str(tiny_base), parent=parent.id)
    assert "--method dpo" in error.value.hint

    # DPO through the CLI, on the store's pairs; the reference is the parent, so the first loss is ln 2.
    config = tmp_path / "dpo.yaml"
    dpo = {"max_steps": 3, "learning_rate": 5e-3, "logging_steps": 1}
    config.write_text(yaml.safe_dump({"dpo": dpo, "validation_fraction": 0.4}))  # 2 of the 5 pairs held back
    ran = CliRunner().invoke(
        app,
        ["train", "--task", TASK, "--method", "dpo", "--parent", parent.id, "--config", str(config)],
        env={"COLUMNS": "200"},
    )
    assert ran.exit_code == 0, ran.output
    assert f"{TASK}@2 registered" in ran.output and "reward margin" in ran.output and "held-back pairs" in ran.output
    child = list_versions(TASK)[-1]
    assert child.id == f"{TASK}@2" and child.base_id == parent.base_id
    pair_set = build_pairs(TASK)
    assert child.config["method"] == "dpo"
    assert child.config["parent"] == {"id": parent.id, "content_hash": parent.content_hash}
    assert child.config["pairs"]["sha256"] == pair_set.sha256
    assert (child.config["pairs"]["train"], child.config["pairs"]["validation"]) == (3, 2)
    assert child.dataset_ref == f"pairs:corrections,checks,teacher#sha256:{pair_set.sha256[:16]}"
    assert child.config["train"]["dpo"]["max_steps"] == 3 and child.config["train"]["lora"]["r"] == 4
    assert math.isclose(child.metrics["first_loss"], math.log(2), abs_tol=1e-4)
    assert child.metrics["rewards_margins"] is not None and child.metrics["train_loss"] is not None
    assert child.metrics["eval_rewards_accuracies"] is not None  # the held-back pairs, scored at the end
    assert child.loss_curve_path is not None and child.loss_curve_path.read_bytes()[:4] == b"\x89PNG"
    # The child's adapter is the parent's trained further: the same tensors, other values; no reference copy.
    before, after = (
        load_file(parent.adapter_path / "adapter_model.safetensors"),
        load_file(child.adapter_path / "adapter_model.safetensors"),
    )
    assert before.keys() == after.keys() and not any(".ref." in name for name in after)
    assert any(not before[name].equal(after[name]) for name in before)
    assert json.loads((child.adapter_path / "adapter_config.json").read_text())["r"] == 4

    shown = CliRunner().invoke(app, ["models", "show", child.id], env={"COLUMNS": "250"})
    assert shown.exit_code == 0 and f"dpo, from {parent.id}" in shown.output and "dpo config" in shown.output


def test_a_text_task_pairs_its_corrected_text_against_the_draft() -> None:
    summary = load_task("message-summary")
    request = {"model": "message-summary@1", "messages": summary.build_messages({"text": "Newrez: payoff $1,200."})}
    item = create_item(
        task="message-summary",
        request=request,
        draft_text="  Newrez wrote.  ",
        draft_fields=None,
        failed_checks=[],
        model="message-summary@1",
    )
    lock_item(item, "ana")
    correct_item(item, "ana", {"text": "Newrez states a payoff of $1,200."})
    (pair,) = build_pairs("message-summary").pairs
    assert (pair.source, pair.chosen, pair.rejected) == (
        "corrections",
        "Newrez states a payoff of $1,200.",
        "Newrez wrote.",
    )
    assert pair.prompt == request["messages"]
