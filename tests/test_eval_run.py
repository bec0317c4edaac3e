"""Running evals end to end: the bundled base through the local llama.cpp backend, and through an
OpenAI-compatible HTTP endpoint on loopback reached with the official ``openai`` client.

The endpoint is a small FastAPI app started here on 127.0.0.1 that answers ``/v1/chat/completions``
(streamed and whole) with the bundled base; what is under test is our side of the wire. Examples are
three short hand-written letters and answers are cut at a few tokens, to keep the model time small.
"""

from __future__ import annotations

import io
import json
import signal
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console
from typer.testing import CliRunner

from tuneloop.bases import DEFAULT_BASE, resolve_base
from tuneloop.cli.main import app
from tuneloop.cost import monthly_cost
from tuneloop.data.jsonl import write_rows
from tuneloop.errors import TuneloopError
from tuneloop.evals.candidates import ModelSpec
from tuneloop.evals.runner import EvalInterrupted, EvalOptions, resume_eval, run_eval
from tuneloop.evals.store import get_run, list_runs, run_results
from tuneloop.serve.backends import GenerationParams, get_backend
from tuneloop.serve.backends.llamacpp import LlamaCppBackend
from tuneloop.task import Task, load_task

LETTERS = [
    (
        "Payoff quote from Rocket Mortgage for loan ending 0042: payoff amount $1,234.56, good through "
        "April 15, 2026. Interest rate 6.125%.",
        {
            "payoff_amount": 1234.56,
            "escrow_balance": None,
            "next_due_date": "2026-04-15",
            "interest_rate": 6.125,
            "account_last4": "0042",
            "servicer": "Rocket Mortgage",
        },
    ),
    (
        "Mr. Cooper escrow notice, account ****9911. Escrow balance: $1,800.25. Next payment due 05/01/2026.",
        {
            "payoff_amount": None,
            "escrow_balance": 1800.25,
            "next_due_date": "2026-05-01",
            "interest_rate": None,
            "account_last4": "9911",
            "servicer": "Mr. Cooper",
        },
    ),
    (
        "Hi, this is Sam from Chase about loan 5150: your rate is 4.5 percent.",
        {
            "payoff_amount": None,
            "escrow_balance": None,
            "next_due_date": None,
            "interest_rate": 4.5,
            "account_last4": "5150",
            "servicer": "Chase",
        },
    ),
]
MAX_TOKENS = 12  # enough to see the start of an answer; the model time of the whole module stays small


@pytest.fixture(scope="module")
def task() -> Task:
    return load_task("liability-extraction")


