"""`tuneloop monitor shadow`: replay a stable sample of a version's logged traffic to a candidate through the
serve engine (transformers backend on the tiny base), and report agreement and field error on reviewed calls."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from test_train_support import TASK, rows, write_config, write_jsonl
from tuneloop.errors import TuneloopError

SAMPLE = 0.5
# Logged with each request, so replays are as short: too few tokens to close the task's JSON object, so every
# answer of the tiny models parses to no fields (all null), which makes the expected numbers exact.
MAX_TOKENS = 12
SFT = {
    "max_steps": 2,
    "per_device_train_batch_size": 4,
    "gradient_accumulation_steps": 1,
    "logging_steps": 1,
    "save_steps": 2,
    "bf16": False,
}


def train_version(tiny_base: Path, tmp_path: Path, *, seed: int, learning_rate: float) -> Any:
    from tuneloop.train import train

    folder = tmp_path / f"run-{seed}"
    folder.mkdir()
    data = write_jsonl(folder / "train.jsonl", rows(16, seed=seed, split="train"))
    config = write_config(folder / "train.yaml", {**SFT, "seed": seed, "learning_rate": learning_rate})
    return train(TASK, data, str(tiny_base), config).version


def traffic(count: int) -> list[dict[str, Any]]:
    """Requests as a client sends them to the gateway (model ``extractor``, routed to ``local``)."""
    from tuneloop.task import load_task

    task = load_task(TASK)
    return [
        {
            "model": "extractor",
            "messages": task.build_messages(
                {"text": f"Newrez: payoff ${1000 + 137 * i:,.2f} for loan ending {i:04d}."}
            ),
            "max_tokens": MAX_TOKENS,
        }
        for i in range(count)
    ]


def is_sampled(request: dict[str, Any]) -> bool:
    from tuneloop.data.datasets import input_hash, request_options, sampled

    return sampled(input_hash(request["messages"], request_options(request)), SAMPLE)


def log_traffic(production: str, requests: list[dict[str, Any]], replace: dict[int, str] | None = None) -> list[Any]:
    """Answer ``requests`` with ``production`` through the serve engine and log the calls as the gateway does
    behind its upstream ``local`` (``replace``: answer contents to log instead, by index), plus one failed call.
    Returns the logged rows' (id, capture id) in order."""
    import sqlalchemy as sa

    from tuneloop.capture.logwriter import StoreSink
    from tuneloop.capture.records import CallRecord
    from tuneloop.protocol import ChatCompletionRequest
    from tuneloop.serve.engine import build_engine
    from tuneloop.store import RequestLog, session_scope

    engine = build_engine(backend="transformers", models=[production])

    async def answer_all() -> list[dict[str, Any]]:
        return [
            await engine.complete(ChatCompletionRequest.model_validate({**request, "model": production}))
            for request in requests
        ]

    try:
        answers = asyncio.run(answer_all())
    finally:
        engine.close()
    assert {answer["choices"][0]["finish_reason"] for answer in answers} == {"length"}  # see MAX_TOKENS
    for index, content in (replace or {}).items():
        answers[index]["choices"][0]["message"]["content"] = content
    records = [
        CallRecord(
            model_requested="extractor",
            request=request,
            status="ok",
            http_status=200,
            upstream="local",
            upstream_model=production,
            response=answer,
            latency_ms=50.0,
        )
        for request, answer in zip(requests, answers, strict=True)
    ]
    # A failed call of the same version: never replayed, not counted.
    records.append(
        CallRecord(
            model_requested="extractor",
            request=requests[0],
            status="error",
            http_status=502,
            upstream="local",
            upstream_model=production,
            error="upstream down",
        )
    )
    StoreSink().write(records)
    ok = sa.select(RequestLog.id, RequestLog.capture_id, RequestLog.model_resolved).where(RequestLog.status == "ok")
    with session_scope() as session:
        logged = session.execute(ok.order_by(RequestLog.id)).all()
    assert [model for _, _, model in logged] == [f"local/{production}"] * len(requests)
    return [(row_id, capture_id) for row_id, capture_id, _ in logged]


