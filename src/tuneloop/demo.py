"""`tuneloop demo`: the loop on the bundled model and the synthetic task, on a laptop CPU.

1. synthesize the demo task's documents with human-verified answers (train and test splits);
2. evaluate the bundled base zero-shot on test documents through llama.cpp, the serving engine: field error
   with its interval, latency, cost and the verdict against the task's requirements;
3. fine-tune the base with LoRA on the train split (a short schedule) and register it as ``task@N``;
4. evaluate base and fine-tune side by side (the base's answers come from the eval cache);
5. promote the fine-tune to ``task@prod``, serve it, and send requests through the official ``openai`` client.

``backends`` adds the transformers reference to step 2, at several times the CPU time.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from rich.console import Console

from tuneloop.config import get_settings
from tuneloop.data.jsonl import write_rows
from tuneloop.data.synth import synthesize_with_progress
from tuneloop.evals.models import ModelSpec
from tuneloop.evals.report import print_report, write_html, write_json
from tuneloop.evals.results import EvalReport
from tuneloop.evals.runner import EvalOptions, run_eval
from tuneloop.task import Task, load_task
from tuneloop.train.config import TrainConfig

DEMO_TASK = "liability-extraction"
DEMO_BASE = "smollm2-135m-instruct"
# The production volume the seed story states costs at (16M extractions a day).
DEMO_REQUESTS_PER_DAY = 16_000_000


def run_demo(
    out_dir: Path | None = None,
    n_documents: int = 600,
    n_eval: int = 20,
    seed: int = 0,
    backends: tuple[str, ...] = ("llamacpp",),
    extra_models: Sequence[str] = (),
    fine_tune: bool = True,
    console: Console | None = None,
) -> EvalReport:
    console = console or Console()
    task = load_task(DEMO_TASK)
    out_dir = out_dir or get_settings().home / "demo"
    out_dir.mkdir(parents=True, exist_ok=True)

    console.rule("[bold]1. Synthetic data")
    rows = synthesize_with_progress(task, n_documents, seed, console=console)
    data_path = out_dir / f"{DEMO_TASK}.jsonl"
    write_rows(data_path, rows)
    test_rows = [r for r in rows if r["metadata"]["split"] == "test"]
    test_path = out_dir / f"{DEMO_TASK}.test.jsonl"
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

    console.rule("[bold]3. Fine-tune: LoRA on the train split")
    from tuneloop.train import train

    result = train(task, data_path, DEMO_BASE, TrainConfig(sft=dict(DEMO_SCHEDULE)), console=console)
    version = result.version
    console.print(
        f"registered [bold]{version.id}[/] ({version.hash_ref[: len(version.task) + 20]}…) in {result.seconds:.0f} s "
        f"at {result.tokens_per_second:.0f} tokens/s"
    )

    console.rule("[bold]4. Evaluate: base vs fine-tune")
    report = evaluate_models(
        task, test_path, [*models, ModelSpec(version.id)], limit=n_eval, out_dir=out_dir, console=console
    )

    console.rule(f"[bold]5. Serve: promote {version.id} to {task.name}@prod and call it with the openai client")
    serve_demo(task, version.id, test_rows[:3], console)
    return report


# A short schedule that still shows the gain on a laptop CPU; `tuneloop train` picks its own from the data.
DEMO_SCHEDULE = {"num_train_epochs": 1, "bf16": False}


def serve_demo(task: Task, version_id: str, rows: Sequence[dict], console: Console) -> None:
    """Promote ``version_id`` to prod, serve ``task@prod`` on loopback, and ask it through the openai client."""
    import time

    from openai import OpenAI

    from tuneloop.registry.promotion import promote
    from tuneloop.serve.app import start_background_server
    from tuneloop.serve.engine import build_engine

    move = promote(task.name, version_id, "prod", actor="tuneloop demo", reason="demo fine-tune")
    console.print(f"{task.name}@prod: {move.from_version or '(new alias)'} → {move.to_version}")
    server = start_background_server(build_engine(models=[f"{task.name}@prod"]))
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