@pytest.fixture
def ctrl_c_raises() -> Iterator[None]:
    """Ctrl-C as a terminal gives it: a process started in the background by a shell without job control
    inherits SIGINT ignored (POSIX), and Python then leaves it ignored, so the test would not see it."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.fixture
def data(tmp_path: Path, task: Task) -> Path:
    rows = []
    for index, (text, fields) in enumerate(LETTERS):
        messages = [*task.build_messages({"text": text}), {"role": "assistant", "content": task.answer_json(fields)}]
        rows.append({"id": f"letter-{index}", "messages": messages, "metadata": {"fields": fields}})
    path = tmp_path / "gold.jsonl"
    write_rows(path, rows)
    return path


def quiet() -> Console:
    return Console(file=io.StringIO(), width=120)


# --- an OpenAI-compatible endpoint on loopback ---------------------------------------------------


def chat_app(backend: LlamaCppBackend, model_name: str) -> Any:
    """/v1/chat/completions over our llama.cpp backend: whole answers, and SSE chunks with usage last."""
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse, StreamingResponse

    api = FastAPI()

    def count_tokens(text: str) -> int:
        return len(backend.llama.tokenize(text.encode(), add_bos=False, special=True))

    @api.post("/v1/chat/completions")
    def chat_completions(body: dict[str, Any]) -> Any:
        if body.get("model") != model_name:
            error = {"message": f"The model `{body.get('model')}` does not exist.", "type": "invalid_request_error"}
            return JSONResponse({"error": error}, status_code=404)
        messages = body["messages"]
        params = GenerationParams(
            max_tokens=body.get("max_tokens") or 256,
            temperature=body.get("temperature", 0.0),
            top_p=body.get("top_p", 1.0),
        )
        completion_id, created = f"chatcmpl-{uuid.uuid4().hex[:12]}", int(time.time())
        if not body.get("stream"):
            generation = backend.generate(messages, params)
            return {
                "id": completion_id,
                "object": "chat.completion",
                "created": created,
                "model": model_name,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": generation.text},
                        "finish_reason": generation.finish_reason,
                    }
                ],
                "usage": {
                    "prompt_tokens": generation.prompt_tokens,
                    "completion_tokens": generation.completion_tokens,
                    "total_tokens": generation.prompt_tokens + generation.completion_tokens,
                },
            }

        def events() -> Iterator[str]:
            def chunk(delta: dict[str, Any] | None, finish_reason: str | None = None, **extra: Any) -> str:
                choices = [{"index": 0, "delta": delta, "finish_reason": finish_reason}] if delta is not None else []
                payload = {
                    "id": completion_id,
                    "object": "chat.completion.chunk",
                    "created": created,
                    "model": model_name,
                    "choices": choices,
                    **extra,
                }
                return f"data: {json.dumps(payload)}\n\n"

            yield chunk({"role": "assistant", "content": ""})
            parts = []
            for delta in backend.stream(messages, params):
                parts.append(delta)
                yield chunk({"content": delta})
            text = "".join(parts)
            yield chunk({}, "length" if count_tokens(text) >= params.max_tokens else "stop")
            if (body.get("stream_options") or {}).get("include_usage"):
                prompt_tokens = count_tokens(backend.format_prompt(messages))
                usage = {
                    "prompt_tokens": prompt_tokens,
                    "completion_tokens": count_tokens(text),
                    "total_tokens": prompt_tokens + count_tokens(text),
                }
                yield chunk(None, usage=usage)  # the last chunk: no choices, only usage
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    return api


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    """Base URL of a real HTTP server on 127.0.0.1 (uvicorn in a thread) serving the bundled base."""
    import uvicorn

    backend = get_backend("llamacpp", resolve_base(DEFAULT_BASE))
    assert isinstance(backend, LlamaCppBackend)
    server = uvicorn.Server(
        uvicorn.Config(chat_app(backend, DEFAULT_BASE), host="127.0.0.1", port=0, log_level="error")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline, "the test server did not start"
        time.sleep(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}/v1"
    server.should_exit = True
    thread.join(timeout=10)
    backend.close()


# --- a local backend -----------------------------------------------------------------------------


@pytest.mark.slow
def test_local_base_run_then_cached_rerun(
    task: Task, data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    options = EvalOptions(max_tokens=MAX_TOKENS, requests_per_day=1_000_000)
    report = run_eval(task, str(data), [DEFAULT_BASE], options, console=quiet())
    (model,) = report.models
    assert report.status == "done" and report.n == 3
    assert model.name == DEFAULT_BASE and model.kind == "local"
    assert model.results == 3 and model.cached == 0 and model.failed_requests == 0
    latency = model.latency
    assert latency is not None and 0 < latency.p50_ms <= latency.p95_ms <= latency.p99_ms
    assert latency.ttft_p50_ms is not None and 0 < latency.ttft_p50_ms < latency.p99_ms
    assert latency.output_tokens_per_s and latency.output_tokens_per_s > 0
    assert model.cost_basis and model.cost_basis.startswith("self-hosted")
    assert model.cost_per_1k_usd and model.cost_per_1k_usd > 0
    assert model.cost_per_month_usd == pytest.approx(monthly_cost(model.cost_per_1k_usd, 1_000_000))
    assert model.spent_usd == pytest.approx(model.cost_per_1k_usd * 3 / 1000)
    assert set(model.verdict.checks) == {"max_error_rate", "max_p95_latency_ms", "max_cost_per_1k_requests_usd"}
    stored = run_results(report.run_id)
    assert len(stored) == 3 and all(r.output is not None and r.cache_key and r.completion_tokens for r in stored)
    assert all(r.completion_tokens <= MAX_TOKENS for r in stored)  # type: ignore[operator]

    # The same command again costs nothing: every answer comes from the cache, the model never loads.
    def refuse_to_load(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a fully cached run loaded the model")

    monkeypatch.setattr("tuneloop.evals.candidates.get_backend", refuse_to_load)
    again = run_eval(task, str(data), [DEFAULT_BASE], options, console=quiet())
    (cached,) = again.models
    assert again.run_id != report.run_id and cached.cached == 3 and cached.spent_usd == 0
    assert cached.summary == model.summary and cached.latency == model.latency  # measured latency is kept
    assert [r.output for r in run_results(again.run_id)] == [r.output for r in stored]

    out_json, out_html = tmp_path / "report.json", tmp_path / "report.html"
    command = ["eval", "run", "--task", "liability-extraction", "--data", str(data), "--model", DEFAULT_BASE]
    outputs = ["--json", str(out_json), "--html", str(out_html)]
    result = CliRunner().invoke(app, [*command, "--max-tokens", str(MAX_TOKENS), "--volume", "1M/day", *outputs])
    assert result.exit_code == 0, result.output
    written = json.loads(out_json.read_text())
    (entry,) = written["models"]
    assert entry["latency_ms"]["p95"] == pytest.approx(latency.p95_ms)
    assert entry["cost_per_1k_usd"] == pytest.approx(model.cost_per_1k_usd)
    assert entry["cached"] == 3 and written["requests_per_day"] == 1_000_000
    assert out_html.read_text().count("data:image/png;base64,") == 3  # scatter, latency CDF, fields


@pytest.mark.slow
def test_a_float_rewrite_is_its_own_engine_and_a_resumed_run_keeps_it(
    task: Task, data: Path, converted_home: Path, ctrl_c_raises: None
) -> None:
    """``--llamacpp-weights f16`` evaluates the engine ``tuneloop serve --llamacpp-weights f16`` runs: its own
    label and cache entries, and a resumed run goes on with the same weights, not the native file."""
    from tuneloop.config import get_settings

    bases = get_settings().cache_dir / "bases"
    bases.parent.mkdir(parents=True, exist_ok=True)
    bases.symlink_to(converted_home / "cache" / "bases")  # the conversion and its f16 rewrite are made once
    f16 = ModelSpec(DEFAULT_BASE, backend_options={"weights": "f16"})
    options = EvalOptions(max_tokens=MAX_TOKENS)

    def press_ctrl_c_after_the_first(model: str, stored: int) -> None:
        if stored == 1:
            signal.raise_signal(signal.SIGINT)

    with pytest.raises(EvalInterrupted) as caught:
        run_eval(task, str(data), [f16], options, console=quiet(), on_result=press_ctrl_c_after_the_first)
    resumed = resume_eval(caught.value.run_id, console=quiet())
    (model,) = resumed.models
    assert model.name == f"{DEFAULT_BASE} [llamacpp:f16]" and model.results == 3

    native = run_eval(task, str(data), [DEFAULT_BASE], options, console=quiet())
    assert native.models[0].name == DEFAULT_BASE and native.models[0].cached == 0  # not the f16 answers


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--backend", "transformers", "--llamacpp-weights", "f16"], "applies to the llamacpp backend"),
        (["--llamacpp-weights", "q8"], "unknown llama.cpp weights 'q8'"),
    ],
)
def test_llamacpp_weights_that_cannot_apply_are_refused_before_any_model_runs(
    data: Path, options: list[str], message: str
) -> None:
    command = ["eval", "run", "--task", "liability-extraction", "--data", str(data), "--model", DEFAULT_BASE]
    result = CliRunner().invoke(app, [*command, *options])
    assert isinstance(result.exception, TuneloopError), result.output
    assert message in str(result.exception)
    assert list_runs() == []  # nothing started, nothing half-written


# --- an endpoint, through the openai client --------------------------------------------------------


@pytest.mark.slow
def test_endpoint_streamed_and_whole_answers_agree(task: Task, data: Path, endpoint: str) -> None:
    model_id = f"{endpoint}#{DEFAULT_BASE}"
    streamed = run_eval(task, str(data), [model_id], EvalOptions(max_tokens=MAX_TOKENS, concurrency=2), console=quiet())
    (model,) = streamed.models
    assert model.kind == "endpoint" and model.results == 3 and model.failed_requests == 0
    assert model.identity == model_id
    latency = model.latency
    assert latency is not None and latency.ttft_p50_ms is not None and latency.ttft_p50_ms < latency.p99_ms
    assert model.cost_basis and model.cost_basis.startswith("self-hosted")  # an endpoint URL: machine time
    streamed_rows = run_results(streamed.run_id)
    assert all(r.prompt_tokens and r.completion_tokens for r in streamed_rows)  # usage from the last chunk

    whole = run_eval(
        task,
        str(data),
        [model_id],
        EvalOptions(max_tokens=MAX_TOKENS, stream=False, use_cache=False),
        console=quiet(),
    )
    (whole_model,) = whole.models
    assert whole_model.cached == 0 and whole_model.latency is not None and whole_model.latency.ttft_p50_ms is None
    whole_rows = run_results(whole.run_id)
    by_id = {r.example_id: r.output for r in whole_rows}
    assert {r.example_id: r.output for r in streamed_rows} == by_id  # greedy: the same text both ways
    assert whole_model.summary == model.summary


@pytest.mark.slow
def test_ctrl_c_keeps_finished_answers_and_the_run_resumes(
    task: Task, data: Path, endpoint: str, ctrl_c_raises: None
) -> None:
    model_id = f"{endpoint}#{DEFAULT_BASE}"
    options = EvalOptions(max_tokens=MAX_TOKENS - 2)

    def press_ctrl_c_after_the_first(model: str, stored: int) -> None:
        if stored == 1:
            signal.raise_signal(signal.SIGINT)  # what Ctrl-C does: KeyboardInterrupt in the main thread

    with pytest.raises(EvalInterrupted) as caught:
        run_eval(task, str(data), [model_id], options, console=quiet(), on_result=press_ctrl_c_after_the_first)
    run_id = caught.value.run_id
    assert caught.value.kept == 1
    assert get_run(run_id).status == "interrupted" and len(run_results(run_id)) == 1

    resumed = resume_eval(run_id, console=quiet())
    assert resumed.run_id == run_id and resumed.status == "done" and get_run(run_id).status == "done"
    rows = run_results(run_id)
    assert sorted(r.example_id for r in rows) == ["letter-0", "letter-1", "letter-2"]
    with pytest.raises(TuneloopError, match="is complete"):
        resume_eval(run_id)

    # Running the interrupted command again instead is just as cheap: all answers are cached.
    rerun = run_eval(task, str(data), [model_id], options, console=quiet())
    assert rerun.models[0].cached == 3


@pytest.mark.slow
def test_an_unknown_model_at_the_endpoint_is_a_clear_error(task: Task, data: Path, endpoint: str) -> None:
    with pytest.raises(TuneloopError, match="HTTP 404") as caught:
        run_eval(task, str(data), [f"{endpoint}#no-such-model"], EvalOptions(max_tokens=4), console=quiet())
    assert caught.value.where == f"model {endpoint}#no-such-model"
    assert "does not exist" in caught.value.message


def test_an_unreachable_endpoint_fails_after_bounded_retries(task: Task, data: Path) -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    started = time.monotonic()
    with pytest.raises(TuneloopError, match="cannot reach") as caught:
        run_eval(task, str(data), [ModelSpec(f"http://127.0.0.1:{port}/v1#m")], console=quiet())
    assert time.monotonic() - started < 20
    assert "3 attempts" in caught.value.message and "--resume" in (caught.value.hint or "")
    (run,) = list_runs()  # the run was stored (the data and model id were fine), and marked failed
    assert run.status == "failed"


COPYING_TASK = """
name: copied-receipts
instructions: Answer with JSON only, with the keys shop, day and total, copied from the receipt.
output_schema:
  type: object
  additionalProperties: false
  required: [shop, day, total]
  properties:
    shop: {type: [string, "null"]}
    day: {type: [string, "null"], format: date}
    total: {type: [number, "null"]}
