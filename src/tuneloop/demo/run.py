"""`tuneloop demo`: the loop on the bundled model and the synthetic task, on a laptop CPU.

1. synthesize the demo task's documents with human-verified answers (train and test splits) and import
   them as a dataset;
2. evaluate the bundled base zero-shot on test documents through llama.cpp, the serving engine: field error
   with its interval, latency, cost and the verdict against the task's requirements;
3. capture: send some training documents through the gateway to the base (served by ``tuneloop serve``),
   build dataset entries from the logged calls, relabel them with a teacher when one is configured (else
   the human-verified labels stand); answers failing the task's checks land in the review queue;
4. fine-tune the base with LoRA on the dataset and register it as ``task@N``: by default within a time
   budget (``DEMO_TIME_BUDGET``: part of an epoch, one example a step, the whole demo in about 10 minutes on
   a 2-core CPU); ``full=True`` (``tuneloop demo --full``) trains a whole epoch (about 30 minutes there);
5. evaluate base and fine-tune side by side (the base's answers come from the eval cache);
6. promote the fine-tune to ``task@prod``, serve it, and send requests through the official ``openai``
   client; then say where the web UI shows the logs, datasets, evals, versions and the review queue.

``backends`` adds the transformers reference to step 2, at several times the CPU time.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console

from tuneloop.config import get_settings
from tuneloop.data.jsonl import write_rows
from tuneloop.demo.generators import synthesize_with_progress, synthesizer_for
from tuneloop.evals.candidates import ModelSpec
from tuneloop.evals.report import print_report, write_html, write_json
from tuneloop.evals.results import EvalReport
from tuneloop.evals.runner import EvalOptions, run_eval
from tuneloop.task import Task, load_task
from tuneloop.train.config import TrainConfig

DEMO_TASK = "liability-extraction"  # the default; `tuneloop demo --task` picks another task with a generator
DEMO_BASE = "smollm2-135m-instruct"
DEMO_DATASET = f"{DEMO_TASK}-demo"
# The production volume the seed story states costs at (16M extractions a day).
DEMO_REQUESTS_PER_DAY = 16_000_000
# --full: one epoch (~30 min on 2 cores); the rest (batch, learning rate...) is `tuneloop train`'s own choice.
DEMO_SCHEDULE = {"num_train_epochs": 1}
# The default: what fits DEMO_TIME_BUDGET of one epoch (train --time-budget picks the steps from a measured
# warm-up), one example per optimizer step: in a few minutes, more updates teach more than bigger batches.
DEMO_FAST_SCHEDULE = {"num_train_epochs": 1, "per_device_train_batch_size": 1, "gradient_accumulation_steps": 1}
DEMO_TIME_BUDGET = "6m"


def run_demo(
    out_dir: Path | None = None,
    n_documents: int = 600,
    n_eval: int = 20,
    seed: int = 0,
    backends: tuple[str, ...] = ("llamacpp",),
    extra_models: Sequence[str] = (),
    fine_tune: bool = True,
    n_captured: int | None = None,
    console: Console | None = None,
    task_name: str = DEMO_TASK,
    full: bool = False,
    time_budget: str | None = None,
) -> EvalReport:
    """The loop end to end; ``full`` trains a whole epoch instead of ``time_budget`` (default DEMO_TIME_BUDGET)."""
    from tuneloop.train.quiet import quiet_libraries

    with quiet_libraries():  # the demo's own output only: no library warnings or progress bars
        return _run_demo(
            out_dir,
            n_documents,
            n_eval,
            seed,
            backends,
            extra_models,
            fine_tune,
            n_captured if n_captured is not None else (12 if full else 6),
            console or Console(),
            task_name,
            None if full else (time_budget or DEMO_TIME_BUDGET),
        )


def _run_demo(
    out_dir: Path | None,
    n_documents: int,
    n_eval: int,
    seed: int,
    backends: tuple[str, ...],
    extra_models: Sequence[str],
    fine_tune: bool,
    n_captured: int,
    console: Console,
    task_name: str,
    time_budget: str | None,
) -> EvalReport:
    task = load_task(task_name)
    synthesizer_for(task.name)  # a task without a generator fails here, before anything is written
    dataset = f"{task.name}-demo"
    out_dir = out_dir or get_settings().home / "demo"
    out_dir.mkdir(parents=True, exist_ok=True)

    console.rule("[bold]1. Synthetic data")
    rows = synthesize_with_progress(task, n_documents, seed, console=console)
    data_path = out_dir / f"{task.name}.jsonl"
    write_rows(data_path, rows)
    test_rows = [r for r in rows if r["metadata"]["split"] == "test"]
    test_path = out_dir / f"{task.name}.test.jsonl"
    write_rows(test_path, test_rows)
    console.print(
        f"wrote {len(rows)} documents to {data_path} ({len(rows) - len(test_rows)} train, {len(test_rows)} test; "
        f"the test split also in {test_path.name})"
    )

    console.rule(f"[bold]2. Evaluate: the bundled base, zero-shot, on {min(n_eval, len(test_rows))} test documents")
    models = [ModelSpec(DEMO_BASE, backend=backend) for backend in backends]
    models += [ModelSpec(model) for model in extra_models]
    report = evaluate_models(task, test_path, models, limit=n_eval, out_dir=out_dir, console=console)
    if not fine_tune:
        return report

    console.rule("[bold]3. Capture: demo traffic through the gateway, a dataset from the logs, relabel")
    train_rows = [r for r in rows if r["metadata"]["split"] == "train"]
    capture_demo(task, data_path, train_rows[:n_captured], console, dataset=dataset)

    console.rule(f"[bold]4. Fine-tune: LoRA on dataset {dataset}")
    from tuneloop.train import train

    schedule = DEMO_SCHEDULE if time_budget is None else DEMO_FAST_SCHEDULE
    result = train(
        task,
        f"dataset:{dataset}",
        DEMO_BASE,
        TrainConfig(sft=dict(schedule)),
        time_budget=time_budget,
        console=console,
    )
    version = result.version
    console.print(
        f"registered [bold]{version.id}[/] (sha256:{version.content_hash[:12]}…) in {result.seconds:.0f} s "
        f"at {result.tokens_per_second:.0f} tokens/s"
    )

    console.rule("[bold]5. Evaluate: base vs fine-tune")
    report = evaluate_models(
        task, test_path, [*models, ModelSpec(version.id)], limit=n_eval, out_dir=out_dir, console=console
    )

    console.rule(f"[bold]6. Serve: promote {version.id} to {task.name}@prod and call it with the openai client")
    serve_demo(task, version.id, test_rows[: min(n_eval, 3)], console)
    show_review_and_ui(console)
    return report


def capture_demo(
    task: Task, data_path: Path, rows: Sequence[dict[str, Any]], console: Console, *, dataset: str = DEMO_DATASET
) -> None:
    """The capture half of the loop on loopback: ``tuneloop serve`` (the base) behind ``tuneloop gateway``,
    ``rows`` sent through the gateway with the openai client, then dataset ``dataset`` from the logged calls."""
    from openai import OpenAI

    from tuneloop.capture.config import GatewayConfig, Route
    from tuneloop.capture.server import running_gateway
    from tuneloop.data.datasets import dataset_from_logs, import_jsonl
    from tuneloop.data.relabel import default_teacher, relabel
    from tuneloop.serve.app import start_background_server
    from tuneloop.serve.engine import build_engine
    from tuneloop.store.logs import LogFilter
    from tuneloop.upstreams import Upstream

    imported = import_jsonl(data_path, dataset, task=task.name, provenance="human")
    console.print(f"dataset {dataset}: {imported.added} human-verified entries imported from {data_path.name}")

    # Loopback only, for the demo's own calls: no key, like the demo's gateway. With `auth: auto` a home where
    # someone ran `tuneloop keys create` (as the demo suggests) would refuse the gateway's keyless calls.
    server = start_background_server(build_engine(models=[DEMO_BASE]), auth="disabled")
    local = Upstream(name="local", base_url=server.base_url, self_hosted=True)
    config = GatewayConfig(
        upstreams={"local": local},
        routes=[Route(match="extractor", upstream="local", model=DEMO_BASE)],
        auth="disabled",
    )
    try:
        with running_gateway(config) as gateway:
            console.print(
                f"gateway on {gateway.base_url}, routing model 'extractor' to {DEMO_BASE} on {server.base_url}"
            )
            client = OpenAI(base_url=gateway.base_url, api_key="demo")
            escalated = 0
            for row in rows:
                reply = client.chat.completions.with_raw_response.create(
                    model="extractor",
                    messages=row["messages"][:-1],
                    max_tokens=task.decoding.max_tokens,
                    temperature=0,
                    metadata={"task": task.name, "source": "demo"},
                )
                escalated += bool(reply.headers.get("x-tuneloop-review"))
                overhead = float(reply.headers.get("x-tuneloop-overhead-ms", "nan"))
                checks = float(reply.headers.get("x-tuneloop-checks-ms", "0"))
                # The gateway's own cost, apart from the task's checks (a failed answer's review item is
                # written durably before the answer goes back, so the client gets its id).
                console.print(
                    f"[dim]{row['id']}[/] answered by {reply.parse().model}: gateway overhead {overhead:.2f} ms, "
                    f"checks {checks:.1f} ms"
                    + (" (escalated to review)" if reply.headers.get("x-tuneloop-review") else ""),
                    highlight=False,
                )
    finally:
        server.stop()
    console.print(
        f"{len(rows)} calls logged; {escalated} answers failed the task's checks and went to the review queue"
    )

    added = dataset_from_logs(dataset, LogFilter(metadata={"task": task.name, "source": "demo"}), task=task.name)
    console.print(
        f"from the logs: {added.added} entries added to {dataset} (provenance 'log', linked to their requests)"
    )
    teacher = default_teacher()
    if teacher is None:
        console.print(
            "no teacher configured (set TUNELOOP_TEACHER=<upstream>/<model>, or OPENAI_API_KEY): the human-verified "
            "labels stand in for the teacher's, and outrank the logged answers when the dataset is resolved"
        )
    else:
        outcome = relabel(dataset, teacher, console=console)
        console.print(
            f"relabelled with {teacher}: {outcome.asked} asked, {outcome.kept} kept, {len(outcome.failing)} failing "
            f"the task's checks (kept out of training), {outcome.skipped_human} human-verified left as they are"
        )


def serve_demo(task: Task, version_id: str, rows: Sequence[dict], console: Console) -> None:
    """Promote ``version_id`` to prod, serve ``task@prod`` on loopback, and ask it through the openai client."""
    from openai import OpenAI

    from tuneloop.registry.promotion import promote
    from tuneloop.serve.app import start_background_server
    from tuneloop.serve.engine import build_engine

    move = promote(task.name, version_id, "prod", actor="tuneloop demo", reason="demo fine-tune")
    console.print(f"{task.name}@prod: {move.from_version or '(new alias)'} → {move.to_version}")
    engine = build_engine(models=[f"{task.name}@prod"], threads="auto")  # as `tuneloop serve` runs it
    server = start_background_server(engine, auth="disabled")  # loopback, demo only
    try:
        client = OpenAI(base_url=server.base_url, api_key="demo")
        console.print(f"serving on {server.base_url}")
        for row in rows:
            started = time.perf_counter()
            reply = client.chat.completions.create(
                model=f"{task.name}@prod",
                messages=row["messages"][:-1],
                max_tokens=task.decoding.max_tokens,
                temperature=0,
            )
            elapsed_ms = (time.perf_counter() - started) * 1000
            console.print(f"[dim]{row['id']}[/] {reply.model} in {elapsed_ms:.0f} ms")
            console.print(f"  answer: {reply.choices[0].message.content}", highlight=False, markup=False)
            console.print(f"  gold:   {row['messages'][-1]['content']}", highlight=False, markup=False)
    finally:
        server.stop()


def show_review_and_ui(console: Console) -> None:
    """Where a person picks up what the checks escalated: the review queue, in the CLI and the web UI."""
    from tuneloop.review import queue_depth

    pending = sum(queue_depth().values())
    console.print(
        f"review queue: {pending} pending item(s); `tuneloop review list` shows them, and the web UI does too:"
    )
    console.print("  tuneloop keys create --name me --role admin   # prints a key, once")
    console.print(
        "  tuneloop ui                                   # then open http://127.0.0.1:4100 and log in with it"
    )


def evaluate_models(
    task: Task,
    data: Path | str,
    models: Sequence[ModelSpec | str],
    *,
    limit: int | None,
    out_dir: Path,
    console: Console,
    requests_per_day: float = DEMO_REQUESTS_PER_DAY,
) -> EvalReport:
    """Run the eval stage on ``models``, print its tables, and write ``eval-report.{html,json}``."""
    options = EvalOptions(limit=limit, requests_per_day=requests_per_day)
    report = run_eval(task, str(data), models, options, console=console)
    print_report(report, console)
    html_path, json_path = out_dir / "eval-report.html", out_dir / "eval-report.json"
    write_html(report, html_path)
    write_json(report, json_path)
    console.print(f"report: {html_path} (JSON: {json_path.name}); `tuneloop eval show {report.run_id}` shows it again")
    return report