def test_shadow_replays_the_sample_and_scores_only_reviewed_calls(tiny_base: Path, tmp_path: Path) -> None:
    from tuneloop.monitor.shadow import shadow_replay
    from tuneloop.registry.promotion import promote
    from tuneloop.review.queue import approve_item, correct_item, create_item, reject_item
    from tuneloop.serve.engine import build_engine
    from tuneloop.task import load_task

    first = train_version(tiny_base, tmp_path, seed=1, learning_rate=5e-3)
    second = train_version(tiny_base, tmp_path, seed=2, learning_rate=2e-2)
    assert (first.id, second.id) == (f"{TASK}@1", f"{TASK}@2") and first.content_hash != second.content_hash
    promote(TASK, first.id, "prod")

    spec = load_task(TASK)
    requests = traffic(12)
    chosen = [i for i, request in enumerate(requests) if is_sampled(request)]
    skipped = [i for i in range(len(requests)) if i not in chosen]
    assert len(chosen) >= 3 and skipped  # a real sample
    # Production answered the first sampled call in full (the servicer only); the tiny candidate cannot.
    draft = {name: None for name in spec.field_names} | {"servicer": "Newrez"}
    logged = log_traffic(first.id, requests, replace={chosen[0]: spec.answer_json(draft)})

    # Reviews on sampled calls: one approved (by request id), one corrected (by capture id), one rejected and
    # one still pending; outside the sample, one corrected. Only the first two are scored.
    def item(index: int, by_capture: bool = False) -> int:
        request_id, capture_id = logged[index]
        return create_item(
            task=TASK,
            request=requests[index],
            draft_text=spec.answer_json(draft),
            draft_fields=draft,
            failed_checks=[],
            model=f"local/{first.id}",
            reason="audit",
            request_id=None if by_capture else request_id,
            capture_id=capture_id if by_capture else None,
        )

    approve_item(item(chosen[0]), "alice", to_dataset=False)
    correct_item(item(chosen[1], by_capture=True), "alice", {"payoff_amount": 1137.0}, to_dataset=False)
    reject_item(item(chosen[2]), "alice")
    item(chosen[2])
    correct_item(item(skipped[0]), "alice", {"payoff_amount": 1.0, "account_last4": "0000"}, to_dataset=False)

    engine = build_engine(backend="transformers", models=[second.id])
    try:
        report = shadow_replay(f"{TASK}@2", f"{TASK}@prod", sample=SAMPLE, engine=engine)
        again = shadow_replay(f"{TASK}@2", f"{TASK}@prod", sample=SAMPLE, engine=engine)
        capped = shadow_replay(f"{TASK}@2", f"{TASK}@prod", sample=SAMPLE, limit=2, engine=engine)
        with pytest.raises(TuneloopError, match="must be in"):
            shadow_replay(f"{TASK}@2", f"{TASK}@prod", sample=0, engine=engine)
    finally:
        engine.close()

    assert (report.candidate, report.against, report.task) == (second.id, first.id, TASK)
    assert report.matched == len(requests)  # the failed call is not a match
    assert report.replayed == len(chosen) and report.failed == 0 and report.errors == []
    # Both answer no fields, except production's full answer on one call: it disagrees there, on the servicer.
    n = len(chosen)
    assert report.agreement == pytest.approx((n - 1) / n) and 0.0 <= report.agreement <= 1.0
    assert report.field_agreement == {name: (n - 1) / n if name == "servicer" else 1.0 for name in spec.field_names}
    # Scored on the approved call (gold: the servicer) and the corrected one (servicer and payoff), 12 fields:
    # the candidate misses all three, production only the corrected call's two.
    assert report.reviewed == 2
    assert report.candidate_field_error == pytest.approx(3 / 12)
    assert report.production_field_error == pytest.approx(2 / 12)
    # The sample is stable: the same calls every run.
    assert (again.replayed, again.agreed, again.reviewed) == (report.replayed, report.agreed, report.reviewed)
    assert (capped.matched, capped.replayed) == (len(requests), 2)


def test_shadow_of_a_version_against_itself_agrees_and_the_cli_reports_it(
    tiny_base: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from tuneloop.cli.main import app, main
    from tuneloop.monitor.shadow import shadow_replay
    from tuneloop.registry.promotion import promote

    version = train_version(tiny_base, tmp_path, seed=3, learning_rate=1e-2)
    promote(TASK, version.id, "prod")
    requests = traffic(12)
    chosen = sum(map(is_sampled, requests))
    log_traffic(version.id, requests)

    # The library, building its own engine: the same version answers the same calls the same way.
    report = shadow_replay(f"{TASK}@1", f"{TASK}@prod", sample=SAMPLE, backend="transformers")
    assert (report.candidate, report.against, report.replayed, report.failed) == (version.id, version.id, chosen, 0)
    assert report.agreement == 1.0 and set(report.field_agreement.values()) == {1.0}
    assert report.reviewed == 0 and report.candidate_field_error is None and report.production_field_error is None

    runner = CliRunner(env={"COLUMNS": "250"})
    args = ["monitor", "shadow", "--against", f"{TASK}@prod", "--sample", str(SAMPLE), "--backend", "transformers"]
    shown = runner.invoke(app, [*args, "--candidate", f"{TASK}@1"])
    assert shown.exit_code == 0, shown.output
    assert f"shadow: {version.id} against {version.id} ({chosen} calls replayed)" in shown.output
    assert "agreement (all fields)" in shown.output and "100.0%" in shown.output
    assert "reviewed calls" in shown.output

    # An unknown candidate: a clear error naming it, exit code 2 from the `tuneloop` entry point.
    unknown = runner.invoke(app, [*args, "--candidate", f"{TASK}@9"])
    assert isinstance(unknown.exception, TuneloopError) and f"{TASK}@9" in str(unknown.exception)
    monkeypatch.setattr(sys, "argv", ["tuneloop", *args, "--candidate", f"{TASK}@9"])
    capsys.readouterr()
    with pytest.raises(SystemExit) as exited:
        main()
    assert exited.value.code == 2
    error = capsys.readouterr().err
    assert "error:" in error and f"{TASK}@9" in error and "no such version" in error
