"""`tuneloop demo`: the loop on the bundled model and the synthetic task, on a laptop CPU.

For now: synthesize the demo data, then evaluate the bundled base zero-shot on test documents through
llama.cpp, the serving engine, with the eval stage: field error with its interval, latency, cost and
the verdict against the task's requirements, as a table and an HTML report (``backends`` adds the
transformers reference, at several times the CPU time). Later stages (fine-tuning, serving, capture,
review) extend this flow; a fine-tune step adds its versions to the models ``evaluate_models`` compares.
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
    console.print(
        "[dim]Zero-shot, a 135M model rarely follows the extraction format; fine-tuning (`tuneloop train`) "
        "is what closes that gap.[/]"
    )
    return report


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