fields:
  shop: {compare: fuzzy, extract: verbatim}
  day: {compare: date, extract: verbatim, formats: ["%d/%m/%Y"]}
  total: {compare: number, extract: verbatim}
decoding: {max_tokens: 40}
"""
RECEIPTS = [
    ("KEDAI AH SENG\nDate: 03/04/2018 Inv 559412\nSUBTOTAL 9.00 TOTAL RM 9.54", ("KEDAI AH SENG", "2018-04-03", 9.54)),
    ("SANYU STATIONERY\n19/10/2017 11:05\nTOTAL 28.15 CASH 50.00", ("SANYU STATIONERY", "2017-10-19", 28.15)),
]


@pytest.mark.slow
def test_a_version_copies_values_from_each_examples_input(tuneloop_home: Path, tmp_path: Path) -> None:
    from test_serve import register_random_version
    from tuneloop.extraction import source_text, value_in_input

    (tuneloop_home / "tasks").mkdir(exist_ok=True)
    (tuneloop_home / "tasks" / "copied-receipts.yaml").write_text(COPYING_TASK, encoding="utf-8")
    task = load_task("copied-receipts")
    version = register_random_version(tmp_path / "made", 5, task_name=task.name)
    rows = []
    for index, (text, (shop, day, total)) in enumerate(RECEIPTS):
        fields = {"shop": shop, "day": day, "total": total}
        messages = [*task.build_messages({"text": text}), {"role": "assistant", "content": task.answer_json(fields)}]
        rows.append({"id": f"receipt-{index}", "messages": messages})
    data = tmp_path / "receipts.jsonl"
    write_rows(data, rows)

    constrained = run_eval(task, str(data), [version.id], EvalOptions(), console=quiet())
    (model,) = constrained.models
    assert model.summary.invented == 0 and model.summary.invalid_rate == 0
    for result, row in zip(run_results(constrained.run_id), rows, strict=True):
        answer = json.loads(result.output)
        source = source_text(row["messages"][:-1])
        assert all(value_in_input(task, name, answer[name], source) for name in task.field_names), answer

    # --plain-schema decodes under the task's own schema: a different request, not the cached answer
    plain = run_eval(task, str(data), [version.id], EvalOptions(constrain_values=False), console=quiet())
    assert plain.models[0].cached == 0 and plain.models[0].results == 2


@pytest.mark.slow
def test_versions_of_two_bases_in_one_run_locally_and_through_one_server(
    task: Task, data: Path, tmp_path: Path
) -> None:
    """An eval compares versions whatever their base: in this process, and through one `tuneloop serve`
    that loads each base as it is asked for (serve/pool.py). Both ways give the same answers."""
    import shutil

    from test_serve import register_random_version
    from test_serve_pool import _register_on
    from tuneloop.serve.app import start_background_server
    from tuneloop.serve.engine import build_engine

    copy = tmp_path / "another-base.gguf"
    shutil.copyfile(resolve_base(DEFAULT_BASE).path, copy)
    on_bundled = register_random_version(tmp_path / "bundled", 11)
    on_copy = _register_on(resolve_base(str(copy)), tmp_path / "copy", seed=12)
    assert on_bundled.base_id != on_copy.base_id

    options = EvalOptions(max_tokens=MAX_TOKENS)
    local = run_eval(task, str(data), [on_bundled.id, on_copy.id], options, console=quiet())
    assert [model.name for model in local.models] == [on_bundled.id, on_copy.id]
    assert all(model.results == 3 and model.failed_requests == 0 for model in local.models)
    assert [model.base for model in local.models] == [on_bundled.base_id, on_copy.base_id]
    assert local.models[0].license_id == "apache-2.0"  # each candidate's base license is in the report

    server = start_background_server(build_engine(backend="llamacpp", threads=1, n_ctx=1024), auth="disabled")
    try:
        served = [f"{server.base_url}#{version.id}" for version in (on_bundled, on_copy)]
        remote = run_eval(task, str(data), served, options, console=quiet())
        assert all(model.results == 3 and model.failed_requests == 0 for model in remote.models)
        health = server.engine.health()
        assert {DEFAULT_BASE, on_copy.base_id} <= set(health["bases"])  # one server loaded both bases
    finally:
        server.stop()
    local_answers = [r.output for r in run_results(local.run_id)]
    remote_answers = [r.output for r in run_results(remote.run_id)]
    assert local_answers == remote_answers  # same engine, same grammar, greedy: the same answers
